"""PGD's active-set backward (issue 12): the folded system restricted to the active face,
solved by one batched Cholesky of the free block (box) or of P∇²fP + I − P (projector sets).

Checked against the closed-form implicit gradient of a box QP, at a vertex and at weakly
active bounds, against the iterative and dense solvers, with chunking forced, with a
Hessian that breaks the structure (it must fall back, never hand out a wrong gradient),
and for the shapes it builds (a shared Hessian is never copied per element).
"""

from __future__ import annotations

import math

import pytest
import torch
from cases import CASES, load_module
from test_battery import draw
from test_products import _Shapes

from foldgen.runtime import pgd

F64 = torch.float64
BOX_QP = load_module("box_qp")


def _spd(n, gen, shift=0.1):
    M = torch.randn(n, n, generator=gen, dtype=F64)
    return M @ M.T / n + shift * torch.eye(n, dtype=F64)


def _gradient(layer, c, weight, **inputs):
    c = c.clone().requires_grad_(True)
    x = layer(c=c, **inputs)
    (grad,) = torch.autograd.grad((x * weight).sum(), c)
    return x.detach(), grad


def test_box_qp_matches_the_closed_form_implicit_gradient():
    """x*_F = −Q_FF⁻¹(c_F + Q_FA x*_A): ∂⟨w, x*⟩/∂c = −Q_FF⁻¹ w_F on F and 0 off it."""
    gen = torch.Generator().manual_seed(0)
    n, batch = 30, 8
    Q = _spd(n, gen)
    c = 2 * torch.randn(batch, n, generator=gen, dtype=F64)
    weight = torch.randn(batch, n, generator=gen, dtype=F64)
    layer = BOX_QP.BoxQp(Q=Q, backward_method="active_set", tol=1e-12)
    x, grad = _gradient(layer, c, weight)
    assert layer.backward_info.method == "active_set"
    assert bool(layer.backward_info.converged.all())
    expected = torch.zeros_like(grad)
    for b in range(batch):
        free = (x[b] > 1e-9) & (x[b] < 1 - 1e-9)
        assert 0 < int(free.sum()) < n  # a mixed active set
        Q_FF = Q[free][:, free]
        expected[b, free] = -torch.linalg.solve(Q_FF, weight[b, free])
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


def test_vertex_gives_the_zero_gradient():
    """Every bound strictly active: x* does not move with c, so the gradient is exactly 0."""
    gen = torch.Generator().manual_seed(1)
    n = 12
    Q = _spd(n, gen)
    c = 10 + torch.rand(4, n, generator=gen, dtype=F64)  # x* = 0
    layer = BOX_QP.BoxQp(Q=Q, backward_method="active_set")
    x, grad = _gradient(layer, c, torch.randn(4, n, generator=gen, dtype=F64))
    assert torch.equal(x, torch.zeros_like(x))
    assert torch.equal(grad, torch.zeros_like(grad))
    assert layer.backward_info.method == "active_set" and bool(layer.backward_info.converged.all())


def test_weakly_active_bound_agrees_with_the_other_methods():
    """x*₀ = 0 with ∇f₀ = 0 (a bound active with a zero multiplier): the generalized Jacobian
    the projection's VJP chooses there is the same element for every method."""
    gen = torch.Generator().manual_seed(2)
    n = 10
    Q = _spd(n, gen)
    target = 0.2 + 0.6 * torch.rand(3, n, generator=gen, dtype=F64)
    target[:, 0] = 0.0
    target[:, 1] = 1.0
    c = -(target @ Q)  # ∇f(target) = 0: target is x*, with x₀, x₁ weakly active
    weight = torch.randn(3, n, generator=gen, dtype=F64)
    grads = {}
    for method in ("active_set", "direct", "gmres"):
        layer = BOX_QP.BoxQp(Q=Q, backward_method=method, backward_tol=1e-13, tol=1e-13)
        x, grads[method] = _gradient(layer, c, weight)
        torch.testing.assert_close(x, target, rtol=0, atol=1e-10)
        assert layer.backward_info.method == method
    torch.testing.assert_close(grads["active_set"], grads["direct"], rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(grads["active_set"], grads["gmres"], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("shared", [True, False])
def test_chunked_free_blocks_agree(monkeypatch, shared):
    """A batch split into chunks (forced by a small limit) gives the same solution, to
    rounding: each chunk pads to its own largest free set, which changes LAPACK's blocking."""
    gen = torch.Generator().manual_seed(3)
    n, batch = 16, 6
    H = _spd(n, gen) if shared else torch.stack([_spd(n, gen) for _ in range(batch)])
    free = torch.rand(batch, n, generator=gen) < 0.6
    free[0] = False  # an element with an empty free set
    b = torch.randn(batch, n, generator=gen, dtype=F64)
    whole = pgd._free_block_solve(H, free, b)
    monkeypatch.setattr(pgd, "_DENSE_LIMIT", 2 * n * n)  # two elements per chunk
    chunked = pgd._free_block_solve(H, free, b)
    torch.testing.assert_close(chunked, whole, rtol=1e-13, atol=1e-14)
    for i in range(batch):
        Hi = H if shared else H[i]
        F = free[i]
        expected = torch.zeros(n, dtype=F64)
        if F.any():
            expected[F] = torch.linalg.solve(Hi[F][:, F], b[i, F])
        torch.testing.assert_close(whole[i], expected, rtol=1e-12, atol=1e-13)


def test_spd_solve_falls_back_to_lu_and_flags_singular_blocks():
    gen = torch.Generator().manual_seed(4)
    A = torch.randn(3, 5, 5, generator=gen, dtype=F64)
    M = A + A.mT  # symmetric, indefinite
    M[2] = 0  # singular
    b = torch.randn(3, 5, generator=gen, dtype=F64)
    x = pgd._spd_solve(M, b)
    torch.testing.assert_close(x[:2], torch.linalg.solve(M[:2], b[:2]), rtol=1e-10, atol=1e-12)
    assert bool(torch.isnan(x[2]).all())


def test_structure_that_does_not_hold_falls_back_instead_of_a_wrong_gradient():
    """Q declared symmetric but not: the Cholesky of its lower triangle solves another
    system; the residual through Φᵀ itself sees it and the elements fall back to GMRES."""
    gen = torch.Generator().manual_seed(5)
    n = 15
    Q = _spd(n, gen) + 0.05 * torch.randn(n, n, generator=gen, dtype=F64)
    c = torch.randn(4, n, generator=gen, dtype=F64)
    weight = torch.randn(4, n, generator=gen, dtype=F64)
    reference = BOX_QP.BoxQp(Q=Q, backward_method="gmres", backward_tol=1e-12)
    _, expected = _gradient(reference, c, weight)
    layer = BOX_QP.BoxQp(Q=Q, backward_method="active_set", backward_tol=1e-12)
    x, grad = _gradient(layer, c, weight)
    info = layer.backward_info
    asymmetric = ((x > 0) & (x < 1)).sum(-1) >= 2  # a free block that sees Q's asymmetry
    assert int(asymmetric.sum()) >= 3
    assert info.method == "active_set" and torch.equal(info.fallback, asymmetric)
    torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-11)
    strict = BOX_QP.BoxQp(
        Q=Q, backward_method="active_set", backward_fallback=False, on_nonconvergence="ignore"
    )
    _, grad = _gradient(strict, c, weight)
    assert torch.equal(strict.backward_info.converged, ~asymmetric)
    assert torch.equal(grad[asymmetric], torch.zeros_like(grad[asymmetric]))  # zero, reported


def test_shared_hessian_is_built_once_without_batch_copies():
    """With Q shared by the batch the dense Hessian is (n, n) and no (B, n, n) tensor (nor
    any tensor of B·n² entries) appears anywhere in the backward."""
    gen = torch.Generator().manual_seed(6)
    n, batch = 40, 32
    Q = _spd(n, gen)
    c = torch.randn(batch, n, generator=gen, dtype=F64, requires_grad=True)
    layer = BOX_QP.BoxQp(Q=Q, backward_method="active_set")
    x = layer(c=c)
    with _Shapes() as record:
        (x.sum()).backward()
    assert layer.backward_info.method == "active_set"
    sizes = [math.prod(s) for _, shapes in record.ops for s in shapes]
    free = int(((x > 0) & (x < 1)).sum(-1).max())
    assert max(sizes) <= max(batch * free * free, n * n), record.ops
    assert max(sizes) < batch * n * n
    H = pgd._dense_hessian(BOX_QP.PROBLEM, x.detach(), (Q, c.detach()))
    assert H.shape == (n, n)
    batched = pgd._dense_hessian(BOX_QP.PROBLEM, x.detach(), (Q.expand(batch, n, n), c.detach()))
    assert batched.shape == (batch, n, n)
    torch.testing.assert_close(batched, Q.expand(batch, n, n), rtol=0, atol=1e-15)


def test_closed_form_dense_phi_equals_the_one_from_products():
    """`direct` on a structured set uses Φᵀ in closed form; it equals Φᵀ built column by
    column from the matrix-free product, for the box and for a projector set."""
    for name in ("box_qp", "equality_qp", "sparsemax"):
        module = load_module(name)
        values = draw(CASES[name], batch=(3,), seed=7)
        layer = module.__dict__[module.__all__[0]](on_nonconvergence="ignore")
        p = module.PROBLEM
        ordered = tuple(values[k] for k in p.parameters)
        x = layer(**values)
        d, S = layer.info.alpha, p.set.prepare(p.set_data(x, *ordered))
        phi_t, y = pgd._pgd_phi_t(p, x, d, S, ordered)
        structure = pgd._ActiveSet(p, x, y, d, S, ordered)
        assert structure.available, name
        n = x.shape[-1]
        columns = torch.stack([phi_t(e.expand_as(x)) for e in torch.eye(n, dtype=F64)], -1)
        torch.testing.assert_close(structure.dense(), columns, rtol=1e-12, atol=1e-13)


def test_a_linear_objective_has_a_zero_dense_hessian():
    """A linear f prints ∇²f u as (n,) zeros; the dense Hessian the active-set backward
    builds from it must still be the (n, n) zero matrix (found by the fuzzer: a crash in
    the backward of an unbounded element, which must get a zero gradient and a report)."""
    import foldgen

    text = (
        "foldgen: 1\nname: linear_fuzz\ndims: {n: 1}\nparameters:\n  a: {shape: [n]}\n"
        "variables:\n  x: {shape: [n]}\nminimize: a @ x + 0.5 * sum(x)\nsolver: {rule: pgd}\n"
    )
    layer = foldgen.compile(text)(on_nonconvergence="ignore")
    a = torch.tensor([[0.3], [-2.0]], dtype=torch.float64, requires_grad=True)
    x = layer(a)
    assert not bool(layer.info.feasible.any())  # unbounded below: reported, not raised
    x.sum().backward()
    assert torch.equal(a.grad, torch.zeros_like(a))
    from foldgen.runtime.pgd import _dense_hessian

    H = _dense_hessian(type(layer).__init__.__globals__["PROBLEM"], x.detach(), [a.detach()])
    assert H.shape == (1, 1) and float(H.abs().max()) == 0.0
