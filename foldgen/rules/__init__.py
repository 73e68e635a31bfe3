"""Update rules: each turns a Problem into a plan that the emitter renders.

A rule module exposes ``plan(problem)``, which decides everything rule-specific at build time
(state, update map, what it supports) and rejects what it cannot do with a located SpecError.
"""

from __future__ import annotations

from collections.abc import Callable

from foldgen.expr import ConstantError, NodeBudgetExceeded
from foldgen.ir import Problem, derivation_error, too_many_nodes
from foldgen.rules import admm, pgd, sqp
from foldgen.rules.base import Plan

PLANNERS: dict[str, Callable[[Problem], Plan]] = {
    "pgd": pgd.plan,
    "admm": admm.plan,
    "sqp": sqp.plan,
}


def plan_for(problem: Problem) -> Plan:
    """The rule's plan for this problem; the rule's derivations count against the spec's
    expression_nodes, and a constant they cannot fold is reported at its expression."""
    with problem.budget:
        try:
            return PLANNERS[problem.solver.rule](problem)
        except ConstantError as err:
            raise derivation_error(problem, err) from None
        except NodeBudgetExceeded as err:
            message = too_many_nodes(err, problem.limits)
            raise problem.error((problem.sense,), message) from None
