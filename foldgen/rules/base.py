"""What every update rule hands to the emitter.

A rule's ``plan(problem)`` returns an object with this interface: the derived expressions to
print as functions, the runtime helpers its template needs, the template context of its own
decisions, and its account of the problem in readable math for the module docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from foldgen.expr import Expr, Leaf
from foldgen.ir import Problem

# Adjoint solvers every rule's backward can choose from (templates/runtime/linsolve.py).
SOLVERS = ("_solve_lfpi", "_solve_gmres", "_solve_cg", "_solve_direct", "_dense_from_matvec")


@dataclass(frozen=True)
class Derived:
    """A set of derived expressions printed as one generated function."""

    name: str
    args: tuple[str, ...]
    outputs: tuple[Expr, ...]
    doc: str


class Plan(Protocol):
    rule: str  # also the name of the rule's template, templates/<rule>.py.j2
    var: Leaf
    functions: tuple[Derived, ...]

    def runtime_names(self) -> tuple[str, ...]:
        """Top-level functions of templates/runtime/ the module needs."""
        ...

    def context(self, problem: Problem) -> dict[str, Any]:
        """The rule's own template variables (its decisions, already made)."""
        ...

    def describe(self, problem: Problem) -> list[str]:
        """The module docstring's body: problem, U, Φᵀv, Ψᵀv in readable math."""
        ...
