"""Linking: the runtime definitions a generated module reaches, found by ``ast``.

`foldgen.runtime` is ordinary Python: modules that import each other's definitions. A
generated module needs some of them; this module reads the runtime's top-level definitions
(functions, classes, constants), follows the names each one uses, and returns the
transitive closure of the names a module's own code uses, as source text in the runtime's
order (each module in `RUNTIME_MODULES` order, each definition where its file has it), with
the standard-library imports they need. Imports between runtime modules are dropped: copied
into one file, every definition lives in one namespace, so names are unique across the
runtime (checked here).
"""

from __future__ import annotations

import ast
import builtins
import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from foldgen._version import __version__

#: The runtime's modules, in the order their definitions are emitted (a definition may use
#: at import time only what an earlier one defines: dataclass records, set records).
RUNTIME_MODULES = (
    "core",
    "linsolve",
    "projections",
    "prox",
    "qp",
    "layer",
    "fold",
    "sets",
    "pgd",
    "admm",
    "sqp",
)

#: The standard-library modules runtime code may import (plus torch): "torch + stdlib only".
STDLIB_IMPORTS = ("dataclasses", "math", "sys", "time", "types", "warnings")

#: The file ``--runtime shared`` writes once per output directory.
SHARED_RUNTIME = "_foldgen_runtime"

BANNER = "# " + "=" * 93


@dataclass(frozen=True)
class Definition:
    """One top-level definition of the runtime."""

    name: str
    module: str
    order: int
    source: str
    uses: frozenset[str]  # runtime names and imported modules it refers to


def runtime_dir() -> Path:
    return Path(__file__).resolve().parent / "runtime"


def _names_used(node: ast.AST) -> set[str]:
    """Every name ``node`` loads, annotations aside (they are never evaluated)."""
    used: set[str] = set()
    skip: set[int] = set()
    for sub in ast.walk(node):
        if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = [*sub.args.posonlyargs, *sub.args.args, *sub.args.kwonlyargs]
            args += [a for a in (sub.args.vararg, sub.args.kwarg) if a is not None]
            for a in args:
                if a.annotation is not None:
                    skip.update(id(n) for n in ast.walk(a.annotation))
            if sub.returns is not None:
                skip.update(id(n) for n in ast.walk(sub.returns))
        elif isinstance(sub, ast.AnnAssign):
            skip.update(id(n) for n in ast.walk(sub.annotation))
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load) and id(sub) not in skip:
            used.add(sub.id)
    return used


def _defined_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def _segment(text: str, node: ast.stmt) -> str:
    """The definition's source with its decorators and the comment lines just above it."""
    lines = text.splitlines()
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))]) - 1
    while first > 0 and lines[first - 1].lstrip().startswith("#"):
        first -= 1
    end = node.end_lineno or node.lineno
    return "\n".join(lines[first:end])


@functools.cache
def runtime_definitions() -> dict[str, Definition]:
    """name → definition, for every top-level definition of every runtime module."""
    table: dict[str, Definition] = {}
    for module in RUNTIME_MODULES:
        text = (runtime_dir() / f"{module}.py").read_text(encoding="utf-8")
        for node in ast.parse(text).body:
            for name in _defined_names(node):
                if name in table:
                    raise AssertionError(
                        f"runtime name {name} is defined in both {table[name].module} and {module}"
                    )
                table[name] = Definition(
                    name, module, len(table), _segment(text, node), frozenset(_names_used(node))
                )
    return table


def closure(names: set[str]) -> list[Definition]:
    """The runtime definitions ``names`` reach, transitively, in emission order."""
    table = runtime_definitions()
    wanted: set[str] = set()
    stack = [n for n in names if n in table]
    while stack:
        name = stack.pop()
        if name in wanted:
            continue
        wanted.add(name)
        stack.extend(n for n in table[name].uses if n in table and n not in wanted)
    return sorted((table[n] for n in wanted), key=lambda d: d.order)


def free_names(source: str) -> set[str]:
    """The names ``source`` uses that it does not define at top level (nor builtins are)."""
    tree = ast.parse(source)
    defined = {n for node in tree.body for n in _defined_names(node)}
    return _names_used(tree) - defined - set(dir(builtins))


def identifiers(sources: list[str]) -> set[str]:
    """Every identifier in printed code: the printer's output has no strings or comments
    of the spec's, so a textual scan finds exactly the names it uses (and costs no parse)."""
    return {word for source in sources for word in _IDENTIFIER.findall(source)}


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def imports_for(names: set[str]) -> list[str]:
    """The import lines for the standard-library modules among ``names``, then torch."""
    lines = [f"import {m}" for m in STDLIB_IMPORTS if m in names]
    return [*lines, *([""] if lines else []), "import torch"]


def modules_used(definitions: list[Definition]) -> set[str]:
    return {m for d in definitions for m in d.uses if m in STDLIB_IMPORTS}


def _joined(definitions: list[Definition]) -> tuple[str, str]:
    """The definitions' source, two blank lines apart, and its sha256."""
    body = "\n\n\n".join(d.source for d in definitions)
    return body, hashlib.sha256(body.encode("utf-8")).hexdigest()


def block(definitions: list[Definition]) -> str:
    """The runtime definitions as one fenced block naming the foldgen version and a hash."""
    body, digest = _joined(definitions)
    digest = digest[:16]
    head = (
        f"{BANNER}\n# foldgen {__version__} runtime (sha256 {digest}): the definitions this module"
        " uses,\n# copied from foldgen/runtime/. Regenerate, never edit.\n"
        f"{BANNER}"
    )
    return f"{head}\n\n\n{body}\n\n\n{BANNER}\n# end of the foldgen runtime\n{BANNER}"


def shared_runtime_source() -> str:
    """``_foldgen_runtime.py``: every runtime definition, for ``--runtime shared``."""
    definitions = sorted(runtime_definitions().values(), key=lambda d: d.order)
    imports = "\n".join(imports_for(modules_used(definitions)))
    body, digest = _joined(definitions)
    return (
        f"# @generated by foldgen {__version__}. DO NOT EDIT.\n"
        f"# runtime sha256: {digest}\n"
        "# regenerate with: foldgen build --runtime shared SPEC... (any spec of this directory)\n"
        f'"""The foldgen {__version__} runtime shared by the modules of this directory."""\n\n'
        f"{imports}\n\n\n{body}\n"
    )
