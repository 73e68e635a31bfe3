"""Compile a spec from Python, without files: ``foldgen.compile(spec)`` → the layer class.

For notebooks and scripts. The spec goes through exactly the pipeline ``foldgen build`` runs
(the same limits, the same located `SpecError`s); the generated source is executed as a
module registered in ``sys.modules`` under the spec's ``name``, as importing the file
``foldgen build`` writes would register it, so that pickling, ``dataclasses`` and
``inspect.getsource`` (which torch.jit and debuggers use) work on it.
"""

from __future__ import annotations

import builtins
import importlib.util
import linecache
import os
import sys
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from foldgen.build import Built, build, build_text
from foldgen.limits import DEFAULT_LIMITS, Limits

__all__ = ["compile", "compile_module", "load_generated", "module_from_source"]

_SUFFIXES = (".yaml", ".yml")


def compile_module(
    spec: str | os.PathLike[str] | Mapping[str, Any], limits: Limits = DEFAULT_LIMITS
) -> types.ModuleType:
    """The generated module for ``spec``, built in memory and imported.

    ``spec`` is a path (a `pathlib.Path`, or a one-line string ending in ``.yaml``/``.yml``),
    the YAML text itself (any other string), or the spec as a mapping (as ``yaml.safe_load``
    would return it; its messages locate keys in the mapping's YAML dump, named ``<dict>``).
    """
    return module_from_source(_built(spec, limits))


def module_from_source(built: Built) -> types.ModuleType:
    """The module of a `Built` (what ``foldgen build`` would write), executed from its source
    and registered in ``sys.modules`` under its name."""
    filename = f"<foldgen {built.name}>"
    code = builtins.compile(built.source, filename, "exec", dont_inherit=True)
    linecache.cache[filename] = (len(built.source), None, built.source.splitlines(True), filename)
    module = types.ModuleType(built.name)
    module.__file__ = filename
    return _registered(built.name, module, lambda: exec(code, module.__dict__))


def compile(  # noqa: A001 - the public name the README documents, like re.compile
    spec: str | os.PathLike[str] | Mapping[str, Any], limits: Limits = DEFAULT_LIMITS
) -> type:
    """The layer class (a torch.nn.Module subclass) for ``spec``; see `compile_module`."""
    module = compile_module(spec, limits)
    return getattr(module, module.__all__[0])


def _built(spec: str | os.PathLike[str] | Mapping[str, Any], limits: Limits) -> Built:
    if isinstance(spec, Mapping):
        text = yaml.safe_dump(dict(spec), sort_keys=False, allow_unicode=True)
        return build_text(text, "<dict>", limits)
    if isinstance(spec, os.PathLike) or (
        isinstance(spec, str) and "\n" not in spec and spec.endswith(_SUFFIXES)
    ):
        return build(Path(spec), limits, output_dir=Path(spec).parent)
    if isinstance(spec, str):
        return build_text(spec, "<string>", limits)
    raise TypeError(
        f"foldgen.compile: expected a path, YAML text or a mapping, got {type(spec).__name__}"
    )


def load_generated(path: str | os.PathLike[str], name: str | None = None) -> types.ModuleType:
    """Import a module ``foldgen build`` wrote, by its path, without installing it or editing
    ``sys.path``; registered in ``sys.modules`` as ``name`` (default: the file's stem)."""
    path = Path(path)
    module_name = name or path.stem
    found = importlib.util.spec_from_file_location(module_name, path)
    if found is None or found.loader is None:
        raise ImportError(f"{path}: not a Python module file")
    module = importlib.util.module_from_spec(found)
    loader = found.loader
    return _registered(module_name, module, lambda: loader.exec_module(module))


def _registered(name: str, module: types.ModuleType, run: Callable[[], None]) -> types.ModuleType:
    """``module`` registered in ``sys.modules`` as ``name`` while ``run`` executes its body
    (as an import does); if the body fails, whatever was registered before is restored."""
    previous = sys.modules.get(name)
    sys.modules[name] = module
    try:
        run()
    except BaseException:
        if previous is None:
            del sys.modules[name]
        else:
            sys.modules[name] = previous
        raise
    return module
