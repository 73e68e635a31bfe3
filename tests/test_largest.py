"""max/min of a vector, norm_inf, sum_largest/sum_smallest and norm(x, p) (issue 11): the
derivative rule (a top-k mask) against finite differences; as ADMM objective terms split off
by their proximal maps (Moreau: identity minus a projection onto the l1 ball or a capped
simplex), against CVXPY with gradcheck; as constraints max(x) <= r, min(x) >= r and
norm_inf(x - c) <= r, which are bounds, under pgd; the located rejections under pgd and sqp."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch
from ir_helpers import compile_function, leaf, scope

import foldgen
from foldgen.derive import gradient
from foldgen.errors import SpecError
from foldgen.parse import parse_expression
from foldgen.runtime.prox import (
    _prox_hinge,
    _prox_hinge_vjp,
    _prox_l2,
    _prox_l2_vjp,
    _prox_linf,
    _prox_linf_vjp,
    _prox_sum_largest,
    _prox_sum_largest_vjp,
)

F64 = torch.float64
TIGHT = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12}


@pytest.mark.parametrize("text", ["max(x)", "sum_largest(x, 3)", "norm_inf(x - c)", "min(x)"])
def test_subgradient_is_the_gradient_away_from_ties(text):
    x, c = leaf("x", ("n",), "var"), leaf("c", ("n",))
    e = parse_expression(text, scope([x, c], {"n": 7}))
    _, fn = compile_function("_f", [x, c], [e, gradient(e, x)])
    g = torch.Generator().manual_seed(0)
    xv = torch.randn(5, 7, generator=g, dtype=F64)
    cv = torch.randn(5, 7, generator=g, dtype=F64)
    value, grad = fn(xv, cv)
    xs = xv.clone().requires_grad_()
    reference = fn(xs, cv)[0]
    (auto,) = torch.autograd.grad(reference.sum(), xs)
    torch.testing.assert_close(grad, auto, rtol=0, atol=1e-15)
    for i in range(7):  # central differences of the printed value
        step = torch.zeros_like(xv)
        step[..., i] = 1e-6
        fd = (fn(xv + step, cv)[0] - fn(xv - step, cv)[0]) / 2e-6
        torch.testing.assert_close(grad[..., i], fd, rtol=0, atol=1e-8)


def _prox_reference(v, t, kind, k=1):
    z = cp.Variable(v.shape[0])
    if kind == "hinge":
        g = cp.sum(cp.pos(z))
    elif kind == "l2":
        g = cp.norm(z, 2)
    else:
        g = cp.norm_inf(z) if kind == "linf" else cp.sum_largest(z, k)
    cp.Problem(cp.Minimize(t * g + 0.5 * cp.sum_squares(z - v))).solve(solver=cp.CLARABEL, **TIGHT)
    return z.value


@pytest.mark.parametrize(
    "kind,k", [("linf", 1), ("sum_largest", 1), ("sum_largest", 3), ("hinge", 1), ("l2", 1)]
)
def test_proxes_match_cvxpy_and_their_vjps_match_differences(kind, k):
    g = torch.Generator().manual_seed(1)
    w = 2 * torch.randn(4, 6, generator=g, dtype=F64)
    o = torch.randn(4, 6, generator=g, dtype=F64)
    t = 0.5 + torch.rand(4, generator=g, dtype=F64)
    kk = torch.full((4,), float(k), dtype=F64)
    proxes = {
        "linf": lambda w, o, t: _prox_linf(w, o, t),
        "hinge": lambda w, o, t: _prox_hinge(w, o, t),
        "l2": lambda w, o, t: _prox_l2(w, o, t),
        "sum_largest": lambda w, o, t: _prox_sum_largest(w, o, t, kk),
    }
    out = proxes[kind](w, o, t)
    for e in range(4):
        ref = _prox_reference((w[e] + o[e]).numpy(), float(t[e]), kind, k) - o[e].numpy()
        np.testing.assert_allclose(out[e].numpy(), ref, atol=1e-7)

    def forward(w, o, t):
        return proxes[kind](w, o, t)

    v = torch.randn(4, 6, generator=g, dtype=F64)
    if kind == "linf":
        bars = _prox_linf_vjp(v, w, o, t)
    elif kind == "hinge":
        bars = _prox_hinge_vjp(v, w, o, t)
    elif kind == "l2":
        bars = _prox_l2_vjp(v, w, o, t)
    else:
        bars = _prox_sum_largest_vjp(v, w, o, t, kk)
    # the closed-form VJP against central differences of the forward
    for bar, i in zip(bars, range(3)):
        base = [w, o, t]
        fd = torch.zeros_like(base[i])
        flat = fd.reshape(-1)
        for j in range(flat.numel()):
            plus = [b.clone() for b in base]
            minus = [b.clone() for b in base]
            plus[i].reshape(-1)[j] += 1e-6
            minus[i].reshape(-1)[j] -= 1e-6
            flat[j] = ((forward(*plus) - forward(*minus)) * v).sum() / 2e-6
        torch.testing.assert_close(bar, fd, rtol=0, atol=1e-6)


def _admm_spec(term):
    return f"""
foldgen: 1
name: largest_fit
dims: {{n: 6, m: 9}}
parameters:
  A: {{shape: [m, n]}}
  y: {{shape: [n]}}
  lam: {{shape: [], default: 0.7}}
variables:
  x: {{shape: [n]}}
minimize: 0.5 * sum_squares(x - y) + lam * {term}
constraints:
  - -2 <= x <= 2
solver: {{rule: admm, max_iter: 20000, tol: 1.0e-12}}
backward: {{method: direct}}
"""


TERMS = {
    "norm_inf(A @ x - 1)": lambda z, A: cp.norm_inf(A @ z - 1),
    "max(A @ x)": lambda z, A: cp.max(A @ z),
    "sum_largest(A @ x + 0.5, 3)": lambda z, A: cp.sum_largest(A @ z + 0.5, 3),
    "norm(x, 'inf')": lambda z, A: cp.norm(z, "inf"),
}


@pytest.mark.parametrize("term", list(TERMS))
def test_admm_splits_the_term_off_and_matches_cvxpy(term):
    layer = foldgen.compile(_admm_spec(term))(on_nonconvergence="raise")
    g = torch.Generator().manual_seed(2)
    A = torch.randn(3, 9, 6, generator=g, dtype=F64)
    y = 2 * torch.randn(3, 6, generator=g, dtype=F64)
    lam = torch.tensor(0.7, dtype=F64)
    x = layer(A, y, lam)
    for e in range(3):
        z = cp.Variable(6)
        objective = 0.5 * cp.sum_squares(z - y[e].numpy()) + 0.7 * TERMS[term](z, A[e].numpy())
        cp.Problem(cp.Minimize(objective), [z >= -2, z <= 2]).solve(solver=cp.CLARABEL, **TIGHT)
        np.testing.assert_allclose(x[e].numpy(), z.value, atol=1e-6)
    inputs = (
        A[:1].clone().requires_grad_(),
        y[:1].clone().requires_grad_(),
        lam.clone().requires_grad_(),
    )
    assert torch.autograd.gradcheck(lambda *v: layer(*v), inputs, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize(
    "constraint,cvx",
    [
        ("max(x) <= r", lambda z, c, r: [cp.max(z) <= r]),
        ("min(x) >= -r", lambda z, c, r: [cp.min(z) >= -r]),
        ("norm_inf(x - c) <= r", lambda z, c, r: [cp.norm_inf(z - c) <= r]),
    ],
)
def test_max_min_and_norm_inf_constraints_are_bounds_under_pgd(constraint, cvx):
    spec = f"""
foldgen: 1
name: linf_projection
dims: {{n: 7}}
parameters:
  y: {{shape: [n]}}
  c: {{shape: [n]}}
  r: {{shape: [], default: 0.5}}
variables:
  x: {{shape: [n]}}
minimize: 0.5 * sum_squares(x - y)
constraints:
  - {constraint}
solver: {{rule: pgd, max_iter: 1000, tol: 1.0e-12}}
"""
    module_cls = foldgen.compile(spec)
    layer = module_cls(on_nonconvergence="raise")
    g = torch.Generator().manual_seed(3)
    y = torch.randn(3, 7, generator=g, dtype=F64)
    c = 0.3 * torch.randn(3, 7, generator=g, dtype=F64)
    r = torch.tensor(0.5, dtype=F64)
    x = layer(y, c, r)
    for e in range(3):
        z = cp.Variable(7)
        problem = cp.Problem(
            cp.Minimize(cp.sum_squares(z - y[e].numpy())), cvx(z, c[e].numpy(), 0.5)
        )
        problem.solve(solver=cp.CLARABEL, **TIGHT)
        np.testing.assert_allclose(x[e].numpy(), z.value, atol=1e-7)
    inputs = tuple(t[:1].clone().requires_grad_() for t in (y, c)) + (r.clone().requires_grad_(),)
    assert torch.autograd.gradcheck(lambda *v: layer(*v), inputs, atol=1e-6)


def test_pgd_and_sqp_reject_the_kinks_where_they_are():
    text = _admm_spec("max(A @ x)")
    with pytest.raises(SpecError, match=r"rule 'pgd' needs a differentiable objective, and 'max"):
        foldgen.compile(text.replace("rule: admm", "rule: pgd"))
    with pytest.raises(SpecError, match=r"max/min/norm_inf/sum_largest are not differentiable"):
        foldgen.compile(text.replace("rule: admm", "rule: sqp"))
    with pytest.raises(SpecError, match=r"has a negative weight"):
        foldgen.compile(_admm_spec("min(A @ x)"))


def test_a_soft_margin_svm_splits_its_hinge_off_and_matches_cvxpy():
    """The SVM as cvxpylayers' and JAXopt's examples write it: weights w, a scalar bias b and
    the hinge Σ max(1 − y ⊙ (X w + b), 0) (pos of an affine map of the packed (w, b))."""
    spec = """
foldgen: 1
name: svm
dims: {N: 16, d: 3}
parameters:
  X: {shape: [N, d]}
  y: {shape: [N], grad: false}
  C: {shape: [], default: 1.0}
variables:
  w: {shape: [d]}
  b: {}
minimize: 0.5 * sum_squares(w) + C * sum(pos(1 - multiply(y, X @ w + b)))
solver: {rule: admm, max_iter: 50000, tol: 1.0e-12}
backward: {method: direct}
"""
    layer = foldgen.compile(spec)(on_nonconvergence="raise")
    g = torch.Generator().manual_seed(4)
    X = torch.randn(2, 16, 3, generator=g, dtype=F64)
    y = torch.sign(X[..., 0] + 0.5 * torch.randn(2, 16, generator=g, dtype=F64))
    C = torch.tensor(1.0, dtype=F64)
    w, b = layer(X, y, C)
    for e in range(2):
        wv, bv = cp.Variable(3), cp.Variable()
        hinge = cp.sum(cp.pos(1 - cp.multiply(y[e].numpy(), X[e].numpy() @ wv + bv)))
        cp.Problem(cp.Minimize(0.5 * cp.sum_squares(wv) + hinge)).solve(
            solver=cp.CLARABEL, **TIGHT
        )
        np.testing.assert_allclose(w[e].numpy(), wv.value, atol=1e-6)
        np.testing.assert_allclose(float(b[e]), bv.value, atol=1e-6)
    inputs = (X[:1].clone().requires_grad_(), C.clone().requires_grad_())
    assert torch.autograd.gradcheck(
        lambda X, C: layer(X, y[:1], C), inputs, atol=1e-5, fast_mode=True
    )


def test_group_lasso_splits_each_norm2_off_and_zeroes_whole_groups():
    """JAXopt's group lasso: one norm2 term per group; a group whose gradient is small is
    0 (its block z exactly, x to the tolerance: where norm2 has no gradient the prox is
    still exact), as CVXPY says."""
    spec = """
foldgen: 1
name: group_lasso
dims: {m: 12, n: 6}
parameters:
  A: {shape: [m, n]}
  b: {shape: [m]}
  lam: {shape: [], default: 1.0}
variables:
  x: {shape: [n]}
minimize: 0.5 * sum_squares(A @ x - b) + lam * norm2(x[0:3]) + lam * norm2(x[3:6])
solver: {rule: admm, max_iter: 50000, tol: 1.0e-12}
backward: {method: direct}
"""
    layer = foldgen.compile(spec)(on_nonconvergence="raise")
    g = torch.Generator().manual_seed(5)
    A = torch.randn(2, 12, 6, generator=g, dtype=F64)
    beta = torch.randn(2, 3, 1, generator=g, dtype=F64)
    b = (A[..., :3] @ beta)[..., 0] + 0.3 * torch.randn(2, 12, generator=g, dtype=F64)
    lam = torch.tensor(4.0, dtype=F64)
    x = layer(A, b, lam)
    for e in range(2):
        z = cp.Variable(6)
        objective = 0.5 * cp.sum_squares(A[e].numpy() @ z - b[e].numpy())
        objective = objective + 4.0 * (cp.norm(z[0:3], 2) + cp.norm(z[3:6], 2))
        cp.Problem(cp.Minimize(objective)).solve(solver=cp.CLARABEL, **TIGHT)
        np.testing.assert_allclose(x[e].numpy(), z.value, atol=1e-6)
    assert float(x[..., 3:].abs().max()) < 1e-9  # the second group is off (x's z is 0)
    inputs = (A[:1].clone().requires_grad_(), b[:1].clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda A, b: layer(A, b, lam), inputs, atol=1e-5)


def test_the_sum_largest_block_grows_as_sum_largest_for_the_certificate():
    from foldgen.runtime.admm import _ADMM_SUM_LARGEST

    e = torch.randn(4, 6, generator=torch.Generator().manual_seed(6), dtype=F64)
    ck = torch.tensor([0.7, 3.0], dtype=F64).expand(4, 2)
    expected = 0.7 * e.topk(3, -1).values.sum(-1)
    torch.testing.assert_close(_ADMM_SUM_LARGEST.growth(e, (None, ck)), expected)
