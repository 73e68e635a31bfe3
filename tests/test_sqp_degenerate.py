"""SQP on degenerate and redundant constraints: a vertex with more active rows than variables
and weakly active points, optimal transport with every row and column sum, a sum written
twice, a dynamics chain with a redundant row; against CVXPY, finite differences and the
active-set formula, with minimum-norm multipliers; and truly infeasible elements, flagged with
a zero gradient and a warning that names the conflicting constraint blocks."""

from __future__ import annotations

import warnings

import cvxpy as cp
import numpy as np
import pytest
import torch

import foldgen
from foldgen.build import build_text
from foldgen.runtime.qp import _kkt_matrix, _qp_null_projector, _qp_solve

F64 = torch.float64
METHODS = ("direct", "gmres", "lfpi")


def cvxpy_solve(n, objective, constraints):
    """x of min objective(x) s.t. constraints(x) with CLARABEL at tight tolerances, and the
    constraints' duals."""
    x = cp.Variable(n)
    cons = constraints(x)
    cp.Problem(cp.Minimize(objective(x)), cons).solve(
        solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12
    )
    return x.value, [c.dual_value for c in cons]


def left_null(M):
    """An orthonormal basis (columns) of the left null space of M (rank by SVD)."""
    U, S, _ = torch.linalg.svd(M, full_matrices=True)
    rank = int((S > 1e-10 * S[0]).sum())
    return U[:, rank:]


# ---------------------------------------------------------------------------------------------
# (a) A degenerate vertex: more active inequalities than variables; weakly active points.

POLYTOPE = """\
foldgen: 1
name: polytope
dims: {{n: {n}, m: {m}}}
parameters:
  y: {{shape: [n]}}
  G: {{shape: [m, n], grad: false}}
  h: {{shape: [m]}}
variables:
  x: {{shape: [n]}}
minimize: 0.5 * sum_squares(x - y)
constraints:
  - G @ x <= h
solver: {{rule: sqp, max_iter: 60, tol: 1.0e-10}}
backward: {{method: direct}}
"""

# The square |xᵢ| ≤ 1 with x₁ + x₂ ≤ 2 through its vertex (1, 1): three rows active there.
SQUARE = (
    [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [0.0, -1.0]],
    [1.0, 1.0, 2.0, 1.0, 1.0],
    [
        [2.0, 2.0],  # the vertex, y inside its normal cone: λ = (1/3, 1/3, 2/3) (min norm)
        [1.8, 2.3],  # the vertex, λ = (0.1, 0.6, 0.7)
        [3.0, 1.2],  # the vertex; the min-norm λ₂ < 0: the polish drops row 2
        [1.0, 0.3],  # y on the face x₁ = 1: slack 0 and multiplier 0 (weakly active)
        [1.0, 1.0],  # y at the vertex itself: three rows weakly active
        [-1.0, -0.4],  # weakly active on x₁ ≥ −1
        [1.5, 0.2],  # one active row (nondegenerate)
    ],
)
# The cube 0 ≤ x ≤ 1 cut by x₁ + x₂ + x₃ ≤ 3 and x₁ + x₂ ≤ 2 through its vertex (1, 1, 1):
# five rows active in three dimensions.
CUBE = (
    [
        [1.0, 0.0, 0.0],
        [0.0, 1.0, 0.0],
        [0.0, 0.0, 1.0],
        [1.0, 1.0, 1.0],
        [1.0, 1.0, 0.0],
        [-1.0, 0.0, 0.0],
        [0.0, -1.0, 0.0],
        [0.0, 0.0, -1.0],
    ],
    [1.0, 1.0, 1.0, 3.0, 2.0, 0.0, 0.0, 0.0],
    [
        [2.0, 2.0, 2.0],
        [1.5, 3.0, 2.5],
        [4.0, 1.1, 1.3],
        [1.0, 1.0, 1.0],
        [1.0, 0.5, 0.25],
        [0.5, 0.5, 0.5],
    ],
)


def _fd(layer, y, h, w, j, eps):
    """One-sided differences of L = Σ w ⊙ x in the direction e_j of y, (forward, backward)."""
    step = torch.zeros_like(y)
    step[:, j] = eps
    L = (layer(y, h=h) * w).sum(-1)
    ahead = (layer(y + step, h=h) * w).sum(-1)
    behind = (layer(y - step, h=h) * w).sum(-1)
    return (ahead - L) / eps, (L - behind) / eps


@pytest.mark.parametrize("case", [SQUARE, CUBE], ids=["square", "cube"])
def test_degenerate_vertex_forward_gradient_and_methods_agree(case):
    rows, bounds, special = case
    G, h = torch.tensor(rows, dtype=F64), torch.tensor(bounds, dtype=F64)
    m, n = G.shape
    Layer = foldgen.compile(POLYTOPE.format(n=n, m=m))
    gen = torch.Generator().manual_seed(0)
    y = torch.cat(
        [torch.tensor(special, dtype=F64), 2 * torch.randn(40, n, generator=gen, dtype=F64) + 1.5]
    )
    B = y.shape[0]
    w = torch.randn(B, n, generator=gen, dtype=F64)

    grads = {}
    for method in METHODS:
        layer = Layer(G=G, backward_method=method, on_nonconvergence="raise")
        yy = y.clone().requires_grad_()
        x = layer(yy, h=h)
        assert layer.info.converged.all() and layer.info.feasible.all()
        assert int(layer.info.iterations.max()) <= 5
        (grads[method],) = torch.autograd.grad((x * w).sum(), yy)
        assert layer.backward_info.converged.all(), method
        assert not layer.backward_info.fallback.any(), method
    x, (lam, _) = x.detach(), layer.info.multipliers
    torch.testing.assert_close(grads["gmres"], grads["direct"], atol=1e-10, rtol=0)
    torch.testing.assert_close(grads["lfpi"], grads["direct"], atol=1e-10, rtol=0)

    # The forward against CVXPY (CLARABEL is only ~1e-7 accurate at the weakly active
    # points) and, to 1e-12, a KKT certificate: exact optimality for this convex QP.
    for i in range(B):
        ref, _ = cvxpy_solve(
            n,
            lambda v, i=i: 0.5 * cp.sum_squares(v - y[i].numpy()),
            lambda v: [G.numpy() @ v <= h.numpy()],
        )
        np.testing.assert_allclose(x[i].numpy(), ref, atol=1e-6)
    slack = h - x @ G.T
    assert float(lam.min()) >= -1e-12 and float(slack.min()) >= -1e-12
    assert float((lam * slack).abs().max()) <= 1e-12
    torch.testing.assert_close(x - y + lam @ G, torch.zeros_like(x), atol=1e-12, rtol=0)

    # The vertex elements do have more active rows than variables.
    active = lam > -(x @ G.T - h)
    if n == 2:
        assert active[:2].sum(-1).tolist() == [3, 3]
        torch.testing.assert_close(
            lam[0, :3], torch.tensor([1 / 3, 1 / 3, 2 / 3], dtype=F64), atol=1e-12, rtol=0
        )
        # y = (3, 1.2): the minimum-norm λ₂ is negative; without row 2, λ = (1.8, 0, 0.2).
        torch.testing.assert_close(
            lam[2, :3], torch.tensor([1.8, 0.0, 0.2], dtype=F64), atol=1e-12, rtol=0
        )
    else:
        assert int(active[0].sum()) == 5

    # The gradient is the active-set formula: dx/dy = the projector onto the null space of
    # the active rows (0 at a vertex) ...
    g = grads["direct"]
    for i in range(B):
        GA = G[active[i]]
        J = torch.eye(n, dtype=F64) - (torch.linalg.pinv(GA) @ GA if len(GA) else 0)
        torch.testing.assert_close(g[i], J @ w[i], atol=1e-10, rtol=0)
    degenerate = active.sum(-1) > n  # more active rows than variables: x fixed, dx/dy = 0
    assert int(degenerate.sum()) >= 3 and float(g[degenerate].abs().max()) <= 1e-12
    # ... and a one-sided derivative: where the two sides agree, both; at a weakly active
    # point (where they differ), one of them.
    layer = Layer(G=G, on_nonconvergence="raise")
    kinks = 0
    for j in range(n):
        ahead, behind = _fd(layer, y, h, w, j, 1e-7)
        near_ahead, near_behind = (g[:, j] - ahead).abs(), (g[:, j] - behind).abs()
        assert bool((torch.minimum(near_ahead, near_behind) <= 1e-6).all())
        smooth = (ahead - behind).abs() <= 1e-6
        assert bool((torch.maximum(near_ahead, near_behind)[smooth] <= 1e-6).all())
        kinks += int((~smooth).sum())
    assert kinks >= 2  # the weakly active points are kinks


def test_null_projector_only_where_rows_are_dependent():
    """The projector is exactly zero for independent rows (the KKT matrix is the usual one)
    and the orthogonal projector onto the left null space, within the selected rows, else."""
    G = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]], dtype=F64)
    rows = torch.tensor([[True, True, False, False], [True, True, True, False]])
    P = _qp_null_projector(G, rows)
    assert bool((P[0] == 0).all())
    z = torch.tensor([1.0, 1.0, -1.0, 0.0], dtype=F64) / 3**0.5
    torch.testing.assert_close(P[1], torch.outer(z, z), atol=1e-14, rtol=0)
    # The KKT matrix with −P is nonsingular and keeps x's part: K (d, λ) = (−c, b_A) is the
    # projection of −c onto {G_A d = b_A} with the minimum-norm λ.
    H, c = torch.eye(2, dtype=F64), torch.tensor([-2.0, -2.0], dtype=F64)
    b = torch.tensor([1.0, 1.0, 2.0, 1.0], dtype=F64)
    K = _kkt_matrix(H, G, G.new_zeros(0, 2), rows[1])
    assert float(torch.linalg.svdvals(K)[-1]) > 0.1
    sol = torch.linalg.solve(K, torch.cat([-c, torch.where(rows[1], b, 0)]))
    torch.testing.assert_close(sol[:2], torch.ones(2, dtype=F64), atol=1e-14, rtol=0)
    torch.testing.assert_close(
        sol[2:], torch.tensor([1 / 3, 1 / 3, 2 / 3, 0.0], dtype=F64), atol=1e-14, rtol=0
    )


def test_qp_with_redundant_equalities_matches_cvxpy_and_flags_inconsistent_data():
    gen = torch.Generator().manual_seed(3)
    B, n = 6, 7
    M = torch.randn(B, n, n, generator=gen, dtype=F64)
    H = M @ M.mT / n + 0.1 * torch.eye(n, dtype=F64)
    c = torch.randn(B, n, generator=gen, dtype=F64)
    A0 = torch.randn(B, 3, n, generator=gen, dtype=F64)
    mix = torch.randn(B, 2, 3, generator=gen, dtype=F64)
    A = torch.cat([A0, mix @ A0], -2)  # rank 3 of 5 rows
    e0 = 0.1 * torch.randn(B, 3, generator=gen, dtype=F64)
    e = torch.cat([e0, (mix @ e0[..., None])[..., 0]], -1)
    G = torch.randn(B, 4, n, generator=gen, dtype=F64)
    b = 0.2 * torch.rand(B, 4, generator=gen, dtype=F64)
    e_bad = e.clone()
    e_bad[4, -1] += 1e-3  # element 4: inconsistent equalities
    d, lam, nu, solved = _qp_solve(H, c, G, b, A, e_bad, torch.ones(B, dtype=torch.bool))
    assert solved.tolist() == [True, True, True, True, False, True]
    assert all(bool(torch.isfinite(t).all()) for t in (d, lam, nu))
    for i in (0, 1, 2, 3, 5):
        ref, (_, nu_ref) = cvxpy_solve(
            n,
            lambda v, i=i: 0.5 * cp.quad_form(v, 0.5 * (H[i] + H[i].T).numpy()) + c[i].numpy() @ v,
            lambda v, i=i: [G[i].numpy() @ v <= b[i].numpy(), A[i].numpy() @ v == e[i].numpy()],
        )
        np.testing.assert_allclose(d[i].numpy(), ref, atol=1e-8)
        # ν is the minimum-norm multiplier: CVXPY's (any valid one) projected onto range(A).
        N = left_null(A[i])
        nu_min = torch.as_tensor(nu_ref) - N @ (N.T @ torch.as_tensor(nu_ref))
        np.testing.assert_allclose(nu[i].numpy(), nu_min.numpy(), atol=1e-6)
        assert float((N.T @ nu[i]).abs().max()) <= 1e-10


# ---------------------------------------------------------------------------------------------
# (b) Optimal transport: every row sum and every column sum (A has rank 2n − 1).

TRANSPORT = """\
foldgen: 1
name: transport
dims: {k: 16, m: 8}
parameters:
  C: {shape: [k]}
  A: {shape: [m, k], grad: false}
  b: {shape: [m], grad: false}
variables:
  P: {shape: [k]}
minimize: C @ P + 0.5 * sum_squares(P)
constraints:
  - A @ P == b
  - P >= 0
solver: {rule: sqp, max_iter: 100, tol: 1.0e-10}
backward: {method: direct}
"""


def transport_data(n=4, batch=8, seed=5):
    gen = torch.Generator().manual_seed(seed)
    A = torch.zeros(2 * n, n * n, dtype=F64)
    for i in range(n):
        for j in range(n):
            A[i, i * n + j] = A[n + j, i * n + j] = 1.0
    r = 0.5 + torch.rand(batch, n, generator=gen, dtype=F64)
    s = 0.5 + torch.rand(batch, n, generator=gen, dtype=F64)
    b = torch.cat([r / r.sum(-1, keepdim=True), s / s.sum(-1, keepdim=True)], -1)
    C = 0.02 * torch.randn(batch, n * n, generator=gen, dtype=F64)
    C[batch // 2 :] *= 10  # these hit P = 0 in places (strictly active bounds)
    return A, b, C


def test_transport_with_all_marginals():
    A, b, C = transport_data()
    B, k = C.shape
    Layer = foldgen.compile(TRANSPORT)
    grads = {}
    for method in METHODS:
        layer = Layer(A=A, b=b, backward_method=method, on_nonconvergence="raise")
        CC = C.clone().requires_grad_()
        P = layer(CC)
        assert layer.info.converged.all() and layer.info.feasible.all()
        w = torch.linspace(-1, 1, k, dtype=F64)
        (grads[method],) = torch.autograd.grad((P * w).sum(), CC)
        assert layer.backward_info.converged.all(), method
    torch.testing.assert_close(grads["gmres"], grads["direct"], atol=1e-10, rtol=0)
    torch.testing.assert_close(grads["lfpi"], grads["direct"], atol=1e-10, rtol=0)
    P, (lam, nu) = P.detach(), layer.info.multipliers

    for i in range(B):
        ref, (nu_ref, _) = cvxpy_solve(
            k,
            lambda v, i=i: C[i].numpy() @ v + 0.5 * cp.sum_squares(v),
            lambda v, i=i: [A.numpy() @ v == b[i].numpy(), v >= 0],
        )
        np.testing.assert_allclose(P[i].numpy(), ref, atol=1e-7)
        N = left_null(A)
        nu_min = torch.as_tensor(nu_ref) - N @ (N.T @ torch.as_tensor(nu_ref))
        np.testing.assert_allclose(nu[i].numpy(), nu_min.numpy(), atol=1e-6)
    # Minimum-norm ν: orthogonal to null(Aᵀ) = span(1ₙ, −1ₙ); and a KKT certificate.
    z = torch.cat([torch.ones(4), -torch.ones(4)]).to(F64) / 8**0.5
    assert float((nu @ z).abs().max()) <= 1e-10
    torch.testing.assert_close(C + P + nu @ A - lam, torch.zeros_like(P), atol=1e-10, rtol=0)
    torch.testing.assert_close(P @ A.T, b, atol=1e-12, rtol=0)
    # The data are away from kinks (so differences apply): half the batch interior, half
    # with strictly active bounds.
    assert float(P[: B // 2].min()) > 0.01
    zero = P < 1e-12
    assert int(zero[B // 2 :].sum()) >= 4
    assert float(lam[zero].min()) > 1e-3 and float(P[~zero].min()) > 1e-3

    # The gradient in the cost against central differences.
    layer = Layer(A=A, b=b, on_nonconvergence="raise")
    w = torch.linspace(-1, 1, k, dtype=F64)
    fd = torch.zeros_like(C)
    for j in range(k):
        step = torch.zeros_like(C)
        step[:, j] = 1e-6
        fd[:, j] = ((layer(C + step) - layer(C - step)) * w).sum(-1) / 2e-6
    torch.testing.assert_close(grads["direct"], fd, atol=1e-7, rtol=0)


# ---------------------------------------------------------------------------------------------
# (c) A sum constraint written twice; (d) a dynamics chain with a redundant row.

SIMPLEX = """\
foldgen: 1
name: simplex_{tag}
dims: {{n: 6}}
parameters:
  y: {{shape: [n]}}
variables:
  x: {{shape: [n]}}
minimize: 0.5 * sum_squares(x - y)
constraints:
  - sum(x) == 1
  - x >= 0
{extra}solver: {{rule: sqp, max_iter: 50, tol: 1.0e-10}}
"""


@pytest.mark.parametrize("extra", ["sum(x) == 1", "2 * sum(x) == 2"])
def test_sum_written_twice_is_the_sum_written_once(extra):
    once = foldgen.compile(SIMPLEX.format(tag="once", extra=""))(on_nonconvergence="raise")
    Twice = foldgen.compile(SIMPLEX.format(tag="twice", extra=f"  - {extra}\n"))
    y = torch.randn(10, 6, generator=torch.Generator().manual_seed(7), dtype=F64)
    w = torch.randn(10, 6, generator=torch.Generator().manual_seed(8), dtype=F64)
    y1 = y.clone().requires_grad_()
    x1 = once(y1)
    (g1,) = torch.autograd.grad((x1 * w).sum(), y1)
    assert int((x1 < 1e-12).sum()) >= 10  # the bounds are active in places
    scale = 1.0 if extra.startswith("sum") else 2.0
    for method in METHODS:
        twice = Twice(backward_method=method, on_nonconvergence="raise")
        y2 = y.clone().requires_grad_()
        x2 = twice(y2)
        assert twice.info.converged.all() and twice.info.feasible.all()
        (g2,) = torch.autograd.grad((x2 * w).sum(), y2)
        assert twice.backward_info.converged.all()
        torch.testing.assert_close(x2, x1, atol=1e-12, rtol=0)
        torch.testing.assert_close(g2, g1, atol=1e-10, rtol=0)
        # Minimum norm: ν₁ + s ν₂ = ν (once) split as ν (1, s) / (1 + s²).
        nu1, nu2 = twice.info.multipliers[1].unbind(-1)
        nu = once.info.multipliers[1][..., 0]
        torch.testing.assert_close(nu1, nu / (1 + scale**2), atol=1e-10, rtol=0)
        torch.testing.assert_close(nu2, scale * nu / (1 + scale**2), atol=1e-10, rtol=0)


CHAIN = """\
foldgen: 1
name: chain_{tag}
dims: {{k: 7, m: {m}}}
parameters:
  y: {{shape: [k]}}
  s0: {{shape: []}}
  D: {{shape: [m, k], grad: false}}
  f: {{shape: [m], grad: false}}
variables:
  z: {{shape: [k]}}
minimize: 0.5 * sum_squares(z - y)
constraints:
  - D @ z == s0 * f
  - z <= 0.8
solver: {{rule: sqp, max_iter: 50, tol: 1.0e-10}}
"""


def chain_rows(a):
    """z = (s₀, s₁, s₂, s₃, u₀, u₁, u₂): s₀ = s0, s_{t+1} = a s_t + u_t, and the redundant
    s₂ − a u₀ − u₁ = a² s0 (two steps at once)."""
    D = torch.zeros(5, 7, dtype=F64)
    D[0, 0] = 1.0
    for t in range(3):
        D[t + 1, t + 1], D[t + 1, t], D[t + 1, 4 + t] = 1.0, -a, -1.0
    D[4, 2], D[4, 4], D[4, 5] = 1.0, -a, -1.0
    f = torch.tensor([1.0, 0.0, 0.0, 0.0, a * a], dtype=F64)
    return D, f


def test_dynamics_chain_with_a_redundant_row():
    D, f = chain_rows(0.9)
    plain = foldgen.compile(CHAIN.format(tag="plain", m=4))(
        D=D[:4], f=f[:4], on_nonconvergence="raise"
    )
    Redundant = foldgen.compile(CHAIN.format(tag="redundant", m=5))
    gen = torch.Generator().manual_seed(9)
    y = torch.randn(6, 7, generator=gen, dtype=F64)
    s0 = 0.5 * torch.rand(6, generator=gen, dtype=F64)
    w = torch.randn(6, 7, generator=gen, dtype=F64)

    def run(layer):
        yy, ss = y.clone().requires_grad_(), s0.clone().requires_grad_()
        z = layer(yy, ss)
        return z.detach(), torch.autograd.grad((z * w).sum(), (yy, ss))

    z1, (gy1, gs1) = run(plain)
    assert int((z1 > 0.8 - 1e-12).sum()) >= 3  # the bound is active in places
    for method in METHODS:
        layer = Redundant(D=D, f=f, backward_method=method, on_nonconvergence="raise")
        z2, (gy2, gs2) = run(layer)
        assert layer.info.converged.all() and layer.backward_info.converged.all()
        torch.testing.assert_close(z2, z1, atol=1e-10, rtol=0)
        torch.testing.assert_close(gy2, gy1, atol=1e-9, rtol=0)
        torch.testing.assert_close(gs2, gs1, atol=1e-9, rtol=0)
        nu = layer.info.multipliers[1]
        N = left_null(D)  # one direction: the redundant row's combination
        assert N.shape[1] == 1 and float((nu @ N).abs().max()) <= 1e-10
        # Same stationarity as the plain problem: Dᵀν equal.
        torch.testing.assert_close(nu @ D, plain.info.multipliers[1] @ D[:4], atol=1e-10, rtol=0)
    # s0's gradient against central differences (through both rows that carry it).
    eps = 1e-6
    fd = ((plain(y, s0 + eps) - plain(y, s0 - eps)) * w).sum(-1) / (2 * eps)
    torch.testing.assert_close(gs1, fd, atol=1e-7, rtol=0)


# ---------------------------------------------------------------------------------------------
# (e) Truly infeasible elements: flagged, zero gradient, finite output, the blocks named.

CONFLICT = """\
foldgen: 1
name: conflict_{tag}
dims: {{n: 3}}
parameters:
  y: {{shape: [n]}}
  s: {{shape: []}}
  t: {{shape: []}}
  a: {{shape: [n], grad: false}}
variables:
  x: {{shape: [n]}}
minimize: 0.5 * sum_squares(x - y)
constraints:
{constraints}solver: {{rule: sqp, max_iter: 50, tol: 1.0e-10}}
"""


def _infeasible_run(constraints, s, t, tag):
    Layer = foldgen.compile(CONFLICT.format(tag=tag, constraints=constraints))
    layer = Layer(a=torch.tensor([1.0, 1.0, 0.0], dtype=F64))
    y = torch.randn(len(s), 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    y = y.requires_grad_()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = layer(y, torch.tensor(s, dtype=F64), torch.tensor(t, dtype=F64))
        x.sum().backward()
    messages = [str(w.message) for w in caught if "forward solve" in str(w.message)]
    return layer, x.detach(), y.grad, messages


def test_infeasible_inequalities_name_the_conflicting_blocks():
    constraints = "  - x >= 1\n  - x <= 5\n  - sum(x) <= s\n  - a @ x <= t\n"
    layer, x, grad, messages = _infeasible_run(
        constraints, [10.0, 0.0, 10.0, 1.0], [10.0, 10.0, 1.5, 10.0], "ineq"
    )
    assert layer.info.feasible.tolist() == [True, False, False, False]
    assert layer.info.converged.tolist() == [True, False, False, False]
    assert bool(torch.isfinite(x).all()) and bool((grad[1:] == 0).all())
    assert bool((grad[0] != 0).any())
    assert layer.backward_info.converged.tolist() == [True, False, False, False]
    (message,) = messages
    head, detail = message.split(" (", 1)
    assert head.endswith("batch element(s) 1, 2, 3")
    assert detail.startswith("infeasible")
    parts = detail.split(": ", 1)[1].removesuffix(")").split("; ")
    groups = {where: blocks for blocks, where in (part.split(" conflict at ") for part in parts)}
    # x ≥ 1 with Σx ≤ s (s = 0 or 1: elements 1 and 3), and x ≥ 1 with a·x ≤ 1.5 (element 2);
    # x ≤ 5 is never named.
    assert groups == {
        "element(s) 1, 3": "constraints[0] (g0: −x + 1 ≤ 0) and constraints[2] (g2: Σ(x) − s ≤ 0)",
        "element(s) 2": "constraints[0] (g0: −x + 1 ≤ 0) and constraints[3] (g3: a·x − t ≤ 0)",
    }


def test_inconsistent_equalities_name_the_conflicting_blocks():
    constraints = "  - a @ x == t\n  - 2 * a @ x == s\n  - x >= 0\n"
    layer, x, grad, messages = _infeasible_run(constraints, [4.0, 5.0, 4.0], [2.0, 2.0, 2.0], "eq")
    assert layer.info.feasible.tolist() == [True, False, True]
    assert bool(torch.isfinite(x).all()) and bool((grad[1] == 0).all())
    assert bool((grad[[0, 2]] != 0).any())
    (message,) = messages
    assert "element(s) 1 (infeasible" in message
    assert message.endswith(
        "constraints[0] (h0: a·x − t = 0) and constraints[1] (h1: 2 a·x − s = 0) conflict at "
        "element(s) 1)"
    )
    assert "constraints[2]" not in message
    torch.testing.assert_close(
        x[0] @ torch.tensor([1.0, 1.0, 0.0], dtype=F64), torch.tensor(2.0, dtype=F64)
    )


def test_constraint_labels_are_printed_from_the_ir_not_the_spec_text():
    """A constraint's comment (spec text) never reaches the module: labels are foldgen's own
    printing of the expression, through the escaping of every string."""
    hostile = '  - x >= 1  # """; open("PWNED", "w")  #\n  - sum(x) <= s\n'
    spec = CONFLICT.format(tag="hostile", constraints=hostile)
    assert "PWNED" not in build_text(spec, "<string>").source
    labels = foldgen.compile_module(spec).PROBLEM.ineq_labels
    assert labels == ("constraints[0] (g0: −x + 1 ≤ 0)", "constraints[1] (g1: Σ(x) − s ≤ 0)")
