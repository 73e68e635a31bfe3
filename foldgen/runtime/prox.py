"""Proximal maps and their vector-Jacobian products for the ADMM rule (batched, torch only).

Vectors are (..., m), scalars (...); leading batch dims broadcast. As in projections.py,
every VJP returns one cotangent per input it names with the FULL broadcast shape of its
inputs (the caller sums to the parameters' shapes), and at a kink (|y| exactly at the
threshold) returns one valid element of the generalized Jacobian. The box and ball
indicators use ``_proj_box`` / ``_proj_ball`` of projections.py.

The code generator copies top-level functions of this file verbatim into generated modules.
"""

import torch

from foldgen.runtime.projections import (
    _proj_box_sum,
    _proj_box_sum_vjp,
    _proj_l1ball,
    _proj_l1ball_vjp,
)


def _prox_l1(w, o, t):
    """prox of z -> c |z + o|_1 with threshold t = c / rho: soft-threshold w + o at t, minus o.

    w, o (..., m); t (...) >= 0.
    """
    y = w + o  # (..., m)
    return torch.sign(y) * torch.clamp(y.abs() - t[..., None], min=0) - o


def _prox_l1_vjp(v, w, o, t):
    """VJP of _prox_l1; returns (w_bar, o_bar, t_bar).

    With y = w + o and the active set |y| > t: dz/dw = diag(active), dz/do = diag(active) - I,
    dz/dt = -sign(y) on the active set. A component exactly at the threshold counts as
    inactive (the forward returns -o there).
    """
    y = w + o  # (..., m)
    active = y.abs() > t[..., None]
    w_bar = torch.where(active, v, 0)  # (..., m)
    o_bar = torch.where(active, 0, -v)
    t_bar = -torch.where(active, torch.sign(y) * v, 0).sum(-1)  # (...)
    shape = torch.broadcast_shapes(v.shape, w.shape, o.shape, t.shape + (1,))
    return w_bar.expand(shape), o_bar.expand(shape), t_bar.expand(shape[:-1])


def _prox_linf(w, o, t):
    """prox of z -> c |z + o|_inf with t = c / rho, by Moreau's identity: with y = w + o,
    y - P(y) with P the projection onto the l1 ball of radius t (the dual norm's), minus o.

    w, o (..., m); t (...) >= 0.
    """
    y = w + o
    return y - _proj_l1ball(y, torch.zeros_like(y), t) - o


def _prox_linf_vjp(v, w, o, t):
    """VJP of _prox_linf; returns (w_bar, o_bar, t_bar): z = y - P(y; t) - o gives
    w_bar = v - J_Pᵀv, o_bar = -J_Pᵀv, t_bar = -(∂P/∂t)ᵀv (the l1 ball's radius cotangent)."""
    y = w + o
    p_bar, _, r_bar = _proj_l1ball_vjp(v, y, torch.zeros_like(y), t)
    w_bar = v - p_bar
    shape = torch.broadcast_shapes(v.shape, w.shape, o.shape, t.shape + (1,))
    return w_bar.expand(shape), (-p_bar).expand(shape), (-r_bar).expand(shape[:-1])


def _prox_sum_largest(w, o, t, k):
    """prox of z -> c sum_largest(z + o, k) with t = c / rho: sum_largest is the support
    function of C = {0 <= u <= 1, sum(u) = k}, so by Moreau's identity, with y = w + o, it is
    y - P(y) with P the projection onto t C = {0 <= u <= t, sum(u) = t k}, minus o.

    w, o (..., m); t, k (...).
    """
    y = w + o
    lo = torch.zeros_like(y)
    hi = t[..., None].expand_as(y)
    return y - _proj_box_sum(y, lo, hi, t * k, torch.ones_like(y))[0] - o


def _prox_sum_largest_vjp(v, w, o, t, k):
    """VJP of _prox_sum_largest; returns (w_bar, o_bar, t_bar). P depends on y, on the upper
    bound t·1 and on the sum t k: t_bar = -(Σ hi_bar + k k_bar) of P's VJP."""
    y = w + o
    lo = torch.zeros_like(y)
    hi = t[..., None].expand_as(y)
    ones = torch.ones_like(y)
    x, _ = _proj_box_sum(y, lo, hi, t * k, ones)
    p_bar, _, hi_bar, k_bar = _proj_box_sum_vjp(v, x, lo, hi, ones)
    w_bar = v - p_bar
    t_bar = -(hi_bar.sum(-1) + k * k_bar)
    shape = torch.broadcast_shapes(v.shape, w.shape, o.shape, t.shape + (1,))
    return w_bar.expand(shape), (-p_bar).expand(shape), t_bar.expand(shape[:-1])


def _prox_hinge(w, o, t):
    """prox of z -> c sum(max(z + o, 0)) with t = c / rho: with y = w + o, y − t above t,
    0 on [0, t], y below 0; minus o.

    w, o (..., m); t (...) >= 0.
    """
    y = w + o
    t = t[..., None]
    return torch.where(y > t, y - t, torch.where(y < 0, y, torch.zeros_like(y))) - o


def _prox_hinge_vjp(v, w, o, t):
    """VJP of _prox_hinge; returns (w_bar, o_bar, t_bar): dz/dw = 1 off [0, t] (0 on it,
    where the prox is flat), dz/do = dz/dw − 1, dz/dt = −1 above t. A component exactly at 0
    or t counts as on the flat part."""
    y = w + o
    above = y > t[..., None]
    moving = above | (y < 0)
    w_bar = torch.where(moving, v, 0)
    o_bar = torch.where(moving, 0, -v)
    t_bar = -torch.where(above, v, 0).sum(-1)
    shape = torch.broadcast_shapes(v.shape, w.shape, o.shape, t.shape + (1,))
    return w_bar.expand(shape), o_bar.expand(shape), t_bar.expand(shape[:-1])


def _prox_l2(w, o, t):
    """prox of z -> c |z + o|_2 with t = c / rho (block soft-thresholding, the group lasso's):
    with y = w + o, y (1 − t/|y|) where |y| > t, else 0; minus o.

    w, o (..., m); t (...) >= 0.
    """
    y = w + o
    s = torch.linalg.vector_norm(y, dim=-1)
    scale = (1 - t / s.clamp_min(torch.finfo(y.dtype).tiny)).clamp_min(0)
    return y * scale[..., None] - o


def _prox_l2_vjp(v, w, o, t):
    """VJP of _prox_l2; returns (w_bar, o_bar, t_bar). Where |y| = s > t the Jacobian is
    (1 − t/s) I + (t/s³) y yᵀ (symmetric) and dz/dt = −y/s; elsewhere it is 0 (|y| = t
    exactly counts as shrunk to 0)."""
    y = w + o
    s = torch.linalg.vector_norm(y, dim=-1)
    active = s > t
    safe = torch.where(active, s, torch.ones_like(s))
    unit = y / safe[..., None]
    radial = (unit * v).sum(-1)
    j_v = (1 - t / safe)[..., None] * v + (t / safe * radial)[..., None] * unit
    w_bar = torch.where(active[..., None], j_v, 0)
    t_bar = -torch.where(active, radial, 0)
    shape = torch.broadcast_shapes(v.shape, w.shape, o.shape, t.shape + (1,))
    return w_bar.expand(shape), (w_bar - v).expand(shape), t_bar.expand(shape[:-1])
