"""A safe parser from spec expression strings to the vector IR.

A spec is untrusted input, so nothing here calls ``eval`` (nor ``sympy.parse_expr``, which
does): the string is parsed by ``ast.parse(mode="eval")`` and walked by a visitor that accepts
only the NumPy/CVXPY subset of SPEC.md — names, numbers, ``+ - * / ** @``, unary minus,
``.T``, comparisons (in constraints) and the whitelisted functions. Anything else is an
``ExprError`` that says what is wrong; the caller adds file, line and key.

Size comes before parsing: an expression's length, its integers' digits and its nesting are
checked against the build's `Limits` (by the tokenizer and an iterative walk), so neither
``ast.parse`` nor the visitor can be driven into a RecursionError, a MemoryError or Python's
own integer-conversion limit. A chain of one operator (``a + b + c``, ``x * x * … * x``)
is one level of nesting, and the visitor walks it iteratively.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import functools
import io
import math
import tokenize
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from foldgen import dims
from foldgen import expr as E
from foldgen.expr import ConstantError, Expr, Leaf, ShapeError, shape_str
from foldgen.limits import DEFAULT_LIMITS, Limits

_T = TypeVar("_T")


class ExprError(ValueError):
    """An expression that cannot be parsed or typed; the message names the culprit."""


@dataclass(frozen=True)
class Relation:
    """One (in)equality of a constraint: ``lhs op rhs`` with op in '<=', '>=', '==', or
    '>>' (lhs − rhs symmetric positive semidefinite; ``M << X`` arrives as ``X >> M``)."""

    lhs: Expr
    op: str
    rhs: Expr


def _unary(fn: Callable[[Expr], Expr]) -> tuple[int, Callable[..., Expr]]:
    return 1, fn


def _elementwise(name: str) -> tuple[int, Callable[..., Expr]]:
    return 1, lambda a: E.func(name, a)


def _norm1(a: Expr) -> Expr:
    return E.sum_(E.func("abs", a))


def _norm2(a: Expr) -> Expr:
    return E.power(E.sum_(E.power(a, E.const(2.0))), E.const(0.5))


def _sum_squares(a: Expr) -> Expr:
    return E.sum_(E.power(a, E.const(2.0)))


def _quad_form(x: Expr, p: Expr) -> Expr:
    if x.rank != 1 or p.rank != 2:
        raise ShapeError(
            f"quad_form(x, P) needs a vector and a matrix, got {shape_str(x.shape)} "
            f"and {shape_str(p.shape)}"
        )
    return E.matmul(E.matmul(x, p), x)


def _square(a: Expr) -> Expr:
    return E.power(a, E.const(2.0))


def _mean(a: Expr) -> Expr:
    """sum(a) / its number of entries (a symbolic count: sum(ones) prints as the dims)."""
    return E.div(E.sum_(a), E.sum_(E.const(1.0, a.shape))) if a.rank else a


def _trace(a: Expr) -> Expr:
    if a.rank != 2 or a.shape[0] != a.shape[1]:
        raise ShapeError(f"trace() needs a square matrix, got {shape_str(a.shape)}")
    return E.sum_(E.diag(a))


def _huber(a: Expr, m: Expr | None = None) -> Expr:
    """CVXPY's huber(a, M): M²·huber₁(a/M), huber₁(t) = t² for |t| ≤ 1, else 2|t| − 1."""
    if m is None:
        return E.func("huber", a)
    if m.rank != 0:
        raise ShapeError(f"huber(x, M) needs a scalar M, got {shape_str(m.shape)}")
    if isinstance(m, E.Const) and not m.value > 0:
        raise ExprError(f"huber(x, M) needs M > 0, got {m.value!r}")
    return E.mul(E.power(m, E.const(2.0)), E.func("huber", E.div(a, m)))


def _pnorm(a: Expr, p: Expr) -> Expr:
    """(Σ|a|ᵖ)^(1/p) for a constant p ≥ 1 (norm1 at 1, norm2 at 2)."""
    if not isinstance(p, E.Const) or p.rank != 0 or not p.value >= 1:
        raise ExprError("pnorm(x, p) needs a constant p >= 1")
    if p.value == 1:
        return _norm1(a)
    if p.value == 2:
        return _norm2(a)
    inner = E.sum_(E.power(E.func("abs", a), p))
    return E.power(inner, E.const(1.0 / p.value))


def _norm_inf(a: Expr) -> Expr:
    """max |a| over the entries."""
    return E.sum_largest(E.func("abs", _vec(a)), 1)


def _multiply(a: Expr, b: Expr) -> Expr:
    """CVXPY's multiply: the elementwise product, with NumPy's broadcasting."""
    return E.mul(*_broadcast_pair(a, b))


def _rel_entr(x: Expr, y: Expr) -> Expr:
    """x log(x / y) elementwise, as −entr(x) − x log y (0 at x = 0, as CVXPY's)."""
    x, y = _broadcast_pair(x, y)
    return E.sub(E.neg(E.func("entr", x)), E.mul(x, E.func("log", y)))


def _kl_div(x: Expr, y: Expr) -> Expr:
    """CVXPY's kl_div: x log(x / y) − x + y elementwise."""
    x, y = _broadcast_pair(x, y)
    return E.add(_rel_entr(x, y), E.sub(y, x))


def _inv_pos(a: Expr) -> Expr:
    return E.power(a, E.const(-1.0))


def _power(a: Expr, p: Expr) -> Expr:
    return E.power(a, p)


def _quad_over_lin(x: Expr, y: Expr) -> Expr:
    """CVXPY's quad_over_lin: Σ x² / y for a scalar y."""
    if y.rank != 0:
        raise ShapeError(f"quad_over_lin(x, y) needs a scalar y, got {shape_str(y.shape)}")
    return E.div(_sum_squares(x), y)


def _log_sum_exp_axis(a: Expr, axis: int) -> Expr:
    """log Σ exp along an axis of a matrix, as log(sum(exp(a), axis)): not shifted (a shift
    by the largest entry would put a kink into the derivation), so entries beyond ~700
    overflow, which the layer reports as non-finite."""
    ones = E.const(1.0, a.shape[1:] if axis == 1 else a.shape[:1])
    exp = E.func("exp", a)
    return E.func("log", E.matmul(exp, ones) if axis == 1 else E.matmul(ones, exp))


def _pos(a: Expr) -> Expr:
    return E.func("pos", a)


def _neg(a: Expr) -> Expr:
    """CVXPY's neg(x) = max(−x, 0)."""
    return E.func("pos", E.neg(a))


def _maximum(a: Expr, b: Expr) -> Expr:
    """Elementwise max(a, b) = b + pos(a − b)."""
    return E.add(b, E.func("pos", E.sub(a, b)))


def _minimum(a: Expr, b: Expr) -> Expr:
    """Elementwise min(a, b) = b − pos(b − a)."""
    return E.sub(b, E.func("pos", E.sub(b, a)))


def _stack(axis: int) -> Callable[..., Expr]:
    """hstack (axis 1) and vstack (axis 0) as NumPy: hstack of scalars and vectors is one
    vector; otherwise vectors are rows (vstack) or columns (hstack) of a matrix."""

    def build(*parts: Expr) -> Expr:
        if axis == 1 and all(p.rank <= 1 for p in parts):
            return E.concat([E.reshape(p, (1,)) if p.rank == 0 else p for p in parts])
        if axis == 0:
            rows = [
                E.reshape(p, (1, p.shape[0] if p.rank else 1)) if p.rank < 2 else p for p in parts
            ]
            return E.concat(rows, 0)
        cols = [E.reshape(p, (p.shape[0] if p.rank else 1, 1)) if p.rank < 2 else p for p in parts]
        return E.concat(cols, 1)

    return build


def _vec(a: Expr) -> Expr:
    return E.vec(a) if a.rank else E.reshape(a, (1,))


#: name -> (the numbers of arguments it takes, how to build it).
FUNCTIONS: dict[str, tuple[int | tuple[int, ...], Callable[..., Expr]]] = {
    "sum": _unary(E.sum_),
    "dot": (2, E.dot),
    "quad_form": (2, _quad_form),
    "sum_squares": _unary(_sum_squares),
    "norm2": _unary(_norm2),
    "norm1": _unary(_norm1),
    "square": _unary(_square),
    "log_sum_exp": _unary(E.log_sum_exp),
    "diag": _unary(E.diag),
    "mean": _unary(_mean),
    "trace": _unary(_trace),
    "huber": ((1, 2), _huber),
    "logistic": _elementwise("softplus"),  # CVXPY's logistic(x) = log(1 + exp(x))
    "pnorm": (2, _pnorm),
    "pos": _unary(_pos),
    "neg": _unary(_neg),
    "maximum": (2, _maximum),
    "minimum": (2, _minimum),
    "vec": _unary(_vec),
    "kron": (2, E.kron),
    "multiply": (2, _multiply),
    "rel_entr": (2, _rel_entr),
    "kl_div": (2, _kl_div),
    "inv_pos": _unary(_inv_pos),
    "power": (2, _power),
    "quad_over_lin": (2, _quad_over_lin),
    **{
        name: _elementwise(name)
        for name in (
            "exp",
            "log",
            "sqrt",
            "sin",
            "cos",
            "tanh",
            "sigmoid",
            "softplus",
            "abs",
            "entr",
        )
    },
}
SIZE_FUNCTIONS = ("ones", "eye")
#: Functions with list, shape or axis arguments, built by the visitor itself.
STRUCTURAL_FUNCTIONS = (
    "hstack",
    "vstack",
    "reshape",
    "max",
    "min",
    "sum_largest",
    "sum_smallest",
    "norm",
    "norm_inf",
)
ALL_FUNCTIONS = tuple(FUNCTIONS) + SIZE_FUNCTIONS + STRUCTURAL_FUNCTIONS

_BINOPS: dict[type[ast.operator], tuple[str, Callable[[Expr, Expr], Expr]]] = {
    ast.Add: ("+", E.add),
    ast.Sub: ("-", E.sub),
    ast.Mult: ("*", E.mul),
    ast.Div: ("/", E.div),
    ast.Pow: ("**", E.power),
    ast.MatMult: ("@", E.matmul),
}
_CMPOPS = {ast.LtE: "<=", ast.GtE: ">=", ast.Eq: "=="}
_ELEMENTWISE_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div)


def _broadcast_pair(a: Expr, b: Expr) -> tuple[Expr, Expr]:
    """NumPy's broadcasting between a matrix and a vector (a row: its length the matrix's
    column count) or a matrix with a unit axis ((m, 1) or (1, n)); equal shapes and scalars
    need none. What does not broadcast is left for the operator's own shape error."""
    if a.rank == b.rank and a.shape == b.shape or a.rank == 0 or b.rank == 0:
        return a, b
    if a.rank == 1 and b.rank == 2:
        b2, a2 = _broadcast_pair(b, a)
        return a2, b2
    if a.rank == 2 and b.rank == 1 and b.shape[0] == a.shape[1]:
        return a, E.outer(E.const(1.0, a.shape[:1]), b)
    if a.rank == 2 and b.rank == 2:
        (m, n), (p, q) = a.shape, b.shape
        if (p, q) == (m, 1) and n != 1:
            return a, E.matmul(b, E.const(1.0, (1, n)))
        if (p, q) == (1, n) and m != 1:
            return a, E.matmul(E.const(1.0, (m, 1)), b)
        if (m, n) == (p, 1) and q != 1:
            return E.matmul(a, E.const(1.0, (1, q))), b
        if (m, n) == (1, q) and p != 1:
            return E.matmul(E.const(1.0, (p, 1)), a), b
    return a, b


# Left-associative operators of one precedence: a chain of them is one level of nesting.
_CHAIN_GROUP = {ast.Add: 0, ast.Sub: 0, ast.Mult: 1, ast.Div: 1, ast.MatMult: 1}
_NON_FINITE_NAMES = ("inf", "infinity", "nan")
# Python's own parser gave up (its stack: thousands of chained operators, a tower of '**');
# no --limit lifts that, so the message says what to do instead.
_TOO_DEEP = (
    "the expression is nested too deeply (or chains too many operators) for Python's parser; "
    "split it into smaller parts"
)


class Scope:
    """The names an expression may use: dims (as numbers), parameters and variables; and
    the build's limits on an expression's size."""

    def __init__(
        self, dims: dict[str, int], leaves: dict[str, Leaf], limits: Limits = DEFAULT_LIMITS
    ):
        self.dims = dims
        self.leaves = leaves
        self.limits = limits

    def lookup(self, name: str) -> Expr:
        if name in self.leaves:
            return self.leaves[name]
        if name in self.dims:
            return Leaf(name, "dim", E.SCALAR)
        known = sorted(set(self.leaves) | set(self.dims) | set(ALL_FUNCTIONS))
        hint = difflib.get_close_matches(name, known, n=1)
        suffix = f" (did you mean '{hint[0]}'?)" if hint else ""
        if name in ALL_FUNCTIONS:
            raise ExprError(f"'{name}' is a function; call it as {name}(...)")
        if name.lower() in _NON_FINITE_NAMES:
            raise ExprError(f"'{name}' is not a finite number; expressions take finite numbers")
        raise ExprError(f"unknown name '{name}'{suffix}")


def _depth_guard(fn: Callable[[str, Scope], _T]) -> Callable[[str, Scope], _T]:
    """Turn Python's recursion limit (ast.parse and the visitor recurse on nesting, e.g. a
    sum of thousands of terms) into an ExprError instead of a traceback."""

    @functools.wraps(fn)
    def guarded(text: str, scope: Scope) -> _T:
        try:
            return fn(text, scope)
        except (RecursionError, MemoryError):  # a backstop: the limits are checked first
            raise ExprError(_TOO_DEEP) from None

    return guarded


@_depth_guard
def parse_expression(text: str, scope: Scope) -> Expr:
    """Parse one expression (no comparisons)."""
    tree = _parse(text, scope.limits)
    if isinstance(tree.body, ast.Compare):
        raise ExprError("a comparison is not allowed here; comparisons belong in constraints")
    return _Visitor(scope, text).visit(tree.body)


@_depth_guard
def parse_constraint(text: str, scope: Scope) -> list[Relation]:
    """Parse ``a <= b``, ``a >= b``, ``a == b``, a chain ``lo <= e <= hi`` or a PSD
    constraint ``X >> M`` / ``M << X`` into relations."""
    tree = _parse(text, scope.limits)
    node = tree.body
    if isinstance(node, ast.BinOp) and isinstance(node.op, _PSD_OPS):
        return [_psd_relation(node, _Visitor(scope, text))]
    if not isinstance(node, ast.Compare):
        raise ExprError("a constraint needs a comparison: '<=', '>=', '==' or '>>'")
    visitor = _Visitor(scope, text)
    sides = [visitor.visit(node.left)] + [visitor.visit(c) for c in node.comparators]
    out = []
    for i, op in enumerate(node.ops):
        sym = _CMPOPS.get(type(op))
        if sym is None:
            raise ExprError(
                f"comparison '{_op_text(op)}' is not allowed; use '<=', '>=' or '=='"
                " (strict inequalities have no closed feasible set)"
            )
        lhs, rhs = _broadcast_pair(sides[i], sides[i + 1])
        _check_sides(lhs, rhs, sym)
        out.append(Relation(lhs, sym, rhs))
    if len(out) > 1 and any(r.op == "==" for r in out):
        raise ExprError("a chained comparison may not contain '=='")
    return out


_PSD_OPS = (ast.RShift, ast.LShift)


def _psd_relation(node: ast.BinOp, visitor: _Visitor) -> Relation:
    """``X >> M`` (or ``M << X``): X − M in the PSD cone, as CVXPY's PSD constraint; the
    matrix side must be square, the other a matrix of its shape or the number 0."""
    right = isinstance(node.op, ast.RShift)
    op = ">>" if right else "<<"
    big, small = (node.left, node.right) if right else (node.right, node.left)
    lhs, rhs = visitor.visit(big), visitor.visit(small)
    for side, tree in ((lhs, big), (rhs, small)):
        if side.rank == 0 and tree is small:  # the number 0, checked below
            continue
        if side.rank != 2 or side.shape[0] != side.shape[1]:
            raise ExprError(
                f"'{op}' (a PSD constraint) needs square matrices, and "
                f"'{visitor._snippet(tree)}' is {shape_str(side.shape)}"
            )
    if rhs.rank == 0 and not E.is_const(rhs, 0.0):
        raise ExprError(
            f"the scalar side of '{op}' must be 0 (for a multiple of the identity write "
            f"'{visitor._snippet(small)} * eye(n)'), got '{visitor._snippet(small)}'"
        )
    if rhs.rank == 0:
        rhs = E.zero(lhs.shape)
    _check_sides(lhs, rhs, op)
    return Relation(lhs, ">>", rhs)


def _check_sides(lhs: Expr, rhs: Expr, op: str) -> None:
    if lhs.rank and rhs.rank and lhs.shape != rhs.shape:
        raise ExprError(
            f"the sides of '{op}' have shapes {shape_str(lhs.shape)} and {shape_str(rhs.shape)}"
        )


def _op_text(op: ast.cmpop) -> str:
    return {ast.Lt: "<", ast.Gt: ">", ast.NotEq: "!=", ast.Is: "is", ast.In: "in"}.get(
        type(op), type(op).__name__
    )


def _parse(text: str, limits: Limits) -> ast.Expression:
    """The syntax tree of one expression, after checking its size against ``limits``."""
    if not isinstance(text, str) or not text.strip():
        raise ExprError("empty expression")
    text = text.strip()
    if len(text) > limits.expression_chars:
        raise ExprError(
            f"the expression has {len(text)} characters, more than expression_chars allows; "
            + limits.raise_hint("expression_chars")
        )
    _check_tokens(text, limits)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as err:
        if "too many nested parentheses" in str(err.msg):
            raise ExprError(_TOO_DEEP) from None
        if "integer string conversion" in str(err.msg):  # number_digits raised past Python's
            raise ExprError(
                f"an integer has more digits than Python converts: {err.msg}"
            ) from None
        col = f" at column {err.offset}" if err.offset else ""
        raise ExprError(f"invalid syntax{col} in '{_shorten(text)}'") from None
    except (RecursionError, MemoryError):  # the parser's own stack: a deep '**' tower
        raise ExprError(_TOO_DEEP) from None
    except ValueError as err:  # a NUL character
        raise ExprError(f"cannot parse the expression: {err}") from None
    depth = _depth(tree.body)
    if depth > limits.expression_depth:
        raise ExprError(_nesting_message(depth, limits))
    return tree


def _nesting_message(depth: int, limits: Limits) -> str:
    return (
        f"the expression is nested {depth} levels deep, more than {limits.expression_depth} "
        "(expression_depth); " + limits.raise_hint("expression_depth")
    )


def _shorten(text: str, width: int = 80) -> str:
    """Spec text as a message shows it: one line (control characters escaped, so a newline
    or NUL in an expression cannot break the one-line diagnostic), at most ``width`` long."""
    text = text if len(text) <= width else text[: width - 1] + "…"
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _check_tokens(text: str, limits: Limits) -> None:
    """Integers' digits and a first bound on nesting (brackets and runs of unary signs), from
    the tokens: before ``ast.parse``, which fails on a 5000-digit integer, 200 nested brackets
    or 10⁴ minus signs with messages about Python, or a MemoryError."""
    depth = unary = 0
    previous: tokenize.TokenInfo | None = None
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.NUMBER:
                _check_integer(tok.string, limits)
            is_op = tok.type == tokenize.OP
            if is_op and tok.string in "([{":
                depth += 1
            elif is_op and tok.string in ")]}":
                depth -= 1
            # A sign is unary after an operator, an opening bracket, a comma or nothing.
            operand_before = previous is not None and (
                previous.type != tokenize.OP or previous.string in ")]}"
            )
            unary = unary + 1 if is_op and tok.string in "+-~" and not operand_before else 0
            if depth + unary > limits.expression_depth:
                raise ExprError(
                    f"the expression is nested more than {limits.expression_depth} levels "
                    "deep (expression_depth); " + limits.raise_hint("expression_depth")
                )
            if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT):
                previous = tok
    except (tokenize.TokenError, SyntaxError):  # unbalanced: ast.parse says where
        return


def _check_integer(literal: str, limits: Limits) -> None:
    """An integer literal with more digits than ``number_digits`` is refused (a float's
    digits are harmless: it rounds, or overflows to inf and is refused as a number)."""
    body = literal.replace("_", "").lower()
    if body.startswith(("0x", "0o", "0b")):
        too_big = int(body, 0) >= 10**limits.number_digits  # power-of-two bases convert fast
    elif any(ch in body for ch in ".ej"):
        return
    else:
        too_big = len(body) > limits.number_digits
    if too_big:
        raise ExprError(
            f"the integer {_shorten(literal, 24)} has more than {limits.number_digits} digits "
            "(number_digits); " + limits.raise_hint("number_digits")
        )


def _depth(root: ast.expr) -> int:
    """The nesting depth of an expression tree, by an iterative walk; each link of a chain
    of one operator (``a + b - c``) counts once for the whole chain."""
    deepest = 0
    stack: list[tuple[ast.AST, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, ast.expr | ast.keyword):
                continue  # operators, contexts
            same_chain = (
                isinstance(node, ast.BinOp)
                and child is node.left
                and isinstance(child, ast.BinOp)
                and _chain_group(child.op) is not None
                and _chain_group(child.op) == _chain_group(node.op)
            )
            stack.append((child, depth if same_chain else depth + 1))
    return deepest


def _chain_group(op: ast.operator) -> int | None:
    return _CHAIN_GROUP.get(type(op))


#: CVXPY's keyword names of arguments that foldgen takes by position (pnorm(x, p=1)).
_KEYWORD_POSITIONS = {
    "pnorm": ("x", "p"),
    "norm": ("x", "p"),
    "sum_largest": ("x", "k"),
    "sum_smallest": ("x", "k"),
    "huber": ("x", "M"),
    "reshape": ("expr", "shape"),
    "power": ("x", "p"),
    "kl_div": ("x", "y"),
    "rel_entr": ("x", "y"),
    "quad_form": ("x", "P"),
}


def _positional(node: ast.Call, name: str) -> ast.Call:
    """node with CVXPY's keyword arguments of ``name`` moved to their positions (others, such
    as axis= and order=, stay keywords); a keyword given twice or out of place is an error."""
    names = _KEYWORD_POSITIONS.get(name)
    if not names or not any(kw.arg in names for kw in node.keywords):
        return node
    args = list(node.args)
    rest = []
    given = {kw.arg: kw.value for kw in node.keywords if kw.arg in names}
    rest = [kw for kw in node.keywords if kw.arg not in names]
    for position, arg in enumerate(names):
        if arg not in given:
            continue
        if position < len(args):
            raise ExprError(f"{name}() got {arg} twice (by position and as {arg}=)")
        if position > len(args):
            raise ExprError(f"{name}(): {arg}= needs the arguments before it")
        args.append(given[arg])
    return ast.Call(func=node.func, args=args, keywords=rest)


class _Visitor:
    """Whitelist visitor: every accepted node type has a method; anything else is rejected."""

    def __init__(self, scope: Scope, text: str):
        self.scope = scope
        self.text = text

    def visit(self, node: ast.AST) -> Expr:
        method = getattr(self, f"visit_{type(node).__name__}", None)
        if method is None:
            raise ExprError(f"unsupported syntax '{self._snippet(node)}'")
        with self._located(node):
            return method(node)

    def _snippet(self, node: ast.AST) -> str:
        return _shorten(ast.get_source_segment(self.text.strip(), node) or type(node).__name__)

    @contextlib.contextmanager
    def _located(self, node: ast.AST) -> Iterator[None]:
        """Errors of building ``node`` name its text (the innermost failing part)."""
        try:
            yield
        except ExprError:
            raise
        except (ShapeError, ConstantError) as err:
            raise ExprError(f"in '{self._snippet(node)}': {err}") from None
        except (ArithmeticError, ValueError) as err:
            raise ExprError(
                f"in '{self._snippet(node)}': cannot evaluate the constant ({err})"
            ) from None

    def visit_Name(self, node: ast.Name) -> Expr:
        return self.scope.lookup(node.id)

    def visit_Constant(self, node: ast.Constant) -> Expr:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ExprError(f"unsupported constant {_shorten(repr(value), 40)}")
        if isinstance(value, int) and abs(value) >= 10**self.scope.limits.number_digits:
            raise ExprError(  # tokens are checked first; this is the backstop
                f"an integer has more than {self.scope.limits.number_digits} digits "
                "(number_digits); " + self.scope.limits.raise_hint("number_digits")
            )
        number = float(value)
        if not math.isfinite(number):
            raise ExprError(
                f"the number {self._snippet(node)} is beyond the floating-point range "
                "(about 1.8e308)"
            )
        return E.const(number)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Expr:
        operand = self.visit(node.operand)
        if isinstance(node.op, ast.USub):
            return E.neg(operand)
        if isinstance(node.op, ast.UAdd):
            return operand
        raise ExprError("only unary '-' and '+' are supported")

    def visit_BinOp(self, node: ast.BinOp) -> Expr:
        if isinstance(node.op, _PSD_OPS):
            op = ">>" if isinstance(node.op, ast.RShift) else "<<"
            raise ExprError(
                f"'{op}' is a PSD constraint ('X >> M'): it may only be a whole constraint, "
                f"not part of an expression ('{self._snippet(node)}')"
            )
        if type(node.op) not in _BINOPS:
            raise ExprError(f"operator '{type(node.op).__name__}' is not supported")
        # A chain a + b - c + … is walked along its left spine, not recursively.
        chain = [node]
        group = _chain_group(node.op)
        while (
            group is not None
            and isinstance(chain[-1].left, ast.BinOp)
            and _chain_group(chain[-1].left.op) == group
        ):
            chain.append(chain[-1].left)
        value = self.visit(chain[-1].left)
        for link in reversed(chain):
            right = self.visit(link.right)
            with self._located(link):
                if isinstance(link.op, _ELEMENTWISE_OPS):
                    value, right = _broadcast_pair(value, right)
                value = _BINOPS[type(link.op)][1](value, right)
        return value

    def visit_Attribute(self, node: ast.Attribute) -> Expr:
        if node.attr != "T":
            raise ExprError(f"unknown attribute '.{node.attr}' (only '.T' is supported)")
        return E.transpose(self.visit(node.value))

    def visit_Call(self, node: ast.Call) -> Expr:
        if not isinstance(node.func, ast.Name):
            raise ExprError("only plain function calls like exp(x) are supported")
        name = node.func.id
        node = _positional(node, name)
        if name in ("sum", "mean", "log_sum_exp") and node.keywords:
            return self._reduce(name, node)
        if name in ("reshape", "vec") and node.keywords:
            return self._ordered(name, node)
        if node.keywords:
            raise ExprError(f"{name}() takes no keyword arguments")
        if name in STRUCTURAL_FUNCTIONS:
            return self._structural(name, node.args)
        if name in SIZE_FUNCTIONS:
            return self._size_function(name, node.args)
        if name not in FUNCTIONS:
            hint = difflib.get_close_matches(name, ALL_FUNCTIONS, n=1)
            suffix = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ExprError(f"unknown function '{name}'{suffix}")
        arity, build = FUNCTIONS[name]
        counts = arity if isinstance(arity, tuple) else (arity,)
        if len(node.args) not in counts:
            takes = " or ".join(map(str, counts))
            raise ExprError(f"{name}() takes {takes} argument(s), got {len(node.args)}")
        return build(*(self.visit(a) for a in node.args))

    def _reduce(self, name: str, node: ast.Call) -> Expr:
        """sum(e, axis=0|1) and mean(e, axis=…) of a matrix (NumPy's axis: 0 sums the rows
        together, giving one entry per column)."""
        axis = self._axis(node)
        if len(node.args) != 1:
            raise ExprError(f"{name}() takes one expression and axis=")
        a = self.visit(node.args[0])
        if axis is None or (a.rank == 1 and axis == 0):
            return FUNCTIONS[name][1](a)
        if a.rank != 2:
            raise ExprError(f"{name}(e, axis={axis}) needs a matrix, got {shape_str(a.shape)}")
        if name == "log_sum_exp":  # per column (axis 0) or row (axis 1) of a matrix
            return _log_sum_exp_axis(a, axis)
        if axis == 0:
            out = E.matmul(E.const(1.0, a.shape[:1]), a)
        else:
            out = E.matmul(a, E.const(1.0, a.shape[1:]))
        if name == "mean":
            out = E.div(out, E.size_of(a.shape[axis : axis + 1]))
        return out

    def _ordered(self, name: str, node: ast.Call) -> Expr:
        """reshape/vec with order="C" (row-major, NumPy's and torch's default) or order="F"
        (column-major, CVXPY's default)."""
        order = "C"
        for kw in node.keywords:
            value = kw.value
            if kw.arg != "order" or not (
                isinstance(value, ast.Constant) and value.value in ("C", "F")
            ):
                raise ExprError(f'{name}() takes only the keyword order="C" or order="F"')
            order = value.value
        plain = ast.Call(func=node.func, args=node.args, keywords=[])
        if order == "C":
            return self.visit_Call(plain)
        if name == "vec":
            if len(node.args) != 1:
                raise ExprError("vec() takes one expression")
            return _vec(E.transpose(self.visit(node.args[0])))
        built = self._structural("reshape", node.args)  # checks the arguments
        a = self.visit(node.args[0])
        flat = _vec(E.transpose(a))  # column-major entries
        if built.rank < 2:
            return E.reshape(flat, built.shape)
        rows, cols = built.shape
        return E.transpose(E.reshape(flat, (cols, rows)))

    def _axis(self, node: ast.Call) -> int | None:
        for kw in node.keywords:
            if kw.arg != "axis":
                raise ExprError(f"{node.func.id}() takes only the keyword axis")  # type: ignore[attr-defined]
            value = kw.value
            if isinstance(value, ast.Constant) and value.value is None:
                return None
            if (
                isinstance(value, ast.Constant)
                and type(value.value) is int
                and value.value in (0, 1, -1, -2)
            ):
                return value.value % 2
            raise ExprError("axis must be 0 or 1")
        return None

    def _structural(self, name: str, args: list[ast.expr]) -> Expr:
        if name in ("hstack", "vstack"):
            if len(args) != 1 or not isinstance(args[0], ast.List | ast.Tuple) or not args[0].elts:
                raise ExprError(f"{name}() takes one list of expressions, e.g. {name}([x, y])")
            parts = [self.visit(a) for a in args[0].elts]
            return _stack(1 if name == "hstack" else 0)(*parts)
        if name == "reshape":
            if len(args) != 2 or not isinstance(args[1], ast.List | ast.Tuple):
                raise ExprError(
                    "reshape() takes an expression and a shape, e.g. reshape(x, (m, n))"
                )
            a = self.visit(args[0])
            shape = tuple(self._size(d, "reshape") for d in args[1].elts)
            if len(shape) > 2:
                raise ExprError("reshape() gives a scalar, vector or matrix (at most two sizes)")
            return E.reshape(a, shape)
        if name in ("sum_largest", "sum_smallest"):
            if len(args) != 2:
                raise ExprError(f"{name}() takes an expression and a count k, e.g. {name}(x, 2)")
            a = _vec(self.visit(args[0]))
            k = self._size(args[1], name)
            self._check_range(0, k, a.shape[0], f"{name}'s k = {k}")
            if name == "sum_largest":
                return E.sum_largest(a, k)
            return E.neg(E.sum_largest(E.neg(a), k))
        if name == "norm_inf":
            if len(args) != 1:
                raise ExprError("norm_inf() takes one expression")
            return _norm_inf(self.visit(args[0]))
        if name == "norm":
            return self._norm(args)
        # max / min: of one expression (its largest or smallest entry) or elementwise
        if len(args) == 1:
            a = _vec(self.visit(args[0]))
            return E.sum_largest(a, 1) if name == "max" else E.neg(E.sum_largest(E.neg(a), 1))
        if len(args) != 2:
            raise ExprError(f"{name}() takes one expression, or two for the elementwise {name}")
        a, b = self.visit(args[0]), self.visit(args[1])
        return _maximum(a, b) if name == "max" else _minimum(a, b)

    def _norm(self, args: list[ast.expr]) -> Expr:
        """CVXPY's norm(x, p) of a vector: p = 1, 2 (the default), "inf" or a number ≥ 1;
        of a matrix only "fro" (CVXPY's default for a matrix is the spectral norm)."""
        if len(args) not in (1, 2):
            raise ExprError("norm() takes an expression and an optional p, e.g. norm(x, 1)")
        a = self.visit(args[0])
        p = args[1] if len(args) == 2 else None
        if isinstance(p, ast.Constant) and p.value in ("inf", "Inf", "fro"):
            if p.value == "fro":
                return _norm2(a)
            return _norm_inf(a)
        if isinstance(p, ast.Name) and p.id in ("inf", "Inf"):
            return _norm_inf(a)
        if a.rank == 2:
            raise ExprError(
                "norm() of a matrix is supported as norm(X, 'fro') only (CVXPY's norm(X) "
                "is the spectral norm, which foldgen does not have)"
            )
        if p is None:
            return _norm2(a)
        return _pnorm(a, self.visit(p))

    def visit_Subscript(self, node: ast.Subscript) -> Expr:
        """x[i], x[1:], x[:-1], X[i, j], X[:, 0], X[1:, :] with integer or dim indices
        (negative counts from the end); a scalar index drops its axis, as in NumPy."""
        a = self.visit(node.value)
        index = node.slice
        items = list(index.elts) if isinstance(index, ast.Tuple) else [index]
        if len(items) > a.rank:
            raise ExprError(
                f"too many indices ({len(items)}) for a {shape_str(a.shape)} expression"
            )
        out = a
        drop: list[int] = []
        for axis, item in enumerate(items):
            size = a.shape[axis]
            if isinstance(item, ast.Slice):
                if item.step is not None:
                    raise ExprError("slices with a step are not supported")
                start = self._index(item.lower, size, 0)
                stop = self._index(item.upper, size, size)
                self._check_range(start, stop, size, f"the slice {start}:{stop}")
                out = E.slice_(out, axis, start, stop)
            else:
                i = self._index(item, size, 0)
                self._check_range(i, dims.add(i, 1), size, f"the index {i}")
                out = E.slice_(out, axis, i, dims.add(i, 1))
                drop.append(axis)
        if drop:
            shape = tuple(d for k, d in enumerate(out.shape) if k not in drop)
            out = E.reshape(out, shape)
        return out

    def _check_range(self, start: E.Dim, stop: E.Dim, size: E.Dim, what: str) -> None:
        """0 ≤ start < stop ≤ size at the spec's declared sizes (where the layer's shapes
        come from unless its inputs say otherwise)."""
        try:
            first, last, n = (dims.evaluate(d, self.scope.dims) for d in (start, stop, size))
        except KeyError:  # a size of no declared dim: nothing to check against
            return
        if not 0 <= first < last <= n:
            raise ExprError(f"{what} is outside an axis of size {size} (= {n})")

    def _index(self, node: ast.expr | None, size: E.Dim, default: E.Dim) -> E.Dim:
        if node is None:
            return default
        value = self._dim_expression(node)
        if isinstance(value, int) and value < 0:
            return dims.add(size, value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return dims.add(size, value)
        return value

    def _dim_expression(self, node: ast.expr) -> E.Dim:
        """An index: an integer, a dim, or + - * of them."""
        if isinstance(node, ast.Constant) and type(node.value) is int:
            if abs(node.value) > self.scope.limits.dim_size:
                raise ExprError("an index larger than dim_size allows")
            return node.value
        if isinstance(node, ast.Name) and node.id in self.scope.dims:
            return node.id
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            inner = self._dim_expression(node.operand)
            return dims.sub(0, inner)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub | ast.Mult):
            a, b = self._dim_expression(node.left), self._dim_expression(node.right)
            if isinstance(node.op, ast.Add):
                return dims.add(a, b)
            return dims.sub(a, b) if isinstance(node.op, ast.Sub) else dims.mul(a, b)
        raise ExprError(
            f"an index is an integer, a dim or arithmetic of them, not '{self._snippet(node)}'"
        )

    def _size_function(self, name: str, args: list[ast.expr]) -> Expr:
        dims = [self._size(a, name) for a in args]
        if name == "eye":
            if len(dims) != 1:
                raise ExprError("eye() takes one size, e.g. eye(n)")
            return E.Eye(dims[0])
        if len(dims) not in (1, 2):
            raise ExprError("ones() takes one or two sizes, e.g. ones(n) or ones(m, n)")
        return E.const(1.0, tuple(dims))

    def _size(self, node: ast.expr, fn: str) -> E.Dim:
        if isinstance(node, ast.Name) and node.id in self.scope.dims:
            return node.id
        # type() rather than isinstance(): ones(True) is not a size
        if isinstance(node, ast.Constant) and type(node.value) is int and node.value > 0:
            limits = self.scope.limits
            if node.value > limits.dim_size:
                raise ExprError(
                    f"{fn}() of a size larger than dim_size allows; "
                    + limits.raise_hint("dim_size")
                )
            return node.value
        raise ExprError(f"{fn}() takes sizes: dim names or positive integers")
