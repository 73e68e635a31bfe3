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

The code generator copies the top-level functions of this file verbatim into generated
modules, so each one depends only on ``math``, ``torch`` and the ``_`` functions named in
its ``# needs:`` line.
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

    Arnoldi uses modified Gram-Schmidt; the Hessenberg matrix is reduced by Givens rotations
    kept per batch element, so |last rotated rhs entry| is each element's residual norm
    without extra products. Elements leave the current cycle when that estimate reaches tol,
    at a lucky breakdown (invariant Krylov space: exact solution, handled without dividing
    by zero) or when A is singular on the Krylov space; each keeps its own subspace size k and
    the small triangular systems are solved together by padding R with identity rows.
    After each cycle the residual is recomputed explicitly (one extra product per cycle), so
    restarts correct any drift of the estimate and the returned residual is exact.
    ``max_iter`` bounds the Arnoldi products; ``iters`` counts those an element took part in.
    """
    finfo = torch.finfo(g.dtype)
    n = g.shape[-1]
    m_max = max(1, min(n, 60 if restart is None else int(restart)))  # Krylov dim <= N
    g_max = g.abs().amax(-1)  # (...)
    scale = g_max.clamp_min(finfo.tiny)[..., None]
    g = g / scale  # entries in [-1, 1] (0 where g = 0): norms cannot over/underflow
    beta = torch.linalg.vector_norm(g, dim=-1)  # ||r||  # (...)
    denom = beta.clamp_min(finfo.tiny)
    v = torch.zeros_like(g)  # (..., N)
    r = g  # residual g - A v  # (..., N)
    iters = torch.zeros(g.shape[:-1], dtype=torch.int64, device=g.device)  # (...)
    stalled = torch.zeros_like(g_max, dtype=torch.bool)  # no progress possible (singular A)
    used = 0
    while True:
        rel = beta / denom
        active = (rel > tol) & torch.isfinite(rel) & ~stalled  # (...)
        if used >= max_iter or not bool(active.any()):
            break
        m = min(m_max, int(max_iter) - used)
        basis = [torch.where(active[..., None], r / beta.clamp_min(finfo.tiny)[..., None], 0)]
        cols = []  # column j of R: (..., j + 1)
        cs, sn = [], []  # Givens rotations, each (...)
        rhs = [torch.where(active, beta, 0)]  # rotated beta * e1, entries (...)
        k = torch.zeros_like(iters)  # Krylov dimension used per element  # (...)
        running = active
        for j in range(m):
            w = basis[j] - phi_t(basis[j])  # A v_j  # (..., N)
            used += 1
            w_norm = torch.linalg.vector_norm(w, dim=-1)
            h = []
            for i in range(j + 1):
                h_ij = (w * basis[i]).sum(-1)
                w = w - h_ij[..., None] * basis[i]
                h.append(h_ij)
            h_next = torch.linalg.vector_norm(w, dim=-1)  # (...)
            breakdown = h_next <= finfo.eps * w_norm
            h_safe = torch.where(breakdown, 1, h_next)[..., None]
            basis.append(torch.where(breakdown[..., None], 0, w / h_safe))
            for i in range(j):
                top = cs[i] * h[i] + sn[i] * h[i + 1]
                h[i + 1] = cs[i] * h[i + 1] - sn[i] * h[i]
                h[i] = top
            rho = torch.hypot(h[j], h_next)  # new diagonal entry of R  # (...)
            nonsingular = rho > finfo.tiny
            rho_safe = torch.where(nonsingular, rho, 1)
            cs.append(torch.where(nonsingular, h[j] / rho_safe, 1))
            sn.append(torch.where(nonsingular, h_next / rho_safe, 0))
            h[j] = rho
            cols.append(torch.stack(h, dim=-1))
            rhs.append(-sn[j] * rhs[j])
            rhs[j] = cs[j] * rhs[j]
            running = running & nonsingular
            k = k + running.to(torch.int64)
            iters = iters + running.to(torch.int64)
            estimate = rhs[j + 1].abs() / denom
            running = running & ~breakdown & (estimate > tol)
            if not bool(running.any()):
                break
        size = len(cols)
        R = torch.zeros(g.shape[:-1] + (size, size), dtype=g.dtype, device=g.device)
        for j, col in enumerate(cols):
            R[..., : j + 1, j] = col
        idx = torch.arange(size, device=g.device)
        keep = idx < k[..., None]  # (..., size)
        eye = torch.eye(size, dtype=g.dtype, device=g.device)
        R = torch.where(keep[..., :, None] & keep[..., None, :], R, eye)
        b = torch.where(keep, torch.stack(rhs[:size], dim=-1), 0)  # (..., size)
        y = torch.linalg.solve_triangular(R, b[..., None], upper=True)  # (..., size, 1)
        update = (y.mT @ torch.stack(basis[:size], dim=-2)).squeeze(-2)  # (..., N)
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
    finfo = torch.finfo(g.dtype)
    n = g.shape[-1]
    eye = torch.eye(n, dtype=g.dtype, device=g.device)
    a = eye - phi_t_dense  # (..., N, N)
    batch = torch.broadcast_shapes(a.shape[:-2], g.shape[:-1])
    a = a.expand(batch + (n, n))
    scale = g.abs().amax(-1).clamp_min(finfo.tiny)[..., None]
    b = (g / scale).expand(batch + (n,))  # entries in [-1, 1]: norms cannot over/underflow
    v, info = torch.linalg.solve_ex(a, b[..., None])
    v = torch.where((info == 0)[..., None], v.squeeze(-1), 0)  # (..., N)
    r = (a @ v[..., None]).squeeze(-1) - b
    b_norm = torch.linalg.vector_norm(b, dim=-1).clamp_min(finfo.tiny)
    rel = torch.linalg.vector_norm(r, dim=-1) / b_norm  # (...)
    iters = torch.ones(batch, dtype=torch.int64, device=g.device)
    return v * scale, iters, rel


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
