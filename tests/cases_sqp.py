"""Battery cases for the SQP specs: data drawn so that each problem is feasible, has a unique
nondegenerate solution (strict complementarity with probability one), and, where convex, an
independent CVXPY model. ``unrolled`` is autograd through the SQP map U from the converged
state (x*, λ*, ν*), with the QP solved on its active set (its solution near the fixed point).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch
from cases import TIGHT, Case, _knapsack, _knapsack_cvx, _rand, _randn


def _portfolio(batch, dtype, gen, n=8, factors=3):
    F = 0.2 * _randn(gen, *batch, n, factors, dtype=dtype)
    d = 0.02 + 0.06 * _rand(gen, *batch, n, dtype=dtype)
    return {
        "mu": 0.1 + 0.05 * _randn(gen, *batch, n, dtype=dtype),
        "Sigma": F @ F.mT + torch.diag_embed(d),
        "gamma": torch.tensor(0.05, dtype=dtype),
    }


def _portfolio_cvx(v):
    import cvxpy as cp

    x = cp.Variable(v["mu"].shape[-1])
    sigma = 0.5 * (v["Sigma"] + v["Sigma"].T)
    constraints = [cp.sum(x) == 1, x >= 0, cp.quad_form(x, sigma) <= float(v["gamma"])]
    cp.Problem(cp.Maximize(v["mu"] @ x), constraints).solve(solver=cp.CLARABEL, **TIGHT)
    return x.value


def nonconvex_qp_data(batch, dtype, gen, n=10, neq=5, nineq=5):
    """DC3's nonconvex QP: Q diagonal PSD, A and G Gaussian, b uniform in [-1, 1] and
    h = Σⱼ |G A⁺|ᵢⱼ, so that y = A⁺b is feasible for every b in the box."""
    A = _randn(gen, *batch, neq, n, dtype=torch.float64)
    G = _randn(gen, *batch, nineq, n, dtype=torch.float64)
    h = (G @ torch.linalg.pinv(A)).abs().sum(-1)
    return {
        "p": _rand(gen, *batch, n, dtype=dtype),
        "Q": torch.diag_embed(_rand(gen, *batch, n, dtype=dtype)),
        "A": A.to(dtype),
        "b": (2 * _rand(gen, *batch, neq, dtype=torch.float64) - 1).to(dtype),
        "G": G.to(dtype),
        "h": h.to(dtype),
    }


def _exp_budget(batch, dtype, gen, n=6):
    return {
        "y": 0.5 + _randn(gen, *batch, n, dtype=dtype),
        "B": n * (0.6 + 0.4 * _rand(gen, *batch, dtype=dtype)),
    }


def _exp_budget_cvx(v):
    import cvxpy as cp

    x = cp.Variable(v["y"].shape[-1])
    constraints = [cp.sum(cp.exp(x)) <= float(v["B"])]
    cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x - v["y"])), constraints).solve(
        solver=cp.CLARABEL, **TIGHT
    )
    return x.value


def ordered_values(module, values):
    """Every parameter in call order, defaults filled in as tensors."""
    like = next(iter(values.values()))
    return [
        values[n] if n in values else torch.tensor(module.DEFAULTS[n], dtype=like.dtype)
        for n in module.PARAMETERS
    ]


def unrolled_sqp(module, layer, values, weight, iterations=20):
    """Autograd through `iterations` applications of U from s* = (x*, λ*, ν*), by the layer's
    public ``update_map`` (the QP solved on the active set found at x*, step frozen)."""
    names = list(module.GRAD_PARAMETERS)
    inputs = {n: v.clone().requires_grad_(n in names) for n, v in values.items()}
    s_star, update, read = layer.update_map(**inputs)
    s = s_star
    for _ in range(iterations):
        s = update(s)
    x = read(s)
    assert torch.allclose(x, read(s_star), atol=1e-9), "x* is not a fixed point of U"
    grads = torch.autograd.grad((x * weight).sum(), [inputs[n] for n in names])
    return dict(zip(names, grads))


@functools.cache
def acopf_data():
    """examples/acopf_data.py (PYPOWER cases as the Acopf layer's inputs) as a module;
    skips the test when pypower, a test extra, is not installed."""
    pytest.importorskip("pypower", reason="pypower (a test extra) is not installed")
    examples = str(Path(__file__).resolve().parent.parent / "examples")
    sys.path.insert(0, examples)
    try:
        import acopf_data as module
    finally:
        sys.path.remove(examples)
    return module


def _acopf(batch, dtype, gen):
    """IEEE case9 with every load scaled by a factor in [0.85, 1.05] and the generators'
    cost coefficients by factors in [0.8, 1.2]: a nonconvex problem (no CVXPY model; test_acopf
    compares with PYPOWER's runopf) whose flow limits and reactive bounds switch between
    draws."""
    inputs = acopf_data().load_case("case9").inputs
    values = {k: v.to(dtype) for k, v in inputs.items()}
    for name, low, high in (("Pd", 0.85, 1.05), ("Qd", 0.85, 1.05)):
        factor = low + (high - low) * _rand(gen, *batch, 1, dtype=dtype)
        values[name] = values[name] * factor
    for name in ("c2", "c1", "c0"):
        values[name] = values[name] * (0.8 + 0.4 * _rand(gen, *batch, 3, dtype=dtype))
    return values


CASES: dict[str, Case] = {
    "acopf": Case(_acopf, None, unrolled_sqp),
    "portfolio": Case(_portfolio, _portfolio_cvx, unrolled_sqp),
    "nonconvex_qp": Case(nonconvex_qp_data, None, unrolled_sqp),
    "entropic_knapsack_sqp": Case(_knapsack, _knapsack_cvx, unrolled_sqp),
    "exp_budget": Case(_exp_budget, _exp_budget_cvx, unrolled_sqp),
}
