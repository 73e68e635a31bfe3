"""Closed-form projections and their vector-Jacobian products (VJPs), batched.

Vectors are (..., n), matrices (..., m, n), scalars (...); leading batch dims broadcast.
Every VJP returns one cotangent per input it names, each with the FULL broadcast shape of
all its inputs ((..., n), (..., m, n) or (...)); the caller sums them down to the shapes of
its parameters (``t.sum_to_size(param.shape)``). Some may be expanded views: do not modify
them in place. Bounds may be +-inf. At a kink (a component exactly on a bound, a point
exactly on a boundary) the VJPs return one valid element of the generalized Jacobian.

The code generator copies the definitions a module reaches verbatim into it
(`foldgen.link`), so they use only ``math``, ``torch`` and each other. No autograd is used: these run inside a custom backward.
"""

import math

import torch


def _proj_box(y, lo, hi):
    """Projection onto the box lo <= x <= hi (clamp); lo, hi are tensors broadcastable to y."""
    return torch.clamp(y, lo, hi)  # = min(max(y, lo), hi), also where lo > hi  # (..., n)


def _proj_box_vjp(v, y, lo, hi):
    """VJP of the clamp: v flows to y on the free set and to the bound a component is clamped to.

    A component exactly on a bound is assigned to that bound (consistent with the forward,
    which returns the bound there).
    """
    at_lo = y <= lo  # (..., n)
    at_hi = (y >= hi) & ~at_lo
    free = ~at_lo & ~at_hi
    y_bar = torch.where(free, v, 0)  # (..., n)
    lo_bar = torch.where(at_lo, v, 0)
    hi_bar = torch.where(at_hi, v, 0)
    return y_bar, lo_bar, hi_bar


def _proj_box_sum(y, lo, hi, k, d):
    """Projection onto {lo <= x <= hi, sum(x) = k} in the metric diag(d)^-1, d > 0.

    KKT: x = clamp(y - tau * d, lo, hi) with one tau per element such that sum(x) = k
    (d = 1: Euclidean projection onto a capped simplex). s(tau) = sum(clamp(y - tau * d))
    is continuous, non-increasing and linear between the breakpoints (y_i - lo_i) / d_i and
    (y_i - hi_i) / d_i, where components change between at-lo / free / at-hi. So the
    bisection runs over the sorted breakpoints, not over tau values: after
    ceil(log2(2n + 1)) halvings tau is bracketed by two consecutive breakpoints, the active
    set on that interval is known exactly, and tau is solved for exactly on it, making x
    exact to rounding. (Halving tau values would need a dtype-based count that is not
    enough when the breakpoints span many orders of magnitude, e.g. d from 1e-3 to 1e3.)
    The count depends only on n, and the loop has no host synchronisation. The outer
    bracket is valid for infinite bounds too (see the body), so +-inf needs no special case.

    Shapes: y, lo, hi, d (..., n) or broadcastable; k (...). Returns x (..., n) and
    ok (...) bool, False where the set is empty (some lo > hi, or sum(lo) > k or
    sum(hi) < k beyond a rounding slack); there x = clamp(y, lo, hi) (finite for finite
    data), which is not a projection. Within the slack k is moved onto [sum(lo), sum(hi)].
    """
    shape = torch.broadcast_shapes(y.shape, lo.shape, hi.shape, d.shape, k.shape + (1,))
    y, lo, hi, d = (t.expand(shape) for t in (y, lo, hi, d))  # (..., n)
    k = k.expand(shape[:-1])  # (...)
    finfo = torch.finfo(y.dtype)
    n = shape[-1]
    lo_fin = torch.isfinite(lo)
    hi_fin = torch.isfinite(hi)
    lo_sum = lo.sum(-1)  # (...), may be -inf
    hi_sum = hi.sum(-1)  # (...), may be +inf
    size = torch.where(lo_fin, lo.abs(), 0).sum(-1) + torch.where(hi_fin, hi.abs(), 0).sum(-1)
    slack = 4 * n * finfo.eps * (k.abs() + size)  # rounding of the sums  # (...)
    ok = (lo_sum <= k + slack) & (hi_sum >= k - slack) & (lo <= hi).all(-1)  # NaN: False
    kk = torch.minimum(torch.maximum(k, lo_sum), hi_sum)  # k moved into [sum(lo), sum(hi)]

    # Bracket [a, b] with s(a) >= k >= s(b). For tau <= min over finite hi of (y - hi) / d,
    # those components sit at hi and the others are >= y - tau * d, so s(tau) >= k also once
    # tau <= (sum_{hi=inf} y + sum_{hi finite} hi - k) / sum_{hi=inf} d; symmetrically for b.
    a1 = torch.where(hi_fin, (y - hi) / d, math.inf).amin(-1)  # (...)
    d_a = torch.where(hi_fin, 0, d).sum(-1)
    a2 = (torch.where(hi_fin, hi, y).sum(-1) - kk) / torch.where(d_a > 0, d_a, 1)
    a = torch.minimum(a1, torch.where(d_a > 0, a2, math.inf))
    b1 = torch.where(lo_fin, (y - lo) / d, -math.inf).amax(-1)  # (...)
    d_b = torch.where(lo_fin, 0, d).sum(-1)
    b2 = (torch.where(lo_fin, lo, y).sum(-1) - kk) / torch.where(d_b > 0, d_b, 1)
    b = torch.maximum(b1, torch.where(d_b > 0, b2, -math.inf))
    a, b = torch.where(ok, torch.minimum(a, b), 0), torch.where(ok, torch.maximum(a, b), 0)

    # Bisection over the sorted breakpoints (clamped into [a, b], which close the list):
    # keep indices lo_i < hi_i with s(bp[lo_i]) >= k >= s(bp[hi_i]) until they are adjacent.
    bp = torch.cat([a[..., None], (y - lo) / d, (y - hi) / d, b[..., None]], dim=-1)
    bp = torch.minimum(torch.maximum(bp, a[..., None]), b[..., None]).sort(dim=-1).values
    lo_i = torch.zeros_like(k, dtype=torch.int64)  # (...)
    hi_i = torch.full_like(lo_i, 2 * n + 1)
    for _ in range(math.ceil(math.log2(2 * n + 1))):
        open_ = hi_i - lo_i > 1
        mid_i = (lo_i + hi_i) // 2
        z = y - bp.gather(-1, mid_i[..., None]) * d  # (..., n)
        up = torch.minimum(torch.maximum(z, lo), hi).sum(-1) >= kk  # root at or right of it
        lo_i = torch.where(open_ & up, mid_i, lo_i)
        hi_i = torch.where(open_ & ~up, mid_i, hi_i)
    a = bp.gather(-1, lo_i[..., None]).squeeze(-1)
    b = bp.gather(-1, hi_i[..., None]).squeeze(-1)

    # Exact tau on the identified set: sum_F (y - tau d) + sum_lo lo + sum_hi hi = k.
    mid = a + 0.5 * (b - a)
    z = y - mid[..., None] * d
    at_lo = z <= lo
    at_hi = (z >= hi) & ~at_lo
    free = ~at_lo & ~at_hi
    d_free = torch.where(free, d, 0).sum(-1)  # (...)
    rest = kk - torch.where(at_lo, lo, 0).sum(-1) - torch.where(at_hi, hi, 0).sum(-1)
    tau = (torch.where(free, y, 0).sum(-1) - rest) / torch.where(d_free > 0, d_free, 1)
    tau = torch.where(d_free > 0, tau, mid)  # no free component: any tau in [a, b] works
    x = torch.minimum(torch.maximum(y - tau[..., None] * d, lo), hi)
    x = torch.where(at_lo, lo, torch.where(at_hi, hi, x))
    x = torch.where(ok[..., None], x, torch.minimum(torch.maximum(y, lo), hi))
    return x, ok


def _proj_box_sum_vjp(v, x, lo, hi, d):
    """VJP of _proj_box_sum at its output x; returns (y_bar, lo_bar, hi_bar, k_bar).

    On the free set F, dx = dy - dtau * d, and sum(dx) = dk fixes dtau; components at a
    bound follow it. With vbar = sum_F v d / sum_F d (0 if F is empty): y_bar = v - vbar on
    F, lo_bar / hi_bar = v - vbar where x is at lo / hi, k_bar = vbar. "At a bound" means
    within 4 ulps of x, as the forward returns the bound itself there.
    """
    shape = torch.broadcast_shapes(v.shape, x.shape, lo.shape, hi.shape, d.shape)
    finfo = torch.finfo(x.dtype)
    margin = 4 * finfo.eps * x.abs()
    at_lo = (x - lo <= margin).expand(shape)  # (..., n)
    at_hi = (hi - x <= margin) & ~at_lo
    free = ~at_lo & ~at_hi
    d_free = torch.where(free, d, 0).sum(-1)  # (...)
    v_bar = torch.where(free, v * d, 0).sum(-1) / torch.where(d_free > 0, d_free, 1)  # (...)
    u = v - v_bar[..., None]  # (..., n)
    y_bar = torch.where(free, u, 0)
    lo_bar = torch.where(at_lo, u, 0)
    hi_bar = torch.where(at_hi, u, 0)
    return y_bar, lo_bar, hi_bar, v_bar


def _affine_factor(A, b=None):
    """W = (A Aᵀ)⁺, the pseudo-inverse of A Aᵀ (..., m, m), computed once per solve.

    Rank-revealing (an eigendecomposition of A Aᵀ): eigenvalues up to 10·m·eps·λmax count
    as zero, so linearly dependent rows (a transport polytope's row and column sums, a sum
    written twice) are handled, and w = W(Ay − b) is the minimum-norm multiplier. Where b
    is given and not in the range of A beyond √eps relative to ‖b‖∞ (the dependent rows
    ask for different values: no point satisfies them) the element's W is NaN, so only its
    own results are NaN and the caller reports it, instead of an exception for the batch.
    """
    lam, U = torch.linalg.eigh(A @ A.mT)  # (..., m), (..., m, m)
    m = lam.shape[-1]
    floor = 10 * m * torch.finfo(lam.dtype).eps * lam.amax(-1, keepdim=True).clamp_min(0)
    kept = lam > floor
    inverse = torch.where(kept, 1 / torch.where(kept, lam, 1), 0)  # (..., m)
    W = (U * inverse[..., None, :]) @ U.mT  # (..., m, m)
    if b is None:
        return W
    range_b = ((U * kept[..., None, :].to(U.dtype)) @ (U.mT @ b[..., None]))[..., 0]
    outside = (b - range_b).abs().amax(-1)  # ‖P_null b‖∞, the part of b no x reaches
    scale = b.abs().amax(-1).clamp_min(torch.finfo(b.dtype).tiny)
    consistent = outside <= torch.finfo(b.dtype).eps ** 0.5 * scale
    return torch.where(consistent[..., None, None], W, math.nan)


def _proj_affine(y, A, b, W):
    """Projection onto {x : A x = b}: x = y − Aᵀ w, w = (A Aᵀ)⁺ (A y − b).

    W is the pseudo-inverse from _affine_factor (any row rank; b consistent).

    Shapes: y (..., n), A (..., m, n), b (..., m), W (..., m, m). Returns x (..., n).
    """
    r = (A @ y[..., None]) - b[..., None]  # (..., m, 1)
    w = W @ r  # (..., m, 1)
    return y - (A.mT @ w).squeeze(-1)  # (..., n)


def _proj_affine_vjp(v, x, y, A, b, W):
    """VJP of _proj_affine; returns (y_bar, A_bar, b_bar).

    With W = (A Aᵀ)⁺, w = W(A y − b) and s = W A v: y_bar = v − Aᵀ s, b_bar = s,
    A_bar = −s xᵀ − w y_barᵀ. With dependent rows these are the minimum-norm cotangents
    (b_bar has no part along the dependent combinations); the part of y_bar is exact.
    """
    batch = torch.broadcast_shapes(
        v.shape[:-1], x.shape[:-1], y.shape[:-1], A.shape[:-2], b.shape[:-1], W.shape[:-2]
    )
    m, n = A.shape[-2:]
    w = W @ ((A @ y[..., None]) - b[..., None])  # (..., m, 1)
    s = W @ (A @ v[..., None])  # (..., m, 1)
    y_bar = v[..., None] - A.mT @ s  # (..., n, 1)
    A_bar = -(s @ x[..., None, :]) - (w @ y_bar.mT)  # (..., m, n)
    return (
        y_bar.squeeze(-1).expand(batch + (n,)),
        A_bar.expand(batch + (m, n)),
        s.squeeze(-1).expand(batch + (m,)),
    )


def _proj_halfspace(y, a, b):
    """Projection onto {x : a^T x <= b}; a (..., n), b (...). a = 0 leaves y unchanged."""
    aa = (a * a).sum(-1)  # (...)
    excess = (a * y).sum(-1) - b  # (...)
    t = torch.where((excess > 0) & (aa > 0), excess / torch.where(aa > 0, aa, 1), 0)
    return y - t[..., None] * a  # (..., n)


def _proj_halfspace_vjp(v, y, a, b):
    """VJP of _proj_halfspace; returns (y_bar, a_bar, b_bar).

    Inactive (a^T y < b): identity, a_bar = b_bar = 0. Active, with t = (a^T y - b) / |a|^2,
    x = y - t a and c = a^T v / |a|^2: y_bar = v - c a, b_bar = c, a_bar = -c x - t y_bar.
    A point on the plane to within 4 ulps of its terms counts as active (weakly active: the
    tangent-plane element of the generalized Jacobian, as the box and capped simplex do).
    """
    aa = (a * a).sum(-1)  # (...)
    aa_safe = torch.where(aa > 0, aa, 1)
    excess = (a * y).sum(-1) - b
    margin = 4 * torch.finfo(y.dtype).eps * ((a * y).abs().sum(-1) + b.abs())
    active = (excess >= -margin) & (aa > 0)  # (...)
    t = torch.where(active, excess / aa_safe, 0)[..., None]  # (..., 1)
    c = torch.where(active, (a * v).sum(-1) / aa_safe, 0)  # (...)
    y_bar = v - c[..., None] * a  # (..., n); equals v where inactive (c = 0)
    x = y - t * a
    a_bar = -c[..., None] * x - t * y_bar
    shape = torch.broadcast_shapes(v.shape, y.shape, a.shape, b.shape + (1,))
    return y_bar.expand(shape), a_bar.expand(shape), c.expand(shape[:-1])


def _proj_ball(y, c, r):
    """Projection onto the ball {x : |x - c| <= r}; c (..., n), r (...).

    r < 0 (an empty ball, which the caller reports) is taken as r = 0, so the result stays
    finite: the projection onto {c}.
    """
    r = r.clamp_min(0)
    delta = y - c  # (..., n)
    dist = torch.linalg.vector_norm(delta, dim=-1)  # (...)
    outside = dist > r
    ratio = torch.where(outside, r / torch.where(outside, dist, 1), 1)  # (...)
    return torch.where(outside[..., None], c + ratio[..., None] * delta, y)  # (..., n)


def _proj_ball_vjp(v, y, c, r):
    """VJP of _proj_ball; returns (y_bar, c_bar, r_bar).

    Outside, with delta = y - c: y_bar = (r / |delta|)(v - delta (delta^T v) / |delta|^2),
    c_bar = v - y_bar, r_bar = delta^T v / |delta|. Inside: y_bar = v, c_bar = r_bar = 0.
    A point on the sphere to within 4 ulps counts as outside (weakly active: the boundary's
    element of the generalized Jacobian, as the other projections choose). r < 0 is taken
    as r = 0, as in the forward.
    """
    r = r.clamp_min(0)
    delta = y - c  # (..., n)
    dist = torch.linalg.vector_norm(delta, dim=-1)  # (...)
    outside = (dist >= r * (1 - 4 * torch.finfo(y.dtype).eps)) & (dist > 0)
    dist_safe = torch.where(outside, dist, 1)
    unit = delta / dist_safe[..., None]  # (..., n)
    radial = (unit * v).sum(-1)  # (...)
    y_out = (r / dist_safe)[..., None] * (v - unit * radial[..., None])
    y_bar = torch.where(outside[..., None], y_out, v)  # (..., n)
    c_bar = torch.where(outside[..., None], v - y_out, 0)
    r_bar = torch.where(outside, radial, 0)  # (...)
    shape = torch.broadcast_shapes(v.shape, y.shape, c.shape, r.shape + (1,))
    return y_bar.expand(shape), c_bar.expand(shape), r_bar.expand(shape[:-1])


def _l1ball_threshold(a, r):
    """The soft threshold θ ≥ 0 with Σ max(aᵢ − θ, 0) = r, for a = |y − c| outside the ball.

    Duchi et al.'s sort: with u = a sorted descending and its cumulative sums s, the number
    of components left nonzero is the largest k with u_k > (s_k − r)/k (at least 1, so that
    r = 0 gives θ = max a, the centre), and θ = (s_k − r)/k, exact on that set. a (..., n),
    r (...) ≥ 0; returns θ (...), clamped at 0 (a point inside or on the sphere keeps a).
    """
    u = a.sort(dim=-1, descending=True).values  # (..., n)
    s = u.cumsum(-1) - r[..., None]
    k = torch.arange(1, a.shape[-1] + 1, dtype=a.dtype, device=a.device)
    index = torch.where(u * k > s, k, 1).amax(-1, keepdim=True).to(torch.int64)  # (..., 1)
    theta = s.gather(-1, index - 1)[..., 0] / index[..., 0].to(a.dtype)
    return theta.clamp_min(0)


def _proj_l1ball(y, c, r):
    """Euclidean projection onto the l1 ball {x : |x - c|_1 <= r}; c (..., n), r (...).

    Outside: soft-thresholding of y − c at the θ of _l1ball_threshold; inside: y itself.
    r < 0 (an empty ball, which the caller reports) is taken as r = 0: the projection onto
    {c}, finite.
    """
    shape = torch.broadcast_shapes(y.shape, c.shape, r.shape + (1,))
    r = r.clamp_min(0).expand(shape[:-1])
    delta = (y - c).expand(shape)  # (..., n)
    a = delta.abs()
    outside = a.sum(-1) > r  # (...)
    theta = _l1ball_threshold(a, r)
    x = c + torch.sign(delta) * (a - theta[..., None]).clamp_min(0)
    return torch.where(outside[..., None], x, y.expand(shape))  # (..., n)


def _proj_l1ball_vjp(v, y, c, r):
    """VJP of _proj_l1ball; returns (y_bar, c_bar, r_bar).

    Outside, on the support S = {|y − c| > θ} with signs s = sign(y − c): x_S = c_S +
    s_S (|δ_S| − θ) and Σ_S s (x − c) = r fixes dθ = (s_Sᵀ dδ_S − dr)/|S|, so J_y =
    I_S − s_S s_Sᵀ/|S| (zero off S). With v̄ = s_Sᵀ v_S/|S|: y_bar = v − s v̄ on S (0
    off it), c_bar = v − y_bar, r_bar = v̄. Inside: y_bar = v, c_bar = r_bar = 0. A point
    on the sphere to within 4n ulps counts as outside (θ = 0: the boundary's element of the
    generalized Jacobian, as the Euclidean ball chooses); a component with |δ| at θ to
    4 ulps counts as off the support. r < 0 is taken as r = 0, as in the forward.
    """
    shape = torch.broadcast_shapes(v.shape, y.shape, c.shape, r.shape + (1,))
    eps = torch.finfo(y.dtype).eps
    r = r.clamp_min(0).expand(shape[:-1])
    delta = (y - c).expand(shape)  # (..., n)
    a = delta.abs()
    outside = a.sum(-1) >= r * (1 - 4 * shape[-1] * eps)  # (...)
    theta = _l1ball_threshold(a, r)
    support = (a - theta[..., None] > 4 * eps * a) & outside[..., None]  # (..., n)
    sign = torch.where(support, torch.sign(delta), 0)
    size = support.sum(-1).to(y.dtype)  # (...)
    v_bar = (sign * v).sum(-1) / torch.where(size > 0, size, 1)  # (...)
    y_out = torch.where(support, v - sign * v_bar[..., None], 0)
    y_bar = torch.where(outside[..., None], y_out, v.expand(shape))
    c_bar = torch.where(outside[..., None], v - y_out, 0)
    r_bar = torch.where(outside, v_bar, 0)
    return y_bar, c_bar.expand(shape), r_bar


def _proj_box_wsum(y, lo, hi, w, c, d):
    """Projection onto {lo <= x <= hi, w^T x = c} in the metric diag(d)^-1, d > 0.

    KKT: x = clamp(y - tau * d * w, lo, hi) with w^T x = c. In z = w * x this is the capped
    simplex of _proj_box_sum (bounds min/max(w lo, w hi), point w y, metric d w^2, sum c),
    whose breakpoint search is exact and valid for any sign of w; so it is solved there and
    mapped back, a component on a bound returned as that bound itself. A component with
    w_i = 0 leaves the constraint: it is clamp(y_i, lo_i, hi_i) (z_i fixed at 0).

    Shapes: y, lo, hi, w, d (..., n) or broadcastable; c (...). Returns x (..., n) and ok
    (...) bool, False where the set is empty (as _proj_box_sum: there x = clamp(y, lo, hi)).
    """
    shape = torch.broadcast_shapes(y.shape, lo.shape, hi.shape, w.shape, d.shape, c.shape + (1,))
    y, lo, hi, w, d = (t.expand(shape) for t in (y, lo, hi, w, d))  # (..., n)
    used = w != 0
    w_lo = torch.where(used, w * lo, 0)  # ±inf · w stays infinite; NaN never (w ≠ 0 here)
    w_hi = torch.where(used, w * hi, 0)
    z_lo, z_hi = torch.minimum(w_lo, w_hi), torch.maximum(w_lo, w_hi)
    z_y = torch.where(used, w * y, 0)
    z_d = torch.where(used, d * w * w, 1)
    z, ok = _proj_box_sum(z_y, z_lo, z_hi, c, z_d)
    ok = ok & (lo <= hi).all(-1)  # min/max above would hide crossed bounds (and w = 0 ones)
    clamped = torch.minimum(torch.maximum(y, lo), hi)
    x = torch.where(used, z / torch.where(used, w, 1), clamped)
    x = torch.where(used & (z == w_lo), lo, torch.where(used & (z == w_hi), hi, x))
    x = torch.minimum(torch.maximum(x, lo), hi)  # the division's last ulp stays inside
    return torch.where(ok[..., None], x, clamped), ok


def _proj_box_wsum_vjp(v, x, y, lo, hi, w, d):
    """VJP of _proj_box_wsum at its output x; returns (y_bar, lo_bar, hi_bar, w_bar, c_bar).

    On the free set F (strictly inside the bounds), dx = dy - dtau d w - tau d dw, and the
    constraint's differential sum(w dx + x dw) = dc fixes dtau; components at a bound follow
    it. So J_y = I_F - (d w)_F w_F^T / q with q = sum_F d w^2, and with g = sum_F v d w / q
    (0 if q = 0): y_bar = v - g w on F, lo_bar / hi_bar = v - g w where x is at lo / hi,
    c_bar = g, w_bar = -tau d (v - g w) on F - g x, tau = sum_F w (y - x) / q (its least-
    squares value from the free set). "At a bound" is within 4 ulps of x, as _proj_box_sum.
    """
    shape = torch.broadcast_shapes(v.shape, x.shape, y.shape, lo.shape, hi.shape, w.shape, d.shape)
    margin = 4 * torch.finfo(x.dtype).eps * x.abs()
    at_lo = (x - lo <= margin).expand(shape)  # (..., n)
    at_hi = (hi - x <= margin) & ~at_lo
    free = ~at_lo & ~at_hi
    dw = d * w
    q = torch.where(free, dw * w, 0).sum(-1)  # (...)
    q_safe = torch.where(q > 0, q, 1)
    g = torch.where(free, v * dw, 0).sum(-1) / q_safe  # (...)
    tau = torch.where(free, w * (y - x), 0).sum(-1) / q_safe
    u = v - g[..., None] * w  # (..., n)
    y_bar = torch.where(free, u, 0)
    lo_bar = torch.where(at_lo, u, 0)
    hi_bar = torch.where(at_hi, u, 0)
    w_bar = -tau[..., None] * d * y_bar - g[..., None] * x
    return y_bar, lo_bar, hi_bar, w_bar.expand(shape), g.expand(shape[:-1])


def _psd_square(y):
    """The (..., n²) vector y as (..., n, n) matrices, row-major (n from y's last size)."""
    n = math.isqrt(y.shape[-1])
    return y.reshape(*y.shape[:-1], n, n)


def _psd_eigh(y, m):
    """The eigendecomposition of S = sym(Y − M), sym(W) = (W + Wᵀ)/2; y, m (..., n²)."""
    w = _psd_square(y - m)
    return torch.linalg.eigh(0.5 * (w + w.mT))


def _proj_psd(y, m):
    """Euclidean projection onto {X : X − M symmetric positive semidefinite}; y, m (..., n²)
    are n × n matrices flattened row-major.

    For Z = X − M symmetric, ‖M + Z − Y‖² = ‖Z − sym(Y − M)‖² + ‖skew(Y − M)‖², so the
    nearest point is M + P₊(sym(Y − M)) exactly, P₊(S) = V max(Λ, 0) Vᵀ (S = V Λ Vᵀ): a
    non-symmetric Y is projected through its symmetric part. The result is symmetric where
    M is (then it is the nearest symmetric PSD matrix to Y − M, plus M)."""
    lam, vec = _psd_eigh(y, m)
    z = (vec * lam.clamp_min(0)[..., None, :]) @ vec.mT  # (..., n, n)
    x = m + z.reshape(*z.shape[:-2], -1)
    return x.expand(torch.broadcast_shapes(y.shape, m.shape))


def _proj_psd_vjp(v, y, m):
    """VJP of _proj_psd; returns (y_bar, m_bar).

    With S = sym(Y − M) = V diag(λ) Vᵀ and f(λ) = max(λ, 0), the derivative of P₊ at S is
    Daleckii–Krein's dS ↦ V (Γ ⊙ (Vᵀ dS V)) Vᵀ, Γᵢⱼ = (f(λᵢ) − f(λⱼ))/(λᵢ − λⱼ); it is
    self-adjoint, and sym is too, so y_bar = V (Γ ⊙ (Vᵀ sym(V̄) V)) Vᵀ and m_bar = v − y_bar.
    Γᵢⱼ is 1 where both λ are positive and 0 where neither is (f' on equal eigenvalues:
    exact, so repeated eigenvalues of one sign need no tolerance), and the quotient only for
    opposite signs, whose denominator is at least the positive one. λ = 0 counts as
    negative: one element of the generalized Jacobian at the kink.
    """
    shape = torch.broadcast_shapes(v.shape, y.shape, m.shape)
    lam, vec = _psd_eigh(y, m)
    pos = lam > 0  # (..., n)
    f = lam.clamp_min(0)
    both = pos[..., :, None] & pos[..., None, :]
    mixed = pos[..., :, None] != pos[..., None, :]
    gap = lam[..., :, None] - lam[..., None, :]
    quotient = (f[..., :, None] - f[..., None, :]) / torch.where(mixed, gap, 1)
    gamma = torch.where(both, 1.0, torch.where(mixed, quotient, 0.0)).to(lam.dtype)
    w = _psd_square(v)
    core = vec.mT @ (0.5 * (w + w.mT)) @ vec
    y_bar = vec @ (gamma * core) @ vec.mT
    y_bar = y_bar.reshape(*y_bar.shape[:-2], -1).expand(shape)
    return y_bar, v.expand(shape) - y_bar


def _psd_min_eigenvalue(x, m):
    """The smallest eigenvalue of sym(X − M) and the largest |entry| of skew(X − M)."""
    w = _psd_square(x - m)
    skew = (0.5 * (w - w.mT)).abs().amax((-2, -1))
    return torch.linalg.eigvalsh(0.5 * (w + w.mT))[..., 0], skew


def _proj_soc(y):
    """Projection onto the second-order cone K = {(u, t) : ‖u‖ ≤ t}; y = (u, t), (..., m + 1).

    With s = ‖u‖: y itself inside (s ≤ t), 0 in the polar cone (s ≤ −t), else the point
    ((s + t)/(2s)) (u, s) on the cone's boundary (Bauschke's closed form).
    """
    u, t = y[..., :-1], y[..., -1]
    s = torch.linalg.vector_norm(u, dim=-1)  # (...)
    inside = s <= t
    polar = s <= -t
    s_safe = torch.where(inside | polar, 1, s)  # s > |t| ≥ 0 where it is used
    half = (s + t) / 2  # (...)
    out = torch.cat([(half / s_safe)[..., None] * u, half[..., None]], -1)  # (..., m + 1)
    return torch.where(inside[..., None], y, torch.where(polar[..., None], 0, out))


def _proj_soc_vjp(v, y):
    """VJP of _proj_soc; returns y_bar, (..., m + 1).

    Between the cones, with ū = u/s and α = (s + t)/(2s), the Jacobian is symmetric,
    J = [[α(I − ūūᵀ) + ½ūūᵀ, ½ū], [½ūᵀ, ½]], so with g = ūᵀv_u + v_t:
    y_bar = (α(v_u − ū ūᵀv_u) + ½ū g, ½g). Inside: v; in the polar cone: 0. A point on the
    cone's boundary to within 4 ulps counts as between (the boundary's element of the
    generalized Jacobian, as the ball chooses); the apex and the polar cone's boundary give 0.
    """
    shape = torch.broadcast_shapes(v.shape, y.shape)
    v, y = v.expand(shape), y.expand(shape)
    u, t = y[..., :-1], y[..., -1]
    s = torch.linalg.vector_norm(u, dim=-1)  # (...)
    polar = s <= -t
    inside = (s < t * (1 - 4 * torch.finfo(y.dtype).eps)) & ~polar
    between = ~inside & ~polar  # s > |t| here, so s > 0
    s_safe = torch.where(between, s, 1)
    unit = u / s_safe[..., None]  # (..., m)
    v_u, v_t = v[..., :-1], v[..., -1]
    radial = (unit * v_u).sum(-1)  # (...)
    alpha = (s + t) / (2 * s_safe)
    g = radial + v_t
    u_bar = alpha[..., None] * (v_u - unit * radial[..., None]) + 0.5 * unit * g[..., None]
    out = torch.cat([u_bar, (0.5 * g)[..., None]], -1)
    return torch.where(inside[..., None], v, torch.where(between[..., None], out, 0))
