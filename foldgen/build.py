"""The pipeline: spec.yaml → spec → IR → rule plan → emitted module.

    load_spec (YAML + pydantic, positions)  →  lower (expressions → vector IR, constraint
    families)  →  plan_for (the update rule: U, its derivatives, what it supports)  →
    render (torch printer + Jinja templates)

Every stage reports a bad spec as one located SpecError; anything else is a bug.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from foldgen.emit import render
from foldgen.ir import lower
from foldgen.limits import DEFAULT_LIMITS, Limits
from foldgen.rules import plan_for
from foldgen.spec import load_spec


@dataclass(frozen=True)
class Built:
    """One compiled spec: the module name and its source text."""

    name: str
    source: str

    @property
    def filename(self) -> str:
        return f"{self.name}.py"


def build(spec_path: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS) -> Built:
    """Compile one spec file into the source of its generated module."""
    loaded = load_spec(spec_path, limits)
    problem = lower(loaded)
    plan = plan_for(problem)
    return Built(problem.name, render(problem, plan, _display_path(spec_path)))  # type: ignore[arg-type]


def _display_path(path: str | os.PathLike[str]) -> str:
    """The spec path as recorded in the header: relative to the working directory when inside
    it (so builds from the project root are reproducible on any machine), with '/'."""
    p = Path(path)
    try:
        p = p.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        pass
    return p.as_posix()
