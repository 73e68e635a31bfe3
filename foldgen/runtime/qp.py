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


def _qp_newton(K_lu, pivots, H_ok, r_d, r_e, r_i, r_c, s, lam, G):
    """One Newton direction of the interior point from the factorised reduced system.

    With Δs = −r_i − GΔd and Δλ = (−r_c + λ(r_i + GΔd)) / s, the step solves
    [H + Gᵀ(λ/s)G, Aᵀ; A, 0] (Δd, Δν) = (−r_d − Gᵀ((λ r_i − r_c)/s), −r_e).
    """
    n = r_d.shape[-1]
    w = (lam * r_i - r_c) / s  # (..., p)
    top = -r_d - (G.mT @ w[..., None])[..., 0]  # (..., n)
    rhs = torch.cat([top, -r_e], dim=-1)[..., None]
    sol = torch.linalg.lu_solve(K_lu, pivots, rhs)[..., 0]
    sol = torch.where(H_ok[..., None], sol, 0)
    dd, dnu = sol[..., :n], sol[..., n:]
    ds = -r_i - (G @ dd[..., None])[..., 0]
    dlam = (-r_c - lam * ds) / s
    return dd, ds, dlam, dnu


def _qp_max_step(z, dz):
    """The largest t with z + t dz ≥ 0 (z > 0), per element (inf where nothing blocks)."""
    ratio = torch.where(dz < 0, -z / torch.where(dz < 0, dz, -1), math.inf)
    return ratio.amin(-1) if ratio.shape[-1] else z.new_full(z.shape[:-1], math.inf)


def _kkt_matrix(H, G, A, active):
    """The KKT matrix of the QP on an active set, (..., n + p + q) square and symmetric:

    [ H        Gᵀ M     Aᵀ ]      M = diag(active): active rows hold G_i d = b_i,
    [ M G      I − M    0  ]      inactive rows hold λ_i = 0.
    [ A        0        0  ]
    """
    p, q = G.shape[-2], A.shape[-2]
    m = active.to(H.dtype)
    batch = torch.broadcast_shapes(H.shape[:-2], G.shape[:-2], A.shape[:-2], m.shape[:-1])
    n = H.shape[-1]
    H, G, A = H.expand(*batch, n, n), G.expand(*batch, p, n), A.expand(*batch, q, n)
    m = m.expand(*batch, p)
    MG = m[..., :, None] * G
    top = torch.cat([H, MG.mT, A.mT], dim=-1)
    middle = torch.cat(
        [MG, torch.diag_embed(1 - m).expand(*batch, p, p), G.new_zeros(*batch, p, q)], -1
    )
    bottom = torch.cat([A, A.new_zeros(*batch, q, p + q)], dim=-1)
    return torch.cat([top, middle, bottom], dim=-2)


def _qp_polish(H, c, G, b, A, e, active, tol):
    """The QP's solution on an active set from its KKT system; ``ok`` where it is the QP's
    solution: the system solved (residual ≤ tol, relative), λ ≥ −tol (relative) and
    G d ≤ b + tol."""
    n, p = H.shape[-1], G.shape[-2]
    K = _kkt_matrix(H, G, A, active)
    batch = K.shape[:-2]
    rhs = torch.cat([-c.expand(*batch, n), torch.where(active, b, 0), e.expand(*batch, -1)], -1)
    sol, info = torch.linalg.solve_ex(K, rhs[..., None])
    sol = sol[..., 0]
    error = ((K @ sol[..., None])[..., 0] - rhs).abs().amax(-1)  # a nearly singular K shows
    d, lam, nu = sol[..., :n], sol[..., n : n + p], sol[..., n + p :]
    lam = torch.where(active, lam, 0)
    slack = b - (G @ d[..., None])[..., 0]
    ok = (info == 0) & torch.isfinite(sol).all(-1)
    ok = ok & (error <= tol * (1 + rhs.abs().amax(-1)))
    if p:
        ok = ok & (lam >= -tol * (1 + lam.abs().amax(-1, keepdim=True))).all(-1)
        ok = ok & (slack >= -tol).all(-1)  # absolute: a violated row means a wrong active set
    return d, lam, nu, ok


def _qp_solve(H, c, G, b, A, e, todo, max_iter=100):
    """min ½dᵀHd + cᵀd s.t. G d ≤ b, A d = e, per batch element where ``todo``.

    Mehrotra predictor-corrector from d = 0, s = max(b, 1), λ = 1, with one step length for
    primal and dual (0.99 of the way to the boundary), stopped per element when the scaled
    residuals fall below √eps and the duality measure below eps^¾; then polished on its
    active set. Returns d, λ ≥ 0, ν and ``solved``: True where the interior point converged
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
    zeros_q = torch.zeros(*batch, q, q, dtype=dtype, device=device)
    for _ in range(max_iter):
        Gd = (G @ d[..., None])[..., 0]
        r_d = (H @ d[..., None])[..., 0] + c + (G.mT @ lam[..., None])[..., 0]
        r_d = r_d + (A.mT @ nu[..., None])[..., 0]
        r_e = (A @ d[..., None])[..., 0] - e
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
        M = H + G.mT @ (W[..., :, None] * G)  # (..., n, n)
        K = torch.cat(
            [
                torch.cat([M, A.mT.expand(*batch, n, q)], -1),
                torch.cat([A.expand(*batch, q, n), zeros_q], -1),
            ],
            -2,
        )
        K_lu, pivots, info = torch.linalg.lu_factor_ex(K)
        ok = (info == 0) & torch.isfinite(K_lu).all(-1).all(-1)
        done = done | ~ok
        K_lu = torch.where(ok[..., None, None], K_lu, torch.eye(n + q, dtype=dtype, device=device))
        # Predictor (affine scaling), then the centred corrector with σ = (μ_aff / μ)³.
        dd, ds, dl, dn = _qp_newton(K_lu, pivots, ok, r_d, r_e, r_i, s * lam, s, lam, G)
        t = torch.minimum(_qp_max_step(s, ds), _qp_max_step(lam, dl)).clamp(max=1.0)[..., None]
        mu_aff = ((s + t * ds) * (lam + t * dl)).sum(-1) / max(p, 1)
        sigma = (mu_aff / mu.clamp_min(torch.finfo(dtype).tiny)).clamp(0, 1) ** 3
        r_c = s * lam + ds * dl - (sigma * mu)[..., None]
        dd, ds, dl, dn = _qp_newton(K_lu, pivots, ok, r_d, r_e, r_i, r_c, s, lam, G)
        t = torch.minimum(_qp_max_step(s, ds), _qp_max_step(lam, dl))
        t = torch.where(done, 0, torch.clamp(0.99 * t, max=1.0))[..., None]
        step = [z + t * dz for z, dz in ((d, dd), (s, ds), (lam, dl), (nu, dn))]
        finite = torch.isfinite(torch.cat(step, -1)).all(-1)
        done = done | ~finite  # diverging (an infeasible QP): stop, reported as not solved
        keep = done[..., None]
        d, s, lam, nu = (torch.where(keep, z, z_new) for z, z_new in zip((d, s, lam, nu), step))
    # Polish: the exact solution on the identified active set, where it is the QP's solution.
    d_p, lam_p, nu_p, ok = _qp_polish(H, c, G, b, A, e, lam > s, 100 * tol)
    # A polished point that passes its checks is feasible and a KKT point: solved, even where
    # rounding kept the interior point from its own tolerance.
    ok = ok & todo
    solved = solved | ok
    d = torch.where(ok[..., None], d_p, torch.where(solved[..., None], d, 0))
    lam = torch.where(ok[..., None], lam_p, torch.where(solved[..., None], lam, 0))
    nu = torch.where(ok[..., None], nu_p, torch.where(solved[..., None], nu, 0))
    return d, lam, nu, solved
