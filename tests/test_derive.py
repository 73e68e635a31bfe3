"""Symbolic derivatives (foldgen.derive) checked by their numbers.

Every objective of the table is parsed from the spec language, differentiated symbolically
(∇ₓf, the Hessian–vector product ∇²f u and the mixed products (∂∇f/∂θ)ᵀu for every parameter),
printed as batched torch code and evaluated in float64. The references are independent: a
hand-written torch version of each objective, ``torch.autograd`` through the printed objective,
and central finite differences. Together the table covers every node type of the IR and every
elementwise function of the spec.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from ir_helpers import (
    assert_close,
    compile_function,
    leaf,
    random_data,
    scope,
    source_of,
    symmetric_part,
)

from foldgen import expr as E
from foldgen.derive import derivative, gradient, jacobian_diagonal, vjp
from foldgen.functions import ELEMENTWISE
from foldgen.parse import parse_expression
from foldgen.runtime import core as runtime_core

DIMS = {"n": 4, "m": 3}
N, M = DIMS["n"], DIMS["m"]

x = leaf("x", ("n",), "var")
u = leaf("u", ("n",), "aux")
X = leaf("X", ("m", "n"), "var")
U = leaf("U", ("m", "n"), "aux")
c = leaf("c", ("n",))
w = leaf("w", ("m",))
A = leaf("A", ("m", "n"))
B = leaf("B", ("n", "n"))
S = leaf("S", ("n", "n"), props={"symmetric"})
s = leaf("s")
k = leaf("k")
PARAMS = [c, w, A, B, S, s, k]
SCOPE = scope([x, X, *PARAMS], DIMS)
VARS = {"x": (x, u), "X": (X, U)}


# --------------------------------------------------------------------------- references

ein = torch.einsum


def mv(a, v):
    return ein("...ij,...j->...i", a, v)


def vm(v, a):
    return ein("...i,...ij->...j", v, a)


def dot(a, b):
    return (a * b).sum(-1)


def msum(t):
    return t.sum((-2, -1))


def lse(v):
    return torch.logsumexp(v, -1)


def dg(v):
    return torch.diag_embed(v)


@dataclass(frozen=True)
class Case:
    id: str
    text: str
    ref: Callable[[dict], torch.Tensor]
    var: str = "x"
    positive: tuple[str, ...] = ()


def C(id, text, ref, var="x", positive=()):  # a table row
    return Case(id, text, ref, var, tuple(positive))


CASES = [
    C(
        "arith",
        "c @ x + s * sum(x * x) - sum(x / 2)",
        lambda d: dot(d["c"], d["x"]) + d["s"] * (d["x"] ** 2).sum(-1) - (d["x"] / 2).sum(-1),
    ),
    C("sub_pow", "sum((A @ x - w) ** 2)", lambda d: ((mv(d["A"], d["x"]) - d["w"]) ** 2).sum(-1)),
    C(
        "pow_const",
        "sum(x ** 3) + sum(x ** -1) * s + sum((x ** 2) ** 0.5)",
        lambda d: (d["x"] ** 3).sum(-1) + (1 / d["x"]).sum(-1) * d["s"] + d["x"].sum(-1),
        positive=("x",),
    ),
    C(
        "pow_of_even_pow",
        "sum((x ** 2) ** 0.5) + sum((x ** 2) ** 1.5) * s + sum((x ** 4) ** 0.5)",
        lambda d: (
            d["x"].abs().sum(-1) + (d["x"].abs() ** 3).sum(-1) * d["s"] + (d["x"] ** 2).sum(-1)
        ),
    ),
    C(
        "pow_fractional",
        "sum(x ** 1.5) + sum(x ** 0.5) * s + c @ x ** -0.5",
        lambda d: (
            (d["x"] ** 1.5).sum(-1) + d["x"].sqrt().sum(-1) * d["s"] + dot(d["c"], d["x"] ** -0.5)
        ),
        positive=("x",),
    ),
    C(
        "pow_param_exponent",
        "sum(x ** s) + s ** 2 * sum(x) + sum(c * x) ** 3",
        lambda d: (
            (d["x"] ** d["s"][..., None]).sum(-1)
            + d["s"] ** 2 * d["x"].sum(-1)
            + dot(d["c"], d["x"]) ** 3
        ),
        positive=("x", "s"),
    ),
    C(
        "div",
        "sum(x / (1 + x * x)) + s / sum(x * x + 1) + sum(c / (2 + x * x))",
        lambda d: (
            (d["x"] / (1 + d["x"] ** 2)).sum(-1)
            + d["s"] / (d["x"] ** 2 + 1).sum(-1)
            + (d["c"] / (2 + d["x"] ** 2)).sum(-1)
        ),
    ),
    C(
        "matrix_vector",
        "w @ (A @ x) + sum(A @ x) + sum(exp(B @ x) * c)",
        lambda d: (
            dot(d["w"], mv(d["A"], d["x"]))
            + mv(d["A"], d["x"]).sum(-1)
            + (torch.exp(mv(d["B"], d["x"])) * d["c"]).sum(-1)
        ),
    ),
    C(
        "vector_matrix",
        "(x @ A.T) @ w + c @ B @ x + sum(x @ B) + sum(sin(x @ B) * c)",
        lambda d: (
            dot(vm(d["x"], d["A"].mT), d["w"])
            + dot(vm(d["c"], d["B"]), d["x"])
            + vm(d["x"], d["B"]).sum(-1)
            + (torch.sin(vm(d["x"], d["B"])) * d["c"]).sum(-1)
        ),
    ),
    C(
        "matrix_matrix",
        "x @ (B @ B.T) @ x + sum(A @ B @ x) + w @ (A @ B.T) @ c + sum(A @ (B * s))",
        lambda d: (
            ein("...i,...ij,...j->...", d["x"], d["B"] @ d["B"].mT, d["x"])
            + mv(d["A"] @ d["B"], d["x"]).sum(-1)
            + ein("...i,...ij,...j->...", d["w"], d["A"] @ d["B"].mT, d["c"])
            + msum(d["A"] @ (d["B"] * d["s"][..., None, None]))
        ),
    ),
    C(
        "vector_vector",
        "dot(c, x) * dot(x, x) + x @ c + tanh(x @ x)",
        lambda d: (
            dot(d["c"], d["x"]) * dot(d["x"], d["x"])
            + dot(d["x"], d["c"])
            + torch.tanh(dot(d["x"], d["x"]))
        ),
    ),
    C(
        "transpose",
        "sum(A.T @ w * x) + x.T @ c + sum((A.T).T @ x) + sum(B.T @ x * x)",
        lambda d: (
            (vm(d["w"], d["A"]) * d["x"]).sum(-1)
            + dot(d["x"], d["c"])
            + mv(d["A"], d["x"]).sum(-1)
            + (vm(d["x"], d["B"]) * d["x"]).sum(-1)
        ),
    ),
    C(
        "quad_form",
        "quad_form(x, B) + quad_form(c, B) * s + x @ B @ c",
        lambda d: (
            ein("...i,...ij,...j->...", d["x"], d["B"], d["x"])
            + ein("...i,...ij,...j->...", d["c"], d["B"], d["c"]) * d["s"]
            + ein("...i,...ij,...j->...", d["x"], d["B"], d["c"])
        ),
    ),
    C(
        "quad_form_symmetric",
        "0.5 * quad_form(x, S) + c @ x + x @ S @ c * s",
        lambda d: (
            0.5 * ein("...i,...ij,...j->...", d["x"], d["S"], d["x"])
            + dot(d["c"], d["x"])
            + ein("...i,...ij,...j->...", d["x"], d["S"], d["c"]) * d["s"]
        ),
    ),
    C(
        "sum_squares",
        "sum_squares(A @ x - w) + s * sum_squares(x) + sum_squares(B)",
        lambda d: (
            ((mv(d["A"], d["x"]) - d["w"]) ** 2).sum(-1)
            + d["s"] * (d["x"] ** 2).sum(-1)
            + msum(d["B"] ** 2)
        ),
    ),
    C(
        "norm2",
        "s * norm2(x - c) + norm2(A @ x) + norm2(x) ** 2",
        lambda d: (
            d["s"] * torch.linalg.vector_norm(d["x"] - d["c"], dim=-1)
            + torch.linalg.vector_norm(mv(d["A"], d["x"]), dim=-1)
            + (d["x"] ** 2).sum(-1)
        ),
    ),
    C(
        "norm1",
        "norm1(A @ x - w) + s * norm1(x)",
        lambda d: (mv(d["A"], d["x"]) - d["w"]).abs().sum(-1) + d["s"] * d["x"].abs().sum(-1),
    ),
    C(
        "exp",
        "sum(exp(s * x)) + w @ exp(A @ x)",
        lambda d: (
            torch.exp(d["s"][..., None] * d["x"]).sum(-1)
            + dot(d["w"], torch.exp(mv(d["A"], d["x"])))
        ),
    ),
    C(
        "log",
        "sum(log(x)) * s + log(sum(x * c)) + c @ log(x)",
        lambda d: (
            torch.log(d["x"]).sum(-1) * d["s"]
            + torch.log(dot(d["x"], d["c"]))
            + dot(d["c"], torch.log(d["x"]))
        ),
        positive=("x", "c"),
    ),
    C(
        "sqrt",
        "c @ sqrt(x) + sqrt(sum(x)) * s",
        lambda d: dot(d["c"], d["x"].sqrt()) + d["x"].sum(-1).sqrt() * d["s"],
        positive=("x",),
    ),
    C(
        "sin_cos",
        "sum(sin(A @ x) * w) + c @ cos(x) + cos(s) * sum(sin(x))",
        lambda d: (
            (torch.sin(mv(d["A"], d["x"])) * d["w"]).sum(-1)
            + dot(d["c"], torch.cos(d["x"]))
            + torch.cos(d["s"]) * torch.sin(d["x"]).sum(-1)
        ),
    ),
    C(
        "tanh",
        "sum(tanh(c * x)) + s * sum(tanh(A @ x))",
        lambda d: (
            torch.tanh(d["c"] * d["x"]).sum(-1) + d["s"] * torch.tanh(mv(d["A"], d["x"])).sum(-1)
        ),
    ),
    C(
        "sigmoid",
        "c @ sigmoid(x) + w @ sigmoid(A @ x) + sigmoid(s) * sum(x)",
        lambda d: (
            dot(d["c"], torch.sigmoid(d["x"]))
            + dot(d["w"], torch.sigmoid(mv(d["A"], d["x"])))
            + torch.sigmoid(d["s"]) * d["x"].sum(-1)
        ),
    ),
    C(
        "softplus",
        "sum(softplus(A @ x)) - w @ (A @ x) + softplus(s) * sum(x)",
        lambda d: (
            torch.nn.functional.softplus(mv(d["A"], d["x"])).sum(-1)
            - dot(d["w"], mv(d["A"], d["x"]))
            + torch.nn.functional.softplus(d["s"]) * d["x"].sum(-1)
        ),
    ),
    C(
        "square",
        "sum(square(x - c)) + s * sum(square(A @ x)) + square(s) * sum(x)",
        lambda d: (
            ((d["x"] - d["c"]) ** 2).sum(-1)
            + d["s"] * (mv(d["A"], d["x"]) ** 2).sum(-1)
            + d["s"] ** 2 * d["x"].sum(-1)
        ),
    ),
    C(
        "abs",
        "c @ abs(x) + w @ abs(A @ x) + abs(s) * sum(x)",
        lambda d: (
            dot(d["c"], d["x"].abs())
            + dot(d["w"], mv(d["A"], d["x"]).abs())
            + d["s"].abs() * d["x"].sum(-1)
        ),
    ),
    C(
        "entr",
        "s * sum(entr(x)) + c @ x",
        lambda d: d["s"] * torch.special.entr(d["x"]).sum(-1) + dot(d["c"], d["x"]),
        positive=("x",),
    ),
    C(
        "log_sum_exp",
        "log_sum_exp(A @ x + w) + s * log_sum_exp(x) + log_sum_exp(c * x)",
        lambda d: lse(mv(d["A"], d["x"]) + d["w"]) + d["s"] * lse(d["x"]) + lse(d["c"] * d["x"]),
    ),
    C(
        "diag_of_vector",
        "x @ diag(c) @ x + diag(c) @ x @ c + sum(diag(x) @ c)",
        lambda d: (
            ein("...i,...ij,...j->...", d["x"], dg(d["c"]), d["x"])
            + dot(mv(dg(d["c"]), d["x"]), d["c"])
            + mv(dg(d["x"]), d["c"]).sum(-1)
        ),
    ),
    C(
        "diag_of_matrix",
        "sum(diag(B) * x) + diag(B @ diag(x)) @ c + sum(diag(A.T @ A) * x)",
        lambda d: (
            (d["B"].diagonal(0, -2, -1) * d["x"]).sum(-1)
            + dot((d["B"] @ dg(d["x"])).diagonal(0, -2, -1), d["c"])
            + ((d["A"].mT @ d["A"]).diagonal(0, -2, -1) * d["x"]).sum(-1)
        ),
    ),
    C(
        "matrix_valued_nodes",
        "sum(diag(x) @ B @ diag(x)) + sum(exp(A @ diag(x))) + sum(B * B.T) * sum(x)",
        lambda d: (
            msum(dg(d["x"]) @ d["B"] @ dg(d["x"]))
            + msum(torch.exp(d["A"] @ dg(d["x"])))
            + msum(d["B"] * d["B"].mT) * d["x"].sum(-1)
        ),
    ),
    C(
        "ones_eye_dims",
        "k / n * sum(x) + ones(n) @ x * s + sum(eye(n) @ x * c) + sum(x) / m"
        " + ones(m) @ A @ x + sum(ones(m, n) @ x) + sum(eye(n) * B) * sum(x) + x @ ones(n) * n",
        lambda d: (
            d["k"] / N * d["x"].sum(-1)
            + d["x"].sum(-1) * d["s"]
            + (d["x"] * d["c"]).sum(-1)
            + d["x"].sum(-1) / M
            + mv(d["A"], d["x"]).sum(-1)
            + M * d["x"].sum(-1)
            + d["B"].diagonal(0, -2, -1).sum(-1) * d["x"].sum(-1)
            + N * d["x"].sum(-1)
        ),
    ),
    C(
        "dims_in_functions",
        "sum(x) * log(n) + sqrt(m) * c @ x + n ** 2 * x @ x + sum(exp(x / n))",
        lambda d: (
            d["x"].sum(-1) * torch.log(torch.tensor(N, dtype=torch.float64))
            + M**0.5 * dot(d["c"], d["x"])
            + N**2 * dot(d["x"], d["x"])
            + torch.exp(d["x"] / N).sum(-1)
        ),
    ),
    C(
        "scalar_broadcast",
        "sum((s + x) ** 2) + sum(s - x) * s + sum(2 * x + 1) + sum(x * s + c) + sum(A + s)",
        lambda d: (
            ((d["s"][..., None] + d["x"]) ** 2).sum(-1)
            + (d["s"][..., None] - d["x"]).sum(-1) * d["s"]
            + (2 * d["x"] + 1).sum(-1)
            + (d["x"] * d["s"][..., None] + d["c"]).sum(-1)
            + msum(d["A"])
            + M * N * d["s"]
        ),
    ),
    C(
        "unary_minus",
        "-sum(-x * c) - (-s) * sum(x) + -(x @ x) - -sum(exp(-x))",
        lambda d: (
            (d["x"] * d["c"]).sum(-1)
            + d["s"] * d["x"].sum(-1)
            - dot(d["x"], d["x"])
            + torch.exp(-d["x"]).sum(-1)
        ),
    ),
    C(
        "product_of_sums",
        "sum(exp(x)) * sum(c * x) + sum(x) * sum(x)",
        lambda d: torch.exp(d["x"]).sum(-1) * dot(d["c"], d["x"]) + d["x"].sum(-1) ** 2,
    ),
    C(
        "nested",
        "norm2(sin(x) * c + A.T @ w) * tanh(s) + log_sum_exp(softplus(A @ x) * w)"
        " + sigmoid(sum(tanh(x)))",
        lambda d: (
            torch.linalg.vector_norm(torch.sin(d["x"]) * d["c"] + vm(d["w"], d["A"]), dim=-1)
            * torch.tanh(d["s"])
            + lse(torch.nn.functional.softplus(mv(d["A"], d["x"])) * d["w"])
            + torch.sigmoid(torch.tanh(d["x"]).sum(-1))
        ),
    ),
    C(
        "matrix_variable",
        "sum(sigmoid(X) * A) + w @ X @ c + sum_squares(X.T @ w) + s * sum(X @ B * X)"
        " + log_sum_exp(X @ c)",
        lambda d: (
            msum(torch.sigmoid(d["X"]) * d["A"])
            + ein("...i,...ij,...j->...", d["w"], d["X"], d["c"])
            + (vm(d["w"], d["X"]) ** 2).sum(-1)
            + d["s"] * msum(d["X"] @ d["B"] * d["X"])
            + lse(mv(d["X"], d["c"]))
        ),
        var="X",
    ),
    C(
        "matrix_variable_functions",
        "sum(exp(X) * A) * s + sum(diag(X.T @ X)) + w @ tanh(X @ B) @ c + sum(X.T)"
        " + sum(entr(X)) + quad_form(w, X @ X.T)",
        lambda d: (
            msum(torch.exp(d["X"]) * d["A"]) * d["s"]
            + (d["X"] ** 2).sum((-2, -1))
            + ein("...i,...ij,...j->...", d["w"], torch.tanh(d["X"] @ d["B"]), d["c"])
            + msum(d["X"])
            + msum(torch.special.entr(d["X"]))
            + ein("...i,...ij,...j->...", d["w"], d["X"] @ d["X"].mT, d["w"])
        ),
        var="X",
        positive=("X",),
    ),
]
CASE_IDS = [case.id for case in CASES]


@dataclass
class Derived:
    args: list
    wrt: list
    source: str
    fn: Callable
    f_fn: Callable
    jdiag: E.Expr | None
    g_fn: Callable


@functools.cache
def derived(case_id: str) -> Derived:
    """Parse, differentiate and print one case (once per session)."""
    case = next(cs for cs in CASES if cs.id == case_id)
    var, aux = VARS[case.var]
    f = parse_expression(case.text, SCOPE)
    assert f.shape == ()
    g = gradient(f, var)
    assert g.shape == var.shape
    wrt = [var, *PARAMS]
    hv = vjp([(g, aux)], wrt)
    assert list(hv) == wrt
    for z in wrt:
        assert hv[z].shape == z.shape, z.name
    args = [var, aux, *PARAMS]
    source, fn = compile_function("derived", args, [f, g, *hv.values()])
    _, f_fn = compile_function("objective", args, [f])
    _, g_fn = compile_function("grad", args, [g])
    return Derived(args, wrt, source, fn, f_fn, jacobian_diagonal(g, var), g_fn)


def case_data(case: Case, batch: tuple[int, ...], seed: int = 0) -> dict[str, torch.Tensor]:
    var, aux = VARS[case.var]
    data = random_data([var, aux, *PARAMS], DIMS, batch, seed=seed, positive=case.positive)
    for name in [var.name, *(p.name for p in PARAMS)]:
        data[name].requires_grad_(True)
    return data


def autograd_reference(d: Derived, data: dict[str, torch.Tensor]):
    """f, ∇ₓf and the vjp of ∇ₓf with u, by autograd through the printed objective."""
    var, aux = d.args[0], d.args[1]
    f = d.f_fn(*(data[a.name] for a in d.args))[0]
    (g,) = torch.autograd.grad(f.sum(), [data[var.name]], create_graph=True)
    inputs = [data[z.name] for z in d.wrt]
    if g.requires_grad:
        hv = torch.autograd.grad(g, inputs, grad_outputs=data[aux.name], allow_unused=True)
    else:
        hv = (None,) * len(inputs)
    hv = [torch.zeros_like(t) if h is None else h for h, t in zip(hv, inputs)]
    return f, g, hv


@pytest.mark.parametrize("batch", [(), (3,)], ids=["unbatched", "batched"])
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_derivatives_match_autograd(case_id, batch):
    case = next(cs for cs in CASES if cs.id == case_id)
    d = derived(case_id)
    data = case_data(case, batch)
    with torch.no_grad():
        f, g, *hv = d.fn(*(data[a.name] for a in d.args))
        expected_f = case.ref({n: t.detach() for n, t in data.items()})
    assert f.shape == batch and f.dtype == torch.float64
    assert_close(f, expected_f, what=f"{case_id}: objective vs hand-written torch")
    _, g_ref, hv_ref = autograd_reference(d, data)
    assert_close(g, g_ref.detach(), what=f"{case_id}: gradient")
    for z, got, want in zip(d.wrt, hv, hv_ref):
        if z.properties & {"symmetric"}:
            # A symmetric parameter's derivative is defined on symmetric directions only.
            got, want = symmetric_part(got), symmetric_part(want)
        name = "Hessian-vector product" if z.kind == "var" else f"(d grad / d {z.name})^T u"
        assert_close(got, want.detach(), what=f"{case_id}: {name}")


# --------------------------------------------------------------------------- finite differences

FD_CASES = [
    "arith",
    "pow_param_exponent",
    "matrix_matrix",
    "quad_form_symmetric",
    "norm2",
    "entr",
    "log_sum_exp",
    "matrix_valued_nodes",
    "nested",
    "matrix_variable",
]


@pytest.mark.parametrize("case_id", FD_CASES)
def test_derivatives_match_central_differences(case_id):
    """f(x ± h d), ∇f(x ± h u) and ∇f(θ ± h Δ) by central differences, with nothing but the
    printed objective and gradient functions."""
    case = next(cs for cs in CASES if cs.id == case_id)
    d = derived(case_id)
    data = {k_: t.detach() for k_, t in case_data(case, (2,), seed=1).items()}
    var, aux = d.args[0], d.args[1]
    with torch.no_grad():
        _, g, *hv = d.fn(*(data[a.name] for a in d.args))
    gen = torch.Generator().manual_seed(7)
    h = 1e-5

    def shifted(name, delta, sign, fn):
        moved = dict(data)
        moved[name] = data[name] + sign * h * delta
        return fn(*(moved[a.name] for a in d.args))[0]

    # ⟨∇f, δ⟩ against the objective's central difference.
    delta = torch.randn(data[var.name].shape, generator=gen, dtype=torch.float64)
    fd = (shifted(var.name, delta, 1, d.f_fn) - shifted(var.name, delta, -1, d.f_fn)) / (2 * h)
    core = tuple(range(-var.rank, 0))
    assert_close((g * delta).sum(core), fd, rtol=1e-6, what="gradient vs central differences")
    # ∇²f u and (∂∇f/∂θ)ᵀu against differences of the printed gradient.
    for z, got in zip(d.wrt, hv):
        if z.kind == "var":
            dz = data[aux.name]
        else:
            dz = torch.randn(data[z.name].shape, generator=gen, dtype=torch.float64)
            if z.properties & {"symmetric"}:
                dz = symmetric_part(dz)
        dg_ = (shifted(z.name, dz, 1, d.g_fn) - shifted(z.name, dz, -1, d.g_fn)) / (2 * h)
        if z.kind == "var":
            assert_close(got, dg_, rtol=1e-6, what="Hessian-vector product vs differences")
        else:
            fd_value = (dg_ * data[aux.name]).sum(core)
            zcore = tuple(range(-z.rank, 0))
            got_value = (got * dz).sum(zcore) if z.rank else got * dz
            assert_close(got_value, fd_value, rtol=1e-6, what=f"mixed product for {z.name}")


# --------------------------------------------------------------------------- elementwise rules


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise_derivative_matches_autograd(name):
    """derivative(name, a) printed and evaluated equals autograd of the torch op, and so does
    the derivative of that derivative (the second derivative the HVP needs)."""
    fn = ELEMENTWISE[name]
    a = leaf("a", ("n",), "var")
    d1 = derivative(name, a)
    d2 = gradient(E.sum_(d1), a)  # elementwise, so the gradient of Σ f'(a) is f''(a)
    _, printed = compile_function("d", [a], [d1, d2])
    gen = torch.Generator().manual_seed(3)
    t = torch.randn(50, N, generator=gen, dtype=torch.float64)
    if name in ("log", "sqrt", "entr"):
        t = t.abs() + 0.1
    t.requires_grad_(True)
    # The table's own torch spelling (a runtime definition, for huber's family).
    op = eval(fn.torch, {"torch": torch, **vars(runtime_core)})
    value = op(t)
    if value.requires_grad:
        (g1,) = torch.autograd.grad(value.sum(), t, create_graph=True)
    else:  # piecewise constant (huber's curvature): derivative zero almost everywhere
        g1 = torch.zeros_like(t)
    g2 = torch.autograd.grad(g1.sum(), t, allow_unused=True)[0] if g1.requires_grad else None
    got1, got2 = printed(t.detach())
    assert_close(got1, g1.detach(), what=f"{name}'")
    assert_close(got2, torch.zeros_like(t) if g2 is None else g2, what=f"{name}''")


# --------------------------------------------------------------------------- jacobian_diagonal


def jacobian_diag_reference(d: Derived, data) -> torch.Tensor:
    var = d.args[0]
    others = [data[a.name].detach() for a in d.args[1:]]
    xv = data[var.name].detach()
    jac = torch.autograd.functional.jacobian(lambda v: d.g_fn(v, *others)[0], xv)
    return jac.reshape(xv.numel(), xv.numel()).diagonal().reshape(xv.shape)


JDIAG_CASES = [cid for cid in CASE_IDS if derived(cid).jdiag is not None]


@pytest.mark.parametrize("case_id", JDIAG_CASES)
def test_jacobian_diagonal_is_exact_where_given(case_id):
    case = next(cs for cs in CASES if cs.id == case_id)
    d = derived(case_id)
    data = case_data(case, ())
    _, jd_fn = compile_function("jdiag", d.args, [d.jdiag])
    with torch.no_grad():
        got = jd_fn(*(data[a.name] for a in d.args))[0]
    assert_close(got, jacobian_diag_reference(d, data), what=f"{case_id}: diag of Jacobian")


def test_jacobian_diagonal_covers_the_structures_it_promises():
    """The cases whose gradient is elementwise, a scalar broadcast or a constant matrix times
    the variable give an expression; the table's results are checked numerically above."""
    expected = {
        "arith",
        "entr",
        "log",
        "quad_form",
        "quad_form_symmetric",
        "product_of_sums",
        "scalar_broadcast",
    }
    given = {cs.id for cs in CASES if derived(cs.id).jdiag is not None}
    assert expected <= given


def _jdiag_of(text: str, var=x, leaves=()):
    sc = scope([var, *PARAMS, *leaves], DIMS)
    return jacobian_diagonal(gradient(parse_expression(text, sc), var), var)


def test_jacobian_diagonal_none_for_a_non_square_inner_jacobian():
    Xp = leaf("X", ("m", "n"))
    wv = leaf("w", ("n",), "var")
    sc = scope([Xp, wv], DIMS)
    g = gradient(parse_expression("sum(softplus(X @ w))", sc), wv)
    assert jacobian_diagonal(g, wv) is None


def test_jacobian_diagonal_of_quadratic_is_diag_q():
    Q = leaf("Q", ("n", "n"), props={"symmetric"})
    assert _jdiag_of("0.5 * x @ Q @ x", leaves=[Q]) == E.diag_part(Q)
    assert _jdiag_of("0.5 * x @ Q @ x + c @ x", leaves=[Q]) == E.DiagPart(Q)
    # Without symmetry: ∇f = ½(B + Bᵀ)x, whose Jacobian has the same diagonal diag(B).
    assert _jdiag_of("0.5 * x @ B @ x") == E.DiagPart(B)


def test_jacobian_diagonal_of_entropy_and_exp_sums():
    eps = leaf("eps")
    jd = _jdiag_of("eps * sum(entr(x)) + c @ x", leaves=[eps])
    assert jd is not None
    _, fn = compile_function("jd", [x, eps], [jd])
    xv = torch.rand(5, N, dtype=torch.float64) + 0.5
    ev = torch.rand(5, dtype=torch.float64) + 0.5
    assert_close(fn(xv, ev)[0], -ev[:, None] / xv, what="diag of eps * entr''")
    jd = _jdiag_of("sum(exp(x)) * sum(c * x)")
    assert jd is not None
    _, fn = compile_function("jd", [x, c], [jd])
    xv, cv = torch.randn(N, dtype=torch.float64), torch.randn(N, dtype=torch.float64)
    # ∇f = e^x (c·x) + c Σe^x; the Jacobian's diagonal is e^x (c·x) + 2 c e^x.
    expected = xv.exp() * (cv @ xv) + 2 * cv * xv.exp()
    assert_close(fn(xv, cv)[0], expected, what="diag for sum(exp(x)) * sum(c * x)")


JDIAG_EXTRA = [
    ("sum(x * (B @ x))", True),  # B x + Bᵀ x: diag 2 diag(B)
    ("sum(exp(x) * (B @ x))", True),  # e^x ⊙ Bx + Bᵀ e^x
    ("s * sum(x) ** 2 + sum(x * x * x)", True),  # a scalar broadcast plus an elementwise term
    ("sum(sin(B @ x))", False),  # Bᵀ diag(cos Bx) B
    ("c @ x + log_sum_exp(x)", False),
    ("norm2(x - c)", True),
    ("sum(x @ B * x) + sum(tanh(x)) * s", True),
]


@pytest.mark.parametrize("text,given", JDIAG_EXTRA, ids=[t for t, _ in JDIAG_EXTRA])
def test_jacobian_diagonal_more_structures(text, given):
    g = gradient(parse_expression(text, SCOPE), x)
    jd = jacobian_diagonal(g, x)
    assert (jd is not None) == given
    if jd is None:
        return
    args = [x, *PARAMS]
    _, g_fn = compile_function("g", args, [g])
    _, jd_fn = compile_function("jd", args, [jd])
    data = {k_: t.detach() for k_, t in case_data(CASES[0], ()).items()}
    rest = [data[p.name] for p in PARAMS]
    jac = torch.autograd.functional.jacobian(lambda v: g_fn(v, *rest)[0], data["x"])
    assert_close(jd_fn(data["x"], *rest)[0], jac.diagonal(), what=text)


def test_jacobian_diagonal_gives_up_through_dense_couplings():
    assert _jdiag_of("log_sum_exp(x)") is None  # softmax: not an elementwise structure
    assert _jdiag_of("sum(exp(B @ x))") is None  # Bᵀ diag(e^{Bx}) B: the inner B is not diagonal


# --------------------------------------------------------------------------- simplification


def test_quadratic_gradient_collects_like_terms():
    Q = leaf("Q", ("n", "n"), props={"symmetric"})
    sc = scope([x, Q, c], DIMS)
    g = gradient(parse_expression("0.5 * x @ Q @ x + c @ x", sc), x)
    assert g == E.add(c, E.matmul(Q, x))
    source = source_of("grad", [x, Q, c], [g])
    assert source.splitlines()[-1] == "    return c + _mv(Q, x)"


def test_zero_cotangents_vanish():
    f = parse_expression("c @ x + sum(exp(x))", SCOPE)
    out = vjp([(f, E.const(1.0))], [x, A, s, B])
    for z in (A, s, B):
        assert E.is_zero(out[z]) and out[z].shape == z.shape
    g = gradient(f, x)
    hv = vjp([(g, u)], [x, c, w])
    assert hv[c] == u  # ∂(c + eˣ)/∂c = I
    assert E.is_zero(hv[w])
    # A zero cotangent contributes nothing, even for a dependent expression.
    assert E.is_zero(vjp([(g, E.zero(("n",)))], [x, c])[x])
    # A linear objective has a constant gradient and a zero Hessian.
    g = gradient(parse_expression("c @ x + 3 * sum(x)", SCOPE), x)
    assert E.is_zero(vjp([(g, u)], [x])[x])


def test_transpose_rules():
    assert E.transpose(E.transpose(A)) == A
    assert E.transpose(E.transpose(A)) is A
    assert E.transpose(S) == S  # symmetric leaf
    assert E.transpose(x) == x  # a vector's transpose
    assert E.transpose(E.Eye("n")) == E.Eye("n")
    assert E.transpose(E.diag(c)) == E.diag(c)
    assert parse_expression("(A.T).T", SCOPE) == A
    assert parse_expression("(B.T).T @ x", SCOPE) == E.matmul(B, x)
    assert parse_expression("x @ B.T", SCOPE) == E.MatMul(B, x)  # xᵀBᵀ = (B x)ᵀ


def test_cancellation_and_constant_folding():
    def p(t):
        return parse_expression(t, SCOPE)

    assert p("x - x") == E.zero(("n",))
    assert p("A - A") == E.zero(("m", "n"))
    assert p("x + x") == E.mul(E.const(2.0), x)
    assert p("2 * x - x") == x
    assert p("-(-x)") == x
    assert p("2 * 3 + 1") == E.const(7.0)
    assert p("2 ** 3 / 4") == E.const(2.0)
    assert p("exp(0) + log(1)") == E.const(1.0)
    assert p("x * 0") == E.zero(("n",))
    assert p("0 * A @ x") == E.zero(("m",))
    assert p("x ** 1") == x
    assert p("x ** 0") == E.const(1.0, ("n",))
    assert p("(x ** 2) ** 3") == E.Pow(x, E.const(6.0))
    assert p("(x ** 0.5) ** 2") == x
    assert p("(x ** 4) ** 0.5") == E.Pow(x, E.const(2.0))
    # An even power hides the sign: (x²)^½ is |x|, so it must not fold to x.
    assert p("(x ** 2) ** 0.5") != x
    assert p("(x ** 2) ** 1.5") == E.Pow(E.Pow(x, E.const(2.0)), E.const(1.5))
    assert p("eye(n) @ x") == x
    assert p("x @ eye(n)") == x
    assert p("2 * (3 * x)") == E.mul(E.const(6.0), x)
    assert p("sum(ones(n))") == E.Leaf("n", "dim", ())
    assert p("x + 1 - 1") == x
    assert p("(x + c) - c") == x


def test_gradient_of_simple_forms():
    assert gradient(parse_expression("sum(x)", SCOPE), x) == E.const(1.0, ("n",))
    assert gradient(parse_expression("c @ x", SCOPE), x) == c
    assert gradient(parse_expression("x @ x", SCOPE), x) == E.mul(E.const(2.0), x)
    assert gradient(parse_expression("s * sum(x)", SCOPE), x) == E.Broadcast(s, ("n",))
    assert gradient(parse_expression("w @ A @ x", SCOPE), x) == E.MatMul(w, A)


def test_vjp_rejects_a_cotangent_of_the_wrong_shape():
    with pytest.raises(ValueError, match="cotangent shape"):
        vjp([(E.sum_(x), u)], [x])


def test_a_vector_never_gets_a_scalar_cotangent():
    """Found by the fuzzer: (n − 1)·1 @ (M u) simplifies so that the dot product's VJP hands
    its vector operand a scalar (a product with a dropped Broadcast); the cotangent of the
    vector M u must be that scalar broadcast, not an IndexError in outer."""
    s = E.Leaf("s", "param", ())
    M = E.Leaf("M", "param", ("n", "n"))
    u = E.Leaf("u", "var", ("n",))
    dot = E.matmul(E.add(E.Leaf("n", "dim", ()), E.const(-1.0, ("n",))), E.matmul(M, u))
    grads = vjp([(dot, s)], [M, u])
    assert grads[M].shape == ("n", "n") and grads[u].shape == ("n",)
