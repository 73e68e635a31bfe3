"""The vector-level expression IR: shapes, nodes and simplifying constructors.

Why our own IR rather than sympy's ``MatrixSymbol`` calculus: sympy differentiates linear and
quadratic matrix forms well, but an elementwise function (``sin(x)``, ``entr(x)``) turns its
derivatives into tensor-array expressions that never return to matrix algebra. Here every node
keeps a *core shape* of rank 0, 1 or 2 (scalar, vector, matrix) whose entries are dim names or
integers; at run time each tensor also carries any number of leading batch dimensions, so the
code printed from this IR is batched and its size never depends on the problem's dimensions.

Nodes are frozen and compared structurally, so equal subexpressions are equal objects for
common-subexpression elimination. Build nodes through the lower-case constructors (``add``,
``mul``, ``matmul`` …): they check shapes and apply the algebraic simplifications that keep
derived expressions small (zeros vanish, constants fold, like terms combine, a symmetric
matrix's transpose is itself).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

Dim = str | int
Shape = tuple[Dim, ...]

SCALAR: Shape = ()


class ShapeError(ValueError):
    """Operands whose shapes do not fit; the parser turns it into a located SpecError."""


def shape_str(shape: Shape) -> str:
    return "scalar" if not shape else "[" + ", ".join(str(d) for d in shape) + "]"


# --------------------------------------------------------------------------- nodes


@dataclass(frozen=True)
class Expr:
    """Base of all nodes; ``shape`` is the core shape (batch dimensions are implicit)."""

    @property
    def shape(self) -> Shape:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def children(self) -> tuple[Expr, ...]:
        return ()

    @functools.cached_property
    def leaves(self) -> frozenset[Leaf]:
        """Every leaf this expression depends on."""
        if isinstance(self, Leaf):
            return frozenset((self,))
        out: frozenset[Leaf] = frozenset()
        for c in self.children:
            out |= c.leaves
        return out

    def depends_on(self, leaf: Leaf) -> bool:
        return leaf in self.leaves

    @functools.cached_property
    def _hash(self) -> int:
        return hash((type(self).__name__,) + tuple(self.__dict__[f] for f in self._fields()))

    def __hash__(self) -> int:
        return self._hash

    @classmethod
    def _fields(cls) -> tuple[str, ...]:
        return tuple(cls.__dataclass_fields__)

    def __str__(self) -> str:
        from foldgen.mathprint import math_str

        return math_str(self)


@dataclass(frozen=True, eq=True)
class Leaf(Expr):
    """A named input: ``kind`` is 'param', 'var', 'dim' (a size used as a number) or 'aux'
    (a symbol introduced by derivation, e.g. the vector v of a vector–Jacobian product)."""

    name: str
    kind: str
    shape_: Shape
    properties: frozenset[str] = field(default=frozenset())

    __hash__ = Expr.__hash__

    @property
    def shape(self) -> Shape:
        return self.shape_


@dataclass(frozen=True, eq=True)
class Const(Expr):
    """A number, broadcast to ``shape`` (``ones(n)`` is ``Const(1.0, ('n',))``)."""

    value: float
    shape_: Shape = SCALAR

    __hash__ = Expr.__hash__

    @property
    def shape(self) -> Shape:
        return self.shape_


@dataclass(frozen=True, eq=True)
class Eye(Expr):
    """The identity matrix of size ``dim``."""

    dim: Dim

    __hash__ = Expr.__hash__

    @property
    def shape(self) -> Shape:
        return (self.dim, self.dim)


@dataclass(frozen=True, eq=True)
class Add(Expr):
    """An n-ary sum; scalar terms broadcast to the result's shape."""

    terms: tuple[Expr, ...]
    shape_: Shape

    __hash__ = Expr.__hash__

    @property
    def shape(self) -> Shape:
        return self.shape_

    @property
    def children(self) -> tuple[Expr, ...]:
        return self.terms


@dataclass(frozen=True, eq=True)
class Mul(Expr):
    """Elementwise product; a scalar operand broadcasts."""

    a: Expr
    b: Expr

    __hash__ = Expr.__hash__

    @property
    def shape(self) -> Shape:
        return self.a.shape if self.a.rank >= self.b.rank else self.b.shape

    @property
    def children(self) -> tuple[Expr, ...]:
        return (self.a, self.b)


@dataclass(frozen=True, eq=True)
class Pow(Expr):
    """Elementwise power with a scalar exponent."""

    base: Expr
    exp: Expr

    __hash__ = Expr.__hash__

    @property
    def shape(self) -> Shape:
        return self.base.shape

    @property
    def children(self) -> tuple[Expr, ...]:
        return (self.base, self.exp)


@dataclass(frozen=True, eq=True)
class MatMul(Expr):
    """NumPy ``@`` on ranks 1 and 2: matrix–matrix, matrix–vector, vector–matrix, dot."""

    a: Expr
    b: Expr

    __hash__ = Expr.__hash__

    @property
    def shape(self) -> Shape:
        return self.a.shape[:-1] + self.b.shape[:-2] + self.b.shape[-1:][: self.b.rank - 1]

    @property
    def children(self) -> tuple[Expr, ...]:
        return (self.a, self.b)


@dataclass(frozen=True, eq=True)
class Transpose(Expr):
    """Matrix transpose (vectors are 1-D, so their transpose is themselves)."""

    a: Expr

    __hash__ = Expr.__hash__

    @property
    def shape(self) -> Shape:
        return (self.a.shape[1], self.a.shape[0])

    @property
    def children(self) -> tuple[Expr, ...]:
        return (self.a,)


@dataclass(frozen=True, eq=True)
class Sum(Expr):
    """Sum of all core entries, giving a scalar."""

    a: Expr

    __hash__ = Expr.__hash__

    @property
    def shape(self) -> Shape:
        return SCALAR

    @property
    def children(self) -> tuple[Expr, ...]:
        return (self.a,)


@dataclass(frozen=True, eq=True)
class Broadcast(Expr):
    """A scalar repeated to ``shape`` (appears in derivatives of sums)."""

    a: Expr
    shape_: Shape

    __hash__ = Expr.__hash__

    @property
    def shape(self) -> Shape:
        return self.shape_

    @property
    def children(self) -> tuple[Expr, ...]:
        return (self.a,)


@dataclass(frozen=True, eq=True)
class Func(Expr):
    """An elementwise function from ``foldgen.functions`` (sin, entr, softplus …)."""

    name: str
    a: Expr

    __hash__ = Expr.__hash__

    @property
    def shape(self) -> Shape:
        return self.a.shape

    @property
    def children(self) -> tuple[Expr, ...]:
        return (self.a,)


@dataclass(frozen=True, eq=True)
class Diag(Expr):
    """``diag(v)``: the diagonal matrix with v on its diagonal."""

    a: Expr

    __hash__ = Expr.__hash__

    @property
    def shape(self) -> Shape:
        return (self.a.shape[0], self.a.shape[0])

    @property
    def children(self) -> tuple[Expr, ...]:
        return (self.a,)


@dataclass(frozen=True, eq=True)
class DiagPart(Expr):
    """The diagonal of a square matrix, as a vector."""

    a: Expr

    __hash__ = Expr.__hash__

    @property
    def shape(self) -> Shape:
        return (self.a.shape[0],)

    @property
    def children(self) -> tuple[Expr, ...]:
        return (self.a,)


@dataclass(frozen=True, eq=True)
class Outer(Expr):
    """Outer product a bᵀ of two vectors (appears in derivatives w.r.t. matrices)."""

    a: Expr
    b: Expr

    __hash__ = Expr.__hash__

    @property
    def shape(self) -> Shape:
        return (self.a.shape[0], self.b.shape[0])

    @property
    def children(self) -> tuple[Expr, ...]:
        return (self.a, self.b)


@dataclass(frozen=True, eq=True)
class LogSumExp(Expr):
    """log Σ exp(a) over the core entries of a vector, giving a scalar."""

    a: Expr

    __hash__ = Expr.__hash__

    @property
    def shape(self) -> Shape:
        return SCALAR

    @property
    def children(self) -> tuple[Expr, ...]:
        return (self.a,)


@dataclass(frozen=True, eq=True)
class Softmax(Expr):
    """softmax(a) over a vector (the gradient of log_sum_exp)."""

    a: Expr

    __hash__ = Expr.__hash__

    @property
    def shape(self) -> Shape:
        return self.a.shape

    @property
    def children(self) -> tuple[Expr, ...]:
        return (self.a,)


# --------------------------------------------------------------------------- helpers


def const(value: float, shape: Shape = SCALAR) -> Const:
    return Const(float(value), tuple(shape))


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
    coeffs: dict[Expr, float] = {}
    constant = 0.0
    for t in flat:
        if isinstance(t, Const):
            if t.rank == 0 or t.shape == shape:
                constant += t.value
                continue
        c, base = _split_coeff(t)
        base = _unbroadcast(base, shape) if shape else base
        coeffs[base] = coeffs.get(base, 0.0) + c
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
            return const(a.value * b.value, shape)
        if a.value == 1.0:
            return b if b.shape == shape else broadcast(b, shape)
        if isinstance(b, Mul) and isinstance(b.a, Const) and b.a.rank == 0:
            return mul(const(a.value * b.a.value, shape if a.rank else SCALAR), b.b)
        if isinstance(b, Add) and a.rank == 0:
            return add(*(mul(a, t) for t in b.terms))
        if a.rank:  # a constant vector times a scalar: keep the scalar, broadcast
            return (
                broadcast(mul(const(a.value), b), shape) if b.rank == 0 else mul(const(a.value), b)
            )
    if shape:
        a = _unbroadcast(a, shape)
        b = _unbroadcast(b, shape)
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
        return mul(const(1.0 / b.value), a)
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
            value = a.value**p.value
            if isinstance(value, complex):  # (-8) ** (1/3) in Python
                raise ShapeError(f"({a.value:g}) ** {p.value:g} is not a real number")
            return const(value, a.shape)
        if isinstance(a, Pow) and isinstance(a.exp, Const):
            # (b^e)^p = b^(e p), except where an even e hides b's sign: (x²)^½ = |x|, not x.
            if not _is_even(a.exp.value) or _is_even(a.exp.value * p.value):
                return power(a.base, const(a.exp.value * p.value))
    return Pow(a, p)


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
    return Sum(a)


def size_of(shape: Shape) -> Expr:
    """The number of entries of a core shape, as a scalar expression of the dims."""
    out: Expr = const(1.0)
    for d in shape:
        out = mul(out, const(d) if isinstance(d, int) else Leaf(d, "dim", SCALAR))
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
        return const(fn.numeric(a.value), a.shape)
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
    raise TypeError(f"cannot rebuild {type(node).__name__}")  # pragma: no cover
