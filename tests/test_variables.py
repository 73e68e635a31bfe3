"""Several variables, of any shape (issue 11): the layer returns one tensor for one variable
and a tuple in spec order for several, each with the batch shape in front; warm starts of
any subset; the packed state in the docstring; the spec errors for shapes."""

from __future__ import annotations

import sys

import cvxpy as cp
import numpy as np
import pytest
import torch

import foldgen
from foldgen.errors import SpecError

F64 = torch.float64
TIGHT = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12}

SPEC = """
foldgen: 1
name: coupled
dims: {{n: 4, m: 3}}
parameters:
  a: {{shape: [n]}}
  B: {{shape: [m, n]}}
  s0: {{shape: []}}
variables:
  x: {{shape: [n]}}
  Y: {{shape: [m, n]}}
  s: {{init: 1}}
minimize: sum_squares(x - a) + sum_squares(Y - B) + (s - s0) ** 2 + 0.5 * sum(x * Y[0]) * 0
constraints:
{constraints}
solver: {{rule: {rule}, max_iter: 20000, tol: 1.0e-12}}
backward: {{method: direct}}
"""


def _data(batch=(2,), seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(*batch, 4, generator=g, dtype=F64),
        torch.randn(*batch, 3, 4, generator=g, dtype=F64),
        torch.randn(*batch, generator=g, dtype=F64),
    )


def _reference(a, B, s0, coupled):
    x, Y, s = cp.Variable(4), cp.Variable((3, 4)), cp.Variable()
    objective = cp.sum_squares(x - a) + cp.sum_squares(Y - B) + cp.square(s - s0)
    constraints = [x >= 0, Y <= 0.5, s >= -0.2]
    if coupled:
        constraints += [cp.sum(x) + s == 1, Y[0] + x <= 1]
    cp.Problem(cp.Minimize(objective), constraints).solve(solver=cp.CLARABEL, **TIGHT)
    return x.value, Y.value, s.value


@pytest.mark.parametrize(
    "rule,coupled", [("pgd", False), ("sqp", False), ("sqp", True), ("admm", False)]
)
def test_outputs_are_a_tuple_in_spec_order_and_match_cvxpy(rule, coupled):
    constraints = ["  - x >= 0", "  - Y <= 0.5", "  - s >= -0.2"]
    if coupled:
        constraints += ["  - sum(x) + s == 1", "  - Y[0] + x <= 1"]
    layer = foldgen.compile(SPEC.format(constraints="\n".join(constraints), rule=rule))(
        on_nonconvergence="raise"
    )
    a, B, s0 = _data()
    x, Y, s = layer(a, B, s0)
    assert x.shape == (2, 4) and Y.shape == (2, 3, 4) and s.shape == (2,)
    for e in range(2):
        rx, rY, rs = _reference(a[e].numpy(), B[e].numpy(), float(s0[e]), coupled)
        np.testing.assert_allclose(x[e].numpy(), rx, atol=1e-6)
        np.testing.assert_allclose(Y[e].numpy(), rY, atol=1e-6)
        np.testing.assert_allclose(float(s[e]), rs, atol=1e-6)
    inputs = tuple(t[:1].clone().requires_grad_() for t in (a, B, s0))
    assert torch.autograd.gradcheck(lambda *v: layer(*v), inputs, atol=1e-6)


def _layer():
    constraints = "  - x >= 0\n  - Y <= 0.5\n  - s >= -0.2"
    return foldgen.compile(SPEC.format(constraints=constraints, rule="pgd"))(
        on_nonconvergence="raise"
    )


def test_warm_starts_of_any_subset_reach_the_same_solution_and_are_checked():
    layer = _layer()
    a, B, s0 = _data()
    x, Y, s = layer(a, B, s0)
    cold = layer.info.iterations
    for warm in (
        {"Y_init": Y},
        {"s_init": s, "x_init": x[0]},
        {"x_init": x, "Y_init": Y, "s_init": s},
    ):
        x2, Y2, s2 = layer(a, B, s0, **warm)
        torch.testing.assert_close(x2, x, atol=1e-9, rtol=0)
        torch.testing.assert_close(Y2, Y, atol=1e-9, rtol=0)
    assert bool((layer.info.iterations <= cold).all())  # the last one starts at the solution
    with pytest.raises(
        ValueError,
        match=r"Y_init: expected shape \(\.\.\., 3, 4\) = \(\.\.\., m, n\), got \(4, 3\)",
    ):
        layer(a, B, s0, Y_init=torch.zeros(4, 3, dtype=F64))
    with pytest.raises(ValueError, match=r"s_init: expected a torch.float64 tensor"):
        layer(a, B, s0, s_init=0.5)


def test_one_matrix_variable_is_one_tensor_and_the_docstring_names_the_packing():
    text = """
foldgen: 1
name: matrix_only
dims: {n: 3, k: 2}
parameters:
  C: {shape: [n, k]}
variables:
  W: {shape: [n, k]}
minimize: sum_squares(W - C)
constraints:
  - W >= 0
solver: {rule: pgd}
"""
    cls = foldgen.compile(text)
    W = cls()(torch.randn(5, 3, 2, dtype=F64))
    assert isinstance(W, torch.Tensor) and W.shape == (5, 3, 2) and bool((W >= 0).all())
    doc = sys.modules[cls.__module__].__doc__ or ""
    assert "minimize    f(W) = Σ((W − C)²)" in doc, doc
    assert "_z = (W): the variables flattened row-major" in doc, doc


@pytest.mark.parametrize(
    "edit,fragment",
    [
        (("Y: {shape: [m, n]}", "Y: {shape: [m, n, n]}"), "at most two axes"),
        (("Y: {shape: [m, n]}", "Y: {shape: [m + T, n]}"), "unknown dim 'T'"),
        (("Y: {shape: [m, n]}", "Y: {shape: [m - 3, n]}"), "is 0 at the declared dims"),
        (("Y: {shape: [m, n]}", "Y: {shape: [m / 2, n]}"), "arithmetic of dims"),
        (("Y[0] + x", "Y[3] + x"), "the index 3 is outside an axis of size m (= 3)"),
    ],
)
def test_shape_errors_are_located(edit, fragment):
    constraints = "  - x >= 0\n  - Y[0] + x <= 1"
    text = SPEC.format(constraints=constraints, rule="sqp").replace(*edit)
    with pytest.raises(SpecError) as caught:
        foldgen.compile(text)
    assert fragment in str(caught.value)
