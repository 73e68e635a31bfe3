"""The l1 ball ‖x − c‖₁ ≤ r (PGD set and ADMM block) and the weighted box section
lo ≤ x ≤ hi, wᵀx = c (PGD set), issue 11: their projections against CVXPY (outside, inside,
on the boundary, ties), their VJPs against gradcheck and central differences, and how the IR
and the rules recognise them."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

import foldgen
from foldgen import expr as E
from foldgen.build import plan
from foldgen.errors import SpecError
from foldgen.ir import AffineEq, General, L1Ball, lower
from foldgen.runtime import projections as PR
from foldgen.runtime.admm import _ADMM_L1BALL
from foldgen.runtime.sets import _BOX_WSUM, _L1BALL
from foldgen.spec import load_spec_text

F64 = torch.float64
TIGHT = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12}


def _gradcheck(forward, vjp, inputs):
    """gradcheck an autograd.Function whose backward is the VJP under test (each cotangent
    summed down to its input's shape)."""

    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            out = forward(*args)
            ctx.save_for_backward(out, *args)
            return out

        @staticmethod
        def backward(ctx, v):
            out, *args = ctx.saved_tensors
            bars = vjp(v, out, *args)
            return tuple(b.sum_to_size(a.shape) for a, b in zip(args, bars))

    inputs = tuple(t.detach().clone().requires_grad_(True) for t in inputs)
    assert torch.autograd.gradcheck(Fn.apply, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def _central_jvp(fn, inputs, directions, h=1e-6):
    plus = fn(*(t + h * d for t, d in zip(inputs, directions)))
    minus = fn(*(t - h * d for t, d in zip(inputs, directions)))
    return (plus - minus) / (2 * h)


# ----------------------------------------------------------------------------------------
# The l1 ball: projection


def _l1_cvxpy(y, c, r):
    x = cp.Variable(y.shape[-1])
    cp.Problem(cp.Minimize(cp.sum_squares(x - y)), [cp.norm1(x - c) <= r]).solve(
        solver=cp.CLARABEL, **TIGHT
    )
    return x.value


def test_l1_ball_projection_matches_cvxpy_outside_and_is_the_identity_inside():
    g = torch.Generator().manual_seed(1)
    y = 2 * torch.randn(8, 7, generator=g, dtype=F64)
    c = 0.3 * torch.randn(8, 7, generator=g, dtype=F64)
    r = 0.2 + 2 * torch.rand(8, generator=g, dtype=F64)
    r[:2] = (y[:2] - c[:2]).abs().sum(-1) * 1.5  # two points inside the ball
    x = PR._proj_l1ball(y, c, r)
    for e in range(8):
        ref = _l1_cvxpy(y[e].numpy(), c[e].numpy(), float(r[e]))
        np.testing.assert_allclose(x[e].numpy(), ref, atol=1e-7)
    torch.testing.assert_close(x[:2], y[:2], rtol=0, atol=0)
    outside = (y - c).abs().sum(-1) > r
    assert bool(outside[2:].all())
    torch.testing.assert_close((x - c).abs().sum(-1)[2:], r[2:], rtol=1e-14, atol=0)


def test_l1_ball_boundary_ties_and_degenerate_radii():
    c = torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=F64)
    on = c + torch.tensor([0.25, -0.5, 0.0, 0.25], dtype=F64)  # ‖on − c‖₁ = 1 exactly
    one = torch.tensor(1.0, dtype=F64)
    torch.testing.assert_close(PR._proj_l1ball(on, c, one), on, rtol=0, atol=0)
    # Ties: four equal magnitudes shrink alike; θ = (4·3 − 2)/4.
    tie = torch.tensor([3.0, -3.0, 3.0, -3.0], dtype=F64)
    x = PR._proj_l1ball(tie, torch.zeros(4, dtype=F64), torch.tensor(2.0, dtype=F64))
    torch.testing.assert_close(x, torch.tensor([0.5, -0.5, 0.5, -0.5], dtype=F64))
    np.testing.assert_allclose(x.numpy(), _l1_cvxpy(tie.numpy(), np.zeros(4), 2.0), atol=1e-7)
    # A tie at the threshold: the two smaller equal magnitudes both vanish.
    y = torch.tensor([5.0, 1.0, -1.0, 0.0], dtype=F64)
    x = PR._proj_l1ball(y, torch.zeros(4, dtype=F64), torch.tensor(4.0, dtype=F64))
    torch.testing.assert_close(x, torch.tensor([4.0, 0.0, 0.0, 0.0], dtype=F64))
    # r = 0: the centre; r < 0: the centre too, and the set reports itself empty.
    zero = torch.tensor(0.0, dtype=F64)
    torch.testing.assert_close(PR._proj_l1ball(tie, c, zero), c, rtol=0, atol=0)
    x, ok = _L1BALL.project(tie, torch.ones(4, dtype=F64), (c, torch.tensor(-1.0, dtype=F64)))
    torch.testing.assert_close(x, c, rtol=0, atol=0)
    assert not bool(ok)


def test_l1_ball_projection_broadcasts_and_runs_in_float32():
    g = torch.Generator().manual_seed(2)
    y = 3 * torch.randn(2, 3, 6, generator=g, dtype=F64)
    c = 0.1 * torch.randn(6, generator=g, dtype=F64)  # one centre for the batch
    r = 0.5 + torch.rand(2, 1, generator=g, dtype=F64)
    x = PR._proj_l1ball(y, c, r)
    assert x.shape == (2, 3, 6)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(x[i, j], PR._proj_l1ball(y[i, j], c, r[i, 0]))
    x32 = PR._proj_l1ball(y.float(), c.float(), r.float())
    torch.testing.assert_close(x32.double(), x, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------
# The l1 ball: VJP


def _l1_data(seed, batch=4, n=6):
    g = torch.Generator().manual_seed(seed)
    y = 2 * torch.randn(batch, n, generator=g, dtype=F64)
    c = 0.3 * torch.randn(batch, n, generator=g, dtype=F64)
    r = 0.5 + torch.rand(batch, generator=g, dtype=F64)
    r[0] = (y[0] - c[0]).abs().sum() + 1.0  # one element inside
    return y, c, r


def test_l1_ball_vjp_gradcheck():
    y, c, r = _l1_data(3)

    def vjp(v, x, y, c, r):
        return PR._proj_l1ball_vjp(v, y, c, r)

    _gradcheck(PR._proj_l1ball, vjp, (y, c, r))


def test_l1_ball_vjp_is_the_support_jacobian_and_matches_central_differences():
    y, c, r = _l1_data(4)
    x = PR._proj_l1ball(y, c, r)
    g = torch.Generator().manual_seed(5)
    v = torch.randn(y.shape, generator=g, dtype=F64)
    y_bar, c_bar, r_bar = PR._proj_l1ball_vjp(v, y, c, r)
    for e in range(1, y.shape[0]):  # outside: J = I_S − s sᵀ/|S| on the support
        support = x[e] != c[e]
        s = torch.sign(y[e] - c[e]) * support
        J = torch.diag(support.to(F64)) - torch.outer(s, s) / support.sum()
        torch.testing.assert_close(y_bar[e], J.T @ v[e])
        torch.testing.assert_close(c_bar[e], v[e] - J.T @ v[e])
        torch.testing.assert_close(r_bar[e], (s * v[e]).sum() / support.sum())
    torch.testing.assert_close(y_bar[0], v[0], rtol=0, atol=0)  # inside: identity
    assert float(c_bar[0].abs().max()) == 0 and float(r_bar[0]) == 0
    dy, dc, dr = (torch.randn(t.shape, generator=g, dtype=F64) for t in (y, c, r))
    jvp = _central_jvp(PR._proj_l1ball, (y, c, r), (dy, dc, dr))
    pairing = (y_bar * dy).sum() + (c_bar * dc).sum() + (r_bar * dr).sum()
    torch.testing.assert_close(pairing, (v * jvp).sum(), rtol=1e-7, atol=1e-8)


def test_l1_ball_vjp_on_the_sphere_takes_the_boundary_element():
    c = torch.zeros(3, dtype=F64)
    y = torch.tensor([0.5, -0.25, 0.25], dtype=F64)  # ‖y‖₁ = 1 = r
    v = torch.tensor([1.0, 2.0, -3.0], dtype=F64)
    y_bar, c_bar, r_bar = PR._proj_l1ball_vjp(v, y, c, torch.tensor(1.0, dtype=F64))
    s = torch.sign(y)
    torch.testing.assert_close(y_bar, v - s * (s @ v) / 3)
    torch.testing.assert_close(r_bar, (s @ v) / 3)


# ----------------------------------------------------------------------------------------
# The weighted box section


def _wsum_data(seed, batch=5, n=6, infinite=False):
    g = torch.Generator().manual_seed(seed)
    y = 2 * torch.randn(batch, n, generator=g, dtype=F64)
    lo = -0.2 - torch.rand(batch, n, generator=g, dtype=F64)
    hi = 0.2 + torch.rand(batch, n, generator=g, dtype=F64)
    w = 0.3 + torch.rand(batch, n, generator=g, dtype=F64)
    w[:, 1] = -w[:, 1]  # a negative weight
    if infinite:
        lo[:, 0] = -torch.inf
        hi[:, 3] = torch.inf
    inside = lo.clamp_min(-1) + (hi.clamp_max(1) - lo.clamp_min(-1)) * torch.rand(
        batch, n, generator=g, dtype=F64
    )
    c = (w * inside).sum(-1)
    d = 0.3 + 2 * torch.rand(batch, n, generator=g, dtype=F64)
    return y, lo, hi, w, c, d


def _wsum_cvxpy(y, lo, hi, w, c, d):
    x = cp.Variable(y.shape[-1])
    cons = [w @ x == c]
    cons += [x[i] >= lo[i] for i in range(len(lo)) if np.isfinite(lo[i])]
    cons += [x[i] <= hi[i] for i in range(len(hi)) if np.isfinite(hi[i])]
    cp.Problem(cp.Minimize(cp.sum(cp.multiply(1 / d, cp.square(x - y)))), cons).solve(
        solver=cp.CLARABEL, **TIGHT
    )
    return x.value


@pytest.mark.parametrize("infinite", [False, True])
def test_weighted_section_matches_cvxpy_in_the_metric(infinite):
    y, lo, hi, w, c, d = _wsum_data(6, infinite=infinite)
    w[0, 2] = 0  # a component the equality does not see: clamp(y, lo, hi)
    c[0] = (w[0] * (lo[0].clamp_min(-1) + hi[0].clamp_max(1)) / 2).sum()
    x, ok = PR._proj_box_wsum(y, lo, hi, w, c, d)
    assert bool(ok.all())
    for e in range(y.shape[0]):
        ref = _wsum_cvxpy(*(t[e].numpy() for t in (y, lo, hi, w)), float(c[e]), d[e].numpy())
        np.testing.assert_allclose(x[e].numpy(), ref, atol=1e-7)
    torch.testing.assert_close((w * x).sum(-1), c, rtol=1e-13, atol=1e-13)
    assert bool(((x >= lo) & (x <= hi)).all())
    torch.testing.assert_close(x[0, 2], y[0, 2].clamp(lo[0, 2], hi[0, 2]), rtol=0, atol=0)


def test_weighted_section_with_unit_weights_is_the_capped_simplex():
    y, lo, hi, w, c, d = _wsum_data(7)
    ones = torch.ones_like(w)
    k = lo.sum(-1) + 0.4 * (hi - lo).sum(-1)
    x, ok = PR._proj_box_wsum(y, lo, hi, ones, k, d)
    x_ref, ok_ref = PR._proj_box_sum(y, lo, hi, k, d)
    assert bool(ok.all()) and bool(ok_ref.all())
    torch.testing.assert_close(x, x_ref, rtol=0, atol=1e-14)


def test_weighted_section_reports_an_empty_set_and_stays_finite():
    y, lo, hi, w, c, d = _wsum_data(8, batch=3)
    c[1] = (w * torch.where(w > 0, hi, lo)).sum(-1)[1] + 1.0  # above max wᵀx over the box
    lo[2, 0], hi[2, 0] = 1.0, -1.0  # crossed bounds
    x, ok = PR._proj_box_wsum(y, lo, hi, w, c, d)
    assert ok.tolist() == [True, False, False]
    assert bool(torch.isfinite(x).all())
    x, ok = _BOX_WSUM.project(y[:1], d[:1], (lo[:1], hi[:1], w[:1], c[:1]))
    assert bool(ok.all()) and float(_BOX_WSUM.violation(x, (lo[:1], hi[:1], w[:1], c[:1]))) < 1e-14


def test_weighted_section_vjp_gradcheck():
    y, lo, hi, w, c, d = _wsum_data(9)

    def forward(y, lo, hi, w, c):
        x, ok = PR._proj_box_wsum(y, lo, hi, w, c, d)
        assert bool(ok.all())
        return x

    def vjp(v, x, y, lo, hi, w, c):
        y_bar, lo_bar, hi_bar, w_bar, c_bar = PR._proj_box_wsum_vjp(v, x, y, lo, hi, w, d)
        return y_bar, lo_bar, hi_bar, w_bar, c_bar

    x = forward(y, lo, hi, w, c)
    free = (x > lo) & (x < hi)
    assert bool(free.any()) and bool((~free).any())  # both kinds of component are tested
    _gradcheck(forward, vjp, (y, lo, hi, w, c))


def test_weighted_section_vjp_is_the_free_set_jacobian():
    y, lo, hi, w, c, d = _wsum_data(10, batch=3)
    x, _ = PR._proj_box_wsum(y, lo, hi, w, c, d)
    v = torch.randn(y.shape, generator=torch.Generator().manual_seed(11), dtype=F64)
    y_bar, lo_bar, hi_bar, w_bar, c_bar = PR._proj_box_wsum_vjp(v, x, y, lo, hi, w, d)
    for e in range(3):
        F = ((x[e] > lo[e]) & (x[e] < hi[e])).to(F64)
        dw, wf = d[e] * w[e] * F, w[e] * F
        J = torch.diag(F) - torch.outer(dw, wf) / (wf @ dw)
        torch.testing.assert_close(y_bar[e], J.T @ v[e])
        torch.testing.assert_close(c_bar[e], (v[e] @ dw) / (wf @ dw))


# ----------------------------------------------------------------------------------------
# The ADMM l1-ball block on a small problem


def _spec(rule, constraints, objective="0.5 * sum_squares(A @ x - b)"):
    return f"""
foldgen: 1
name: l1_ball_{rule}
dims: {{m: 8, n: 5}}
parameters:
  A: {{shape: [m, n]}}
  b: {{shape: [m]}}
  c: {{shape: [n]}}
  r: {{shape: []}}
variables:
  x: {{shape: [n]}}
minimize: {objective}
constraints:
{constraints}
solver: {{rule: {rule}, max_iter: 20000, tol: 1.0e-13}}
backward: {{method: direct}}
"""


def _small_data(seed=12, batch=3):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(batch, 8, 5, generator=g, dtype=F64)
    b = 3 * torch.randn(batch, 8, generator=g, dtype=F64)
    c = 0.2 * torch.randn(batch, 5, generator=g, dtype=F64)
    r = 0.5 + 0.5 * torch.rand(batch, generator=g, dtype=F64)
    return A, b, c, r


def _small_cvxpy(A, b, c, r):
    out = []
    for e in range(A.shape[0]):
        z = cp.Variable(A.shape[-1])
        objective = 0.5 * cp.sum_squares(A[e].numpy() @ z - b[e].numpy())
        cp.Problem(cp.Minimize(objective), [cp.norm1(z - c[e].numpy()) <= float(r[e])]).solve(
            solver=cp.CLARABEL, **TIGHT
        )
        out.append(z.value)
    return torch.tensor(np.array(out))


@pytest.mark.parametrize("rule", ["admm", "pgd"])
def test_l1_ball_least_squares_matches_cvxpy_and_gradcheck(rule):
    cls = foldgen.compile(_spec(rule, "  - norm1(x - c) <= r"))
    A, b, c, r = _small_data()
    layer = cls(on_nonconvergence="raise")
    x = layer(A, b, c, r)
    assert bool(layer.info.converged.all())
    torch.testing.assert_close(x, _small_cvxpy(A, b, c, r), rtol=0, atol=1e-7)
    inputs = tuple(t[:1].clone().requires_grad_() for t in (A, b, c, r))
    assert torch.autograd.gradcheck(lambda *v: layer(*v), inputs, atol=1e-6, fast_mode=True)


def test_admm_l1_ball_block_certifies_an_empty_ball_and_its_support():
    c, r = torch.zeros(3, dtype=F64), torch.tensor(2.0, dtype=F64)
    assert bool(_ADMM_L1BALL.nonempty((c, r))) and not bool(_ADMM_L1BALL.nonempty((c, -r)))
    d = torch.tensor([1.0, -3.0, 2.0], dtype=F64)
    torch.testing.assert_close(
        _ADMM_L1BALL.support(0, d, (c + 1, r)), torch.tensor(6.0, dtype=F64)
    )


# ----------------------------------------------------------------------------------------
# Recognition: the IR and the rules


def _problem(constraints, rule="pgd"):
    text = _problem_text(constraints, rule)
    loaded = load_spec_text(text, "probe.yaml")
    return loaded, lower(loaded)


@pytest.mark.parametrize(
    "text, center, scale",
    [
        ("norm1(x - c) <= r", "c", 1.0),
        ("norm1(c - x) <= r", "c", 1.0),
        ("sum(abs(x - c)) <= r", "c", 1.0),
        ("r >= norm1(x - c)", "c", 1.0),
        ("norm1(x) - r <= 0", None, 1.0),
        ("sum(abs(x)) <= r", None, 1.0),
        ("2 * norm1(x - c) <= r", "c", 2.0),
    ],
)
def test_l1_ball_is_recognised_by_algebra(text, center, scale):
    _, problem = _problem(f"  - {text}")
    (ball,) = problem.constraints
    assert isinstance(ball, L1Ball)
    n = problem.variables[0].leaf.shape
    leaves = {p.name: p.leaf for p in problem.parameters}
    expected_center = leaves[center] if center else E.zero(n)
    assert E.broadcast(ball.center, n) == E.broadcast(expected_center, n)
    expected_radius = leaves["r"] if scale == 1.0 else E.div(leaves["r"], E.const(scale))
    assert ball.radius == expected_radius


@pytest.mark.parametrize(
    "text", ["norm1(x - c) >= r", "-norm1(x) <= r", "norm1(2 * x - c) <= r", "norm1(x) == r"]
)
def test_what_is_not_an_l1_ball_stays_general(text):
    _, problem = _problem(f"  - {text}")
    assert isinstance(problem.constraints[0], General)


def test_bounds_with_a_weighted_sum_pick_the_weighted_section_and_unit_weights_the_simplex():
    loaded, problem = _problem("  - 0 <= x <= 1\n  - w @ x == r")
    (eq,) = problem.constraints
    assert isinstance(eq, AffineEq) and eq.A.rank == 1
    projection = plan(loaded, problem).projection
    assert projection.kind == "box_wsum" and projection.metric
    assert [i.name for i in projection.items] == ["lo", "hi", "w", "c"]
    loaded, problem = _problem("  - 0 <= x <= 1\n  - sum(x) == r")
    assert plan(loaded, problem).projection.kind == "box_sum"
    loaded, problem = _problem("  - w @ x == r")  # no bounds: the affine row, as before
    assert plan(loaded, problem).projection.kind == "affine"
    loaded, problem = _problem("  - norm1(x - c) <= r")
    assert plan(loaded, problem).projection.kind == "l1ball"


def test_two_rows_with_bounds_and_a_ball_with_bounds_are_still_rejected_by_pgd():
    with pytest.raises(SpecError, match=r"no closed-form projection onto the intersection"):
        foldgen.compile(_problem_text("  - 0 <= x <= 1\n  - w @ x == r\n  - sum(x) == r"))
    with pytest.raises(SpecError, match=r"no closed-form projection onto the intersection"):
        foldgen.compile(_problem_text("  - 0 <= x <= 1\n  - norm1(x) <= r"))


def test_sqp_still_rejects_an_l1_ball_with_a_located_message():
    with pytest.raises(SpecError, match=r"constraints\[0\].*abs/norm1 is not differentiable"):
        foldgen.compile(_problem_text("  - norm1(x - c) <= r", rule="sqp"))


def _problem_text(constraints, rule="pgd"):
    return f"""
foldgen: 1
name: probe
dims: {{n: 4}}
parameters:
  y: {{shape: [n]}}
  c: {{shape: [n]}}
  w: {{shape: [n]}}
  r: {{shape: []}}
variables:
  x: {{shape: [n]}}
minimize: 0.5 * sum_squares(x - y)
constraints:
{constraints}
solver: {{rule: {rule}}}
"""
