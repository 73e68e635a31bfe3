"""Tests for the runtime modules generated modules copy.

foldgen/runtime/linsolve.py (adjoint solvers) and foldgen/runtime/projections.py
(projections and their VJPs), imported as ordinary modules, are checked against independent references: torch.linalg.solve, exact breakpoint
search, closed forms, cvxpy, and finite differences (gradcheck) for every VJP.
"""

import ast
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from foldgen.link import RUNTIME_MODULES, closure, runtime_definitions

RUNTIME = Path(__file__).resolve().parents[1] / "foldgen" / "runtime"
F64 = torch.float64
F32 = torch.float32


def _load(name):
    spec = importlib.util.spec_from_file_location(f"runtime_{name}", RUNTIME / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LS = _load("linsolve")
PR = _load("projections")


# ----------------------------------------------------------------------------------------
# Runtime conventions: definitions are copied by foldgen.link into one namespace.


ALLOWED_IMPORTS = {"math", "torch", "dataclasses", "sys", "time", "types", "warnings"}


@pytest.mark.parametrize("name", RUNTIME_MODULES)
def test_runtime_modules_import_only_torch_the_stdlib_and_each_other(name):
    tree = ast.parse((RUNTIME / f"{name}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Import):
            assert {alias.name for alias in node.names} <= ALLOWED_IMPORTS
        elif isinstance(node, ast.ImportFrom):
            assert (node.module or "").startswith("foldgen.runtime."), node.module


@pytest.mark.parametrize("name", [m for m in RUNTIME_MODULES if m not in ("layer", "fold")])
def test_no_autograd_inside_the_solvers(name):
    """They run inside a custom backward: only the layer's folded Function touches autograd."""
    for n in ast.walk(ast.parse((RUNTIME / f"{name}.py").read_text())):
        assert not (isinstance(n, ast.Attribute) and n.attr in ("autograd", "backward"))


def test_every_definition_runs_alone_with_its_closure():
    """Each runtime definition, executed with only the stdlib, torch and the definitions it
    reaches (what a generated module gets), defines cleanly."""
    import dataclasses
    import sys
    import time
    import types
    import warnings

    for name in runtime_definitions():
        namespace = {"math": math, "torch": torch, "dataclasses": dataclasses, "sys": sys}
        namespace.update(types=types, warnings=warnings, time=time)
        for definition in closure({name}):
            exec(definition.source, namespace)  # noqa: S102 - the runtime's own source
        assert name in namespace


# ----------------------------------------------------------------------------------------
# Linear solvers


def _random_phi(batch, n, rho, seed):
    """Nonsymmetric Phi (batch, n, n) with spectral radius exactly rho (per element)."""
    gen = torch.Generator().manual_seed(seed)
    m = torch.randn(tuple(batch) + (n, n), generator=gen, dtype=F64)
    radius = torch.linalg.eigvals(m).abs().amax(-1)
    return m * (torch.as_tensor(rho, dtype=F64) / radius)[..., None, None]


def _spd_phi(batch, n, lo, hi, seed):
    """Symmetric Phi with eigenvalues in [lo, hi] (per element), so I - Phi is SPD if hi < 1."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(tuple(batch) + (n, n), generator=gen, dtype=F64))
    t = torch.linspace(0, 1, n, dtype=F64)
    lam = (
        torch.as_tensor(lo, dtype=F64)[..., None]
        + t * (torch.as_tensor(hi, dtype=F64) - torch.as_tensor(lo, dtype=F64))[..., None]
    )
    return q @ torch.diag_embed(lam) @ q.mT


def _matvec(phi):
    phi_t = phi.mT

    def apply(v):  # (..., N) -> (..., N)
        return (phi_t @ v[..., None]).squeeze(-1)

    return apply


def _reference(phi, g):
    eye = torch.eye(phi.shape[-1], dtype=phi.dtype)
    return torch.linalg.solve(eye - phi.mT, g)


def _true_residual(phi, v, g):
    r = v - (phi.mT @ v[..., None]).squeeze(-1) - g
    return r.norm(dim=-1) / g.norm(dim=-1).clamp_min(torch.finfo(g.dtype).tiny)


def _rhs(shape, n, seed, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(shape) + (n,), generator=gen, dtype=F64).to(dtype)


def _rho_grid(shape, lo, hi):
    count = math.prod(shape)
    return torch.linspace(lo, hi, max(count, 1), dtype=F64)[:count].reshape(shape)


SHAPES = [(), (5,), (2, 3)]
ITERATIVE = {
    "lfpi": lambda f, g, tol: LS._solve_lfpi(f, g, 2000, tol),
    "gmres": lambda f, g, tol: LS._solve_gmres(f, g, 400, tol),
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method", ["lfpi", "gmres"])
def test_contractive_phi_converges(shape, method):
    n, tol = 40, 1e-12  # n large enough that GMRES stops before n steps
    rho = _rho_grid(shape, 0.2, 0.9)
    phi = _random_phi(shape, n, rho, seed=1)
    g = _rhs(shape, n, seed=2)
    v, iters, res = ITERATIVE[method](_matvec(phi), g, tol)
    assert v.shape == g.shape and iters.shape == shape and res.shape == shape
    assert iters.dtype == torch.int64
    assert bool((res <= tol).all())
    torch.testing.assert_close(res, _true_residual(phi, v, g), rtol=1e-6, atol=1e-15)
    torch.testing.assert_close(v, _reference(phi, g), rtol=1e-10, atol=1e-10)
    if shape:  # per-element conditioning differs, so do the iteration counts
        assert iters.unique().numel() > 1


@pytest.mark.parametrize("shape", SHAPES)
def test_expansive_phi_lfpi_fails_gmres_and_direct_solve(shape):
    n, tol = 10, 1e-12
    rho = _rho_grid(shape, 1.3, 2.0)
    phi = _random_phi(shape, n, rho, seed=3)
    eye = torch.eye(n, dtype=F64)
    assert bool((torch.linalg.cond(eye - phi) < 1e4).all())  # nonsingular, well conditioned
    g = _rhs(shape, n, seed=4)
    ref = _reference(phi, g)

    _, _, res = LS._solve_lfpi(_matvec(phi), g, 300, tol)
    assert not bool((res <= tol).any())  # reports non-convergence (inf/NaN also count)

    v, iters, res = LS._solve_gmres(_matvec(phi), g, 200, tol)
    assert bool((res <= tol).all()) and bool((iters <= 200).all())
    torch.testing.assert_close(v, ref, rtol=1e-10, atol=1e-10)

    v, iters, res = LS._solve_direct(phi.mT, g)
    assert bool((iters == 1).all()) and iters.shape == shape
    assert bool((res <= 1e-13).all())
    torch.testing.assert_close(v, ref, rtol=1e-10, atol=1e-10)


def test_gmres_restarted_and_budget():
    n, shape = 30, (4,)
    phi = _random_phi(shape, n, torch.tensor([0.3, 0.6, 0.8, 0.95], dtype=F64), seed=5)
    g = _rhs(shape, n, seed=6)
    v, iters, res = LS._solve_gmres(_matvec(phi), g, 600, 1e-11, restart=5)
    assert bool((res <= 1e-11).all())
    torch.testing.assert_close(v, _reference(phi, g), rtol=1e-9, atol=1e-9)
    assert bool((iters[1:] >= iters[:-1]).all()) and iters[0] < iters[-1]
    # A budget too small to converge is reported through the residual, not an error.
    v, iters, res = LS._solve_gmres(_matvec(phi), g, 3, 1e-11)
    assert bool((iters <= 3).all()) and bool((res > 1e-11).all()) and bool(res.isfinite().all())


def test_gmres_lucky_breakdown():
    n = 8
    g = _rhs((3,), n, seed=7)
    zero = torch.zeros(3, n, n, dtype=F64)  # A = I: exact after one step
    v, iters, res = LS._solve_gmres(_matvec(zero), g, 50, 1e-14)
    assert bool((iters == 1).all()) and bool((res <= 1e-15).all())
    torch.testing.assert_close(v, g)
    # Phi of rank 2: A = I - low rank has a degree-3 minimal polynomial.
    gen = torch.Generator().manual_seed(8)
    u, w = torch.randn(2, 3, n, 2, generator=gen, dtype=F64)
    phi = 0.3 * u @ w.mT
    v, iters, res = LS._solve_gmres(_matvec(phi), g, 50, 1e-13)
    assert bool((iters <= 3).all()) and bool(v.isfinite().all()) and bool((res <= 1e-13).all())
    torch.testing.assert_close(v, _reference(phi, g), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("restart", [1, 3, 7, 100])
def test_gmres_batched_matches_each_element_alone(restart):
    """Per-element subspace sizes, restarts and budgets: a batch changes no element's path."""
    n, shape, tol = 12, (5,), 1e-11
    phi = _random_phi(shape, n, torch.tensor([0.2, 0.5, 0.9, 1.2, 1.6], dtype=F64), seed=22)
    g = _rhs(shape, n, seed=23)
    for max_iter in (5, 60):  # restart beyond the budget, and beyond N
        v, iters, res = LS._solve_gmres(_matvec(phi), g, max_iter, tol, restart)
        assert bool((iters <= max_iter).all()) and bool(v.isfinite().all())
        torch.testing.assert_close(res, _true_residual(phi, v, g), rtol=1e-6, atol=1e-13)
        for i in range(shape[0]):
            vi, iters_i, res_i = LS._solve_gmres(_matvec(phi[i]), g[i], max_iter, tol, restart)
            assert iters_i.shape == () and int(iters_i) == int(iters[i])
            torch.testing.assert_close(vi, v[i], rtol=1e-9, atol=1e-9)
            assert bool(res_i <= tol) == bool(res[i] <= tol)
    if restart >= n:  # unrestarted, budget 60 > n: every element solved, rho > 1 too
        assert bool((res <= tol).all())


def test_gmres_nonnormal_and_singular_elements():
    """Full GMRES stays accurate on a highly nonnormal A (Grcar) as long as the Arnoldi
    basis stays orthogonal; a singular A (Phi = I) or g outside its range is flagged."""
    n = 40
    grcar = torch.eye(n, dtype=F64) - torch.diag(torch.ones(n - 1, dtype=F64), -1)
    for k in range(1, 4):
        grcar = grcar + torch.diag(torch.ones(n - k, dtype=F64), k)
    q, _ = torch.linalg.qr(
        torch.randn(n, n, generator=torch.Generator().manual_seed(24), dtype=F64)
    )
    lam = torch.linspace(0.0, 0.8, n, dtype=F64)
    lam[0] = 1.0  # I - Phi singular, and g has a component in its null space
    phi = torch.stack([torch.eye(n, dtype=F64) - grcar, torch.eye(n, dtype=F64), q * lam @ q.mT])
    g = _rhs((3,), n, seed=25)
    v, iters, res = LS._solve_gmres(_matvec(phi), g, 3 * n, 1e-12, restart=n)
    assert bool(v.isfinite().all()) and iters.tolist()[:2] == [n, 0]
    assert res[0] <= 1e-12 and res[1] == 1 and not bool(res[2] <= 1e-12)
    torch.testing.assert_close(v[0], _reference(phi[:1], g[:1])[0], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("shape", SHAPES)
def test_cg_spd(shape):
    n, tol = 80, 1e-12  # n large enough that CG stops before n steps
    lo = -_rho_grid(shape, 0.5, 8.0)  # condition number of I - Phi grows along the batch
    phi = _spd_phi(shape, n, lo, 0.9, seed=9)
    g = _rhs(shape, n, seed=10)
    v, iters, res = LS._solve_cg(_matvec(phi), g, 200, tol)
    assert bool((res <= tol).all()) and iters.shape == shape
    torch.testing.assert_close(res, _true_residual(phi, v, g), rtol=1e-6, atol=1e-15)
    torch.testing.assert_close(v, _reference(phi, g), rtol=1e-10, atol=1e-10)
    if shape:
        assert iters.unique().numel() > 1


def test_cg_indefinite_reports_failure():
    phi = _spd_phi((2,), 6, torch.tensor([-1.0, -1.0]), torch.tensor([0.5, 1.8]), seed=11)
    g = _rhs((2,), 6, seed=12)
    v, _, res = LS._solve_cg(_matvec(phi), g, 100, 1e-12)
    assert res[0] <= 1e-12 and not bool(res[1] <= 1e-12)
    torch.testing.assert_close(v[0], _reference(phi, g)[0], rtol=1e-10, atol=1e-10)


SOLVERS = {
    "lfpi": lambda phi, g, tol: LS._solve_lfpi(_matvec(phi), g, 3000, tol),
    "gmres": lambda phi, g, tol: LS._solve_gmres(_matvec(phi), g, 300, tol),
    "cg": lambda phi, g, tol: LS._solve_cg(_matvec(phi), g, 300, tol),
    "direct": lambda phi, g, tol: LS._solve_direct(phi.mT, g),
}


def _solver_problem(method, shape, n, seed):
    if method == "cg":
        return _spd_phi(shape, n, -_rho_grid(shape, 0.5, 3.0), 0.8, seed)
    return _random_phi(shape, n, _rho_grid(shape, 0.3, 0.8), seed)


@pytest.mark.parametrize("method", list(SOLVERS))
def test_float32(method):
    n, tol = 10, 1e-5
    phi = _solver_problem(method, (4,), n, seed=13)
    g = _rhs((4,), n, seed=14)
    v, iters, res = SOLVERS[method](phi.to(F32), g.to(F32), tol)
    assert v.dtype == F32 and res.dtype == F32 and iters.dtype == torch.int64
    assert bool((res <= tol).all())
    torch.testing.assert_close(v.double(), _reference(phi, g), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", list(SOLVERS))
def test_zero_rhs_and_nonfinite_elements_stay_isolated(method):
    n, tol = 8, 1e-12
    phi = _solver_problem(method, (5,), n, seed=15)
    g = _rhs((5,), n, seed=16)
    g[1] = 0.0
    g[2, 3] = math.nan
    phi[4, 0, 0] = math.inf
    v, iters, res = SOLVERS[method](phi, g, tol)
    assert bool((v[1] == 0).all()) and res[1] == 0
    if method != "direct":
        assert iters[1] == 0
    assert not bool(res[2] <= tol) and not bool(res[4] <= tol)
    good = [0, 1, 3]
    assert bool((res[good] <= tol).all())
    torch.testing.assert_close(v[good], _reference(phi[good], g[good]), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("tol", [1e-4, 1e-8])
@pytest.mark.parametrize("method", ["lfpi", "gmres", "cg"])
def test_tolerance_respected_not_overdone(method, tol):
    phi = _solver_problem(method, (3,), 60, seed=17)
    g = _rhs((3,), 60, seed=18)
    v, iters, res = SOLVERS[method](phi, g, tol)
    assert bool((res <= tol).all())
    torch.testing.assert_close(res, _true_residual(phi, v, g), rtol=1e-6, atol=1e-15)
    _, iters_tight, _ = SOLVERS[method](phi, g, tol * 1e-4)
    assert bool((iters < iters_tight).all())


def test_direct_singular_element_is_flagged():
    phi = _random_phi((3,), 5, torch.tensor([0.5, 0.5, 0.5], dtype=F64), seed=19)
    phi[1] = torch.eye(5, dtype=F64)  # I - Phi = 0
    g = _rhs((3,), 5, seed=20)
    v, _, res = LS._solve_direct(phi.mT, g)
    assert bool(v.isfinite().all()) and res[1] == 1
    torch.testing.assert_close(v[[0, 2]], _reference(phi[[0, 2]], g[[0, 2]]))


@pytest.mark.parametrize("shape", SHAPES)
def test_dense_from_matvec(shape):
    n = 7
    phi = _random_phi(shape, n, 0.5, seed=21)
    phi_t = phi.mT

    def apply(v):  # dim -2 of v indexes unit vectors: an extra batch dim for phi_t
        return (phi_t.unsqueeze(-3) @ v[..., None]).squeeze(-1)

    dense = LS._dense_from_matvec(apply, shape, n, F64, torch.device("cpu"))
    assert dense.shape == tuple(shape) + (n, n)
    torch.testing.assert_close(dense, phi_t, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------
# Projections: helpers


def _gradcheck(forward, vjp, inputs, full_shapes):
    """gradcheck an autograd.Function whose backward is the VJP under test.

    ``vjp(v, out, *inputs)`` returns one cotangent per input (None: not differentiated);
    each must have the full broadcast shape in ``full_shapes`` before being reduced.
    """

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
            grads = []
            for arg, bar, full in zip(args, bars, full_shapes):
                if bar is None:
                    grads.append(None)
                    continue
                assert bar.shape == full, (bar.shape, full)
                grads.append(bar.sum_to_size(arg.shape))
            return tuple(grads)

    inputs = tuple(t.detach().clone().requires_grad_(True) for t in inputs)
    assert torch.autograd.gradcheck(Fn.apply, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def _box_sum_reference(y, lo, hi, k, d):
    """Exact projection by locating k on the piecewise-linear s(tau) (numpy, float64)."""
    y, lo, hi, d = (
        np.broadcast_to(np.asarray(t, dtype=np.float64), y.shape) for t in (y, lo, hi, d)
    )

    def s(tau):
        return np.clip(y - tau * d, lo, hi).sum()

    bps = np.concatenate([(y - lo) / d, (y - hi) / d])
    bps = np.sort(bps[np.isfinite(bps)])
    big = 10 * (abs(k) + np.abs(y).sum() + np.abs(bps).max()) / d.min() + 10
    taus = np.concatenate([[bps[0] - big], bps, [bps[-1] + big]])
    vals = np.array([s(t) for t in taus])
    i = min(np.searchsorted(-vals, -k, side="right") - 1, len(taus) - 2)  # vals decreasing
    i = max(i, 0)
    t0, t1, s0, s1 = taus[i], taus[i + 1], vals[i], vals[i + 1]
    tau = t0 if s0 == s1 else t0 + (s0 - k) / (s0 - s1) * (t1 - t0)
    return np.clip(y - tau * d, lo, hi)


def _box_sum_instances(batch, n, seed, dtype=F64, inf_mode="none"):
    """Random feasible instances; inf_mode: none | simplex | upper | lower | mixed."""
    gen = torch.Generator().manual_seed(seed)
    y = 2 * torch.randn(batch, n, generator=gen, dtype=F64)
    lo = -torch.rand(batch, n, generator=gen, dtype=F64)
    hi = 0.2 + torch.rand(batch, n, generator=gen, dtype=F64)
    d = 0.5 + 1.5 * torch.rand(batch, n, generator=gen, dtype=F64)
    w = torch.rand(batch, generator=gen, dtype=F64)
    k = lo.sum(-1) + w * (hi - lo).sum(-1)
    if inf_mode == "simplex":
        lo, hi, k = torch.zeros_like(lo), torch.full_like(hi, math.inf), 1 + w
    elif inf_mode == "upper":
        hi = torch.full_like(hi, math.inf)
        k = lo.sum(-1) + 3 * w
    elif inf_mode == "lower":
        lo = torch.full_like(lo, -math.inf)
        k = hi.sum(-1) - 3 * w
    elif inf_mode == "mixed":  # some components unbounded both ways, some one-sided
        lo[:, ::2] = -math.inf
        hi[:, 1::3] = math.inf
        k = 4 * torch.randn(batch, generator=gen, dtype=F64)
    return tuple(t.to(dtype) for t in (y, lo, hi, k, d))


def _check_box_sum_kkt(x, y, lo, hi, k, d, ok, atol):
    assert bool(ok.all()) and bool(x.isfinite().all())
    assert bool((x >= lo).all()) and bool((x <= hi).all())
    torch.testing.assert_close(x.sum(-1), k, rtol=0, atol=atol)
    tau_i = (y - x) / d  # equal to tau on the free set
    free = (x > lo) & (x < hi)
    tau = torch.where(free, tau_i, 0).sum(-1) / free.sum(-1).clamp_min(1)
    assert bool((free.sum(-1) > 0).all())
    torch.testing.assert_close(
        torch.where(free, tau_i, tau[..., None]),
        tau[..., None].expand_as(x),
        rtol=0,
        atol=10 * atol,
    )
    assert bool(((y - lo) / d <= tau[..., None] + 10 * atol)[x == lo].all())
    assert bool(((y - hi) / d >= tau[..., None] - 10 * atol)[x == hi].all())


# ----------------------------------------------------------------------------------------
# Box


@pytest.mark.parametrize("dtype", [F32, F64])
def test_box_forward(dtype):
    y = _rhs((2, 3), 6, seed=30, dtype=dtype)
    lo = torch.tensor([-0.5, -math.inf, -1.0, 0.0, -math.inf, -0.2], dtype=dtype)
    hi = torch.tensor([0.5, 0.3, math.inf, 0.0, math.inf, 0.9], dtype=dtype)
    x = PR._proj_box(y, lo, hi)
    assert x.dtype == dtype and x.shape == (2, 3, 6)
    np.testing.assert_array_equal(x.numpy(), np.clip(y.numpy(), lo.numpy(), hi.numpy()))
    y_bar, lo_bar, hi_bar = PR._proj_box_vjp(torch.ones_like(y), y, lo, hi)
    assert y_bar.shape == lo_bar.shape == hi_bar.shape == (2, 3, 6)
    assert bool((y_bar + lo_bar + hi_bar == 1).all())  # each component goes to one place
    assert not bool(lo_bar[..., [1, 4]].any()) and not bool(hi_bar[..., [2, 4]].any())


def test_box_vjp_gradcheck():
    gen = torch.Generator().manual_seed(31)
    y = torch.randn(4, 6, generator=gen, dtype=F64)
    lo = -0.5 * torch.rand(6, generator=gen, dtype=F64)
    hi = 0.5 * torch.rand(4, 1, generator=gen, dtype=F64) + 0.1
    for bound in (lo, hi):  # keep every component 1e-3 away from a kink
        near = (y - bound).abs() < 1e-3
        y = torch.where(near, y + 3e-3, y)
    _gradcheck(
        PR._proj_box,
        lambda v, out, y, lo, hi: PR._proj_box_vjp(v, y, lo, hi),
        (y, lo, hi),
        [(4, 6)] * 3,
    )


# ----------------------------------------------------------------------------------------
# Box with a sum constraint


@pytest.mark.parametrize("inf_mode", ["none", "simplex", "upper", "lower", "mixed"])
def test_box_sum_exact_against_breakpoint_search(inf_mode):
    y, lo, hi, k, d = _box_sum_instances(40, 7, seed=32, inf_mode=inf_mode)
    x, ok = PR._proj_box_sum(y, lo, hi, k, d)
    assert x.shape == y.shape and ok.shape == k.shape and ok.dtype == torch.bool
    for i in range(y.shape[0]):
        ref = _box_sum_reference(
            y[i].numpy(), lo[i].numpy(), hi[i].numpy(), k[i].item(), d[i].numpy()
        )
        np.testing.assert_allclose(x[i].numpy(), ref, rtol=1e-12, atol=1e-12)
    _check_box_sum_kkt(x, y, lo, hi, k, d, ok, atol=1e-13)
    # Euclidean (d = 1, broadcast as a 0-d tensor) as well
    one = torch.ones((), dtype=F64)
    x, ok = PR._proj_box_sum(y, lo, hi, k, one)
    _check_box_sum_kkt(x, y, lo, hi, k, one.expand_as(y), ok, atol=1e-13)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_box_sum_wide_scales_ties_and_fixed_components(dtype):
    """Weights over 6 decades, y over 7, tied y values, lo == hi, k at sum(lo) or sum(hi).

    Regression: halving tau values with a dtype-based count leaves the active set unpinned
    here in float32 (sum(x) was off by 0.36); the breakpoint bisection is exact.
    """
    gen = torch.Generator().manual_seed(39)
    batch, n = 200, 12
    mag = 10.0 ** torch.randint(-3, 4, (batch, 1), generator=gen)
    y = torch.randn(batch, n, generator=gen, dtype=F64).round(decimals=1) * mag
    lo = -torch.rand(batch, n, generator=gen, dtype=F64).round(decimals=1)
    hi = lo + torch.rand(batch, n, generator=gen, dtype=F64).round(decimals=1)
    d = 10 ** (6 * torch.rand(batch, n, generator=gen, dtype=F64) - 3)
    d[::3] = 1.0
    w = torch.rand(batch, generator=gen, dtype=F64)
    w[::5], w[1::5] = 0.0, 1.0
    k = lo.sum(-1) + w * (hi - lo).sum(-1)
    x, ok = PR._proj_box_sum(*(t.to(dtype) for t in (y, lo, hi, k, d)))
    assert bool(ok.all())
    x = x.double()
    scale = y.abs().amax(-1, keepdim=True) + 1  # rounding scale of y - tau * d
    eps = torch.finfo(dtype).eps
    for i in range(batch):
        ref = _box_sum_reference(*(t[i].numpy() for t in (y, lo, hi)), k[i].item(), d[i].numpy())
        assert np.abs(x[i].numpy() - ref).max() <= 8 * eps * scale[i].item()
    assert bool(((x.sum(-1) - k).abs() <= 8 * n * eps * scale.squeeze(-1)).all())


def test_box_sum_simplex_matches_sort_algorithm():
    y, lo, hi, k, _ = _box_sum_instances(30, 9, seed=33, inf_mode="simplex")
    x, ok = PR._proj_box_sum(y, lo, hi, k, torch.ones((), dtype=F64))
    u, _ = torch.sort(y, dim=-1, descending=True)  # Duchi et al. (2008)
    css = u.cumsum(-1) - k[..., None]
    idx = torch.arange(1, y.shape[-1] + 1, dtype=F64)
    rho = ((u - css / idx) > 0).sum(-1, keepdim=True)
    theta = css.gather(-1, rho - 1) / rho
    torch.testing.assert_close(x, (y - theta).clamp_min(0), rtol=1e-14, atol=1e-14)
    assert bool(ok.all())


def test_box_sum_batched_broadcast_and_float32():
    gen = torch.Generator().manual_seed(34)
    y = torch.randn(2, 3, 5, generator=gen, dtype=F64)
    lo = torch.zeros(5, dtype=F64)  # shared bounds
    hi = torch.full((3, 1), 0.6, dtype=F64)
    k = torch.tensor([1.0, 1.5, 2.0], dtype=F64)  # (3,) broadcasts against (2, 3)
    d = 0.5 + torch.rand(2, 1, 5, generator=gen, dtype=F64)
    x64, ok = PR._proj_box_sum(y, lo, hi, k, d)
    assert x64.shape == (2, 3, 5) and ok.shape == (2, 3)
    full = [t.expand(2, 3, 5) for t in (y, lo, hi, d)]
    _check_box_sum_kkt(x64, full[0], full[1], full[2], k.expand(2, 3), full[3], ok, 1e-13)
    x32, ok32 = PR._proj_box_sum(*(t.to(F32) for t in (y, lo, hi, k, d)))
    assert x32.dtype == F32 and bool(ok32.all())
    torch.testing.assert_close(x32.double(), x64, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(x32.sum(-1), k.to(F32).expand(2, 3), rtol=0, atol=1e-6)
    y, lo, hi, k, d = _box_sum_instances(20, 6, seed=35, dtype=F32, inf_mode="mixed")
    x, ok = PR._proj_box_sum(y, lo, hi, k, d)
    _check_box_sum_kkt(x, y, lo, hi, k, d, ok, atol=2e-5)


def test_box_sum_infeasible_elements():
    y, lo, hi, k, d = _box_sum_instances(4, 5, seed=36)
    k = k.clone()
    k[1] = lo[1].sum() - 0.1  # below sum(lo)
    k[2] = hi[2].sum() + 0.1  # above sum(hi)
    x, ok = PR._proj_box_sum(y, lo, hi, k, d)
    assert ok.tolist() == [True, False, False, True] and bool(x.isfinite().all())
    torch.testing.assert_close(x[1:3], torch.minimum(torch.maximum(y, lo), hi)[1:3])
    good = [0, 3]
    x_ref, _ = PR._proj_box_sum(y[good], lo[good], hi[good], k[good], d[good])
    torch.testing.assert_close(x[good], x_ref, rtol=0, atol=0)
    # k exactly at sum(lo) is feasible (all components at lo)
    x, ok = PR._proj_box_sum(y, lo, hi, lo.sum(-1), d)
    assert bool(ok.all())
    torch.testing.assert_close(x, lo, rtol=0, atol=1e-14)  # all at lo, to rounding


def _box_sum_vjp_data(batch, n, seed, inf_mode="none"):
    """Instances whose components are all 1e-3 away from their kinks (and some free)."""
    y, lo, hi, k, d = _box_sum_instances(4 * batch, n, seed, inf_mode=inf_mode)
    x, _ = PR._proj_box_sum(y, lo, hi, k, d)
    free = (x > lo) & (x < hi)
    tau = (torch.where(free, (y - x) / d, 0).sum(-1) / free.sum(-1).clamp_min(1))[..., None]
    z = y - tau * d
    gap = torch.minimum((z - lo).abs(), (z - hi).abs()).amin(-1)
    keep = torch.nonzero((gap > 1e-3) & (free.sum(-1) > 0)).squeeze(-1)[:batch]
    assert keep.numel() == batch
    return tuple(t[keep] for t in (y, lo, hi, k, d))


@pytest.mark.parametrize("inf_mode", ["none", "mixed"])
def test_box_sum_vjp_gradcheck(inf_mode):
    y, lo, hi, k, d = _box_sum_vjp_data(6, 5, seed=37, inf_mode=inf_mode)

    def forward(y, lo, hi, k):
        x, ok = PR._proj_box_sum(y, lo, hi, k, d)
        assert bool(ok.all())
        return x

    def vjp(v, x, y, lo, hi, k):
        return PR._proj_box_sum_vjp(v, x, lo, hi, d)

    # Perturbing an infinite bound changes nothing, matching its zero cotangent.
    _gradcheck(forward, vjp, (y, lo, hi, k), [(6, 5)] * 3 + [(6,)])


def test_box_sum_vjp_weighted_matches_formula():
    y, lo, hi, k, d = _box_sum_vjp_data(3, 6, seed=38)
    x, _ = PR._proj_box_sum(y, lo, hi, k, d)
    v = torch.randn_like(x)
    y_bar, lo_bar, hi_bar, k_bar = PR._proj_box_sum_vjp(v, x, lo, hi, d)
    free, at_lo, at_hi = (x > lo) & (x < hi), x == lo, x == hi
    assert bool((free.int() + at_lo.int() + at_hi.int() == 1).all())
    v_bar = (v * d * free).sum(-1) / (d * free).sum(-1)
    torch.testing.assert_close(k_bar, v_bar)
    torch.testing.assert_close(y_bar, torch.where(free, v - v_bar[..., None], 0))
    torch.testing.assert_close(lo_bar, torch.where(at_lo, v - v_bar[..., None], 0))
    torch.testing.assert_close(hi_bar, torch.where(at_hi, v - v_bar[..., None], 0))


# ----------------------------------------------------------------------------------------
# Affine set, half-space, ball


def _affine_data(seed, batch=(3,), m=2, n=5, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(tuple(batch) + (m, n), generator=gen, dtype=F64)
    y = torch.randn(tuple(batch) + (n,), generator=gen, dtype=F64)
    b = torch.randn(m, generator=gen, dtype=F64)  # shared across the batch
    return tuple(t.to(dtype) for t in (y, A, b))


@pytest.mark.parametrize("dtype", [F32, F64])
def test_affine_forward(dtype):
    y, A, b = _affine_data(40, batch=(2, 3), dtype=dtype)
    L = PR._affine_factor(A)
    x = PR._proj_affine(y, A, b, L)
    assert x.shape == (2, 3, 5) and x.dtype == dtype
    pinv = torch.linalg.pinv(A.double())  # independent: x = y - A^+ (A y - b)
    ref = y.double() - (
        pinv @ ((A.double() @ y.double()[..., None]).squeeze(-1) - b.double())[..., None]
    ).squeeze(-1)
    tol = 1e-12 if dtype == F64 else 1e-5
    torch.testing.assert_close(x.double(), ref, rtol=tol, atol=tol)


def test_affine_dependent_rows_conflicting_b_is_isolated():
    y, A, b = _affine_data(41, batch=(3,))
    A = A.clone()
    A[1, 1] = A[1, 0]  # element 1: its two rows are equal, and b asks for two values
    W = PR._affine_factor(A, b)
    x = PR._proj_affine(y, A, b, W)
    assert bool(x[[0, 2]].isfinite().all()) and not bool(x[1].isfinite().all())


def test_affine_dependent_rows_with_consistent_b_project_exactly():
    """Redundant equalities (a row repeated, a row the sum of two others): the projection
    onto the same set as the independent rows alone, by the pseudo-inverse."""
    y, A, _ = _affine_data(44, batch=(3,), m=2, n=6)
    x0 = torch.randn(3, 6, dtype=F64, generator=torch.Generator().manual_seed(45))
    A3 = torch.cat([A, A[..., :1, :] + A[..., 1:, :], A[..., :1, :]], -2)  # rank 2 of 4
    b3 = (A3 @ x0[..., None])[..., 0]
    W = PR._affine_factor(A3, b3)
    x = PR._proj_affine(y, A3, b3, W)
    b = (A @ x0[..., None])[..., 0]
    ref = PR._proj_affine(y, A, b, PR._affine_factor(A, b))
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-12)
    # The cotangent of y is the same; b's is the minimum-norm one (orthogonal to the
    # dependent combinations, here (1, 1, -1, 0) and (1, 0, 0, -1)).
    v = torch.randn(3, 6, dtype=F64, generator=torch.Generator().manual_seed(46))
    y_bar, _, b_bar = PR._proj_affine_vjp(v, x, y, A3, b3, W)
    y_ref, _, _ = PR._proj_affine_vjp(v, ref, y, A, b, PR._affine_factor(A, b))
    torch.testing.assert_close(y_bar, y_ref, rtol=0, atol=1e-12)
    null = torch.tensor([[1.0, 1.0, -1.0, 0.0], [1.0, 0.0, 0.0, -1.0]], dtype=F64)
    assert float((b_bar @ null.T).abs().max()) < 1e-12


def test_affine_vjp_matches_autograd_and_gradcheck():
    y, A, b = _affine_data(42, batch=(3,))
    y = y.expand(2, 3, 5).clone()  # y has a larger batch than A
    v = torch.randn(2, 3, 5, dtype=F64, generator=torch.Generator().manual_seed(43))
    L = PR._affine_factor(A)
    x = PR._proj_affine(y, A, b, L)
    y_bar, A_bar, b_bar = PR._proj_affine_vjp(v, x, y, A, b, L)
    assert y_bar.shape == (2, 3, 5) and A_bar.shape == (2, 3, 2, 5) and b_bar.shape == (2, 3, 2)
    # Autograd through a plain differentiable formula (test-only).
    yg, Ag, bg = (t.clone().requires_grad_(True) for t in (y, A, b))
    r = (Ag @ yg[..., None]).squeeze(-1) - bg
    xg = yg - (Ag.mT @ torch.linalg.solve(Ag @ Ag.mT, r[..., None])).squeeze(-1)
    gy, gA, gb = torch.autograd.grad(xg, (yg, Ag, bg), v)
    torch.testing.assert_close(y_bar, gy)
    torch.testing.assert_close(A_bar.sum_to_size(A.shape), gA)
    torch.testing.assert_close(b_bar.sum_to_size(b.shape), gb)
    _gradcheck(
        lambda y, A, b: PR._proj_affine(y, A, b, PR._affine_factor(A)),
        lambda v, x, y, A, b: PR._proj_affine_vjp(v, x, y, A, b, PR._affine_factor(A)),
        (y, A, b),
        [(2, 3, 5), (2, 3, 2, 5), (2, 3, 2)],
    )


def _halfspace_data(seed, batch=8, n=4, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randn(batch, n, generator=gen, dtype=F64)
    a = torch.randn(batch, n, generator=gen, dtype=F64)
    b = (a * y).sum(-1) + torch.linspace(-1, 1, batch, dtype=F64)  # half active, 1e-3 away
    b = torch.where((b - (a * y).sum(-1)).abs() < 1e-3, b + 1e-2, b)
    return tuple(t.to(dtype) for t in (y, a, b))


@pytest.mark.parametrize("dtype", [F32, F64])
def test_halfspace_forward_kkt(dtype):
    y, a, b = _halfspace_data(50, dtype=dtype)
    a[0], b[0] = 0.0, 1.0  # degenerate normal, {0 <= 1} is everything: x = y
    x = PR._proj_halfspace(y, a, b)
    tol = 1e-12 if dtype == F64 else 1e-5
    ax = (a * x).sum(-1)
    assert bool((ax <= b + tol).all()) and bool(x.isfinite().all())
    lam = ((y - x) * a).sum(-1) / (a * a).sum(-1).clamp_min(1e-30)  # y - x = lam a, lam >= 0
    torch.testing.assert_close(y - x, lam[..., None] * a, rtol=tol, atol=tol)
    assert bool((lam >= -tol).all()) and bool((lam * (ax - b)).abs().max() < 10 * tol)
    torch.testing.assert_close(x[0], y[0])


def test_halfspace_vjp_gradcheck():
    y, a, b = _halfspace_data(51)
    y = torch.stack([y, y + 1e-4 * torch.randn_like(y)])  # (2, 8, 4); a, b shared
    assert bool((((a * y).sum(-1) - b).abs() > 5e-4).all())
    _gradcheck(
        PR._proj_halfspace,
        lambda v, out, y, a, b: PR._proj_halfspace_vjp(v, y, a, b),
        (y, a, b),
        [(2, 8, 4), (2, 8, 4), (2, 8)],
    )


def _ball_data(seed, batch=8, n=3, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    y = 2 * torch.randn(batch, n, generator=gen, dtype=F64)
    c = torch.randn(n, generator=gen, dtype=F64)  # shared center
    dist = (y - c).norm(dim=-1)
    r = dist * torch.linspace(0.5, 1.5, batch, dtype=F64)  # half outside, half inside
    r = torch.where((r - dist).abs() < 1e-3, r + 1e-2, r)
    return tuple(t.to(dtype) for t in (y, c, r))


@pytest.mark.parametrize("dtype", [F32, F64])
def test_ball_forward_kkt(dtype):
    y, c, r = _ball_data(60, dtype=dtype)
    x = PR._proj_ball(y, c, r)
    tol = 1e-12 if dtype == F64 else 1e-5
    dist = (x - c).norm(dim=-1)
    assert bool((dist <= r * (1 + tol)).all())
    inside = (y - c).norm(dim=-1) <= r
    torch.testing.assert_close(x[inside], y[inside], rtol=0, atol=0)
    # outside: x on the sphere, on the segment from c to y
    torch.testing.assert_close(dist[~inside], r[~inside], rtol=tol, atol=tol)
    unit = (y - c) / (y - c).norm(dim=-1, keepdim=True)
    torch.testing.assert_close(x[~inside], (c + r[..., None] * unit)[~inside], rtol=tol, atol=tol)
    x0 = PR._proj_ball(c.expand(2, 3), c, torch.zeros(2, dtype=dtype))  # y = c, r = 0
    assert bool(x0.isfinite().all())


def test_ball_vjp_gradcheck():
    y, c, r = _ball_data(61)
    _gradcheck(
        PR._proj_ball,
        lambda v, out, y, c, r: PR._proj_ball_vjp(v, y, c, r),
        (y, c, r),
        [(8, 3), (8, 3), (8,)],
    )


# ----------------------------------------------------------------------------------------
# Independent QP reference (cvxpy) for a few instances of each projection


def _cvxpy_projection(y, constraints):
    """argmin_x |x - y|^2 (or a given objective) subject to constraints(x), with Clarabel."""
    cp = pytest.importorskip("cvxpy")
    x = cp.Variable(y.shape[0])
    objective, cons = constraints(cp, x)
    cp.Problem(cp.Minimize(objective), cons).solve(solver=cp.CLARABEL)
    return x.value


def _box_sum_qp(y, lo, hi, k, d):
    def build(cp, x):
        cons = [cp.sum(x) == k]
        fin_lo, fin_hi = np.isfinite(lo), np.isfinite(hi)
        if fin_lo.any():
            cons.append(x[np.nonzero(fin_lo)[0]] >= lo[fin_lo])
        if fin_hi.any():
            cons.append(x[np.nonzero(fin_hi)[0]] <= hi[fin_hi])
        return cp.sum(cp.multiply(1 / d, cp.square(x - y))), cons

    return _cvxpy_projection(y, build)


def test_projections_against_cvxpy():
    pytest.importorskip("cvxpy")
    tol = {"rtol": 1e-6, "atol": 1e-6}
    for mode in ("none", "upper", "mixed"):  # weighted, with infinite bounds
        y, lo, hi, k, d = _box_sum_instances(2, 6, seed=70, inf_mode=mode)
        x, _ = PR._proj_box_sum(y, lo, hi, k, d)
        for i in range(2):
            data = (y[i].numpy(), lo[i].numpy(), hi[i].numpy(), k[i].item(), d[i].numpy())
            np.testing.assert_allclose(x[i].numpy(), _box_sum_qp(*data), **tol)

    y, A, b = (t.numpy() for t in _affine_data(71, batch=(2,)))
    x = PR._proj_affine(
        *(torch.from_numpy(t) for t in (y, A, b)), PR._affine_factor(torch.from_numpy(A))
    )
    for yi, Ai, xi in zip(y, A, x):
        ref = _cvxpy_projection(
            yi, lambda cp, v, yi=yi, Ai=Ai: (cp.sum_squares(v - yi), [Ai @ v == b])
        )
        np.testing.assert_allclose(xi.numpy(), ref, **tol)

    y, a, b = _halfspace_data(72, batch=4)
    x = PR._proj_halfspace(y, a, b)
    for yi, ai, bi, xi in zip(y.numpy(), a.numpy(), b.numpy(), x):
        ref = _cvxpy_projection(
            yi, lambda cp, v, yi=yi, ai=ai, bi=bi: (cp.sum_squares(v - yi), [ai @ v <= bi])
        )
        np.testing.assert_allclose(xi.numpy(), ref, **tol)

    y, c, r = _ball_data(73, batch=4)
    x = PR._proj_ball(y, c, r)
    for yi, ri, xi in zip(y.numpy(), r.numpy(), x):
        ref = _cvxpy_projection(
            yi,
            lambda cp, v, yi=yi, ri=ri: (cp.sum_squares(v - yi), [cp.norm(v - c.numpy()) <= ri]),
        )
        np.testing.assert_allclose(xi.numpy(), ref, **tol)


# ----------------------------------------------------------------------------------------
# Device agnosticism (runs where a GPU is present)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [F32, F64])
def test_device_smoke(dtype, device):
    """Everything stays on the inputs' device (CPU always; CUDA too where present)."""
    dev = torch.device(device)
    tol = 1e-5 if dtype == F32 else 1e-12
    phi = _random_phi((3,), 12, torch.tensor([0.3, 0.5, 0.7], dtype=F64), seed=80)
    g = _rhs((3,), 12, seed=81)
    ref = _reference(phi, g)
    phi_d, g_d = phi.to(dev, dtype), g.to(dev, dtype)
    for method in ("lfpi", "gmres", "direct"):
        v, iters, res = SOLVERS[method](phi_d, g_d, tol)
        assert (
            v.device.type == dev.type
            and iters.device.type == dev.type
            and bool((res <= tol).all())
        )
        torch.testing.assert_close(v.cpu().double(), ref, rtol=1e-4, atol=1e-4)
    spd = _spd_phi((3,), 12, torch.tensor([-1.0, -2.0, -3.0]), 0.8, seed=82)
    v, _, res = SOLVERS["cg"](spd.to(dev, dtype), g_d, tol)
    assert bool((res <= tol).all())
    dense = LS._dense_from_matvec(
        lambda e: (phi_d.mT.unsqueeze(-3) @ e[..., None]).squeeze(-1), (3,), 12, dtype, dev
    )
    torch.testing.assert_close(dense, phi_d.mT)
    y, lo, hi, k, d = (
        t.to(dev) for t in _box_sum_instances(8, 6, seed=83, dtype=dtype, inf_mode="mixed")
    )
    x, ok = PR._proj_box_sum(y, lo, hi, k, d)
    assert bool(ok.all()) and x.device.type == dev.type
    _check_box_sum_kkt(x, y, lo, hi, k, d, ok, atol=tol * 10)
    bars = PR._proj_box_sum_vjp(torch.ones_like(x), x, lo, hi, d)
    assert all(t.device.type == dev.type for t in bars)
    ya, A, b = (t.to(dev) for t in _affine_data(84, dtype=dtype))
    xa = PR._proj_affine(ya, A, b, PR._affine_factor(A))
    torch.testing.assert_close((A @ xa[..., None]).squeeze(-1), b.expand(3, 2), rtol=tol, atol=tol)
    PR._proj_affine_vjp(torch.ones_like(xa), xa, ya, A, b, PR._affine_factor(A))
    yh, a, bh = (t.to(dev) for t in _halfspace_data(85, dtype=dtype))
    PR._proj_halfspace_vjp(torch.ones_like(yh), yh, a, bh)
    yb, c, r = (t.to(dev) for t in _ball_data(86, dtype=dtype))
    PR._proj_ball_vjp(torch.ones_like(yb), yb, c, r)
    PR._proj_box_vjp(yb, yb, -torch.ones_like(yb), torch.ones_like(yb))
