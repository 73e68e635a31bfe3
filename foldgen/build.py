"""The pipeline: spec.yaml → spec → IR → rule plan → emitted module.

    load_spec (YAML + pydantic, positions)  →  lower (expressions → vector IR, constraint
    families)  →  plan_for (the update rule: U, its derivatives, what it supports)  →
    render (torch printer + Jinja templates)

Every stage reports a bad spec as one located SpecError; anything else is a bug.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from foldgen.emit import RuntimeMode, module_docstring, render
from foldgen.errors import RuleError, SpecError
from foldgen.ir import Problem, lower
from foldgen.limits import DEFAULT_LIMITS, Limits
from foldgen.link import SHARED_RUNTIME, shared_runtime_source
from foldgen.rules import plan_for
from foldgen.rules.base import Plan
from foldgen.spec import LoadedSpec, load_spec, load_spec_text

__all__ = [
    "Built",
    "build",
    "build_loaded",
    "build_text",
    "project_root",
    "recorded_path",
    "shared_runtime",
]

# Files that mark the top of a project: a module records its spec relative to that top.
_PROJECT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", ".git")


@dataclass(frozen=True)
class Built:
    """One compiled spec: the module name and its source text."""

    name: str
    source: str

    @property
    def filename(self) -> str:
        return f"{self.name}.py"


def build(
    spec_path: str | os.PathLike[str],
    limits: Limits = DEFAULT_LIMITS,
    output_dir: str | os.PathLike[str] | None = None,
    runtime: RuntimeMode = "inline",
) -> Built:
    """Compile one spec file into the source of its generated module.

    ``output_dir`` (default: ``generated``) is where the module is meant to go; the header
    records the spec's path relative to that directory's project (see `project_root`), so
    the same checkout builds the same bytes from any working directory. ``runtime``:
    ``inline`` copies the runtime definitions the module uses into it (one self-contained
    file); ``shared`` imports them from ``_foldgen_runtime.py`` beside it (`shared_runtime`).
    """
    with _deadline(limits, os.fspath(spec_path)):
        loaded = load_spec(spec_path, limits)
        out = Path(output_dir if output_dir is not None else "generated")
        return build_loaded(loaded, recorded_path(spec_path, project_root(out)), runtime)


def build_loaded(loaded: LoadedSpec, recorded: str, runtime: RuntimeMode = "inline") -> Built:
    """Compile a spec already read and validated; ``recorded`` is the path the header names."""
    problem = lower(loaded)
    return Built(problem.name, render(problem, plan(loaded, problem), recorded, runtime))


#: What ``auto`` dispatches to, for `describe` (the layer records its choice per call).
AUTO_TEXT = (
    "auto: chosen per call, recorded in backward_info.method: active_set where PGD's "
    "structure is proven, else direct when n <= 128 and batch·n² <= 2²⁴, else gmres"
)


def describe(spec_path: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS) -> str:
    """The spec's derived math as its module's docstring states it (the problem, the update
    map U, Φᵀv and Ψᵀv, the projection, prox blocks or QP), then the backward method; for
    ``foldgen show``, which writes nothing."""
    with _deadline(limits, os.fspath(spec_path)):
        loaded = load_spec(spec_path, limits)
        problem = lower(loaded)
        text = module_docstring(problem, plan(loaded, problem))
    b = problem.backward
    method = AUTO_TEXT if b.method == "auto" else b.method
    return f"{text}\n\nBackward method: {method}; at most {b.max_iter} iterations, tol {b.tol:g}."


def plan(loaded: LoadedSpec, problem: Problem) -> Plan:
    """The rule's plan, a rule's complaint located in the spec it came from."""
    try:
        return plan_for(problem)
    except RuleError as err:
        raise loaded.error(err.path, err.message) from None


def shared_runtime() -> Built:
    """The ``_foldgen_runtime.py`` that modules built with ``runtime="shared"`` import."""
    return Built(SHARED_RUNTIME, shared_runtime_source())


def build_text(
    text: str, file: str = "<spec>", limits: Limits = DEFAULT_LIMITS, recorded: str | None = None
) -> Built:
    """`build` for a spec held in a string; ``file`` names it in messages and the header."""
    with _deadline(limits, file):
        return build_loaded(load_spec_text(text, file, limits), recorded or file)


def project_root(output_dir: str | os.PathLike[str]) -> Path:
    """The project an output directory belongs to: its nearest ancestor (itself included)
    holding pyproject.toml, setup.py, setup.cfg or .git; else the directory's parent."""
    out = Path(output_dir).resolve()
    for folder in (out, *out.parents):
        if any((folder / marker).exists() for marker in _PROJECT_MARKERS):
            return folder
    return out.parent


def recorded_path(path: str | os.PathLike[str], root: Path) -> str:
    """``path`` as a module's header records it: relative to ``root`` with '/', or only its
    file name when it lies outside (an absolute path would differ between machines)."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(root).as_posix()
    except ValueError:
        return resolved.name


@contextlib.contextmanager
def _deadline(limits: Limits, file: str) -> Iterator[None]:
    """Stop a build that runs past ``limits.build_seconds`` with a SpecError.

    Uses SIGALRM, so it applies in the main thread of a POSIX process (the CLI); elsewhere the
    build runs unbounded in time, bounded only by the size limits.
    """
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise SpecError(
            f"compiling the spec took longer than {limits.build_seconds:g} s; "
            + limits.raise_hint("build_seconds"),
            file=file,
        )

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, limits.build_seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
