"""The PSD cone X − M ⪰ 0 (``X >> M``), issue 11: its projection against CVXPY (symmetric,
non-symmetric, already-PSD and rank-deficient points), its Daleckii–Krein VJP against
gradcheck and central differences (distinct and repeated eigenvalues), how the parser, the
IR and the rules recognise or reject it, and ADMM layers with a PSD block against CVXPY."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

import foldgen
from foldgen import expr as E
from foldgen.errors import SpecError
from foldgen.ir import General, Psd, lower
from foldgen.parse import ExprError, Scope, parse_constraint, parse_expression
from foldgen.runtime import projections as PR
from foldgen.runtime.admm import _ADMM_PSD
from foldgen.runtime.sets import _PSD
from foldgen.spec import load_spec_text

F64 = torch.float64
TIGHT = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12}


def _sym(a):
    return 0.5 * (a + a.mT)


def _with_eigenvalues(lam, seed=0):
    """Q diag(λ) Qᵀ for a random orthogonal Q."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(lam), len(lam), generator=g, dtype=F64))
    return _sym((q * torch.tensor(lam, dtype=F64)) @ q.T)


def _flat(a):
    return a.reshape(*a.shape[:-2], -1)


def _cvxpy_projection(y, m):
    """argmin ‖X − Y‖_F over symmetric X with X − M ⪰ 0 (M symmetric)."""
    n = y.shape[-1]
    X = cp.Variable((n, n), symmetric=True)
    cp.Problem(cp.Minimize(cp.sum_squares(X - y.numpy())), [X - m.numpy() >> 0]).solve(
        solver=cp.CLARABEL, **TIGHT
    )
    return torch.tensor(X.value)


# ----------------------------------------------------------------------------------------
# The projection


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("offset", [False, True])
def test_projection_matches_cvxpy(symmetric, offset):
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        y = 2 * torch.randn(4, 4, generator=g, dtype=F64)
        y = _sym(y) if symmetric else y
        m = (
            _sym(torch.randn(4, 4, generator=g, dtype=F64))
            if offset
            else torch.zeros(4, 4, dtype=F64)
        )
        x = PR._proj_psd(_flat(y), _flat(m)).reshape(4, 4)
        torch.testing.assert_close(x, _cvxpy_projection(y, m), rtol=0, atol=1e-6)
        torch.testing.assert_close(x, x.T, rtol=0, atol=1e-12)
        assert torch.linalg.eigvalsh(x - m).min() >= -1e-12


def test_a_non_symmetric_point_is_projected_through_its_symmetric_part_exactly():
    g = torch.Generator().manual_seed(2)
    y = torch.randn(5, 5, generator=g, dtype=F64)
    m = torch.randn(5, 5, generator=g, dtype=F64)  # a non-symmetric offset: X − M symmetric
    x = PR._proj_psd(_flat(y), _flat(m)).reshape(5, 5)
    w = x - m
    torch.testing.assert_close(w, w.T, rtol=0, atol=1e-12)
    lam, vec = torch.linalg.eigh(_sym(y - m))
    torch.testing.assert_close(w, (vec * lam.clamp_min(0)) @ vec.T, rtol=0, atol=1e-12)
    # No other symmetric PSD W is nearer: Y − M − W is orthogonal to the cone's tangents.
    other = w + 0.1 * _with_eigenvalues([1.0, 0.5, 0.2, 0.1, 0.0], seed=3)
    assert torch.linalg.norm(m + other - y) > torch.linalg.norm(x - y)


def test_psd_points_are_fixed_and_rank_deficient_points_project_exactly():
    psd = _with_eigenvalues([3.0, 1.0, 0.5, 0.1])
    torch.testing.assert_close(PR._proj_psd(_flat(psd), torch.zeros(16, dtype=F64)), _flat(psd))
    singular = _with_eigenvalues([2.0, 1.0, 0.0, 0.0], seed=4)  # PSD of rank 2: fixed
    out = PR._proj_psd(_flat(singular), torch.zeros(16, dtype=F64)).reshape(4, 4)
    torch.testing.assert_close(out, singular, rtol=0, atol=1e-12)
    # A zero and negative eigenvalues (where Clarabel's tight settings fail): Q diag(λ) Qᵀ
    # projects to Q diag(max(λ, 0)) Qᵀ, known by construction.
    mixed = _with_eigenvalues([2.0, 0.0, -1.0, -3.0], seed=5)
    out = PR._proj_psd(_flat(mixed), torch.zeros(16, dtype=F64)).reshape(4, 4)
    expected = _with_eigenvalues([2.0, 0.0, 0.0, 0.0], seed=5)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert torch.linalg.matrix_rank(out, atol=1e-9) == 1


def test_projection_batches_broadcast_and_run_in_float32():
    g = torch.Generator().manual_seed(6)
    y = torch.randn(2, 3, 9, generator=g, dtype=F64)
    m = torch.randn(3, 9, generator=g, dtype=F64)
    x = PR._proj_psd(y, m)
    assert x.shape == (2, 3, 9)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(x[i, j], PR._proj_psd(y[i, j], m[j]))
    torch.testing.assert_close(PR._proj_psd(y.float(), m.float()).double(), x, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------
# The VJP


def _gradcheck(forward, vjp, inputs):
    """gradcheck an autograd.Function whose backward is the VJP under test."""

    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            ctx.save_for_backward(*args)
            return forward(*args)

        @staticmethod
        def backward(ctx, v):
            args = ctx.saved_tensors
            bars = vjp(v, *args)
            return tuple(b.sum_to_size(a.shape) for a, b in zip(args, bars))

    inputs = tuple(t.detach().clone().requires_grad_(True) for t in inputs)
    assert torch.autograd.gradcheck(Fn.apply, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_vjp_gradcheck_at_distinct_eigenvalues_with_non_symmetric_perturbations():
    g = torch.Generator().manual_seed(7)
    y = _flat(_with_eigenvalues([2.0, 0.7, -0.4, -1.5], seed=8))[None].repeat(2, 1)
    y = y + 0.05 * torch.randn(2, 16, generator=g, dtype=F64)  # not symmetric
    m = 0.1 * torch.randn(16, generator=g, dtype=F64)
    _gradcheck(PR._proj_psd, PR._proj_psd_vjp, (y, m))


def _central_jvp(fn, inputs, directions, h=1e-6):
    plus = fn(*(t + h * d for t, d in zip(inputs, directions)))
    minus = fn(*(t - h * d for t, d in zip(inputs, directions)))
    return (plus - minus) / (2 * h)


@pytest.mark.parametrize(
    "lam",
    [
        [2.0, 0.7, -0.4, -1.5],  # distinct
        [1.5, 1.5, 1.5, -1.0],  # a repeated positive eigenvalue
        [2.0, -1.0, -1.0, -1.0],  # a repeated negative one
        [1.0, 1.0, -1.0, -1.0],  # both
    ],
)
def test_vjp_is_the_adjoint_of_central_differences(lam):
    y = _flat(_with_eigenvalues(lam, seed=9))
    m = torch.zeros(16, dtype=F64)
    g = torch.Generator().manual_seed(10)
    v, dy, dm = (torch.randn(16, generator=g, dtype=F64) for _ in range(3))
    y_bar, m_bar = PR._proj_psd_vjp(v, y, m)
    assert bool(torch.isfinite(y_bar).all())
    jvp = _central_jvp(PR._proj_psd, (y, m), (dy, dm))
    torch.testing.assert_close(
        (y_bar * dy).sum() + (m_bar * dm).sum(), (v * jvp).sum(), rtol=1e-7, atol=1e-7
    )


def test_vjp_on_repeated_eigenvalues_of_one_sign_is_exact():
    """All positive: P is the identity near Y (y_bar = sym v); all negative: P = M (y_bar = 0)."""
    g = torch.Generator().manual_seed(11)
    v = torch.randn(9, generator=g, dtype=F64)
    m = torch.zeros(9, dtype=F64)
    y_bar, m_bar = PR._proj_psd_vjp(v, _flat(2 * torch.eye(3, dtype=F64)), m)
    torch.testing.assert_close(y_bar, _flat(_sym(v.reshape(3, 3))), rtol=0, atol=1e-15)
    torch.testing.assert_close(m_bar, v - y_bar)
    y_bar, m_bar = PR._proj_psd_vjp(v, _flat(-torch.eye(3, dtype=F64)), m)
    torch.testing.assert_close(y_bar, torch.zeros(9, dtype=F64), rtol=0, atol=0)
    torch.testing.assert_close(m_bar, v, rtol=0, atol=0)


def test_the_pgd_set_reports_violation_and_is_never_empty():
    m = torch.zeros(9, dtype=F64)
    x = _flat(torch.diag(torch.tensor([1.0, 2.0, -0.5], dtype=F64)))
    torch.testing.assert_close(_PSD.violation(x, (m,)), torch.tensor(0.25, dtype=F64))
    projected, ok = _PSD.project(x, torch.ones(9, dtype=F64), _PSD.prepare(m))
    assert bool(ok) and float(_PSD.violation(projected, (m,))) == 0.0
    skew = torch.tensor([[1.0, 0.5], [-0.5, 1.0]], dtype=F64)
    assert float(_PSD.violation(_flat(skew), (torch.zeros(4, dtype=F64),))) == 0.5


def test_the_admm_block_support_and_recession():
    m = _flat(torch.eye(2, dtype=F64))
    negative = _flat(-torch.eye(2, dtype=F64))
    torch.testing.assert_close(_ADMM_PSD.support(0, negative, (m,)), torch.tensor(-2.0, dtype=F64))
    assert _ADMM_PSD.support(0, -negative, (m,)) == float("inf")
    assert bool(_ADMM_PSD.nonempty((m,)))
    assert bool(_ADMM_PSD.recedes(-negative, (m,), 1e-9, 1.0))
    assert not bool(_ADMM_PSD.recedes(negative, (m,), 1e-9, 1.0))


# ----------------------------------------------------------------------------------------
# Syntax and recognition


def _scope():
    leaves = {
        "X": E.Leaf("X", "var", ("n", "n")),
        "Y": E.Leaf("Y", "var", ("n", "m")),
        "M": E.Leaf("M", "param", ("n", "n")),
    }
    return Scope({"n": 3, "m": 2}, leaves)


@pytest.mark.parametrize("text", ["X >> M", "M << X"])
def test_psd_syntax_parses_to_one_relation(text):
    (rel,) = parse_constraint(text, _scope())
    assert rel.op == ">>" and rel.lhs.name == "X" and rel.rhs.name == "M"


@pytest.mark.parametrize(
    "text, message",
    [
        ("Y >> 0", r"'>>' \(a PSD constraint\) needs square matrices, and 'Y' is \[n, m\]"),
        ("0 << Y", r"'<<' \(a PSD constraint\) needs square matrices, and 'Y' is \[n, m\]"),
        ("X >> 1", r"the scalar side of '>>' must be 0"),
        ("sum(X >> 0) <= 1", r"'>>' is a PSD constraint \('X >> M'\): it may only be a whole"),
    ],
)
def test_psd_syntax_errors_name_the_expression(text, message):
    with pytest.raises(ExprError, match=message):
        parse_constraint(text, _scope())


def test_psd_operator_is_rejected_in_an_expression():
    with pytest.raises(ExprError, match="may only be a whole constraint"):
        parse_expression("sum(X << M)", _scope())


def _spec(constraints, rule="pgd", variables="  X: {shape: [n, n]}", objective=None):
    objective = objective or "0.5 * sum_squares(X - A)"
    return f"""
foldgen: 1
name: probe
dims: {{n: 3}}
parameters:
  A: {{shape: [n, n]}}
  M: {{shape: [n, n]}}
  b: {{shape: [n]}}
variables:
{variables}
minimize: {objective}
constraints:
{constraints}
solver: {{rule: {rule}, max_iter: 20000, tol: 1.0e-12}}
backward: {{method: direct}}
"""


@pytest.mark.parametrize(
    "text, offset", [("X >> 0", None), ("X >> M", "M"), ("M << X", "M"), ("X - M >> 0", "M")]
)
def test_the_ir_recognises_one_matrix_variable_minus_data(text, offset):
    problem = lower(load_spec_text(_spec(f"  - {text}"), "probe.yaml"))
    (c,) = problem.constraints
    assert isinstance(c, Psd) and c.whole
    leaves = {p.name: p.leaf for p in problem.parameters}
    expected = leaves[offset] if offset else E.zero(("n", "n"))
    assert c.offset == expected


@pytest.mark.parametrize("text", ["2 * X >> 0", "X @ X >> M", "X.T >> M"])
def test_what_is_not_one_variable_minus_data_stays_general_and_pgd_says_so(text):
    problem = lower(load_spec_text(_spec(f"  - {text}"), "probe.yaml"))
    assert isinstance(problem.constraints[0], General)
    with pytest.raises(
        SpecError, match=r"constraints\[0\]: a PSD constraint needs one matrix variable"
    ):
        foldgen.compile(_spec(f"  - {text}"))
    with pytest.raises(
        SpecError, match=r"constraints\[0\]: a PSD constraint needs one matrix variable"
    ):
        foldgen.compile(_spec(f"  - {text}", rule="admm"))


def test_sqp_rejects_psd_constraints_where_they_are():
    for text in ("X >> M", "2 * X >> M"):
        with pytest.raises(
            SpecError,
            match=r"constraints\[1\]: rule 'sqp' has no PSD constraints; use pgd or admm",
        ):
            foldgen.compile(_spec(f"  - X <= 1\n  - {text}", rule="sqp"))


def test_pgd_needs_the_psd_matrix_to_be_the_whole_state_and_alone():
    two = "  t: {shape: [n]}\n  X: {shape: [n, n]}"
    objective = "0.5 * sum_squares(X - A) + 0.5 * sum_squares(t - b)"
    with pytest.raises(
        SpecError, match=r"constraints\[0\]: rule 'pgd' projects onto a PSD cone only"
    ):
        foldgen.compile(_spec("  - X >> M", variables=two, objective=objective))
    with pytest.raises(SpecError, match=r"no closed-form projection onto the intersection"):
        foldgen.compile(_spec("  - X >> M\n  - X <= 1"))


# ----------------------------------------------------------------------------------------
# Layers


def _data(seed=13, batch=2):
    g = torch.Generator().manual_seed(seed)
    A = _sym(2 * torch.randn(batch, 3, 3, generator=g, dtype=F64))
    M = _sym(0.3 * torch.randn(batch, 3, 3, generator=g, dtype=F64))
    C = 0.3 * torch.randn(batch, 3, 3, generator=g, dtype=F64)
    b = torch.randn(batch, 3, generator=g, dtype=F64)
    return A, M, C, b


def test_pgd_layer_matches_cvxpy_with_an_offset_and_gradcheck():
    layer = foldgen.compile(_spec("  - X >> M"))(on_nonconvergence="raise")
    A, M, _, _ = _data()
    X = layer(A, M, torch.zeros(3, dtype=F64))
    for e in range(2):
        torch.testing.assert_close(X[e], _cvxpy_projection(A[e], M[e]), rtol=0, atol=1e-6)
    inputs = (A[:1].clone().requires_grad_(), M[:1].clone().requires_grad_())
    assert torch.autograd.gradcheck(
        lambda a, m: layer(a, m, torch.zeros(3, dtype=F64)), inputs, atol=1e-6
    )


def test_admm_psd_with_a_bound_and_a_linear_term_matches_cvxpy_and_gradcheck():
    """min ½‖X − A‖² + ⟨C, X⟩ s.t. X ⪰ 0, X ≤ 0.5 elementwise: two blocks on the state."""
    spec = _spec(
        "  - X >> 0\n  - X <= 0.5",
        rule="admm",
        objective="0.5 * sum_squares(X - A) + sum(C * X)",
    ).replace("  b: {shape: [n]}", "  C: {shape: [n, n]}")
    layer = foldgen.compile(spec)(on_nonconvergence="raise")
    A, M, C, _ = _data()
    X = layer(A, M, C)
    assert bool(layer.info.converged.all())
    for e in range(2):
        Z = cp.Variable((3, 3), symmetric=True)
        objective = 0.5 * cp.sum_squares(Z - A[e].numpy()) + cp.sum(cp.multiply(C[e].numpy(), Z))
        cp.Problem(cp.Minimize(objective), [Z >> 0, Z <= 0.5]).solve(solver=cp.CLARABEL, **TIGHT)
        np.testing.assert_allclose(X[e].numpy(), Z.value, atol=1e-6)
    inputs = (A[:1].clone().requires_grad_(), C[:1].clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda a, c: layer(a, M[:1], c), inputs, atol=1e-6)


def test_admm_psd_on_one_block_of_two_variables_matches_cvxpy_and_gradcheck():
    two = "  t: {shape: [n]}\n  X: {shape: [n, n]}"
    objective = "0.5 * sum_squares(X - A) + 0.5 * sum_squares(t - b)"
    cls = foldgen.compile(
        _spec("  - M << X\n  - t >= 0", rule="admm", variables=two, objective=objective)
    )
    layer = cls(on_nonconvergence="raise")
    A, M, _, b = _data(seed=14)
    t, X = layer(A, M, b)
    for e in range(2):
        torch.testing.assert_close(X[e], _cvxpy_projection(A[e], M[e]), rtol=0, atol=1e-6)
        torch.testing.assert_close(t[e], b[e].clamp_min(0), rtol=0, atol=1e-9)
    inputs = tuple(v[:1].clone().requires_grad_() for v in (A, M, b))
    assert torch.autograd.gradcheck(lambda *v: layer(*v), inputs, atol=1e-6)


def test_the_size_of_a_square_variable_reads_back():
    """sympy writes n·n as n**2: the size arithmetic reads it (and nothing but small powers)."""
    from foldgen import dims

    size = dims.product(("n", "n"))
    assert size == "n**2" and dims.evaluate(dims.add(size, "n"), {"n": 3}) == 12
    with pytest.raises(dims.DimError):
        dims.canonical("n**100")
    with pytest.raises(dims.DimError):
        dims.canonical("n**m")
