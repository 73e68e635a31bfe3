"""Test data for every spec in specs/: inputs drawn so that the problem is well posed and
no component sits on a kink (with probability one), and, for convex specs, an independent
CVXPY model of the same problem.

Adding a spec to specs/ without a case here fails ``test_every_spec_has_a_case``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import foldgen

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted(p.stem for p in (ROOT / "specs").glob("*.yaml"))


def load_module(name: str, directory: Path = ROOT / "generated"):
    """Import generated/<name>.py as a fresh module (not via the package)."""
    return foldgen.load_generated(directory / f"{name}.py", f"generated_{name}")


def as_state(module, out):
    """The layer's result as one (batch…, N) tensor: a multi-variable spec's tuple of
    variables flattened and joined in spec order, as the packed state holds them."""
    if module.VARIABLES is None:
        return out
    flat = []
    for t, (_, core) in zip(out if isinstance(out, tuple) else (out,), module.VARIABLES):
        batch = t.shape[: t.dim() - len(core)]
        flat.append(t.reshape(*batch, -1))
    batch = torch.broadcast_shapes(*(f.shape[:-1] for f in flat))
    return torch.cat([f.expand(*batch, f.shape[-1]) for f in flat], -1)


@dataclass(frozen=True)
class Case:
    """How to draw inputs for one spec and how to solve it independently."""

    make: Callable[[tuple[int, ...], torch.dtype, torch.Generator], dict[str, torch.Tensor]]
    cvxpy: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None
    # Autograd through the unrolled update map from x*, for rules other than PGD (whose
    # reference lives in test_battery): (module, layer, values, weight) -> {name: gradient}.
    unrolled: Callable | None = None


def _randn(gen, *shape, dtype):
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def _rand(gen, *shape, dtype):
    return torch.rand(shape, generator=gen, dtype=torch.float64).to(dtype)


# Clarabel at its tightest; on exponential cones it may still warn "inaccurate" at ~1e-6.
TIGHT = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12}


def _box_qp(batch, dtype, gen, n=8):
    a = _randn(gen, *batch, n, n, dtype=dtype)
    q = a @ a.mT / n + 0.5 * torch.eye(n, dtype=dtype)
    return {"Q": q, "c": 1.5 * _randn(gen, *batch, n, dtype=dtype)}


def _convex_quadratic_cvx(Q, c, box):
    """argmin ½xᵀQx + cᵀx (over [0, 1]ⁿ when ``box``), by CVXPY."""
    import cvxpy as cp

    x = cp.Variable(c.shape[-1])
    constraints = [x >= 0, x <= 1] if box else []
    objective = cp.Minimize(0.5 * cp.quad_form(x, 0.5 * (Q + Q.T)) + c @ x)
    cp.Problem(objective, constraints).solve(solver=cp.CLARABEL, **TIGHT)
    return x.value


def _box_qp_cvx(v):
    return _convex_quadratic_cvx(v["Q"], v["c"], box=True)


def _quadratic(batch, dtype, gen, n=8):
    """box_qp's data without the box: min ½xᵀQx − bᵀx."""
    v = _box_qp(batch, dtype, gen, n)
    return {"Q": v["Q"], "b": v["c"]}


def _quadratic_cvx(v):
    return _convex_quadratic_cvx(v["Q"], -v["b"], box=False)


def _knapsack(batch, dtype, gen, n=10, scale=2.0):
    return {
        "c": scale * _randn(gen, *batch, n, dtype=dtype),
        "k": torch.tensor(3.0, dtype=dtype),
        "eps": torch.tensor(1.0, dtype=dtype),
    }


def _knapsack_cvx(v):
    import cvxpy as cp

    x = cp.Variable(v["c"].shape[-1])
    objective = cp.Maximize(v["c"] @ x + float(v["eps"]) * cp.sum(cp.entr(x)))
    cp.Problem(objective, [x >= 0, x <= 1, cp.sum(x) == float(v["k"])]).solve(
        solver=cp.CLARABEL, **TIGHT
    )
    return x.value


def _ball(batch, dtype, gen, m=8, n=5):
    return {
        "A": _randn(gen, *batch, m, n, dtype=dtype),
        "b": 3.0 * _randn(gen, *batch, m, dtype=dtype),
        "center": 0.1 * _randn(gen, *batch, n, dtype=dtype),
        "radius": 0.5 + 0.2 * _rand(gen, *batch, dtype=dtype),
        "lam": torch.tensor(0.1, dtype=dtype),
    }


def _ball_cvx(v):
    import cvxpy as cp

    x = cp.Variable(v["A"].shape[-1])
    f = 0.5 * cp.sum_squares(v["A"] @ x - v["b"]) + 0.5 * float(v["lam"]) * cp.sum_squares(x)
    cp.Problem(cp.Minimize(f), [cp.norm(x - v["center"], 2) <= float(v["radius"])]).solve(
        solver=cp.CLARABEL, **TIGHT
    )
    return x.value


def _logistic(batch, dtype, gen, m=12, n=4):
    return {
        "X": _randn(gen, *batch, m, n, dtype=dtype),
        "y": (_rand(gen, *batch, m, dtype=dtype) > 0.5).to(dtype),
        "lo": -0.3 - 0.2 * _rand(gen, *batch, n, dtype=dtype),
        "hi": 0.3 + 0.2 * _rand(gen, *batch, n, dtype=dtype),
        "mu": torch.tensor(0.1, dtype=dtype),
    }


def _logistic_cvx(v):
    import cvxpy as cp

    w = cp.Variable(v["X"].shape[-1])
    z = v["X"] @ w
    f = cp.sum(cp.logistic(z)) - v["y"] @ z + 0.5 * float(v["mu"]) * cp.sum_squares(w)
    cp.Problem(cp.Minimize(f), [w >= v["lo"], w <= v["hi"]]).solve(solver=cp.CLARABEL, **TIGHT)
    return w.value


def _equality(batch, dtype, gen, n=6, m=2):
    a = _randn(gen, *batch, n, n, dtype=dtype)
    return {
        "P": a @ a.mT / n + torch.eye(n, dtype=dtype),
        "q": _randn(gen, *batch, n, dtype=dtype),
        "A": _randn(gen, *batch, m, n, dtype=dtype),
        "b": _randn(gen, *batch, m, dtype=dtype),
    }


def _equality_cvx(v):
    import cvxpy as cp

    x = cp.Variable(v["q"].shape[-1])
    p = 0.5 * (v["P"] + v["P"].T)
    cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, p) + v["q"] @ x), [v["A"] @ x == v["b"]]).solve(
        solver=cp.CLARABEL, **TIGHT
    )
    return x.value


def _sparsemax(batch, dtype, gen, n=7):
    return {"z": _randn(gen, *batch, n, dtype=dtype)}


def _sparsemax_cvx(v):
    import cvxpy as cp

    p = cp.Variable(v["z"].shape[-1])
    cp.Problem(cp.Minimize(0.5 * cp.sum_squares(p - v["z"])), [p >= 0, cp.sum(p) == 1]).solve(
        solver=cp.CLARABEL, **TIGHT
    )
    return p.value


def _halfspace(batch, dtype, gen, n=5):
    return {
        "y": 2.0 * _randn(gen, *batch, n, dtype=dtype),
        "a": _randn(gen, *batch, n, dtype=dtype),
        "b": -0.5 + 0.1 * _randn(gen, *batch, dtype=dtype),
    }


def _halfspace_cvx(v):
    import cvxpy as cp

    x = cp.Variable(v["y"].shape[-1])
    f = cp.sum(cp.logistic(x)) - v["y"] @ x + 0.5 * cp.sum_squares(x)
    cp.Problem(cp.Minimize(f), [v["a"] @ x <= float(v["b"])]).solve(solver=cp.CLARABEL, **TIGHT)
    return x.value


def _l1_projection(batch, dtype, gen, n=12):
    return {
        "y": 2.0 * _randn(gen, *batch, n, dtype=dtype),
        "r": 1.0 + 2.0 * _rand(gen, *batch, dtype=dtype),
    }


def _l1_projection_cvx(v):
    import cvxpy as cp

    x = cp.Variable(v["y"].shape[-1])
    cp.Problem(
        cp.Minimize(0.5 * cp.sum_squares(x - v["y"])), [cp.norm1(x) <= float(v["r"])]
    ).solve(solver=cp.CLARABEL, **TIGHT)
    return x.value


def _weighted_budget(batch, dtype, gen, n=10):
    u = 0.5 + _rand(gen, *batch, n, dtype=dtype)
    p = 0.5 + _rand(gen, *batch, n, dtype=dtype)
    return {
        "q": 0.5 + _rand(gen, *batch, n, dtype=dtype),
        "y": _randn(gen, *batch, n, dtype=dtype),
        "u": u,
        "p": p,
        "b": (0.3 + 0.3 * _rand(gen, *batch, dtype=dtype)) * (p * u).sum(-1),
    }


def _weighted_budget_cvx(v):
    import cvxpy as cp

    x = cp.Variable(v["y"].shape[-1])
    f = 0.5 * cp.sum(cp.multiply(v["q"], cp.square(x - v["y"])))
    constraints = [x >= 0, x <= v["u"], v["p"] @ x == float(v["b"])]
    cp.Problem(cp.Minimize(f), constraints).solve(solver=cp.CLARABEL, **TIGHT)
    return x.value


CASES: dict[str, Case] = {
    "box_qp": Case(_box_qp, _box_qp_cvx),
    "quadratic": Case(_quadratic, _quadratic_cvx),
    "entropic_knapsack": Case(_knapsack, _knapsack_cvx),
    "ball_least_squares": Case(_ball, _ball_cvx),
    "logistic_box": Case(_logistic, _logistic_cvx),
    "equality_qp": Case(_equality, _equality_cvx),
    "sparsemax": Case(_sparsemax, _sparsemax_cvx),
    "halfspace_softplus": Case(_halfspace, _halfspace_cvx),
    "l1_projection": Case(_l1_projection, _l1_projection_cvx),
    "weighted_budget": Case(_weighted_budget, _weighted_budget_cvx),
}

# Cases of other rules live in their own files (one file per rule) and join here.
for _rule_cases in ("cases_admm", "cases_sqp", "cases_shapes"):
    try:
        CASES.update(importlib.import_module(_rule_cases).CASES)
    except ModuleNotFoundError as err:
        if err.name != _rule_cases:
            raise
