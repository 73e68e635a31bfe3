"""A batched dense QP solver and its KKT system, for the SQP rule (torch only).

    minimize ½ dᵀH d + cᵀd   subject to   G d ≤ b,   A d = e

H (..., n, n) symmetric, c (..., n), G (..., p, n), b (..., p), A (..., q, n), e (..., q);
p or q may be 0. Leading batch dimensions broadcast.

Why a primal-dual interior point (Mehrotra predictor-corrector) rather than an active-set
method: its work per iteration is the same for every batch element (one dense factorisation of
an (n + q)-sized system), its iteration count hardly depends on the number of constraints or
on how many are active, and it needs no combinatorial bookkeeping that differs between batch
elements, so it vectorises over the batch. Its weakness, a solution accurate only to the
interior-point tolerance, is removed by a final *polish*: the active set is read off the
interior-point solution (multiplier larger than slack) and the equality-constrained QP on that
set is solved exactly from its KKT system; the polished point is kept where it is primal and
dual feasible. The same KKT matrix is what the SQP backward differentiates (``_kkt_matrix``).

Singular systems are flagged with ``torch.linalg.*_ex`` and never raise; an element whose
interior point does not reach its tolerance (an infeasible QP) is reported as not solved.

The code generator copies the definitions a module reaches verbatim into it
(`foldgen.link`), so they use only ``math``, ``torch`` and each other. No autograd is used.
"""

import math

import torch

from foldgen.runtime.core import _mv
from foldgen.runtime.linsolve import _cholesky_solve


def _qp_newton(solve, ok, r_d, r_e, r_i, r_c, s, lam, G):
    """One Newton direction of the interior point from the factorised reduced system
    (``solve``, `_qp_factor`'s).

    With Δs = −r_i − GΔd and Δλ = (−r_c + λ(r_i + GΔd)) / s, the step solves
    [H + Gᵀ(λ/s)G, Aᵀ; A, 0] (Δd, Δν) = (−r_d − Gᵀ((λ r_i − r_c)/s), −r_e).
    """
    w = (lam * r_i - r_c) / s  # (..., p)
    dd, dnu = solve(-r_d - _mv(G.mT, w), -r_e)
    dd, dnu = torch.where(ok[..., None], dd, 0), torch.where(ok[..., None], dnu, 0)
    ds = -r_i - _mv(G, dd)
    dlam = (-r_c - lam * ds) / s
    return dd, ds, dlam, dnu


def _qp_safe_cholesky(M, L, ok):
    """L, with the factor of the identity where ``ok`` is False (a stopped element): a failed
    factor's NaN would otherwise reach every element's gradient when the solve is unrolled
    under autograd (refactored then, with those elements' M replaced)."""
    if bool(ok.all()):
        return L
    eye = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)
    if M.requires_grad:
        return torch.linalg.cholesky_ex(torch.where(ok[..., None, None], M, eye))[0]
    return torch.where(ok[..., None, None], L, eye)


def _qp_factor(K, M, A, P_eq, done):
    """The reduced system [M, Aᵀ; A, −P_eq] factorised, as ``(solve, ok)``: ``solve(top,
    bottom)`` returns (Δd, Δν); ``ok`` where the factorisation succeeded.

    Where every element still running has M positive definite (a convex QP: H ⪰ 0 and the
    barrier's Gᵀ(λ/s)G), by Cholesky of M and of the Schur complement S = A M⁻¹Aᵀ + P_eq
    (q × q, positive definite: on A's left null space P_eq is the identity): about half an
    LU's work, and symmetric. Otherwise one LU of K, whose M block is set here."""
    n, q = M.shape[-1], A.shape[-2]
    L, info = torch.linalg.cholesky_ex(M)
    if bool(((info == 0) | done).all()):
        ok = info == 0
        L = _qp_safe_cholesky(M, L, ok)
        if q:
            Y = _cholesky_solve(L, A.mT.expand(*M.shape[:-2], n, q))  # M⁻¹Aᵀ, (..., n, q)
            S = A @ Y + P_eq
            L_s, info_s = torch.linalg.cholesky_ex(S)
            ok = ok & (info_s == 0)
            L_s = _qp_safe_cholesky(S, L_s, ok)

        def solve(top, bottom):
            u = _cholesky_solve(L, top[..., None])[..., 0]
            if not q:
                return u, bottom
            nu = _cholesky_solve(L_s, (_mv(A, u) - bottom)[..., None])[..., 0]
            return u - _mv(Y, nu), nu

        return solve, ok
    K[..., :n, :n] = M
    K_lu, pivots, info = torch.linalg.lu_factor_ex(K)
    ok = info == 0  # a non-finite K (not flagged by info) gives a non-finite step, caught later
    eye = torch.eye(n + q, dtype=K.dtype, device=K.device)
    K_lu = torch.where(ok[..., None, None], K_lu, eye)

    def solve(top, bottom):
        rhs = torch.cat([top, bottom], dim=-1)[..., None]
        sol = torch.linalg.lu_solve(K_lu, pivots, rhs)[..., 0]
        return sol[..., :n], sol[..., n:]

    return solve, ok


def _qp_max_step(z, dz):
    """The largest t with z + t dz ≥ 0 (z > 0), per element (inf where nothing blocks)."""
    ratio = torch.where(dz < 0, -z / torch.where(dz < 0, dz, -1), math.inf)
    return ratio.amin(-1) if ratio.shape[-1] else z.new_full(z.shape[:-1], math.inf)


def _qp_svd(C):
    """``torch.linalg.svd(C, full_matrices=True)``'s U and S; where LAPACK fails on some
    element (torch then raises for the whole batch), element by element, NaN for those."""
    try:
        U, S, _ = torch.linalg.svd(C, full_matrices=True)
        return U, S
    except torch.linalg.LinAlgError:
        k, r = C.shape[-2], min(C.shape[-2:])
        out = []
        for c in C:
            try:
                u, s, _ = torch.linalg.svd(c, full_matrices=True)
            except torch.linalg.LinAlgError:
                u, s = c.new_full((k, k), math.nan), c.new_full((r,), math.nan)
            out.append((u, s))
        return torch.stack([u for u, _ in out]), torch.stack([s for _, s in out])


def _qp_null_projector(C, rows):
    """The orthogonal projector (..., k, k) onto the left null space of the rows of C
    (..., k, n) that ``rows`` (..., k, bool) selects, zero outside them: Σ uⱼuⱼᵀ over C's
    left singular vectors of singular value at most 10·max(k, n)·eps·σ_max (and those past
    n). Zero where the selected rows are linearly independent, so a KKT matrix with −P in
    its multiplier block is the usual one there, and nonsingular where rows are redundant.

    Screened first: the Cholesky factor of the Gram matrix of the selected rows, normalised,
    has its j-th pivot the sine of the angle between row j and the rows before it; only
    elements with a pivot below 10·√(k·eps) (rounding in the Gram matrix is eps) or a zero
    row get the SVD. Constant data for the derivative (computed without autograd)."""
    batch = torch.broadcast_shapes(C.shape[:-2], rows.shape[:-1])
    k, n = C.shape[-2:]
    P = C.new_zeros(*batch, k, k)
    if k == 0:
        return P
    m = rows.to(C.dtype).expand(*batch, k)
    C = (C.detach() * m[..., None]).expand(*batch, k, n)
    eps = torch.finfo(C.dtype).eps
    gram = C @ C.mT
    norms = torch.diagonal(gram, dim1=-2, dim2=-1).sqrt()
    inverse = torch.where(norms > 0, 1 / norms, 0)  # a zero selected row: a zero pivot
    gram = inverse[..., :, None] * gram * inverse[..., None, :] + torch.diag_embed(1 - m)
    L, info = torch.linalg.cholesky_ex(gram)
    pivots = torch.diagonal(L, dim1=-2, dim2=-1)
    suspect = ~((info == 0) & (pivots > 10 * (k * eps) ** 0.5).all(-1))
    if not bool(suspect.any()):
        return P
    index = suspect.reshape(-1).nonzero()[:, 0]
    chosen, selected = C.reshape(-1, k, n)[index], m.reshape(-1, k)[index]
    finite = torch.isfinite(chosen).all(-1).all(-1)
    U, S = _qp_svd(torch.where(finite[..., None, None], chosen, 0))
    limit = 10 * max(k, n) * eps * S[..., :1]
    null = torch.ones_like(selected, dtype=torch.bool)
    null[..., : S.shape[-1]] = ~(S > limit)  # NaN where the SVD failed: the element fails
    found = (U * null[..., None, :].to(U.dtype)) @ U.mT
    good = finite & torch.isfinite(S).all(-1)  # else NaN: a K with P fails as singular
    found = torch.where(good[..., None, None], found, math.nan)
    found = found * selected[..., :, None] * selected[..., None, :]
    P = P.reshape(-1, k, k).index_copy(0, index, found)
    return P.reshape(*batch, k, k)


def _kkt_matrix(H, G, A, active):
    """The KKT matrix of the QP on an active set, (..., n + p + q) square and symmetric:

    [ H        Gᵀ M     Aᵀ ]      M = diag(active): active rows hold G_i d = b_i,
    [ M G      I − M    0  ]  − P  inactive rows hold λ_i = 0; P (on the multiplier rows)
    [ A        0        0  ]      the projector onto the left null space of [M G; A].

    P is zero unless the active and equality rows are linearly dependent (a degenerate vertex,
    a constraint written twice); there it makes K nonsingular with the same x-part of K⁻¹,
    and the multipliers of consistent data the minimum-norm ones (orthogonal to P's range).
    """
    p, q = G.shape[-2], A.shape[-2]
    batch = torch.broadcast_shapes(H.shape[:-2], G.shape[:-2], A.shape[:-2], active.shape[:-1])
    n = H.shape[-1]
    H, G, A = H.expand(*batch, n, n), G.expand(*batch, p, n), A.expand(*batch, q, n)
    m = active.to(H.dtype).expand(*batch, p)
    MG = m[..., :, None] * G
    C = torch.cat([MG, A], dim=-2)  # (..., p + q, n)
    rows = torch.cat([active.expand(*batch, p), active.new_ones(*batch, q)], dim=-1)
    corner = torch.diag_embed(torch.cat([1 - m, m.new_zeros(*batch, q)], dim=-1))
    corner = corner - _qp_null_projector(C, rows)
    top = torch.cat([H, C.mT], dim=-1)
    bottom = torch.cat([C, corner], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def _qp_polish(H, c, G, b, A, e, active, tol):
    """The QP's solution on an active set from its KKT system; ``ok`` where it is the QP's
    solution: the system solved (residual ≤ tol, relative), the active and equality rows
    held (to tol, relative: redundant rows with inconsistent data fail here), λ ≥ −tol
    (relative) and G d ≤ b + tol."""
    n, p = H.shape[-1], G.shape[-2]
    K = _kkt_matrix(H, G, A, active)
    batch = K.shape[:-2]
    rhs = torch.cat([-c.expand(*batch, n), torch.where(active, b, 0), e.expand(*batch, -1)], -1)
    sol, info = torch.linalg.solve_ex(K, rhs[..., None])
    sol = sol[..., 0]
    error = (_mv(K, sol) - rhs).abs().amax(-1)  # a nearly singular K shows
    d, lam, nu = sol[..., :n], sol[..., n : n + p], sol[..., n + p :]
    lam = torch.where(active, lam, 0)
    slack = b - _mv(G, d)
    ok = (info == 0) & torch.isfinite(sol).all(-1)
    ok = ok & (error <= tol * (1 + rhs.abs().amax(-1)))
    held = torch.cat([torch.where(active, slack, 0), _mv(A, d) - e], -1)
    if held.shape[-1]:
        ok = ok & (held.abs().amax(-1) <= tol * (1 + rhs[..., n:].abs().amax(-1)))
    if p:
        ok = ok & (lam >= -tol * (1 + lam.abs().amax(-1, keepdim=True))).all(-1)
        ok = ok & (slack >= -tol).all(-1)  # absolute: a violated row means a wrong active set
    return d, lam, nu, ok


def _qp_rows(t, batch, rank, index):
    """The batch elements ``index`` (of the flattened batch) of t, core rank ``rank``."""
    core = tuple(t.shape[t.dim() - rank :])
    return t.expand(*batch, *core).reshape((math.prod(batch), *core))[index]


def _qp_scatter(t, batch, index, size):
    """Rows t of the flattened batch elements ``index`` back into a zero (*batch, ...)."""
    out = t.new_zeros((size, *t.shape[1:])).index_copy(0, index, t)
    return out.reshape((*batch, *t.shape[1:]))


def _qp_solve(H, c, G, b, A, e, todo, max_iter=100, warm=None):
    """min ½dᵀHd + cᵀd s.t. G d ≤ b, A d = e, per batch element where ``todo``.

    ``warm`` (..., p), a guess of the active set (the previous SQP step's): where the
    equality QP on it satisfies the KKT conditions (`_qp_polish`'s checks), that is the
    solution and the interior point below runs only on the other elements, gathered into a
    smaller batch. Near an SQP solution the active set settles, so most QPs skip it.
    """
    if warm is not None and G.shape[-2]:
        batch = todo.shape
        tol = 100 * torch.finfo(H.dtype).eps ** 0.5
        d, lam, nu, ok = _qp_polish(H, c, G, b, A, e, warm & todo[..., None], tol)
        # A row outside the guess must hold to rounding, not to tol: a row violated by less
        # than tol is a wrong set whose multipliers are wrong (a bound the guess dropped),
        # which the interior point below identifies instead.
        eps = torch.finfo(H.dtype).eps
        slack = b - _mv(G, d)
        rounding = 1000 * eps * (1 + b.abs() + _mv(G.abs(), d.abs()))
        ok = ok & todo & (warm | (slack >= -rounding)).all(-1)
        rest = todo & ~ok
        if bool(rest.any()):
            index = rest.reshape(-1).nonzero()[:, 0]
            parts = [
                _qp_rows(t, batch, r, index)
                for t, r in zip((H, c, G, b, A, e), (2, 1, 2, 1, 2, 1))
            ]
            ones = torch.ones(index.shape, dtype=torch.bool, device=index.device)
            found = _qp_solve(*parts, ones, max_iter)
            size = math.prod(batch)
            d_r, lam_r, nu_r = (_qp_scatter(t, batch, index, size) for t in found[:3])
            solved_r = _qp_scatter(found[3], batch, index, size)
            d, lam, nu = (
                torch.where(rest[..., None], r, w)
                for r, w in zip((d_r, lam_r, nu_r), (d, lam, nu))
            )
            ok = ok | solved_r
        keep = ok[..., None]
        return torch.where(keep, d, 0), torch.where(keep, lam, 0), torch.where(keep, nu, 0), ok
    return _qp_interior(H, c, G, b, A, e, todo, max_iter)


def _qp_bound_rows(G, batch):
    """G's rows split for the interior point's Gᵀ diag(W) G, or None where it does not pay.

    A row with one nonzero entry (a bound, as −x ≤ 0 or x ≤ u) adds W_i G_ij² to the
    diagonal alone; the other rows, gathered and zero-padded to the batch's largest count r,
    go through one (..., r, n) product instead of the (..., p, n) one: r = 1 where p = n + 1
    (portfolio). Returns (squares, order, valid, G_r): the bound rows' squares (..., p, n),
    zero elsewhere; the other rows' indices (..., r), which of them are real, and G_r."""
    p, n = G.shape[-2:]
    G = G.expand(*batch, p, n)
    bound = (G != 0).sum(-1) == 1  # (..., p)
    other = ~bound
    r = int(other.sum(-1).amax()) if other.numel() else 0
    if 2 * r > p:
        return None
    squares = torch.where(bound[..., None], G * G, 0)
    order = torch.argsort(other.to(torch.int8), dim=-1, descending=True, stable=True)[..., :r]
    valid = other.gather(-1, order).to(G.dtype)
    G_r = G.gather(-2, order[..., None].expand(*order.shape, n)) * valid[..., None]
    return squares, order, valid, G_r


def _qp_normal_matrix(H, G, W, rows):
    """H + Gᵀ diag(W) G, with `_qp_bound_rows`'s split where it has one."""
    if rows is None:
        return H + G.mT @ (W[..., :, None] * G)
    squares, order, valid, G_r = rows
    W_r = W.gather(-1, order) * valid
    diagonal = (W[..., None, :] @ squares)[..., 0, :]  # Σ_i W_i G_ij² over the bound rows
    return H + G_r.mT @ (W_r[..., :, None] * G_r) + torch.diag_embed(diagonal)


def _qp_interior(H, c, G, b, A, e, todo, max_iter=100):
    """`_qp_solve` without a warm active set: the interior point, then its polish.

    Mehrotra predictor-corrector from d = 0, s = max(b, 1), λ = 1, with one step length for
    primal and dual (0.99 of the way to the boundary), stopped per element when the scaled
    residuals fall below √eps and the duality measure below eps^¾; then polished on its
    active set. Redundant equality rows (A of deficient row rank) get −P in the reduced
    system's (ν, ν) block, P the projector onto A's left null space: nonsingular, ν stays in
    A's range (minimum norm), and data with P e beyond √eps (relative) have no point. Where
    the active rows are dependent too (a degenerate vertex) the polish's multipliers are the
    minimum-norm ones; rows where those are negative leave the active set and it is polished
    again (at most twice). Returns d, λ ≥ 0, ν and ``solved``: True where the interior point converged
    or the polished point passed its checks (primal feasible, λ ≥ 0), False otherwise (an
    infeasible QP, or a singular system).
    """
    n, p, q = H.shape[-1], G.shape[-2], A.shape[-2]
    batch = todo.shape
    dtype, device = H.dtype, H.device
    tol = torch.finfo(dtype).eps ** 0.5
    c, b, e = c.expand(*batch, n), b.expand(*batch, p), e.expand(*batch, q)
    d = torch.zeros(*batch, n, dtype=dtype, device=device)
    s = torch.clamp(b, min=1.0)
    lam = torch.ones(*batch, p, dtype=dtype, device=device)
    nu = torch.zeros(*batch, q, dtype=dtype, device=device)
    scale_d = 1 + c.abs().amax(-1) if n else torch.ones(batch, dtype=dtype, device=device)
    scale_p = 1 + torch.cat([b, e], -1).abs().amax(-1) if p + q else torch.ones_like(scale_d)
    done = ~todo
    solved = torch.zeros_like(todo)
    # Redundant equality rows: −P in the (ν, ν) block; inconsistent data have no point.
    P_eq = _qp_null_projector(A, torch.ones(q, dtype=torch.bool, device=device))
    if q:
        inconsistent = ~(_mv(P_eq, e).abs().amax(-1) <= tol * scale_p)
        done = done | inconsistent
    # K = [M, Aᵀ; A, −P_eq] is preallocated for the LU path: only M changes between iterations.
    K = torch.zeros(*batch, n + q, n + q, dtype=dtype, device=device)
    K[..., :n, n:] = A.mT
    K[..., n:, :n] = A
    K[..., n:, n:] = -P_eq
    rows = _qp_bound_rows(G, batch) if p else None
    for _ in range(max_iter):
        Gd = _mv(G, d)
        r_d = _mv(H, d) + c + _mv(G.mT, lam)
        r_d = r_d + _mv(A.mT, nu)
        r_e = _mv(A, d) - e
        r_i = Gd + s - b
        mu = (s * lam).sum(-1) / max(p, 1)
        dual = r_d.abs().amax(-1) if n else torch.zeros_like(scale_d)
        primal = torch.cat([r_e, r_i], -1).abs().amax(-1) if p + q else torch.zeros_like(dual)
        finished = (dual <= tol * scale_d) & (primal <= tol * scale_p) & (mu <= 100 * tol * tol)
        solved = solved | (finished & ~done)
        done = done | finished | ~torch.isfinite(mu) | ~torch.isfinite(dual)
        if bool(done.all()):
            break
        W = lam / s  # (..., p)
        solve, ok = _qp_factor(K, _qp_normal_matrix(H, G, W, rows), A, P_eq, done)
        done = done | ~ok
        # Predictor (affine scaling), then the centred corrector with σ = (μ_aff / μ)³.
        dd, ds, dl, dn = _qp_newton(solve, ok, r_d, r_e, r_i, s * lam, s, lam, G)
        t = torch.minimum(_qp_max_step(s, ds), _qp_max_step(lam, dl)).clamp(max=1.0)[..., None]
        mu_aff = ((s + t * ds) * (lam + t * dl)).sum(-1) / max(p, 1)
        sigma = (mu_aff / mu.clamp_min(torch.finfo(dtype).tiny)).clamp(0, 1) ** 3
        r_c = s * lam + ds * dl - (sigma * mu)[..., None]
        dd, ds, dl, dn = _qp_newton(solve, ok, r_d, r_e, r_i, r_c, s, lam, G)
        t = torch.minimum(_qp_max_step(s, ds), _qp_max_step(lam, dl))
        t = torch.where(done, 0, torch.clamp(0.99 * t, max=1.0))[..., None]
        step = [z + t * dz for z, dz in ((d, dd), (s, ds), (lam, dl), (nu, dn))]
        # z and t are finite, so a step is finite iff its direction is: one sum per part
        # (a sum is non-finite iff an entry is, or it overflows, which is a runaway anyway)
        finite = torch.isfinite(dd.sum(-1) + ds.sum(-1) + dl.sum(-1) + dn.sum(-1))
        done = done | ~finite  # diverging (an infeasible QP): stop, reported as not solved
        keep = done[..., None]
        d, s, lam, nu = (torch.where(keep, z, z_new) for z, z_new in zip((d, s, lam, nu), step))
    # Polish: the exact solution on the identified active set, where it is the QP's solution.
    active = lam > s
    d_p, lam_p, nu_p, ok = _qp_polish(H, c, G, b, A, e, active, 100 * tol)
    for _ in range(2 if p else 0):
        # Dependent active rows (more active rows than the vertex needs): the minimum-norm
        # multipliers may be negative where nonnegative ones exist; drop those rows.
        negative = lam_p < -100 * tol * (1 + lam_p.abs().amax(-1, keepdim=True))
        again = todo & ~ok & negative.any(-1) & torch.isfinite(lam_p).all(-1)
        if not bool(again.any()):
            break
        active = torch.where(again[..., None], active & ~negative, active)
        retried = _qp_polish(H, c, G, b, A, e, active, 100 * tol)
        d_p, lam_p, nu_p, ok = (
            torch.where(again[..., None] if t.dim() > again.dim() else again, t_new, t)
            for t, t_new in zip((d_p, lam_p, nu_p, ok), retried)
        )
    # A polished point that passes its checks is feasible and a KKT point: solved, even where
    # rounding kept the interior point from its own tolerance.
    ok = ok & todo
    solved = solved | ok
    d = torch.where(ok[..., None], d_p, torch.where(solved[..., None], d, 0))
    lam = torch.where(ok[..., None], lam_p, torch.where(solved[..., None], lam, 0))
    nu = torch.where(ok[..., None], nu_p, torch.where(solved[..., None], nu, 0))
    return d, lam, nu, solved
