"""The second-order cone ‖A x + b‖ ≤ cᵀx + d (issue 11): the closed-form projection onto
K = {(u, t) : ‖u‖ ≤ t} and its VJP (foldgen/runtime/projections.py), the IR's recognition
of the family `Soc`, PGD's projection onto the canonical cone of the state, ADMM's
shifted-cone block on any affine image, and what SQP (which sees a smooth norm) does.
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

from foldgen import expr as E
from foldgen.build import build, plan
from foldgen.errors import SpecError
from foldgen.ir import Ball, Soc, lower
from foldgen.runtime.projections import _proj_soc, _proj_soc_vjp
from foldgen.spec import load_spec_text

F64 = torch.float64


def built(tmp_path: Path, text: str, name: str):
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


def cone_points(region: str, count: int = 6, m: int = 4, seed: int = 0) -> torch.Tensor:
    """(count, m + 1) points y = (u, t) in one region: strictly inside K, in the polar cone,
    between the two (the projection lands on the boundary), or exactly on K's boundary."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(count, m, generator=gen, dtype=F64)
    s = torch.linalg.vector_norm(u, dim=-1)
    factor = {
        "inside": 1.5 + torch.rand(count, generator=gen, dtype=F64),
        "polar": -1.5 - torch.rand(count, generator=gen, dtype=F64),
        "between": -0.9 + 1.8 * torch.rand(count, generator=gen, dtype=F64),
        "boundary": torch.ones(count, dtype=F64),
    }[region]
    return torch.cat([u, (factor * s)[:, None]], -1)


def soc_cvx(y: np.ndarray) -> np.ndarray:
    import cvxpy as cp

    def solve(**tolerances):
        u, t = cp.Variable(y.shape[-1] - 1), cp.Variable()
        objective = cp.sum_squares(u - y[:-1]) + cp.square(t - y[-1])
        problem = cp.Problem(cp.Minimize(objective), [cp.norm(u, 2) <= t])
        problem.solve(solver=cp.CLARABEL, **tolerances)
        return np.concatenate([u.value, [t.value]])

    try:
        return solve(**TIGHT)
    except cp.error.SolverError:  # at TIGHT's tolerances Clarabel may give up between cones
        return solve()


# ---------------------------------------------------------------------------------------------
# The projection and its VJP


@pytest.mark.parametrize("region", ["inside", "polar", "between", "boundary"])
def test_projection_matches_cvxpy(region):
    y = cone_points(region)
    x = _proj_soc(y)
    # A point on the boundary is degenerate for an interior-point method (active, with a
    # zero multiplier): Clarabel reaches it only to ~1e-4 there; the exact answer, y itself,
    # is checked below.
    atol = 5e-4 if region == "boundary" else 1e-6
    for i in range(y.shape[0]):
        np.testing.assert_allclose(x[i].numpy(), soc_cvx(y[i].numpy()), atol=atol)
    # Moreau: x ∈ K, y − x ∈ −K°, x ⟂ y − x.
    s = torch.linalg.vector_norm(x[:, :-1], dim=-1)
    assert bool((s <= x[:, -1] + 1e-12).all())
    r = x - y
    assert bool((torch.linalg.vector_norm(r[:, :-1], dim=-1) <= r[:, -1] + 1e-12).all())
    torch.testing.assert_close((x * r).sum(-1), torch.zeros(y.shape[0], dtype=F64))
    if region in ("inside", "boundary"):
        torch.testing.assert_close(x, y)
    if region == "polar":
        assert bool((x == 0).all())


def test_projection_is_batched_and_keeps_the_apex_finite():
    y = cone_points("between").reshape(2, 3, 5)
    torch.testing.assert_close(_proj_soc(y), _proj_soc(y.reshape(6, 5)).reshape(2, 3, 5))
    apex = torch.zeros(2, 5, dtype=F64)
    assert bool((_proj_soc(apex) == 0).all()) and bool(
        torch.isfinite(_proj_soc_vjp(torch.ones_like(apex), apex)).all()
    )


class _Soc(torch.autograd.Function):
    """The projection with its closed-form VJP as the backward (no autograd through it)."""

    @staticmethod
    def forward(ctx, y):
        ctx.save_for_backward(y)
        return _proj_soc(y)

    @staticmethod
    def backward(ctx, v):
        (y,) = ctx.saved_tensors
        return _proj_soc_vjp(v, y)


@pytest.mark.parametrize("region", ["inside", "polar", "between"])
def test_vjp_matches_gradcheck_and_central_differences(region):
    y = cone_points(region, seed=1).requires_grad_()
    assert torch.autograd.gradcheck(_Soc.apply, (y,), eps=1e-6, atol=1e-7, rtol=1e-6)
    gen = torch.Generator().manual_seed(2)
    v = torch.randn(y.shape, generator=gen, dtype=F64)
    d = torch.randn(y.shape, generator=gen, dtype=F64)
    h = 1e-6
    y = y.detach()
    central = ((_proj_soc(y + h * d) - _proj_soc(y - h * d)) * v).sum(-1) / (2 * h)
    torch.testing.assert_close((_proj_soc_vjp(v, y) * d).sum(-1), central, atol=1e-7, rtol=1e-6)


def test_vjp_on_the_boundary_is_the_between_formula():
    """On K's boundary (‖u‖ = t > 0) the VJP is the limit from outside, the element the
    other projections choose: a radial cotangent passes at half weight along (ū, 1)."""
    y = cone_points("boundary", count=1)
    u, t = y[0, :-1], y[0, -1]
    unit = u / torch.linalg.vector_norm(u)
    v = torch.cat([unit, torch.ones(1, dtype=F64)])[None]
    out = _proj_soc_vjp(v, y)
    torch.testing.assert_close(out, v)  # J (ū, 1) = (ū, 1) there
    tangent = torch.cat([torch.linalg.svd(unit[None])[2][1], torch.zeros(1, dtype=F64)])[None]
    torch.testing.assert_close(_proj_soc_vjp(tangent, y), tangent)  # α = 1 on the boundary
    assert t > 0


# ---------------------------------------------------------------------------------------------
# Recognition in the IR


def problem_of(constraint: str, rule: str = "pgd", variables: str = "x: {shape: [n]}\n  t: {}"):
    text = f"""foldgen: 1
name: probe
dims: {{n: 4, m: 3}}
parameters:
  y: {{shape: [n]}}
  s: {{shape: []}}
  A: {{shape: [m, n]}}
  b: {{shape: [m]}}
  c: {{shape: [n]}}
  d: {{shape: []}}
variables:
  {variables}
minimize: {"sum_squares(x - y) + (t - s) ** 2" if "t:" in variables else "sum_squares(x - y)"}
constraints:
  - {constraint}
solver: {{rule: {rule}}}
"""
    loaded = load_spec_text(text, "probe.yaml")
    return loaded, lower(loaded)


@pytest.mark.parametrize(
    "constraint",
    ["norm2(x) <= t", "t >= sqrt(sum_squares(x))", "norm2(x) - t <= 0", "-t + norm2(x) <= 0"],
)
def test_canonical_cone_is_recognised_and_projected_by_pgd(constraint):
    loaded, problem = problem_of(constraint)
    (cone,) = problem.constraints
    assert isinstance(cone, Soc)
    assert E.is_zero(cone.b) and E.is_zero(cone.d)
    assert plan(loaded, problem).projection.kind == "soc"


def test_cone_of_one_vector_by_slices_is_projected_by_pgd():
    loaded, problem = problem_of("norm2(x[:-1]) <= x[-1]", variables="x: {shape: [n]}")
    assert isinstance(problem.constraints[0], Soc)
    assert problem.packing is None  # one vector: no packing, the cone is on x itself
    assert plan(loaded, problem).projection.kind == "soc"


def test_affine_cone_keeps_its_data():
    _, problem = problem_of("norm2(A @ x + b) <= c @ x + d", variables="x: {shape: [n]}")
    (cone,) = problem.constraints
    assert isinstance(cone, Soc)
    leaf = {p.name: p.leaf for p in problem.parameters}
    assert cone.A == leaf["A"] and cone.b == leaf["b"]
    assert cone.c == leaf["c"] and cone.d == leaf["d"]


def test_a_euclidean_ball_stays_a_ball():
    _, problem = problem_of("norm2(x - y) <= s", variables="x: {shape: [n]}")
    assert isinstance(problem.constraints[0], Ball)


@pytest.mark.parametrize(
    "constraint",
    ["norm2(A @ x + b) <= c @ x + d", "2 * norm2(x) <= t", "norm2(x) <= t + 1", "norm2(x) >= t"],
)
def test_pgd_rejects_other_cones_with_its_located_message(constraint):
    variables = "x: {shape: [n]}" if "t" not in constraint else "x: {shape: [n]}\n  t: {}"
    loaded, problem = problem_of(constraint, variables=variables)
    with pytest.raises(SpecError) as err:
        plan(loaded, problem)
    text = str(err.value)
    assert "constraints[0]" in text and "closed-form projection" in text


def test_a_reversed_cone_is_not_a_cone():
    """norm2(x) >= t is a nonconvex set: a General, not a Soc, and ADMM rejects it."""
    loaded, problem = problem_of("norm2(x) >= t", rule="admm")
    assert not isinstance(problem.constraints[0], Soc)
    with pytest.raises(SpecError, match="rule 'admm' splits constraints"):
        plan(loaded, problem)


# ---------------------------------------------------------------------------------------------
# Layers: ADMM on an affine cone, the canonical cone under admm and sqp

AFFINE_CONE = """foldgen: 1
name: affine_cone
dims: {n: 5, m: 3}
parameters:
  y: {shape: [n]}
  A: {shape: [m, n]}
  b: {shape: [m]}
  c: {shape: [n]}
  d: {shape: []}
variables:
  x: {shape: [n]}
minimize: 0.5 * sum_squares(x - y)
constraints:
  - norm2(A @ x + b) <= c @ x + d
solver: {rule: admm, rho: 1.0, max_iter: 20000, tol: 1.0e-12}
backward: {method: direct}
"""


def affine_cone_values(batch=(3,), seed=0):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(*batch, 3, 5, generator=gen, dtype=F64)
    b = torch.randn(*batch, 3, generator=gen, dtype=F64)
    c = torch.randn(*batch, 5, generator=gen, dtype=F64)
    x0 = 0.3 * torch.randn(*batch, 5, generator=gen, dtype=F64)  # strictly feasible
    d = torch.linalg.vector_norm((A @ x0[..., None])[..., 0] + b, dim=-1) - (c * x0).sum(-1)
    y = x0 + 3.0 * torch.randn(*batch, 5, generator=gen, dtype=F64)
    return {"y": y, "A": A, "b": b, "c": c, "d": d + 0.5}


def affine_cone_cvx(v):
    import cvxpy as cp

    x = cp.Variable(5)
    constraints = [cp.norm(v["A"] @ x + v["b"], 2) <= v["c"] @ x + v["d"]]
    cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x - v["y"])), constraints).solve(
        solver=cp.CLARABEL, **TIGHT
    )
    return x.value


def test_admm_cone_block_matches_cvxpy_and_gradcheck(tmp_path):
    module = built(tmp_path, AFFINE_CONE, "affine_cone")
    layer = module.AffineCone(on_nonconvergence="raise")
    values = affine_cone_values()
    x = layer(**values)
    active = 0
    for i in range(3):
        v = {k: t[i].numpy() for k, t in values.items()}
        want = affine_cone_cvx(v)
        np.testing.assert_allclose(x[i].numpy(), want, atol=2e-6)
        gap = np.linalg.norm(v["A"] @ want + v["b"]) - v["c"] @ want - v["d"]
        active += abs(gap) < 1e-6
    assert active >= 1  # the cone binds somewhere: the block is not idle
    names = ("y", "A", "b", "c", "d")
    for i in range(3):
        inputs = tuple(values[k][i : i + 1].clone().requires_grad_() for k in names)
        assert torch.autograd.gradcheck(
            lambda *a: layer(*a), inputs, eps=1e-6, atol=1e-6, rtol=1e-5
        )


def soc_spec(rule: str) -> str:
    text = (Path(__file__).resolve().parent.parent / "specs" / "soc_projection.yaml").read_text()
    solver = {
        "admm": "solver: {rule: admm, rho: 1.0, max_iter: 20000, tol: 1.0e-12}\n"
        "backward: {method: direct}\n",
        "sqp": "solver: {rule: sqp, max_iter: 200, tol: 1.0e-10}\nbackward: {method: direct}\n",
    }[rule]
    head = text[: text.index("solver:")].replace("name: soc_projection", f"name: soc_{rule}")
    return head + solver


def soc_values(seed=0, count=4):
    """(y, s) with the projection on the boundary or inside, away from the apex."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randn(count, 6, generator=gen, dtype=F64)
    scale = -0.5 + 2.0 * torch.rand(count, generator=gen, dtype=F64)
    return {"y": y, "s": scale * torch.linalg.vector_norm(y, dim=-1)}


@pytest.mark.parametrize("rule", ["admm", "sqp"])
def test_canonical_cone_under_admm_and_sqp(tmp_path, rule):
    module = built(tmp_path, soc_spec(rule), f"soc_{rule}")
    layer = getattr(module, f"Soc{rule.capitalize()}")(on_nonconvergence="raise")
    values = soc_values()
    x, t = layer(**values)
    want = _proj_soc(torch.cat([values["y"], values["s"][:, None]], -1))
    torch.testing.assert_close(torch.cat([x, t[:, None]], -1), want, atol=1e-6, rtol=1e-6)
    inputs = tuple(values[k][:1].clone().requires_grad_() for k in ("y", "s"))

    def state(*a):
        return torch.cat([o.reshape(1, -1) for o in layer(*a)], -1)

    assert torch.autograd.gradcheck(state, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_sqp_does_not_converge_where_the_solution_has_u_at_zero(tmp_path):
    """SQP sees norm2 as smooth, and its gradient u/‖u‖ is 0/0 at u = 0: where the
    projection is the apex (s ≤ −‖y‖) or has u = 0 (y = 0), SQP stops without converging
    and says so (converged False, finite outputs); PGD and ADMM project in closed form."""
    module = built(tmp_path, soc_spec("sqp"), "soc_sqp")
    layer = module.SocSqp(on_nonconvergence="ignore")
    y = torch.randn(2, 6, generator=torch.Generator().manual_seed(0), dtype=F64)
    y[1] = 0.0
    s = torch.tensor([-5.0, 1.0], dtype=F64)
    x, t = layer(y, s)
    assert layer.info.converged.tolist() == [False, False]
    assert bool(torch.isfinite(x).all()) and bool(torch.isfinite(t).all())
