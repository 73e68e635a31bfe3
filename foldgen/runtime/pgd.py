"""Projected gradient descent, U(x) = P_C(x − D∇f(x)), and its folded backward.

One solve function per step mode (the plan picks one at build time): ``fixed`` (a given α),
``lipschitz`` (α = 1/L on a quadratic f, accelerated), ``scaled`` (D = diag(1/h) from the
Hessian diagonal, with backtracking) and ``bb`` (Barzilai–Borwein with backtracking). Each
takes ``(p, layer, values, x_init, sizes, batch)`` and returns x and what the backward folds
with, ``(D, S)``; `_pgd_pullback` is the same for all. ``p`` is the problem record (its
derived functions, ``p.set`` its `foldgen.runtime.sets._FeasibleSet`).

Stopping is relative (see `_Track`): ‖U(x) − x‖ ≤ tol · σ. An iterate with ‖x‖∞ beyond
_RUNAWAY / tol times the data's scale has left every bounded solution behind (the relative
test could no longer see a step of the data's own size): the element is stopped and
reported as diverged. Feasibility of the returned point is checked to `_feasibility_tol`.
"""

import math

import torch

from foldgen.runtime.core import _as_tuple, _lift, _mv, _norm
from foldgen.runtime.layer import (
    _DIVERGED,
    SolveInfo,
    _adjoint,
    _report_groups,
    _structured_result,
    _trend,
)
from foldgen.runtime.linsolve import _cholesky_solve
from foldgen.runtime.sets import _project_point

_RUNAWAY = 0.5
_CHECK_EVERY = 10  # iterations between runaway checks of the plain loop


def _runaway(tol):
    """_RUNAWAY / tol; with tol = 0 (a run of exactly max_iter iterations) nothing runs away."""
    return _RUNAWAY / tol if tol > 0 else math.inf


def _feasibility_tol(tol, dtype):
    """Relative constraint violation accepted at the returned point (projections are exact to
    rounding; this only catches a projection that lost its digits)."""
    return max(tol, math.sqrt(torch.finfo(dtype).eps))


def _check_step_size(step_size):
    if step_size != "auto" and not (isinstance(step_size, (int, float)) and step_size > 0):
        raise ValueError(f"step_size: expected 'auto' or a positive number, got {step_size!r}")
    return step_size


def _reference_scale(p, x, values):
    """σ₀ = max(‖x‖∞, α‖∇f(x)‖∞), α = ‖∇f‖ / ‖∇²f ∇f‖, at the projected default start x.

    The data's own scale in the units of x (α∇f is a Newton-like step), computed from the
    spec's init, never from a warm start: it scales with the data, so scaling the data scales
    the stopping test with it, and a far warm start cannot loosen it. Non-finite or
    curvature-free (linear f) pieces count as 0.
    """
    g = p.gradient(x, *values)
    curvature = _norm(p.hvp(x, g, *values))
    usable = torch.isfinite(curvature) & (curvature > 0)
    alpha = torch.where(usable, _norm(g) / torch.where(usable, curvature, 1), 0)
    step = alpha * g.abs().amax(-1)
    step = torch.where(torch.isfinite(step), step, 0)
    return torch.maximum(x.abs().amax(-1), step)


class _Track:
    """Per-element bookkeeping of the forward loop, in few batched operations (at small
    sizes their number, not their arithmetic, is what an iteration costs).

    ``step(x, U(x))`` records ‖U(x) − x‖ and its bound tol · max(σ₀, ‖U(x)‖∞), and retires
    the elements that meet the bound. Where U(x) is not finite the bound is NaN or ∞, the
    comparison fails and the element retires too. ``check(x)``, every _CHECK_EVERY
    iterations, retires as diverged the elements beyond the runaway limit and keeps a copy
    of the others' x, which ``finish`` returns where the final x is not finite.
    """

    def __init__(self, layer, reference, start, feasible):
        self.tol = layer.forward_tol
        self.reference = reference  # σ₀, (...)
        self.limit = _runaway(layer.forward_tol) * torch.maximum(reference, start.abs().amax(-1))
        self.started = feasible
        self.active = feasible.clone()
        # every element active: the loops skip their masking (most iterations at small sizes)
        self.everyone = bool(feasible.all())
        self.common = 0  # iterations counted while everyone was active
        self.counted = torch.zeros(feasible.shape, dtype=torch.int64, device=start.device)
        self.residual = torch.full_like(reference, math.inf)
        self.bound = torch.zeros_like(reference)
        self.runaway = torch.zeros_like(feasible)
        self.safe = start
        self.steps, self.half = 0, layer.max_iter // 2
        self.halfway = None  # the residuals at iteration max_iter // 2, for the warning's trend

    def step(self, x, x_new, found=None):
        """Record the step x → x_new (found: where a step exists); whether any is active."""
        step = _norm(x_new - x)
        if found is not None:  # no step was found: the element is stuck, not converged
            step = torch.where(found, step, math.inf)
        largest = torch.linalg.vector_norm(x_new, math.inf, -1)  # ‖U(x)‖∞ (NaN stays NaN)
        bound = self.tol * torch.maximum(self.reference, largest)
        if self.everyone:
            self.residual, self.bound = step, bound
        else:
            self.residual = torch.where(self.active, step, self.residual)
            self.bound = torch.where(self.active, bound, self.bound)
        self.steps += 1
        if self.steps == self.half:
            self.halfway = self.residual.detach().clone()
        self.active = self.active & (step > bound)
        if found is not None:
            self.active = self.active & found
        remaining = int(self.active.sum())  # one host sync for both answers
        self.everyone = remaining == self.active.numel()
        return remaining > 0

    def count(self):
        if self.everyone:
            self.common += 1
        else:
            self.counted = self.counted + self.active.to(torch.int64)

    @property
    def iterations(self):
        """Per element, the iterations it took part in."""
        return torch.where(self.started, self.counted + self.common, 0)

    def check(self, x):
        """Retire the active elements beyond the runaway limit; keep a copy of the others."""
        within = x.abs().amax(-1) <= self.limit  # False for NaN
        self.runaway = self.runaway | (self.active & ~within)
        self.active = self.active & within
        self.everyone = self.everyone and bool(within.all())
        self.safe = torch.where(within[..., None], x, self.safe)

    def finish(self, x):
        """x, or its last checked finite copy where x itself is not finite."""
        return torch.where(torch.isfinite(x).all(-1, keepdim=True), x, self.safe)

    def met(self):
        return (self.residual <= self.bound) & torch.isfinite(self.bound)

    def diverged(self):
        return self.started & (self.runaway | ~torch.isfinite(self.bound))


class _Start:
    """The forward's common start: the projected default point, the set, the data's scale."""

    def __init__(self, p, layer, values, x_init, sizes, batch):
        default = p.init(*values).to(values[0]).expand(*batch, -1)  # (..., n)
        n = default.shape[-1]
        S = p.set.prepare(p.set_data(default, *values))
        ones = torch.ones_like(default)
        default, feasible = p.set.project(default, ones, S)
        self.batch, self.S, self.ones, self.default = batch, S, ones, default
        self.feasible = feasible.expand(batch)
        self.reference = _reference_scale(p, default, values)
        x = default
        if x_init is not None:
            # Projecting a far start loses digits (x = y − τ·1 with τ ≈ y cancels); projecting
            # its projection again is the identity in exact arithmetic and restores the set.
            x, _ = p.set.project(p.set.project(x_init.expand(*batch, n), ones, S)[0], ones, S)
        self.x = x
        self.warm = x_init is not None
        given = float(layer.step_size) if layer.step_size != "auto" else 1.0
        self.fixed = torch.full((*batch, 1), given, dtype=x.dtype, device=x.device)

    def track(self, layer):
        return _Track(layer, self.reference, self.x, self.feasible)


def _pgd_solve_fixed(p, layer, values, x_init, sizes, batch):
    """PGD with a given step α (the spec's or the constructor's step_size)."""
    start = _Start(p, layer, values, x_init, sizes, batch)
    x, d, S, ones = start.x, start.fixed, start.S, start.ones
    track = start.track(layer)
    for k in range(layer.max_iter):
        if not bool(track.active.any()):
            break
        g = p.gradient(x, *values)
        x_new, _ = p.set.project(x - d * g, ones, S)
        if not track.step(x, x_new, None):
            break
        track.count()
        x = torch.where(track.active[..., None], x_new, x)
        if (k + 1) % _CHECK_EVERY == 0:
            track.check(x)
    return _pgd_finish(p, layer, track.finish(x), start, track, d)


def _pgd_solve_lipschitz(p, layer, values, x_init, sizes, batch):
    """Accelerated PGD with α = 1/L, L = λmax(∇²f) estimated on the data (f quadratic);
    a given step_size overrides α."""
    start = _Start(p, layer, values, x_init, sizes, batch)
    x = start.x
    if layer.step_size == "auto":
        lipschitz = _lipschitz(p, x, values)
        usable = torch.isfinite(lipschitz) & (lipschitz > 0)
        d = torch.where(usable, 1 / torch.where(usable, lipschitz, 1), 1.0)[..., None]  # (..., 1)
    else:
        d = start.fixed
    track = start.track(layer)
    x = _accelerated(p, layer, x, d, start.S, values, track)
    return _pgd_finish(p, layer, x, start, track, d)


def _pgd_solve_scaled(p, layer, values, x_init, sizes, batch):
    """PGD with the Newton-like diagonal step D = β diag(1/h) and backtracking on β; the
    backward folds with D = diag(1/h(x*)) (any D > 0 has the same fixed points)."""
    start = _Start(p, layer, values, x_init, sizes, batch)
    line_search = layer.step_size == "auto"
    x, f, g = _warm_point(p, start, values)
    d = _scaled_step(p, x, values) if line_search else start.fixed

    def rescale(x, d):
        return _scaled_step(p, x, values)

    x, track, _ = _descend(p, layer, values, start, x, f, g, d, line_search, rescale, None)
    d = _scaled_step(p, x, values) if line_search else start.fixed
    return _pgd_finish(p, layer, x, start, track, d)


def _pgd_solve_bb(p, layer, values, x_init, sizes, batch):
    """PGD with Barzilai–Borwein steps safeguarded by backtracking (α₀ = 1/‖∇f(x₀)‖∞); the
    backward folds with the last accepted step."""
    start = _Start(p, layer, values, x_init, sizes, batch)
    line_search = layer.step_size == "auto"
    x, f, g = _warm_point(p, start, values)
    if line_search:
        scale = g.abs().amax(-1, keepdim=True)
        d = torch.where(scale > 0, 1 / scale, 1.0)
    else:
        d = start.fixed
    x, track, taken = _descend(p, layer, values, start, x, f, g, d, line_search, None, _bb_step)
    return _pgd_finish(p, layer, x, start, track, taken if line_search else start.fixed)


def _warm_point(p, start, values):
    """x, f(x), ∇f(x) at the start; a warm start outside f's domain (an entropy at 0) cannot
    take a step, so those elements start from the spec's init instead."""
    x = start.x
    f = p.objective(x, *values)
    g = p.gradient(x, *values)
    if start.warm:
        outside = ~(torch.isfinite(f) & torch.isfinite(g).all(-1))
        x = torch.where(outside[..., None], start.default, x)
        f = torch.where(outside, p.objective(x, *values), f)
        g = torch.where(outside[..., None], p.gradient(x, *values), g)
    return x, f, g


def _descend(p, layer, values, start, x, f, g, d, line_search, rescale, next_step):
    """The backtracking loop of the scaled and BB modes: ``rescale(x, d)`` gives the step
    before each search (scaled), ``next_step(s, r, step)`` the next one after it (BB).
    Returns x, the track and the last accepted step."""
    S, ones = start.S, start.ones
    taken = d
    track = start.track(layer)
    for k in range(layer.max_iter):
        if not bool(track.active.any()):
            break
        active = track.active
        if line_search:
            if rescale is not None:
                d = rescale(x, d)
            x_new, f_new, g_new, step, found = _line_search(p, x, f, g, d, S, values, active)
            taken = torch.where(active[..., None], step, taken)
            if next_step is not None:
                d = torch.where(active[..., None], next_step(x_new - x, g_new - g, step), d)
        else:
            x_new, _ = p.set.project(x - d * g, ones, S)
            f_new, g_new, found = f, p.gradient(x_new, *values), None
        if not track.step(x, x_new, found):
            break
        track.count()
        move = track.active[..., None]
        x = torch.where(move, x_new, x)
        f = torch.where(track.active, f_new, f)
        g = torch.where(move, g_new, g)
        if (k + 1) % _CHECK_EVERY == 0:
            track.check(x)
    return track.finish(x), track, taken


def _pgd_finish(p, layer, x, start, track, d):
    """Record ``layer.info`` and report; returns x and the backward's state (D, S).

    Converged: the relative test was met, the point satisfies the constraints, and it lies
    within the data's reach (a far warm start that rounding froze in place does not count).
    """
    batch, S = start.batch, start.S
    tol_feasible = _feasibility_tol(layer.forward_tol, x.dtype)
    within = x.abs().amax(-1) <= _runaway(layer.forward_tol) * start.reference
    satisfied = p.set.violation(x, S) <= tol_feasible
    diverged = track.diverged()
    feasible = start.feasible
    converged = feasible & track.met() & ~diverged & satisfied & within
    feasible = feasible & ~diverged
    d = d.expand(*batch, d.shape[-1])
    layer.info = SolveInfo(
        track.iterations,
        track.residual,
        converged,
        feasible,
        d.mean(-1),
        alpha=d,
        tol=layer.forward_tol,
    )
    residual = track.residual.detach()  # unrolled (under autograd) it may carry a graph
    worst = float(torch.where(feasible, residual, 0).max()) if x.numel() else 0.0
    late = feasible & ~converged & ~track.met()
    trend = _trend(residual, track.halfway, track.bound, late, layer.max_iter)
    detail = (
        f"residual up to {worst:.3g} > tol {layer.forward_tol:g} × the data's scale after "
        f"{layer.max_iter} iterations{trend}, or a point that violates the constraints; raise "
        "max_iter, use step_size='auto' if a fixed step is set, or try rule 'admm' or 'sqp'"
    )
    empty = f"the constraints admit no point: {p.set.empty}"
    groups = [
        (converged | ~feasible, detail),
        (~diverged, _DIVERGED),
        (feasible | diverged, empty),
    ]
    _report_groups(layer, "the forward solve", groups)
    return x, (d, S)


def _shared_hvp(p, x, values):
    """Whether ∇²f u is the same for the whole batch (no batched input reaches it), probed
    on the meta device: then one vector's power iteration serves every element."""
    try:
        u = torch.empty(x.shape[-1], dtype=x.dtype, device="meta")
        meta = [v.to("meta") for v in values]
        return p.hvp(x.to("meta"), u, *meta).dim() == 1
    except (RuntimeError, NotImplementedError):  # an op without a meta kernel
        return False


def _lipschitz(p, x, values, iterations=50):
    """λmax of the (constant) Hessian by power iteration on ∇²f u, per batch element (once,
    on one vector, where the Hessian is shared by the batch)."""
    generator = torch.Generator(device=x.device).manual_seed(0)
    shape = x.shape[-1:] if _shared_hvp(p, x, values) else x.shape
    u = torch.randn(shape, generator=generator, dtype=x.dtype, device=x.device)  # (..., n)
    u = u / _norm(u)[..., None]
    estimate = torch.zeros(shape[:-1], dtype=x.dtype, device=x.device)  # (...)
    for _ in range(iterations):
        h = p.hvp(x, u, *values)
        estimate = _norm(h)
        u = h / estimate.clamp_min(torch.finfo(x.dtype).tiny)[..., None]
    return estimate.expand(x.shape[:-1])


def _accelerated_step(project, gradient, x, x_prev, g, g_prev, j, d, ones, S, values):
    """One iteration of `_accelerated`, apart from its bookkeeping: the plain map's point
    P(x − α∇f(x)) (for the stopping test), the next iterate, its restart counter and
    gradient. A function of tensors alone, so compile=True can hand it to torch.compile."""
    plain = project(torch.addcmul(x, d, g, value=-1), ones, S)
    beta = j / (j + 3)
    y = torch.addcmul(x, beta, x - x_prev)
    gy = torch.addcmul(g, beta, g - g_prev)
    fast = project(torch.addcmul(y, d, gy, value=-1), ones, S)
    restart = (torch.linalg.vecdot(y - fast, fast - x) > 0)[..., None]  # momentum uphill
    x_new = torch.where(restart, plain, fast)
    return plain, x_new, (j + 1).masked_fill(restart, 0), gradient(x_new, *values)


#: compile=True: `_accelerated_step` compiled once per module, its batch size dynamic (one
#: graph for every batch size; a new dtype, device or set kind compiles again).
_COMPILED_STEP: dict = {}


def _accelerated_body(layer):
    """The iteration body `_accelerated` runs: compiled where the layer asks for it."""
    if not getattr(layer, "compile_body", False):
        return _accelerated_step
    if "step" not in _COMPILED_STEP:
        _COMPILED_STEP["step"] = torch.compile(_accelerated_step, dynamic=True)
    return _COMPILED_STEP["step"]


def _check_compile(compile):
    if not isinstance(compile, bool):
        raise ValueError(f"compile: expected True or False, got {compile!r}")
    return compile


def _accelerated(p, layer, x, d, S, values, track):
    """Accelerated projected gradient (FISTA with gradient-mapping restarts), in place of
    plain PGD: same fixed point, far fewer iterations on ill-conditioned quadratics.

    Each iteration tests the plain map's residual ‖P(x − α∇f(x)) − x‖ at the current x (the
    stopping rule of every rule), then takes the momentum step with β = j/(j + 3), j the
    iterations since the element's last restart (Chambolle–Dossal's choice, which also makes
    the iterates converge). f is quadratic, so ∇f is affine and ∇f at the extrapolated point
    is the same extrapolation of the gradients: one gradient evaluation per iteration. At
    small sizes an iteration costs its number of operations, so each is fused where torch
    allows (addcmul, vecdot); the data-dependent loop and its stopping test stay in Python.
    ``track`` records residuals and divergence.
    """
    body, project = _accelerated_body(layer), _project_point(p.set)
    ones = torch.ones_like(x)
    g = p.gradient(x, *values)
    # copies, not aliases: a compiled body guards on aliasing and would compile twice
    x_prev, g_prev = (x.clone(), g.clone()) if body is not _accelerated_step else (x, g)
    j = torch.zeros(x.shape[:-1] + (1,), dtype=x.dtype, device=x.device)  # (..., 1)
    for k in range(layer.max_iter):
        plain, x_new, j_new, g_new = body(
            project, p.gradient, x, x_prev, g, g_prev, j, d, ones, S, values
        )
        if not track.step(x, plain):
            break
        track.count()
        j = j_new
        if track.everyone:
            x_prev, g_prev, x, g = x, g, x_new, g_new
        else:
            move = track.active[..., None]
            x_prev, g_prev = torch.where(move, x, x_prev), torch.where(move, g, g_prev)
            x, g = torch.where(move, x_new, x), torch.where(move, g_new, g)
        if (k + 1) % _CHECK_EVERY == 0:
            track.check(x)
    return track.finish(x)


def _line_search(p, x, f, g, d, S, values, todo):
    """Backtracking (Armijo along the projection arc) from the step D = d, per element.

    A trial point is accepted where f and ∇f are finite there (entropy-like terms have a
    domain) and f decreases enough; other elements halve their step. Returns the new point,
    f and ∇f there, the accepted step, and which elements found a step.
    """
    scale = torch.ones(x.shape[:-1], dtype=x.dtype, device=x.device)  # (...)
    x_new, f_new, g_new = x, f, g
    found = torch.zeros_like(todo)
    slack = 10 * torch.finfo(x.dtype).eps * f.abs()
    for _ in range(60):
        step = scale[..., None] * d
        trial, _ = p.set.project(x - step * g, d, S)
        f_trial = p.objective(trial, *values)
        g_trial = p.gradient(trial, *values)
        decrease = (g * (trial - x)).sum(-1)
        ok = torch.isfinite(f_trial) & torch.isfinite(g_trial).all(-1)
        ok = ok & (f_trial <= f + 1e-4 * decrease + slack) & todo & ~found
        x_new = torch.where(ok[..., None], trial, x_new)
        f_new = torch.where(ok, f_trial, f_new)
        g_new = torch.where(ok[..., None], g_trial, g_new)
        found = found | ok
        if bool((found | ~todo).all()):
            break
        scale = torch.where(found, scale, scale / 2)
    return x_new, f_new, g_new, scale[..., None] * d, found


def _bb_step(s, r, previous):
    """Barzilai–Borwein α = sᵀs / sᵀr in [1e-10, 1e10]; twice the last step where sᵀr ≤ 0."""
    ss = (s * s).sum(-1, keepdim=True)
    sr = (s * r).sum(-1, keepdim=True)
    alpha = torch.where(sr > 0, ss / torch.where(sr > 0, sr, 1.0), 2 * previous)
    return alpha.clamp(1e-10, 1e10)


def _scaled_step(p, x, values):
    """D = diag(1/h), h the Hessian diagonal; where h ≤ 0 (nonconvex directions) the
    typical curvature median|h| stands in, and backtracking keeps the step safe."""
    h = p.hessian_diagonal(x, *values)  # (..., n)
    typical = h.abs().median(-1, keepdim=True).values
    typical = torch.where(typical > 0, typical, 1.0)
    return 1 / torch.where(h > 0, h, typical)


def _pgd_update_map(p, layer, x, state, values):
    """(x*, U, read) with U(s) = P_C(s − D∇f(s)), D frozen, the set data from ``values``."""
    d, _ = state
    S = p.set.prepare(p.set_data(x, *values))

    def update(s):
        return p.set.project(s - d * p.gradient(s, *values), d, S)[0]

    def read(s):
        return s

    return x, update, read


def _pgd_phi_t(p, x, d, S, values):
    """v ↦ Φᵀv with Φ = J_P (I − D∇²f) at x (D frozen); also returns y = x − D∇f."""
    y = x - d * p.gradient(x, *values)

    def phi_t(v):
        w, _ = p.set.project_vjp(v, x, y, d, S)
        return w - p.hvp(x, d * w, *values)

    return phi_t, y


def _pgd_pullback(p, layer, x, values, state, grad_x):
    """∂L/∂θ = Ψᵀv with (I − Φᵀ) v = ∂L/∂x, Φ and Ψ at x* with the frozen step."""
    d, S = state
    batch = torch.broadcast_shapes(grad_x.shape[:-1], d.shape[:-1])
    phi_t, y = _pgd_phi_t(p, x, d, S, values)

    def dense_phi_t():
        lifted = [_lift(v, len(core)) for v, core in zip(values, p.parameters.values())]
        S_lifted = tuple(_lift(t, r) for t, r in zip(S, p.set.ranks))
        return _pgd_phi_t(p, _lift(x, 1), _lift(d, 1), S_lifted, lifted)[0]

    structure = None
    if layer.backward_method in ("auto", "active_set", "direct"):
        structure = _ActiveSet(p, x, y, d, S, values)
    v = _adjoint(layer, phi_t, dense_phi_t, grad_x.expand(*batch, x.shape[-1]), None, structure)
    # Ψᵀv: through ∇f (scaled by −D) and through the set data.
    w, set_bars = p.set.project_vjp(v, x, y, d, S)
    grads = [None] * len(values)
    if p.objective_grad_indices:
        objective_grads = p.gradient_vjp(x, d * w, *values)
        for index, bar in zip(p.objective_grad_indices, _as_tuple(objective_grads)):
            grads[index] = -bar
    if p.set_grad_indices:
        set_grads = p.set_data_vjp(x, *p.set.unprepare_bars(set_bars), *values)
        for index, bar in zip(p.set_grad_indices, _as_tuple(set_grads)):
            grads[index] = bar if grads[index] is None else grads[index] + bar
    return grads


#: Entries of a dense Hessian, Jacobian or free block the active-set backward may hold at
#: once (float64: 128 MiB); beyond it the batch is processed in chunks, or, where a batched
#: matrix itself would exceed it, the backward falls back to the iterative solvers.
_DENSE_LIMIT = 2**24


def _dense_hessian(p, x, values):
    """∇²f at x as a matrix, (n, n) where no batched data reaches it (one product per unit
    vector, for the whole batch), else (..., n, n); None where it would exceed _DENSE_LIMIT.

    The shape is found first on the meta device, so a shared Hessian is never built per
    element and a too-large batched one is never allocated.
    """
    n = x.shape[-1]
    lifted = [_lift(v, len(core)) for v, core in zip(values, p.parameters.values())]
    try:
        meta = [t.to("meta") for t in (_lift(x, 1), torch.eye(n, dtype=x.dtype, device=x.device))]
        shape = p.hvp(meta[0], meta[1], *[v.to("meta") for v in lifted]).shape
    except (RuntimeError, NotImplementedError):  # an op without a meta kernel
        shape = x.shape + (n,)
    if math.prod(shape) > max(_DENSE_LIMIT, n * n):
        return None
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    # rows ∇²f eᵢ, transposed: ∇²f itself (a linear f's product is printed as (n,) zeros)
    return (p.hvp(_lift(x, 1), eye, *lifted) + eye.new_zeros(n, n)).mT


class _ActiveSet:
    """The folded system of PGD on a set whose J_P is a free-set diagonal or an orthogonal
    projector, solved exactly on the active face instead of iteratively.

    With P = J_Pᵀ a projector that commutes with D (a diagonal P, or a scalar step), the
    fixed point v = g + (I − ∇²f D) P v gives, for u = D P v,
    (P ∇²f P + I − P) u = P g: the folded system restricted to the face's tangent space is
    symmetric, positive definite for convex f, and v = g + D⁻¹u − ∇²f u. For a box P =
    diag(free) and the system is ∇²f_FF u_F = g_F: one batched Cholesky of the free block,
    gathered and padded to the batch's largest free set (an LU where Cholesky fails, e.g.
    for a nonconvex f). ``available`` is False where the structure is not proven.
    """

    exact = False  # ``direct`` solves the closed-form dense Φᵀ

    def __init__(self, p, x, y, d, S, values):
        self.p, self.x, self.d, self.values = p, x, d, values
        kind = p.set.jacobian
        self.kind = kind
        self.available = False
        if kind == "general" or (kind == "projector" and d.shape[-1] != 1):
            return
        H = _dense_hessian(p, x, values)
        if H is None:
            return
        n = x.shape[-1]
        if kind == "diagonal":
            ones = torch.ones_like(x)
            self.free = p.set.project_vjp(ones, x, y, d, S)[0] != 0  # (..., n)
        else:
            if math.prod(x.shape[:-1]) * n * n > _DENSE_LIMIT:
                return
            eye = torch.eye(n, dtype=x.dtype, device=x.device)
            S_lifted = tuple(_lift(t, r) for t, r in zip(S, p.set.ranks))
            # rows Pᵀeᵢ of the lifted VJP: P itself (symmetric)
            self.P = p.set.project_vjp(eye, _lift(x, 1), _lift(y, 1), _lift(d, 1), S_lifted)[0]
        self.H = H
        self.available = True

    def dense(self):
        """Φᵀ = (I − ∇²f D) P as a matrix, in closed form (no product per unit vector)."""
        H, d = self.H, self.d
        n = self.x.shape[-1]
        eye = torch.eye(n, dtype=H.dtype, device=H.device)
        if self.kind == "diagonal":
            return (eye - H * d[..., None, :]) * self.free[..., None, :].to(H.dtype)
        return self.P - (H * d[..., None, :]) @ self.P

    def solve(self, phi_t, g):
        """(v, iterations, residual) as the iterative solvers return them; the residual is
        that of (I − Φᵀ) v = g through ``phi_t`` itself, so a solve that does not fit the
        structure (an asymmetric Hessian, a singular block) is seen and falls back."""
        batch, n = g.shape[:-1], g.shape[-1]
        scale = g.abs().amax(-1).clamp_min(torch.finfo(g.dtype).tiny)[..., None]
        rhs = g / scale
        if self.kind == "diagonal":
            u = _free_block_solve(self.H, self.free.expand(*batch, n), rhs)
        else:
            P = self.P.expand(*batch, n, n)
            M = P @ self.H @ P + torch.eye(n, dtype=g.dtype, device=g.device) - P
            u = _spd_solve(M, _mv(P, rhs))
        v = rhs + u / self.d - self.p.hvp(self.x, u, *self.values)
        v, iterations, residual = _structured_result(phi_t, v, rhs)
        return v * scale, iterations, residual


def _spd_solve(M, b):
    """M⁻¹b per element: Cholesky where M is positive definite, LU where it is not; NaN
    where M is singular (the caller's residual check sees it)."""
    L, info = torch.linalg.cholesky_ex(M)
    x = _cholesky_solve(L, b[..., None])[..., 0]
    failed = info != 0
    if bool(failed.any()):
        lu, lu_info = torch.linalg.solve_ex(M, b[..., None])
        lu = torch.where((lu_info == 0)[..., None], lu[..., 0], math.nan)
        x = torch.where(failed[..., None], lu, x)
    return x


def _free_block_solve(H, free, b):
    """u with ∇²f_FF u_F = b_F on each element's free set F and u = 0 off it.

    The free indices are gathered to the front (stable order) and the blocks padded with
    identity rows to the largest free set k; a shared H is indexed per element without a
    (B, n, n) copy, and the batch is processed in chunks of at most _DENSE_LIMIT entries.
    """
    batch, n = free.shape[:-1], free.shape[-1]
    free, b = free.reshape(-1, n), b.reshape(-1, n)
    shared = H.dim() == 2
    if not shared:
        H = H.expand(*batch, n, n).reshape(-1, n, n)
    counts = free.sum(-1)  # (B,)
    k = int(counts.max()) if counts.numel() else 0
    u = torch.zeros_like(b)
    if k == 0:
        return u.reshape(*batch, n)
    order = torch.argsort((~free).to(torch.int8), dim=-1, stable=True)[:, :k]  # free first
    eye = torch.eye(k, dtype=b.dtype, device=b.device)
    chunk = max(1, _DENSE_LIMIT // (k * k))
    for start in range(0, b.shape[0], chunk):
        rows = slice(start, start + chunk)
        idx = order[rows]  # (c, k)
        valid = torch.arange(k, device=b.device) < counts[rows, None]  # (c, k)
        if shared:  # one flat gather: several times faster than H[rows, columns]
            block = H.reshape(-1)[idx[:, :, None] * n + idx[:, None, :]]  # (c, k, k)
        else:
            block = torch.take_along_dim(H[rows], idx[:, :, None], 1)
            block = torch.take_along_dim(block, idx[:, None, :], 2)
        block = torch.where(valid[:, :, None] & valid[:, None, :], block, eye)
        rhs = torch.where(valid, torch.take_along_dim(b[rows], idx, 1), 0)
        solution = torch.where(valid, _spd_solve(block, rhs), 0)
        u[rows] = u[rows].scatter(1, idx, solution)
    return u.reshape(*batch, n)
