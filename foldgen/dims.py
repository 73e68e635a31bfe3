"""Sizes with arithmetic: a shape entry is an integer, a dim name or a polynomial of dims.

Slicing ``x[1:]`` of a vector of size n gives size ``n - 1``, stacking x and y gives
``m + n``, ``vec(X)`` of an (m, n) matrix ``m*n``. Such a size is kept as its canonical text
(sympy's expanded form: ``m + n``, ``k*n``, ``T + 1``), so shapes stay plain tuples of
``str | int`` that compare by equality, print as Python (the dim names are local variables of
every generated function) and reach no ``eval``: the text is read back by an `ast` walk that
accepts only names, integers, ``+``, ``-``, ``*`` and positive integer powers ``**``.
"""

from __future__ import annotations

import ast
import functools
import re

import sympy

Dim = str | int


class DimError(ValueError):
    """A size expression that is not a polynomial of dims, or not a positive size."""


def is_name(d: Dim) -> bool:
    """A plain dim name (not an integer, not arithmetic of dims)."""
    return isinstance(d, str) and d.isidentifier()


@functools.lru_cache(maxsize=4096)
def _to_sympy(d: Dim) -> sympy.Expr:
    if isinstance(d, int):
        return sympy.Integer(d)
    try:
        tree = ast.parse(d, mode="eval")
    except SyntaxError:
        raise DimError(f"'{d}' is not a size expression") from None
    return _walk(tree.body, d)


def _walk(node: ast.expr, text: str) -> sympy.Expr:
    if isinstance(node, ast.Name):
        return sympy.Symbol(node.id, positive=True, integer=True)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return sympy.Integer(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_walk(node.operand, text)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub | ast.Mult):
        a, b = _walk(node.left, text), _walk(node.right, text)
        if isinstance(node.op, ast.Add):
            return a + b
        return a - b if isinstance(node.op, ast.Sub) else a * b
    if (  # sympy's own text of a product of equal dims: vec of an (n, n) matrix is n**2
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Pow)
        and isinstance(node.right, ast.Constant)
        and type(node.right.value) is int
        and node.right.value > 0
    ):
        return _walk(node.left, text) ** node.right.value
    raise DimError(f"'{text}' is not a size expression (dims, integers, +, - and *)")


def _from_sympy(e: sympy.Expr) -> Dim:
    e = sympy.expand(e)
    if e.is_Integer:
        return int(e)
    return str(e)


def canonical(d: Dim) -> Dim:
    """The canonical form of a size: ``'n+1'`` and ``'1 + n'`` are both ``'n + 1'``."""
    return d if isinstance(d, int) or is_name(d) else _from_sympy(_to_sympy(d))


def add(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    return _from_sympy(_to_sympy(a) + _to_sympy(b))


def sub(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a - b
    return _from_sympy(_to_sympy(a) - _to_sympy(b))


def mul(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    return _from_sympy(_to_sympy(a) * _to_sympy(b))


def total(sizes: tuple[Dim, ...] | list[Dim]) -> Dim:
    out: Dim = 0
    for s in sizes:
        out = add(out, s)
    return out


def product(shape: tuple[Dim, ...]) -> Dim:
    out: Dim = 1
    for s in shape:
        out = mul(out, s)
    return out


def names(d: Dim) -> tuple[str, ...]:
    """The dim names a size uses, sorted."""
    if isinstance(d, int):
        return ()
    if is_name(d):
        return (d,)
    return tuple(sorted(str(s) for s in _to_sympy(d).free_symbols))


def nonnegative(d: Dim) -> bool:
    """True when d ≥ 0 for every choice of positive dims (all coefficients ≥ 0)."""
    e = sympy.expand(_to_sympy(d))
    if e.is_Integer:
        return int(e) >= 0
    poly = sympy.Poly(e, *sorted(e.free_symbols, key=str))
    return all(c >= 0 for c in poly.coeffs())


def positive(d: Dim) -> bool:
    """True when d ≥ 1 for every choice of positive dims."""
    return nonnegative(sub(d, 1))


def evaluate(d: Dim, sizes: dict[str, int]) -> int:
    """The value of a size given the dims' values."""
    if isinstance(d, int):
        return d
    if is_name(d):
        return sizes[d]
    e = _to_sympy(d)
    return int(e.subs({s: sizes[str(s)] for s in e.free_symbols}))


def source(d: Dim) -> str:
    """A size as formatted Python source (its dim names in scope): ``k * n + m``."""
    return re.sub(r"(?<!\*)\*(?!\*)", " * ", str(d))
