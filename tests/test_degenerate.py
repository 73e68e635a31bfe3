"""Degenerate points, built on purpose, for every PGD projection and for ADMM.

At a vertex where several constraints are active at once (more than the variable has
dimensions), at a weakly active constraint (on the boundary with a zero multiplier) and with
linearly dependent equalities, the layer must return one element of the generalized Jacobian,
the same one for ``direct``, ``gmres`` and ``lfpi``, with every adjoint solve converged. Each
case checks the gradient against one-sided finite differences (each component must equal the
forward or the backward difference quotient: the derivative along that side) and, where the
active set is known, against the active-set formula. The SQP rule's cases are in
tests/test_sqp_degenerate.py.
"""

from __future__ import annotations

import sys

import pytest
import torch

import foldgen

F64 = torch.float64
METHODS = ("direct", "gmres", "lfpi")


def _layer(name, rule, constraints, parameters="", dims="n: 4", objective=None, extra=""):
    objective = objective or "0.5 * quad_form(x, Q) - y @ x"
    text = f"""
foldgen: 1
name: {name}
dims: {{{dims}}}
parameters:
  Q: {{shape: [n, n], grad: false}}
  y: {{shape: [n]}}
{parameters}
variables:
  x: {{shape: [n]}}
minimize: {objective}
constraints:
{constraints}
solver: {{rule: {rule}, max_iter: 20000, tol: 1.0e-13{extra}}}
backward: {{method: direct, max_iter: 500, tol: 1.0e-12}}
"""
    return foldgen.compile(text)


# A fixed, well-conditioned, non-diagonal Q (so that Φ ≠ 0: the backward has work to do).
Q4 = torch.tensor(
    [
        [2.0, 0.5, 0.0, 0.25],
        [0.5, 2.0, 0.5, 0.0],
        [0.0, 0.5, 2.0, 0.5],
        [0.25, 0.0, 0.5, 2.0],
    ],
    dtype=F64,
)


def _gradients(cls, y, weight, **inputs):
    """{method: (x, ∂(w·x)/∂y, layer)} with every forward and backward converged."""
    out = {}
    for method in METHODS:
        layer = cls(Q=Q4, backward_method=method, backward_fallback=False)
        yy = y.clone().requires_grad_()
        x = layer(yy, **inputs)
        (g,) = torch.autograd.grad((x * weight).sum(), yy)
        assert bool(layer.info.converged.all()), (method, layer.info)
        assert bool(layer.backward_info.converged.all()), (method, layer.backward_info)
        out[method] = (x.detach(), g, layer)
    return out


def _one_sided(layer, y, weight, eps=1e-6, **inputs):
    """The forward and backward difference quotients of w·x(y) along each coordinate."""
    base = (layer(y, **inputs) * weight).sum(-1)
    plus, minus = torch.zeros_like(y), torch.zeros_like(y)
    for j in range(y.shape[-1]):
        step = torch.zeros_like(y)
        step[..., j] = eps
        plus[..., j] = ((layer(y + step, **inputs) * weight).sum(-1) - base) / eps
        minus[..., j] = (base - (layer(y - step, **inputs) * weight).sum(-1)) / eps
    return plus, minus


def _check(cls, y, weight, reference=None, fd_tol=2e-5, **inputs):
    results = _gradients(cls, y, weight, **inputs)
    x, g, layer = results["direct"]
    for method in ("gmres", "lfpi"):
        torch.testing.assert_close(results[method][1], g, rtol=0, atol=1e-9)
    plus, minus = _one_sided(layer, y, weight, **inputs)
    error = torch.minimum((g - plus).abs(), (g - minus).abs())
    assert float(error.max()) < fd_tol, (g, plus, minus)
    if reference is not None:
        torch.testing.assert_close(g, reference, rtol=0, atol=1e-9)
    return x, g


def _free_set_gradient(free, weight, Q=Q4):
    """The active-set formula for min ½xᵀQx − yᵀx with the components outside ``free``
    fixed: ∂(w·x)/∂y = Q_FF⁻¹ w_F on F, 0 elsewhere."""
    g = torch.zeros_like(weight)
    for b in range(weight.shape[0]):
        F = free[b].nonzero()[:, 0]
        if F.numel():
            g[b, F] = torch.linalg.solve(Q[F][:, F], weight[b, F])
    return g


def _weights(batch, n=4, seed=0):
    return torch.randn(batch, n, dtype=F64, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------ PGD


@pytest.mark.parametrize("rule", ["pgd", "admm"])
def test_box_vertex_every_component_clamped(rule):
    """All four components on a bound (a vertex of the box): ∂x/∂y = 0 exactly."""
    cls = _layer(f"deg_box_vertex_{rule}", rule, "  - x >= -1\n  - x <= 1")
    y = torch.tensor([[9.0, -9.0, 9.0, -9.0], [-8.0, -8.0, 7.0, 9.0]], dtype=F64)
    x, g = _check(cls, y, _weights(2), reference=torch.zeros(2, 4, dtype=F64))
    torch.testing.assert_close(x.abs(), torch.ones_like(x), rtol=0, atol=1e-9)


@pytest.mark.parametrize("rule", ["pgd", "admm"])
def test_box_weakly_active_bound_counts_as_active(rule):
    """x*₀ = 1 = hi with a zero multiplier (y = Q x* exactly): the bound counts as active."""
    x_star = torch.tensor([1.0, 0.25, -0.5, 0.0], dtype=F64)
    y = (Q4 @ x_star).expand(3, 4).clone()
    cls = _layer(f"deg_box_weak_{rule}", rule, "  - x >= -1\n  - x <= 1")
    weight = _weights(3, seed=1)
    x, g = _check(cls, y, weight)
    torch.testing.assert_close(x, x_star.expand(3, 4), rtol=0, atol=1e-10)
    # Which side the converged iterate rounds to decides the element (exact ties count as
    # active); either way it is one of the two active-set formulas, for every element.
    active = _free_set_gradient(torch.tensor([False, True, True, True]).expand(3, 4), weight)
    free = _free_set_gradient(torch.ones(3, 4, dtype=torch.bool), weight)
    error = torch.minimum((g - active).abs().amax(-1), (g - free).abs().amax(-1))
    assert float(error.max()) < 1e-9


def test_capped_simplex_vertex_with_no_free_component():
    """0 ≤ x ≤ 1, Σx = 2 at (1, 1, 0, 0): no component is free, τ is not unique, and the
    Jacobian of the projection is 0 (the empty free set's case)."""
    cls = _layer("deg_capsim_vertex", "pgd", "  - x >= 0\n  - x <= 1\n  - sum(x) == 2")
    y = torch.tensor([[9.0, 8.0, -7.0, -9.0], [-6.0, 7.0, 8.0, -9.0]], dtype=F64)
    x, _ = _check(cls, y, _weights(2, seed=2), reference=torch.zeros(2, 4, dtype=F64))
    assert bool(((x == 0) | (x == 1)).all())


def test_capped_simplex_weakly_active_lower_bound():
    """x* = (0.5, 0.5, 0, 1) on 0 ≤ x ≤ 1, Σx = 2 with component 2's bound multiplier 0."""
    x_star = torch.tensor([0.5, 0.5, 0.0, 1.0], dtype=F64)
    tau, mu_hi = 0.25, 0.5  # y = Qx* + τ1 + μ_hi e₃, the lower bound's multiplier is 0
    y = (Q4 @ x_star + tau + mu_hi * torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=F64)).expand(2, 4)
    cls = _layer("deg_capsim_weak", "pgd", "  - x >= 0\n  - x <= 1\n  - sum(x) == 2")
    x, g = _check(cls, y.clone(), _weights(2, seed=3))
    torch.testing.assert_close(x, x_star.expand(2, 4), rtol=0, atol=1e-9)


def test_affine_dependent_rows():
    """A @ x == b with a row repeated and a row the sum of two others (rank 2 of 4)."""
    A = torch.tensor(
        [[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]],
        dtype=F64,
    )
    b = torch.tensor([1.0, 2.0, 3.0, 1.0], dtype=F64)
    params = "  A: {shape: [m, n], grad: false}\n  b: {shape: [m]}"
    cls = _layer("deg_affine", "pgd", "  - A @ x == b", params, "n: 4, m: 4")
    y = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(4))
    weight = _weights(3, seed=5)
    # Reference: the same problem with the two independent rows only.
    ref_cls = _layer("deg_affine_ref", "pgd", "  - A @ x == b", params, "n: 4, m: 2")
    ref = ref_cls(Q=Q4, A=A[:2])
    yy = y.clone().requires_grad_()
    x_ref = ref(yy, b=b[:2])
    (g_ref,) = torch.autograd.grad((x_ref * weight).sum(), yy)
    x, _ = _check(cls, y, weight, reference=g_ref, A=A, b=b)
    torch.testing.assert_close(x, x_ref.detach(), rtol=0, atol=1e-10)


def test_affine_conflicting_rows_are_reported_infeasible():
    A = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]], dtype=F64)
    params = "  A: {shape: [m, n], grad: false}\n  b: {shape: [m]}"
    cls = _layer("deg_affine_bad", "pgd", "  - A @ x == b", params, "n: 4, m: 2")
    layer = cls(Q=Q4, A=A)
    y = torch.randn(2, 4, dtype=F64, requires_grad=True)
    b = torch.tensor([[1.0, 1.0], [1.0, 2.0]], dtype=F64)  # element 1 asks x₀ + x₁ = 1 and 2
    with pytest.warns(foldgen.ConvergenceWarning, match="element.s. 1 .*b is not in the range"):
        x = layer(y, b=b)
    assert layer.info.feasible.tolist() == [True, False]
    assert bool(torch.isfinite(x).all())
    (g,) = torch.autograd.grad(x.sum(), y)
    assert float(g[1].abs().max()) == 0.0 and float(g[0].abs().max()) > 0


def test_halfspace_weakly_active():
    """a·x* = c with a zero multiplier: the tangent plane's element."""
    a = torch.tensor([1.0, 2.0, 0.0, 1.0], dtype=F64)
    x_star = torch.tensor([0.5, 0.125, 0.75, 0.25], dtype=F64)
    c = (a @ x_star).reshape(())
    y = (Q4 @ x_star).expand(2, 4).clone()
    params = "  a: {shape: [n]}\n  c: {shape: []}"
    cls = _layer("deg_halfspace", "pgd", "  - a @ x <= c", params)
    x, g = _check(cls, y, _weights(2, seed=6), a=a, c=c)
    torch.testing.assert_close(x, x_star.expand(2, 4), rtol=0, atol=1e-10)


def test_ball_weakly_active():
    """‖x*‖ = r with a zero multiplier: the sphere's element."""
    x_star = torch.tensor([0.6, 0.0, -0.8, 0.0], dtype=F64)  # ‖x*‖ = 1
    y = (Q4 @ x_star).expand(2, 4).clone()
    cls = _layer("deg_ball", "pgd", "  - norm2(x) <= r", "  r: {shape: []}")
    x, _ = _check(cls, y, _weights(2, seed=7), r=torch.tensor(1.0, dtype=F64))
    torch.testing.assert_close(x, x_star.expand(2, 4), rtol=0, atol=1e-8)


# ----------------------------------------------------------------------------------- ADMM


POLYGON = "  G: {shape: [m, n], grad: false}\n  h: {shape: [m]}"


def test_admm_vertex_with_more_active_constraints_than_dimensions():
    """The square |xᵢ| ≤ 1 in 2-D plus x₀ + x₁ ≤ 2 through its vertex (1, 1): three active
    rows in two dimensions, so the multipliers are not unique and I − Φᵀ is singular. Points
    projected onto the vertex have ∂x/∂y = 0; the rest follow their face."""
    G = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=F64)
    h = torch.tensor([1.0, 1.0, 2.0, 1.0, 1.0], dtype=F64)
    text = f"""
foldgen: 1
name: deg_admm_vertex
dims: {{n: 2, m: 5}}
parameters:
  y: {{shape: [n]}}
{POLYGON}
variables:
  x: {{shape: [n]}}
minimize: 0.5 * sum_squares(x - y)
constraints:
  - G @ x <= h
solver: {{rule: admm, max_iter: 20000, tol: 1.0e-12}}
backward: {{method: direct, max_iter: 500, tol: 1.0e-11}}
"""
    cls = foldgen.compile(text)
    y = torch.tensor([[3.0, 2.5], [1.5, 4.0], [2.0, 0.25], [0.5, -3.0], [0.2, 0.3]], dtype=F64)
    weight = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(8))
    grads = {}
    for method in METHODS:
        layer = cls(G=G, backward_method=method)
        yy = y.clone().requires_grad_()
        x = layer(yy, h=h)
        (grads[method],) = torch.autograd.grad((x * weight).sum(), yy)
        assert bool(layer.info.converged.all())
        assert bool(layer.backward_info.converged.all()), (method, layer.backward_info)
    expected = torch.stack(
        [
            torch.zeros(2, dtype=F64),  # vertex (1, 1)
            torch.zeros(2, dtype=F64),  # vertex (1, 1)
            torch.stack([torch.tensor(0.0, dtype=F64), weight[2, 1]]),  # face x₀ = 1
            torch.stack([weight[3, 0], torch.tensor(0.0, dtype=F64)]),  # face x₁ = −1
            weight[4],  # interior
        ]
    )
    for method, g in grads.items():
        torch.testing.assert_close(g, expected, rtol=0, atol=1e-8, msg=method)


def test_admm_dependent_equality_rows():
    """A @ x == b with rows (1,1,0,0), (0,0,1,1) and their sum, a transport polytope's kind
    of redundancy: the same x and gradient as the two independent rows alone, with every
    backward method (I − Φᵀ is singular: the dual has a free direction)."""

    def text(name, m):
        return f"""
foldgen: 1
name: {name}
dims: {{n: 4, m: {m}}}
parameters:
  Q: {{shape: [n, n], grad: false}}
  y: {{shape: [n]}}
  A: {{shape: [m, n], grad: false}}
  b: {{shape: [m]}}
variables:
  x: {{shape: [n]}}
minimize: 0.5 * quad_form(x, Q) - y @ x
constraints:
  - x >= 0
  - A @ x == b
solver: {{rule: admm, max_iter: 20000, tol: 1.0e-12}}
backward: {{method: direct, max_iter: 500, tol: 1.0e-11}}
"""

    A = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]], dtype=F64)
    b = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    y = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(9))
    weight = _weights(3, seed=10)
    out = {}
    for m in (2, 3):
        cls = foldgen.compile(text(f"deg_admm_rows_{m}", m))
        for method in METHODS:
            layer = cls(Q=Q4, A=A[:m], backward_method=method)
            yy = y.clone().requires_grad_()
            x = layer(yy, b=b[:m])
            (g,) = torch.autograd.grad((x * weight).sum(), yy)
            assert bool(layer.info.converged.all())
            assert bool(layer.backward_info.converged.all()), (m, method)
            out[m, method] = (x.detach(), g)
    x_ref, g_ref = out[2, "direct"]
    for key, (x, g) in out.items():
        torch.testing.assert_close(x, x_ref, rtol=0, atol=1e-9, msg=str(key))
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-7, msg=str(key))


def test_admm_sum_constraint_written_twice_is_one_block():
    """sum(x) == 1 twice: the repeat is redundant; same x and gradient as once, and the
    block's label names both constraints."""

    def text(name, twice):
        again = "  - sum(x) == 1\n" if twice else ""
        return f"""
foldgen: 1
name: {name}
dims: {{n: 4}}
parameters:
  Q: {{shape: [n, n], grad: false}}
  y: {{shape: [n]}}
variables:
  x: {{shape: [n]}}
minimize: 0.5 * quad_form(x, Q) - y @ x
constraints:
  - sum(x) == 1
  - x >= 0
{again}solver: {{rule: admm, max_iter: 20000, tol: 1.0e-12}}
backward: {{method: direct, max_iter: 500, tol: 1.0e-11}}
"""

    y = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(12))
    weight = _weights(3, seed=13)
    out = []
    for twice in (False, True):
        cls = foldgen.compile(text(f"deg_admm_twice_{int(twice)}", twice))
        layer = cls(Q=Q4)
        yy = y.clone().requires_grad_()
        x = layer(yy)
        (g,) = torch.autograd.grad((x * weight).sum(), yy)
        assert bool(layer.info.converged.all()) and bool(layer.backward_info.converged.all())
        out.append((x.detach(), g, sys.modules[cls.__module__].PROBLEM.labels))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=0, atol=1e-12)
    torch.testing.assert_close(out[1][1], out[0][1], rtol=0, atol=1e-10)
    assert any(label.startswith("constraints[0], constraints[2] ") for label in out[1][2])


def test_admm_infeasible_message_names_the_conflicting_constraints():
    text = """
foldgen: 1
name: deg_admm_conflict
dims: {n: 3}
parameters:
  y: {shape: [n]}
  k: {shape: []}
variables:
  x: {shape: [n]}
minimize: 0.5 * sum_squares(x - y)
constraints:
  - norm2(x) <= 5
  - x >= 1
  - sum(x) <= k
solver: {rule: admm, max_iter: 2000, tol: 1.0e-9}
"""
    layer = foldgen.compile(text)()
    y = torch.randn(3, 3, dtype=F64, requires_grad=True)
    k = torch.tensor([0.0, 4.0, 5.0], dtype=F64)  # element 0: x ≥ 1 and Σx ≤ 0 conflict
    with pytest.warns(foldgen.ConvergenceWarning) as record:
        x = layer(y, k)
    (message,) = [str(w.message) for w in record]
    assert "batch element(s) 0 (the constraints admit no point: constraints[1]" in message
    assert "constraints[2]" in message and "constraints[0]" not in message
    assert layer.info.feasible.tolist() == [False, True, True]
    (g,) = torch.autograd.grad(x.sum(), y)
    assert bool(torch.isfinite(x).all()) and float(g[0].abs().max()) == 0.0
