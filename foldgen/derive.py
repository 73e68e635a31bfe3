"""Symbolic reverse-mode differentiation on the vector IR.

``vjp`` is the one derivation primitive: given expressions E_i and cotangent expressions w_i of
the same shapes, it returns, for each requested leaf z, the expression Σ_i (∂E_i/∂z)ᵀ w_i. With
E = f and w = 1 it is ∇f; with E = ∇f and w = v it is the Hessian-vector product ∇²f v (and,
for a parameter θ, the mixed product (∂∇f/∂θ)ᵀ v). Every rule below is a textbook adjoint of
one node; the constructors of ``foldgen.expr`` simplify the results as they are built.

``jacobian_diagonal`` gives diag(∂E/∂x) where the structure allows it exactly, which the PGD
rule uses as a diagonal (Newton-like) scaling of its step.
"""

from __future__ import annotations

import sympy

from foldgen import dims
from foldgen.expr import (
    SCALAR,
    Add,
    Broadcast,
    Concat,
    Const,
    Diag,
    DiagPart,
    Expr,
    Eye,
    Func,
    Kron,
    KronLeft,
    KronRight,
    Leaf,
    LogSumExp,
    MatMul,
    Mul,
    Outer,
    Part,
    Pow,
    Reshape,
    Slice,
    Softmax,
    Sum,
    SumLargest,
    TopMask,
    Transpose,
    add,
    broadcast,
    concat,
    const,
    diag,
    diag_part,
    func,
    is_zero,
    kron,
    kron_left,
    kron_right,
    matmul,
    mul,
    outer,
    part,
    postorder,
    power,
    reshape,
    slice_,
    softmax,
    sub,
    sum_,
    top_mask,
    transpose,
    zero,
)
from foldgen.functions import ELEMENTWISE, SYMPY_TO_NAME, T


def vjp(pairs: list[tuple[Expr, Expr]], wrt: list[Leaf]) -> dict[Leaf, Expr]:
    """Σ_i (∂E_i/∂z)ᵀ w_i for every leaf z in ``wrt`` (a zero expression where E is constant)."""
    for e, w in pairs:
        if e.shape != w.shape:
            raise ValueError(f"cotangent shape {w.shape} does not match {e.shape}")
    roots = [e for e, _ in pairs]
    order = postorder(roots)
    needed = _needs_gradient(order, set(wrt))
    cots: dict[Expr, list[Expr]] = {}
    for e, w in pairs:
        if e in needed:
            cots.setdefault(e, []).append(w)
    for node in reversed(order):
        if node not in cots or isinstance(node, Leaf):
            continue
        bar = add(*cots.pop(node))
        if is_zero(bar):
            continue
        for child, child_bar in _node_vjp(node, bar):
            if child.rank and not child_bar.rank:
                # A product with a broadcast scalar can simplify to a scalar that stands for
                # the broadcast vector; a vector's cotangent is that vector.
                child_bar = broadcast(child_bar, child.shape)
            if child in needed and not is_zero(child_bar):
                cots.setdefault(child, []).append(child_bar)
    return {z: add(*cots[z]) if z in cots else zero(z.shape) for z in wrt}


def gradient(f: Expr, x: Leaf) -> Expr:
    """∇ₓ f of a scalar expression."""
    return vjp([(f, const(1.0))], [x])[x]


def _needs_gradient(order: list[Expr], wrt: set[Leaf]) -> set[Expr]:
    """Nodes on a path to a requested leaf (others need no cotangent)."""
    needed: set[Expr] = set()
    for node in order:
        if node in wrt or any(c in needed for c in node.children):
            needed.add(node)
    return needed


def _reduce_to(bar: Expr, shape: tuple) -> Expr:
    """Sum a cotangent over the entries an operand of shape ``shape`` was broadcast across."""
    if bar.shape == shape:
        return bar
    return sum_(bar)


def _node_vjp(node: Expr, bar: Expr) -> list[tuple[Expr, Expr]]:
    """(child, cotangent of child) for one node given the node's cotangent."""
    match node:
        case Add(terms=terms):
            return [(t, _reduce_to(bar, t.shape)) for t in terms]
        case Mul(a=a, b=b):
            return [(a, _reduce_to(mul(bar, b), a.shape)), (b, _reduce_to(mul(bar, a), b.shape))]
        case Pow(base=a, exp=p):
            out = [(a, mul(bar, mul(p, power(a, sub(p, const(1.0))))))]
            if not isinstance(p, Const):
                out.append((p, sum_(mul(bar, mul(node, func("log", a))))))
            return out
        case MatMul(a=a, b=b):
            return _matmul_vjp(a, b, bar)
        case Transpose(a=a):
            return [(a, transpose(bar))]
        case Sum(a=a):
            return [(a, broadcast(bar, a.shape))]
        case Broadcast(a=a):
            return [(a, sum_(bar))]
        case Func(name=name, a=a):
            return [(a, mul(bar, derivative(name, a)))]
        case Diag(a=a):
            return [(a, diag_part(bar))]
        case DiagPart(a=a):
            return [(a, diag(bar))]
        case Outer(a=a, b=b):
            return [(a, matmul(bar, b)), (b, matmul(a, bar))]
        case LogSumExp(a=a):
            return [(a, mul(bar, softmax(a)))]
        case Softmax(a=a):
            s = node
            return [(a, sub(mul(s, bar), mul(s, sum_(mul(s, bar)))))]
        case Slice(a=a, axis=axis, start=start, stop=stop):
            return [(a, _pad(bar, a.shape, axis, start, stop))]
        case Part(a=a, sizes=sizes, index=index):
            blocks = [bar if i == index else zero((s,)) for i, s in enumerate(sizes)]
            return [(a, concat(blocks))]
        case Reshape(a=a):
            return [(a, reshape(bar, a.shape))]
        case Concat(parts=parts, axis=axis):
            sizes = tuple(p.shape[axis] for p in parts)
            if node.rank == 1:
                return [(p, part(bar, sizes, i)) for i, p in enumerate(parts)]
            pieces: list[tuple[Expr, Expr]] = []
            offset: dims.Dim = 0
            for p, size in zip(parts, sizes):
                end = dims.add(offset, size)
                pieces.append((p, slice_(bar, axis, offset, end)))
                offset = end
            return pieces
        case Kron(a=a, b=b):
            return [(a, kron_left(bar, b, a.shape)), (b, kron_right(bar, a, b.shape))]
        case KronLeft(g=g, b=b):  # ⟨W, KronLeft(G, B)⟩ = ⟨kron(W, B), G⟩
            return [(g, kron(bar, b)), (b, kron_right(g, bar, b.shape))]
        case KronRight(g=g, a=a):  # ⟨W, KronRight(G, A)⟩ = ⟨kron(A, W), G⟩
            return [(g, kron(a, bar)), (a, kron_left(g, bar, a.shape))]
        case SumLargest(a=a, k=k):
            return [(a, mul(bar, top_mask(a, k)))]
        case TopMask():
            return []  # piecewise constant: its derivative is zero almost everywhere
        case Const() | Eye():
            return []
    raise TypeError(f"no derivative rule for {type(node).__name__}")  # pragma: no cover


def _pad(bar: Expr, shape: tuple, axis: int, start, stop) -> Expr:
    """The slice's cotangent placed back in an axis of the full size, zeros elsewhere."""
    before, after = start, dims.sub(shape[axis], stop)

    def zeros(size) -> Expr:
        s = list(shape)
        s[axis] = size
        return zero(tuple(s))

    blocks = [zeros(before)] if before != 0 else []
    blocks.append(bar)
    if after != 0:
        blocks.append(zeros(after))
    return concat(blocks, axis)


def _matmul_vjp(a: Expr, b: Expr, bar: Expr) -> list[tuple[Expr, Expr]]:
    match (a.rank, b.rank):
        case (2, 2):  # C = A B
            return [(a, matmul(bar, transpose(b))), (b, matmul(transpose(a), bar))]
        case (2, 1):  # y = A x
            return [(a, outer(bar, b)), (b, matmul(bar, a))]
        case (1, 2):  # y = x A = Aᵀ x
            return [(a, matmul(b, bar)), (b, outer(a, bar))]
        case _:  # s = a · b
            return [(a, mul(bar, b)), (b, mul(bar, a))]


def derivative(name: str, a: Expr) -> Expr:
    """f'(a) for an elementwise function, from sympy's derivative of f(t)."""
    return from_sympy(ELEMENTWISE[name].derivative(), {T: a})


def from_sympy(e: sympy.Expr, env: dict[sympy.Symbol, Expr]) -> Expr:
    """Translate a scalar sympy expression into the IR, applied elementwise to ``env``."""
    if e in env:
        return env[e]
    if e.is_Number:
        return const(float(e))
    if isinstance(e, sympy.Add):
        return add(*(from_sympy(t, env) for t in e.args))
    if isinstance(e, sympy.Mul):
        out: Expr = const(1.0)
        for t in e.args:
            out = mul(out, from_sympy(t, env))
        return out
    if isinstance(e, sympy.Pow):
        base = from_sympy(e.base, env)
        if e.exp == sympy.Rational(1, 2):
            return func("sqrt", base)
        return power(base, from_sympy(e.exp, env))
    name = SYMPY_TO_NAME.get(type(e))
    if name is None:
        raise TypeError(f"no IR form for sympy expression {e}")
    return func(name, from_sympy(e.args[0], env))


def jacobian_diagonal(e: Expr, x: Leaf) -> Expr | None:
    """diag(∂e/∂x) for a vector e of x's shape, or None where the structure hides it.

    Exact through elementwise operations (whose Jacobians are diagonal), scalar broadcasts
    (∇s on the diagonal) and products with constant matrices M (diag(M) · the diagonal of an
    exactly diagonal inner Jacobian).
    """
    memo: dict[Expr, tuple[Expr, bool] | None] = {}
    for node in postorder([e], lambda n: _jdiag_operands(n, x)):  # bottom-up: no recursion
        memo[node] = _jdiag(node, x, memo)
    result = memo[e]
    return None if result is None else result[0]


def _jdiag_operands(e: Expr, x: Leaf) -> tuple[Expr, ...]:
    """The operands whose Jacobian diagonals ``_jdiag`` combines into e's."""
    if not e.depends_on(x) or e == x or e.shape != x.shape or e.rank == 0:
        return ()
    match e:
        case Add(terms=terms):
            return terms
        case Mul(a=a, b=b):
            return (a, b)
        case Pow(base=b, exp=p) if not p.depends_on(x):
            return (b,)
        case Func(a=a):
            return (a,)
        case MatMul(a=a, b=b) if b.rank == 1 and not a.depends_on(x):
            return (b,)
        case MatMul(a=a, b=b) if a.rank == 1 and not b.depends_on(x):
            return (a,)
    return ()


def _jdiag(e: Expr, x: Leaf, memo: dict) -> tuple[Expr, bool] | None:
    """(diagonal, whether the whole Jacobian is that diagonal) or None, from the operands'
    results in ``memo``."""
    n = x.shape
    if not e.depends_on(x):
        return (zero(n), True)
    if e == x:
        return (const(1.0, n), True)
    if e.shape != x.shape:
        return (gradient(e, x), False) if e.rank == 0 else None  # a non-square Jacobian
    if e.rank == 0:
        return (gradient(e, x), False)  # a scalar s(x) broadcast: the Jacobian is 1 ∇sᵀ
    if isinstance(e, Add):
        parts = [memo[t] for t in e.terms]
        if None in parts:
            return None
        return add(*(p[0] for p in parts)), all(p[1] for p in parts)
    if isinstance(e, Mul):
        da, db = memo[e.a], memo[e.b]
        if da is None or db is None:
            return None
        exact = (da[1] or not e.a.depends_on(x)) and (db[1] or not e.b.depends_on(x))
        exact = exact and (e.a.rank or not e.a.depends_on(x))
        exact = exact and (e.b.rank or not e.b.depends_on(x))
        return add(mul(e.a, db[0]), mul(e.b, da[0])), bool(exact)
    if isinstance(e, Pow) and not e.exp.depends_on(x):
        d = memo[e.base]
        if d is None:
            return None
        return mul(mul(e.exp, power(e.base, sub(e.exp, const(1.0)))), d[0]), d[1]
    if isinstance(e, Func):
        d = memo[e.a]
        return None if d is None else (mul(derivative(e.name, e.a), d[0]), d[1])
    if isinstance(e, Broadcast):
        return (gradient(e.a, x), False)
    if isinstance(e, MatMul) and e.b.rank == 1 and not e.a.depends_on(x):
        d = memo[e.b]
        return None if d is None or not d[1] else (mul(diag_part(e.a), d[0]), False)
    if isinstance(e, MatMul) and e.a.rank == 1 and not e.b.depends_on(x):
        d = memo[e.a]
        return None if d is None or not d[1] else (mul(diag_part(e.b), d[0]), False)
    return None


__all__ = ["vjp", "gradient", "jacobian_diagonal", "derivative", "from_sympy", "SCALAR"]
