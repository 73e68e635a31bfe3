"""The matrix A of an affine map e = A x + o of the rules' state, as an expression.

ADMM splits constraints and ℓ1 terms through blocks zᵢ = Aᵢ x, and the IR records a
second-order cone by its affine data, so both need A itself, not only products with it (a
vector–Jacobian product gives Aᵀw, never A). The state x is one vector; with several
variables (or a matrix) it is the packed state and the expressions reach each variable
through Part, Reshape, Slice and Concat (foldgen/ir.py `Packing`), so those have matrices
here too: a Part is the selection [0 … I … 0] (rows of I), a Slice the rows of the inner matrix, a
Concat the stacked matrices, and a matrix variable's products X v and v X the Kronecker
rows kron(I, vᵀ) and kron(vᵀ, I), written as reshapes of outer products. Anything else
(a transpose of a matrix variable, A @ X) gives None and the caller rejects it.
"""

from __future__ import annotations

from foldgen import dims
from foldgen import expr as E
from foldgen.derive import gradient, vjp
from foldgen.expr import Dim, Expr, Leaf


def affine_map(e: Expr, x: Leaf) -> tuple[Expr, Expr] | None:
    """(A, o) with e = A x + o, A a matrix free of x (a 1×n row for a scalar e, the map of
    vec(e) for a matrix e: a matrix relation is one block of its entries, row-major), else
    None."""
    n = x.shape[0]
    if e.rank == 2:
        e = E.vec(e)
    # The offset e(0) only once e is known affine: 1/(a @ x) or log(x) has no value at 0.
    if e.rank == 0:
        a = gradient(e, x)
        if a.depends_on(x):
            return None
        offset = E.substitute(e, {x: E.zero(x.shape)})
        return E.outer(E.const(1.0, (1,)), a), E.broadcast(offset, (1,))
    if e.rank != 1:
        return None
    w = Leaf("_w", "aux", e.shape)
    if vjp([(e, w)], [x])[x].depends_on(x):
        return None  # not affine
    offset = E.substitute(e, {x: E.zero(x.shape)})
    matrix = linear_matrix(E.sub(e, offset), x, n)
    if matrix is None or matrix.depends_on(x):
        return None
    return matrix, offset


def linear_row(e: Expr, x: Leaf) -> Expr | None:
    """a with the scalar e = a·x (e linear in x): its gradient, when that is free of x."""
    a = gradient(e, x)
    return None if a.depends_on(x) else a


def linear_matrix(e: Expr, x: Leaf, n: Dim) -> Expr | None:
    """A with the vector e = A x, for e linear in x; else None."""
    if e == x:
        return E.Eye(n)
    m = e.shape[0]
    if not e.depends_on(x):
        return E.zero((m, n))
    match e:
        case E.Add(terms=terms):
            parts = [_vector_term(t, x, n, m) for t in terms if t.depends_on(x)]
            if any(p is None for p in parts):
                return None
            return E.add(*parts)  # type: ignore[arg-type]
        case E.Mul(a=a, b=b):
            if a.depends_on(x) and b.depends_on(x):
                return None
            scale, inner_e = (a, b) if not a.depends_on(x) else (b, a)
            if inner_e.rank == 0:  # a vector times a scalar s of x: the rows scale·∇s
                row = linear_row(inner_e, x)
                return None if row is None else E.outer(E.broadcast(scale, (m,)), row)
            inner = linear_matrix(inner_e, x, n)
            if inner is None:
                return None
            if scale.rank == 0:
                return E.mul(scale, inner)
            return E.matmul(E.diag(scale), inner)
        case E.Broadcast(a=a):
            row = linear_row(a, x)
            return None if row is None else E.outer(E.const(1.0, (m,)), row)
        case E.MatMul(a=a, b=b) if a.rank == 2 and b.rank == 1 and not a.depends_on(x):
            inner = linear_matrix(b, x, n)
            return None if inner is None else E.matmul(a, inner)
        case E.MatMul(a=a, b=b) if a.rank == 1 and b.rank == 2 and not b.depends_on(x):
            inner = linear_matrix(a, x, n)
            return None if inner is None else E.matmul(E.transpose(b), inner)
        case E.MatMul(a=a, b=b) if a.rank == 2 and b.rank == 1 and not b.depends_on(x):
            inner = _vec_matrix(a, x, n)  # X v = kron(I_r, vᵀ) vec(X)
            return None if inner is None else E.matmul(_kron_eye_row(a.shape[0], b), inner)
        case E.MatMul(a=a, b=b) if a.rank == 1 and b.rank == 2 and not a.depends_on(x):
            inner = _vec_matrix(b, x, n)  # v X = kron(vᵀ, I_c) vec(X)
            return None if inner is None else E.matmul(_kron_row_eye(a, b.shape[1]), inner)
        case E.Part(a=a, sizes=sizes, index=index):
            inner = linear_matrix(a, x, n)
            return None if inner is None else E.matmul(_selection(sizes, index), inner)
        case E.Slice(a=a, axis=0, start=start, stop=stop):
            inner = linear_matrix(a, x, n)
            return None if inner is None else E.slice_(inner, 0, start, stop)
        case E.Concat(parts=parts, axis=0):
            blocks = [linear_matrix(p, x, n) for p in parts]
            if any(b is None for b in blocks):
                return None
            return E.concat(blocks, 0)  # type: ignore[arg-type]
        case E.Reshape(a=a) if a.rank == 0:  # a scalar as a (1,) vector
            row = linear_row(a, x)
            return None if row is None else E.outer(E.const(1.0, (1,)), row)
        case E.Reshape(a=a) if a.rank == 2:  # vec(X)
            return _vec_matrix(a, x, n)
    return None


def _vector_term(t: Expr, x: Leaf, n: Dim, m: Dim) -> Expr | None:
    """The matrix of one term of a vector sum; a scalar term broadcasts to every row."""
    if t.rank == 0:
        row = linear_row(t, x)
        return None if row is None else E.outer(E.const(1.0, (m,)), row)
    return linear_matrix(t, x, n)


def _vec_matrix(e: Expr, x: Leaf, n: Dim) -> Expr | None:
    """L with vec(e) = L x (row-major) for a matrix e linear in x; else None."""
    size = dims.product(e.shape)
    if not e.depends_on(x):
        return E.zero((size, n))
    match e:
        case E.Reshape(a=a) if a.rank == 1:
            return linear_matrix(a, x, n)
        case E.Add(terms=terms):
            parts = [
                _vec_matrix(t, x, n) if t.rank else _vector_term(t, x, n, size)
                for t in terms
                if t.depends_on(x)
            ]
            if any(p is None for p in parts):
                return None
            return E.add(*parts)  # type: ignore[arg-type]
        case E.Mul(a=a, b=b):
            if a.depends_on(x) and b.depends_on(x):
                return None
            scale, inner_e = (a, b) if not a.depends_on(x) else (b, a)
            if inner_e.rank != 2:
                return None
            inner = _vec_matrix(inner_e, x, n)
            if inner is None:
                return None
            if scale.rank == 0:
                return E.mul(scale, inner)
            return E.matmul(E.diag(E.vec(scale)), inner)
    return None


def _selection(sizes: tuple[Dim, ...], index: int) -> Expr:
    """[0 … I … 0]: block ``index`` of a vector cut into blocks of ``sizes``, written as
    those rows of the identity (the same matrix as the concatenation of zero blocks and I,
    and one short line of generated code)."""
    start = dims.total(sizes[:index])
    return E.slice_(E.Eye(dims.total(sizes)), 0, start, dims.add(start, sizes[index]))


def _kron_eye_row(r: Dim, v: Expr) -> Expr:
    """kron(I_r, vᵀ), (r, r·c): entry [i, j·c + k] = δᵢⱼ vₖ, which is outer(vec(I_r), v),
    (r·r, c), read row-major as (r, r·c)."""
    c = v.shape[0]
    flat = E.outer(E.vec(E.Eye(r)), v)
    return E.reshape(flat, (r, dims.mul(r, c)))


def _kron_row_eye(v: Expr, c: Dim) -> Expr:
    """kron(vᵀ, I_c), (c, r·c): entry [k, i·c + l] = vᵢ δₖₗ. Its rows read as (c·r, c) are
    kron(I_c, v) = kron(I_c, vᵀ)ᵀ, and kron(I_c, vᵀ) is `_kron_eye_row`."""
    r = v.shape[0]
    tall = E.transpose(_kron_eye_row(c, v))  # (c·r, c)
    return E.reshape(tall, (c, dims.mul(r, c)))
