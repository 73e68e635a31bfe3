"""Batched tensor helpers every rule uses (vectors (..., n), matrices (..., m, n))."""

import torch


def _mv(A, x):
    """Batched matrix–vector product: (..., m, n) @ (..., n) -> (..., m).

    A matrix shared by the batch (no batch axes) multiplies the whole batch in one GEMM,
    x @ Aᵀ: as (A @ x[..., None]) torch runs B separate matrix–vector products on a
    broadcast A (8× slower at n = 100, 19× at n = 1000). A batched A keeps the batched product,
    except a lifted one, which multiplies all of its vectors at once. The batched product is
    taken with x as a row, xᵀAᵀ, which torch runs 1.6–3.5× faster than A x as a column from
    m·n ≈ 2,500 up (batch 64, float64); below 200 entries the column form is a few µs faster.
    """
    if A.dim() == 2:
        return x @ A.mT
    if A.shape[-3] == 1 and x.dim() >= 2 and x.shape[-2] > 1:
        # A lifted for a dense Jacobian, (..., 1, m, n), against k vectors (..., k, n): one
        # (k, n) @ (n, m) product per element instead of k products on a broadcast copy of A
        return x @ A.squeeze(-3).mT
    if A.shape[-2] * A.shape[-1] > 200:
        return (x[..., None, :] @ A.mT)[..., 0, :]
    return (A @ x[..., None])[..., 0]


def _dot(a, b):
    """Batched dot product over the last axis."""
    return (a * b).sum(-1)


def _expand(s, core):
    """A batch of scalars (...) repeated to (..., *core)."""
    return s[(...,) + (None,) * len(core)].expand(*s.shape, *core)


def _lift(t, rank):
    """Insert one batch axis just before the core axes (for a dense Jacobian's columns).

    A tensor without batch axes is returned as it is: broadcasting aligns it already, and a
    lifted (1, m, n) matrix would turn its products into broadcast copies (see `_mv`).
    """
    return t.unsqueeze(-rank - 1) if t.dim() > rank else t


def _norm(v):
    return torch.linalg.vector_norm(v, dim=-1)


def _as_tuple(t):
    return t if isinstance(t, tuple) else (t,)


def _per_element(mask, core):
    """A batch-shaped ``mask`` with unit axes for a gradient's core axes."""
    return mask[(...,) + (None,) * len(core)]


def _huber(t):
    """CVXPY's huber with M = 1, elementwise: t² for |t| ≤ 1, else 2|t| − 1."""
    a = t.abs()
    return torch.where(a <= 1, t * t, 2 * a - 1)


def _huber_slope(t):
    """huber'(t) = 2·clamp(t, −1, 1)."""
    return 2 * t.clamp(-1, 1)


def _huber_curvature(t):
    """huber''(t) = 2 where |t| ≤ 1, else 0."""
    return 2 * (t.abs() <= 1).to(t.dtype)


def _reshape(t, rank, shape):
    """The core axes (the last ``rank``) of t in row-major order under ``shape``."""
    return t.reshape(t.shape[: t.dim() - rank] + tuple(shape))


def _cat(parts, rank, axis):
    """Tensors of core rank ``rank`` joined along core axis ``axis``, batch axes broadcast."""
    batch = torch.broadcast_shapes(*(p.shape[: p.dim() - rank] for p in parts))
    return torch.cat([p.expand(*batch, *p.shape[p.dim() - rank :]) for p in parts], axis - rank)


def _step(t):
    """pos'(t) = 1 where t > 0, else 0."""
    return (t > 0).to(t.dtype)


def _sum_largest(a, k):
    """The sum of the k largest entries over the last axis."""
    return a.topk(k, -1).values.sum(-1)


def _top_mask(a, k):
    """1 on the k largest entries over the last axis (ties: the ones topk picks), else 0."""
    index = a.topk(k, -1).indices
    return torch.zeros_like(a).scatter(-1, index, 1.0)


def _kron(a, b):
    """Batched Kronecker product of matrices: (..., m, n) ⊗ (..., p, q) -> (..., m p, n q)."""
    out = a[..., :, None, :, None] * b[..., None, :, None, :]
    m, p, n, q = out.shape[-4:]
    return out.reshape(out.shape[:-4] + (m * p, n * q))


def _kron_left(g, b):
    """Σ_kl G[i p + k, j q + l] B[k, l]: the cotangent of A in kron(A, B)."""
    p, q = b.shape[-2:]
    m, n = g.shape[-2] // p, g.shape[-1] // q
    g4 = g.reshape(g.shape[:-2] + (m, p, n, q))
    return (g4 * b[..., None, :, None, :]).sum((-3, -1))


def _kron_right(g, a):
    """Σ_ij G[i p + k, j q + l] A[i, j]: the cotangent of B in kron(A, B)."""
    m, n = a.shape[-2:]
    p, q = g.shape[-2] // m, g.shape[-1] // n
    g4 = g.reshape(g.shape[:-2] + (m, p, n, q))
    return (g4 * a[..., :, None, :, None]).sum((-4, -2))


def _wrapped(t):
    """Whether t is wrapped by a ``torch.func`` transform (vmap, grad, ...): under vmap a
    call cannot branch on its values, so checks of them move into the solver, which sees
    the plain tensors."""
    probe = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return isinstance(t, torch.Tensor) and probe is not None and bool(probe(t))
