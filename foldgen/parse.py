"""A safe parser from spec expression strings to the vector IR.

A spec is untrusted input, so nothing here calls ``eval`` (nor ``sympy.parse_expr``, which
does): the string is parsed by ``ast.parse(mode="eval")`` and walked by a visitor that accepts
only the NumPy/CVXPY subset of SPEC.md — names, numbers, ``+ - * / ** @``, unary minus,
``.T``, comparisons (in constraints) and the whitelisted functions. Anything else is an
``ExprError`` that says what is wrong; the caller adds file, line and key.
"""

from __future__ import annotations

import ast
import difflib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from foldgen import expr as E
from foldgen.expr import Expr, Leaf, ShapeError, shape_str

_T = TypeVar("_T")


class ExprError(ValueError):
    """An expression that cannot be parsed or typed; the message names the culprit."""


@dataclass(frozen=True)
class Relation:
    """One (in)equality of a constraint: ``lhs op rhs`` with op in '<=', '>=', '=='."""

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


FUNCTIONS: dict[str, tuple[int, Callable[..., Expr]]] = {
    "sum": _unary(E.sum_),
    "dot": (2, E.dot),
    "quad_form": (2, _quad_form),
    "sum_squares": _unary(_sum_squares),
    "norm2": _unary(_norm2),
    "norm1": _unary(_norm1),
    "square": _unary(_square),
    "log_sum_exp": _unary(E.log_sum_exp),
    "diag": _unary(E.diag),
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
ALL_FUNCTIONS = tuple(FUNCTIONS) + SIZE_FUNCTIONS

_BINOPS = {
    ast.Add: ("+", E.add),
    ast.Sub: ("-", E.sub),
    ast.Mult: ("*", E.mul),
    ast.Div: ("/", E.div),
    ast.Pow: ("**", E.power),
    ast.MatMult: ("@", E.matmul),
}
_CMPOPS = {ast.LtE: "<=", ast.GtE: ">=", ast.Eq: "=="}


class Scope:
    """The names an expression may use: dims (as numbers), parameters and variables."""

    def __init__(self, dims: dict[str, int], leaves: dict[str, Leaf]):
        self.dims = dims
        self.leaves = leaves

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
        raise ExprError(f"unknown name '{name}'{suffix}")


def _depth_guard(fn: Callable[[str, Scope], _T]) -> Callable[[str, Scope], _T]:
    """Turn Python's recursion limit (ast.parse and the visitor recurse on nesting, e.g. a
    sum of thousands of terms) into an ExprError instead of a traceback."""

    @functools.wraps(fn)
    def guarded(text: str, scope: Scope) -> _T:
        try:
            return fn(text, scope)
        except RecursionError:
            raise ExprError("expression nested too deeply; split it into smaller parts") from None

    return guarded


@_depth_guard
def parse_expression(text: str, scope: Scope) -> Expr:
    """Parse one expression (no comparisons)."""
    tree = _parse(text)
    if isinstance(tree.body, ast.Compare):
        raise ExprError("a comparison is not allowed here; comparisons belong in constraints")
    return _Visitor(scope, text).visit(tree.body)


@_depth_guard
def parse_constraint(text: str, scope: Scope) -> list[Relation]:
    """Parse ``a <= b``, ``a >= b``, ``a == b`` or a chain ``lo <= e <= hi`` into relations."""
    tree = _parse(text)
    node = tree.body
    if not isinstance(node, ast.Compare):
        raise ExprError("a constraint needs a comparison: '<=', '>=' or '=='")
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
        lhs, rhs = sides[i], sides[i + 1]
        _check_sides(lhs, rhs, sym)
        out.append(Relation(lhs, sym, rhs))
    if len(out) > 1 and any(r.op == "==" for r in out):
        raise ExprError("a chained comparison may not contain '=='")
    return out


def _check_sides(lhs: Expr, rhs: Expr, op: str) -> None:
    if lhs.rank and rhs.rank and lhs.shape != rhs.shape:
        raise ExprError(
            f"the sides of '{op}' have shapes {shape_str(lhs.shape)} and {shape_str(rhs.shape)}"
        )


def _op_text(op: ast.cmpop) -> str:
    return {ast.Lt: "<", ast.Gt: ">", ast.NotEq: "!=", ast.Is: "is", ast.In: "in"}.get(
        type(op), type(op).__name__
    )


def _parse(text: str) -> ast.Expression:
    if not isinstance(text, str) or not text.strip():
        raise ExprError("empty expression")
    try:
        return ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        col = f" at column {err.offset}" if err.offset else ""
        raise ExprError(f"invalid syntax{col} in '{text.strip()}'") from None


class _Visitor:
    """Whitelist visitor: every accepted node type has a method; anything else is rejected."""

    def __init__(self, scope: Scope, text: str):
        self.scope = scope
        self.text = text

    def visit(self, node: ast.AST) -> Expr:
        method = getattr(self, f"visit_{type(node).__name__}", None)
        if method is None:
            snippet = ast.get_source_segment(self.text.strip(), node) or type(node).__name__
            raise ExprError(f"unsupported syntax '{snippet}'")
        try:
            return method(node)
        except ShapeError as err:
            snippet = ast.get_source_segment(self.text.strip(), node)
            raise ExprError(f"in '{snippet}': {err}") from None
        except ExprError:
            raise
        except (ArithmeticError, ValueError) as err:  # constant folding: log(0), 0 ** -1
            snippet = ast.get_source_segment(self.text.strip(), node)
            raise ExprError(f"in '{snippet}': cannot evaluate the constant ({err})") from None

    def visit_Name(self, node: ast.Name) -> Expr:
        return self.scope.lookup(node.id)

    def visit_Constant(self, node: ast.Constant) -> Expr:
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ExprError(f"unsupported constant {node.value!r}")
        return E.const(float(node.value))

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Expr:
        operand = self.visit(node.operand)
        if isinstance(node.op, ast.USub):
            return E.neg(operand)
        if isinstance(node.op, ast.UAdd):
            return operand
        raise ExprError("only unary '-' and '+' are supported")

    def visit_BinOp(self, node: ast.BinOp) -> Expr:
        entry = _BINOPS.get(type(node.op))
        if entry is None:
            raise ExprError(f"operator '{type(node.op).__name__}' is not supported")
        return entry[1](self.visit(node.left), self.visit(node.right))

    def visit_Attribute(self, node: ast.Attribute) -> Expr:
        if node.attr != "T":
            raise ExprError(f"unknown attribute '.{node.attr}' (only '.T' is supported)")
        return E.transpose(self.visit(node.value))

    def visit_Call(self, node: ast.Call) -> Expr:
        if not isinstance(node.func, ast.Name):
            raise ExprError("only plain function calls like exp(x) are supported")
        name = node.func.id
        if node.keywords:
            raise ExprError(f"{name}() takes no keyword arguments")
        if name in SIZE_FUNCTIONS:
            return self._size_function(name, node.args)
        if name not in FUNCTIONS:
            hint = difflib.get_close_matches(name, ALL_FUNCTIONS, n=1)
            suffix = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ExprError(f"unknown function '{name}'{suffix}")
        arity, build = FUNCTIONS[name]
        if len(node.args) != arity:
            raise ExprError(f"{name}() takes {arity} argument(s), got {len(node.args)}")
        return build(*(self.visit(a) for a in node.args))

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
            return node.value
        raise ExprError(f"{fn}() takes sizes: dim names or positive integers")
