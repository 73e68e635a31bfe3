"""The vector-level expression IR: shapes, nodes and simplifying constructors.

Why our own IR rather than sympy's ``MatrixSymbol`` calculus: sympy differentiates linear and
quadratic matrix forms well, but an elementwise function (``sin(x)``, ``entr(x)``) turns its
derivatives into tensor-array expressions that never return to matrix algebra. Here every node
keeps a *core shape* of rank 0, 1 or 2 (scalar, vector, matrix) whose entries are dim names or
integers; at run time each tensor also carries any number of leading batch dimensions, so the
code printed from this IR is batched and its size never depends on the problem's dimensions.

Nodes are frozen and interned (hash-consed): equal subexpressions are the same object, which
gives common-subexpression elimination for free and keeps every operation linear in the DAG. Build nodes through the lower-case constructors (``add``,
``mul``, ``matmul`` …): they check shapes and apply the algebraic simplifications that keep
derived expressions small (zeros vanish, constants fold, like terms combine, a symmetric
matrix's transpose is itself).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from foldgen import dims as _dims

Dim = str | int
Shape = tuple[Dim, ...]

SCALAR: Shape = ()


class ShapeError(ValueError):
    """Operands whose shapes do not fit; the parser turns it into a located SpecError."""


class ConstantError(ArithmeticError):
    """Constant folding that leaves the finite numbers (1e300 * 1e300, exp(1000), 0 ** -1).

    A generated module computes in floating point, where such a constant is ±inf or NaN and
    poisons every result, so the build refuses it with the offending arithmetic.
    """


def _folded(value: float, text: Callable[[], str], *operands: float) -> float:
    """``value``, computed from ``operands``: finite, or infinite only from an infinite operand
    (a rule's ±∞ bound), never NaN; else a ConstantError showing ``text()``."""
    if math.isfinite(value) or (
        not math.isnan(value) and not all(math.isfinite(v) for v in operands)
    ):
        return value
    raise ConstantError(f"cannot evaluate the constant {text()}: not a finite number")


def shape_str(shape: Shape) -> str:
    return "scalar" if not shape else "[" + ", ".join(str(d) for d in shape) + "]"


# --------------------------------------------------------------------------- nodes


class _Interned(type):
    """Hash-consing: building a node equal to a live one returns that node.

    Derivation shares subexpressions freely (the cotangent of a product reuses both factors),
    so the IR is a DAG whose tree expansion can be exponentially larger than the DAG. With
    every node unique per structure, equality is identity and a node's hash, shape and leaves
    are computed once from its children's, so no operation ever walks the tree expansion.
    The table holds nodes weakly: a build's expressions go away with the build.
    """

    def __call__(cls, *args, **kwargs):
        names = _field_names(cls)
        if kwargs or len(args) != len(names):
            bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
            bound.apply_defaults()
            args = tuple(bound.arguments[name] for name in names)
        key = (cls, *args)
        node = _TABLE.get(key)
        if node is None:
            node = super().__call__(*args)
            _TABLE[key] = node
            _count_new_node()
        return node


_TABLE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


class NodeBudgetExceeded(Exception):
    """More distinct nodes were built than the active `NodeBudget` allows."""

    def __init__(self, limit: int):
        super().__init__(f"more than {limit} distinct expression nodes")
        self.limit = limit


class NodeBudget:
    """A bound on the distinct nodes built while it is active (``with budget: …``).

    One budget serves a whole build (parsing, then the rule's derivations): it can be entered
    again and counts on. Derivation is polynomial, but a hostile spec can still ask for a lot
    of it; this turns that into one error instead of a build that runs for minutes.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._outer: list[NodeBudget | None] = []

    def __enter__(self) -> NodeBudget:
        global _ACTIVE_BUDGET
        self._outer.append(_ACTIVE_BUDGET)
        _ACTIVE_BUDGET = self
        return self

    def __exit__(self, *exc: object) -> None:
        global _ACTIVE_BUDGET
        _ACTIVE_BUDGET = self._outer.pop()


_ACTIVE_BUDGET: NodeBudget | None = None
_CREATED = 0


def _count_new_node() -> None:
    global _CREATED
    _CREATED += 1
    budget = _ACTIVE_BUDGET
    if budget is not None:
        budget.used += 1
        if budget.used > budget.limit:
            raise NodeBudgetExceeded(budget.limit)


def nodes_created() -> int:
    """How many distinct nodes have been built in this process (a cost measure for tests)."""
    return _CREATED


@dataclass(frozen=True, eq=False)
class Expr(metaclass=_Interned):
    """Base of all nodes; ``shape`` is the core shape (batch dimensions are implicit).

    Nodes are interned (see `_Interned`): compare them with ``==`` (identity) and use them as
    dict keys freely. Their shape, leaves and hash are fixed at construction, bottom-up, so
    even a very deep expression is never walked recursively.
    """

    if TYPE_CHECKING:  # set by __post_init__; declared as properties, not dataclass fields

        @property
        def children(self) -> tuple[Expr, ...]:
            """The operands, in order."""

        @property
        def leaves(self) -> frozenset[Leaf]:
            """Every leaf this expression depends on."""

        @property
        def shape(self) -> Shape: ...

        @property
        def _hash(self) -> int: ...

    def __post_init__(self) -> None:
        cls = type(self)
        set_ = object.__setattr__
        set_(self, "_hash", hash((cls.__name__, *(getattr(self, f) for f in _field_names(cls)))))
        kids = self._children()
        if isinstance(self, Leaf):
            leaves: frozenset[Leaf] = frozenset((self,))
        elif not kids:
            leaves = frozenset()
        else:
            leaves = kids[0].leaves
            for c in kids[1:]:
                if not c.leaves <= leaves:
                    leaves = leaves | c.leaves
        set_(self, "children", kids)
        set_(self, "leaves", leaves)
        set_(self, "shape", self._core_shape())

    def _children(self) -> tuple[Expr, ...]:
        return ()

    def _core_shape(self) -> Shape:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def rank(self) -> int:
        return len(self.shape)

    def depends_on(self, leaf: Leaf) -> bool:
        return leaf in self.leaves

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self):
        """Copies and unpickled nodes are rebuilt through the intern table."""
        return type(self), tuple(getattr(self, f) for f in _field_names(type(self)))


@dataclass(frozen=True, eq=False)
class Leaf(Expr):
    """A named input: ``kind`` is 'param', 'var', 'dim' (a size used as a number) or 'aux'
    (a symbol introduced by derivation, e.g. the vector v of a vector–Jacobian product)."""

    name: str
    kind: str
    shape_: Shape
    properties: frozenset[str] = field(default=frozenset())

    def _core_shape(self) -> Shape:
        return self.shape_


@dataclass(frozen=True, eq=False)
class Const(Expr):
    """A number, broadcast to ``shape`` (``ones(n)`` is ``Const(1.0, ('n',))``)."""

    value: float
    shape_: Shape = SCALAR

    def _core_shape(self) -> Shape:
        return self.shape_


@dataclass(frozen=True, eq=False)
class Eye(Expr):
    """The identity matrix of size ``dim``."""

    dim: Dim

    def _core_shape(self) -> Shape:
        return (self.dim, self.dim)


@dataclass(frozen=True, eq=False)
class Add(Expr):
    """An n-ary sum; scalar terms broadcast to the result's shape."""

    terms: tuple[Expr, ...]
    shape_: Shape

    def _core_shape(self) -> Shape:
        return self.shape_

    def _children(self) -> tuple[Expr, ...]:
        return self.terms


@dataclass(frozen=True, eq=False)
class Mul(Expr):
    """Elementwise product; a scalar operand broadcasts."""

    a: Expr
    b: Expr

    def _core_shape(self) -> Shape:
        return self.a.shape if self.a.rank >= self.b.rank else self.b.shape

    def _children(self) -> tuple[Expr, ...]:
        return (self.a, self.b)


@dataclass(frozen=True, eq=False)
class Pow(Expr):
    """Elementwise power with a scalar exponent."""

    base: Expr
    exp: Expr

    def _core_shape(self) -> Shape:
        return self.base.shape

    def _children(self) -> tuple[Expr, ...]:
        return (self.base, self.exp)


@dataclass(frozen=True, eq=False)
class MatMul(Expr):
    """NumPy ``@`` on ranks 1 and 2: matrix–matrix, matrix–vector, vector–matrix, dot."""

    a: Expr
    b: Expr

    def _core_shape(self) -> Shape:
        return self.a.shape[:-1] + self.b.shape[:-2] + self.b.shape[-1:][: self.b.rank - 1]

    def _children(self) -> tuple[Expr, ...]:
        return (self.a, self.b)


@dataclass(frozen=True, eq=False)
class Transpose(Expr):
    """Matrix transpose (vectors are 1-D, so their transpose is themselves)."""

    a: Expr

    def _core_shape(self) -> Shape:
        return (self.a.shape[1], self.a.shape[0])

    def _children(self) -> tuple[Expr, ...]:
        return (self.a,)


@dataclass(frozen=True, eq=False)
class Sum(Expr):
    """Sum of all core entries, giving a scalar."""

    a: Expr

    def _core_shape(self) -> Shape:
        return SCALAR

    def _children(self) -> tuple[Expr, ...]:
        return (self.a,)


@dataclass(frozen=True, eq=False)
class Broadcast(Expr):
    """A scalar repeated to ``shape`` (appears in derivatives of sums)."""

    a: Expr
    shape_: Shape

    def _core_shape(self) -> Shape:
        return self.shape_

    def _children(self) -> tuple[Expr, ...]:
        return (self.a,)


@dataclass(frozen=True, eq=False)
class Func(Expr):
    """An elementwise function from ``foldgen.functions`` (sin, entr, softplus …)."""

    name: str
    a: Expr

    def _core_shape(self) -> Shape:
        return self.a.shape

    def _children(self) -> tuple[Expr, ...]:
        return (self.a,)


@dataclass(frozen=True, eq=False)
class Diag(Expr):
    """``diag(v)``: the diagonal matrix with v on its diagonal."""

    a: Expr

    def _core_shape(self) -> Shape:
        return (self.a.shape[0], self.a.shape[0])

    def _children(self) -> tuple[Expr, ...]:
        return (self.a,)


@dataclass(frozen=True, eq=False)
class DiagPart(Expr):
    """The diagonal of a square matrix, as a vector."""

    a: Expr

    def _core_shape(self) -> Shape:
        return (self.a.shape[0],)

    def _children(self) -> tuple[Expr, ...]:
        return (self.a,)


@dataclass(frozen=True, eq=False)
class Outer(Expr):
    """Outer product a bᵀ of two vectors (appears in derivatives w.r.t. matrices)."""

    a: Expr
    b: Expr

    def _core_shape(self) -> Shape:
        return (self.a.shape[0], self.b.shape[0])

    def _children(self) -> tuple[Expr, ...]:
        return (self.a, self.b)


@dataclass(frozen=True, eq=False)
class LogSumExp(Expr):
    """log Σ exp(a) over the core entries of a vector, giving a scalar."""

    a: Expr

    def _core_shape(self) -> Shape:
        return SCALAR

    def _children(self) -> tuple[Expr, ...]:
        return (self.a,)


@dataclass(frozen=True, eq=False)
class Softmax(Expr):
    """softmax(a) over a vector (the gradient of log_sum_exp)."""

    a: Expr

    def _core_shape(self) -> Shape:
        return self.a.shape

    def _children(self) -> tuple[Expr, ...]:
        return (self.a,)


@dataclass(frozen=True, eq=False)
class Kron(Expr):
    """The Kronecker product of two matrices: (m, n) ⊗ (p, q) is (m p, n q)."""

    a: Expr
    b: Expr

    def _core_shape(self) -> Shape:
        (m, n), (p, q) = self.a.shape, self.b.shape
        return (_dims.mul(m, p), _dims.mul(n, q))

    def _children(self) -> tuple[Expr, ...]:
        return (self.a, self.b)


@dataclass(frozen=True, eq=False)
class KronLeft(Expr):
    """Σ_kl G[i p + k, j q + l] B[k, l], of shape ``shape_`` (m, n): the cotangent of A in
    kron(A, B) for the cotangent G (and linear in each of G and B)."""

    g: Expr
    b: Expr
    shape_: Shape

    def _core_shape(self) -> Shape:
        return self.shape_

    def _children(self) -> tuple[Expr, ...]:
        return (self.g, self.b)


@dataclass(frozen=True, eq=False)
class KronRight(Expr):
    """Σ_ij G[i p + k, j q + l] A[i, j], of shape ``shape_`` (p, q): the cotangent of B in
    kron(A, B) for the cotangent G."""

    g: Expr
    a: Expr
    shape_: Shape

    def _core_shape(self) -> Shape:
        return self.shape_

    def _children(self) -> tuple[Expr, ...]:
        return (self.g, self.a)


@dataclass(frozen=True, eq=False)
class SumLargest(Expr):
    """The sum of the k largest entries of a vector (CVXPY's sum_largest; max at k = 1,
    and norm_inf of |a|): convex, piecewise linear, non-smooth where entries tie."""

    a: Expr
    k: Dim

    def _core_shape(self) -> Shape:
        return SCALAR

    def _children(self) -> tuple[Expr, ...]:
        return (self.a,)


@dataclass(frozen=True, eq=False)
class TopMask(Expr):
    """1 on the k largest entries of a vector, else 0 (ties: the first ones): the gradient
    of sum_largest where it exists, and a subgradient where entries tie."""

    a: Expr
    k: Dim

    def _core_shape(self) -> Shape:
        return self.a.shape

    def _children(self) -> tuple[Expr, ...]:
        return (self.a,)


@dataclass(frozen=True, eq=False)
class Slice(Expr):
    """Entries ``start:stop`` of core axis ``axis`` (``x[1:]``, ``X[:, 0:1]``); sizes may be
    dim arithmetic (`foldgen.dims`)."""

    a: Expr
    axis: int
    start: Dim
    stop: Dim

    def _core_shape(self) -> Shape:
        shape = list(self.a.shape)
        shape[self.axis] = _dims.sub(self.stop, self.start)
        return tuple(shape)

    def _children(self) -> tuple[Expr, ...]:
        return (self.a,)


@dataclass(frozen=True, eq=False)
class Part(Expr):
    """Block ``index`` of a vector cut into consecutive blocks of ``sizes``: how a problem's
    variables sit in the one packed state the rules iterate on. The partition is part of the
    node so that cotangents of different blocks meet as one concatenation."""

    a: Expr
    sizes: tuple[Dim, ...]
    index: int
    label: str = ""  # the variable the block holds, for readable math

    def _core_shape(self) -> Shape:
        return (self.sizes[self.index],)

    def _children(self) -> tuple[Expr, ...]:
        return (self.a,)


@dataclass(frozen=True, eq=False)
class Reshape(Expr):
    """The same entries in row-major (C) order under another core shape (``vec``, ``x[0]``)."""

    a: Expr
    shape_: Shape

    def _core_shape(self) -> Shape:
        return self.shape_

    def _children(self) -> tuple[Expr, ...]:
        return (self.a,)


@dataclass(frozen=True, eq=False)
class Concat(Expr):
    """Operands of one rank joined along core axis ``axis`` (``hstack``, ``vstack``)."""

    parts: tuple[Expr, ...]
    axis: int

    def _core_shape(self) -> Shape:
        shape = list(self.parts[0].shape)
        shape[self.axis] = _dims.total([p.shape[self.axis] for p in self.parts])
        return tuple(shape)

    def _children(self) -> tuple[Expr, ...]:
        return self.parts


# --------------------------------------------------------------------------- helpers


def const(value: float, shape: Shape = SCALAR) -> Const:
    """A numeric constant; NaN is never one (±∞ only as a rule's absent bound)."""
    try:
        value = float(value)
    except OverflowError:  # an int beyond the float range
        raise ConstantError(
            "an integer is beyond the floating-point range (about 1.8e308)"
        ) from None
    if math.isnan(value):
        raise ConstantError("a constant is NaN (not a number)")
    return Const(value, tuple(shape))


def zero(shape: Shape = SCALAR) -> Const:
    return const(0.0, shape)


def is_const(e: Expr, value: float | None = None) -> bool:
    return isinstance(e, Const) and (value is None or e.value == value)


def is_zero(e: Expr) -> bool:
    return is_const(e, 0.0)


def _check_elementwise(op: str, a: Expr, b: Expr) -> Shape:
    if a.rank == 0:
        return b.shape
    if b.rank == 0 or a.shape == b.shape:
        return a.shape
    raise ShapeError(
        f"shapes {shape_str(a.shape)} and {shape_str(b.shape)} do not match for '{op}' "
        "(elementwise operations need equal shapes or a scalar)"
    )


def _split_coeff(e: Expr) -> tuple[float, Expr]:
    """Write e as c·base with c a number (for collecting like terms)."""
    if isinstance(e, Mul) and isinstance(e.a, Const) and e.a.rank == 0:
        return e.a.value, e.b
    if isinstance(e, Const):
        return e.value, const(1.0, e.shape)
    return 1.0, e


def _unbroadcast(e: Expr, shape: Shape) -> Expr:
    """Drop a Broadcast wrapper when the other operand already has the full shape."""
    if isinstance(e, Broadcast) and e.shape == shape:
        return e.a
    return e


# --------------------------------------------------------------------------- constructors


def add(*terms: Expr) -> Expr:
    """Sum with flattening, zero removal, constant folding and like-term collection."""
    shape: Shape = SCALAR
    for t in terms:
        if t.rank and shape and t.shape != shape:
            raise ShapeError(
                f"shapes {shape_str(shape)} and {shape_str(t.shape)} do not match for '+' "
                "(elementwise operations need equal shapes or a scalar)"
            )
        shape = shape or t.shape
    flat: list[Expr] = []
    for t in terms:
        flat.extend(t.terms if isinstance(t, Add) else (t,))
    if shape and len(shape) == 1:
        flat = _merge_concats(flat)
    coeffs: dict[Expr, float] = {}
    constant = 0.0
    for t in flat:
        if isinstance(t, Const):
            if t.rank == 0 or t.shape == shape:
                constant = _plus(constant, t.value)
                continue
        c, base = _split_coeff(t)
        base = _unbroadcast(base, shape) if shape else base
        coeffs[base] = _plus(coeffs.get(base, 0.0), c)
    out = [mul(const(c), b) for b, c in coeffs.items() if c != 0.0]
    if constant != 0.0:
        out.append(const(constant, shape if not out else SCALAR))
    if not out:
        return zero(shape)
    if len(out) == 1:
        only = out[0]
        if only.shape != shape:
            return broadcast(only, shape)
        return only
    if all(t.shape != shape for t in out):
        return broadcast(Add(tuple(out), SCALAR), shape)
    return Add(tuple(out), shape)


def _plus(a: float, b: float) -> float:
    return _folded(a + b, lambda: f"{a!r} + {b!r}", a, b)


def _times(a: float, b: float) -> float:
    return _folded(a * b, lambda: f"{a!r} * {b!r}", a, b)


def neg(a: Expr) -> Expr:
    return mul(const(-1.0), a)


def sub(a: Expr, b: Expr) -> Expr:
    return add(a, neg(b))


def mul(a: Expr, b: Expr) -> Expr:
    """Elementwise product with zero/one elimination and numeric coefficients kept in front."""
    shape = _check_elementwise("*", a, b)
    if is_zero(a) or is_zero(b):
        return zero(shape)
    if isinstance(b, Const) and not isinstance(a, Const):
        a, b = b, a
    if isinstance(a, Const):
        if isinstance(b, Const):
            return const(_times(a.value, b.value), shape)
        if a.value == 1.0:
            return b if b.shape == shape else broadcast(b, shape)
        if isinstance(b, Mul) and isinstance(b.a, Const) and b.a.rank == 0:
            return mul(const(_times(a.value, b.a.value), shape if a.rank else SCALAR), b.b)
        if isinstance(b, Add) and a.rank == 0:
            return add(*(mul(a, t) for t in b.terms))
        if isinstance(b, Concat) and a.rank == 0:
            return concat([broadcast(mul(a, t), t.shape) for t in b.parts], b.axis)
        if a.rank:  # a constant vector times a scalar: keep the scalar, broadcast
            return (
                broadcast(mul(const(a.value), b), shape) if b.rank == 0 else mul(const(a.value), b)
            )
    if shape:
        a = _unbroadcast(a, shape)
        b = _unbroadcast(b, shape)
    if (
        isinstance(a, Concat)
        and isinstance(b, Concat)
        and a.axis == b.axis
        and [p.shape for p in a.parts] == [p.shape for p in b.parts]
    ):
        return concat([broadcast(mul(p, q), p.shape) for p, q in zip(a.parts, b.parts)], a.axis)
    if isinstance(b, Mul) and isinstance(b.a, Const) and b.a.rank == 0:
        return mul(b.a, mul(a, b.b))
    if isinstance(a, Mul) and isinstance(a.a, Const) and a.a.rank == 0:
        return mul(a.a, mul(a.b, b))
    return Mul(a, b)


def div(a: Expr, b: Expr) -> Expr:
    _check_elementwise("/", a, b)
    if isinstance(b, Const):
        if b.value == 0.0:
            raise ShapeError("division by the constant zero")
        v = b.value
        return mul(const(_folded(1.0 / v, lambda: f"1 / {v!r}", v)), a)
    return mul(a, power(b, const(-1.0)))


def power(a: Expr, p: Expr) -> Expr:
    if p.rank != 0:
        raise ShapeError(f"the exponent of '**' must be a scalar, got {shape_str(p.shape)}")
    if isinstance(p, Const):
        if p.value == 0.0:
            return const(1.0, a.shape)
        if p.value == 1.0:
            return a
        if isinstance(a, Const):
            return const(_power_value(a.value, p.value), a.shape)
        if isinstance(a, Pow) and isinstance(a.exp, Const):
            # (b^e)^p = b^(e p), except where an even e hides b's sign: (x²)^½ = |x|, not x.
            e = _times(a.exp.value, p.value)
            if not _is_even(a.exp.value) or _is_even(e):
                return power(a.base, const(e))
    return Pow(a, p)


def _power_value(a: float, p: float) -> float:
    """a ** p for numbers, or a ConstantError (Python raises on overflow and 0 ** -1)."""
    try:
        value = a**p
    except OverflowError:
        raise ConstantError(
            f"cannot evaluate the constant {a!r} ** {p!r}: not a finite number"
        ) from None
    except ZeroDivisionError:
        raise ConstantError(
            f"cannot evaluate the constant {a!r} ** {p!r}: division by zero"
        ) from None
    if isinstance(value, complex):  # (-8) ** (1/3) in Python
        raise ShapeError(f"({a:g}) ** {p:g} is not a real number")
    return _folded(value, lambda: f"{a!r} ** {p!r}", a, p)


def _is_even(v: float) -> bool:
    return v == int(v) and int(v) % 2 == 0


def matmul(a: Expr, b: Expr) -> Expr:
    """NumPy ``@`` for ranks 1 and 2, with identity and zero elimination."""
    if a.rank == 0 or b.rank == 0:
        raise ShapeError("'@' needs vectors or matrices; use '*' to scale by a scalar")
    if a.shape[-1] != b.shape[0]:
        raise ShapeError(
            f"shapes {shape_str(a.shape)} and {shape_str(b.shape)} do not fit for '@' "
            f"({a.shape[-1]} != {b.shape[0]})"
        )
    shape = a.shape[:-1] + b.shape[1:]
    if is_zero(a) or is_zero(b):
        return zero(shape)
    if isinstance(a, Eye):
        return b
    if isinstance(b, Eye):
        return a
    if isinstance(a, Const) and a.rank == 1 and b.rank == 1:
        return mul(const(a.value), sum_(b))
    if isinstance(b, Const) and a.rank == 1 and b.rank == 1:
        return mul(const(b.value), sum_(a))
    if isinstance(a, Mul) and isinstance(a.a, Const) and a.a.rank == 0:
        return mul(a.a, matmul(a.b, b))
    if isinstance(b, Mul) and isinstance(b.a, Const) and b.a.rank == 0:
        return mul(b.a, matmul(a, b.b))
    if (
        a.rank == 1
        and b.rank == 1
        and isinstance(a, Concat)
        and isinstance(b, Concat)
        and [p.shape for p in a.parts] == [p.shape for p in b.parts]
    ):
        return add(*(matmul(p, q) for p, q in zip(a.parts, b.parts)))
    if isinstance(a, Diag) and b.rank == 1:
        return mul(a.a, b)
    if isinstance(b, Diag) and a.rank == 1:
        return mul(a, b.a)
    if a.rank == 1 and b.rank == 2:
        # x @ M is Mᵀx; write symmetric M's product as M x so equal terms meet.
        if is_symmetric(b):
            return MatMul(b, a)
        if isinstance(b, Transpose):
            return MatMul(b.a, a)
    return MatMul(a, b)


def transpose(a: Expr) -> Expr:
    if a.rank < 2:
        return a
    if isinstance(a, Transpose):
        return a.a
    if is_symmetric(a) or isinstance(a, (Eye, Diag)):
        return a
    if isinstance(a, Const):
        return const(a.value, (a.shape[1], a.shape[0]))
    if isinstance(a, Outer):
        return outer(a.b, a.a)
    if isinstance(a, Mul) and isinstance(a.a, Const) and a.a.rank == 0:
        return mul(a.a, transpose(a.b))
    if isinstance(a, Add):
        return add(*(transpose(t) for t in a.terms))
    return Transpose(a)


def is_symmetric(a: Expr) -> bool:
    return isinstance(a, Leaf) and bool(a.properties & {"symmetric", "psd", "pd", "diagonal"})


def sum_(a: Expr) -> Expr:
    if a.rank == 0:
        return a
    if isinstance(a, Const):
        return mul(const(a.value), size_of(a.shape))
    if isinstance(a, Broadcast):
        return mul(a.a, size_of(a.shape))
    if isinstance(a, Mul) and isinstance(a.a, Const) and a.a.rank == 0:
        return mul(a.a, sum_(a.b))
    if isinstance(a, Add):
        return add(*(sum_(t) if t.rank else mul(t, size_of(a.shape)) for t in a.terms))
    if isinstance(a, Concat):
        return add(*(sum_(t) for t in a.parts))
    if isinstance(a, Reshape):
        return sum_(a.a)
    return Sum(a)


def size_of(shape: Shape) -> Expr:
    """The number of entries of a core shape, as a scalar expression of the dims."""
    out: Expr = const(1.0)
    for d in shape:
        out = mul(out, const(d) if isinstance(d, int) else Leaf(d, "dim", SCALAR))  # a
        # compound size (n - 1) is one dim leaf too: its text is Python of the dim names
    return out


def broadcast(a: Expr, shape: Shape) -> Expr:
    if a.shape == shape:
        return a
    if a.rank != 0:
        raise ShapeError(f"cannot broadcast {shape_str(a.shape)} to {shape_str(shape)}")
    if isinstance(a, Const):
        return const(a.value, shape)
    return Broadcast(a, shape)


def func(name: str, a: Expr) -> Expr:
    from foldgen.functions import ELEMENTWISE

    fn = ELEMENTWISE[name]
    if isinstance(a, Const) and fn.numeric is not None:
        v = a.value
        try:
            value = fn.numeric(v)
        except OverflowError:
            raise ConstantError(
                f"cannot evaluate the constant {name}({v!r}): not a finite number"
            ) from None
        except ValueError:  # math domain error: log(-1), sqrt(-1)
            raise ConstantError(
                f"cannot evaluate the constant {name}({v!r}): outside its domain"
            ) from None
        return const(_folded(value, lambda: f"{name}({v!r})", v), a.shape)
    return Func(name, a)


def diag(a: Expr) -> Expr:
    if a.rank == 1:
        return zero((a.shape[0], a.shape[0])) if is_zero(a) else Diag(a)
    if a.rank == 2:
        if a.shape[0] != a.shape[1]:
            raise ShapeError(f"diag of a non-square matrix {shape_str(a.shape)}")
        return diag_part(a)
    raise ShapeError("diag needs a vector or a square matrix, got a scalar")


def diag_part(a: Expr) -> Expr:
    n = a.shape[0]
    if is_zero(a):
        return zero((n,))
    if isinstance(a, Diag):
        return a.a
    if isinstance(a, Eye):
        return const(1.0, (n,))
    if isinstance(a, Transpose):
        return diag_part(a.a)
    if isinstance(a, Mul) and isinstance(a.a, Const) and a.a.rank == 0:
        return mul(a.a, diag_part(a.b))
    if isinstance(a, Add):
        return add(*(diag_part(t) if t.rank else broadcast(t, (n,)) for t in a.terms))
    if isinstance(a, Outer):
        return mul(a.a, a.b)
    return DiagPart(a)


def outer(a: Expr, b: Expr) -> Expr:
    shape = (a.shape[0], b.shape[0])
    if is_zero(a) or is_zero(b):
        return zero(shape)
    if isinstance(a, Mul) and isinstance(a.a, Const) and a.a.rank == 0:
        return mul(a.a, outer(a.b, b))
    if isinstance(b, Mul) and isinstance(b.a, Const) and b.a.rank == 0:
        return mul(b.a, outer(a, b.b))
    return Outer(a, b)


def log_sum_exp(a: Expr) -> Expr:
    if a.rank != 1:
        raise ShapeError(f"log_sum_exp needs a vector, got {shape_str(a.shape)}")
    return LogSumExp(a)


def softmax(a: Expr) -> Expr:
    return Softmax(a)


def dot(a: Expr, b: Expr) -> Expr:
    if a.rank != 1 or b.rank != 1:
        raise ShapeError(
            f"dot needs two vectors, got {shape_str(a.shape)} and {shape_str(b.shape)}"
        )
    return matmul(a, b)


def slice_(a: Expr, axis: int, start: Dim, stop: Dim) -> Expr:
    """Entries start:stop of core axis ``axis`` (0 ≤ start < stop ≤ the axis' size)."""
    if not 0 <= axis < a.rank:
        raise ShapeError(f"cannot index axis {axis} of a {shape_str(a.shape)} expression")
    size = a.shape[axis]
    start, stop = _dims.canonical(start), _dims.canonical(stop)
    # Ranges are checked by the parser at the spec's declared sizes; here only what no size
    # could make valid (an empty or reversed range of integers) is refused.
    length = _dims.sub(stop, start)
    if isinstance(length, int) and length <= 0:
        raise ShapeError(f"the slice {start}:{stop} of an axis of size {size} is empty")
    if start == 0 and stop == size:
        return a
    shape = list(a.shape)
    shape[axis] = _dims.sub(stop, start)
    if isinstance(a, Const):
        return const(a.value, tuple(shape))
    if isinstance(a, Broadcast):
        return broadcast(a.a, tuple(shape))
    if isinstance(a, Mul) and isinstance(a.a, Const) and a.a.rank == 0:
        return mul(a.a, slice_(a.b, axis, start, stop))
    if isinstance(a, Slice) and a.axis == axis:
        return slice_(a.a, axis, _dims.add(a.start, start), _dims.add(a.start, stop))
    if isinstance(a, Concat) and a.axis == axis:
        offset: Dim = 0
        for p in a.parts:
            end = _dims.add(offset, p.shape[axis])
            if _dims.nonnegative(_dims.sub(start, offset)) and _dims.nonnegative(
                _dims.sub(end, stop)
            ):
                return slice_(p, axis, _dims.sub(start, offset), _dims.sub(stop, offset))
            offset = end
    return Slice(a, axis, start, stop)


def part(a: Expr, sizes: tuple[Dim, ...], index: int, label: str = "") -> Expr:
    """Block ``index`` of the vector a cut into blocks of ``sizes``."""
    sizes = tuple(_dims.canonical(s) for s in sizes)
    if a.rank != 1 or a.shape[0] != _dims.total(sizes):
        raise ShapeError(f"cannot cut {shape_str(a.shape)} into blocks of {sizes}")
    if len(sizes) == 1 and not label:
        return a
    size = (sizes[index],)
    if isinstance(a, Const):
        return const(a.value, size)
    if isinstance(a, Broadcast):
        return broadcast(a.a, size)
    if isinstance(a, Concat) and tuple(p.shape[0] for p in a.parts) == sizes:
        return a.parts[index]
    if isinstance(a, Mul) and isinstance(a.a, Const) and a.a.rank == 0:
        return mul(a.a, part(a.b, sizes, index))
    return Part(a, sizes, index, label)


def reshape(a: Expr, shape: Shape) -> Expr:
    """a's entries in row-major order under ``shape`` (of the same number of entries)."""
    shape = tuple(_dims.canonical(d) for d in shape)
    if _dims.product(a.shape) != _dims.product(shape):
        raise ShapeError(f"cannot reshape {shape_str(a.shape)} to {shape_str(shape)}")
    if a.shape == shape:
        return a
    if isinstance(a, Const):
        return const(a.value, shape)
    if isinstance(a, Broadcast):
        return broadcast(a.a, shape)
    if isinstance(a, Reshape):
        return reshape(a.a, shape)
    if isinstance(a, Mul) and isinstance(a.a, Const) and a.a.rank == 0:
        return mul(a.a, reshape(a.b, shape))
    if a.rank == 0 and not shape:
        return a
    return Reshape(a, shape)


def concat(parts: list[Expr] | tuple[Expr, ...], axis: int = 0) -> Expr:
    """The operands joined along core axis ``axis``; all of one rank, equal elsewhere."""
    parts = tuple(parts)
    if not parts:
        raise ShapeError("nothing to stack")
    rank = parts[0].rank
    for p in parts:
        if p.rank != rank or not 0 <= axis < rank:
            raise ShapeError(
                "cannot stack "
                + " and ".join(shape_str(q.shape) for q in parts)
                + f" along axis {axis}"
            )
        others = [d for i, d in enumerate(p.shape) if i != axis]
        first = [d for i, d in enumerate(parts[0].shape) if i != axis]
        if others != first:
            raise ShapeError(
                f"cannot stack {shape_str(parts[0].shape)} and {shape_str(p.shape)} "
                f"along axis {axis}: the other sizes differ"
            )
    flat: list[Expr] = []
    for p in parts:
        flat.extend(p.parts if isinstance(p, Concat) and p.axis == axis else (p,))
    if len(flat) == 1:
        return flat[0]
    node = Concat(tuple(flat), axis)
    if all(isinstance(p, Const) and p.value == flat[0].value for p in flat):  # type: ignore[attr-defined]
        return const(flat[0].value, node.shape)  # type: ignore[attr-defined]
    return node


def kron(a: Expr, b: Expr) -> Expr:
    """NumPy's kron of two matrices, or of two vectors (a vector of the m p products)."""
    if a.rank == 1 and b.rank == 1:
        rows = kron(reshape(a, (1, a.shape[0])), reshape(b, (1, b.shape[0])))
        return reshape(rows, (rows.shape[1],))
    if a.rank != 2 or b.rank != 2:
        raise ShapeError(
            f"kron needs two matrices or two vectors, got {shape_str(a.shape)} and "
            f"{shape_str(b.shape)}"
        )
    node = Kron(a, b)
    if is_zero(a) or is_zero(b):
        return zero(node.shape)
    if isinstance(a, Const) and isinstance(b, Const):
        return const(_times(a.value, b.value), node.shape)
    return node


def kron_left(g: Expr, b: Expr, shape: Shape) -> Expr:
    return zero(shape) if is_zero(g) or is_zero(b) else KronLeft(g, b, shape)


def kron_right(g: Expr, a: Expr, shape: Shape) -> Expr:
    return zero(shape) if is_zero(g) or is_zero(a) else KronRight(g, a, shape)


def sum_largest(a: Expr, k: Dim) -> Expr:
    """Σ of the k largest entries of the vector a (1 ≤ k ≤ its size)."""
    if a.rank != 1:
        raise ShapeError(f"sum_largest needs a vector, got {shape_str(a.shape)}")
    if isinstance(k, int) and k < 1:
        raise ShapeError(f"sum_largest needs k >= 1, got {k}")
    if k == a.shape[0]:
        return sum_(a)
    if isinstance(a, Const):
        return mul(const(a.value), size_of((k,)))
    return SumLargest(a, _dims.canonical(k))


def top_mask(a: Expr, k: Dim) -> Expr:
    return TopMask(a, k)


def vec(a: Expr) -> Expr:
    """The entries of a as a vector, row-major (as torch and NumPy's default order)."""
    return reshape(a, (_dims.product(a.shape),)) if a.rank != 1 else a


def _merge_concats(terms: list[Expr]) -> list[Expr]:
    """Vector concatenations over the same blocks added together become one concatenation
    of the blocks' sums (how the cotangents of a packed state's variables meet)."""
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(terms):
        if isinstance(t, Concat) and t.axis == 0 and t.rank == 1:
            groups.setdefault(tuple(p.shape[0] for p in t.parts), []).append(i)
    merged = [g for g in groups.values() if len(g) > 1]
    if not merged:
        return terms
    drop = {i for g in merged for i in g}
    out = [t for i, t in enumerate(terms) if i not in drop]
    for g in merged:
        blocks = zip(*(terms[i].parts for i in g))  # type: ignore[attr-defined]
        out.append(concat([broadcast(add(*b), b[0].shape) for b in blocks]))
    return out


# --------------------------------------------------------------------------- traversal


def postorder(
    roots: list[Expr] | tuple[Expr, ...],
    children: Callable[[Expr], tuple[Expr, ...]] = lambda node: node.children,
) -> list[Expr]:
    """Distinct nodes of the DAG, children before parents, in a deterministic order
    (``children`` chooses which edges to follow)."""
    seen: set[Expr] = set()
    order: list[Expr] = []
    stack: list[tuple[Expr, bool]] = [(r, False) for r in reversed(roots)]
    while stack:
        node, expanded = stack.pop()
        if node in seen:
            continue
        if expanded:
            seen.add(node)
            order.append(node)
            continue
        stack.append((node, True))
        for c in reversed(children(node)):
            if c not in seen:
                stack.append((c, False))
    return order


def substitute(e: Expr, mapping: dict[Expr, Expr]) -> Expr:
    """Replace subexpressions (typically leaves) and rebuild through the constructors."""
    memo: dict[Expr, Expr] = {}
    for node in postorder([e]):
        if node in mapping:
            memo[node] = mapping[node]
            continue
        memo[node] = rebuild(node, [memo[c] for c in node.children])
    return memo[e]


def rebuild(node: Expr, kids: list[Expr]) -> Expr:
    """The node with new children, through the simplifying constructors."""
    if not node.children:
        return node
    match node:
        case Add():
            return add(*kids)
        case Mul():
            return mul(*kids)
        case Pow():
            return power(*kids)
        case MatMul():
            return matmul(*kids)
        case Transpose():
            return transpose(*kids)
        case Sum():
            return sum_(*kids)
        case Broadcast(shape_=shape):
            return broadcast(kids[0], shape)
        case Func(name=name):
            return func(name, kids[0])
        case Diag():
            return diag(kids[0])
        case DiagPart():
            return diag_part(kids[0])
        case Outer():
            return outer(*kids)
        case LogSumExp():
            return log_sum_exp(kids[0])
        case Softmax():
            return softmax(kids[0])
        case Slice(axis=axis, start=start, stop=stop):
            return slice_(kids[0], axis, start, stop)
        case Part(sizes=sizes, index=index, label=label):
            return part(kids[0], sizes, index, label)
        case Reshape(shape_=shape):
            return reshape(kids[0], shape)
        case Concat(axis=axis):
            return concat(kids, axis)
        case SumLargest(k=k):
            return sum_largest(kids[0], k)
        case Kron():
            return kron(*kids)
        case KronLeft(shape_=shape):
            return kron_left(kids[0], kids[1], shape)
        case KronRight(shape_=shape):
            return kron_right(kids[0], kids[1], shape)
        case TopMask(k=k):
            return top_mask(kids[0], k)
    raise TypeError(f"cannot rebuild {type(node).__name__}")  # pragma: no cover
