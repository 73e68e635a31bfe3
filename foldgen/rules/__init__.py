"""Update rules: each turns a Problem into a plan that the emitter renders.

A rule module exposes ``plan(problem)``, which decides everything rule-specific at build time
(state, update map, what it supports) and rejects what it cannot do with a located SpecError.
"""

from __future__ import annotations

from collections.abc import Callable

from foldgen.ir import Problem
from foldgen.rules import admm, pgd, sqp
from foldgen.rules.base import Plan

PLANNERS: dict[str, Callable[[Problem], Plan]] = {
    "pgd": pgd.plan,
    "admm": admm.plan,
    "sqp": sqp.plan,
}


def plan_for(problem: Problem) -> Plan:
    """The rule's plan for this problem."""
    return PLANNERS[problem.solver.rule](problem)
