"""ADMM's polish of the final active set (OSQP's, for QPs: f₀ quadratic, every block a box):
the answer it gives against CVXPY and against ADMM run without it to a tight tolerance, the
iterations it saves, a wrong guess rejected by the forward's own stopping test, and the
degenerate points: an equality with a zero multiplier, a redundant equality, a weakly active
bound.
"""

from __future__ import annotations

import pytest
import torch
from cases import load_module
from test_admm import built
from test_admm_speed import cvxpy_qp, qpth_qp, solve

F64 = torch.float64


@pytest.mark.parametrize(("n", "p", "most"), [(10, 10, 150), (50, 50, 500)])
def test_polish_ends_qpth_qps_in_a_few_hundred_iterations(n, p, most):
    module = load_module("inequality_qp")
    values = qpth_qp(n, p, 16, seed=0)
    layer = module.InequalityQp(on_nonconvergence="raise")
    x = layer(**values)
    info = layer.info
    assert bool(info.converged.all()) and bool(info.polished.all())
    assert int(info.iterations.max()) <= most, info.iterations.tolist()
    torch.testing.assert_close(x, cvxpy_qp(values), atol=1e-8, rtol=0)


def test_polished_answer_and_gradient_equal_unpolished_admm_run_tight(monkeypatch):
    module = load_module("inequality_qp")
    values = qpth_qp(10, 10, 8, seed=2)
    names = ["P", "q", "G", "h"]
    polished = module.InequalityQp(on_nonconvergence="raise")
    x1, g1 = solve(polished, values, names)
    assert bool(polished.info.polished.all())
    monkeypatch.setattr(module, "_admm_polishable", lambda p: False)
    plain = module.InequalityQp(on_nonconvergence="raise", tol=1e-13, max_iter=100_000)
    x2, g2 = solve(plain, values, names)
    assert not bool(plain.info.polished.any())
    assert int(plain.info.iterations.max()) > 5 * int(polished.info.iterations.max())
    torch.testing.assert_close(x1, x2, atol=1e-11, rtol=0)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-9 * max(1.0, float(b.abs().max())), rtol=0)


def test_a_wrong_guess_is_rejected_and_changes_nothing(monkeypatch):
    module = load_module("inequality_qp")
    values = qpth_qp(10, 10, 8, seed=4)
    reference = cvxpy_qp(values)

    def all_free(s, rho, lo, hi, dims):
        free = torch.zeros(s.shape[:-1] + lo.shape[-1:], dtype=torch.bool)
        return free, free

    monkeypatch.setattr(module, "_admm_guess", all_free)
    layer = module.InequalityQp(on_nonconvergence="raise")
    x = layer(**values)
    assert bool(layer.info.converged.all())
    assert not bool(layer.info.polished.any())  # every candidate failed the stopping test
    torch.testing.assert_close(x, reference, atol=1e-7, rtol=0)


DEGENERATE = """foldgen: 1
name: polish_degenerate
dims: {n: 6, m: 3}
parameters:
  t: {shape: [n]}
  A: {shape: [m, n]}
  b: {shape: [m]}
variables:
  x: {shape: [n]}
minimize: 0.5 * sum_squares(x - t)
constraints:
  - A @ x == b
  - 0 <= x <= 1
solver: {rule: admm, rho: 1.0, max_iter: 20000, tol: 1.0e-11}
"""


def test_polish_at_degenerate_points(tmp_path):
    """x₀ = t₀ = 0 sits on its bound with a zero multiplier; the first equality (x₁ + x₂ = 0.8,
    met by t itself) has a zero multiplier and is stated twice (a singular KKT matrix without
    the regularisation); the last (x₃ + x₄ + x₅ = 1) is strongly active. The answer is known:
    (0, 0.3, 0.5, t₃₋₅ − 0.1)."""
    module = built(tmp_path, DEGENERATE, "polish_degenerate")
    A = torch.tensor([[0, 1, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=F64)
    t = torch.tensor([[0.0, 0.3, 0.5, 0.2, 0.7, 0.4], [0.0, 0.3, 0.5, 0.5, 0.1, 0.7]], dtype=F64)
    layer = module.PolishDegenerate(A=A, b=torch.tensor([0.8, 0.8, 1.0], dtype=F64))
    x = layer(t=t)
    exact = t.clone()
    exact[:, 3:] -= (t[:, 3:].sum(-1, keepdim=True) - 1) / 3
    assert bool(layer.info.converged.all()) and bool(layer.info.polished.all())
    torch.testing.assert_close(x, exact, atol=1e-12, rtol=0)


# ---------------------------------------------------------------- the backward's KKT solve


def test_auto_backward_of_a_qp_is_its_active_sets_kkt_solve():
    """auto takes one KKT solve on the clamped rows (recorded as active_set); the fold
    (gmres through the ADMM map) gives the same gradient for every input."""
    module = load_module("inequality_qp")
    values = qpth_qp(20, 15, 8, seed=6)
    names = ["P", "q", "G", "h"]
    kkt = module.InequalityQp(on_nonconvergence="raise")
    _, g_kkt = solve(kkt, values, names)
    assert kkt.backward_info.method == "active_set"
    assert kkt.backward_info.iterations.tolist() == [1] * 8
    assert float(kkt.backward_info.residual.max()) <= 1e-12
    fold = module.InequalityQp(on_nonconvergence="raise", backward_method="gmres",
                               backward_tol=1e-12)  # fmt: skip
    _, g_fold = solve(fold, values, names)
    assert fold.backward_info.method == "gmres"
    for name, a, b in zip(names, g_kkt, g_fold):
        torch.testing.assert_close(a, b, atol=1e-9 * max(1.0, float(b.abs().max())), rtol=0,
                                   msg=name)  # fmt: skip


def test_a_redundant_active_row_leaves_the_backward_to_the_fold(tmp_path):
    """The duplicated equality makes the active set's KKT matrix singular: the backward
    folds the ADMM map instead, and the gradient is still the exact one (∂x/∂t is the
    projection onto the free coordinates' affine constraints)."""
    module = built(tmp_path, DEGENERATE, "polish_degenerate_backward")
    A = torch.tensor([[0, 1, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=F64)
    layer = module.PolishDegenerate(A=A, b=torch.tensor([0.8, 0.8, 1.0], dtype=F64),
                                    on_nonconvergence="raise")  # fmt: skip
    t = torch.tensor([[0.0, 0.3, 0.5, 0.2, 0.7, 0.4]], dtype=F64, requires_grad=True)
    w = torch.tensor([[1.0, 2.0, -1.0, 0.5, 1.5, -2.0]], dtype=F64)
    (g,) = torch.autograd.grad((layer(t=t) * w).sum(), t)
    assert layer.backward_info.method != "active_set"
    assert bool(layer.backward_info.converged.all())
    # x₁ + x₂ = 0.8 and x₃ + x₄ + x₅ = 1 on the free coordinates 1–5; x₀ is weakly active
    expected = torch.tensor([[0.0, 1.5, 1.5, 0.0, 0.0, 0.0]], dtype=F64)
    expected[0, 1:3] = w[0, 1:3] - w[0, 1:3].mean()
    expected[0, 3:] = w[0, 3:] - w[0, 3:].mean()
    # the weakly active bound: free (∂x₀/∂t₀ = 1) or clamped (0), to rounding
    assert min(abs(float(g[0, 0])), abs(float(g[0, 0]) - 1)) <= 1e-9
    expected[0, 0] = g[0, 0]
    torch.testing.assert_close(g, expected, atol=1e-9, rtol=0)
