"""The safe expression parser: what SPEC.md allows parses to the right IR, and everything else
is rejected with a message that names the culprit, without evaluating anything."""

from __future__ import annotations

import builtins
import os

import pytest
from ir_helpers import leaf, scope

from foldgen import expr as E
from foldgen.parse import ALL_FUNCTIONS, ExprError, Relation, parse_constraint, parse_expression

DIMS = {"n": 4, "m": 3}
x = leaf("x", ("n",), "var")
c = leaf("c", ("n",))
w = leaf("w", ("m",))
A = leaf("A", ("m", "n"))
Q = leaf("Q", ("n", "n"), props={"symmetric", "psd"})
s = leaf("s")
k = leaf("k")
SCOPE = scope([x, c, w, A, Q, s, k], DIMS)
n_dim = E.Leaf("n", "dim", ())


def p(text):
    return parse_expression(text, SCOPE)


def rel(text):
    return parse_constraint(text, SCOPE)


# --------------------------------------------------------------------------- what parses

# Every construct of SPEC.md's expression list: (text, expected shape, expected IR).
ACCEPTED = [
    ("x", ("n",), x),
    ("2.5", (), E.const(2.5)),
    ("1e-3 * x", ("n",), E.Mul(E.const(1e-3), x)),
    ("n", (), n_dim),
    ("x + c", ("n",), E.Add((x, c), ("n",))),
    ("x - c", ("n",), E.Add((x, E.Mul(E.const(-1.0), c)), ("n",))),
    ("x * c", ("n",), E.Mul(x, c)),
    ("x / c", ("n",), E.Mul(x, E.Pow(c, E.const(-1.0)))),
    ("x ** 3", ("n",), E.Pow(x, E.const(3.0))),
    ("-x", ("n",), E.Mul(E.const(-1.0), x)),
    ("+x", ("n",), x),
    ("s * x", ("n",), E.Mul(s, x)),
    ("x + s", ("n",), E.Add((x, s), ("n",))),
    ("A @ x", ("m",), E.MatMul(A, x)),
    ("w @ A", ("n",), E.MatMul(w, A)),
    ("A @ A.T", ("m", "m"), E.MatMul(A, E.Transpose(A))),
    ("x @ c", (), E.MatMul(x, c)),
    ("A.T", ("n", "m"), E.Transpose(A)),
    ("x.T", ("n",), x),
    ("sum(x)", (), E.Sum(x)),
    ("sum(A)", (), E.Sum(A)),
    ("dot(x, c)", (), E.MatMul(x, c)),
    ("quad_form(x, Q)", (), E.MatMul(E.MatMul(Q, x), x)),
    ("sum_squares(x)", (), E.Sum(E.Pow(x, E.const(2.0)))),
    ("norm2(x)", (), E.Pow(E.Sum(E.Pow(x, E.const(2.0))), E.const(0.5))),
    ("norm1(x)", (), E.Sum(E.Func("abs", x))),
    ("exp(x)", ("n",), E.Func("exp", x)),
    ("log(x)", ("n",), E.Func("log", x)),
    ("sqrt(x)", ("n",), E.Func("sqrt", x)),
    ("sin(x)", ("n",), E.Func("sin", x)),
    ("cos(x)", ("n",), E.Func("cos", x)),
    ("tanh(x)", ("n",), E.Func("tanh", x)),
    ("sigmoid(x)", ("n",), E.Func("sigmoid", x)),
    ("softplus(x)", ("n",), E.Func("softplus", x)),
    ("square(x)", ("n",), E.Pow(x, E.const(2.0))),
    ("abs(x)", ("n",), E.Func("abs", x)),
    ("entr(x)", ("n",), E.Func("entr", x)),
    ("log_sum_exp(x)", (), E.LogSumExp(x)),
    ("diag(x)", ("n", "n"), E.Diag(x)),
    ("diag(Q)", ("n",), E.DiagPart(Q)),
    ("ones(n)", ("n",), E.const(1.0, ("n",))),
    ("ones(m, n)", ("m", "n"), E.const(1.0, ("m", "n"))),
    ("ones(3)", (3,), E.const(1.0, (3,))),
    ("eye(n)", ("n", "n"), E.Eye("n")),
    ("k / n", (), E.Mul(k, E.Pow(n_dim, E.const(-1.0)))),
    ("k / n * ones(n)", ("n",), E.Broadcast(E.Mul(k, E.Pow(n_dim, E.const(-1.0))), ("n",))),
    ("exp(2 * s)", (), E.Func("exp", E.Mul(E.const(2.0), s))),
]


@pytest.mark.parametrize("text,shape,expected", ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_accepted_expressions(text, shape, expected):
    e = p(text)
    assert e.shape == shape
    assert e == expected


def test_every_spec_function_is_known():
    spec_functions = {
        "sum", "dot", "quad_form", "sum_squares", "norm2", "norm1", "exp", "log", "sqrt", "sin",
        "cos", "tanh", "sigmoid", "softplus", "square", "abs", "entr", "log_sum_exp", "diag",
        "ones", "eye",
    }  # fmt: skip
    assert spec_functions <= set(ALL_FUNCTIONS)


def test_spec_examples_parse():
    """The objectives and constraints of SPEC.md's examples."""
    y = leaf("y", ("n",), "var")
    sc = scope(
        [x, y, c, Q, k, leaf("eps"), leaf("mu", ("n",)), leaf("Sigma", ("n", "n")),
         leaf("gamma"), leaf("yy", ("n",)), leaf("D", ("m", "n")), leaf("lam"),
         leaf("p", ("n",)), leaf("G", ("m", "n")), leaf("h", ("m",))],
        DIMS,
    )  # fmt: skip
    for text in (
        "0.5 * x @ Q @ x + c @ x",
        "c @ x + eps * sum(entr(x))",
        "mu @ x",
        "0.5 * sum_squares(x - yy) + lam * norm1(D @ x)",
        "0.5 * y @ Q @ y + p @ sin(y)",
    ):
        assert parse_expression(text, sc).shape == ()
    assert parse_expression("k / n * ones(n)", sc).shape == ("n",)
    for text, count in (
        ("0 <= x <= 1", 2),
        ("sum(x) == k", 1),
        ("x >= 0", 1),
        ("quad_form(x, Sigma) <= gamma", 1),
        ("G @ y <= h", 1),
        ("D @ y == D @ x", 1),
    ):
        assert len(parse_constraint(text, sc)) == count


def test_whitespace_is_ignored():
    assert p("  c @ x\n") == p("c@x")


def test_structurally_equal_parses_are_one_node():
    """Nodes are interned: equal structure is the same object, so equality is identity."""
    a, b = p("sum(exp(A @ x)) + s"), p("sum(exp(A @ x)) + s")
    assert a is b and a == b and hash(a) == hash(b)
    assert a != p("sum(exp(A @ x)) + 2 * s")


# --------------------------------------------------------------------------- constraints


def test_chain_gives_two_relations():
    out = rel("0 <= x <= 1")
    assert out == [Relation(E.const(0.0), "<=", x), Relation(x, "<=", E.const(1.0))]
    out = rel("c >= x >= -1")
    assert [r.op for r in out] == [">=", ">="]
    assert out[1].rhs == E.const(-1.0)


def test_single_relations():
    assert rel("sum(x) == k") == [Relation(E.Sum(x), "==", k)]
    assert rel("x >= 0") == [Relation(x, ">=", E.const(0.0))]
    assert rel("A @ x <= w") == [Relation(E.MatMul(A, x), "<=", w)]


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("x < 1", "comparison '<' is not allowed"),
        ("x > 0", "comparison '>' is not allowed"),
        ("0 < x <= 1", "comparison '<' is not allowed"),
        ("x != 0", "comparison '!=' is not allowed"),
        ("x in c", "comparison 'in' is not allowed"),
        ("x is c", "comparison 'is' is not allowed"),
        ("0 <= x == 1", "may not contain '=='"),
        ("A @ x <= x", "shapes [m] and [n]"),
        ("x + 1", "needs a comparison"),
        ("", "empty expression"),
    ],
)
def test_bad_constraints(text, fragment):
    with pytest.raises(ExprError, match=_re(fragment)):
        rel(text)


def test_comparison_not_allowed_in_an_expression():
    with pytest.raises(ExprError, match="comparisons belong in constraints"):
        p("x <= 1")
    with pytest.raises(ExprError, match="unsupported syntax"):
        p("sum(x <= 1)")


# --------------------------------------------------------------------------- errors


def _re(fragment: str) -> str:
    import re

    return re.escape(fragment)


@pytest.mark.parametrize(
    "text,fragment",
    [
        # unknown names and functions, with near-match hints
        ("sum(sofplus(x))", "unknown function 'sofplus' (did you mean 'softplus'?)"),
        ("sum(sofplus)", "unknown name 'sofplus' (did you mean 'softplus'?)"),
        ("cc @ x", "unknown name 'cc' (did you mean 'c'?)"),
        ("xyzzy + x", "unknown name 'xyzzy'"),
        ("frobnicate(x)", "unknown function 'frobnicate'"),
        ("log_sum_ex(x)", "did you mean 'log_sum_exp'?"),
        ("exp + x", "'exp' is a function; call it as exp(...)"),
        # arity and keywords
        ("dot(x)", "dot() takes 2 argument(s), got 1"),
        ("exp(x, c)", "exp() takes 1 argument(s), got 2"),
        ("sum()", "sum() takes 1 argument(s), got 0"),
        ("sum(x, axis=2)", "axis must be 0 or 1"),
        ("exp(x=1)", "exp() takes no keyword arguments"),
        ("eye(n, n)", "eye() takes one size"),
        ("ones()", "ones() takes one or two sizes"),
        ("ones(n, n, n)", "ones() takes one or two sizes"),
        ("ones(k)", "ones() takes sizes"),
        ("ones(0)", "ones() takes sizes"),
        ("ones(2.5)", "ones() takes sizes"),
        ("ones(True)", "ones() takes sizes"),
        ("ones(-1)", "ones() takes sizes"),
        # shapes, naming the sub-expression
        ("w + A", "in 'w + A': shapes [m] and [m, n] do not match for '+'"),
        ("sum(exp(w + A)) * 2", "in 'w + A'"),
        ("x * w", "in 'x * w'"),
        ("A @ w", "in 'A @ w'"),
        ("s @ x", "'@' needs vectors or matrices"),
        ("x ** c", "exponent of '**' must be a scalar"),
        ("dot(A, x)", "dot needs two vectors"),
        ("quad_form(A, x)", "quad_form(x, P) needs a vector and a matrix"),
        ("log_sum_exp(A)", "log_sum_exp needs a vector"),
        ("diag(A)", "diag of a non-square matrix [m, n]"),
        ("diag(s)", "diag needs a vector or a square matrix"),
        ("x / 0", "division by the constant zero"),
        ("x / (n - n)", "division by the constant zero"),
        # constants that cannot be evaluated
        ("log(0) + x", "in 'log(0)': cannot evaluate"),
        ("0 ** -1 * x", "cannot evaluate"),
        ("10.0 ** 400 * x", "cannot evaluate"),
        ("(-8) ** (1 / 3) * x", "is not a real number"),
        # attributes
        ("x.shape", "unknown attribute '.shape' (only '.T' is supported)"),
        ("A.sum", "unknown attribute '.sum'"),
        ("x.__class__", "unknown attribute '.__class__'"),
        ("x.T.mT", "unknown attribute '.mT'"),
        # syntax outside the whitelist
        ("x[0:0]", "the slice 0:0 is outside an axis of size n"),
        ("x[0:2] + c", "shapes [2] and [n] do not match"),
        ("lambda: 0", "unsupported syntax"),
        ("'abc'", "unsupported constant 'abc'"),
        ("exp('x')", "unsupported constant 'x'"),
        ("b'x' + x", "unsupported constant"),
        ("True * x", "unsupported constant True"),
        ("None", "unsupported constant None"),
        ("1j * x", "unsupported constant 1j"),
        ("[x, c]", "unsupported syntax"),
        ("(x, c)", "unsupported syntax"),
        ("{x: 1}", "unsupported syntax"),
        ("x if s else c", "unsupported syntax"),
        ("x and c", "unsupported syntax"),
        ("not x", "only unary '-' and '+'"),
        ("~x", "only unary '-' and '+'"),
        ("x % 2", "operator 'Mod' is not supported"),
        ("x // 2", "operator 'FloorDiv' is not supported"),
        ("x << 1", "'<<' is a PSD constraint ('X >> M'): it may only be a whole constraint"),
        ("(y := x)", "unsupported syntax"),
        ("f'{x}'", "unsupported syntax"),
        ("[i for i in x]", "unsupported syntax"),
        ("exp(*x)", "unsupported syntax"),
        ("x.T(1)", "only plain function calls"),
        # empty and malformed
        ("", "empty expression"),
        ("   ", "empty expression"),
        ("x +", "invalid syntax"),
        ("(x", "invalid syntax"),
        ("x @@ c", "invalid syntax"),
        ("x = 1", "invalid syntax"),
        ("import os", "invalid syntax"),
        ("x; c", "invalid syntax"),
    ],
)
def test_rejected_expressions(text, fragment):
    with pytest.raises(ExprError, match=_re(fragment)):
        p(text)


def test_non_string_is_an_empty_expression():
    with pytest.raises(ExprError, match="empty expression"):
        parse_expression(None, SCOPE)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "template",
    [
        "__import__('os').system('touch {marker}')",
        "__import__('os')",
        "open('{marker}', 'w')",
        "eval('1')",
        'exec(\'open("{marker}", "w")\')',
        "getattr(x, 'T')",
        "().__class__.__bases__[0].__subclasses__()",
        "(lambda: open('{marker}', 'w'))()",
        "x.__class__.__init__.__globals__",
        "[open('{marker}', 'w') for _ in (1,)]",
        "sum(__import__('os').system('touch {marker}'))",
        "exp(x) if __import__('os').system('touch {marker}') else x",
    ],
)
def test_code_is_never_evaluated(template, tmp_path, monkeypatch):
    """Injection attempts are rejected, and nothing runs: no file appears, and neither eval,
    exec nor os.system is called while parsing."""
    marker = tmp_path / "pwned"
    calls = []

    def forbidden(name):
        def fn(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} called while parsing")

        return fn

    monkeypatch.setattr(builtins, "eval", forbidden("eval"))
    monkeypatch.setattr(builtins, "exec", forbidden("exec"))
    monkeypatch.setattr(builtins, "open", forbidden("open"))
    monkeypatch.setattr(os, "system", forbidden("os.system"))
    text = template.format(marker=marker)
    with pytest.raises(ExprError):
        p(text)
    with pytest.raises(ExprError):
        rel(f"{text} <= 1")
    monkeypatch.undo()
    assert calls == []
    assert not marker.exists()


def test_errors_are_value_errors_with_one_line():
    with pytest.raises(ValueError) as info:
        p("sum(sofplus(x))")
    assert "\n" not in str(info.value)


def test_shape_error_names_innermost_subexpression_only():
    with pytest.raises(ExprError) as info:
        p("c @ x + sum(exp(w + A))")
    message = str(info.value)
    assert message.startswith("in 'w + A':")
    assert "[m]" in message and "[m, n]" in message


def test_long_and_deeply_nested_expressions():
    """A sum of thousands of terms parses (a chain of one operator is one level, walked
    without recursion); nesting past the expression_depth limit is an ExprError naming the
    limit, checked before Python's parser could fail (tests/test_expression_limits.py)."""
    assert p("x" + " + x" * 2000) == E.mul(E.const(2001.0), x)
    for text in ("-" * 3000 + "x", "(" * 300 + "x" + ")" * 300):
        with pytest.raises(ExprError, match="nested more than 100 levels deep"):
            p(text)
    with pytest.raises(ExprError, match="nested more than 100 levels deep"):
        rel("0 <= " + "-" * 3000 + "x")
