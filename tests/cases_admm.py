"""Test data for the ADMM specs (joined into ``cases.CASES``): inputs drawn so that the problem
is well posed and no component sits on a kink (with probability one), CVXPY references, and
the unrolled reference — autograd through the layer's ``update_map`` (one ADMM sweep) applied
many times from the converged state.
"""

from __future__ import annotations

import torch
from cases import TIGHT, Case, _rand, _randn


def admm_unrolled(module, layer, values, weight, iterations=3000):
    """Autograd through ``iterations`` ADMM sweeps from s*: Σₖ Φᵏ Ψ plus the x ← s link.

    By the layer's public ``update_map``: one sweep with the final ρ, whose x-update's factor
    is built inside autograd, so every dependence on θ (∇²f₀, the block matrices) is
    differentiated by torch, not by the generated backward.
    """
    names = list(module.GRAD_PARAMETERS)
    inputs = {n: v.clone().requires_grad_(n in names) for n, v in values.items()}
    s_star, update, read = layer.update_map(**inputs)
    s = s_star
    for _ in range(iterations):
        s = update(s)
    x = read(s)  # x(s_T)
    assert torch.allclose(x, read(s_star), atol=1e-9), "s* is not a fixed point of U"
    grads = torch.autograd.grad((x * weight).sum(), [inputs[n] for n in names])
    return dict(zip(names, grads))


def _tv(batch, dtype, gen, n=10):
    difference = torch.diff(torch.eye(n, dtype=torch.float64), dim=0).to(dtype)
    return {
        "y": _randn(gen, *batch, n, dtype=dtype),
        "D": difference + 0.1 * _randn(gen, *batch, n - 1, n, dtype=dtype),
        "lam": torch.tensor(0.5, dtype=dtype),
    }


def _tv_cvx(v):
    import cvxpy as cp

    x = cp.Variable(v["y"].shape[-1])
    f = 0.5 * cp.sum_squares(x - v["y"]) + float(v["lam"]) * cp.norm1(v["D"] @ x)
    cp.Problem(cp.Minimize(f)).solve(solver=cp.CLARABEL, **TIGHT)
    return x.value


def _lasso(batch, dtype, gen, m=12, n=6):
    return {
        "A": _randn(gen, *batch, m, n, dtype=dtype),
        "b": 2.0 * _randn(gen, *batch, m, dtype=dtype),
        "lam": 1.0 + _rand(gen, *batch, dtype=dtype),
    }


def _lasso_cvx(v):
    import cvxpy as cp

    x = cp.Variable(v["A"].shape[-1])
    f = 0.5 * cp.sum_squares(v["A"] @ x - v["b"]) + float(v["lam"]) * cp.norm1(x)
    cp.Problem(cp.Minimize(f)).solve(solver=cp.CLARABEL, **TIGHT)
    return x.value


def _inequality(batch, dtype, gen, n=6, p=4):
    a = _randn(gen, *batch, n, n, dtype=dtype)
    return {
        "P": a @ a.mT / n + 0.5 * torch.eye(n, dtype=dtype),
        "q": 2.0 * _randn(gen, *batch, n, dtype=dtype),
        "G": _randn(gen, *batch, p, n, dtype=dtype),
        "h": 0.1 + 0.5 * _rand(gen, *batch, p, dtype=dtype),  # x = 0 is feasible
    }


def _inequality_cvx(v):
    import cvxpy as cp

    x = cp.Variable(v["q"].shape[-1])
    p = 0.5 * (v["P"] + v["P"].T)
    constraints = [v["G"] @ x <= v["h"], x >= -1, x <= 1]
    cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, p) + v["q"] @ x), constraints).solve(
        solver=cp.CLARABEL, **TIGHT
    )
    return x.value


CASES: dict[str, Case] = {
    "tv_denoise": Case(_tv, _tv_cvx, admm_unrolled),
    "lasso": Case(_lasso, _lasso_cvx, admm_unrolled),
    "inequality_qp": Case(_inequality, _inequality_cvx, admm_unrolled),
}
