"""Four layers users built, as they built them: a polytope projection with vertices, an
optimal-transport plan with every row and column sum, the tutorial's box QP in float32, and
an MPC layer. Each must converge everywhere with no warning, and give the gradient of an
independent reference: the active-set formula at CVXPY's solution (∂x/∂g = −Z(ZᵀHZ)⁻¹Zᵀ for
min ½xᵀHx + gᵀx, Z a basis of the null space of the active constraints, found by SVD so
that dependent rows are fine).

``python tests/test_user_tasks.py`` prints each task's gradient error, warnings, iterations
and time (the figures in the issue's closing note, before and after).
"""

from __future__ import annotations

import time
import warnings

import cvxpy as cp
import numpy as np
import pytest
import torch

import foldgen

F64 = torch.float64


TIGHT = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12}  # Clarabel


def _null_basis(rows, n):
    if rows.shape[0] == 0:
        return np.eye(n)
    _, s, vt = np.linalg.svd(rows)
    rank = int((s > 1e-9 * max(1.0, s.max())).sum())
    return vt[rank:].T


def active_set_gradient(H, E, w):
    """∂(w·x)/∂g for min ½xᵀHx + gᵀx with the active constraints E x = const."""
    Z = _null_basis(E, H.shape[0])
    if Z.shape[1] == 0:
        return np.zeros_like(w)
    return -Z @ np.linalg.solve(Z.T @ H @ Z, Z.T @ w)


def _run(layer, inputs, grad_name, weight):
    """x, ∂(w·x)/∂input, warnings, info, seconds."""
    inputs = {k: v.clone().requires_grad_(k == grad_name) for k, v in inputs.items()}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        start = time.perf_counter()
        x = layer(**inputs)
        (g,) = torch.autograd.grad((x * weight).sum(), inputs[grad_name])
        seconds = time.perf_counter() - start
    return x.detach(), g, [str(r.message) for r in record], layer.info, seconds


def _against_reference(run, weight, reference, sign=1.0):
    """The run's record with the largest errors of x and of ∂(w·x)/∂g over the batch;
    ``reference(e)`` solves element e independently and returns (x_ref, H, E): its solution,
    the Hessian and the active constraints' rows there. ``sign``: ∂g/∂(input)."""
    x, g, messages, info, seconds = run
    g = sign * g
    x_error = g_error = 0.0
    for e in range(x.shape[0]):
        x_ref, H, E = reference(e)
        g_ref = active_set_gradient(H, E, weight[e].numpy())
        g_error = max(g_error, float(np.abs(g[e].numpy() - g_ref).max()))
        x_error = max(x_error, float(np.abs(x[e].numpy() - x_ref).max()))
    return {
        "grad_error": g_error,
        "x_error": x_error,
        "warnings": messages,
        "info": info,
        "s": seconds,
    }


def _solve(variable, objective, constraints):
    cp.Problem(cp.Minimize(objective), constraints).solve(solver=cp.CLARABEL, **TIGHT)
    return variable.value


# ------------------------------------------------------------ 1. polytope projection

POLYTOPE = """
foldgen: 1
name: polytope_projection
doc: The projection of scores onto the square plus a cut through its corner.
dims: {n: 2, m: 5}
parameters:
  y: {shape: [n]}
  G: {shape: [m, n], grad: false}
  h: {shape: [m], grad: false}
variables:
  x: {shape: [n]}
minimize: 0.5 * sum_squares(x - y)
constraints:
  - G @ x <= h
solver: {rule: admm, max_iter: 20000, tol: 1.0e-10}
"""
G_POLY = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
H_POLY = np.array([1.0, 1.0, 2.0, 1.0, 1.0])


def polytope_task(batch=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = 2 * torch.randn(batch, 2, generator=gen, dtype=F64) + 1.5
    weight = torch.randn(batch, 2, generator=gen, dtype=F64)
    layer = foldgen.compile(POLYTOPE)(G=torch.tensor(G_POLY), h=torch.tensor(H_POLY))
    run = _run(layer, {"y": y}, "y", weight)
    vertices = []

    def reference(e):
        z = cp.Variable(2)
        z_ref = _solve(z, 0.5 * cp.sum_squares(z - y[e].numpy()), [G_POLY @ z <= H_POLY])
        active = G_POLY @ z_ref >= H_POLY - 1e-7
        vertices.append(int(active.sum()) >= 2)
        return z_ref, np.eye(2), G_POLY[active]

    out = _against_reference(run, weight, reference, -1.0)  # the linear term is −y
    return {**out, "vertices": sum(vertices)}


def test_polytope_projection_with_vertices():
    out = polytope_task()
    assert out["vertices"] >= 10  # the task is about vertices: many elements land on one
    assert out["warnings"] == []
    assert bool(out["info"].converged.all())
    assert out["grad_error"] < 1e-7 and out["x_error"] < 1e-7


# ------------------------------------------------------------ 2. optimal transport

TRANSPORT = """
foldgen: 1
name: transport_plan
doc: A matching layer; the plan P (k × k, flattened row-major) has every row and column sum.
dims: {n: 16, m: 8}
parameters:
  C: {shape: [n]}
  A: {shape: [m, n], grad: false}
  b: {shape: [m], grad: false}
variables:
  P: {shape: [n], init: ones(n) / 4}
minimize: C @ P + 0.5 * sum_squares(P)
constraints:
  - P >= 0
  - A @ P == b
solver: {rule: RULE, max_iter: 20000, tol: 1.0e-10}
"""


def transport_data(k=4, batch=8, seed=1):
    rows = np.kron(np.eye(k), np.ones((1, k)))  # Σⱼ P[i, j]
    cols = np.kron(np.ones((1, k)), np.eye(k))  # Σᵢ P[i, j]
    A = np.vstack([rows, cols])  # rank 2k − 1: one equality is always dependent
    b = np.concatenate([np.full(k, 1.0 / k), np.full(k, 1.0 / k)])
    gen = torch.Generator().manual_seed(seed)
    C = 0.3 * torch.randn(batch, k * k, generator=gen, dtype=F64)
    weight = torch.randn(batch, k * k, generator=gen, dtype=F64)
    return A, b, C, weight


def transport_task(rule):
    A, b, C, weight = transport_data()
    cls = foldgen.compile(
        TRANSPORT.replace("RULE", rule).replace("transport_plan", f"transport_{rule}")
    )
    layer = cls(A=torch.tensor(A), b=torch.tensor(b))
    run = _run(layer, {"C": C}, "C", weight)
    n = A.shape[1]

    def reference(e):
        P = cp.Variable(n)
        objective = C[e].numpy() @ P + 0.5 * cp.sum_squares(P)
        P_ref = _solve(P, objective, [P >= 0, A @ P == b])
        return P_ref, np.eye(n), np.vstack([A, np.eye(n)[P_ref <= 1e-7]])

    return _against_reference(run, weight, reference)


@pytest.mark.parametrize("rule", ["admm", "sqp"])
def test_optimal_transport_with_all_row_and_column_sums(rule):
    out = transport_task(rule)
    assert out["warnings"] == []
    assert bool(out["info"].converged.all()) and bool(out["info"].feasible.all())
    assert out["grad_error"] < 1e-6 and out["x_error"] < 1e-6


# ------------------------------------------------------------ 3. the tutorial in float32


def box_qp_float32_task(batch=8, seed=0):
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    cls = foldgen.compile(root / "specs" / "box_qp.yaml")
    gen = torch.Generator().manual_seed(seed)
    n = 100
    a = torch.randn(batch, n, n, generator=gen, dtype=F64)
    Q = a @ a.mT / n + 0.5 * torch.eye(n, dtype=F64)
    c = 1.5 * torch.randn(batch, n, generator=gen, dtype=F64)
    weight = torch.randn(batch, n, generator=gen, dtype=F64)
    layer = cls()
    x32, g32, messages, info, seconds = _run(
        layer, {"Q": Q.float(), "c": c.float()}, "c", weight.float()
    )
    backward = layer.backward_info
    x64, g64, _, _, _ = _run(cls(), {"Q": Q, "c": c}, "c", weight)
    error = float((g32.double() - g64).abs().max() / g64.abs().max())
    return {
        "grad_error": error,
        "warnings": messages,
        "info": info,
        "backward": backward,
        "s": seconds,
    }


def test_tutorial_box_qp_in_float32():
    out = box_qp_float32_task()
    assert out["warnings"] == []
    assert bool(out["info"].converged.all()) and bool(out["backward"].converged.all())
    assert out["grad_error"] < 1e-3  # float32 against the float64 gradient, relative


# ------------------------------------------------------------ 4. an MPC layer

MPC = """
foldgen: 1
name: mpc_layer
doc: Linear MPC over a horizon, states and controls stacked in one vector w.
dims: {n: 64, m: 44}
parameters:
  H: {shape: [n, n], grad: false}
  q: {shape: [n]}
  D: {shape: [m, n], grad: false}
  d: {shape: [m], grad: false}
  lo: {shape: [n], grad: false}
  hi: {shape: [n], grad: false}
variables:
  w: {shape: [n]}
minimize: 0.5 * quad_form(w, H) + q @ w
constraints:
  - w >= lo
  - w <= hi
  - D @ w == d
solver: {rule: admm, max_iter: 20000, tol: 1.0e-9}
"""


def mpc_data(T=10, nx=4, nu=2, batch=4, seed=2):
    """States s₀..s_T (nx each) then controls u₀..u_{T−1} (nu each): s₀ = s_init,
    s_{t+1} = A s_t + B u_t; |u| ≤ 0.5, |s| ≤ 5; cost Σ sᵀs + 0.1 uᵀu."""
    rng = np.random.default_rng(seed)
    A = np.eye(nx) + 0.1 * rng.standard_normal((nx, nx))
    B = rng.standard_normal((nx, nu))
    ns, n = (T + 1) * nx, (T + 1) * nx + T * nu
    D = np.zeros((nx * (T + 1), n))
    D[:nx, :nx] = np.eye(nx)
    for t in range(T):
        r = nx * (t + 1)
        D[r : r + nx, nx * (t + 1) : nx * (t + 2)] = np.eye(nx)
        D[r : r + nx, nx * t : nx * (t + 1)] = -A
        D[r : r + nx, ns + nu * t : ns + nu * (t + 1)] = -B
    H = np.diag(np.concatenate([np.ones(ns), 0.1 * np.ones(T * nu)]))
    lo = np.concatenate([-5 * np.ones(ns), -0.5 * np.ones(T * nu)])
    s0 = 2.0 * rng.standard_normal(nx)
    d = np.concatenate([s0, np.zeros(nx * T)])
    gen = torch.Generator().manual_seed(seed)
    q = 0.5 * torch.randn(batch, n, generator=gen, dtype=F64)
    weight = torch.randn(batch, n, generator=gen, dtype=F64)
    return H, D, d, lo, -lo, q, weight


def mpc_task(**settings):
    H, D, d, lo, hi, q, weight = mpc_data()
    t = {k: torch.tensor(v) for k, v in dict(H=H, D=D, d=d, lo=lo, hi=hi).items()}
    layer = foldgen.compile(MPC)(**t, **settings)
    run = _run(layer, {"q": q}, "q", weight)
    n = H.shape[0]

    def reference(e):
        w = cp.Variable(n)
        objective = 0.5 * cp.quad_form(w, H) + q[e].numpy() @ w
        w_ref = _solve(w, objective, [w >= lo, w <= hi, D @ w == d])
        at = (w_ref <= lo + 1e-7) | (w_ref >= hi - 1e-7)
        return w_ref, H, np.vstack([D, np.eye(n)[at]])

    return _against_reference(run, weight, reference)


@pytest.mark.parametrize("rho", [0.01, 1.0, 100.0])
def test_mpc_layer_at_any_starting_rho(rho):
    out = mpc_task(rho=rho)
    assert out["warnings"] == []
    assert bool(out["info"].converged.all())
    assert out["grad_error"] < 1e-5 and out["x_error"] < 1e-6


if __name__ == "__main__":
    torch.set_num_threads(1)
    rows = [
        ("polytope projection (admm)", polytope_task),
        ("optimal transport (admm)", lambda: transport_task("admm")),
        ("optimal transport (sqp)", lambda: transport_task("sqp")),
        ("box_qp tutorial, float32", box_qp_float32_task),
        *[(f"MPC layer (admm, rho={r:g})", lambda r=r: mpc_task(rho=r)) for r in (0.01, 1, 100)],
    ]
    for name, task in rows:
        try:
            out = task()
        except Exception as err:  # noqa: BLE001 - a report, not a test
            print(f"{name}: {type(err).__name__}: {err}")
            continue
        info = out["info"]
        print(
            f"{name}: gradient error {out['grad_error']:.2e}, {len(out['warnings'])} warnings, "
            f"{int(info.converged.sum())}/{info.converged.numel()} converged, "
            f"≤ {int(info.iterations.max())} iterations, {out['s']:.2f} s"
        )
        for message in out["warnings"]:
            print("    " + message[:300])
