"""ADMM on the packed state of several variables (issue 11): constraints that couple
variables (``x + v <= 1``, ``sum(x) + t == 1``), a slice of one variable (``A @ x[1:4]``),
an l1 term on one of them, and a matrix variable through products (``X @ a``, ``sum(X,
axis=0)``); each layer against CVXPY and autograd's gradcheck through the folded backward.
The matrices of the affine maps themselves (foldgen/affine.py) are checked against the
Jacobian of the expression they represent.
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
from foldgen.affine import affine_map
from foldgen.build import build, plan
from foldgen.errors import SpecError
from foldgen.ir import lower
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


COUPLED = """foldgen: 1
name: coupled
dims: {m: 3, n: 5}
parameters:
  y: {shape: [n]}
  w: {shape: [n]}
  s: {shape: []}
  A: {shape: [m, 3]}
  b: {shape: [m]}
  lam: {shape: [], default: 0.3}
variables:
  x: {shape: [n]}
  v: {shape: [n]}
  t: {shape: []}
minimize: 0.5 * sum_squares(x - y) + 0.5 * sum_squares(v - w) + 0.5 * (t - s) ** 2 + lam * norm1(x)
constraints:
  - x + v <= 1
  - sum(x) + t == 1
  - A @ x[1:4] <= b
  - v - t >= -2
solver: {rule: admm, rho: 1.0, max_iter: 20000, tol: 1.0e-12}
backward: {method: direct}
"""


def coupled_values(batch=(2,), seed=0):
    gen = torch.Generator().manual_seed(seed)
    x0 = 0.2 * torch.randn(*batch, 5, generator=gen, dtype=F64)  # a strictly feasible point
    A = torch.randn(*batch, 3, 3, generator=gen, dtype=F64)
    return {
        "y": 2.0 * torch.randn(*batch, 5, generator=gen, dtype=F64),
        "w": 2.0 * torch.randn(*batch, 5, generator=gen, dtype=F64),
        "s": torch.randn(*batch, generator=gen, dtype=F64),
        "A": A,
        "b": (A @ x0[..., 1:4, None])[..., 0] + 0.3,
        "lam": torch.full(batch, 0.3, dtype=F64),
    }


def coupled_cvx(v):
    import cvxpy as cp

    x, w, t = cp.Variable(5), cp.Variable(5), cp.Variable()
    f = (
        0.5 * cp.sum_squares(x - v["y"])
        + 0.5 * cp.sum_squares(w - v["w"])
        + 0.5 * cp.square(t - v["s"])
        + v["lam"] * cp.norm1(x)
    )
    constraints = [x + w <= 1, cp.sum(x) + t == 1, v["A"] @ x[1:4] <= v["b"], w - t >= -2]
    cp.Problem(cp.Minimize(f), constraints).solve(solver=cp.CLARABEL, **TIGHT)
    return x.value, w.value, t.value


def test_coupling_constraints_and_an_l1_term_on_one_variable(tmp_path):
    module = built(tmp_path, COUPLED, "coupled")
    layer = module.Coupled(on_nonconvergence="raise")
    values = coupled_values()
    x, v, t = layer(**values)
    assert x.shape == (2, 5) and v.shape == (2, 5) and t.shape == (2,)
    for i in range(2):
        ref = coupled_cvx({k: val[i].numpy() for k, val in values.items()})
        for got, want in zip((x[i], v[i], t[i]), ref):
            np.testing.assert_allclose(got.numpy(), want, atol=2e-6)
    # The solution is not trivially interior: the coupling bound and the equality bind.
    assert bool(((x + v - 1).abs() < 1e-6).any())
    names = ("y", "w", "s", "A", "b", "lam")
    inputs = tuple(values[k][:1].clone().requires_grad_() for k in names)

    def state(*a):
        return torch.cat([o.reshape(1, -1) for o in layer(*a)], -1)

    assert torch.autograd.gradcheck(state, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


MATRIX = """foldgen: 1
name: matrix_rows
dims: {r: 3, c: 4}
parameters:
  Y: {shape: [r, c]}
  a: {shape: [c]}
  h: {shape: [r]}
  k: {shape: [c]}
  g: {shape: []}
variables:
  X: {shape: [r, c]}
  t: {shape: []}
minimize: 0.5 * sum_squares(X - Y) + 0.5 * (t - g) ** 2 + 0.2 * norm1(vec(X))
constraints:
  - X @ a <= h + t
  - sum(X, axis=0) == k
  - X <= 0.5 + t
solver: {rule: admm, rho: 1.0, max_iter: 20000, tol: 1.0e-12}
backward: {method: direct}
"""


def matrix_values(batch=(2,), seed=1):
    gen = torch.Generator().manual_seed(seed)
    return {
        "Y": torch.randn(*batch, 3, 4, generator=gen, dtype=F64),
        "a": torch.randn(*batch, 4, generator=gen, dtype=F64),
        "h": 0.1 * torch.randn(*batch, 3, generator=gen, dtype=F64) - 0.8,
        "k": torch.randn(*batch, 4, generator=gen, dtype=F64),
        "g": torch.randn(*batch, generator=gen, dtype=F64),
    }


def matrix_cvx(v):
    import cvxpy as cp

    X, t = cp.Variable((3, 4)), cp.Variable()
    f = (
        0.5 * cp.sum_squares(X - v["Y"])
        + 0.5 * cp.square(t - v["g"])
        + 0.2 * cp.norm1(cp.vec(X, order="C"))
    )
    constraints = [X @ v["a"] <= v["h"] + t, cp.sum(X, axis=0) == v["k"], X <= 0.5 + t]
    cp.Problem(cp.Minimize(f), constraints).solve(solver=cp.CLARABEL, **TIGHT)
    return X.value, t.value


def test_matrix_variable_through_products(tmp_path):
    """X @ a and sum(X, axis=0) have the Kronecker rows kron(I, aᵀ) and kron(1ᵀ, I); the
    matrix relation X <= 0.5 + t is one block of its entries."""
    module = built(tmp_path, MATRIX, "matrix_rows")
    layer = module.MatrixRows(on_nonconvergence="raise")
    values = matrix_values()
    X, t = layer(**values)
    for i in range(2):
        ref = matrix_cvx({k: val[i].numpy() for k, val in values.items()})
        np.testing.assert_allclose(X[i].numpy(), ref[0], atol=2e-6)
        np.testing.assert_allclose(t[i].numpy(), ref[1], atol=2e-6)
    # Both inequalities bind somewhere: neither block is idle.
    rows = (X @ values["a"][..., None])[..., 0] - values["h"] - t[:, None]
    assert float(rows.amax()) > -1e-8 and float((X - 0.5 - t[:, None, None]).amax()) > -1e-8
    names = ("Y", "a", "h", "k", "g")
    inputs = tuple(values[k][:1].clone().requires_grad_() for k in names)

    def state(*a):
        return torch.cat([o.reshape(1, -1) for o in layer(*a)], -1)

    assert torch.autograd.gradcheck(state, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# The affine maps' matrices, numerically


def _evaluate(e: E.Expr, z: E.Leaf, env: dict[str, torch.Tensor]) -> torch.Tensor:
    """e printed and run on env (``_n`` carries the dim n, which only the state's size has)."""
    from ir_helpers import compile_function

    args = [
        E.Leaf("A", "param", (2, 3)),
        E.Leaf("a", "param", ("c",)),
        E.Leaf("a2", "param", ("r",)),
        E.Leaf("_n", "aux", ("n",)),
        z,
    ]
    _, fn = compile_function("probe", args, [e], ref="A")
    return fn(*(env[a.name] for a in args))[0]


@pytest.mark.parametrize(
    "text",
    [
        "x + v",
        "sum(x) + t",
        "A @ x[1:4] - 2 * t",
        "hstack([x[0], t, v[4]])",
        "X @ a",
        "a2 @ X",
        "sum(X, axis=1) - t",
        "vec(X)[2:7]",
    ],
)
def test_matrix_of_the_map_is_its_jacobian(text):
    """A from affine_map(e) times a random state equals e's linear part, for every node kind
    the packed state reaches its variables through."""
    spec = f"""foldgen: 1
name: probe
dims: {{n: 5, r: 3, c: 4}}
parameters:
  A: {{shape: [2, 3]}}
  a: {{shape: [c]}}
  a2: {{shape: [r]}}
variables:
  x: {{shape: [n]}}
  v: {{shape: [n]}}
  t: {{shape: []}}
  X: {{shape: [r, c]}}
minimize: sum_squares(x) + sum_squares(v) + t ** 2 + sum_squares(X)
constraints:
  - {text} <= 1
solver: {{rule: sqp}}
"""
    loaded = load_spec_text(spec, "probe.yaml")
    problem = lower(loaded)
    (z,) = [v.leaf for v in problem.variables]
    e = dict(problem.expressions)[("constraints", 0)]  # the packed lhs − rhs
    found = affine_map(e, z)
    assert found is not None, text
    matrix, offset = found
    gen = torch.Generator().manual_seed(3)
    env = {
        "A": torch.randn(2, 3, generator=gen, dtype=F64),
        "a": torch.randn(4, generator=gen, dtype=F64),
        "a2": torch.randn(3, generator=gen, dtype=F64),
        "_n": torch.zeros(5, dtype=F64),
        "_z": torch.randn(5 + 5 + 1 + 12, generator=gen, dtype=F64),
    }
    value = _evaluate(e, z, env).reshape(-1)
    zero = _evaluate(e, z, {**env, "_z": torch.zeros(23, dtype=F64)}).reshape(-1)
    M = _evaluate(matrix, z, env)
    assert M.shape == (value.shape[0], 23)
    torch.testing.assert_close(M @ env["_z"], value - zero)
    torch.testing.assert_close(_evaluate(offset, z, env).reshape(-1), zero)


def test_transposed_matrix_variable_is_rejected_with_the_located_message():
    text = COUPLED.replace("  - v - t >= -2\n", "").replace(
        "variables:\n", "variables:\n  W: {shape: [m, m]}\n"
    )
    text = text.replace("constraints:\n", "constraints:\n  - W.T @ b <= 1\n")
    text = text.replace("lam * norm1(x)", "lam * norm1(x) + sum_squares(W)")
    loaded = load_spec_text(text, "probe.yaml")
    with pytest.raises(SpecError) as err:
        plan(loaded, lower(loaded))
    assert "constraints[0]" in str(err.value) and "rule 'admm' splits constraints" in str(
        err.value
    )


def test_a_square_size_is_a_size_expression():
    """vec of an (r, r) matrix (the Kronecker rows use vec(I_r)) has sympy's size r**2; it
    must read back, evaluate and print as Python."""
    from foldgen import dims

    size = dims.mul("r", "r")
    assert dims.canonical(size) == size and dims.evaluate(size, {"r": 3}) == 9
    assert dims.add(size, "r") == dims.canonical("r + r*r")
    assert eval(dims.source(size), {"r": 4}) == 16  # noqa: S307 - the text is ours
