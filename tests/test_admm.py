"""The ADMM rule beyond the standard battery: how the splitting is recognised, what is rejected
(with located messages), ρ adaptation, infeasibility detection, the inner Newton method for a
non-quadratic smooth part, and the ball / equality / row blocks.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cases import TIGHT, load_module
from cases_admm import admm_unrolled

from foldgen import expr as E
from foldgen.build import build, plan
from foldgen.errors import SpecError
from foldgen.ir import lower
from foldgen.spec import load_spec_text

F64 = torch.float64

HEAD = """foldgen: 1
name: {name}
dims: {{n: 6, m: 4}}
parameters:
  P: {{shape: [n, n]}}
  q: {{shape: [n]}}
  G: {{shape: [m, n]}}
  h: {{shape: [m]}}
  l: {{shape: [m]}}
  y: {{shape: [n]}}
  c: {{shape: [n]}}
  r: {{shape: []}}
  a: {{shape: [n]}}
  lam: {{shape: [], default: 0.5}}
variables:
  x: {{shape: [n]}}
"""


def spec_text(objective: str, constraints=(), name="probe", extra=""):
    lines = [HEAD.format(name=name), f"minimize: {objective}\n"]
    if constraints:
        lines.append("constraints:\n" + "".join(f"  - {c}\n" for c in constraints))
    lines.append(f"solver: {{rule: admm, rho: 1.0, max_iter: 20000, tol: 1.0e-11}}\n{extra}")
    return "".join(lines)


def plan_of(objective: str, constraints=()):
    loaded = load_spec_text(spec_text(objective, constraints), "probe.yaml")
    return plan(loaded, lower(loaded))  # a rule's RuleError, located in the spec


def leaf(name, shape):
    return E.Leaf(name, "param", shape)


G = leaf("G", ("m", "n"))
X = E.Leaf("x", "var", ("n",))


# ---------------------------------------------------------------------------------------------
# Splitting recognition


def test_l1_terms_are_split_off_with_their_weight_and_offset():
    plan = plan_of("0.5 * sum_squares(x - y) + lam * norm1(G @ x) + 2 * sum(abs(x - c))")
    assert [b.kind for b in plan.blocks] == ["l1", "l1"]
    first, second = plan.blocks
    assert first.matrix == G and E.is_zero(first.data[0]) and first.data[1] == leaf("lam", ())
    assert second.matrix is None  # z = x: no matrix is materialised
    assert second.data[0] == E.neg(leaf("c", ("n",))) and second.data[1] == E.const(2.0)
    assert plan.quadratic
    assert plan.math["smooth"] == "0.5 Σ((x − y)²)"


def test_weight_may_follow_the_norm():
    plan = plan_of("sum_squares(x - y) + norm1(G @ x) * lam * 0.5")
    (block,) = plan.blocks
    assert block.kind == "l1" and block.data[1] == E.mul(E.const(0.5), leaf("lam", ()))


def test_two_sided_and_separate_relations_merge_into_one_box():
    for constraints in (
        ["l <= G @ x <= h"],
        ["G @ x <= h", "G @ x >= l"],
        ["-(G @ x) >= -h", "l <= G @ x"],
    ):
        plan = plan_of("sum_squares(x - y)", constraints)
        (block,) = plan.blocks
        assert block.kind == "box" and block.matrix == G
        assert block.data == (leaf("l", ("m",)), leaf("h", ("m",))), constraints


def test_equality_is_a_box_with_equal_bounds_and_bounds_are_an_identity_box():
    plan = plan_of("sum_squares(x - y)", ["G @ x == h", "-1 <= x <= 1"])
    kinds = [(b.kind, b.matrix) for b in plan.blocks]
    assert ("box", None) in kinds and ("box", G) in kinds
    eq = next(b for b in plan.blocks if b.matrix == G)
    assert eq.data[0] == eq.data[1] == leaf("h", ("m",))


def test_rows_and_balls():
    plan = plan_of("sum_squares(x - y)", ["sum(x) == 1", "a @ x <= r", "norm2(x - c) <= r"])
    kinds = [b.kind for b in plan.blocks]
    assert kinds == ["box", "box", "ball"]
    assert all(b.matrix.shape == (1, "n") for b in plan.blocks[:2])  # 1 × n rows
    assert plan.blocks[2].data == (leaf("c", ("n",)), leaf("r", ()))


def test_non_quadratic_smooth_part_uses_the_inner_method():
    plan = plan_of("sum(softplus(G @ x)) - h @ (G @ x) + lam * norm1(x)")
    assert not plan.quadratic


# ---------------------------------------------------------------------------------------------
# Rejections: one located message that says why


BAD = [
    ("negative-weight", "sum_squares(x - y) - lam * norm1(x)", (), "minimize",
     "negative weight"),
    ("nested-abs", "sum_squares(x - y) + norm1(x) ** 2", (), "minimize", "nested", "sqp"),
    ("non-affine-argument", "sum_squares(x - y) + norm1(exp(x))", (), "minimize",
     "not one", "sqp"),
    ("vector-weight", "sum_squares(x - y) + sum(c * abs(x))", (), "minimize", "nested", "sqp"),
    ("nonlinear-constraint", "sum_squares(x - y)", ("sum(exp(x)) <= 1",), "constraints[0]",
     "affine", "sqp"),
    ("elementwise-nonlinear", "sum_squares(x - y)", ("G @ exp(x) <= h",), "constraints[0]",
     "affine", "sqp"),
    ("two-upper-bounds", "sum_squares(x - y)", ("G @ x <= h", "G @ x <= l"), "constraints[1]",
     "second upper bound"),
    ("nothing-to-split", "sum_squares(x - y)", (), "solver.rule", "something to split", "pgd"),
]  # fmt: skip


@pytest.mark.parametrize("objective, constraints, key, fragments",
                         [(*b[1:4], b[4:]) for b in BAD],
                         ids=[b[0] for b in BAD])  # fmt: skip
def test_bad_specs_are_rejected_with_a_located_message(objective, constraints, key, fragments):
    with pytest.raises(SpecError) as err:
        plan_of(objective, constraints)
    assert err.value.key == key and err.value.line is not None
    for fragment in fragments:
        assert fragment in err.value.message, err.value.message


# ---------------------------------------------------------------------------------------------
# Generated layers of the repository's specs


def layer_of(name, **kwargs):
    module = load_module(name)
    return module, getattr(module, module.__all__[0])(**kwargs)


def draw(name, batch=(3,), seed=0):
    from cases import CASES

    return CASES[name].make(batch, F64, torch.Generator().manual_seed(seed))


def gradients(layer, values, names, weight):
    inputs = {k: v.clone().requires_grad_(k in names) for k, v in values.items()}
    x = layer(**inputs)
    return x.detach(), torch.autograd.grad((x * weight).sum(), [inputs[k] for k in names])


@pytest.mark.parametrize("name", ["tv_denoise", "lasso", "inequality_qp"])
def test_rho_adaptation_gives_the_same_solution_and_gradient(name):
    module, fixed = layer_of(name, on_nonconvergence="raise", adapt_rho=False)
    _, adaptive = layer_of(name, on_nonconvergence="raise", adapt_rho=True)
    values = draw(name, seed=7)
    names = list(module.GRAD_PARAMETERS)
    weight = torch.randn(fixed(**values).shape, generator=torch.Generator().manual_seed(1))
    x1, g1 = gradients(fixed, values, names, weight.double())
    x2, g2 = gradients(adaptive, values, names, weight.double())
    torch.testing.assert_close(x1, x2, atol=1e-8, rtol=0)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-7 * max(1.0, float(a.abs().max())), rtol=0)
    assert bool((fixed.info.step == fixed.rho).all())  # info.step is the final ρ


def test_rho_adaptation_changes_rho_where_it_helps():
    module, layer = layer_of("inequality_qp", on_nonconvergence="raise", adapt_rho=True, rho=1e-3)
    values = draw("inequality_qp", seed=3)
    layer(**values)
    assert bool((layer.info.step > 1e-3).all())
    _, plain = layer_of("inequality_qp", on_nonconvergence="ignore", rho=1e-3, adapt_rho=False)
    plain(**values)
    assert int(layer.info.iterations.max()) < int(plain.info.iterations.max())


def infeasible_batch():
    values = draw("inequality_qp", seed=11)
    h = values["h"].clone()
    G = values["G"].clone()
    G[1, 0] = torch.ones(G.shape[-1], dtype=F64)  # Σx ≤ −100 with −1 ≤ x ≤ 1: no point
    h[1, 0] = -100.0
    return {**values, "G": G, "h": h}


def test_infeasible_element_is_reported_not_nan_and_the_batch_goes_on():
    module, layer = layer_of("inequality_qp")
    values = infeasible_batch()
    inputs = {k: v.clone().requires_grad_() for k, v in values.items()}
    with pytest.warns(module.ConvergenceWarning, match=r"element\(s\) 1\b.*admit no point"):
        x = layer(**inputs)
    assert layer.info.feasible.tolist() == [True, False, True]
    assert layer.info.converged.tolist() == [True, False, True]
    assert int(layer.info.iterations[1]) < layer.max_iter  # stopped by the certificate
    assert bool(torch.isfinite(x).all())
    x.sum().backward()
    for v in inputs.values():
        assert bool(torch.isfinite(v.grad).all())
        assert float(v.grad[1].abs().max()) == 0.0  # no solution to differentiate
    # The feasible elements are exactly what they are alone.
    _, alone = layer_of("inequality_qp", on_nonconvergence="raise")
    for i in (0, 2):
        torch.testing.assert_close(
            x[i].detach(), alone(**{k: v[i] for k, v in values.items()}), atol=1e-10, rtol=0
        )


def test_infeasibility_policy_raise_and_ignore():
    module, layer = layer_of("inequality_qp", on_nonconvergence="raise")
    with pytest.raises(module.ConvergenceError, match="admit no point"):
        layer(**infeasible_batch())
    _, quiet = layer_of("inequality_qp", on_nonconvergence="ignore")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = quiet(**infeasible_batch())
    assert bool(torch.isfinite(x).all()) and quiet.info.feasible.tolist() == [True, False, True]


def test_settings_are_checked():
    module = load_module("lasso")
    with pytest.raises(ValueError, match="rho"):
        module.Lasso(rho=0)
    with pytest.raises(ValueError, match="adapt_rho"):
        module.Lasso(adapt_rho="yes")


def test_lasso_gradient_in_lam_matches_the_closed_form():
    """On the support S: x_S = (A_SᵀA_S)⁻¹(A_Sᵀb − lam sign(x_S)), so ∂x_S/∂lam = −(A_SᵀA_S)⁻¹ s."""
    module, layer = layer_of("lasso", on_nonconvergence="raise")
    values = draw("lasso", batch=(), seed=4)
    lam = values["lam"].clone().requires_grad_()
    x = layer(values["A"], values["b"], lam)
    (grad,) = torch.autograd.grad(x.sum(), lam)
    support = x.detach().abs() > 1e-9
    A_s = values["A"][:, support]
    exact = -torch.linalg.solve(A_s.T @ A_s, torch.sign(x.detach()[support])).sum()
    assert abs(float(grad) - float(exact)) < 1e-8


# ---------------------------------------------------------------------------------------------
# Specs built here: the inner Newton method, balls, rows, bounds from parameters


def built(tmp_path, text, name):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    out = tmp_path / "gen"
    out.mkdir(exist_ok=True)
    (out / f"{name}.py").write_text(build(path).source, encoding="utf-8")
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or "ruff"
    check = subprocess.run(
        [ruff, "format", "--check", "--line-length", "99", str(out / f"{name}.py")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    return load_module(name, out)


SPARSE_LOGISTIC = """foldgen: 1
name: sparse_logistic
dims: {m: 10, n: 4}
parameters:
  X: {shape: [m, n]}
  t: {shape: [m]}
  lam: {shape: []}
variables:
  w: {shape: [n]}
minimize: sum(softplus(X @ w)) - t @ (X @ w) + 0.05 * sum_squares(w) + lam * norm1(w)
solver: {rule: admm, rho: 1.0, max_iter: 5000, tol: 1.0e-11}
backward: {method: direct}
"""


def logistic_values(batch=(2,), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {
        "X": torch.randn(*batch, 10, 4, generator=gen, dtype=F64),
        "t": (torch.rand(*batch, 10, generator=gen, dtype=F64) > 0.5).to(F64),
        "lam": 0.5 + torch.rand(*batch, generator=gen, dtype=F64),
    }


def test_non_quadratic_smooth_part(tmp_path):
    module = built(tmp_path, SPARSE_LOGISTIC, "sparse_logistic")
    assert "damped Newton" in module.__doc__
    layer = module.SparseLogistic(on_nonconvergence="raise")
    values = logistic_values()
    w = layer(**values)
    import cvxpy as cp

    for i in range(2):
        v = {k: t[i].numpy() for k, t in values.items()}
        var = cp.Variable(4)
        z = v["X"] @ var
        f = cp.sum(cp.logistic(z)) - v["t"] @ z + 0.05 * cp.sum_squares(var)
        cp.Problem(cp.Minimize(f + float(v["lam"]) * cp.norm1(var))).solve(
            solver=cp.CLARABEL, **TIGHT
        )
        np.testing.assert_allclose(w[i].numpy(), var.value, atol=1e-6)
    inputs = tuple(values[k][:1].clone().requires_grad_() for k in ("X", "t", "lam"))
    assert torch.autograd.gradcheck(lambda *a: layer(*a), inputs, eps=1e-6, atol=1e-6, rtol=1e-5)
    weight = torch.randn(2, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    _, folded = gradients(layer, values, ["X", "t", "lam"], weight)
    unrolled = admm_unrolled(module, layer, values, weight, iterations=600)
    for name, g in zip(["X", "t", "lam"], folded):
        assert (g - unrolled[name]).abs().max() <= 1e-8 * max(1.0, float(g.abs().max())), name


BALL_EQ = """foldgen: 1
name: ball_equality
dims: {n: 6, m: 2}
parameters:
  y: {shape: [n]}
  A: {shape: [m, n]}
  b: {shape: [m]}
  c: {shape: [n]}
  r: {shape: []}
  lo: {shape: [n]}
variables:
  x: {shape: [n]}
minimize: 0.5 * sum_squares(x - y) + 0.1 * norm1(x - c)
constraints:
  - A @ x == b
  - norm2(x - c) <= r
  - x >= lo
solver: {rule: admm, rho: 1.0, max_iter: 20000, tol: 1.0e-11}
backward: {method: gmres, max_iter: 500, tol: 1.0e-12}
"""


def ball_values(batch=(2,), seed=0):
    gen = torch.Generator().manual_seed(seed)
    c = 0.1 * torch.randn(*batch, 6, generator=gen, dtype=F64)
    x0 = c + 0.3 * torch.randn(*batch, 6, generator=gen, dtype=F64)  # a strictly feasible point
    A = torch.randn(*batch, 2, 6, generator=gen, dtype=F64)
    return {
        "y": 3.0 * torch.randn(*batch, 6, generator=gen, dtype=F64),
        "A": A,
        "b": (A @ x0[..., None])[..., 0],
        "c": c,
        "r": torch.linalg.vector_norm(x0 - c, dim=-1) + 0.5,
        "lo": x0 - 0.2 - torch.rand(*batch, 6, generator=gen, dtype=F64),
    }


def test_ball_equality_and_parameter_bounds(tmp_path):
    module = built(tmp_path, BALL_EQ, "ball_equality")
    layer = module.BallEquality(on_nonconvergence="raise")
    values = ball_values()
    x = layer(**values)
    import cvxpy as cp

    for i in range(2):
        v = {k: t[i].numpy() for k, t in values.items()}
        var = cp.Variable(6)
        f = 0.5 * cp.sum_squares(var - v["y"]) + 0.1 * cp.norm1(var - v["c"])
        constraints = [v["A"] @ var == v["b"], cp.norm(var - v["c"]) <= v["r"], var >= v["lo"]]
        cp.Problem(cp.Minimize(f), constraints).solve(solver=cp.CLARABEL, **TIGHT)
        np.testing.assert_allclose(x[i].numpy(), var.value, atol=2e-6)
    names = ("y", "A", "b", "c", "r", "lo")
    inputs = tuple(values[k][:1].clone().requires_grad_() for k in names)
    assert torch.autograd.gradcheck(lambda *a: layer(*a), inputs, eps=1e-6, atol=1e-6, rtol=1e-5)
    # An empty box (lo > the ball) is infeasible data, caught before iterating.
    bad = {**values, "lo": values["lo"] + 10.0}
    quiet = module.BallEquality(on_nonconvergence="ignore")
    x = quiet(**bad)
    assert quiet.info.feasible.tolist() == [False, False] and bool(torch.isfinite(x).all())


def test_prox_l1_and_its_vjp_against_autograd():
    """foldgen/runtime/prox.py: the soft-threshold and its closed-form VJP."""
    from foldgen.runtime.prox import _prox_l1, _prox_l1_vjp

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 7, generator=gen, dtype=F64, requires_grad=True)
    o = torch.randn(7, generator=gen, dtype=F64, requires_grad=True)
    t = (0.3 + torch.rand(3, generator=gen, dtype=F64)).requires_grad_()
    z = _prox_l1(w, o, t)
    y = (w + o).detach()
    expected = torch.sign(y) * torch.clamp(y.abs() - t.detach()[:, None], min=0) - o.detach()
    torch.testing.assert_close(z.detach(), expected)
    v = torch.randn(3, 7, generator=gen, dtype=F64)
    reference = torch.autograd.grad((z * v).sum(), (w, o, t))
    w_bar, o_bar, t_bar = _prox_l1_vjp(v, w.detach(), o.detach(), t.detach())
    torch.testing.assert_close(w_bar, reference[0])
    torch.testing.assert_close(o_bar.sum(0), reference[1])
    torch.testing.assert_close(t_bar, reference[2])
