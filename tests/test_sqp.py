"""SQP-specific tests: the nonconvex QP's KKT conditions and finite differences, agreement
with PGD on the entropic knapsack, infeasible and unbounded elements flagged without NaN,
the batched QP solver against CVXPY, and specs the rule rejects."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from cases import CASES, load_module
from cases_sqp import nonconvex_qp_data, ordered_values

from foldgen.build import build
from foldgen.errors import SpecError
from foldgen.runtime.qp import _qp_solve

F64 = torch.float64


def draw(name, batch=(), seed=0, dtype=F64):
    return CASES[name].make(batch, dtype, torch.Generator().manual_seed(seed))


def layer_for(name, **kwargs):
    module = load_module(name)
    return module, getattr(module, module.__all__[0])(**kwargs)


# ---------------------------------------------------------------------------------------------
# nonconvex_qp (DC3 data, n = 10, neq = nineq = 5)


def test_nonconvex_qp_satisfies_kkt():
    module, layer = layer_for("nonconvex_qp", on_nonconvergence="raise")
    v = draw("nonconvex_qp", batch=(6,), seed=3)
    y = layer(**v)
    lam, nu = layer.multipliers
    Q, p, A, b, G, h = (v[k] for k in ("Q", "p", "A", "b", "G", "h"))
    stationarity = (
        (Q @ y[..., None])[..., 0]
        + p * torch.cos(y)
        + (A.mT @ nu[..., None])[..., 0]
        + (G.mT @ lam[..., None])[..., 0]
    )
    slack = h - (G @ y[..., None])[..., 0]
    assert stationarity.abs().max() < 1e-9
    assert ((A @ y[..., None])[..., 0] - b).abs().max() < 1e-10
    assert slack.min() > -1e-10 and lam.min() >= 0
    assert (lam * slack).abs().max() < 1e-10
    # A local minimum: the Hessian is positive definite on the active constraints' null space.
    active = lam > slack
    for i in range(y.shape[0]):
        M = torch.cat([A[i], G[i][active[i]]])
        Z = torch.linalg.svd(M, full_matrices=True).Vh[M.shape[0] :].mT
        H = Q[i] - torch.diag(p[i] * torch.sin(y[i]))
        if Z.shape[-1]:
            assert torch.linalg.eigvalsh(Z.mT @ H @ Z).min() > 0


def test_nonconvex_qp_backward_matches_finite_differences():
    module, layer = layer_for("nonconvex_qp", on_nonconvergence="raise")
    v = draw("nonconvex_qp", batch=(2,), seed=4)
    weight = torch.randn(2, 10, generator=torch.Generator().manual_seed(5), dtype=F64)
    p = v["p"].clone().requires_grad_()
    (layer(**{**v, "p": p}) * weight).sum().backward()
    fd = torch.zeros_like(p)
    eps = 1e-6
    with torch.no_grad():
        for index in np.ndindex(*p.shape):
            e = torch.zeros_like(p)
            e[index] = eps
            up = (layer(**{**v, "p": p + e}) * weight).sum()
            down = (layer(**{**v, "p": p - e}) * weight).sum()
            fd[index] = (up - down) / (2 * eps)
    assert (p.grad - fd).abs().max() < 1e-6 * max(1.0, fd.abs().max())
    # Full steps with the exact Hessian: Φ = 0, so the adjoint solve is immediate.
    assert layer.backward_info.residual.max() < 1e-12


# ---------------------------------------------------------------------------------------------
# entropic knapsack: SQP and PGD agree


def test_entropic_knapsack_sqp_equals_pgd():
    _, sqp = layer_for("entropic_knapsack_sqp", on_nonconvergence="raise")
    _, pgd = layer_for("entropic_knapsack", on_nonconvergence="raise")
    v = draw("entropic_knapsack", batch=(4,), seed=7)
    weight = torch.randn(4, 10, generator=torch.Generator().manual_seed(8), dtype=F64)
    results = []
    for layer in (sqp, pgd):
        c = v["c"].clone().requires_grad_()
        x = layer(**{**v, "c": c})
        (x * weight).sum().backward()
        results.append((x.detach(), c.grad))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-8, rtol=0)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-7, rtol=0)


# ---------------------------------------------------------------------------------------------
# Infeasible and unbounded elements


def infeasible_nonconvex_qp():
    """Three elements; the middle one asks g·y ≤ −1 and −g·y ≤ −1 at once."""
    v = nonconvex_qp_data((3,), F64, torch.Generator().manual_seed(9))
    G, h = v["G"].clone(), v["h"].clone()
    G[1, 1] = -G[1, 0]
    h[1, :2] = -1.0
    return {**v, "G": G, "h": h}


def test_infeasible_element_is_flagged_not_nan():
    module, layer = layer_for("nonconvex_qp")
    v = infeasible_nonconvex_qp()
    p = v["p"].clone().requires_grad_()
    with pytest.warns(module.ConvergenceWarning, match=r"element\(s\) 1 \(infeasible"):
        y = layer(**{**v, "p": p})
    assert layer.info.feasible.tolist() == [True, False, True]
    assert layer.info.converged.tolist() == [True, False, True]
    assert bool(torch.isfinite(y).all())
    y.sum().backward()
    assert bool(torch.isfinite(p.grad).all()) and bool((p.grad[1] == 0).all())
    # The feasible elements are exactly what they are alone.
    _, alone = layer_for("nonconvex_qp", on_nonconvergence="raise")
    for i in (0, 2):
        single = {k: t[i] for k, t in v.items()}
        torch.testing.assert_close(y[i].detach(), alone(**single), atol=1e-10, rtol=0)


def test_infeasible_element_raises_on_request():
    module, layer = layer_for("nonconvex_qp", on_nonconvergence="raise")
    with pytest.raises(module.ConvergenceError, match=r"element\(s\) 1 \(infeasible"):
        layer(**infeasible_nonconvex_qp())


def test_infeasible_risk_budget_is_flagged():
    module, layer = layer_for("portfolio", on_nonconvergence="ignore")
    v = draw("portfolio", batch=(3,), seed=11)
    gamma = torch.tensor([0.05, 1e-4, 0.05], dtype=F64)  # 1e-4: below the least risk
    x = layer(**{**v, "gamma": gamma})
    assert layer.info.feasible.tolist() == [True, False, True]
    assert bool(torch.isfinite(x).all())


UNBOUNDED = """\
foldgen: 1
name: unbounded_lp
dims: {n: 4}
parameters:
  c: {shape: [n]}
variables:
  x: {shape: [n]}
minimize: c @ x
constraints:
  - x <= 1
solver: {rule: sqp, max_iter: 50, tol: 1.0e-9}
"""


def test_unbounded_element_is_flagged(tmp_path):
    spec = tmp_path / "unbounded_lp.yaml"
    spec.write_text(UNBOUNDED)
    built = build(spec)
    (tmp_path / built.filename).write_text(built.source)
    module = load_module("unbounded_lp", tmp_path)
    layer = module.UnboundedLp(on_nonconvergence="ignore")
    c = torch.tensor([[1.0, 2.0, 0.5, 1.0], [-1.0, -2.0, -0.5, -1.0]], dtype=F64)
    x = layer(c)
    assert layer.info.feasible.tolist() == [False, True]
    assert layer.info.converged.tolist() == [False, True]
    assert bool(torch.isfinite(x).all())
    torch.testing.assert_close(x[1], torch.ones(4, dtype=F64))


# ---------------------------------------------------------------------------------------------
# The batched QP solver (foldgen/runtime/qp.py, which generated modules copy)


def random_qp(batch, n, p, q, seed):
    gen = torch.Generator().manual_seed(seed)
    M = torch.randn(batch, n, n, generator=gen, dtype=F64)
    H = M @ M.mT / n + 0.1 * torch.eye(n, dtype=F64)
    c = torch.randn(batch, n, generator=gen, dtype=F64)
    G = torch.randn(batch, p, n, generator=gen, dtype=F64)
    b = 0.3 * torch.rand(batch, p, generator=gen, dtype=F64)
    A = torch.randn(batch, q, n, generator=gen, dtype=F64)
    e = 0.1 * torch.randn(batch, q, generator=gen, dtype=F64)
    return H, c, G, b, A, e


def cvxpy_qp(H, c, G, b, A, e):
    import cvxpy as cp

    d = cp.Variable(H.shape[-1])
    constraints = []
    if G.shape[0]:
        constraints.append(G @ d <= b)
    if A.shape[0]:
        constraints.append(A @ d == e)
    objective = cp.Minimize(0.5 * cp.quad_form(d, 0.5 * (H + H.T)) + c @ d)
    cp.Problem(objective, constraints).solve(
        solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12
    )
    return d.value, [con.dual_value for con in constraints]


@pytest.mark.parametrize("p, q", [(6, 3), (6, 0), (0, 3), (0, 0), (15, 2)])
def test_qp_solver_matches_cvxpy(p, q):
    H, c, G, b, A, e = random_qp(5, 8, p, q, seed=p + 10 * q)
    d, lam, nu, solved = _qp_solve(H, c, G, b, A, e, torch.ones(5, dtype=torch.bool))
    assert bool(solved.all())
    for i in range(5):
        ref, duals = cvxpy_qp(*(t[i].numpy() for t in (H, c, G, b, A, e)))
        np.testing.assert_allclose(d[i].numpy(), ref, atol=1e-8)
        if p:
            np.testing.assert_allclose(lam[i].numpy(), duals[0], atol=1e-7)
        if q:
            np.testing.assert_allclose(nu[i].numpy(), duals[-1], atol=1e-7)


def test_qp_solver_flags_infeasible_elements():
    H, c, G, b, A, e = random_qp(4, 6, 4, 1, seed=0)
    G[2, 1], b[2, 1] = -G[2, 0], -b[2, 0] - 1.0  # G₀·d ≤ b₀ and G₀·d ≥ b₀ + 1
    d, lam, nu, solved = _qp_solve(H, c, G, b, A, e, torch.ones(4, dtype=torch.bool))
    assert solved.tolist() == [True, True, False, True]
    assert all(bool(torch.isfinite(t).all()) for t in (d, lam, nu))


def test_qp_solver_float32():
    H, c, G, b, A, e = random_qp(3, 6, 4, 2, seed=1)
    d64, *_ = _qp_solve(H, c, G, b, A, e, torch.ones(3, dtype=torch.bool))
    d32, _, _, solved = _qp_solve(
        *(t.float() for t in (H, c, G, b, A, e)), torch.ones(3, dtype=torch.bool)
    )
    assert bool(solved.all()) and d32.dtype == torch.float32
    assert (d32.double() - d64).abs().max() < 1e-4


# ---------------------------------------------------------------------------------------------
# Settings, multipliers and rejected specs


def test_step_below_one_converges_to_the_same_point_and_gradient():
    v = draw("exp_budget", batch=(2,), seed=12)
    results = []
    for step in (1.0, 0.5):
        _, layer = layer_for("exp_budget", step=step, backward_method="gmres")
        y = v["y"].clone().requires_grad_()
        layer(**{**v, "y": y}).pow(2).sum().backward()
        results.append((layer(**v), y.grad))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-8, rtol=0)
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-7, rtol=0)


def test_bad_step_is_a_value_error():
    module = load_module("exp_budget")
    for bad in (0, 1.5, "auto", True):
        with pytest.raises(ValueError, match="step"):
            module.ExpBudget(step=bad)


def test_multipliers_are_exposed_in_blocks_order():
    _, layer = layer_for("portfolio", on_nonconvergence="raise")
    v = draw("portfolio", batch=(2,), seed=13)
    x = layer(**v)
    lam, nu = layer.multipliers
    # Inequality blocks: −x ≤ 0 (n entries), then the risk budget; one equality sum(x) = 1.
    assert lam.shape == (2, 9) and nu.shape == (2, 1)
    assert bool((lam[:, -1] > 0).all())  # the risk budget is active
    risk = (x[:, None, :] @ v["Sigma"] @ x[:, :, None])[:, 0, 0]
    torch.testing.assert_close(risk, torch.full((2,), 0.05, dtype=F64))


BASE = """\
foldgen: 1
name: bad
dims: {n: 3}
parameters:
  c: {shape: [n]}
variables:
  x: {shape: [n]}
minimize: sum_squares(x - c)
constraints:
  - sum(x) == 1
solver: {rule: sqp}
"""


@pytest.mark.parametrize(
    "old, new, where, fragments",
    [
        ("minimize: sum_squares(x - c)", "minimize: sum_squares(x - c) + sum(abs(x))",
         ":8:11: minimize:", ("rule 'sqp'", "twice differentiable", "abs")),
        ("  - sum(x) == 1", "  - norm1(x) <= 1", ":10:5: constraints[0]:",
         ("twice differentiable", "norm1")),
        ("minimize: sum_squares(x - c)", "minimize: sum_squares(x - c) + max(x)",
         ":8:11: minimize:", ("rule 'sqp'", "max/min/norm_inf/sum_largest")),
    ],
)  # fmt: skip
def test_bad_specs_are_rejected_with_a_location(tmp_path, old, new, where, fragments):
    spec = tmp_path / "bad.yaml"
    assert BASE.count(old) == 1
    spec.write_text(BASE.replace(old, new))
    with pytest.raises(SpecError) as err:
        build(spec)
    message = str(err.value)
    assert where in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_generated_modules_differentiate_symbolically():
    """The SQP modules derive every derivative at build time (no autograd in the solver)."""
    for name in ("portfolio", "nonconvex_qp", "entropic_knapsack_sqp", "exp_budget"):
        module = load_module(name)
        assert "Φᵀv" in module.__doc__ and "Ψ_θᵀv" in module.__doc__
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            values = ordered_values(module, draw(name, seed=14))
            assert math.isfinite(float(module._objective(module._init(*values), *values)))


def test_dense_backward_applies_k_inverse_once_per_element(monkeypatch):
    """The direct backward applies K⁻¹ to all N unit vectors of Φᵀ (N = n + p + q): that must
    be one solve with N columns per element, not K repeated N times (batch·N solves)."""
    batch, n = 8, 40
    v = nonconvex_qp_data((batch,), F64, torch.Generator().manual_seed(5), n=n, neq=20, nineq=20)
    module, layer = layer_for("nonconvex_qp", backward_method="direct", on_nonconvergence="ignore")
    p = v.pop("p").requires_grad_()
    y = layer(p=p, **v)
    systems = []
    solve = torch.linalg.lu_solve

    def counting(LU, pivots, B, **kwargs):
        systems.append(LU.shape[:-2].numel())
        return solve(LU, pivots, B, **kwargs)

    monkeypatch.setattr(torch.linalg, "lu_solve", counting)
    y.backward(torch.ones_like(y))
    assert bool(torch.isfinite(p.grad).all())
    assert systems and max(systems) == batch


# ---------------------------------------------------------------------------------------------
# Non-finite derivatives, failed decompositions and feasibility: flagged per element


def test_entropy_from_zero_moves_into_the_domain():
    """At x = 0 the entropy's gradient and Hessian are infinite: the start moves inside the
    domain and the element is solved, to the same point and gradient as from k/n."""
    _, layer = layer_for("entropic_knapsack_sqp", on_nonconvergence="raise")
    v = draw("entropic_knapsack_sqp", batch=(3,), seed=21)
    weight = torch.randn(3, 10, generator=torch.Generator().manual_seed(22), dtype=F64)
    results = []
    for start in (None, torch.zeros(10, dtype=F64)):
        c = v["c"].clone().requires_grad_()
        x = layer(**{**v, "c": c}, x_init=start)
        (x * weight).sum().backward()
        assert bool(layer.info.converged.all()) and bool(layer.backward_info.converged.all())
        results.append((x.detach(), c.grad))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-9, rtol=0)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-8, rtol=0)


BARRIER = """\
foldgen: 1
name: barrier
dims: {n: 4}
parameters:
  c: {shape: [n]}
variables:
  x: {shape: [n]}
minimize: sum_squares(x - c) - sum(log(x)) - sum(log(1 - x))
constraints:
  - sum(x) == 2
solver: {rule: sqp, max_iter: 100, tol: 1.0e-10}
"""


def barrier_module(tmp_path):
    spec = tmp_path / "barrier.yaml"
    spec.write_text(BARRIER)
    built = build(spec)
    (tmp_path / built.filename).write_text(built.source)
    return load_module("barrier", tmp_path)


def test_element_without_a_finite_start_is_flagged_and_the_rest_solved(tmp_path):
    """Element 1 starts where log(x) + log(1 − x) is undefined for every shifted start (one
    component far below 0, one far above 1): it is reported, finite, with zero gradient;
    element 2 starts on the domain's boundary (x = 0) and is solved; element 0 is exactly
    what it is alone."""
    module = barrier_module(tmp_path)
    layer = module.Barrier()
    c = torch.tensor([[0.9, 0.1, 0.6, 0.3]], dtype=F64).expand(3, 4).clone().requires_grad_()
    x_init = torch.tensor(
        [[0.5, 0.5, 0.5, 0.5], [-100.0, 100.0, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]], dtype=F64
    )
    with pytest.warns(module.ConvergenceWarning, match=r"element\(s\) 1 \(.*not finite"):
        x = layer(c, x_init=x_init)
    assert layer.info.converged.tolist() == [True, False, True]
    assert layer.info.feasible.tolist() == [True, True, True]
    assert bool(torch.isfinite(x).all())
    torch.testing.assert_close(x[1], x_init[1])  # left where it stands
    weight = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
    (x * weight).sum().backward()
    info = layer.backward_info
    assert info.converged.tolist() == [True, False, True]
    assert info.forward_converged.tolist() == [True, False, True]
    assert bool(torch.isfinite(c.grad).all()) and bool((c.grad[1] == 0).all())
    # Element 0 as if alone, element 2 (a different start) at the same point and gradient.
    alone = module.Barrier(on_nonconvergence="raise")
    c0 = c[0].detach().clone().requires_grad_()
    x0 = alone(c0, x_init=x_init[0])
    (x0 * weight).sum().backward()
    torch.testing.assert_close(x[0].detach(), x0.detach(), atol=1e-10, rtol=0)
    torch.testing.assert_close(c.grad[0], c0.grad, atol=1e-10, rtol=0)
    torch.testing.assert_close(x[2].detach(), x0.detach(), atol=1e-9, rtol=0)
    torch.testing.assert_close(c.grad[2], c0.grad, atol=1e-8, rtol=0)
    # The solution is the barrier problem's: stationary on sum(x) = 2.
    xs = x0.detach()
    grad_f = 2 * (xs - c0.detach()) - 1 / xs + 1 / (1 - xs)
    assert abs(float(xs.sum()) - 2) < 1e-12
    assert float((grad_f - grad_f.mean()).abs().max()) < 1e-9


def test_each_falls_back_element_by_element():
    module = load_module("nonconvex_qp")
    A = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(23), dtype=F64)
    A = A + A.mT
    A[1, 0, 0] = 7.0

    def picky(M):
        if bool((M[..., 0, 0] == 7.0).any()):
            raise torch.linalg.LinAlgError("failed to converge")
        return torch.linalg.eigvalsh(M)

    out = module._sqp_each(picky, A, (4,))
    assert out.shape == (3, 4)
    torch.testing.assert_close(out[[0, 2]], torch.linalg.eigvalsh(A[[0, 2]]))
    assert bool(torch.isnan(out[1]).all())


def test_failed_eigendecomposition_flags_only_its_element(monkeypatch):
    """torch.linalg.eigvalsh raising for one element (LAPACK did not converge) used to abort
    the batch; now that element stops, not converged, and the others are solved as alone."""
    module, layer = layer_for("nonconvex_qp", on_nonconvergence="ignore")
    v = nonconvex_qp_data((3,), F64, torch.Generator().manual_seed(24))
    Q = v["Q"].clone()
    Q[1] = Q[1] * 1000  # element 1's matrices are recognisable by their size
    Q[1, 0, 0] = -1000  # and indefinite: a positive definite ∇²L needs no eigenvalues
    v = {**v, "Q": Q}
    _, alone = layer_for("nonconvex_qp", on_nonconvergence="raise")
    expected = {i: alone(**{k: t[i] for k, t in v.items()}) for i in (0, 2)}
    eigvalsh = torch.linalg.eigvalsh

    def failing(M):
        if bool((M.abs().amax((-2, -1)) > 400).any()):
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
        return eigvalsh(M)

    monkeypatch.setattr(torch.linalg, "eigvalsh", failing)
    p = v["p"].clone().requires_grad_()
    y = layer(**{**v, "p": p})
    assert layer.info.converged.tolist() == [True, False, True]
    assert bool(torch.isfinite(y).all())
    for i in (0, 2):
        torch.testing.assert_close(y[i].detach(), expected[i], atol=1e-10, rtol=0)
    y.sum().backward()
    assert layer.backward_info.converged.tolist() == [True, False, True]
    assert bool(torch.isfinite(p.grad).all()) and bool((p.grad[1] == 0).all())


def test_converged_requires_the_constraints_to_hold(monkeypatch):
    """A QP that claims a zero step at an infeasible point makes the residual 0; the element
    is still not converged, because x violates Σ exp(x) ≤ B (a feasible start converges)."""
    module, layer = layer_for("exp_budget", on_nonconvergence="warn")

    def zero_step(H, c, G, b, A, e, todo, max_iter=100, warm=None):
        batch = todo.shape
        zeros = [c.new_zeros(*batch, k) for k in (H.shape[-1], G.shape[-2], A.shape[-2])]
        return (*zeros, todo.clone())

    monkeypatch.setattr(module, "_qp_solve", zero_step)
    y = torch.stack([torch.full((6,), -2.0, dtype=F64), torch.full((6,), 2.0, dtype=F64)])
    B = torch.tensor(5.0, dtype=F64)
    with pytest.warns(module.ConvergenceWarning, match=r"element\(s\) 1 \(constraint violation"):
        layer(y=y, B=B, x_init=y)
    assert layer.info.residual.tolist() == [0.0, 0.0]
    assert layer.info.converged.tolist() == [True, False]
    assert layer.info.feasible.tolist() == [True, True]


def test_zero_sized_constraint_blocks_solve_as_without_them():
    """nineq = 0 (no inequality rows) is the problem with the equalities only, the same as
    with inequality rows 0·y ≤ 1 that can never bind (Q + I: a convex problem)."""
    _, layer = layer_for("nonconvex_qp", on_nonconvergence="raise")
    v = nonconvex_qp_data((3,), F64, torch.Generator().manual_seed(25))
    v["Q"] = v["Q"] + torch.eye(10, dtype=F64)
    empty = layer(**{**v, "G": v["G"][..., :0, :], "h": v["h"][..., :0]})
    assert layer.info.iterations.min() > 1
    idle = layer(**{**v, "G": torch.zeros_like(v["G"]), "h": torch.ones_like(v["h"])})
    torch.testing.assert_close(empty, idle, atol=1e-10, rtol=0)
    lam, nu = layer.multipliers
    assert lam.abs().max() < 1e-10


def test_variable_of_size_zero_is_a_value_error_naming_the_input():
    module, layer = layer_for("nonconvex_qp")
    v = nonconvex_qp_data((), F64, torch.Generator().manual_seed(26))
    v = {**v, "p": v["p"][:0], "Q": v["Q"][:0, :0], "A": v["A"][:, :0], "G": v["G"][:, :0]}
    with pytest.raises(ValueError, match=r"^p: axis -1 has size 0, but n, the size of y, must"):
        layer(**v)


# ---------------------------------------------------------------------------------------------
# The backward's closed form at a regular KKT point (δ = 0): Φᵀ = (1 − α) I


@pytest.mark.parametrize("step", [1.0, 0.5])
def test_kkt_closed_form_backward_equals_the_iterative_one(step):
    """auto and direct take v = g/α (one KKT solve, checked through Φᵀ); gmres iterates on
    the same system: the gradients agree, for a full and a damped step."""
    values = draw("portfolio", (4,), seed=3)
    grads, infos = {}, {}
    for method in ("auto", "direct", "gmres"):
        _, layer = layer_for("portfolio", backward_method=method, step=step,
                             on_nonconvergence="raise")  # fmt: skip
        mu = values["mu"].clone().requires_grad_()
        x = layer(**{**values, "mu": mu})
        weight = torch.linspace(-1, 1, x.numel(), dtype=F64).reshape(x.shape)
        (grads[method],) = torch.autograd.grad((x * weight).sum(), mu)
        infos[method] = layer.backward_info
    assert infos["auto"].method == "active_set" and infos["direct"].method == "direct"
    for method in ("auto", "direct"):
        assert infos[method].iterations.tolist() == [1, 1, 1, 1]
        assert float(infos[method].residual.max()) <= 1e-13
        torch.testing.assert_close(grads[method], grads["gmres"], rtol=1e-9, atol=1e-11)
    assert bool(infos["gmres"].converged.all())


def test_kkt_closed_form_is_offered_only_where_delta_is_zero():
    module = load_module("portfolio")
    step = torch.tensor([1.0, 0.5], dtype=F64)
    usable = torch.tensor([True, True])
    regular = module._SqpKkt(step, torch.zeros(2, dtype=F64), usable, 3)
    assert regular.available and regular.exact
    torch.testing.assert_close(
        regular.dense(), torch.stack([0 * torch.eye(3), 0.5 * torch.eye(3)]).to(F64)
    )
    assert not module._SqpKkt(step, torch.tensor([0.0, 1e-3], dtype=F64), usable, 3).available
    unusable = torch.tensor([True, False])  # an element with no gradient does not count
    assert module._SqpKkt(step, torch.tensor([0.0, 1e-3], dtype=F64), unusable, 3).available
    # the residual is measured through the Φᵀ it is given: a Φᵀ that is not (1 − α)I fails
    g = torch.ones(2, 3, dtype=F64)
    _, _, good = regular.solve(lambda v: (1 - step[:, None]) * v, g)
    _, _, bad = regular.solve(lambda v: 0.9 * v, g)
    assert float(good.max()) <= 1e-15 and float(bad.min()) > 0.01


def test_a_singular_kkt_matrix_brings_the_regularisation_back(monkeypatch):
    """Where the KKT matrix of ∇²ₓₓL does not factor, the backward decides δ as the forward
    does and folds the dense Φᵀ: here (a K reported singular once) the same gradient."""
    values = draw("portfolio", (3,), seed=4)
    module, layer = layer_for("portfolio", on_nonconvergence="raise")

    def gradient():
        mu = values["mu"].clone().requires_grad_()
        x = layer(**{**values, "mu": mu})
        weight = torch.linspace(-1, 1, x.numel(), dtype=F64).reshape(x.shape)
        return torch.autograd.grad((x * weight).sum(), mu)[0]

    expected = gradient()
    real, calls = torch.linalg.lu_factor_ex, []
    regularised = []
    real_regularization = module._sqp_regularization

    def singular_once(A, **kwargs):
        lu, pivots, info = real(A, **kwargs)
        calls.append(A.shape)
        return (lu, pivots, torch.ones_like(info)) if len(calls) == 1 else (lu, pivots, info)

    def spy(*args):
        regularised.append(True)
        return real_regularization(*args)

    mu = values["mu"].clone().requires_grad_()
    x = layer(**{**values, "mu": mu})  # the forward runs unpatched
    monkeypatch.setattr(module, "_sqp_regularization", spy)
    monkeypatch.setattr(torch.linalg, "lu_factor_ex", singular_once)
    weight = torch.linspace(-1, 1, x.numel(), dtype=F64).reshape(x.shape)
    (got,) = torch.autograd.grad((x * weight).sum(), mu)
    assert regularised and len(calls) == 2
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)
    assert bool(layer.backward_info.converged.all())


@pytest.mark.parametrize("definite", [True, False])
def test_reduced_system_factorisation_solves_the_kkt_system(definite):
    """The interior point's reduced system [M, Aᵀ; A, −P]: by Cholesky and Schur complement
    where every M is positive definite, by LU otherwise (an indefinite M), with a redundant
    equality row (P ≠ 0); both against a dense solve of the same matrix."""
    from foldgen.runtime.qp import _qp_factor, _qp_null_projector

    gen = torch.Generator().manual_seed(11)
    batch, n = 3, 6
    a = torch.randn(batch, n, n, generator=gen, dtype=F64)
    M = a @ a.mT + 0.5 * torch.eye(n, dtype=F64)
    if not definite:
        M[1] = M[1] - 10 * torch.eye(n, dtype=F64)
    A = torch.randn(2, n, generator=gen, dtype=F64)
    A = torch.cat([A, A[:1] * 2], 0)  # a redundant row
    P = _qp_null_projector(A, torch.ones(3, dtype=torch.bool)).expand(batch, 3, 3)
    K = torch.zeros(batch, n + 3, n + 3, dtype=F64)
    K[..., :n, n:], K[..., n:, :n], K[..., n:, n:] = A.mT, A, -P
    dense = K.clone()
    dense[..., :n, :n] = M
    solve, ok = _qp_factor(K, M, A, P, torch.zeros(batch, dtype=torch.bool))
    top = torch.randn(batch, n, generator=gen, dtype=F64)
    bottom = torch.randn(batch, 3, generator=gen, dtype=F64)
    d, nu = solve(top, bottom)
    expected = torch.linalg.solve(dense, torch.cat([top, bottom], -1)[..., None])[..., 0]
    assert bool(ok.all())
    torch.testing.assert_close(torch.cat([d, nu], -1), expected, rtol=1e-10, atol=1e-10)
    assert (K[..., :n, :n] == 0).all() == definite  # the LU path writes M into K


def test_unrolled_sqp_gradient_is_finite_and_near_the_folded_one():
    """Autograd through the whole SQP forward (the interior point's factorisations
    included): an element whose reduced system fails must not put NaN into the others'
    gradients (a failed Cholesky factor is replaced before it is differentiated)."""
    values = nonconvex_qp_data((4,), F64, torch.Generator().manual_seed(0), n=40, neq=20,
                               nineq=20)  # fmt: skip
    module, layer = layer_for("nonconvex_qp", on_nonconvergence="raise")
    p = values.pop("p")
    unrolled_p = p.clone().requires_grad_()
    (unrolled,) = torch.autograd.grad(layer.unrolled(p=unrolled_p, **values).sum(), unrolled_p)
    folded_p = p.clone().requires_grad_()
    (folded,) = torch.autograd.grad(layer(p=folded_p, **values).sum(), folded_p)
    assert bool(torch.isfinite(unrolled).all())
    torch.testing.assert_close(unrolled, folded, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", [1, 2])
def test_entropic_knapsack_at_large_logits_converges(seed):
    """Under the entropy's 1/x curvature (scale 5: x down to 1e-13) the QPs' regularisation
    must stay the minimal δ: a δ proportional to max|∇²ₓₓL| (once tried for every positive
    semidefinite Hessian) stalls 2–4 of these 32 elements at max_iter."""
    from cases import _knapsack

    values = _knapsack((32,), F64, torch.Generator().manual_seed(seed), n=50, scale=5.0)
    _, layer = layer_for("entropic_knapsack_sqp", on_nonconvergence="ignore")
    layer(**values)
    assert bool(layer.info.converged.all())
    assert int(layer.info.iterations.max()) <= 80
