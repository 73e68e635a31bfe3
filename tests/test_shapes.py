"""Indexing, slicing, stacking, reshapes, axis sums and the non-smooth elementwise functions:
values against NumPy's semantics, derivative rules (∇f and ∇²f u as derived) against
autograd through the printed primal expression, batched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ir_helpers import compile_function, leaf, scope

from foldgen import dims
from foldgen.derive import gradient, vjp
from foldgen.parse import ExprError, parse_expression

DIMS = {"n": 4, "m": 3}
x = leaf("x", ("n",), "var")
X = leaf("X", ("m", "n"), "var")
c = leaf("c", ("n",))
SCOPE = scope([x, X, c], DIMS)


def _data(seed=0, batch=(2,)):
    gen = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(*batch, 4, generator=gen, dtype=torch.float64),
        "X": torch.randn(*batch, 3, 4, generator=gen, dtype=torch.float64),
        "c": torch.randn(*batch, 4, generator=gen, dtype=torch.float64),
    }


VALUES = [
    ("x[0]", lambda v: v["x"][..., 0]),
    ("x[-1]", lambda v: v["x"][..., -1]),
    ("x[1:]", lambda v: v["x"][..., 1:]),
    ("x[:-1]", lambda v: v["x"][..., :-1]),
    ("x[n - 1]", lambda v: v["x"][..., 3]),
    ("X[:, 0]", lambda v: v["X"][..., :, 0]),
    ("X[1:, :]", lambda v: v["X"][..., 1:, :]),
    ("X[0, 1]", lambda v: v["X"][..., 0, 1]),
    ("X[1]", lambda v: v["X"][..., 1, :]),
    ("hstack([x, c[0:2]])", lambda v: torch.cat([v["x"], v["c"][..., :2]], -1)),
    ("vstack([X, x])", lambda v: torch.cat([v["X"], v["x"][..., None, :]], -2)),
    ("hstack([X, X[:, 0]])", lambda v: torch.cat([v["X"], v["X"][..., :, :1]], -1)),
    ("vec(X)", lambda v: v["X"].reshape(*v["X"].shape[:-2], -1)),
    ("vec(X, order='F')", lambda v: v["X"].mT.reshape(*v["X"].shape[:-2], -1)),
    ("reshape(vec(X), (n, m))", lambda v: v["X"].reshape(*v["X"].shape[:-2], 4, 3)),
    (
        "reshape(vec(X), (n, m), order='F')",
        lambda v: torch.from_numpy(
            np.stack([np.reshape(t.ravel(), (4, 3), order="F") for t in v["X"].numpy()])
        ),
    ),
    ("sum(X, axis=0)", lambda v: v["X"].sum(-2)),
    ("sum(X, axis=1)", lambda v: v["X"].sum(-1)),
    ("mean(X, axis=0)", lambda v: v["X"].mean(-2)),
    ("pos(x)", lambda v: v["x"].clamp_min(0)),
    ("neg(x)", lambda v: (-v["x"]).clamp_min(0)),
    ("maximum(x, c)", lambda v: torch.maximum(v["x"], v["c"])),
    ("min(x, 0.5)", lambda v: v["x"].clamp_max(0.5)),
    ("pnorm(x, 3)", lambda v: v["x"].abs().pow(3).sum(-1).pow(1 / 3)),
    ("pnorm(x, 1)", lambda v: v["x"].abs().sum(-1)),
    ("pnorm(x, p=3)", lambda v: v["x"].abs().pow(3).sum(-1).pow(1 / 3)),
    ("norm(x, p='inf')", lambda v: v["x"].abs().amax(-1)),
    ("sum_largest(x, k=2)", lambda v: v["x"].topk(2, -1).values.sum(-1)),
    ("X @ X.T", lambda v: v["X"] @ v["X"].mT),
    ("X + c", lambda v: v["X"] + v["c"][..., None, :]),
    ("log_sum_exp(X, axis=1)", lambda v: torch.logsumexp(v["X"], -1)),
    ("log_sum_exp(X, axis=0)", lambda v: torch.logsumexp(v["X"], -2)),
    ("multiply(c, X)", lambda v: v["c"][..., None, :] * v["X"]),
    ("rel_entr(exp(x), exp(c))", lambda v: torch.exp(v["x"]) * (v["x"] - v["c"])),
    (
        "kl_div(exp(x), exp(c))",
        lambda v: torch.exp(v["x"]) * (v["x"] - v["c"]) - torch.exp(v["x"]) + torch.exp(v["c"]),
    ),
    ("inv_pos(exp(x))", lambda v: torch.exp(-v["x"])),
    ("power(exp(x), 3)", lambda v: torch.exp(3 * v["x"])),
    ("quad_over_lin(x, exp(x[0]))", lambda v: (v["x"] ** 2).sum(-1) / torch.exp(v["x"][..., 0])),
    ("c * X - 1", lambda v: v["c"][..., None, :] * v["X"] - 1),
    ("X / reshape(sum(X, axis=1), (m, 1))", lambda v: v["X"] / v["X"].sum(-1)[..., None]),
    ("reshape(sum(X, axis=1), (m, 1)) - X", lambda v: v["X"].sum(-1)[..., None] - v["X"]),
    (
        "kron(X, X[0:2, 1:3])",
        lambda v: torch.stack([torch.kron(t, t[0:2, 1:3]) for t in v["X"]]),
    ),
    (
        "kron(x, c[0:2])",
        lambda v: torch.stack([torch.kron(a, b[0:2]) for a, b in zip(v["x"], v["c"])]),
    ),
]


@pytest.mark.parametrize("text,expected", VALUES, ids=[t for t, _ in VALUES])
def test_values_follow_numpy(text, expected):
    e = parse_expression(text, SCOPE)
    _, fn = compile_function("_f", [x, X, c], [e], ref="x")
    values = _data()
    got = fn(values["x"], values["X"], values["c"])[0]
    want = expected(values)
    torch.testing.assert_close(got.expand_as(want), want, atol=1e-12, rtol=0)


OBJECTIVES = [
    "sum_squares(x[1:] - x[:-1]) + x[0] * x[n - 1]",
    "sum(exp(X[:, 0])) + sum_squares(X[1:, :] @ x)",
    "sum_squares(hstack([x, X[0], x[1:3]]) * 2)",
    "sum_squares(vstack([X, x]) @ c) + sum(sin(vec(X, order='F')) * vec(X))",
    "sum(log(sum(exp(X * x[0]), axis=1))) + sum_squares(sum(X, axis=0) - c)",
    "sum(square(reshape(vec(X), (n, m)) @ X))",
    "pnorm(x - c, 3) + sum(pos(x) ** 2) + sum(square(neg(X)))",
    "sum_squares(kron(X, X[0:2, 1:3]) @ hstack([x, x])) + sum(exp(kron(x[0:2], c[1:3] * x[1:3])))",
    "sum_largest(x * c, 2) + max(X @ x) - min(X[0])",
    "sum(log_sum_exp(X * x[0] + c, axis=1)) + sum(kl_div(exp(x), exp(c)))",
]


@pytest.mark.parametrize("text", OBJECTIVES)
def test_derivatives_match_autograd(text):
    f = parse_expression(text, SCOPE)
    u = leaf("_u", ("n",), "aux")
    U = leaf("_U", ("m", "n"), "aux")
    grads = vjp(
        [(f, torch_one := __import__("foldgen.expr", fromlist=["const"]).const(1.0))], [x, X]
    )
    del torch_one
    second = vjp([(grads[x], u), (grads[X], U)], [x, X])
    _, fn = compile_function(
        "_f", [x, X, c, u, U], [f, grads[x], grads[X], second[x], second[X]], ref="x"
    )
    values = _data(seed=1)
    gen = torch.Generator().manual_seed(2)
    du = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    dU = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64)
    xs = values["x"].clone().requires_grad_()
    Xs = values["X"].clone().requires_grad_()
    value, gx, gX, hx, hX = (
        t.expand(s) if s is not None else t
        for t, s in zip(
            fn(xs, Xs, values["c"], du, dU), [None, (2, 4), (2, 3, 4), (2, 4), (2, 3, 4)]
        )
    )
    ax, aX = (
        torch.zeros_like(t) if g is None else g
        for t, g in zip(
            (xs, Xs),
            torch.autograd.grad(value.sum(), [xs, Xs], create_graph=True, allow_unused=True),
        )
    )
    torch.testing.assert_close(gx, ax, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(gX, aX, atol=1e-10, rtol=1e-10)
    total = (ax * du).sum() + (aX * dU).sum()
    hvp = (
        torch.autograd.grad(total, [xs, Xs], allow_unused=True)
        if total.requires_grad
        else (None, None)
    )
    torch.testing.assert_close(
        hx, hvp[0] if hvp[0] is not None else torch.zeros_like(hx), atol=1e-9, rtol=1e-9
    )
    torch.testing.assert_close(
        hX, hvp[1] if hvp[1] is not None else torch.zeros_like(hX), atol=1e-9, rtol=1e-9
    )


def test_gradient_of_a_slice_is_zero_outside_it():
    f = parse_expression("sum_squares(x[1:3])", SCOPE)
    g = gradient(f, x)
    _, fn = compile_function("_g", [x], [g])
    value = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(
        fn(value)[0], torch.tensor([0.0, 4.0, 6.0, 0.0], dtype=torch.float64)
    )


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("x[4]", "the index 4 is outside an axis of size n (= 4)"),
        ("x[1:1]", "the slice 1:1 is outside an axis of size n"),
        ("X[:, :, 0]", "too many indices (3)"),
        ("x[::2]", "slices with a step are not supported"),
        ("max(x, c, 1)", "takes one expression, or two for the elementwise max"),
        ("reshape(x, (3, 2))", "cannot reshape [n] to [3, 2]"),
        ("hstack(x)", "takes one list of expressions"),
        ("sum(X, axis=3)", "axis must be 0 or 1"),
        ("pnorm(x, 0.5)", "p >= 1"),
        ("vstack([X, c[0:2]])", "cannot stack"),
        ("kron(X, x)", "kron needs two matrices or two vectors"),
        ("pnorm(x, 1, p=1)", "pnorm() got p twice"),
        ("pnorm(x, q=1)", "pnorm() takes no keyword arguments"),
    ],
)
def test_shape_errors_name_the_expression(text, fragment):
    with pytest.raises(ExprError) as caught:
        parse_expression(text, SCOPE)
    assert fragment in str(caught.value)


def test_size_arithmetic_is_canonical():
    assert dims.add("n", 1) == "n + 1" == dims.canonical("1+n")
    assert dims.sub(dims.add("T", 1), 1) == "T"
    assert dims.product(("m", "n")) == "m*n"
    assert dims.evaluate("k*n + m", {"k": 2, "n": 3, "m": 4}) == 10
    assert dims.source("k*n + m") == "k * n + m"
    with pytest.raises(dims.DimError):
        dims.names("n / 2")
