"""Proximal maps and their vector-Jacobian products for the ADMM rule (batched, torch only).

Vectors are (..., m), scalars (...); leading batch dims broadcast. As in projections.py,
every VJP returns one cotangent per input it names with the FULL broadcast shape of its
inputs (the caller sums to the parameters' shapes), and at a kink (|y| exactly at the
threshold) returns one valid element of the generalized Jacobian. The box and ball
indicators use ``_proj_box`` / ``_proj_ball`` of projections.py.

The code generator copies top-level functions of this file verbatim into generated modules.
"""

import torch


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
