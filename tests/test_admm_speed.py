"""ADMM's speed work, checked by its numbers: the shared factor of K (one (n, n) factorisation
for the whole batch and every ρ) against the batched Cholesky path, and OSQP's residual
balancing of ρ (on by default) on qpth's random inequality QPs: iterations, the solution
against CVXPY, and the gradient folded with the final ρ.
"""

from __future__ import annotations

import pytest
import torch
from cases import TIGHT, load_module

F64 = torch.float64


def qpth_qp(n, p, batch, seed):
    """qpth's random QPs (the OptNet paper's, as benchmarks/problems.py): P = LLᵀ/n + 0.1I and
    G shared, h = G z₀ + s₀ with s₀ > 0 and z₀ inside the box, q per element."""
    gen = torch.Generator().manual_seed(seed)
    L = torch.randn(n, n, generator=gen, dtype=F64)
    G = torch.randn(p, n, generator=gen, dtype=F64)
    z0 = torch.rand(batch, n, generator=gen, dtype=F64) - 0.5
    h = z0 @ G.T + torch.rand(batch, p, generator=gen, dtype=F64)
    q = torch.randn(batch, n, generator=gen, dtype=F64)
    return {"P": L @ L.T / n + 0.1 * torch.eye(n, dtype=F64), "q": q, "G": G, "h": h}


def cvxpy_qp(v):
    import cvxpy as cp

    P, G = v["P"].numpy(), v["G"].numpy()
    out = []
    for q, h in zip(v["q"].numpy(), v["h"].numpy()):
        x = cp.Variable(q.shape[-1])
        objective = 0.5 * cp.quad_form(x, cp.psd_wrap(P)) + q @ x
        constraints = [G @ x <= h, x >= -1, x <= 1]
        cp.Problem(cp.Minimize(objective), constraints).solve(solver=cp.CLARABEL, **TIGHT)
        out.append(torch.tensor(x.value, dtype=F64))
    return torch.stack(out)


def solve(layer, values, names):
    inputs = {k: v.clone().requires_grad_(k in names) for k, v in values.items()}
    x = layer(**inputs)
    weight = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    grads = torch.autograd.grad((x * weight).sum(), [inputs[k] for k in names])
    return x.detach(), grads


class Calls:
    """Counts the calls of a runtime function of a generated module (and records its args)."""

    def __init__(self, monkeypatch, module, name):
        self.calls, original = [], getattr(module, name)

        def wrapped(*args):
            self.calls.append(args)
            return original(*args)

        monkeypatch.setattr(module, name, wrapped)


def tv_data(n=10, batch=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    D = torch.diff(torch.eye(n, dtype=F64), dim=0) + 0.1 * torch.randn(n - 1, n, generator=gen)
    y = torch.randn(batch, n, generator=gen, dtype=F64)
    return {"y": y, "D": D.to(F64), "lam": torch.tensor(0.5, dtype=F64)}


@pytest.mark.parametrize(
    "name, values, names",
    [
        ("tv_denoise", tv_data(), ["y", "D"]),
        ("inequality_qp", qpth_qp(8, 6, 5, seed=2), ["P", "q", "G", "h"]),
    ],
)
def test_shared_factor_matches_the_batched_path_and_factors_once(monkeypatch, name, values, names):
    module = load_module(name)
    cls = getattr(module, module.__all__[0])
    pencils = Calls(monkeypatch, module, "_admm_pencil")
    choleskys = Calls(monkeypatch, module, "_admm_cholesky")
    layer = cls(on_nonconvergence="raise")
    x_shared, g_shared = solve(layer, values, names)
    assert len(choleskys.calls) == 0  # no per-element factor, forward or backward
    assert len(pencils.calls) >= 1
    for H, M, _ in pencils.calls:
        assert H.shape == M.shape == (x_shared.shape[-1],) * 2
    assert bool((layer.info.step != layer.rho).any())  # ρ moved, the shared factor served it
    assert isinstance(layer.info.step, torch.Tensor) and layer.info.step.shape == (len(x_shared),)

    monkeypatch.setattr(module, "_admm_pencil", lambda H, M, rho: None)  # the batched path
    batched = cls(on_nonconvergence="raise")
    x_batched, g_batched = solve(batched, values, names)
    assert len(choleskys.calls) >= 1
    # (the final ρ may differ in rounding: late adaptations read residuals near tol)
    torch.testing.assert_close(x_shared, x_batched, atol=1e-10, rtol=0)
    for a, b in zip(g_shared, g_batched):
        torch.testing.assert_close(a, b, atol=1e-10 * max(1.0, float(b.abs().max())), rtol=0)


def test_shared_factor_solves_every_rho_as_a_cholesky_of_k():
    module = load_module("inequality_qp")
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(7, 7, generator=gen, dtype=F64)
    H = a @ a.T
    G = torch.randn(5, 7, generator=gen, dtype=F64)
    M = G.T @ G + torch.eye(7, dtype=F64)
    rho = torch.tensor([1e-3, 0.3, 1.0, 40.0], dtype=F64)
    factor = module._admm_pencil(H, M, rho)
    rhs = torch.randn(4, 7, generator=gen, dtype=F64)
    x = module._admm_solve_k(factor, rho, rhs)
    K = H + rho[:, None, None] * M
    exact = torch.linalg.solve(K, rhs[..., None])[..., 0]
    torch.testing.assert_close(x, exact, atol=1e-10 * float(exact.abs().max()), rtol=0)
    assert bool(module._admm_factor_ok(factor, rho).all())


@pytest.mark.parametrize("seed", [0, 1])
def test_default_rho_adaptation_converges_qpth_qps_fast_and_right(seed):
    module = load_module("inequality_qp")
    values = qpth_qp(20, 15, 16, seed)
    layer = module.InequalityQp(on_nonconvergence="raise")  # adapt_rho by default
    assert layer.adapt_rho is True
    x = layer(**values)
    assert bool(layer.info.converged.all())
    assert int(layer.info.iterations.max()) < 1000, layer.info.iterations.tolist()
    torch.testing.assert_close(x, cvxpy_qp(values), atol=1e-6, rtol=0)


def test_adapted_gradient_matches_fixed_rho_and_finite_differences():
    module = load_module("inequality_qp")
    values = qpth_qp(20, 15, 8, seed=3)
    names = ["P", "q", "G", "h"]
    adaptive = module.InequalityQp(on_nonconvergence="raise")
    x1, g1 = solve(adaptive, values, names)
    assert bool((adaptive.info.step != adaptive.rho).any())  # folded with a moved ρ
    fixed = module.InequalityQp(on_nonconvergence="raise", adapt_rho=False, max_iter=50_000)
    x2, g2 = solve(fixed, values, names)
    assert int(adaptive.info.iterations.max()) < int(fixed.info.iterations.max())
    torch.testing.assert_close(x1, x2, atol=1e-8, rtol=0)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-7 * max(1.0, float(b.abs().max())), rtol=0)

    small = qpth_qp(4, 3, 2, seed=5)
    layer = module.InequalityQp(P=small["P"], G=small["G"], tol=1e-13, on_nonconvergence="raise")
    inputs = (small["q"].clone().requires_grad_(), small["h"].clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda q, h: layer(q=q, h=h), inputs, eps=1e-6, atol=1e-5)
    assert bool((layer.info.step != layer.rho).any())
