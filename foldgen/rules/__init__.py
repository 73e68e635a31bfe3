"""Update rules: each turns a Problem into a plan that the emitter renders.

A rule module exposes ``plan(problem)``, which decides everything rule-specific at build time
(state, update map, what it supports) and rejects what it cannot do with a located SpecError.
"""

from __future__ import annotations

from collections.abc import Callable

from foldgen.ir import Problem
from foldgen.rules import pgd


def plan_for(problem: Problem) -> object:
    """The rule's plan for this problem."""
    planners: dict[str, Callable[[Problem], object]] = {"pgd": pgd.plan}
    rule = problem.solver.rule
    if rule not in planners:
        raise problem.error(
            ("solver", "rule"),
            f"rule '{rule}' is part of the spec format but not implemented in this foldgen "
            "version yet; use rule 'pgd' where the feasible set has a closed-form projection",
        )
    return planners[rule](problem)
