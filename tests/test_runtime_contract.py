"""The run-time contract of the PGD and ADMM layers on hostile data (issue 8): one call on any
valid spec returns finite values, and reports non-convergence, infeasibility or divergence
per batch element, never a crash and never a wrong "converged".

Checked with numbers: scalar right-hand sides of vector constraints under batching (batched
= a loop of unbatched solves = CVXPY), stopping tests relative to the data's scale (data
scaled by 1e±12 give the scaled solution in the same iterations), far and degenerate warm
starts, unbounded problems, empty feasible sets, and non-convex smooth parts under ADMM.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from cases import CASES, TIGHT, load_module

from foldgen.build import build

F64 = torch.float64


def draw(name, batch=(3,), seed=0):
    return CASES[name].make(batch, F64, torch.Generator().manual_seed(seed))


def layer_of(name, **settings):
    module = load_module(name)
    return module, getattr(module, module.__all__[0])(**settings)


def built(tmp_path, text, name):
    """The module a spec text builds to, imported from tmp_path."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    out = tmp_path / "gen"
    out.mkdir(exist_ok=True)
    (out / f"{name}.py").write_text(build(path).source, encoding="utf-8")
    return load_module(name, out)


def quiet(module, **settings):
    return getattr(module, module.__all__[0])(on_nonconvergence="ignore", **settings)


def element(values, i):
    """Batch element i of the inputs (scalars without a batch axis are shared)."""
    return {k: v[i] if v.dim() else v for k, v in values.items()}


def loop(layer, values, batch):
    """The layer applied to each batch element alone."""
    return torch.stack([layer(**element(values, i)) for i in range(batch)])


def psd(gen, batch, n):
    a = torch.randn(*batch, n, n, generator=gen, dtype=F64)
    return a @ a.mT / n + 0.5 * torch.eye(n, dtype=F64)


def solve_cvx(objective, constraints):
    import cvxpy as cp

    cp.Problem(cp.Minimize(objective), constraints).solve(solver=cp.CLARABEL, **TIGHT)


# ---------------------------------------------------------------------------------------------
# 1. A scalar right-hand side of a vector constraint, under batching.

QP_HEAD = """foldgen: 1
name: {name}
dims: {{n: 6, m: 3}}
parameters:
  P: {{shape: [n, n], properties: [symmetric, psd]}}
  q: {{shape: [n]}}
  A: {{shape: [m, n]}}
  b: {{shape: []}}
variables:
  x: {{shape: [n]}}
minimize: 0.5 * quad_form(x, P) + q @ x
"""

SCALAR_SIDES = {
    "pgd_affine": ("A @ x == b", "pgd", "step_size: auto, max_iter: 20000, tol: 1.0e-12"),
    "admm_inequality": ("A @ x <= b", "admm", "rho: 1.0, max_iter: 20000, tol: 1.0e-12"),
    "admm_equality": ("A @ x == b", "admm", "rho: 1.0, max_iter: 20000, tol: 1.0e-12"),
}


def scalar_side_values(batch, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {
        "P": psd(gen, batch, 6),
        "q": torch.randn(*batch, 6, generator=gen, dtype=F64),
        "A": torch.randn(*batch, 3, 6, generator=gen, dtype=F64),
        "b": torch.randn(*batch, generator=gen, dtype=F64),
    }


def scalar_side_module(tmp_path, case):
    constraint, rule, settings = SCALAR_SIDES[case]
    text = QP_HEAD.format(name=case) + f"constraints:\n  - {constraint}\n"
    text += f"solver: {{rule: {rule}, {settings}}}\nbackward: {{method: direct}}\n"
    return built(tmp_path, text, case)


@pytest.mark.parametrize("case", list(SCALAR_SIDES))
def test_scalar_right_hand_side_broadcasts_under_batching(tmp_path, case):
    import cvxpy as cp

    module = scalar_side_module(tmp_path, case)
    layer = getattr(module, module.__all__[0])(on_nonconvergence="raise")
    values = scalar_side_values((4,))
    x = layer(**values)
    assert x.shape == (4, 6) and bool(layer.info.converged.all())
    torch.testing.assert_close(x, loop(layer, values, 4), atol=1e-10, rtol=0)
    for i in range(4):
        v = {k: t[i].numpy() for k, t in values.items()}
        var = cp.Variable(6)
        lhs = v["A"] @ var
        relation = lhs <= v["b"] if "<=" in SCALAR_SIDES[case][0] else lhs == v["b"]
        solve_cvx(0.5 * cp.quad_form(var, v["P"]) + v["q"] @ var, [relation])
        np.testing.assert_allclose(x[i].numpy(), var.value, atol=1e-6)


@pytest.mark.parametrize("case", ["pgd_affine", "admm_inequality"])
def test_scalar_right_hand_side_gradient(tmp_path, case):
    """The cotangent of the broadcast scalar is the sum over its rows (finite differences)."""
    module = scalar_side_module(tmp_path, case)
    layer = getattr(module, module.__all__[0])(on_nonconvergence="raise")
    values = scalar_side_values((2,), seed=1)
    names = ("q", "b")

    def fn(*grads):
        return layer(**{**values, **dict(zip(names, grads))})

    inputs = tuple(values[n].clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_scalar_right_hand_side_of_a_row_under_admm(tmp_path):
    """`a @ x <= b` with a scalar b (a half-space block) under ADMM, batched."""
    text = """foldgen: 1
name: halfspace_admm
dims: {n: 5}
parameters:
  y: {shape: [n]}
  a: {shape: [n]}
  b: {shape: []}
variables:
  x: {shape: [n]}
minimize: 0.5 * sum_squares(x - y)
constraints:
  - a @ x <= b
solver: {rule: admm, rho: 1.0, max_iter: 20000, tol: 1.0e-12}
"""
    module = built(tmp_path, text, "halfspace_admm")
    layer = module.HalfspaceAdmm(on_nonconvergence="raise")
    gen = torch.Generator().manual_seed(2)
    values = {
        "y": 2 * torch.randn(4, 5, generator=gen, dtype=F64),
        "a": torch.randn(4, 5, generator=gen, dtype=F64),
        "b": torch.randn(4, generator=gen, dtype=F64),
    }
    x = layer(**values)
    torch.testing.assert_close(x, loop(layer, values, 4), atol=1e-10, rtol=0)
    # The projection onto the half-space in closed form.
    y, a, b = values["y"], values["a"], values["b"]
    excess = ((a * y).sum(-1) - b).clamp_min(0) / (a * a).sum(-1)
    torch.testing.assert_close(x, y - excess[:, None] * a, atol=1e-9, rtol=0)


# ---------------------------------------------------------------------------------------------
# 3. Stopping tests relative to the data's scale.

# Scalings under which the solution scales by s and every iterate of the method scales by s
# too, so a test relative to the data's scale takes exactly the same iterations.
HOMOGENEOUS = {
    "tv_denoise": ("y", "lam"),
    "lasso": ("b", "lam"),
    "quadratic": ("b",),
    "ball_least_squares": ("b", "center", "radius"),
}


@pytest.mark.parametrize("name", list(HOMOGENEOUS))
@pytest.mark.parametrize("s", [1e-12, 1e12])
def test_scaled_data_give_the_scaled_solution_in_the_same_iterations(name, s):
    _, layer = layer_of(name, on_nonconvergence="raise")
    values = draw(name)
    x = layer(**values)
    iterations = layer.info.iterations.clone()
    scaled = layer(**{k: v * s if k in HOMOGENEOUS[name] else v for k, v in values.items()})
    assert bool(layer.info.converged.all())
    assert float((scaled / s - x).abs().max()) <= 1e-6 * float(x.abs().max())
    assert int((layer.info.iterations - iterations).abs().max()) <= 2


def test_tiny_data_do_not_converge_at_once():
    """TV denoising with y and D scaled by 1e-12 (λ fixed) is the same problem for x/1e-12,
    but ADMM with the same ρ is a different, far slower iteration: it must run, and report
    not converged rather than stop after one sweep with a wrong x (the absolute test did)."""
    _, layer = layer_of("tv_denoise", on_nonconvergence="ignore", max_iter=300)
    values = draw("tv_denoise")
    x = layer(**values)
    s = 1e-12
    tiny = layer(**{**values, "y": values["y"] * s, "D": values["D"] * s})
    error = (tiny / s - x).abs().amax(-1) / x.abs().amax(-1)
    assert bool((layer.info.iterations > 1).all())
    assert bool((~layer.info.converged | (error <= 1e-6)).all())
    assert not bool(layer.info.converged.any())  # 300 sweeps are far from enough here


def test_pgd_tiny_linear_term_is_not_converged_at_zero():
    """box_qp with c ~ 1e-12: the absolute test stopped at x = 0 (every step < tol)."""
    _, layer = layer_of("box_qp", on_nonconvergence="raise")
    values = draw("box_qp")
    gen = torch.Generator().manual_seed(1)
    reference = 1e-12 * (0.2 + 0.6 * torch.rand(3, 8, generator=gen, dtype=F64))
    c = -(values["Q"] @ reference[..., None])[..., 0]  # x* = −Q⁻¹c, tiny, inside the box
    x = layer(**{**values, "c": c})
    assert float((x - reference).abs().max()) <= 1e-6 * float(reference.abs().max())


# ---------------------------------------------------------------------------------------------
# 2. Converged only at a point that satisfies the constraints; far warm starts.


def test_far_warm_start_on_the_entropic_knapsack_converges_to_the_solution():
    import cvxpy as cp

    _, layer = layer_of("entropic_knapsack", on_nonconvergence="raise")
    values = draw("entropic_knapsack", batch=(4,))
    x = layer(**values)
    far = layer(**values, x_init=torch.full_like(x, 1e20))
    assert bool(layer.info.converged.all())
    torch.testing.assert_close(far.sum(-1), torch.full((4,), 3.0, dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(far, x, atol=1e-10, rtol=0)
    for i in range(4):
        v = {k: t[i].numpy() if t.dim() else float(t) for k, t in values.items()}
        var = cp.Variable(10)
        objective = -(v["c"] @ var + v["eps"] * cp.sum(cp.entr(var)))
        solve_cvx(objective, [var >= 0, var <= 1, cp.sum(var) == v["k"]])
        np.testing.assert_allclose(far[i].numpy(), var.value, atol=1e-6)


def test_warm_start_outside_the_domain_starts_from_the_init():
    """A vertex (entries at 0, where the entropy's slope is infinite) cannot take a step:
    those elements restart from the spec's init and converge to the same solution."""
    _, layer = layer_of("entropic_knapsack", on_nonconvergence="raise")
    values = draw("entropic_knapsack", batch=(2,))
    x = layer(**values)
    vertex = torch.zeros_like(x)
    vertex[:, :3] = 1.0
    torch.testing.assert_close(layer(**values, x_init=vertex), x, atol=1e-10, rtol=0)


def test_one_projection_of_a_far_start_loses_the_constraint_and_two_restore_it():
    """Why the start is projected twice: y − τ·1 with τ ≈ 1e20 cancels to x = 0."""
    module = load_module("entropic_knapsack")
    values = [draw("entropic_knapsack", batch=(1,))[k] for k in module.PARAMETERS]
    y = torch.full((1, 10), 1e20, dtype=F64)
    p = module.PROBLEM
    S = p.set.prepare(p.set_data(y, *values))
    once, _ = p.set.project(y, torch.ones_like(y), S)
    assert float(once.sum()) == 0.0 and float(p.set.violation(once, S)) == 1.0
    twice, _ = p.set.project(once, torch.ones_like(y), S)
    torch.testing.assert_close(twice, torch.full_like(y, 0.3), atol=1e-15, rtol=0)
    assert float(p.set.violation(twice, S)) <= 1e-15


@pytest.mark.parametrize(
    "name, point, expected",
    [
        # |Σx − k| / max(Σ|x|, k) with k = 3, and a bound violated by 0.5 at x = 1.5
        ("entropic_knapsack", [0.0] * 10, 1.0),
        ("entropic_knapsack", [1.5, 1.5] + [0.0] * 8, 0.0 + 0.5 / 3),
        ("sparsemax", [0.5, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0], 0.25),  # Σp = 0.75, k = 1
        ("box_qp", [0.5, -0.25, 1.5, 0, 0, 0, 0, 0], 0.5 / 1.5),
    ],
)
def test_violation_is_relative_to_the_data(name, point, expected):
    module = load_module(name)
    values = [draw(name, batch=(1,))[k] for k in module.PARAMETERS]
    x = torch.tensor([point], dtype=F64)
    p = module.PROBLEM
    S = p.set.prepare(p.set_data(x, *values))
    torch.testing.assert_close(p.set.violation(x, S), torch.tensor([expected], dtype=F64))


def test_affine_violation_and_far_start():
    module, layer = layer_of("equality_qp", on_nonconvergence="raise")
    values = draw("equality_qp", batch=(2,))
    ordered = [values[k] for k in module.PARAMETERS]
    x = layer(**values)
    p = module.PROBLEM
    S = p.set.prepare(p.set_data(x, *ordered))
    assert float(p.set.violation(x, S).max()) <= 1e-13
    shifted = x + 0.1 * values["A"][:, 0]  # moves a·x off b by 0.1‖a‖²
    A, b = values["A"], values["b"]
    terms = (A.abs() @ shifted.abs()[..., None])[..., 0]
    expected = ((A @ shifted[..., None])[..., 0] - b).abs().amax(-1)
    expected = expected / torch.maximum(terms.amax(-1), b.abs().amax(-1))
    torch.testing.assert_close(p.set.violation(shifted, S), expected)
    far = layer(**values, x_init=torch.full_like(x, 1e20))
    assert bool(layer.info.converged.all())
    torch.testing.assert_close(far, x, atol=1e-7, rtol=0)


def test_far_warm_start_on_a_quadratic_converges_or_is_reported():
    _, layer = layer_of("quadratic", on_nonconvergence="ignore")
    values = draw("quadratic")
    reference = torch.linalg.solve(values["Q"], values["b"][..., None])[..., 0]
    far = layer(**values, x_init=torch.full((3, 8), 1e20, dtype=F64))
    error = (far - reference).abs().amax(-1) / reference.abs().amax(-1)
    assert bool(layer.info.converged.all())  # here it does converge
    assert float(error.max()) <= 1e-7


LINEAR = """foldgen: 1
name: {name}
dims: {{n: 5}}
parameters:
  c: {{shape: [n]}}
variables:
  x: {{shape: [n]}}
minimize: c @ x
solver: {{rule: pgd, step_size: {step}, max_iter: 20000, tol: 1.0e-10}}
"""


def test_a_far_start_that_rounding_freezes_is_not_converged(tmp_path):
    """min c·x from x = 1e20: x − αc == x in float64, so U(x) = x exactly, yet c ≠ 0."""
    module = built(tmp_path, LINEAR.format(name="linear", step="auto"), "linear")
    layer = quiet(module)
    c = torch.randn(2, 5, generator=torch.Generator().manual_seed(0), dtype=F64)
    x = layer(c, x_init=torch.full((2, 5), 1e20, dtype=F64))
    assert not bool(layer.info.converged.any())
    assert bool(torch.isfinite(x).all())


# ---------------------------------------------------------------------------------------------
# 4. Unbounded problems.


@pytest.mark.parametrize("step", ["auto", "0.1"])
def test_unbounded_linear_objective_is_reported_and_finite(tmp_path, step):
    name = "linear_auto" if step == "auto" else "linear_fixed"
    module = built(tmp_path, LINEAR.format(name=name, step=step), name)
    layer = getattr(module, module.__all__[0])()
    c = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=F64)
    with pytest.warns(module.ConvergenceWarning, match="diverged"):
        x = layer(c)
    assert layer.info.converged.tolist() == [False] * 3
    assert layer.info.feasible.tolist() == [False] * 3  # unbounded: reported as feasible False
    assert bool(torch.isfinite(x).all()) and bool(torch.isfinite(layer.info.residual).all())
    assert int(layer.info.iterations.max()) < 100  # stopped, not run to max_iter


def test_unbounded_nonconvex_objective_is_reported_and_finite(tmp_path):
    text = """foldgen: 1
name: concave
dims: {n: 5}
parameters:
  c: {shape: [n]}
variables:
  x: {shape: [n]}
minimize: c @ x - sum(softplus(x)) - 0.1 * sum_squares(x)
constraints:
  - sum(x) == 1
solver: {rule: pgd, step_size: auto, max_iter: 20000, tol: 1.0e-10}
"""
    module = built(tmp_path, text, "concave")
    layer = quiet(module)
    x = layer(torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=F64))
    assert layer.info.converged.tolist() == [False] * 3
    assert layer.info.feasible.tolist() == [False] * 3
    assert bool(torch.isfinite(x).all())
    assert int(layer.info.iterations.max()) < 1000


def test_one_unbounded_element_leaves_the_others_alone(tmp_path):
    text = """foldgen: 1
name: indefinite
dims: {n: 4}
parameters:
  P: {shape: [n, n], grad: false, properties: [symmetric]}
  q: {shape: [n]}
variables:
  x: {shape: [n]}
minimize: 0.5 * quad_form(x, P) + q @ x
solver: {rule: pgd, step_size: auto, max_iter: 20000, tol: 1.0e-11}
"""
    module = built(tmp_path, text, "indefinite")
    layer = module.Indefinite()
    gen = torch.Generator().manual_seed(0)
    P = psd(gen, (3,), 4)
    P[1] -= 3 * torch.eye(4, dtype=F64)  # indefinite: unbounded below
    q = torch.randn(3, 4, generator=gen, dtype=F64)
    with pytest.warns(module.ConvergenceWarning, match=r"element\(s\) 1 \(the iterates diverged"):
        x = layer(P, q)
    assert layer.info.converged.tolist() == [True, False, True]
    assert layer.info.feasible.tolist() == [True, False, True]
    assert bool(torch.isfinite(x).all())
    for i in (0, 2):
        reference = torch.linalg.solve(P[i], -q[i])
        torch.testing.assert_close(x[i], reference, atol=1e-9, rtol=0)


def test_admm_unbounded_lp_is_certified(tmp_path):
    """min q·x s.t. x ≥ 0: bounded (x* = 0) where q > 0, unbounded where some qᵢ < 0."""
    text = """foldgen: 1
name: lp
dims: {n: 4}
parameters:
  q: {shape: [n]}
variables:
  x: {shape: [n]}
minimize: q @ x
constraints:
  - x >= 0
solver: {rule: admm, rho: 1.0, max_iter: 20000, tol: 1.0e-10}
"""
    module = built(tmp_path, text, "lp")
    layer = module.Lp()
    q = torch.tensor([[1.0, 2.0, 0.5, 1.5], [1.0, -2.0, 0.5, 1.5]], dtype=F64).requires_grad_()
    with pytest.warns(module.ConvergenceWarning, match=r"element\(s\) 1 \(the iterates diverged"):
        x = layer(q)
    assert layer.info.converged.tolist() == [True, False]
    assert layer.info.feasible.tolist() == [True, False]
    assert int(layer.info.iterations[1]) < 1000  # certified, not run to max_iter
    torch.testing.assert_close(x[0], torch.zeros(4, dtype=F64), atol=1e-9, rtol=0)
    assert bool(torch.isfinite(x).all())
    x.sum().backward()
    assert float(q.grad[1].abs().max()) == 0.0 and bool(torch.isfinite(q.grad).all())


def test_admm_lasso_with_a_negative_weight_is_unbounded():
    """λ < 0 with more unknowns than rows: −|λ|‖x‖₁ decreases without bound on null(A)."""
    _, layer = layer_of("lasso", on_nonconvergence="ignore")
    gen = torch.Generator().manual_seed(0)
    values = {
        "A": torch.randn(2, 3, 6, generator=gen, dtype=F64),
        "b": torch.randn(2, 3, generator=gen, dtype=F64),
        "lam": torch.tensor([1.0, -1.0], dtype=F64),
    }
    x = layer(**values)
    assert layer.info.converged.tolist() == [True, False]
    assert layer.info.feasible.tolist() == [True, False]
    assert bool(torch.isfinite(x).all())


# ---------------------------------------------------------------------------------------------
# 5. Empty feasible sets given as data.


def test_pgd_ball_with_negative_radius_is_infeasible_and_finite():
    _, layer = layer_of("ball_least_squares", on_nonconvergence="ignore")
    values = draw("ball_least_squares")
    values["radius"] = torch.tensor([0.6, -1.0, 0.7], dtype=F64)
    values["center"] = torch.zeros(3, 5, dtype=F64)  # the start y = c exactly: r/‖y − c‖ = r/0
    x = layer(**values)
    assert layer.info.feasible.tolist() == [True, False, True]
    assert layer.info.converged.tolist() == [True, False, True]
    assert bool(torch.isfinite(x).all())
    torch.testing.assert_close(x[2], layer(**element(values, 2)), atol=1e-12, rtol=0)


def test_pgd_box_with_crossed_bounds_is_infeasible_and_finite():
    _, layer = layer_of("logistic_box", on_nonconvergence="ignore")
    values = draw("logistic_box")
    values["lo"][1, 0] = values["hi"][1, 0] + 1.0
    x = layer(**values)
    assert layer.info.feasible.tolist() == [True, False, True]
    assert layer.info.converged.tolist() == [True, False, True]
    assert bool(torch.isfinite(x).all())


def test_pgd_capped_simplex_with_k_out_of_reach_is_infeasible_and_finite():
    _, layer = layer_of("entropic_knapsack", on_nonconvergence="ignore")
    values = draw("entropic_knapsack", batch=(2,))
    x = layer(**{**values, "k": torch.tensor([3.0, 11.0], dtype=F64)})  # Σx ≤ 10 < 11
    assert layer.info.feasible.tolist() == [True, False]
    assert bool(torch.isfinite(x).all())


def test_pgd_rank_deficient_affine_set_is_reported_and_finite():
    module, layer = layer_of("equality_qp")
    values = draw("equality_qp")
    values["A"][1, 1] = values["A"][1, 0]  # two equal rows: A Aᵀ is singular
    inputs = {k: v.clone().requires_grad_() for k, v in values.items()}
    with pytest.warns(module.ConvergenceWarning, match=r"element\(s\) 1 \(the constraints"):
        x = layer(**inputs)
    assert layer.info.feasible.tolist() == [True, False, True]
    assert bool(torch.isfinite(x).all())
    torch.testing.assert_close(x[0].detach(), layer(**element(values, 0)), atol=1e-12, rtol=0)


def test_admm_ball_with_negative_radius_is_infeasible_and_finite(tmp_path):
    text = """foldgen: 1
name: ball_admm
dims: {n: 5}
parameters:
  y: {shape: [n]}
  c: {shape: [n]}
  r: {shape: []}
variables:
  x: {shape: [n]}
minimize: 0.5 * sum_squares(x - y) + 0.1 * norm1(x)
constraints:
  - norm2(x - c) <= r
solver: {rule: admm, rho: 1.0, max_iter: 5000, tol: 1.0e-10}
"""
    module = built(tmp_path, text, "ball_admm")
    layer = quiet(module)
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(2, 5, generator=gen, dtype=F64)
    x = layer(y, torch.zeros(2, 5, dtype=F64), torch.tensor([1.0, -1.0], dtype=F64))
    assert layer.info.feasible.tolist() == [True, False]
    assert layer.info.converged.tolist() == [True, False]
    assert bool(torch.isfinite(x).all())


# ---------------------------------------------------------------------------------------------
# Bounded time: an x-update that cannot work stops its element at once.


def test_admm_nonconvex_smooth_part_stops_at_once(tmp_path):
    """Minimising a concave entropy: K(x) = ∇²f₀ + ρI is not positive definite, so damped
    Newton has no descent; the element was iterated for max_iter × 50 Newton steps × 40
    halvings (hours for the fuzzed spec), and now stops at the first sweep, reported."""
    text = """foldgen: 1
name: concave_admm
dims: {n: 20, p: 15}
parameters:
  G: {shape: [p, n]}
  h: {shape: [p]}
variables:
  x: {shape: [n]}
minimize: sum(entr(x))
constraints:
  - G @ x <= h
  - -1 <= x <= 1
solver: {rule: admm, rho: 1.0, max_iter: 10000, tol: 1.0e-10}
"""
    module = built(tmp_path, text, "concave_admm")
    layer = module.ConcaveAdmm()
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(3, 15, 20, generator=gen, dtype=F64)
    h = torch.rand(3, 15, generator=gen, dtype=F64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = layer(G, h)
    assert any("not positive definite" in str(w.message) for w in caught)
    assert layer.info.converged.tolist() == [False] * 3
    assert layer.info.iterations.tolist() == [0] * 3
    assert bool(torch.isfinite(x).all())


def test_admm_x_update_outside_the_domain_is_reported(tmp_path):
    """−sqrt(x) has an infinite slope at the start x = 0: Newton cannot step, reported."""
    text = """foldgen: 1
name: sqrt_admm
dims: {n: 4}
parameters:
  q: {shape: [n]}
variables:
  x: {shape: [n]}
minimize: q @ x - sum(sqrt(x))
constraints:
  - 0 <= x <= 1
solver: {rule: admm, rho: 1.0, max_iter: 10000, tol: 1.0e-10}
"""
    module = built(tmp_path, text, "sqrt_admm")
    layer = quiet(module)
    x = layer(torch.randn(2, 4, generator=torch.Generator().manual_seed(0), dtype=F64))
    assert layer.info.converged.tolist() == [False, False]
    assert int(layer.info.iterations.max()) == 0
    assert bool(torch.isfinite(x).all())
