"""Battery cases for the SQP specs: data drawn so that each problem is feasible, has a unique
nondegenerate solution (strict complementarity with probability one), and, where convex, an
independent CVXPY model. ``unrolled`` is autograd through the SQP map U from the converged
state (x*, λ*, ν*), with the QP solved on its active set (its solution near the fixed point).
"""

from __future__ import annotations

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


CASES: dict[str, Case] = {
    "portfolio": Case(_portfolio, _portfolio_cvx, unrolled_sqp),
    "nonconvex_qp": Case(nonconvex_qp_data, None, unrolled_sqp),
    "entropic_knapsack_sqp": Case(_knapsack, _knapsack_cvx, unrolled_sqp),
    "exp_budget": Case(_exp_budget, _exp_budget_cvx, unrolled_sqp),
}
