"""The SQP forward's shortcuts (issue 12) change its cost, never its answer: a warm active
set that passes the equality QP's KKT checks replaces the interior point, the interior point
runs on the other elements only, and a Hessian that is positive definite beyond the margin
gets δ = 0 from one Cholesky, without the projector and the eigenvalues."""

from __future__ import annotations

import pytest
import torch
from cases import load_module

from foldgen.runtime import qp, sqp

F64 = torch.float64


def _random_qps(batch, n, p, q, gen):
    M = torch.randn(batch, n, n, generator=gen, dtype=F64)
    H = M @ M.mT / n + 0.1 * torch.eye(n, dtype=F64)
    c = torch.randn(batch, n, generator=gen, dtype=F64)
    G = torch.randn(batch, p, n, generator=gen, dtype=F64)
    b = torch.rand(batch, p, generator=gen, dtype=F64) * 0.5
    A = torch.randn(batch, q, n, generator=gen, dtype=F64)
    e = torch.zeros(batch, q, dtype=F64)
    return H, c, G, b, A, e


class _Spy:
    """Counts the elements `_qp_interior` is asked to solve."""

    def __init__(self, monkeypatch):
        self.sizes: list[int] = []
        original = qp._qp_interior

        def spy(H, c, G, b, A, e, todo, max_iter=100):
            self.sizes.append(int(todo.sum()))
            return original(H, c, G, b, A, e, todo, max_iter)

        monkeypatch.setattr(qp, "_qp_interior", spy)


def test_a_right_warm_active_set_skips_the_interior_point(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    data = _random_qps(16, 8, 12, 2, gen)
    todo = torch.ones(16, dtype=torch.bool)
    d, lam, nu, solved = qp._qp_solve(*data, todo)
    assert bool(solved.all())
    active = lam > 0
    assert 0 < int(active.sum()) < active.numel()  # a mixed active set
    spy = _Spy(monkeypatch)
    d_w, lam_w, nu_w, solved_w = qp._qp_solve(*data, todo, warm=active)
    assert spy.sizes == []  # no interior point at all
    assert bool(solved_w.all())
    for warm, cold in ((d_w, d), (lam_w, lam), (nu_w, nu)):
        torch.testing.assert_close(warm, cold, rtol=1e-10, atol=1e-12)


def test_a_wrong_warm_set_runs_the_interior_point_on_those_elements_only(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    data = _random_qps(10, 6, 9, 1, gen)
    todo = torch.ones(10, dtype=torch.bool)
    todo[7] = False  # not asked for: zero, not solved
    d, lam, nu, solved = qp._qp_solve(*data, todo)
    warm = lam > 0
    wrong = torch.zeros(10, dtype=torch.bool)
    wrong[[2, 5]] = True
    warm[wrong] = ~warm[wrong]  # every row flipped: those guesses fail the KKT checks
    spy = _Spy(monkeypatch)
    d_w, lam_w, nu_w, solved_w = qp._qp_solve(*data, todo, warm=warm)
    assert spy.sizes == [2]
    assert torch.equal(solved_w, solved)
    assert torch.equal(d_w[7], torch.zeros_like(d_w[7]))
    torch.testing.assert_close(d_w, d, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lam_w, lam, rtol=1e-10, atol=1e-12)


def test_a_warm_set_missing_a_barely_violated_row_is_not_accepted(monkeypatch):
    """Stiff curvature (H₀₀ = 10¹², an entropy's 1/x near x = 0) makes the equality QP
    without the row d₀ ≤ 0 violate it by only 10⁻⁹, below the polish's tolerance, while
    the row's true multiplier is 10³: the guess must fail and the interior point find it."""
    H = torch.diag(torch.tensor([1e12, 1.0], dtype=F64))[None]
    c = torch.tensor([[-1e3, 1.0]], dtype=F64)
    G, b = torch.tensor([[[1.0, 0.0]]], dtype=F64), torch.zeros(1, 1, dtype=F64)
    A, e = torch.zeros(1, 0, 2, dtype=F64), torch.zeros(1, 0, dtype=F64)
    todo = torch.ones(1, dtype=torch.bool)
    spy = _Spy(monkeypatch)
    d, lam, nu, solved = qp._qp_solve(H, c, G, b, A, e, todo, warm=torch.zeros(1, 1).bool())
    assert spy.sizes == [1] and bool(solved.all())
    torch.testing.assert_close(lam, torch.tensor([[1e3]], dtype=F64), rtol=1e-8, atol=0)
    torch.testing.assert_close(d, torch.tensor([[0.0, -1.0]], dtype=F64), rtol=0, atol=1e-9)


def test_entropic_knapsack_sqp_converges_with_warm_active_sets():
    """The benchmark's quick knapsack (c ~ 5 N(0, 1), so some x* ≈ 10⁻²⁰ sit near their
    lower bound) once stalled on one element for max_iter: every element converges and
    matches the PGD layer's point."""
    gen = torch.Generator().manual_seed(1)
    c = 5 * torch.randn(16, 30, generator=gen, dtype=F64)
    bound = {"k": torch.tensor(5.0, dtype=F64), "eps": torch.tensor(1.0, dtype=F64)}
    sqp_layer = load_module("entropic_knapsack_sqp").EntropicKnapsackSqp(**bound)
    x = sqp_layer(c)
    assert bool(sqp_layer.info.converged.all()), sqp_layer.info.iterations
    pgd = load_module("entropic_knapsack").EntropicKnapsack(**bound, tol=1e-12)
    torch.testing.assert_close(x, pgd(c), rtol=0, atol=1e-7)


def _delta_reference(H, J_g, J_h, active):
    """δ of `_sqp_regularization`'s definition, element by element, with no shortcut."""
    out = []
    for i in range(H.shape[0]):
        n = H.shape[-1]
        M = torch.cat([J_h[i], J_g[i][active[i]]], 0)
        P = torch.eye(n, dtype=F64) - torch.linalg.pinv(M) @ M if M.shape[0] else torch.eye(n)
        scale = 1 + H[i].abs().max()
        R = P @ H[i] @ P + scale * (torch.eye(n, dtype=F64) - P)
        lowest = torch.linalg.eigvalsh((R + R.T) / 2)[0]
        out.append((torch.finfo(F64).eps ** 0.5 * scale - lowest).clamp_min(0))
    return torch.stack(out)


@pytest.mark.parametrize("mixed", [True, False])
def test_regularization_shortcut_gives_the_same_delta(monkeypatch, mixed):
    gen = torch.Generator().manual_seed(2)
    batch, n = 8, 6
    A = torch.randn(batch, n, n, generator=gen, dtype=F64)
    H = A @ A.mT / n + 0.05 * torch.eye(n, dtype=F64)  # positive definite
    if mixed:
        H[[1, 4]] = A[[1, 4]] + A[[1, 4]].mT  # indefinite
    J_g = torch.randn(batch, 4, n, generator=gen, dtype=F64)
    J_h = torch.randn(batch, 1, n, generator=gen, dtype=F64)
    active = torch.rand(batch, 4, generator=gen) < 0.5
    calls = []
    eigvalsh = torch.linalg.eigvalsh

    def counted(M):
        calls.append(M.shape[0])
        return eigvalsh(M)

    monkeypatch.setattr(torch.linalg, "eigvalsh", counted)
    delta, ok = sqp._sqp_regularization(H, J_g, J_h, active)
    assert bool(ok.all())
    assert calls == ([2] if mixed else [])  # only the indefinite elements, gathered
    monkeypatch.setattr(torch.linalg, "eigvalsh", eigvalsh)
    expected = _delta_reference(H, J_g, J_h, active)
    torch.testing.assert_close(delta, expected, rtol=1e-10, atol=1e-14)
    if mixed:
        assert bool((delta[[1, 4]] >= 0).all()) and bool((delta[[0, 2, 3, 5, 6, 7]] == 0).all())


@pytest.mark.parametrize("shared_G", [True, False])
def test_bound_rows_split_gives_the_dense_normal_matrix(shared_G):
    """Gᵀ diag(W) G with the bound rows (one nonzero) on the diagonal and only the other
    rows in the product equals the dense product; the product's rows are the batch's
    largest count of non-bound rows, and a mostly dense G keeps the dense product."""
    gen = torch.Generator().manual_seed(5)
    batch, n = 4, 7
    eye = torch.eye(n, dtype=F64)
    dense = torch.randn(batch, 2, n, generator=gen, dtype=F64)
    G = torch.cat([-eye.expand(batch, n, n), 3 * eye[:2].expand(batch, 2, n), dense], -2)
    G[1, -1] = 0
    G[1, -1, 3] = 2.5  # element 1: its last row is a bound too
    if shared_G:
        G = G[0]
    W = torch.rand(batch, G.shape[-2], generator=gen, dtype=F64)
    H = torch.randn(n, n, generator=gen, dtype=F64)
    rows = qp._qp_bound_rows(G, (batch,))
    assert rows is not None and rows[3].shape == (batch, 2, n)
    expected = H + G.mT @ (W[..., :, None] * G)
    torch.testing.assert_close(
        qp._qp_normal_matrix(H, G, W, rows), expected, rtol=1e-13, atol=1e-13
    )
    assert qp._qp_bound_rows(torch.randn(batch, 5, n, generator=gen, dtype=F64), (batch,)) is None


def test_mv_row_and_column_forms_agree():
    from foldgen.runtime.core import _mv

    gen = torch.Generator().manual_seed(6)
    for shape_A, shape_x in [
        ((64, 50, 40), (64, 40)),
        ((3, 4, 5), (3, 5)),
        ((1, 60, 60), (8, 60)),
    ]:
        A = torch.randn(shape_A, generator=gen, dtype=F64)
        x = torch.randn(shape_x, generator=gen, dtype=F64)
        expected = torch.einsum("...mn,...n->...m", A, x)
        torch.testing.assert_close(_mv(A, x), expected, rtol=1e-13, atol=1e-13)
