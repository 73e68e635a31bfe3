"""Adjoint linear solvers for the folded backward pass.

Every solver returns v with (I - Phi^T) v = g for each batch element, where Phi^T is only
available as a batched callable ``phi_t`` mapping (..., N) -> (..., N) (except the dense
solver, which takes the matrix). Each returns ``(v, iters, residual)``:

- ``v``        (..., N)  the solution, same dtype/device as g;
- ``iters``    (...)     int64, iterations used by that element;
- ``residual`` (...)     ||(I - Phi^T) v - g|| / max(||g||, tiny), computed from v itself.

Batch elements are independent: an element stops updating as soon as it has converged, a
non-finite element is frozen, and nothing in one element can reach another. An element has
converged iff ``residual <= tol``.

The code generator copies the definitions a module reaches verbatim into it
(`foldgen.link`), so they use only ``math``, ``torch`` and each other.
"""

import math

import torch


def _solve_lfpi(phi_t, g, max_iter, tol):
    """Linear fixed-point iteration v <- Phi^T v + g (the unrolled backward's own rate).

    Converges iff the spectral radius of Phi is < 1. The residual of the current iterate is
    exactly the next step, (Phi^T v + g) - v, so the stopping test costs no extra product and
    the returned residual is explicit. ``max_iter`` counts products with Phi^T (>= 1).
    """
    finfo = torch.finfo(g.dtype)
    g_max = g.abs().amax(-1)  # (...)
    scale = g_max.clamp_min(finfo.tiny)[..., None]
    g = g / scale  # entries in [-1, 1] (0 where g = 0): norms cannot over/underflow
    denom = torch.linalg.vector_norm(g, dim=-1).clamp_min(finfo.tiny)  # (...)
    n_iter = max(int(max_iter), 1)
    v = g  # first iterate from v = 0, needs no product  # (..., N)
    iters = torch.ones(g.shape[:-1], dtype=torch.int64, device=g.device)  # (...)
    residual = torch.full_like(g_max, math.inf)  # (...)
    active = torch.ones_like(g_max, dtype=torch.bool)  # (...)
    for it in range(n_iter):
        step = phi_t(v) + g  # (..., N)
        rel = torch.linalg.vector_norm(step - v, dim=-1) / denom  # residual of v  # (...)
        residual = torch.where(active, rel, residual)
        active = active & (rel > tol) & torch.isfinite(rel)
        if it == n_iter - 1 or not bool(active.any()):
            break
        v = torch.where(active[..., None], step, v)
        iters = iters + active.to(torch.int64)
    iters = torch.where(g_max == 0, 0, iters)
    return v * scale, iters, residual


def _solve_gmres(phi_t, g, max_iter, tol, restart=None):
    """Restarted GMRES on A = I - Phi^T, batched, for any nonsingular (nonsymmetric) A.

    Each Arnoldi step takes a fixed number of batched operations, whatever its index j: at
    the batch sizes and N where products with Phi^T are cheap, per-operation overhead, not
    arithmetic, would otherwise dominate. The Krylov basis is one preallocated (..., m+1, N)
    tensor, orthogonalised by classical Gram-Schmidt applied twice (CGS2: per pass, one
    batched product for all coefficients and one for the update, instead of 2 (j + 1)
    small operations for modified Gram-Schmidt; as orthogonal as MGS in practice, for twice
    its 2 (j + 1) N flops per step, which only shows where N is large and Phi^T cheap). The
    Givens rotations reducing the Hessenberg matrix to R are accumulated, per element, into
    one orthogonal matrix G = Q_j^T, so the new column of R is a single product G h and
    only the two rows touched by the new rotation change; beta |G[j + 1, 0]| is then each
    element's residual norm (the last rotated rhs entry), without extra products with Phi^T.
    Elements leave the current cycle when that estimate reaches tol, at a lucky breakdown
    (invariant Krylov space: exact solution, handled without dividing by zero) or when A is
    singular on the Krylov space; each keeps its own subspace size k and the small triangular
    systems are solved together by padding R with identity rows.
    After each cycle the residual is recomputed explicitly (one extra product per cycle), so
    restarts correct any drift of the estimate and the returned residual is exact.
    ``max_iter`` bounds the Arnoldi products; ``iters`` counts those an element took part in.
    """
    finfo = torch.finfo(g.dtype)
    n = g.shape[-1]
    batch = g.shape[:-1]
    m_max = max(1, min(n, 60 if restart is None else int(restart), int(max_iter)))  # <= N
    g_max = g.abs().amax(-1)  # (...)
    scale = g_max.clamp_min(finfo.tiny)[..., None]
    g = g / scale  # entries in [-1, 1] (0 where g = 0): norms cannot over/underflow
    beta = torch.linalg.vector_norm(g, dim=-1)  # ||r||  # (...)
    denom = beta.clamp_min(finfo.tiny)
    v = torch.zeros_like(g)  # (..., N)
    r = g  # residual g - A v  # (..., N)
    iters = torch.zeros(batch, dtype=torch.int64, device=g.device)  # (...)
    stalled = torch.zeros_like(g_max, dtype=torch.bool)  # no progress possible (singular A)
    # Krylov basis, rows v_i; row i is written before it is read in each cycle
    basis = torch.empty(batch + (m_max + 1, n), dtype=g.dtype, device=g.device)
    R = torch.zeros(batch + (m_max, m_max), dtype=g.dtype, device=g.device)
    eye = torch.eye(m_max + 1, dtype=g.dtype, device=g.device)
    used = 0
    while True:
        rel = beta / denom
        active = (rel > tol) & torch.isfinite(rel) & ~stalled  # (...)
        if used >= max_iter or not bool(active.any()):
            break
        m = min(m_max, int(max_iter) - used)
        q = torch.where(active[..., None], r / beta.clamp_min(finfo.tiny)[..., None], 0)
        basis[..., 0, :] = q
        rel = torch.where(active, rel, 0)  # rotated rhs beta e1, relative to ||g||
        G = eye.expand(batch + (m_max + 1, m_max + 1)).clone()  # accumulated rotations
        k = torch.zeros_like(iters)  # Krylov dimension used per element  # (...)
        running = active
        for j in range(m):
            w = (q - phi_t(q))[..., None, :]  # A v_j as a row  # (..., 1, N)
            used += 1
            w_norm = torch.linalg.vector_norm(w, dim=(-2, -1))
            prev = basis[..., : j + 1, :]  # (..., j + 1, N)
            h = w @ prev.mT  # (..., 1, j + 1)
            w = w - h @ prev
            h2 = w @ prev.mT  # CGS2: second pass
            w = (w - h2 @ prev).squeeze(-2)  # (..., N)
            h_next = torch.linalg.vector_norm(w, dim=-1)  # (...)
            breakdown = h_next <= finfo.eps * w_norm
            q = w / torch.where(breakdown, 1, h_next)[..., None]
            q = torch.where(breakdown[..., None], 0, q)
            basis[..., j + 1, :] = q
            col = ((h + h2) @ G[..., : j + 1, : j + 1].mT).squeeze(-2)  # rotated column of H
            R[..., : j + 1, j] = col
            diag = col[..., j]
            rho = torch.hypot(diag, h_next)  # new diagonal entry of R  # (...)
            nonsingular = rho > finfo.tiny
            rho_safe = torch.where(nonsingular, rho, 1)
            cs = torch.where(nonsingular, diag / rho_safe, 1)
            sn = torch.where(nonsingular, h_next / rho_safe, 0)
            R[..., j, j] = rho
            row = G[..., j, : j + 1]  # rotation j mixes rows j and e_(j+1) of G
            G[..., j + 1, : j + 1] = row * -sn[..., None]
            row *= cs[..., None]
            G[..., j, j + 1] = sn
            G[..., j + 1, j + 1] = cs
            running = running & nonsingular
            k = k + running.to(torch.int64)
            estimate = G[..., j + 1, 0].abs() * rel  # |last rotated rhs entry| / ||g||
            running = running & ~breakdown & (estimate > tol)
            if not bool(running.any()):
                break
        iters = iters + k
        size = j + 1
        keep = torch.arange(size, device=g.device) < k[..., None]  # (..., size)
        square = keep[..., :, None] & keep[..., None, :]
        Rk = torch.where(square, R[..., :size, :size], eye[:size, :size])
        b = torch.where(keep, G[..., :size, 0] * beta[..., None], 0)  # rotated beta e1
        y = torch.linalg.solve_triangular(Rk, b[..., None], upper=True)  # (..., size, 1)
        update = (y.mT @ basis[..., :size, :]).squeeze(-2)  # (..., N)
        v = torch.where(active[..., None], v + update, v)
        stalled = stalled | (active & (k == 0))
        r = g - v + phi_t(v)
        beta = torch.linalg.vector_norm(r, dim=-1)
    return v * scale, iters, beta / denom


def _solve_cg(phi_t, g, max_iter, tol):
    """Conjugate gradients for symmetric positive definite A = I - Phi^T, batched.

    An element stops when its recurrence residual reaches tol, or is marked broken (and
    frozen) on non-positive curvature p^T A p <= 0, i.e. when A is not SPD. The residual is
    then recomputed explicitly; elements whose true residual still exceeds tol restart from
    their current iterate (residual replacement), within the same ``max_iter`` products.
    """
    finfo = torch.finfo(g.dtype)
    g_max = g.abs().amax(-1)  # (...)
    scale = g_max.clamp_min(finfo.tiny)[..., None]
    g = g / scale  # entries in [-1, 1] (0 where g = 0): norms cannot over/underflow
    rel = torch.linalg.vector_norm(g, dim=-1)  # (...)
    denom = rel.clamp_min(finfo.tiny)
    v = torch.zeros_like(g)  # (..., N)
    r = g  # (..., N)
    iters = torch.zeros(g.shape[:-1], dtype=torch.int64, device=g.device)
    broken = torch.zeros_like(g_max, dtype=torch.bool)
    used = 0
    while True:
        active = (rel > tol) & torch.isfinite(rel) & ~broken  # (...)
        if used >= max_iter or not bool(active.any()):
            break
        r = torch.where(active[..., None], r, 0)
        p = r
        rr = (r * r).sum(-1)  # (...)
        running = active
        while used < max_iter and bool(running.any()):
            ap = p - phi_t(p)  # (..., N)
            used += 1
            pap = (p * ap).sum(-1)
            broken = broken | (running & ~(pap > 0))
            running = running & (pap > 0)
            alpha = torch.where(running, rr / torch.where(running, pap, 1), 0)[..., None]
            v = torch.where(running[..., None], v + alpha * p, v)
            r = torch.where(running[..., None], r - alpha * ap, r)
            rr_new = (r * r).sum(-1)
            iters = iters + running.to(torch.int64)
            running = running & (rr_new.sqrt() / denom > tol)
            beta = rr_new / torch.where(running, rr, 1)
            p = torch.where(running[..., None], r + beta[..., None] * p, 0)
            rr = rr_new
        r = g - v + phi_t(v)
        rel = torch.linalg.vector_norm(r, dim=-1) / denom
    return v * scale, iters, rel


def _solve_direct(phi_t_dense, g):
    """Dense LU solve of (I - Phi^T) v = g for small N; phi_t_dense is Phi^T, (..., N, N).

    ``solve_ex`` reports singular elements instead of raising; they get v = 0, so their
    residual is 1 (0 for g = 0) and the caller sees non-convergence.
    """
    a, b, scale = _dense_system(phi_t_dense, g)
    v, info = torch.linalg.solve_ex(a, b[..., None])
    v = torch.where((info == 0)[..., None], v.squeeze(-1), 0)  # (..., N)
    return _dense_result(a, b, scale, v)


def _dense_system(phi_t_dense, g):
    """(I - Phi^T, g / s, s) broadcast to one batch shape, s = max|g| per element: the
    right-hand side's entries lie in [-1, 1], so norms cannot over/underflow."""
    n = g.shape[-1]
    eye = torch.eye(n, dtype=g.dtype, device=g.device)
    a = eye - phi_t_dense  # (..., N, N)
    batch = torch.broadcast_shapes(a.shape[:-2], g.shape[:-1])
    scale = g.abs().amax(-1).clamp_min(torch.finfo(g.dtype).tiny)[..., None]
    return a.expand(batch + (n, n)), (g / scale).expand(batch + (n,)), scale


def _dense_result(a, b, scale, v):
    """(v · s, one iteration, ‖a v − b‖ / ‖b‖) for the dense solvers' v of the scaled system."""
    r = (a @ v[..., None]).squeeze(-1) - b
    b_norm = torch.linalg.vector_norm(b, dim=-1).clamp_min(torch.finfo(b.dtype).tiny)
    rel = torch.linalg.vector_norm(r, dim=-1) / b_norm  # (...)
    iters = torch.ones(b.shape[:-1], dtype=torch.int64, device=b.device)
    return v * scale, iters, rel


def _solve_lstsq(phi_t_dense, g):
    """Minimum-norm least squares for (I - Phi^T) v = g, by the pseudo-inverse: the last
    resort of the backward's fallback chain, for a singular or ill-conditioned system (a
    degenerate point, redundant constraints). Where g lies in the range of I - Phi^T it is
    the minimum-norm solution, and its residual says whether one exists."""
    a, b, scale = _dense_system(phi_t_dense, g)
    v = (torch.linalg.pinv(a) @ b[..., None]).squeeze(-1)
    v = torch.where(torch.isfinite(v).all(-1, keepdim=True), v, 0)
    return _dense_result(a, b, scale, v)


def _dense_from_matvec(phi_t, batch_shape, n, dtype, device):
    """Materialise Phi^T as a dense (*batch_shape, n, n) matrix M, M[..., i, j] = (Phi^T e_j)_i.

    One call to phi_t on all n unit vectors at once: phi_t receives E of shape
    (*batch_shape, n, n) whose dim -2 indexes the unit vectors (E[..., j, :] = e_j) and is an
    EXTRA batch dim, so the caller's phi_t must broadcast its batch-shaped data over it (e.g.
    use ``param.unsqueeze(-2)`` for a (..., N) parameter) and return P with
    P[..., j, :] = Phi^T e_j. M is P transposed. phi_t must not modify its input in place.
    """
    eye = torch.eye(n, dtype=dtype, device=device)
    unit = eye.expand(tuple(batch_shape) + (n, n))  # (..., n, n), row j = e_j
    return phi_t(unit).mT  # (..., n, n)


def _cholesky_solve(L, b):
    """M⁻¹b from M's Cholesky factor L, b (..., n, k): two batched triangular solves (several
    times faster than ``cholesky_solve`` on small batched systems)."""
    y = torch.linalg.solve_triangular(L, b, upper=False)
    return torch.linalg.solve_triangular(L.mT, y, upper=True)
