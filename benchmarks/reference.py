"""The float64 reference gradient: dense implicit differentiation of the KKT system.

Independent of foldgen's derivation: every derivative here comes from autograd on plain torch
expressions of the problem, one batch element at a time. At a solution x* with the active
constraints c(x; θ) = 0 (equalities and active inequalities) and multipliers ν from
∇f + Jᵀν = 0 (least squares), the KKT map F(x, ν; θ) = (∇ₓL, c) vanishes, so
dx*/dθ = −[K⁻¹ ∂F/∂θ]ₓ with K = [[∇²ₓₓL, Jᵀ], [J, 0]], and for a loss gradient g,
∂ℓ/∂θ = −(∂F/∂θ)ᵀ w with K w = (g, 0) (K is symmetric).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import grad, hessian, jacrev, vjp


@dataclass
class Local:
    """One element's problem near its solution: the objective and the constraints that hold
    with equality there, both as functions of (x, params)."""

    objective: Callable[[torch.Tensor, dict], torch.Tensor]
    active: Callable[[torch.Tensor, dict], torch.Tensor] | None = None


def kkt_gradient(local: Local, x: torch.Tensor, params: dict, g: torch.Tensor, names) -> dict:
    """∂ℓ/∂θ for the parameters ``names`` of one element (1-D x, unbatched params)."""
    x = x.detach().to(torch.float64)
    params = {k: v.detach().to(torch.float64) for k, v in params.items()}
    n = x.shape[0]

    def cons(x, p):
        if local.active is None:
            return x.new_zeros(0)
        return local.active(x, p)

    J = jacrev(cons)(x, params)  # (m, n)
    grad_f = grad(local.objective)(x, params)
    m = J.shape[0]
    if m:
        nu = torch.linalg.lstsq(J.T, -grad_f[:, None]).solution[:, 0]
    else:
        nu = x.new_zeros(0)

    def lagrangian(x, nu, p):
        return local.objective(x, p) + (nu * cons(x, p)).sum()

    H = hessian(lagrangian)(x, nu, params)
    K = torch.zeros(n + m, n + m, dtype=torch.float64)
    K[:n, :n] = 0.5 * (H + H.T)
    K[:n, n:] = J.T
    K[n:, :n] = J
    w = torch.linalg.solve(K, torch.cat([g.to(torch.float64), x.new_zeros(m)]))

    def kkt_map(p):
        return torch.cat([grad(lagrangian)(x, nu, p), cons(x, p)])

    _, pullback = vjp(kkt_map, params)
    (bars,) = pullback(w)
    return {k: -bars[k] for k in names}


def batched_kkt_gradient(local_of, x, params: dict, batched: set, g, names) -> dict:
    """kkt_gradient over the batch; parameters not in ``batched`` are shared, and their
    gradients are summed over the batch (as autograd sums them for a broadcast input)."""
    out = {k: [] for k in names}
    for i in range(x.shape[0]):
        p = {k: (v[i] if k in batched else v) for k, v in params.items()}
        grads = kkt_gradient(local_of(x[i], p), x[i], p, g[i], names)
        for k in names:
            out[k].append(grads[k])
    return {k: torch.stack(v) if k in batched else torch.stack(v).sum(0) for k, v in out.items()}


def relative_error(grads: dict, reference: dict) -> float:
    """‖grads − reference‖ / ‖reference‖ over all the parameters together."""
    num = sum(float((grads[k].detach() - reference[k]).norm() ** 2) for k in reference)
    den = sum(float(reference[k].norm() ** 2) for k in reference)
    return (num / den) ** 0.5


# ---------------------------------------------------------------------------------------------
# Floors: what the exact answer costs once the solution's active structure is known. Each
# builder does the bookkeeping (active sets, gathers, padding) outside and returns the timed
# part alone: a factorisation of the system that decides x* and its gradient, and its solves.


def padded_indices(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, valid), both (B, k) with k the largest count of True in a row of ``mask``:
    each row's True positions first (padded with its other positions), and which are real."""
    k = max(int(mask.sum(-1).max()), 1)
    order = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True)[:, :k]
    return order, torch.gather(mask, 1, order)


def free_block_cholesky(H: torch.Tensor, free: torch.Tensor, g: torch.Tensor):
    """The exact active-set gradient of a box-constrained (or unconstrained) quadratic:
    −(H_FF)⁻¹ g_F on each element's free set F, 0 elsewhere, by one batched Cholesky of the
    free block padded to the batch's largest free set (identity on the padding). H is the
    shared (n, n) Hessian, free a (B, n) mask, g the (B, n) loss gradient.

    Returns ``solve(rhs)`` (the timed part: the Cholesky and the two triangular solves of the
    padded system for a (B, n) right-hand side, scattered back) and the gathered g."""
    index, valid = padded_indices(free)
    k = index.shape[1]
    both = valid[:, :, None] & valid[:, None, :]
    eye = torch.eye(k, dtype=H.dtype).expand_as(both)
    block = torch.where(both, H[index[:, :, None], index[:, None, :]], eye)

    def solve(rhs):
        factor = torch.linalg.cholesky(block)
        part = torch.gather(rhs, 1, index).masked_fill(~valid, 0)
        y = torch.cholesky_solve(part[..., None], factor)[..., 0].masked_fill(~valid, 0)
        return torch.zeros_like(rhs).scatter(1, index, y)

    return solve


def kkt_lu(H: torch.Tensor, J: torch.Tensor, valid: torch.Tensor, corner=None):
    """``solve(rhs)``: one batched LU of K = [[H, Jᵀ], [J, C]] and its solve, with H (n, n)
    or (B, n, n) and J (B, m, n) the active constraints' rows padded to the batch's largest
    count (``valid`` (B, m) marks the real ones; the padding is an identity block). C is 0
    on the real rows, or ``corner`` (B, m) there (an interior point's −S/Λ block)."""
    B, m, n = J.shape
    K = torch.zeros(B, n + m, n + m, dtype=J.dtype)
    K[:, :n, :n] = H
    J = J.masked_fill(~valid[..., None], 0)
    K[:, n:, :n] = J
    K[:, :n, n:] = J.mT
    diagonal = (~valid).to(J.dtype)
    if corner is not None:
        diagonal = torch.where(valid, corner, diagonal)
    K[:, n:, n:] = torch.diag_embed(diagonal)

    def solve(rhs):  # rhs (B, n + m)
        lu, pivots = torch.linalg.lu_factor(K)
        return torch.linalg.lu_solve(lu, pivots, rhs[..., None])[..., 0]

    return solve
