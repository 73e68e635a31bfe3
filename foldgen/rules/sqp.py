"""The SQP rule (not implemented yet)."""

from __future__ import annotations

from foldgen.ir import Problem
from foldgen.rules.base import Plan


def plan(problem: Problem) -> Plan:
    raise problem.error(
        ("solver", "rule"),
        "rule 'sqp' is part of the spec format but not implemented in this foldgen "
        "version yet; use rule 'pgd' where the feasible set has a closed-form projection",
    )
