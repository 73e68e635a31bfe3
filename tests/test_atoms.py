"""CVXPY's atoms `huber(e)`, `huber(e, M)`, `logistic(e)`, `mean(e)` and `trace(M)` (issue 11, part):
their runtime definitions against their formulas and autograd, and a robust-regression layer
using all of them against CVXPY, under every rule, with gradcheck."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

import foldgen
from foldgen.build import build_text
from foldgen.errors import SpecError
from foldgen.runtime import core

F64 = torch.float64


TIGHT = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12}


def test_huber_runtime_definitions_are_the_function_and_its_derivatives():
    t = torch.linspace(-3, 3, 601, dtype=F64).requires_grad_()
    value = core._huber(t)
    expected = torch.where(t.abs() <= 1, t**2, 2 * t.abs() - 1)
    torch.testing.assert_close(value, expected, rtol=0, atol=0)
    (slope,) = torch.autograd.grad(value.sum(), t, create_graph=True)
    torch.testing.assert_close(core._huber_slope(t), slope, rtol=0, atol=1e-15)
    (curvature,) = torch.autograd.grad(core._huber_slope(t).sum(), t)
    away = (t.abs() - 1).abs() > 1e-9  # the kink of the slope at |t| = 1
    torch.testing.assert_close(core._huber_curvature(t)[away], curvature[away], rtol=0, atol=0)


def _spec(rule, constraints=""):
    return f"""
foldgen: 1
name: robust_fit_{rule}
dims: {{n: 6, m: 20}}
parameters:
  A: {{shape: [m, n]}}
  b: {{shape: [m]}}
  W: {{shape: [n, n]}}
variables:
  x: {{shape: [n]}}
minimize: sum(huber(A @ x - b, 0.5)) + huber(sum(x)) + mean(logistic(x)) + 0.1 * sum_squares(x) + 0.01 * trace(W) * sum(x)
{constraints}solver: {{rule: {rule}, max_iter: 20000, tol: 1.0e-13}}
backward: {{method: direct}}
"""


def _data(seed=0, batch=3):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(batch, 20, 6, generator=g, dtype=F64)
    b = 3 * torch.randn(batch, 20, generator=g, dtype=F64)
    W = torch.randn(batch, 6, 6, generator=g, dtype=F64)
    return A, b, W


def _cvxpy(A, b, W, box):
    x = []
    for e in range(A.shape[0]):
        z = cp.Variable(A.shape[-1])
        An, bn, Wn = A[e].numpy(), b[e].numpy(), W[e].numpy()
        objective = (
            cp.sum(cp.huber(An @ z - bn, 0.5))
            + cp.huber(cp.sum(z))
            + cp.sum(cp.logistic(z)) / z.shape[0]
            + 0.1 * cp.sum_squares(z)
            + 0.01 * np.trace(Wn) * cp.sum(z)
        )
        constraints = [z >= -0.3, z <= 0.3] if box else []
        cp.Problem(cp.Minimize(objective), constraints).solve(solver=cp.CLARABEL, **TIGHT)
        x.append(z.value)
    return torch.tensor(np.array(x))


@pytest.mark.parametrize("rule", ["pgd", "admm", "sqp"])
def test_robust_regression_with_the_new_atoms_matches_cvxpy_and_gradcheck(rule):
    box = rule != "pgd"  # ADMM needs a block to split; SQP takes the bounds as blocks
    constraints = "constraints:\n  - -0.3 <= x <= 0.3\n" if box else ""
    try:
        cls = foldgen.compile(_spec(rule, constraints))
    except SpecError as err:  # pragma: no cover - the message is the failure
        pytest.fail(str(err))
    A, b, W = _data()
    layer = cls(on_nonconvergence="raise")
    x = layer(A, b, W)
    assert bool(layer.info.converged.all())
    torch.testing.assert_close(x, _cvxpy(A, b, W, box), rtol=0, atol=1e-7)
    inputs = tuple(t[:1].clone().requires_grad_() for t in (A, b, W))
    assert torch.autograd.gradcheck(lambda *v: layer(*v), inputs, atol=1e-6, fast_mode=True)


def test_mean_is_symbolic_in_the_size_and_trace_needs_a_square_matrix():
    text = _spec("pgd").replace("mean(logistic(x))", "mean(logistic(x)) + mean(b) * 0")
    source = build_text(text, "<string>").source
    assert "/ n" in source and "/ 6" not in source and "0.1666" not in source  # from shapes
    with pytest.raises(SpecError, match=r"trace\(\) needs a square matrix, got \[m, n\]"):
        foldgen.compile(_spec("pgd").replace("trace(W)", "trace(A)"))
    with pytest.raises(SpecError, match=r"huber\(x, M\) needs M > 0, got -1"):
        foldgen.compile(_spec("pgd").replace("huber(A @ x - b, 0.5)", "huber(A @ x - b, -1)"))
    with pytest.raises(SpecError, match=r"huber\(\) takes 1 or 2 argument\(s\), got 3"):
        foldgen.compile(_spec("pgd").replace("huber(A @ x - b, 0.5)", "huber(A @ x, b, 1)"))
