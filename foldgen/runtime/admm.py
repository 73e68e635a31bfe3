"""ADMM on the splitting f₀(x) + Σᵢ gᵢ(Aᵢ x), and its folded backward.

The state is s = (z₁, …, z_B, u₁, …, u_B), one (zᵢ, uᵢ) per block zᵢ = Aᵢ x (scaled form).
What the problem contributes arrives in ``p``, the problem record: per block, ``p.terms``
has the `_AdmmProx` record of its term gᵢ (the prox, its VJP and its parts of the
certificates) and ``p.matrices`` whether it has a matrix Aᵢ (False: zᵢ = x itself);
``p.data_ranks`` are the core ranks of ``p.block_data``'s outputs, and ``p.prepare`` /
``p.x_update`` the x-update of the plan's choice: one factor of K = ∇²f₀ + ρ Σᵢ AᵢᵀAᵢ when
f₀ is quadratic (`_admm_factor`: shared by the batch and every ρ where no batched data reach
K, a Cholesky factor per element and ρ otherwise; `_admm_prepare_quadratic`,
`_admm_x_update_quadratic`, solved by `_admm_solve_quadratic`), damped Newton steps
otherwise (`_admm_prepare_newton`, `_admm_x_update_newton`, solved by `_admm_solve_newton`).
`_admm_backward` serves both. The runtime's `_admm_update` is one sweep in plain torch
operations (tests differentiate an unrolled run of it).
"""

import dataclasses
import math

import torch

from foldgen.runtime.core import _as_tuple, _lift, _mv, _norm
from foldgen.runtime.layer import (
    _DIVERGED,
    BackwardInfo,
    SolveInfo,
    _adjoint,
    _report_groups,
    _trend,
)
from foldgen.runtime.projections import (
    _proj_ball,
    _proj_ball_vjp,
    _proj_box,
    _proj_box_vjp,
    _proj_l1ball,
    _proj_l1ball_vjp,
    _proj_psd,
    _proj_psd_vjp,
    _proj_soc,
    _proj_soc_vjp,
    _psd_min_eigenvalue,
    _psd_square,
)
from foldgen.runtime.prox import (
    _prox_hinge,
    _prox_hinge_vjp,
    _prox_l1,
    _prox_l1_vjp,
    _prox_l2,
    _prox_l2_vjp,
    _prox_linf,
    _prox_linf_vjp,
    _prox_sum_largest,
    _prox_sum_largest_vjp,
)

# adapt_rho=True (the default): OSQP's residual balancing (Stellato et al. 2020, §5.2) every
# _ADMM_ADAPT_EVERY iterations, ρ ← ρ·sqrt((‖r_prim‖/max(‖Ax‖, ‖z‖)) / (‖r_dual‖/max(‖Aᵀy‖,
# ‖Px‖, ‖q‖))), applied only where it moves ρ by more than _ADMM_ADAPT_FACTOR either way
# (OSQP uses 5; at 5 tv_denoise's slowest elements, which need ρ ≈ 3 from 1, never adapt), at
# most _ADMM_ADAPT_LIMIT times per element so that the iteration settles.
_ADMM_ADAPT_EVERY = 20
_ADMM_ADAPT_FACTOR = 2.0
_ADMM_ADAPT_LIMIT = 20
_ADMM_ADAPT_STEP = 100.0  # the most one adaptation moves ρ
# The forward's over-relaxation α (OSQP's 1.6); the backward folds the plain map (α = 1),
# whose fixed points are the same.
_ADMM_RELAX = 1.6
# The infeasibility certificate is evaluated every _ADMM_CHECK_EVERY iterations (a divisor of
# _ADMM_ADAPT_EVERY: adaptation reuses its residuals).
_ADMM_CHECK_EVERY = 10
# The x-update's inner method (f₀ is not quadratic): at most this many damped Newton steps.
_ADMM_NEWTON_STEPS = 50


def _check_rho(rho):
    if isinstance(rho, bool) or not (isinstance(rho, (int, float)) and 0 < rho < math.inf):
        raise ValueError(f"rho: expected a positive number, got {rho!r}")
    return float(rho)


def _check_adapt_rho(adapt_rho):
    if not isinstance(adapt_rho, bool):
        raise ValueError(f"adapt_rho: expected True or False, got {adapt_rho!r}")
    return adapt_rho


# ---------------------------------------------------------------------------- block terms


@dataclasses.dataclass(frozen=True)
class _AdmmProx:
    """One kind of block term gᵢ (an ℓ1 term, the indicator of a box, of a Euclidean ball or
    of an ℓ1 ball), over its prox data (two tensors).

    ``prox(w, data, rho)`` is prox_(gᵢ/ρ)(w); ``prox_vjp(v, w, data, rho)`` returns (w̄, the
    cotangents of the prox data) for the cotangent v. The rest serves the certificates. The
    indicator of a set C has ``nonempty(data)`` (where C has a point), ``support(total, d,
    data)`` (total plus the support function σ_C(d)) and ``recedes(e, data, eps, reach)``
    (where e lies in C's recession cone, to ε relative to ``reach``), and no ``growth``; any
    other term has ``growth(e, data)`` (its own growth along e) and None for the others.
    """

    prox: object
    prox_vjp: object
    nonempty: object
    support: object
    recedes: object
    growth: object
    arity: int = 2  # how many tensors of ``p.block_data`` are its prox data


def _weighted_term(prox, prox_vjp, growth):
    """The block term c·g(z + o) (data (o, c), c ≥ 0) from g's prox at the threshold
    t = c/ρ, ``prox(w, o, t)``, and its VJP ``prox_vjp(v, w, o, t) -> (w̄, ō, t̄)``: the
    threshold's cotangent goes back to c as t̄/ρ."""

    def term_prox(w, data, rho):
        o, c = data
        return prox(w, o, c / rho)

    def term_prox_vjp(v, w, data, rho):
        o, c = data
        w_bar, o_bar, t_bar = prox_vjp(v, w, o, c / rho)
        return w_bar, (o_bar, t_bar / rho)

    return _AdmmProx(term_prox, term_prox_vjp, None, None, None, growth)


# c‖z + o‖₁: soft-thresholding at c/ρ.


def _admm_l1_growth(e, data):
    return data[1] * e.abs().sum(-1)


_ADMM_L1 = _weighted_term(_prox_l1, _prox_l1_vjp, _admm_l1_growth)


# c‖z + o‖₂: block soft-thresholding at c/ρ.


def _admm_l2_growth(e, data):
    return data[1] * torch.linalg.vector_norm(e, dim=-1)


_ADMM_L2 = _weighted_term(_prox_l2, _prox_l2_vjp, _admm_l2_growth)


# c Σ max(z + o, 0), the hinge: shift down by c/ρ above it, flat on [0, c/ρ].


def _admm_hinge_growth(e, data):
    return data[1] * e.clamp_min(0).sum(-1)


_ADMM_HINGE = _weighted_term(_prox_hinge, _prox_hinge_vjp, _admm_hinge_growth)


# c‖z + o‖∞: the identity minus the projection onto the l1 ball of radius c/ρ.


def _admm_linf_growth(e, data):
    return data[1] * e.abs().amax(-1)


_ADMM_LINF = _weighted_term(_prox_linf, _prox_linf_vjp, _admm_linf_growth)


# c·sum_largest(z + o, k) (data (o, (c, k))): the identity minus the projection onto the
# capped simplex {0 ≤ u ≤ c/ρ, Σu = k c/ρ}.


def _admm_sum_largest_prox(w, data, rho):
    o, ck = data
    return _prox_sum_largest(w, o, ck[..., 0] / rho, ck[..., 1])


def _admm_sum_largest_prox_vjp(v, w, data, rho):
    o, ck = data
    w_bar, o_bar, t_bar = _prox_sum_largest_vjp(v, w, o, ck[..., 0] / rho, ck[..., 1])
    ck_bar = torch.stack([t_bar / rho, torch.zeros_like(t_bar)], -1)  # k is a count
    return w_bar, (o_bar, ck_bar)


def _admm_sum_largest_growth(e, data):
    """c·(the sum of e's k largest entries), k read from the data without a host sync."""
    ck = data[1]
    ranked = e.sort(-1, descending=True).values
    first = torch.arange(e.shape[-1], device=e.device) < ck[..., 1:2]
    return ck[..., 0] * torch.where(first, ranked, 0).sum(-1)


_ADMM_SUM_LARGEST = _AdmmProx(
    _admm_sum_largest_prox,
    _admm_sum_largest_prox_vjp,
    None,
    None,
    None,
    _admm_sum_largest_growth,
)


# The indicator of the box lo ≤ z ≤ hi (data (lo, hi)): clamp.


def _admm_box_prox(w, data, rho):
    return _proj_box(w, *data)


def _admm_box_prox_vjp(v, w, data, rho):
    w_bar, lo_bar, hi_bar = _proj_box_vjp(v, w, *data)
    return w_bar, (lo_bar, hi_bar)


def _admm_box_nonempty(data):
    return (data[0] <= data[1]).all(-1)


def _admm_box_support(total, d, data):
    """total + hiᵀmax(δ, 0) + loᵀmin(δ, 0)."""
    lo, hi = data  # may be ±inf: pick the bound by the sign of δ before multiplying
    bound = torch.where(d > 0, hi, torch.where(d < 0, lo, 0))
    return total + torch.where(d != 0, bound * d, 0).sum(-1)


def _admm_box_recedes(e, data, eps, reach):
    """e ≤ 0 where hi is finite and e ≥ 0 where lo is, to ε reach."""
    lo, hi = data
    up = torch.where(torch.isfinite(hi), e, -math.inf).amax(-1) <= eps * reach
    down = torch.where(torch.isfinite(lo), e, math.inf).amin(-1) >= -eps * reach
    return up & down


_ADMM_BOX = _AdmmProx(
    _admm_box_prox,
    _admm_box_prox_vjp,
    _admm_box_nonempty,
    _admm_box_support,
    _admm_box_recedes,
    None,
)


# The indicator of the ball ‖z − c‖ ≤ r (data (c, r)): projection onto the ball.


def _admm_ball_prox(w, data, rho):
    return _proj_ball(w, *data)


def _admm_ball_prox_vjp(v, w, data, rho):
    w_bar, c_bar, r_bar = _proj_ball_vjp(v, w, *data)
    return w_bar, (c_bar, r_bar)


def _admm_ball_nonempty(data):
    return data[1] >= 0


def _admm_ball_support(total, d, data):
    """total + cᵀδ + r‖δ‖."""
    center, radius = data
    return total + (center * d).sum(-1) + radius * _norm(d)


def _admm_ball_recedes(e, data, eps, reach):
    """e = 0 (a ball is bounded), to ε reach."""
    return e.abs().amax(-1) <= eps * reach


_ADMM_BALL = _AdmmProx(
    _admm_ball_prox,
    _admm_ball_prox_vjp,
    _admm_ball_nonempty,
    _admm_ball_support,
    _admm_ball_recedes,
    None,
)


# The indicator of the l1 ball ‖z − c‖₁ ≤ r (data (c, r)): projection onto the l1 ball.


def _admm_l1ball_prox(w, data, rho):
    return _proj_l1ball(w, *data)


def _admm_l1ball_prox_vjp(v, w, data, rho):
    w_bar, c_bar, r_bar = _proj_l1ball_vjp(v, w, *data)
    return w_bar, (c_bar, r_bar)


def _admm_l1ball_support(total, d, data):
    """total + cᵀδ + r‖δ‖∞ (the dual norm of ℓ1)."""
    center, radius = data
    return total + (center * d).sum(-1) + radius * d.abs().amax(-1)


_ADMM_L1BALL = _AdmmProx(
    _admm_l1ball_prox,
    _admm_l1ball_prox_vjp,
    _admm_ball_nonempty,  # r ≥ 0, as the Euclidean ball
    _admm_l1ball_support,
    _admm_ball_recedes,  # bounded: e = 0
    None,
)


# The indicator of the PSD cone Z − M ⪰ 0 (data (M,), n × n flattened row-major to n²):
# projection of the symmetric part through one eigendecomposition, as PGD's set.


def _admm_psd_prox(w, data, rho):
    return _proj_psd(w, *data)


def _admm_psd_prox_vjp(v, w, data, rho):
    w_bar, m_bar = _proj_psd_vjp(v, w, *data)
    return w_bar, (m_bar,)


def _admm_psd_nonempty(data):
    return torch.ones(data[0].shape[:-1], dtype=torch.bool, device=data[0].device)


def _admm_psd_support(total, d, data):
    """total + ⟨M, δ⟩ where sym(δ) ⪯ 0, else +∞ (the cone M + S₊ is unbounded along S₊)."""
    (m,) = data
    delta = _psd_square(d)
    top = torch.linalg.eigvalsh(0.5 * (delta + delta.mT))[..., -1]
    return total + (m * d).sum(-1) + torch.where(top > 0, math.inf, 0.0)


def _admm_psd_recedes(e, data, eps, reach):
    """e in the recession cone S₊: sym(e) ⪰ 0 and skew(e) = 0, to ε reach."""
    low, skew = _psd_min_eigenvalue(e, torch.zeros_like(e))
    return (low >= -eps * reach) & (skew <= eps * reach)


_ADMM_PSD = _AdmmProx(
    _admm_psd_prox,
    _admm_psd_prox_vjp,
    _admm_psd_nonempty,
    _admm_psd_support,
    _admm_psd_recedes,
    None,
    1,
)


# The indicator of the second-order cone ‖z_u + b‖ ≤ z_t + d (data (b, d)) of the block
# z = (A x, cᵀx): the projection onto the cone K, shifted by the offset o = (b, d).


def _admm_soc_offset(w, data):
    b, d = data
    batch = torch.broadcast_shapes(w.shape[:-1], b.shape[:-1], d.shape)
    return torch.cat([b.expand(*batch, b.shape[-1]), d.expand(batch)[..., None]], -1)


def _admm_soc_prox(w, data, rho):
    o = _admm_soc_offset(w, data)
    return _proj_soc(w + o) - o


def _admm_soc_prox_vjp(v, w, data, rho):
    """w̄ = J_K(w + o)ᵀv and ō = w̄ − v, split into (b̄, d̄)."""
    o = _admm_soc_offset(w, data)
    w_bar = _proj_soc_vjp(v, w + o)
    o_bar = w_bar - v
    return w_bar, (o_bar[..., :-1], o_bar[..., -1])


def _admm_soc_nonempty(data):
    return torch.ones(data[1].shape, dtype=torch.bool, device=data[1].device)


def _admm_soc_support(total, d, data):
    """total − oᵀδ for δ in the polar cone ‖δ_u‖ ≤ −δ_t (to √eps ‖δ‖), +∞ off it: the support
    function of K − o."""
    o = _admm_soc_offset(d, data)
    size = _norm(d)
    polar = _norm(d[..., :-1]) + d[..., -1] <= math.sqrt(torch.finfo(d.dtype).eps) * size
    return total + torch.where(polar, -(o * d).sum(-1), math.inf)


def _admm_soc_recedes(e, data, eps, reach):
    """e in the cone K (the recession cone of K − o), to ε reach."""
    return _norm(e[..., :-1]) - e[..., -1] <= eps * reach


_ADMM_SOC = _AdmmProx(
    _admm_soc_prox,
    _admm_soc_prox_vjp,
    _admm_soc_nonempty,
    _admm_soc_support,
    _admm_soc_recedes,
    None,
)


# ---------------------------------------------------------------------------- the state


def _admm_unpack(p, data):
    """``p.block_data``'s flat tuple as one (Aᵢ or None, prox data) pair per block (a lone
    PSD block's one datum arrives bare)."""
    data = (data,) if isinstance(data, torch.Tensor) else data
    blocks, k = [], 0
    for has_matrix, term in zip(p.matrices, p.terms):
        A = data[k] if has_matrix else None
        k += has_matrix
        blocks.append((A, tuple(data[k : k + term.arity])))
        k += term.arity
    return blocks


def _admm_flat(blocks):
    return [t for A, data in blocks for t in ([] if A is None else [A]) + list(data)]


def _admm_apply(A, x):
    """Aᵢ x (x itself where the block has no matrix)."""
    return x if A is None else _mv(A, x)


def _admm_apply_t(A, w):
    """Aᵢᵀ w."""
    return w if A is None else _mv(A.mT, w)


def _admm_sizes(blocks, n):
    """The length mᵢ of each block's zᵢ."""
    return [n if A is None else A.shape[-2] for A, _ in blocks]


def _admm_pack(z, u):
    """The state s = (z₁, …, z_B, u₁, …, u_B) as one (..., N) tensor."""
    parts = [*z, *u]
    batch = torch.broadcast_shapes(*(part.shape[:-1] for part in parts))
    return torch.cat([part.expand(*batch, part.shape[-1]) for part in parts], dim=-1)


def _admm_split(s, sizes):
    """(z, u), lists of the blocks' parts of the state s."""
    parts = torch.split(s, sizes + sizes, dim=-1)
    return list(parts[: len(sizes)]), list(parts[len(sizes) :])


# ---------------------------------------------------------------------------- the x-update


def _admm_cholesky(p, x, values, blocks, rho):
    """Cholesky factor L of K = ∇²f₀(x) + ρ Σᵢ AᵢᵀAᵢ, (..., n, n), and where K is PD.

    ∇²f₀ is materialised as ∇²f₀ applied to the identity over one extra batch axis. Where K is
    not positive definite L is the identity (finite), and the caller reports the element.
    """
    n = x.shape[-1]
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    lifted = [_lift(v, len(core)) for v, core in zip(values, p.parameters.values())]
    K = p.hvp(_lift(x, 1), eye, *lifted)  # (..., n, n): row j is ∇²f₀ e_j (symmetric)
    for A, _ in blocks:
        K = K + rho[..., None, None] * (eye if A is None else A.mT @ A)
    L, info = torch.linalg.cholesky_ex(K)
    ok = info == 0
    return torch.where(ok[..., None, None], L, eye), ok


def _admm_pencil(H, M, rho):
    """K(ρ) = H + ρM for every ρ from one factorisation of shared (n, n) matrices, or None.

    With C = H + ρ₀M = LLᵀ (ρ₀ = tr H / tr M balances the two, so no ρ is favoured) and
    L⁻¹ M L⁻ᵀ = Q diag(·) Qᵀ, W = L⁻ᵀQ makes WᵀHW and WᵀMW diagonal (η, μ), so
    K(ρ)⁻¹ = W diag(1/(η + ρμ)) Wᵀ: a per-element ρ, and a new ρ, cost no factorisation.
    None where C is not positive definite (the caller factors K itself).
    """
    trace_h, trace_m = H.diagonal().sum(), M.diagonal().sum()
    balance = torch.where((trace_h > 0) & (trace_m > 0), trace_h / trace_m, 1.0)
    L, info = torch.linalg.cholesky_ex(H + balance * M)
    if int(info) != 0:
        return None
    half = torch.linalg.solve_triangular(L, M, upper=False)  # L⁻¹M
    S = torch.linalg.solve_triangular(L, half.mT, upper=False)  # L⁻¹ M L⁻ᵀ
    _, Q = torch.linalg.eigh(0.5 * (S + S.mT))
    W = torch.linalg.solve_triangular(L.mT, Q, upper=True)
    eta = (W * (H @ W)).sum(-2)  # diag(WᵀHW)
    mu = (W * (M @ W)).sum(-2)
    return W, eta, mu


def _admm_factor(p, x, values, blocks, rho):
    """The factor of K = ∇²f₀ + ρ Σᵢ AᵢᵀAᵢ (f₀ quadratic), and where K is PD.

    Where no batched data reach ∇²f₀ or the Aᵢ, the shared (W, η, μ) of `_admm_pencil`: one
    (n, n) factorisation for the whole batch and every ρ, instead of a Cholesky factor per
    element of a broadcast K. Otherwise (or under autograd, which eigh's derivative at
    repeated eigenvalues would break) the batched Cholesky factor L of `_admm_cholesky`.
    """
    n = x.shape[-1]
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    lifted = [_lift(v, len(core)) for v, core in zip(values, p.parameters.values())]
    H = p.hvp(x.new_zeros(n), eye, *lifted)  # constant: f₀ is quadratic
    shared = H.dim() == 2 and all(A is None or A.dim() == 2 for A, _ in blocks)
    tracked = torch.is_grad_enabled() and any(
        t.requires_grad for t in [H, *(A for A, _ in blocks if A is not None)]
    )
    if shared and not tracked:
        M = sum((eye if A is None else A.mT @ A for A, _ in blocks), torch.zeros_like(eye))
        factor = _admm_pencil(0.5 * (H + H.mT), M, rho)
        if factor is not None:
            return factor, _admm_factor_ok(factor, rho)
    return _admm_cholesky(p, x, values, blocks, rho)


def _admm_factor_ok(factor, rho):
    """Where K(ρ) is positive definite, for a shared factor (η + ρμ > 0)."""
    W, eta, mu = factor
    d = eta + rho[..., None] * mu
    return (d > 0).all(-1) & torch.isfinite(d).all(-1)


def _admm_solve_k(factor, rho, rhs):
    """K⁻¹ rhs for the factor of `_admm_factor`: a batched Cholesky solve, or, for a shared
    factor, two products of the whole batch with W (one GEMM each, no per-element solve)."""
    if isinstance(factor, torch.Tensor):
        return torch.cholesky_solve(rhs[..., None], factor)[..., 0]
    W, eta, mu = factor
    return ((rhs @ W) / (eta + rho[..., None] * mu)) @ W.mT


def _admm_prepare_quadratic(p, x, values, blocks, rho):
    """What every x-update reuses (f₀ quadratic): the factor of K and ∇f₀(0); and where K is PD."""
    factor, ok = _admm_factor(p, x, values, blocks, rho)
    return (factor, p.gradient(torch.zeros_like(x), *values)), ok


def _admm_x_update_quadratic(p, x, z, u, values, blocks, rho, fixed, tol):
    """x = argmin f₀ + (ρ/2) Σᵢ ‖Aᵢx − zᵢ + uᵢ‖² = K⁻¹(ρ Σᵢ Aᵢᵀ(zᵢ − uᵢ) − ∇f₀(0)), by the
    factor of K computed once per call (f₀ is quadratic: ∇f₀(x) = ∇²f₀ x + ∇f₀(0)).

    Returns x and where the update succeeded (always: the prepare step has checked K)."""
    factor, q = fixed
    rhs = -q
    for (A, _), zi, ui in zip(blocks, z, u):
        rhs = rhs + rho[..., None] * _admm_apply_t(A, zi - ui)
    x = _admm_solve_k(factor, rho, rhs)
    return x, torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)


def _admm_prepare_newton(p, x, values, blocks, rho):
    """Nothing to reuse across x-updates (f₀ is not quadratic: K depends on x)."""
    return None, torch.ones(rho.shape, dtype=torch.bool, device=rho.device)


def _admm_x_update_newton(p, x, z, u, values, blocks, rho, fixed, tol):
    """x = argmin φ, φ(x) = f₀(x) + (ρ/2) Σᵢ ‖Aᵢx − zᵢ + uᵢ‖², by damped Newton from the given x.

    Each step factors K(x) = ∇²f₀(x) + ρ Σᵢ AᵢᵀAᵢ and halves the step until φ is finite (f₀ may
    have a domain) and decreases (Armijo); at least one step, then per element until
    ‖∇φ‖ ≤ tol/100 times the larger of its two terms ‖∇f₀‖ and ‖ρ Σᵢ Aᵢᵀ(Aᵢx − zᵢ + uᵢ)‖
    (a test relative to the data's scale), or the step is lost in rounding, at most
    _ADMM_NEWTON_STEPS. Returns x and where the update succeeded: it fails where φ or ∇φ is
    not finite at the start, or K(x) is not positive definite (f₀ is not convex there) at a
    step.
    """

    def phi(y):
        out = p.objective(y, *values)
        for (A, _), zi, ui in zip(blocks, z, u):
            out = out + 0.5 * rho * torch.square(_norm(_admm_apply(A, y) - zi + ui))
        return out

    def grad(y):
        smooth = p.gradient(y, *values)
        coupling = 0
        for (A, _), zi, ui in zip(blocks, z, u):
            coupling = coupling + rho[..., None] * _admm_apply_t(A, _admm_apply(A, y) - zi + ui)
        scale = torch.maximum(_norm(smooth), _norm(coupling))
        return smooth + coupling, scale

    eps = torch.finfo(x.dtype).eps
    f = phi(x)
    ok = torch.isfinite(f)
    todo = ok.clone()
    for _ in range(_ADMM_NEWTON_STEPS):
        g, _ = grad(x)
        L, pd = _admm_cholesky(p, x, values, blocks, rho)
        ok = ok & ((pd & torch.isfinite(g).all(-1)) | ~todo)
        todo = todo & ok
        d = -torch.cholesky_solve(torch.where(todo[..., None], g, 0)[..., None], L)[..., 0]
        slope = (g * d).sum(-1)
        scale = torch.ones_like(f)
        accepted = ~todo
        x_new, f_new = x, f
        for _ in range(40):
            trial = x + scale[..., None] * d
            f_trial = phi(trial)
            slack = 10 * eps * f.abs()
            fine = torch.isfinite(f_trial) & (f_trial <= f + 1e-4 * scale * slope + slack)
            fine = fine & ~accepted
            x_new = torch.where(fine[..., None], trial, x_new)
            f_new = torch.where(fine, f_trial, f_new)
            accepted = accepted | fine
            if bool(accepted.all()):
                break
            scale = torch.where(accepted, scale, scale / 2)
        moved = _norm(x_new - x) > 10 * eps * _norm(x)
        x, f = x_new, f_new
        g, g_scale = grad(x)
        todo = todo & moved & (_norm(g) > tol / 100 * g_scale)
        if not bool(todo.any()):
            break
    return x, ok


# ---------------------------------------------------------------------------- one sweep


def _admm_update(p, x, s, values, blocks, rho, fixed, tol):
    """One ADMM sweep: returns x(s) and U(s).

    Plain torch operations, so a test can differentiate an unrolled run with autograd.
    ``x`` is only a warm start (for an inner Newton method); ``fixed`` is ``p.prepare``'s
    output.
    """
    x, s_new, _ = _admm_sweep(p, x, s, values, blocks, rho, fixed, tol)
    return x, s_new


def _admm_sweep(p, x, s, values, blocks, rho, fixed, tol, alpha=1.0):
    """_admm_update, plus where the x-update succeeded; ``alpha`` ≠ 1 over-relaxes, Aᵢx →
    α Aᵢx + (1 − α) zᵢ (the forward's: the same fixed points, Aᵢx = zᵢ there)."""
    z, u = _admm_split(s, _admm_sizes(blocks, x.shape[-1]))
    x, ok = p.x_update(p, x, z, u, values, blocks, rho, fixed, tol)
    z_new, u_new = [], []
    for term, (A, data), zi, ui in zip(p.terms, blocks, z, u):
        w = _admm_apply(A, x)  # (..., mᵢ)
        w = (w if alpha == 1.0 else alpha * w + (1 - alpha) * zi) + ui
        zi = term.prox(w, data, rho)
        z_new.append(zi)
        u_new.append(w - zi)
    return x, _admm_pack(z_new, u_new), ok


# ---------------------------------------------------------------------------- certificates


def _admm_data_empty(p, blocks, batch):
    """(..., blocks) bool: True where a block's own data is empty (a box with lo > hi, a
    ball with r < 0)."""
    empty = torch.zeros(*batch, len(p.terms), dtype=torch.bool, device=blocks[0][1][0].device)
    for i, (term, (_, data)) in enumerate(zip(p.terms, blocks)):
        if term.nonempty is not None:
            empty[..., i] = ~term.nonempty(data)
    return empty


def _admm_conflicting(p, du):
    """(..., blocks) bool: the constraint blocks an infeasibility certificate δ involves
    (‖δᵢ‖∞ at least 1% of ‖δ‖∞): the blocks whose constraints conflict."""
    sizes = [
        d.abs().amax(-1) if term.support is not None else torch.zeros_like(d[..., 0])
        for term, d in zip(p.terms, du)
    ]
    sizes = torch.stack(torch.broadcast_tensors(*sizes), -1)  # (..., blocks)
    return sizes >= 0.01 * sizes.amax(-1, keepdim=True).clamp_min(torch.finfo(sizes.dtype).tiny)


def _admm_conflict_text(p, conflict):
    """The names of the blocks ``conflict`` marks (any element), for the message."""
    marked = conflict.reshape(-1, conflict.shape[-1]).any(0).tolist() if conflict.numel() else []
    names = [label for label, bad in zip(p.labels, marked) if bad]
    return "; ".join(names) if names else "the constraints"


def _admm_infeasible(p, blocks, du, eps):
    """The primal infeasibility certificate of OSQP (Stellato et al. 2020, §3.4) on δu.

    δu = u⁺ − u is a multiple of the change of the dual variables (y = ρu), and when the
    constraints admit no point it converges to a nonzero δ with Σᵢ Aᵢᵀδᵢ = 0 and
    Σᵢ σ_Cᵢ(δᵢ) < 0 (σ_C the support function of the set: a box hiᵀmax(δ, 0) + loᵀmin(δ, 0),
    a ball cᵀδ + r‖δ‖), which by Farkas' lemma proves it. Certified where
    ‖Σᵢ Aᵢᵀδᵢ‖∞ ≤ ε‖δ‖∞ and Σᵢ σ_Cᵢ(δᵢ) ≤ −ε‖δ‖∞ (the norm over the constraint blocks).
    """
    pulled, support, size = 0, 0, []
    for term, (A, data), d in zip(p.terms, blocks, du):
        pulled = pulled + _admm_apply_t(A, d)
        if term.support is not None:  # a constraint block
            support = term.support(support, d, data)
            size.append(d.abs().amax(-1))
    if not size:  # no constraint blocks: nothing can be infeasible
        return torch.zeros(pulled.shape[:-1], dtype=torch.bool, device=pulled.device)
    size = torch.stack(torch.broadcast_tensors(*size)).amax(0)  # ‖δ‖∞ over the constraints
    small = pulled.abs().amax(-1) <= eps * size
    return (size > 0) & small & (support <= -eps * size)


def _admm_unbounded(p, x, dx, values, blocks, fixed, curvature, eps):
    """The dual infeasibility certificate of OSQP (Stellato et al. 2020, §3.4) on δx (f₀
    quadratic; ``fixed`` is `_admm_prepare_quadratic`'s).

    Where the problem is unbounded below, δx = x⁺ − x converges to a nonzero direction d
    along which f₀ is linear and decreasing and every block stays finite: ∇²f₀ d = 0,
    ∇f₀(0)ᵀd + Σ cᵢ‖Aᵢd‖₁ < 0 (the ℓ1 terms' own growth), Aᵢd in the recession cone of each
    box (≤ 0 where hi is finite, ≥ 0 where lo is) and Aᵢd = 0 for a ball. Certified where
    these hold to ε relative to the data (‖d‖∞ = 1): ‖∇²f₀ d‖∞ ≤ ε max|diag ∇²f₀|,
    descent ≤ −ε‖∇f₀(0)‖₁, and each cone condition to ε‖Aᵢ‖∞.
    """
    size = dx.abs().amax(-1)  # (...)
    d = dx / torch.where(size > 0, size, 1)[..., None]
    q = fixed[1]
    flat = p.hvp(x, d, *values).abs().amax(-1) <= eps * curvature
    descent = (q * d).sum(-1)
    inside = flat
    for term, (A, data) in zip(p.terms, blocks):
        e = _admm_apply(A, d)  # (..., mᵢ)
        if term.growth is not None:
            descent = descent + term.growth(e, data)
        if term.recedes is not None:
            reach = 1.0 if A is None else A.abs().sum(-1).amax(-1)  # ‖Aᵢ‖∞
            inside = inside & term.recedes(e, data, eps, reach)
    return (size > 0) & inside & (descent < 0) & (descent <= -eps * q.abs().sum(-1))


def _admm_curvature(p, x, values):
    """max |diag ∇²f₀|, the scale of the certificate's flatness test (∇²f₀ is constant)."""
    n = x.shape[-1]
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    lifted = [_lift(v, len(core)) for v, core in zip(values, p.parameters.values())]
    hessian = p.hvp(_lift(x, 1), eye, *lifted).expand(*x.shape[:-1], n, n)  # (..., n, n)
    return hessian.diagonal(0, -2, -1).abs().amax(-1)


# ---------------------------------------------------------------------------- polishing


def _admm_polishable(p):
    """Whether the final active set can be polished: f₀ quadratic and every block the
    indicator of a box (a QP: lo ≤ Aᵢx ≤ hi, equalities where lo = hi)."""
    return p.prepare is _admm_prepare_quadratic and all(term is _ADMM_BOX for term in p.terms)


def _admm_bounds(blocks, dims, batch):
    """The blocks' bounds stacked, (..., m) each: lo and hi of lo ≤ Ax ≤ hi."""
    lo = [data[0].expand(*batch, m) for (_, data), m in zip(blocks, dims)]
    hi = [data[1].expand(*batch, m) for (_, data), m in zip(blocks, dims)]
    return torch.cat(lo, -1), torch.cat(hi, -1)


def _admm_guess(s, rho, lo, hi, dims):
    """The active set the state suggests, OSQP's rule with y = ρu: a row is held at lo where
    zᵢ − loᵢ < −yᵢ, at hi where hiᵢ − zᵢ < yᵢ, and always where lo = hi (an equality, whose
    multiplier may be 0). Returns (at_lo, at_hi), (..., m) each."""
    z, u = _admm_split(s, dims)
    z, y = torch.cat(z, -1), rho[..., None] * torch.cat(u, -1)
    fixed = lo == hi
    return (z - lo < -y) & ~fixed, (hi - z < y) | fixed


def _admm_pick(t, core, batch, flat):
    """The elements ``flat`` (a mask over the flattened batch) of t, (k, *core shape): an
    unbatched t is expanded, a batched one indexed (no copy of the whole batch's matrices)."""
    k = int(flat.sum())
    if t.dim() == core:
        return t.expand(k, *t.shape)
    shape = t.shape[t.dim() - core :]
    return t.expand(*batch, *shape).reshape(-1, *shape)[flat]


def _admm_qp_hessian(p, x, values):
    """∇²f₀ of a QP as a matrix, (n, n) where no batched input reaches it (a linear f₀'s
    product is printed as (n,) zeros: the zero matrix)."""
    n = x.shape[-1]
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    lifted = [_lift(v, len(core)) for v, core in zip(values, p.parameters.values())]
    return p.hvp(x.new_zeros(n), eye, *lifted) + x.new_zeros(n, n)


def _admm_kkt_matrix(H, A, d):
    """[[H, AᵀD], [DA, D − I]] for the rows d (0/1) of A held active: the KKT matrix of the
    QP's active set, symmetric; a free row's multiplier is 0."""
    DA = d[..., None] * A
    return torch.cat([torch.cat([H, DA.mT], -1), torch.cat([DA, torch.diag_embed(d - 1)], -1)], -2)


def _admm_polish(p, x, s, values, blocks, rho, batch, todo):
    """OSQP's polish (Stellato et al. 2020, §4): the equality QP of the state's active set,
    solved exactly for the elements ``todo`` (a (...) mask). Returns the candidate state
    (z = Π(Ax), u = y/ρ), the others' state unchanged, and where the candidate is finite.

    With D the active rows and b their bounds, (x, y) solves the KKT system
    [[H, AᵀD], [DA, D − I]] (x, y) = (−∇f₀(0), Db) (a free row's y is 0), factored once with δ
    on the diagonal (+δ on x, −δ on y: quasi-definite, so redundant active rows do not make
    it singular) and refined by four steps against the exact matrix. The caller accepts a
    candidate only where one plain sweep from it passes the forward's own stopping test, so a
    wrong guess costs one factorisation and changes nothing.
    """
    n = x.shape[-1]
    dims = _admm_sizes(blocks, n)
    flat = todo.reshape(-1)
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    H = _admm_pick(_admm_qp_hessian(p, x, values), 2, batch, flat)  # (k, n, n)
    q = _admm_pick(p.gradient(torch.zeros_like(x), *values), 1, batch, flat)
    A = torch.cat([eye.expand(len(H), n, n) if Ai is None else _admm_pick(Ai, 2, batch, flat)
                   for Ai, _ in blocks], -2)  # (k, m, n)  # fmt: skip
    lo, hi = (_admm_pick(t, 1, batch, flat) for t in _admm_bounds(blocks, dims, batch))
    rho_k = _admm_pick(rho, 0, batch, flat)
    at_lo, at_hi = _admm_guess(_admm_pick(s, 1, batch, flat), rho_k, lo, hi, dims)
    d = (at_lo | at_hi).to(x.dtype)  # (k, m)
    b = torch.where(at_hi, hi, torch.where(at_lo, lo, 0))
    M = _admm_kkt_matrix(H, A, d)
    rhs = torch.cat([-q, b], -1)
    delta = math.sqrt(torch.finfo(x.dtype).eps) * (1 + H.abs().amax((-2, -1)))  # (k,)
    shift = torch.cat([delta[:, None].expand(-1, n), -delta[:, None] * d], -1)
    LU, pivots, _ = torch.linalg.lu_factor_ex(M + torch.diag_embed(shift))
    sol = torch.zeros_like(rhs)
    for _ in range(4):
        residual = rhs - (M @ sol[..., None])[..., 0]
        sol = sol + torch.linalg.lu_solve(LU, pivots, residual[..., None])[..., 0]
    x_hat, y_hat = sol[..., :n], sol[..., n:]
    z_hat = torch.minimum(torch.maximum((A @ x_hat[..., None])[..., 0], lo), hi)
    candidate = torch.cat([z_hat, y_hat / rho_k[:, None]], -1)  # the state's (z, u) layout
    finite = torch.isfinite(candidate).all(-1)
    out = s.expand(*batch, s.shape[-1]).reshape(-1, s.shape[-1]).clone()
    out[flat] = torch.where(finite[:, None], candidate, out[flat])
    ok = torch.zeros_like(flat)
    ok[flat] = finite
    return out.reshape(*batch, s.shape[-1]), ok.reshape(batch)


# ---------------------------------------------------------------------------- the forward


class _AdmmRun:
    """The forward's state and per-element bookkeeping, shared by both solve functions.

    The start: z = prox(A x₀), u = 0, ρ the layer's, per batch element. ``advance`` records
    one sweep s → U(s), runs the certificates every _ADMM_CHECK_EVERY sweeps, retires the
    elements that stop and adapts ρ (adapt_rho=True); ``output`` is x(s*); ``finish`` records
    ``layer.info`` and reports.

    Stops where ‖U(s) − s‖ ≤ tol · ‖U(s)‖∞: relative to the state's own scale, so that data
    scaled by any factor take the same iterations (the primal residual ‖Ax − z‖ = ‖u⁺ − u‖
    and the z-change that makes the dual residual are both parts of U(s) − s).
    """

    def __init__(self, p, layer, values, x_init, sizes, batch):
        start = p.init(*values) if x_init is None else x_init
        x = start.to(values[0]).expand(*batch, -1).clone()  # (..., n)
        blocks = _admm_unpack(p, p.block_data(x, *values))
        rho = torch.full(batch, layer.rho, dtype=x.dtype, device=x.device)  # (...)
        self.conflict = _admm_data_empty(p, blocks, batch)  # (..., blocks)
        feasible = ~self.conflict.any(-1)
        z = [term.prox(_admm_apply(A, x), data, rho) for term, (A, data) in zip(p.terms, blocks)]
        s = _admm_pack(z, [torch.zeros_like(zi) for zi in z])  # (..., N)
        self.p, self.layer, self.values, self.batch = p, layer, values, batch
        self.x, self.s = x, s.expand(*batch, s.shape[-1]).clone()
        self.blocks, self.dims, self.rho = blocks, _admm_sizes(blocks, x.shape[-1]), rho
        self.feasible = feasible
        self.fixed, self.factored = p.prepare(p, x, values, blocks, rho)
        self.eps = max(1e-6, 100 * torch.finfo(x.dtype).eps)
        self.changes = torch.zeros(batch, dtype=torch.int64, device=x.device)
        self.iterations = torch.zeros(batch, dtype=torch.int64, device=x.device)
        self.residual = torch.full(batch, math.inf, dtype=x.dtype, device=x.device)
        # The bound tol · ‖U(s)‖∞ each residual was compared with: NaN or ∞ where U(s) was
        # not finite, which fails the comparison, so such an element stops without moving.
        self.bound = torch.zeros_like(self.residual)
        self.unbounded = torch.zeros_like(feasible)  # certified unbounded below
        self.halfway = None
        self.started = feasible & self.factored
        self.active = self.started.clone()
        self.polished = torch.zeros_like(feasible)  # the final state came from a polish
        self.tried = None  # (the guess of each element's last polish, whether it had one)

    def polish(self):
        """Polish the active elements whose active-set guess is new to them (`_admm_polish`); a
        guess that failed is not tried again. Retires the elements whose polished state
        passes the stopping test after one plain sweep (their residual is that sweep's)."""
        p, layer, batch, blocks = self.p, self.layer, self.batch, self.blocks
        lo, hi = _admm_bounds(blocks, self.dims, batch)
        guess = torch.cat(_admm_guess(self.s, self.rho, lo, hi, self.dims), -1)
        if self.tried is None:
            self.tried = torch.zeros_like(guess), torch.zeros_like(self.active)
        tried, attempted = self.tried
        todo = self.active & ~(attempted & (guess == tried).all(-1))
        if not bool(todo.any()):
            return
        self.tried = torch.where(todo[..., None], guess, tried), attempted | todo
        s_hat, ok = _admm_polish(p, self.x, self.s, self.values, blocks, self.rho, batch, todo)
        x_new, s_new, _ = _admm_sweep(
            p, self.x, s_hat, self.values, blocks, self.rho, self.fixed, layer.forward_tol
        )
        step = _norm(s_new - s_hat)
        bound = layer.forward_tol * s_new.abs().amax(-1)
        accept = todo & ok & (step <= bound)
        self.residual = torch.where(accept, step, self.residual)
        self.bound = torch.where(accept, bound, self.bound)
        self.x = torch.where(accept[..., None], x_new, self.x)
        self.s = torch.where(accept[..., None], s_new, self.s)
        self.polished = self.polished | accept
        self.active = self.active & ~accept

    def advance(self, k, x_new, s_new, unbounded=None):
        """Record the sweep k: (x, s) → (x_new, s_new); ``unbounded(x_new, δx)``, where given,
        certifies an unbounded problem at the checks."""
        layer, s, dims = self.layer, self.s, self.dims
        step = _norm(s_new - s)
        self.residual = torch.where(self.active, step, self.residual)
        self.bound = torch.where(self.active, layer.forward_tol * s_new.abs().amax(-1), self.bound)
        self.iterations = self.iterations + self.active.to(torch.int64)
        if k + 1 == layer.max_iter // 2:
            self.halfway = self.residual.detach().clone()  # for the warning's trend
        check = (k + 1) % _ADMM_CHECK_EVERY == 0
        if check:
            z, u = _admm_split(s, dims)
            z_new, u_new = _admm_split(s_new, dims)
            du = [b - a for a, b in zip(u, u_new)]
            certified = self.active & _admm_infeasible(self.p, self.blocks, du, self.eps)
            if bool(certified.any()):
                blocks = _admm_conflicting(self.p, du)
                self.conflict = self.conflict | (certified[..., None] & blocks)
            self.feasible = self.feasible & ~certified
            self.active = self.active & ~certified
            if unbounded is not None:
                certified = self.active & unbounded(x_new, x_new - self.x)
                self.unbounded = self.unbounded | certified
                self.active = self.active & ~certified
        self.active = self.active & (step > self.bound)
        self.x = torch.where(self.active[..., None], x_new, self.x)
        self.s = torch.where(self.active[..., None], s_new, s)
        if check and layer.adapt_rho and (k + 1) % _ADMM_ADAPT_EVERY == 0:
            self.adapt(z, z_new, u_new, du)

    def adapt(self, z, z_new, u_new, du):
        """OSQP's residual balancing on the scaled state (y = ρu): the primal residual
        r_prim = Ax − z⁺ = δu against max(‖Ax‖, ‖z⁺‖) (Ax = z⁺ + δu), the dual residual
        r_dual = ρ Σᵢ Aᵢᵀ(zᵢ⁺ − zᵢ) against max(‖Aᵀy‖, ‖Px‖, ‖q‖), with Aᵀy = ρ Σᵢ Aᵢᵀuᵢ⁺,
        q = ∇f₀(0), Px = ∇f₀(x) − q (also ‖∇f₀(x)‖, for a non-quadratic f₀, where ∇f₀(0) may
        not be finite). Without ‖Px‖ and ‖q‖ the small early y drives ρ down. Where ρ moves, u
        is rescaled (y unchanged) and K re-factored, except a shared factor (every ρ)."""
        p, batch, blocks = self.p, self.batch, self.blocks

        def size(parts):
            return _norm(torch.cat([t.expand(*batch, t.shape[-1]) for t in parts], -1))

        primal = size(du) / torch.maximum(size([a + d for a, d in zip(z_new, du)]), size(z_new))
        dual = self.rho * _norm(
            sum(_admm_apply_t(A, b - a) for (A, _), a, b in zip(blocks, z, z_new))
        )
        pulled = self.rho * _norm(sum(_admm_apply_t(A, ui) for (A, _), ui in zip(blocks, u_new)))
        at_x = p.gradient(self.x, *self.values)  # Px + q for a quadratic f₀
        at_0 = p.gradient(torch.zeros_like(self.x), *self.values)  # q
        smooth = torch.maximum(_norm(at_x - at_0), _norm(at_0))
        scale = torch.maximum(pulled, _norm(at_x))
        dual = dual / torch.where(torch.isfinite(smooth), torch.maximum(scale, smooth), scale)
        # Residuals at the stopping level are rounding, not a balance to correct; one step
        # moves ρ at most _ADMM_ADAPT_STEP either way (the stop test scales with u = y/ρ).
        ratio = torch.sqrt(primal / dual).clamp(1 / _ADMM_ADAPT_STEP, _ADMM_ADAPT_STEP)
        settled = (primal <= self.layer.forward_tol) | (dual <= self.layer.forward_tol)
        ratio = torch.where(torch.isfinite(ratio) & ~settled, ratio, 1.0)
        free = self.active & (self.changes < _ADMM_ADAPT_LIMIT)
        moved = free & ((ratio > _ADMM_ADAPT_FACTOR) | (ratio * _ADMM_ADAPT_FACTOR < 1))
        if not bool(moved.any()):
            return
        factor = torch.where(moved, ratio, 1.0)
        self.rho = self.rho * factor
        z, u = _admm_split(self.s, self.dims)
        self.s = _admm_pack(z, [ui / factor[..., None] for ui in u])  # y = ρu is unchanged
        self.changes = self.changes + moved.to(torch.int64)
        shared = self.fixed is not None and not isinstance(self.fixed[0], torch.Tensor)
        if shared:
            refactored = _admm_factor_ok(self.fixed[0], self.rho)
        else:
            self.fixed, refactored = p.prepare(p, self.x, self.values, blocks, self.rho)
        self.factored = self.factored & refactored
        self.active = self.active & self.factored

    def output(self):
        """x(s*), the output the backward differentiates, and where its x-update succeeded
        (where it fails or is not finite, the last iterate stands)."""
        p, x = self.p, self.x
        z, u = _admm_split(self.s, self.dims)
        x_out, ok = p.x_update(
            p, x, z, u, self.values, self.blocks, self.rho, self.fixed, self.layer.forward_tol
        )
        return torch.where((ok & torch.isfinite(x_out).all(-1))[..., None], x_out, x), ok

    def finish(self, x, L, factored, solvable, updated=None):
        """Record ``layer.info`` and report; returns x and the backward's state (s*, ρ, the
        factor L of K, and where the element has a solution to differentiate).

        ``updated``, where given, is where every x-update succeeded (the inner method).
        """
        layer, feasible, residual, bound = self.layer, self.feasible, self.residual, self.bound
        diverged = self.unbounded | (self.started & ~torch.isfinite(bound))
        feasible = feasible & ~diverged
        converged = feasible & solvable & (residual <= bound) & torch.isfinite(bound)
        layer.info = SolveInfo(
            self.iterations,
            residual,
            converged,
            feasible,
            self.rho,
            rho=self.rho,
            tol=layer.forward_tol,
            polished=self.polished,
        )
        if residual.numel():
            worst = float(torch.where(feasible & solvable, residual, 0).max())
        else:
            worst = 0.0
        rho = f" (ρ up to {float(self.rho.detach().max()):g})" if self.rho.numel() else ""
        hint = "another rho" if layer.adapt_rho else "adapt_rho=True or another rho"
        late = feasible & solvable & ~(residual <= bound)
        trend = _trend(residual.detach(), self.halfway, bound.detach(), late, layer.max_iter)
        detail = (
            f"residual up to {worst:.3g} > tol {layer.forward_tol:g} × the state's scale after "
            f"{layer.max_iter} iterations{rho}{trend}; try {hint}, raise max_iter, or try "
            "rule 'sqp'"
        )
        singular = "K = ∇²f₀ + ρ Σ AᵢᵀAᵢ is not positive definite (f₀ is not strongly convex on"
        singular += " the directions the blocks leave free)"
        failed = "the x-update failed: f₀ is not finite at the iterate, or not convex there"
        updated = torch.ones_like(factored) if updated is None else updated | ~factored
        conflict = _admm_conflict_text(self.p, self.conflict & (~feasible & ~diverged)[..., None])
        empty = f"the constraints admit no point: {conflict} conflict"
        groups = [
            (converged | ~feasible | ~solvable, detail),
            (factored, singular),
            (updated, failed),
            (~diverged, _DIVERGED),
            (feasible | diverged, empty),
        ]
        _report_groups(layer, "the forward solve", groups)
        return x, (self.s, self.rho, L, feasible & solvable)


def _admm_solve_quadratic(p, layer, values, x_init, sizes, batch):
    """ADMM with the quadratic f₀'s x-update (one factor of K, reused by the backward)
    and OSQP's certificates of an empty set and of an unbounded problem."""
    run = _AdmmRun(p, layer, values, x_init, sizes, batch)
    curvature = _admm_curvature(p, run.x, values)
    polish = _admm_polishable(p)

    def unbounded(x_new, dx):
        return _admm_unbounded(p, x_new, dx, values, run.blocks, run.fixed, curvature, run.eps)

    for k in range(layer.max_iter):
        if not bool(run.active.any()):
            break
        x_new, s_new, _ = _admm_sweep(
            p, run.x, run.s, values, run.blocks, run.rho, run.fixed, layer.forward_tol, _ADMM_RELAX
        )
        run.advance(k, x_new, s_new, unbounded)
        if polish and (k + 1) % _ADMM_CHECK_EVERY == 0:
            run.polish()
    x, _ = run.output()
    return run.finish(x, run.fixed[0], run.factored, run.factored)


def _admm_solve_newton(p, layer, values, x_init, sizes, batch):
    """ADMM with damped Newton x-updates (f₀ not quadratic) and OSQP's certificate of an
    empty set; an element whose x-update fails stops there and is reported."""
    run = _AdmmRun(p, layer, values, x_init, sizes, batch)
    updated = torch.ones_like(run.feasible)  # the x-update succeeded at every sweep
    for k in range(layer.max_iter):
        if not bool(run.active.any()):
            break
        x_new, s_new, ok = _admm_sweep(
            p, run.x, run.s, values, run.blocks, run.rho, run.fixed, layer.forward_tol, _ADMM_RELAX
        )
        updated = updated & (ok | ~run.active)
        run.active = run.active & ok
        run.advance(k, x_new, s_new)
    x, ok = run.output()
    updated = updated & ok
    L, factored_here = _admm_cholesky(p, x, values, run.blocks, run.rho)
    factored = run.factored & factored_here
    return run.finish(x, L, factored, factored & updated, updated)


# ---------------------------------------------------------------------------- the backward


def _admm_update_map(p, layer, x, state, values):
    """(s*, U, read) on the ADMM state s = (z, u): U is one sweep with the final ρ and the
    x-update started from x*; ``read(s)`` is the x-update x(s)."""
    s_star, rho = state[0], state[1]
    blocks = _admm_unpack(p, p.block_data(x, *values))
    fixed, _ = p.prepare(p, x, values, blocks, rho)

    def update(s):
        return _admm_update(p, x, s, values, blocks, rho, fixed, layer.forward_tol)[1]

    def read(s):
        return _admm_update(p, x, s, values, blocks, rho, fixed, layer.forward_tol)[0]

    return s_star, update, read


def _admm_pullback(p, v, x, s, blocks, rho, L, x_bar):
    """The cotangent of s for the cotangent v of U(s) plus x_bar of x(s).

    Returns (s̄, r, the w̄ᵢ, the prox data cotangents); x_bar may be 0.
    """
    dims = _admm_sizes(blocks, x.shape[-1])
    z_bar, u_bar = _admm_split(v, dims)
    _, u = _admm_split(s, dims)
    w_bars, data_bars = [], []
    for term, (A, data), zb, ub, ui in zip(p.terms, blocks, z_bar, u_bar, u):
        w = _admm_apply(A, x) + ui
        w_bar, data_bar = term.prox_vjp(zb - ub, w, data, rho)
        w_bar = w_bar + ub  # u⁺ = w − z⁺
        w_bars.append(w_bar)
        data_bars.append(data_bar)
        x_bar = x_bar + _admm_apply_t(A, w_bar)
    r = _admm_solve_k(L, rho, x_bar)  # (..., n)
    s_z = [rho[..., None] * _admm_apply(A, r) for A, _ in blocks]
    s_u = [w_bar - sz for w_bar, sz in zip(w_bars, s_z)]
    return _admm_pack(s_z, s_u), r, w_bars, data_bars


def _admm_kkt_backward(p, layer, x, values, s, rho, blocks, grad_x):
    """The gradient of a QP (`_admm_polishable`) from its active set's KKT system, where
    every element's system is solved; else None (the caller folds the ADMM map).

    The active rows are those the fold's box Jacobians clamp at w = Ax + u (the same
    element of the generalized Jacobian as folding), b their bound, y = ρu. With D the
    active rows, M = [[H, AᵀD], [DA, D − I]] (symmetric) is the Jacobian in (x, y) of
    F = (∇f₀(x) + AᵀDy, D(Ax − b) − (I − D)y) = 0, so M w = (∂L/∂x, 0) gives
    ∂L/∂θ = −wᵀ ∂F/∂θ: −(∂∇f₀/∂θ)ᵀw_x, Āᵢ = −((Dy)ᵢ w_xᵀ + (Dw_y)ᵢ xᵀ), b̄ = Dw_y. One LU per
    element instead of an iterative fold; its residual is checked against the backward's
    tolerance, and a singular M (redundant active rows) leaves the fold to the caller.
    """
    n, batch = x.shape[-1], grad_x.shape[:-1]
    dims = _admm_sizes(blocks, n)
    z, u = _admm_split(s, dims)
    ones = [torch.ones_like(zi) for zi in z]
    lo, hi = _admm_bounds(blocks, dims, batch)
    w = torch.cat([_admm_apply(A, x) + ui for (A, _), ui in zip(blocks, u)], -1)
    w = w.expand(*batch, w.shape[-1])
    free, _, at_hi = _proj_box_vjp(torch.cat(ones, -1).expand_as(w), w, lo, hi)
    d = (free == 0).to(x.dtype)  # (..., m): the clamped rows
    y = rho[..., None] * torch.cat(u, -1)
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    H = _admm_qp_hessian(p, x, values).expand(*batch, n, n)
    A = torch.cat([eye.expand(*batch, n, n) if Ai is None else Ai.expand(*batch, *Ai.shape[-2:])
                   for Ai, _ in blocks], -2)  # (..., m, n)  # fmt: skip
    M = _admm_kkt_matrix(H, A, d)
    rhs = torch.cat([grad_x.expand(*batch, n), x.new_zeros(*batch, A.shape[-2])], -1)
    sol, info = torch.linalg.solve_ex(M, rhs[..., None])
    sol = torch.where((info == 0)[..., None], sol[..., 0], 0)
    tiny = torch.finfo(x.dtype).tiny
    residual = _norm(_mv(M, sol) - rhs) / _norm(rhs).clamp_min(tiny)
    residual = torch.where((info == 0) & torch.isfinite(residual), residual, math.inf)
    zero = _norm(rhs) == 0
    residual = torch.where(zero, 0, residual)
    if not bool((residual <= layer.adjoint_tol).all()):
        return None
    w_x, w_y = sol[..., :n], d * sol[..., n:]
    grads = [None] * len(values)
    if p.objective_grad_indices:
        objective_grads = p.gradient_vjp(x, w_x, *values)
        for index, bar in zip(p.objective_grad_indices, _as_tuple(objective_grads)):
            grads[index] = -bar
    if p.block_grad_indices:
        dy = d * y
        bars, start = [], 0
        for (Ai, _), m in zip(blocks, dims):
            rows = slice(start, start + m)
            if Ai is not None:
                bars.append(-(dy[..., rows, None] * w_x[..., None, :]
                              + w_y[..., rows, None] * x[..., None, :]))  # fmt: skip
            hi_rows = (at_hi != 0)[..., rows]
            bars.extend([torch.where(hi_rows, 0, w_y[..., rows]),
                         torch.where(hi_rows, w_y[..., rows], 0)])  # fmt: skip
            start += m
        block_grads = p.block_data_vjp(x, *bars, *values)
        for index, bar in zip(p.block_grad_indices, _as_tuple(block_grads)):
            grads[index] = bar if grads[index] is None else grads[index] + bar
    iterations = torch.ones(batch, dtype=torch.int64, device=x.device)
    converged = torch.ones(batch, dtype=torch.bool, device=x.device)
    layer.backward_info = BackwardInfo(
        "active_set", iterations, residual, converged, converged, layer.adjoint_tol, ~converged
    )
    return grads


def _admm_backward(p, layer, x, values, state, grad_x):
    """∂L/∂θ = Ψᵀv + (∂x/∂θ)ᵀ ∂L/∂x with (I − Φᵀ) v = (∂x/∂s)ᵀ ∂L/∂x, at s* with the final ρ;
    for a QP under ``auto`` or ``active_set``, its active set's KKT solve where it succeeds
    for every element (`_admm_kkt_backward`).

    Elements without a solution (infeasible, or K not PD) get zero gradients.
    """
    s, rho, L, ok = state
    grad_x = torch.where(ok[..., None], grad_x, 0)
    blocks = _admm_unpack(p, p.block_data(x, *values))
    if _admm_polishable(p) and layer.backward_method in ("auto", "active_set"):
        found = _admm_kkt_backward(p, layer, x, values, s, rho, blocks, grad_x)
        if found is not None:
            return found

    def phi_t(v):
        return _admm_pullback(p, v, x, s, blocks, rho, L, 0)[0]

    def dense_phi_t():
        flat = [_lift(t, r) for t, r in zip(_admm_flat(blocks), p.data_ranks)]
        lifted = _admm_unpack(p, flat)
        x1, s1, rho1 = _lift(x, 1), _lift(s, 1), _lift(rho, 0)
        L1 = _lift(L, 2) if isinstance(L, torch.Tensor) else L  # a shared factor: as it is
        return lambda v: _admm_pullback(p, v, x1, s1, lifted, rho1, L1, 0)[0]

    link = _admm_pullback(p, torch.zeros_like(s), x, s, blocks, rho, L, grad_x)[0]
    v = _adjoint(layer, phi_t, dense_phi_t, link)
    _, r, w_bars, data_bars = _admm_pullback(p, v, x, s, blocks, rho, L, grad_x)
    grads = [None] * len(values)
    if p.objective_grad_indices:
        # Through ∇f₀ in the x-update's optimality condition.
        objective_grads = p.gradient_vjp(x, r, *values)
        for index, bar in zip(p.objective_grad_indices, _as_tuple(objective_grads)):
            grads[index] = -bar
    if p.block_grad_indices:
        # Through the block data: Aᵢ (in the x-update and in wᵢ = Aᵢx + uᵢ) and the prox data.
        z, u = _admm_split(s, _admm_sizes(blocks, x.shape[-1]))
        bars = []
        for (A, _), w_bar, data_bar, zi, ui in zip(blocks, w_bars, data_bars, z, u):
            if A is not None:
                gap = _mv(A, x) - zi + ui  # (..., mᵢ)
                A_bar = w_bar[..., :, None] * x[..., None, :]
                A_bar = A_bar - rho[..., None, None] * gap[..., :, None] * r[..., None, :]
                A_bar = A_bar - rho[..., None, None] * _mv(A, r)[..., :, None] * x[..., None, :]
                bars.append(A_bar)
            bars.extend(data_bar)
        block_grads = p.block_data_vjp(x, *bars, *values)
        for index, bar in zip(p.block_grad_indices, _as_tuple(block_grads)):
            grads[index] = bar if grads[index] is None else grads[index] + bar
    return grads
