"""PGD's feasible sets: each closed-form projection behind one interface.

A set is a `_FeasibleSet` record of functions over its data S (the tensors ``_set_data``
derives, after ``prepare``): ``project(y, d, S) -> (x, nonempty)`` in the metric diag(d)⁻¹ of
the step, ``project_vjp(v, x, y, d, S) -> (ȳ, S̄)``, ``violation(x, S)`` (the relative
constraint violation at x), ``unprepare_bars`` (S̄ back to the derived data's shapes) and
``ranks`` (the core ranks of S, for the dense backward's extra batch axis). The rule's plan
picks one record; the projections themselves are in `foldgen.runtime.projections`.
"""

import dataclasses

import torch

from foldgen.runtime.core import _as_tuple, _mv, _norm
from foldgen.runtime.projections import (
    _affine_factor,
    _proj_affine,
    _proj_affine_vjp,
    _proj_ball,
    _proj_ball_vjp,
    _proj_box,
    _proj_box_sum,
    _proj_box_sum_vjp,
    _proj_box_vjp,
    _proj_box_wsum,
    _proj_box_wsum_vjp,
    _proj_halfspace,
    _proj_halfspace_vjp,
    _proj_l1ball,
    _proj_l1ball_vjp,
    _proj_psd,
    _proj_psd_vjp,
    _proj_soc,
    _proj_soc_vjp,
    _psd_min_eigenvalue,
)


@dataclasses.dataclass(frozen=True)
class _FeasibleSet:
    """One feasible-set family: its projection, the projection's VJP and its violation."""

    ranks: tuple
    prepare: object
    project: object
    project_vjp: object
    unprepare_bars: object
    violation: object
    empty: str = "the constraints admit no point"  # why a `nonempty` False element has none
    #: The form of the projection's Jacobian J_P, which the active-set backward relies on:
    #: "diagonal" (a 0/1 diagonal in any metric: the free set), "projector" (a symmetric
    #: orthogonal projector onto the active face's tangent space, in the Euclidean metric,
    #: i.e. for a scalar step) or "general" (no structure claimed).
    jacobian: str = "general"
    #: The projection alone, (y, d, S) -> x, where that is cheaper than ``project``'s
    #: (x, nonempty) pair: the loops test nonemptiness once, not at every iteration.
    point: object = None


def _project_point(feasible_set):
    """(y, d, S) -> x: ``point`` where the set has one, else ``project``'s first part."""
    if feasible_set.point is not None:
        return feasible_set.point
    project = feasible_set.project
    return lambda y, d, S: project(y, d, S)[0]


def _same(data):
    return data


def _magnitude(*parts):
    """The largest finite |entry| among the parts, per element (at least the smallest normal)."""
    out = None
    for part in parts:
        m = torch.where(torch.isfinite(part), part.abs(), 0).amax(-1)
        out = m if out is None else torch.maximum(out, m)
    return out.clamp_min(torch.finfo(out.dtype).tiny)


# All of space (no constraint): the set has no data.


def _no_set_data(x, *values):
    return ()


def _space_project(y, d, S):
    return y, torch.ones(y.shape[:-1], dtype=torch.bool, device=y.device)


def _space_project_vjp(v, x, y, d, S):
    return v, ()


def _space_violation(x, S):
    return torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)


_SPACE = _FeasibleSet(
    (),
    _same,
    _space_project,
    _space_project_vjp,
    _same,
    _space_violation,
    jacobian="diagonal",
)


# The box lo ≤ x ≤ hi (clamp; any metric gives the same projection).


def _box_point(y, d, S):
    return _proj_box(y, *S)


def _box_project(y, d, S):
    lo, hi = S
    return _box_point(y, d, S), (lo <= hi).all(-1)


def _box_project_vjp(v, x, y, d, S):
    lo, hi = S
    y_bar, lo_bar, hi_bar = _proj_box_vjp(v, y, lo, hi)
    return y_bar, (lo_bar, hi_bar)


def _box_violation(x, S):
    """max(lo − x, x − hi, 0) relative to the magnitudes of x and the finite bounds."""
    lo, hi = S
    excess = torch.maximum(lo - x, x - hi).clamp_min(0).amax(-1)
    return excess / _magnitude(x, lo, hi)


_BOX = _FeasibleSet(
    (1, 1),
    _same,
    _box_project,
    _box_project_vjp,
    _same,
    _box_violation,
    "the bounds conflict: a lower bound exceeds its upper bound",
    jacobian="diagonal",
    point=_box_point,
)


# lo ≤ x ≤ hi with Σx = k, projected in the metric diag(d)⁻¹ of the step.


def _box_sum_project(y, d, S):
    lo, hi, k = S
    return _proj_box_sum(y, lo, hi, k, d)


def _box_sum_project_vjp(v, x, y, d, S):
    lo, hi, k = S
    y_bar, lo_bar, hi_bar, k_bar = _proj_box_sum_vjp(v, x, lo, hi, d)
    return y_bar, (lo_bar, hi_bar, k_bar)


def _box_sum_violation(x, S):
    """The bounds' and |Σx − k|'s violation, relative to the magnitudes of x, k and the bounds."""
    lo, hi, k = S
    excess = torch.maximum(lo - x, x - hi).clamp_min(0).amax(-1)
    scale = torch.maximum(_magnitude(x, lo, hi), torch.maximum(x.abs().sum(-1), k.abs()))
    return torch.maximum(excess, (x.sum(-1) - k).abs()) / scale


_BOX_SUM = _FeasibleSet(
    (1, 1, 0),
    _same,
    _box_sum_project,
    _box_sum_project_vjp,
    _same,
    _box_sum_violation,
    "the bounds and the sum constraint conflict: lo > hi somewhere, or sum(lo) > k, or "
    "sum(hi) < k",
    jacobian="projector",
)


# lo ≤ x ≤ hi with wᵀx = c (a weighted budget), projected in the metric diag(d)⁻¹ of the step.


def _box_wsum_project(y, d, S):
    lo, hi, w, c = S
    return _proj_box_wsum(y, lo, hi, w, c, d)


def _box_wsum_project_vjp(v, x, y, d, S):
    lo, hi, w, c = S
    y_bar, lo_bar, hi_bar, w_bar, c_bar = _proj_box_wsum_vjp(v, x, y, lo, hi, w, d)
    return y_bar, (lo_bar, hi_bar, w_bar, c_bar)


def _box_wsum_violation(x, S):
    """The bounds' and |wᵀx − c|'s violation, relative to the magnitudes of x, the bounds,
    Σ|wᵢxᵢ| and c."""
    lo, hi, w, c = S
    excess = torch.maximum(lo - x, x - hi).clamp_min(0).amax(-1)
    scale = torch.maximum(_magnitude(x, lo, hi), torch.maximum((w * x).abs().sum(-1), c.abs()))
    return torch.maximum(excess, ((w * x).sum(-1) - c).abs()) / scale


_BOX_WSUM = _FeasibleSet(
    (1, 1, 1, 0),
    _same,
    _box_wsum_project,
    _box_wsum_project_vjp,
    _same,
    _box_wsum_violation,
    "the bounds and the weighted sum conflict: lo > hi somewhere, or c lies outside the "
    "range of wᵀx over the box",
    jacobian="projector",
)


# The affine set A x = b (one pseudo-inverse of A Aᵀ per solve, rank-revealing: dependent
# rows are allowed where b is consistent); a single row a·x = b is lifted to a 1 × n system.


def _affine_prepare(data):
    A, b = data
    return A, b, _affine_factor(A, b)


def _affine_row_prepare(data):
    a, b = data
    return _affine_prepare((a[..., None, :], b[..., None]))


def _affine_project(y, d, S):
    """The projection, and where A x = b has a point (b in the range of A); elsewhere y
    itself (finite, reported)."""
    A, b, W = S
    ok = torch.isfinite(W).all(-1).all(-1)
    x = torch.where(ok[..., None], _proj_affine(y, A, b, W), y)
    return x, ok


def _affine_project_vjp(v, x, y, d, S):
    A, b, W = S
    ok = torch.isfinite(W).all(-1).all(-1)
    y_bar, A_bar, b_bar = _proj_affine_vjp(v, x, y, A, b, W)
    y_bar = torch.where(ok[..., None], y_bar, 0)  # no projection there: nothing to fold
    A_bar = torch.where(ok[..., None, None], A_bar, 0)
    return y_bar, (A_bar, torch.where(ok[..., None], b_bar, 0))


def _affine_violation(x, S):
    """‖Ax − b‖∞ relative to the magnitudes of Σⱼ|Aᵢⱼxⱼ| and b."""
    A, b, _ = S
    terms = (A.abs() @ x.abs()[..., None])[..., 0]  # (..., m)
    scale = torch.maximum(terms.amax(-1), b.abs().amax(-1)).clamp_min(torch.finfo(x.dtype).tiny)
    return (_mv(A, x) - b).abs().amax(-1) / scale


def _affine_row_unprepare(bars):
    A_bar, b_bar = bars
    return A_bar[..., 0, :], b_bar[..., 0]


_AFFINE_EMPTY = (
    "the equality constraints conflict: b is not in the range of A (linearly dependent rows "
    "of A ask for different values, or a zero row for a nonzero value)"
)
_AFFINE = _FeasibleSet(
    (2, 1, 2),
    _affine_prepare,
    _affine_project,
    _affine_project_vjp,
    _same,
    _affine_violation,
    _AFFINE_EMPTY,
    jacobian="projector",
)
_AFFINE_ROW = _FeasibleSet(
    (2, 1, 2),
    _affine_row_prepare,
    _affine_project,
    _affine_project_vjp,
    _affine_row_unprepare,
    _affine_violation,
    _AFFINE_EMPTY,
    jacobian="projector",
)


# The half-space a·x ≤ b.


def _halfspace_project(y, d, S):
    a, b = S
    return _proj_halfspace(y, a, b), ((a * a).sum(-1) > 0) | (b >= 0)


def _halfspace_project_vjp(v, x, y, d, S):
    a, b = S
    y_bar, a_bar, b_bar = _proj_halfspace_vjp(v, y, a, b)
    return y_bar, (a_bar, b_bar)


def _halfspace_violation(x, S):
    """max(a·x − b, 0) relative to Σ|aᵢxᵢ| and |b|."""
    a, b = S
    scale = torch.maximum((a * x).abs().sum(-1), b.abs()).clamp_min(torch.finfo(x.dtype).tiny)
    return ((a * x).sum(-1) - b).clamp_min(0) / scale


_HALFSPACE = _FeasibleSet(
    (1, 0),
    _same,
    _halfspace_project,
    _halfspace_project_vjp,
    _same,
    _halfspace_violation,
    "the half-space is empty: a = 0 with b < 0",
    jacobian="projector",
)


# The Euclidean ball ‖x − c‖ ≤ r.


def _ball_project(y, d, S):
    c, r = S
    return _proj_ball(y, c, r), r >= 0


def _ball_project_vjp(v, x, y, d, S):
    c, r = S
    y_bar, c_bar, r_bar = _proj_ball_vjp(v, y, c, r)
    return y_bar, (c_bar, r_bar)


def _ball_violation(x, S):
    """max(‖x − c‖ − r, 0) relative to r, ‖x‖ and ‖c‖."""
    c, r = S
    scale = torch.maximum(torch.maximum(_norm(x), _norm(c)), r)
    return (_norm(x - c) - r).clamp_min(0) / scale.clamp_min(torch.finfo(x.dtype).tiny)


_BALL = _FeasibleSet(
    (1, 0),
    _same,
    _ball_project,
    _ball_project_vjp,
    _same,
    _ball_violation,
    "the ball is empty: its radius is negative",
)


# The l1 ball ‖x − c‖₁ ≤ r (Euclidean projection: soft-thresholding at the right level).


def _l1ball_project(y, d, S):
    c, r = S
    return _proj_l1ball(y, c, r), r >= 0


def _l1ball_project_vjp(v, x, y, d, S):
    c, r = S
    y_bar, c_bar, r_bar = _proj_l1ball_vjp(v, y, c, r)
    return y_bar, (c_bar, r_bar)


def _l1ball_violation(x, S):
    """max(‖x − c‖₁ − r, 0) relative to r, ‖x‖₁ and ‖c‖₁."""
    c, r = S
    scale = torch.maximum(torch.maximum(x.abs().sum(-1), c.abs().sum(-1)), r)
    excess = ((x - c).abs().sum(-1) - r).clamp_min(0)
    return excess / scale.clamp_min(torch.finfo(x.dtype).tiny)


_L1BALL = _FeasibleSet(
    (1, 0),
    _same,
    _l1ball_project,
    _l1ball_project_vjp,
    _same,
    _l1ball_violation,
    "the l1 ball is empty: its radius is negative",
    jacobian="projector",
)


# The PSD cone X − M ⪰ 0 (X, M n × n flattened row-major to n²; Euclidean projection of the
# symmetric part through one eigendecomposition: any non-symmetric point is projected exactly).


def _psd_prepare(data):
    """The one datum M (a derived function of one output returns it bare) as S = (M,)."""
    return _as_tuple(data)


def _psd_project(y, d, S):
    (m,) = S
    return _proj_psd(y, m), torch.ones(y.shape[:-1], dtype=torch.bool, device=y.device)


def _psd_project_vjp(v, x, y, d, S):
    (m,) = S
    y_bar, m_bar = _proj_psd_vjp(v, y, m)
    return y_bar, (m_bar,)


def _psd_violation(x, S):
    """max(−λmin(sym(X − M)), |skew(X − M)|, 0) relative to the magnitudes of X and M."""
    (m,) = S
    low, skew = _psd_min_eigenvalue(x, m)
    return torch.maximum((-low).clamp_min(0), skew) / _magnitude(x, m)


_PSD = _FeasibleSet(
    (1,),
    _psd_prepare,
    _psd_project,
    _psd_project_vjp,
    _same,
    _psd_violation,
)


# The second-order cone ‖u‖ ≤ t on the whole state x = (u, t) (no data: the cone is fixed).


def _soc_project(y, d, S):
    return _proj_soc(y), torch.ones(y.shape[:-1], dtype=torch.bool, device=y.device)


def _soc_project_vjp(v, x, y, d, S):
    return _proj_soc_vjp(v, y), ()


def _soc_violation(x, S):
    """max(‖u‖ − t, 0) relative to ‖u‖ and |t|."""
    u, t = x[..., :-1], x[..., -1]
    s = _norm(u)
    scale = torch.maximum(s, t.abs()).clamp_min(torch.finfo(x.dtype).tiny)
    return (s - t).clamp_min(0) / scale


_SOC = _FeasibleSet((), _same, _soc_project, _soc_project_vjp, _same, _soc_violation)
