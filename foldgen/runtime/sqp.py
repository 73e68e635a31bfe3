"""Sequential quadratic programming, U(s) = s + α (QP(s) − (0, λ, ν)), and its folded backward.

The state is s = (x, λ, ν): λ the multipliers of the inequality blocks g(x) ≤ 0, ν those of
the equality blocks h(x) = 0, each kind concatenated into one vector. `_sqp_solve` and
`_sqp_pullback` are the problem record's ``solve`` and ``backward``; ``p`` is the record:
its derived functions (``objective``, ``gradient``, ``init``, ``lagrangian_gradient``,
``lagrangian_hvp``, ``kkt_vjp``, and ``inequalities``/``equalities`` with their ``_vjp``
where the problem has constraints of that kind), the core rank of each block
(``ineq_ranks``, ``eq_ranks``) and its name in messages (``ineq_labels``, ``eq_labels``), how to evaluate each kind (``ineq_values``/``eq_values``:
`_sqp_inequalities`, `_sqp_equalities` or `_sqp_no_constraints`; ``ineq_jacobian``/
``eq_jacobian``: `_sqp_inequality_jacobian`, `_sqp_equality_jacobian` or
`_sqp_no_jacobian`) and the positions of the gradient parameters (``kkt_grad_indices``).
The QP itself is `foldgen.runtime.qp`'s.

The forward also sets ``layer.multipliers = (λ, ν)``, the multipliers at the returned x.
"""

import math

import torch

from foldgen.runtime.core import _as_tuple, _lift, _mv, _norm
from foldgen.runtime.layer import (
    SolveInfo,
    _adjoint,
    _indices,
    _report_groups,
    _structured_result,
)
from foldgen.runtime.qp import _kkt_matrix, _qp_polish, _qp_solve


def _check_step(step):
    if isinstance(step, bool) or not (isinstance(step, (int, float)) and 0 < step <= 1):
        raise ValueError(f"step: expected a number in (0, 1], got {step!r}")
    return float(step)


def _sqp_concat(blocks, ranks, batch):
    """Constraint blocks as one (..., m) vector (a scalar block is one entry)."""
    parts = [b[..., None] if r == 0 else b for b, r in zip(blocks, ranks)]
    return torch.cat([b.expand(*batch, b.shape[-1]) for b in parts], dim=-1)


def _sqp_split(t, sizes, ranks):
    """A (..., m) vector back into its blocks (a scalar block drops its axis)."""
    out, start = [], 0
    for size, rank in zip(sizes, ranks):
        part = t[..., start : start + size]
        out.append(part[..., 0] if rank == 0 else part)
        start += size
    return out


def _sqp_lifted(p, values):
    """The parameters with one extra batch axis before their core axes."""
    return [_lift(v, len(core)) for v, core in zip(values, p.parameters.values())]


def _sqp_lift_blocks(blocks, ranks):
    return [_lift(b, r) for b, r in zip(blocks, ranks)]


def _sqp_stack(function, ranks, x, values):
    """The blocks ``function(x, *values)`` as one (..., m) vector, and the blocks' sizes."""
    blocks = _as_tuple(function(x, *values))
    stacked = _sqp_concat(blocks, ranks, x.shape[:-1])
    return stacked, tuple(b.shape[-1] if r else 1 for b, r in zip(blocks, ranks))


def _sqp_inequalities(p, x, values):
    """g(x) (..., p) and its blocks' sizes."""
    return _sqp_stack(p.inequalities, p.ineq_ranks, x, values)


def _sqp_equalities(p, x, values):
    """h(x) (..., q) and its blocks' sizes."""
    return _sqp_stack(p.equalities, p.eq_ranks, x, values)


def _sqp_no_constraints(p, x, values):
    """No constraint of this kind: an empty (..., 0) vector of no blocks."""
    return x.new_zeros(*x.shape[:-1], 0), ()


def _sqp_constraints(p, x, values):
    """g(x) (..., p) and h(x) (..., q), the blocks concatenated, and the blocks' sizes."""
    g, g_sizes = p.ineq_values(p, x, values)
    h, h_sizes = p.eq_values(p, x, values)
    return g, h, (g_sizes, h_sizes)


def _sqp_block_jacobian(vjp, ranks, x, lifted, block_sizes):
    """The (..., m, n) Jacobian of one kind's blocks, row i = ∇ of entry i: the symbolic Jᵀw
    on the unit vectors w = eᵢ, which ride on one extra batch axis."""
    batch, n = x.shape[:-1], x.shape[-1]
    m = sum(block_sizes)
    unit = torch.eye(m, dtype=x.dtype, device=x.device).expand(*batch, m, m)
    x1 = _lift(x, 1)
    return vjp(x1, *_sqp_split(unit, block_sizes, ranks), *lifted).expand(*batch, m, n)


def _sqp_inequality_jacobian(p, x, lifted, block_sizes):
    return _sqp_block_jacobian(p.inequalities_vjp, p.ineq_ranks, x, lifted, block_sizes)


def _sqp_equality_jacobian(p, x, lifted, block_sizes):
    return _sqp_block_jacobian(p.equalities_vjp, p.eq_ranks, x, lifted, block_sizes)


def _sqp_no_jacobian(p, x, lifted, block_sizes):
    """No constraint of this kind: a (..., 0, n) Jacobian."""
    return x.new_zeros(*x.shape[:-1], 0, x.shape[-1])


def _sqp_jacobians(p, x, values, sizes):
    """J_g (..., p, n) and J_h (..., q, n), row i = ∇gᵢ (∇hᵢ)."""
    lifted = _sqp_lifted(p, values)
    return [
        p.ineq_jacobian(p, x, lifted, sizes[0]),
        p.eq_jacobian(p, x, lifted, sizes[1]),
    ]


def _sqp_multiplier_blocks(p, lam, nu, sizes):
    return [*_sqp_split(lam, sizes[0], p.ineq_ranks), *_sqp_split(nu, sizes[1], p.eq_ranks)]


def _sqp_hessian(p, x, lam, nu, values, sizes):
    """∇²ₓₓL(x, λ, ν) (..., n, n) from the symbolic ∇²ₓₓL u on the unit vectors."""
    batch, n = x.shape[:-1], x.shape[-1]
    blocks = _sqp_multiplier_blocks(p, lam, nu, sizes)
    multipliers = _sqp_lift_blocks(blocks, p.ineq_ranks + p.eq_ranks)
    unit = torch.eye(n, dtype=x.dtype, device=x.device).expand(*batch, n, n)
    lifted = _sqp_lifted(p, values)
    H = p.lagrangian_hvp(_lift(x, 1), *multipliers, unit, *lifted).expand(*batch, n, n)
    return (H + H.mT) / 2


def _sqp_linearization(p, x, lam, nu, values, sizes):
    """∇f, g, h, J_g, J_h and ∇²ₓₓL at (x, λ, ν), and ``finite``: False where any of them is
    not finite (entropy at 0, log at a bound). There they are replaced by harmless values
    (zeros, H = I), so that batched linear algebra runs; the caller flags those elements."""
    n = x.shape[-1]
    grad = p.gradient(x, *values).expand_as(x)
    g, h, _ = _sqp_constraints(p, x, values)
    J_g, J_h = _sqp_jacobians(p, x, values, sizes)
    H = _sqp_hessian(p, x, lam, nu, values, sizes)
    finite = torch.isfinite(H).all((-2, -1)) & torch.isfinite(grad).all(-1)
    for t in (g, h):
        finite = finite & torch.isfinite(t).all(-1)
    for t in (J_g, J_h):
        finite = finite & torch.isfinite(t).all((-2, -1))
    vector, matrix = finite[..., None], finite[..., None, None]
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    grad, g, h = (torch.where(vector, t, 0) for t in (grad, g, h))
    J_g, J_h = (torch.where(matrix, t, 0) for t in (J_g, J_h))
    return grad, g, h, J_g, J_h, torch.where(matrix, H, eye), finite


def _sqp_each(function, A, shape):
    """``function(A)`` over the batch; where LAPACK fails to converge on some element (torch
    then raises for the whole batch), element by element, NaN (of core ``shape``) for those
    that fail: one hard matrix must not abort the batch."""
    try:
        return function(A)
    except torch.linalg.LinAlgError:
        out = []
        for a in A.reshape(-1, *A.shape[-2:]):
            try:
                out.append(function(a))
            except torch.linalg.LinAlgError:
                out.append(a.new_full(shape, math.nan))
        return torch.stack(out).reshape(*A.shape[:-2], *shape)


def _sqp_regularization(H, J_g, J_h, active):
    """δ ≥ 0 so that H + δI is positive definite on the null space N of the equality and the
    estimated active inequality constraints (margin √eps · scale). Also ``ok``: False where
    δ could not be computed (non-finite data, or an eigen or singular value decomposition
    that failed); there δ = 0.

    Decided by the cheapest test that settles it, per element: H − margin·I positive
    definite (one Cholesky) gives δ = 0, H exceeding the margin on every subspace; H = 0
    gives δ = margin; only the others get the projector onto N and the eigenvalues
    (`_sqp_projected_delta`), gathered into a smaller batch. (A shortcut δ = 2·margin for
    every positive semidefinite H was tried and dropped: the margin scales with max|H|, and
    under an entropy's 1/x curvature that δ is large enough to stall the SQP.)
    """
    n = H.shape[-1]
    eye = torch.eye(n, dtype=H.dtype, device=H.device)
    ok = torch.isfinite(H).all((-2, -1)) & torch.isfinite(J_g).all((-2, -1))
    ok = ok & torch.isfinite(J_h).all((-2, -1))
    H = torch.where(ok[..., None, None], H, eye)
    scale = 1 + H.abs().amax((-2, -1))  # (...)
    margin = torch.finfo(H.dtype).eps ** 0.5 * scale
    _, info = torch.linalg.cholesky_ex(H - margin[..., None, None] * eye)
    definite = (info == 0) | ~ok
    delta = torch.zeros_like(scale)
    if bool(definite.all()):
        return delta, ok
    # A zero Hessian (a linear objective, the nonlinear constraints' multipliers 0) is 0 on
    # N too: δ = margin exactly, what the projector would give, without it.
    zero = (H == 0).all((-2, -1)) & ~definite
    delta = torch.where(zero, margin, delta)
    rest = ~definite & ~zero
    if not bool(rest.any()):
        return delta, ok
    batch, size = rest.shape, rest.numel()
    index = rest.reshape(-1).nonzero()[:, 0]
    rows = [
        t.expand(*batch, *t.shape[-2:]).reshape((size, *t.shape[-2:]))[index]
        for t in (H, J_g, J_h)
    ]
    chosen = active.expand(*batch, active.shape[-1]).reshape((size, active.shape[-1]))[index]
    delta_r, ok_r = _sqp_projected_delta(*rows, chosen, margin.reshape(-1)[index])
    delta = delta.reshape(-1).index_copy(0, index, delta_r).reshape(batch)
    ok = ok.reshape(-1).index_copy(0, index, ok_r & ok.reshape(-1)[index]).reshape(batch)
    return delta, ok


def _sqp_projected_delta(H, J_g, J_h, active, margin):
    """`_sqp_regularization`'s δ for an indefinite H: the eigenvalues of P H P + scale(I − P),
    P the projector onto N, are those of H on N and scale elsewhere; δ lifts the lowest to
    the margin. Rank-revealing as the QP's null projector: dependent rows (a degenerate
    vertex, a redundant equality) count once."""
    n = H.shape[-1]
    eye = torch.eye(n, dtype=H.dtype, device=H.device)
    M = torch.cat([J_h, J_g * active[..., None].to(H.dtype)], dim=-2)  # (k, q + p, n)
    scale = 1 + H.abs().amax((-2, -1))
    rtol = 10 * max(M.shape[-2:]) * torch.finfo(H.dtype).eps

    def pinv(A):
        return torch.linalg.pinv(A, rtol=rtol)

    P = eye - _sqp_each(pinv, M, (n, M.shape[-2])) @ M if M.shape[-2] else eye
    R = P @ H @ P + scale[..., None, None] * (eye - P)
    ok = torch.isfinite(R).all((-2, -1))
    R = torch.where(ok[..., None, None], R, eye)
    lowest = _sqp_each(torch.linalg.eigvalsh, (R + R.mT) / 2, (n,))[..., 0]
    ok = ok & torch.isfinite(lowest)
    return torch.where(ok, (margin - lowest).clamp_min(0), 0), ok


def _sqp_kkt_residual(p, x, lam, nu, g, h, values, sizes):
    """max(‖∇ₓL‖∞, ‖h‖∞, ‖g₊‖∞, ‖λ₋‖∞, max|λᵢ gᵢ|): how far (x, λ, ν) is from a KKT point."""
    multipliers = _sqp_multiplier_blocks(p, lam, nu, sizes)
    stationarity = p.lagrangian_gradient(x, *multipliers, *values)
    parts = [stationarity.expand_as(x), h, g.clamp_min(0), lam.clamp_max(0), lam * g]
    return torch.cat(parts, dim=-1).abs().amax(-1)


def _sqp_merit_step(p, x, d, lam_qp, nu_qp, values, sizes, step, penalty, todo):
    """The step t ≤ step along d: the full step where it shrinks the KKT residual (a guard
    against the Maratos effect) or where d is below rounding (x stays put; only the
    multipliers move, and φ's change is noise), else Armijo backtracking on
    φ = f + μ(‖h‖₁ + ‖g₊‖₁); trial points where f, ∇f or the constraints are not finite are
    rejected. Returns t (0 where no step was found) and which elements found one."""
    f = p.objective(x, *values)
    g, h, _ = _sqp_constraints(p, x, values)
    violation = h.abs().sum(-1) + g.clamp_min(0).sum(-1)
    phi = f + penalty * violation
    slope = (p.gradient(x, *values) * d).sum(-1) - penalty * violation  # D φ(x; d) bound
    slope = slope.clamp_max(0)
    kkt = _sqp_kkt_residual(p, x, lam_qp, nu_qp, g, h, values, sizes)
    t = torch.full_like(f, step).expand(todo.shape).clone()
    found = torch.zeros_like(todo)
    slack = 10 * torch.finfo(x.dtype).eps * phi.abs()
    for trial_index in range(60):
        trial = x + t[..., None] * d
        f_t = p.objective(trial, *values)
        g_t, h_t, _ = _sqp_constraints(p, trial, values)
        finite = torch.isfinite(f_t) & torch.isfinite(p.gradient(trial, *values)).all(-1)
        finite = finite & torch.isfinite(g_t).all(-1) & torch.isfinite(h_t).all(-1)
        phi_t = f_t + penalty * (h_t.abs().sum(-1) + g_t.clamp_min(0).sum(-1))
        ok = phi_t <= phi + 1e-4 * t * slope + slack
        if trial_index == 0:
            kkt_t = _sqp_kkt_residual(p, trial, lam_qp, nu_qp, g_t, h_t, values, sizes)
            negligible = d.abs().amax(-1) <= 10 * torch.finfo(x.dtype).eps * (1 + x.abs().amax(-1))
            ok = ok | (kkt_t <= 0.5 * kkt) | negligible
        ok = ok & finite & todo & ~found
        found = found | ok
        if bool((found | ~todo).all()):
            break
        t = torch.where(found, t, t / 2)
    return torch.where(found, t, 0), found


def _sqp_start(p, x, values, sizes):
    """The start, moved into the domain where it lies on its boundary: x itself where f and
    every derivative SQP uses are finite there, else the first of x ± s (1 + ‖x‖∞),
    s = 10⁻³, 10⁻², 10⁻¹, 1, where they are (entropy at x = 0 starts at 10⁻³). Returns it
    and ``found`` (False: no such point was found)."""
    x = torch.where(torch.isfinite(x), x, 0)
    lam_nu = [x.new_zeros(*x.shape[:-1], sum(block)) for block in sizes]

    def usable(point):
        finite = _sqp_linearization(p, point, *lam_nu, values, sizes)[-1]
        return finite & torch.isfinite(p.objective(point, *values))

    found = usable(x)
    scale = 1 + x.abs().amax(-1, keepdim=True)
    for shift in (1e-3, -1e-3, 1e-2, -1e-2, 1e-1, -1e-1, 1.0, -1.0):
        if bool(found.all()):
            break
        trial = x + shift * scale
        moved = ~found & usable(trial)
        x = torch.where(moved[..., None], trial, x)
        found = found | moved
    return x, found


def _sqp_violation(p, x, values):
    """max(‖h(x)‖∞, ‖g(x)₊‖∞): how far x is from satisfying the constraints."""
    g, h, _ = _sqp_constraints(p, x, values)
    parts = torch.cat([h.abs(), g.clamp_min(0)], dim=-1)
    return parts.amax(-1) if parts.shape[-1] else x.new_zeros(x.shape[:-1])


def _sqp_solve(p, layer, values, x_init, sizes, batch):
    """SQP from the init (or warm start), per batch element; returns x and the state the
    backward folds with (multipliers, the last step, block sizes, usable elements).

    An element converges when its step ‖U(s) − s‖ is at most tol and x satisfies the
    constraints to max(tol, √eps)(1 + ‖x‖∞). One stops, not converged, where a derivative
    stops being finite (``_sqp_linearization``) and is infeasible where a linearised QP has
    no solution or the iterates run away; the others are solved as if alone. Also sets
    ``layer.multipliers = (λ, ν)``.
    """
    start = p.init(*values) if x_init is None else x_init
    x = start.to(values[0]).expand(*batch, -1).clone()  # (..., n)
    g, h, block_sizes = _sqp_constraints(p, x, values)
    x, started = _sqp_start(p, x, values, block_sizes)
    lam = x.new_zeros(*batch, g.shape[-1])  # (..., p)
    nu = x.new_zeros(*batch, h.shape[-1])  # (..., q)
    step = torch.full(batch, layer.step, dtype=x.dtype, device=x.device)  # (...)
    penalty = torch.zeros(batch, dtype=x.dtype, device=x.device)
    iterations = torch.zeros(batch, dtype=torch.int64, device=x.device)
    residual = torch.full(batch, math.inf, dtype=x.dtype, device=x.device)
    feasible = torch.ones(batch, dtype=torch.bool, device=x.device)
    bounded = torch.ones_like(feasible)
    broken = ~started  # a derivative is not finite: stopped, not converged
    # Unboundedness: with r = 1 + ‖x₀‖∞, a step longer than 1e6 r three times in a row (the QP
    # is bounded only by δ along a direction of nonpositive curvature), or ‖x‖∞ past 1e12 r.
    reference = 1 + x.abs().amax(-1)
    huge_steps = torch.zeros_like(iterations)
    active = started.clone()
    warm = None  # the last QP's active set: the next QP's first guess
    for _ in range(layer.max_iter):
        if not bool(active.any()):
            break
        d, lam_qp, nu_qp, solved, _, sane = _sqp_subproblem(
            p, x, lam, nu, values, block_sizes, active, warm
        )
        broken = broken | (active & ~sane)
        feasible = feasible & (solved | ~active | ~sane)
        active = active & solved
        change = torch.cat([d, lam_qp - lam, nu_qp - nu], dim=-1)
        norm = layer.step * _norm(change)
        residual = torch.where(active, norm, residual)
        largest = torch.cat([lam_qp, nu_qp], dim=-1).abs()
        largest = largest.amax(-1) if largest.shape[-1] else torch.zeros_like(penalty)
        penalty = torch.where(active, torch.maximum(penalty, 2 * largest), penalty)
        t, found = _sqp_merit_step(
            p, x, d, lam_qp, nu_qp, values, block_sizes, layer.step, penalty, active
        )
        lam = torch.where(active[..., None], lam + t[..., None] * (lam_qp - lam), lam)
        nu = torch.where(active[..., None], nu + t[..., None] * (nu_qp - nu), nu)
        step = torch.where(active & found, t, step)
        warm = lam_qp > 0
        iterations = iterations + active.to(torch.int64)
        huge = d.abs().amax(-1) > 1e6 * reference
        huge_steps = torch.where(active & huge, huge_steps + 1, 0)
        x = torch.where(active[..., None], x + t[..., None] * d, x)
        far = ~(x.abs().amax(-1) <= 1e12 * reference)  # also where x is not finite
        bounded = bounded & ~(active & far) & (huge_steps < 3)
        active = active & found & bounded & (norm > layer.forward_tol)
    no_point = ~feasible  # a linearised QP had no solution
    feasible = feasible & bounded
    x = torch.where(torch.isfinite(x), x, 0)  # a diverging element ends where it was cut off
    violation = _sqp_violation(p, x, values)
    allowed = max(layer.forward_tol, torch.finfo(x.dtype).eps ** 0.5) * (1 + x.abs().amax(-1))
    satisfied = violation <= allowed
    converged = feasible & ~broken & satisfied & (residual <= layer.forward_tol)
    layer.info = SolveInfo(
        iterations,
        residual,
        converged,
        feasible,
        step,
        alpha=step,
        multipliers=(lam, nu),
        tol=layer.forward_tol,
    )
    layer.multipliers = (lam, nu)  # also in info.multipliers; kept for existing callers
    late = feasible & ~converged
    detail = _sqp_why(layer, residual, violation, satisfied, broken, late)
    groups = [(~late, detail)]
    if layer.on_nonconvergence != "ignore" and not bool(feasible.all()):
        reason = _sqp_infeasible_why(p, x, values, no_point, ~feasible & ~no_point)
        groups.append((feasible, reason))
    _report_groups(layer, "the forward solve", groups)
    return x, (lam, nu, step, block_sizes, feasible & ~broken)


def _sqp_why(layer, residual, violation, satisfied, broken, late):
    """What kept the ``late`` elements (feasible, not converged) from converging."""
    reasons = []
    slow = late & ~broken & (residual > layer.forward_tol)
    if bool(slow.any()):
        worst = float(torch.where(slow, residual, 0).max())
        reasons.append(
            f"residual up to {worst:.3g} > tol {layer.forward_tol:g} after {layer.max_iter} "
            "iterations (raise max_iter, or a step below 1 for a hard nonconvex problem)"
        )
    unmet = late & ~broken & ~satisfied
    if bool(unmet.any()):
        worst = float(torch.where(unmet, violation, 0).max())
        reasons.append(f"constraint violation up to {worst:.3g}")
    if bool((late & broken).any()):
        reasons.append("f, ∇f, the constraints or ∇²ₓₓL not finite at an iterate")
    return "; ".join(reasons)


def _sqp_elements(mask):
    """The batch elements where ``mask`` holds, as `_report` names them (at most 10)."""
    if mask.dim() == 0:
        return "the input"
    return "element(s) " + _indices(mask)


def _sqp_conflicts(p, x, values, which):
    """Per element where ``which``: the blocks in conflict at x, as a (..., blocks) bool.

    They are the blocks the least-squares point of the linearised constraints leaves
    violated, from the (always feasible) QP in (d, u)

        min ½‖u‖² + ½‖h + J_h d‖² + ½ε‖d‖²   s.t.   g + J_g d ≤ u,

    ε = √eps: its residual r = ((g + J_g d)₊, h + J_h d) is the constraints' least violation,
    and r ≠ 0 exactly on the rows of a Farkas certificate (Jᵀ r = 0), the rows that cannot
    hold together. A block is named where its largest entry of r is above 10⁻³ of the
    element's largest (and above 100√eps). Where that QP fails, the blocks x violates."""
    g, h, block_sizes = _sqp_constraints(p, x, values)
    J_g, J_h = _sqp_jacobians(p, x, values, block_sizes)
    finite = torch.isfinite(torch.cat([g, h], -1)).all(-1)
    finite = finite & torch.isfinite(torch.cat([J_g, J_h], -2)).all((-2, -1))
    g, h = (torch.where(finite[..., None], t, 0) for t in (g, h))
    J_g, J_h = (torch.where(finite[..., None, None], t, 0) for t in (J_g, J_h))
    batch, n, rows = x.shape[:-1], x.shape[-1], g.shape[-1]
    eps = torch.finfo(x.dtype).eps
    eye = torch.eye(n + rows, dtype=x.dtype, device=x.device)
    H = eye.expand(*batch, n + rows, n + rows).clone()
    H[..., :n, :n] = eps**0.5 * H[..., :n, :n] + J_h.mT @ J_h
    c = torch.cat([(J_h.mT @ h[..., None])[..., 0], g.new_zeros(*batch, rows)], -1)
    G = torch.cat([J_g, -eye[:rows, :rows].expand(*batch, rows, rows)], -1)
    A, e = x.new_zeros(*batch, 0, n + rows), x.new_zeros(*batch, 0)
    d, _, _, solved = _qp_solve(H, c, G, -g, A, e, which & finite)
    d = torch.where(solved[..., None], d[..., :n], 0)
    r = torch.cat(
        [(g + (J_g @ d[..., None])[..., 0]).clamp_min(0), h + (J_h @ d[..., None])[..., 0]], -1
    )
    r = torch.where(solved[..., None], r.abs(), torch.cat([g.clamp_min(0), h.abs()], -1))
    split = _sqp_split(r, block_sizes[0] + block_sizes[1], p.ineq_ranks + p.eq_ranks)
    per_block = [b[..., None] if b.dim() == len(batch) else b for b in split]
    worst = torch.stack([b.amax(-1) if b.shape[-1] else b.new_zeros(batch) for b in per_block], -1)
    largest = worst.amax(-1, keepdim=True) if worst.shape[-1] else worst.new_zeros(*batch, 1)
    limit = torch.clamp(1e-3 * largest, min=100 * eps**0.5)
    return (worst > limit) & which[..., None]


def _sqp_infeasible_why(p, x, values, no_point, unbounded):
    """Why the elements without a point (``no_point``) or ``unbounded`` are infeasible: the
    conflicting blocks by name (`_sqp_conflicts`), elements grouped by the blocks they name."""
    reasons = []
    if bool(no_point.any()):
        labels = tuple(p.ineq_labels) + tuple(p.eq_labels)
        named = _sqp_conflicts(p, x, values, no_point)
        groups: dict = {}
        for key in torch.unique(named[no_point], dim=0).tolist() if named.shape[-1] else [[]]:
            row = torch.tensor(key, dtype=torch.bool, device=named.device)
            mask = no_point & (named == row).all(-1) if named.shape[-1] else no_point
            groups[tuple(label for label, on in zip(labels, key) if on)] = mask
        parts = []
        for blocks, mask in sorted(groups.items(), key=lambda item: -int(item[1].sum())):
            where = _sqp_elements(mask)
            if blocks[1:]:
                parts.append(f"{', '.join(blocks[:-1])} and {blocks[-1]} conflict at {where}")
            elif blocks:
                parts.append(f"{blocks[0]} cannot hold at {where}")
            else:
                parts.append(f"no conflicting block identified at {where}")
        reasons.append("infeasible, a linearised QP has no point: " + "; ".join(parts))
    if bool(unbounded.any()):
        reasons.append(f"unbounded (the steps or iterates ran away) at {_sqp_elements(unbounded)}")
    return "; ".join(reasons)


def _sqp_subproblem(p, x, lam, nu, values, sizes, todo, warm=None):
    """The QP of one SQP step at s = (x, λ, ν): (d, λ_QP, ν_QP, solved, δ, sane), ``sane``
    False (and no step) where a derivative is not finite or δ could not be computed.
    ``warm``: the previous QP's active set, tried first (`_qp_solve`)."""
    grad, g, h, J_g, J_h, H, sane = _sqp_linearization(p, x, lam, nu, values, sizes)
    n = x.shape[-1]
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    delta, regular = _sqp_regularization(H, J_g, J_h, lam > -g)
    sane = sane & regular
    todo = todo & sane
    H_qp = H + delta[..., None, None] * eye
    d, lam_qp, nu_qp, solved = _qp_solve(H_qp, grad, J_g, -g, J_h, -h, todo, warm=warm)
    # The QP may be nonconvex off the estimated active set: there the interior point can fail,
    # or return a point of negative curvature dᵀ(H + δI)d (no descent for the merit). Then
    # convexify on the equality constraints' null space alone and solve again.
    curvature = (d * _mv(H_qp, d)).sum(-1)
    margin = torch.finfo(x.dtype).eps ** 0.5 * (1 + H.abs().amax((-2, -1)))
    retry = todo & (~solved | (curvature < margin * (d * d).sum(-1)))
    if bool(retry.any()):
        inactive = torch.zeros_like(g, dtype=torch.bool)
        delta_eq, regular = _sqp_regularization(H, J_g, J_h, inactive)
        retry = retry & regular
        H_eq = H + delta_eq[..., None, None] * eye
        again = _qp_solve(H_eq, grad, J_g, -g, J_h, -h, retry)
        d, lam_qp, nu_qp, solved = (
            torch.where(retry[..., None] if t.dim() > retry.dim() else retry, t_new, t)
            for t, t_new in zip((d, lam_qp, nu_qp, solved), again)
        )
        delta = torch.where(retry, delta_eq, delta)
    return d, lam_qp, nu_qp, solved & sane, delta, sane


def _sqp_update(p, x, lam, nu, values, sizes, active, step):
    """U(s) with the QP solved on a given active set from its KKT system (the QP's solution
    near a nondegenerate fixed point), in plain torch operations: the reference the layer's
    ``update_map`` unrolls with autograd (the solver itself never calls it)."""
    grad = p.gradient(x, *values).expand_as(x)
    g, h, _ = _sqp_constraints(p, x, values)
    J_g, J_h = _sqp_jacobians(p, x, values, sizes)
    H = _sqp_hessian(p, x, lam, nu, values, sizes)
    d, lam_qp, nu_qp, _ = _qp_polish(H, grad, J_g, -g, J_h, -h, active, math.inf)
    return x + step * d, lam + step * (lam_qp - lam), nu + step * (nu_qp - nu)


def _sqp_update_map(p, layer, x, state, values):
    """(s*, U, read) on the state s = (x, λ, ν) packed as (..., n + p + q): U solves the QP
    on the active set found at x* with the step frozen; ``read`` takes x out of s."""
    lam, nu, step, sizes = state[:4]
    g, _, _ = _sqp_constraints(p, x, values)
    active = lam > -g
    n, m = x.shape[-1], lam.shape[-1]

    def update(s):
        xs, ls, ns = s[..., :n], s[..., n : n + m], s[..., n + m :]
        out = _sqp_update(p, xs, ls, ns, values, sizes, active, step[..., None])
        return torch.cat(out, dim=-1)

    def read(s):
        return s[..., :n]

    batch = torch.broadcast_shapes(x.shape[:-1], lam.shape[:-1], nu.shape[:-1])
    parts = [t.expand(*batch, t.shape[-1]) for t in (x, lam, nu)]
    return torch.cat(parts, dim=-1), update, read


def _sqp_lu_apply(factors, v):
    """K⁻¹ v from K's LU factors, broadcasting v's extra leading axes.

    Where K has a unit axis that v fills (the dense backward's unit vectors), those vectors
    become the columns of one solve, instead of repeating K once per vector.
    """
    lu, pivots = factors
    size = v.shape[-1]
    if lu.dim() > 2 and v.dim() > 1 and lu.shape[-3] == 1 and v.shape[-2] > 1:
        lu, pivots = lu.squeeze(-3), pivots.squeeze(-2)
        batch = torch.broadcast_shapes(lu.shape[:-2], v.shape[:-2])
        columns = v.expand(*batch, *v.shape[-2:]).mT  # (..., N, k)
        lu, pivots = lu.expand(*batch, size, size), pivots.expand(*batch, size)
        return torch.linalg.lu_solve(lu, pivots, columns).mT
    batch = torch.broadcast_shapes(lu.shape[:-2], v.shape[:-1])
    lu = lu.expand(*batch, size, size)
    pivots = pivots.expand(*batch, size)
    return torch.linalg.lu_solve(lu, pivots, v.expand(*batch, size)[..., None])[..., 0]


def _sqp_phi_t(pieces, step):
    """v ↦ Φᵀv = v − α(0, v_λ, v_ν) − α(∇²ₓₓL w_x + J_gᵀ(1_A ⊙ w_λ) + J_hᵀ w_ν, 0, 0),
    w = K⁻¹v, for v = (v_x, v_λ, v_ν) of size n + p + q."""
    H, J_g, J_h, mask, factors = pieces
    n, rows = H.shape[-1], J_g.shape[-2]
    alpha = step[..., None]

    def phi_t(v):
        w = _sqp_lu_apply(factors, v)
        w_x, w_g, w_h = w[..., :n], mask * w[..., n : n + rows], w[..., n + rows :]
        top = _mv(H, w_x) + _mv(J_g.mT, w_g) + _mv(J_h.mT, w_h)
        out = v - alpha * torch.cat([top, v[..., n:]], dim=-1)
        return out

    return phi_t


class _SqpKkt:
    """The folded SQP system at a regular KKT point, in closed form.

    With w = K⁻¹v, the x-row of K w is (∇²ₓₓL + δI) w_x + J_gᵀ(1_A ⊙ w_λ) + J_hᵀ w_ν = v_x,
    so Φᵀv = v − α(v_x − δ w_x, v_λ, v_ν). With δ = 0 (`_sqp_pullback` uses it wherever the
    KKT matrix of ∇²ₓₓL itself factors, as at a point that satisfies second-order
    sufficiency) that is Φᵀ = (1 − α) I: the solution is v = g/α, and the gradient
    −kkt_vjp(K⁻¹g) is the implicit function theorem's one KKT solve, with the K the
    backward factored anyway. ``available`` only where δ = 0 for every usable element.
    """

    exact = True  # ``direct`` needs no dense LU: v = g/α is exact

    def __init__(self, step, delta, usable, size):
        self.step, self.size = step, size
        self.available = bool(((delta == 0) | ~usable).all())

    def dense(self):
        """Φᵀ = (1 − α) I as a matrix, (..., N, N)."""
        eye = torch.eye(self.size, dtype=self.step.dtype, device=self.step.device)
        return (1 - self.step)[..., None, None] * eye

    def solve(self, phi_t, g):
        """(v, iterations, residual) as the iterative solvers return them; the residual is
        that of (I − Φᵀ) v = g through ``phi_t`` itself (one more solve with K's factors)."""
        return _structured_result(phi_t, g / self.step[..., None], g)


def _sqp_pullback(p, layer, x, values, state, grad_x):
    """∂L/∂θ = Ψᵀv with (I − Φᵀ) v = (∂L/∂x, 0, 0), Φ and Ψ at the fixed point s*."""
    lam, nu, step, sizes, usable = state
    batch = torch.broadcast_shapes(grad_x.shape[:-1], x.shape[:-1])
    n = x.shape[-1]
    _, g, h, J_g, J_h, H, finite = _sqp_linearization(p, x, lam, nu, values, sizes)
    active = lam > -g  # the active set: multiplier larger than slack
    usable = usable & finite
    # The KKT matrix of ∇²ₓₓL itself first (δ = 0): wherever it is nonsingular it gives the
    # implicit function theorem's derivative, whatever δ the forward's QPs needed, and the
    # regularisation need not be decided again. Only where it is singular (a Hessian
    # singular on the active constraints' null space) does δ come back.
    K = _kkt_matrix(H, J_g, J_h, active)
    lu, pivots, info = torch.linalg.lu_factor_ex(K)
    factored = (info == 0) & torch.isfinite(lu).all(-1).all(-1)
    delta = torch.zeros(factored.shape, dtype=x.dtype, device=x.device)
    if not bool((factored | ~usable).all()):
        delta, regular = _sqp_regularization(H, J_g, J_h, active)
        usable = usable & regular
        H_qp = H + delta[..., None, None] * torch.eye(n, dtype=x.dtype, device=x.device)
        K = _kkt_matrix(H_qp, J_g, J_h, active)
        lu, pivots, info = torch.linalg.lu_factor_ex(K)
        factored = (info == 0) & torch.isfinite(lu).all(-1).all(-1)
    usable = usable & factored
    eye = torch.eye(K.shape[-1], dtype=K.dtype, device=K.device)
    lu = torch.where(usable[..., None, None], lu, eye)
    pivots = torch.where(usable[..., None], pivots, torch.arange(1, K.shape[-1] + 1).to(pivots))
    mask = active.to(x.dtype)
    pieces = (H, J_g, J_h, mask, (lu, pivots))
    phi_t = _sqp_phi_t(pieces, step)

    def dense_phi_t():
        lifted = tuple(_lift(t, 2) for t in (H, J_g, J_h)) + (_lift(mask, 1),)
        return _sqp_phi_t((*lifted, (_lift(lu, 2), _lift(pivots, 1))), _lift(step, 0))

    size = K.shape[-1]
    rhs = torch.cat([grad_x.expand(*batch, n), x.new_zeros(*batch, size - n)], dim=-1)
    structure = _SqpKkt(step.expand(batch), delta.expand(batch), usable.expand(batch), size)
    v = _adjoint(layer, phi_t, dense_phi_t, rhs, usable, structure)  # v = 0 where not usable
    grads = [None] * len(values)
    if p.kkt_grad_indices:
        # Ψᵀv = −α[(∂∇ₓL/∂θ)ᵀ w_x + (∂g/∂θ)ᵀ(1_A ⊙ w_λ) + (∂h/∂θ)ᵀ w_ν], w = K⁻¹v.
        w = _sqp_lu_apply((lu, pivots), v) * -step[..., None]
        rows = J_g.shape[-2]
        w_x, w_g, w_h = w[..., :n], mask * w[..., n : n + rows], w[..., n + rows :]
        multipliers = _sqp_multiplier_blocks(p, lam, nu, sizes)
        cotangents = [
            *_sqp_split(w_g, sizes[0], p.ineq_ranks),
            *_sqp_split(w_h, sizes[1], p.eq_ranks),
        ]
        found = p.kkt_vjp(x, *multipliers, w_x, *cotangents, *values)
        for index, bar in zip(p.kkt_grad_indices, _as_tuple(found)):
            grads[index] = bar
    return grads
