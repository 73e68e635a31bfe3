"""The methods compared on each case, behind one interface.

A method is a pair (``forward()`` → handle, ``backward(handle)`` → {name: gradient}); the
backward must be repeatable on one handle so that it can be timed on its own. All of them
differentiate the same loss ⟨g, x*⟩ on the same data.

- ``foldgen``: the generated layer (its forward solver and its generated folded backward).
- ``unrolled``: autograd through the generated module's own forward solver, so it records
  exactly the iterations the layer ran.
- ``autograd-fold``: the paper's own library's approach: the same forward, then the same
  fixed-point linear solver as foldgen's (the generated module's LFPI, GMRES or dense solve),
  but with each product Φᵀv = (∂U/∂s)ᵀv taken by ``torch.autograd.grad`` through a plain
  torch evaluation of one update step U at s* (the generated module's own step functions).
- ``cvxpylayers`` and ``qpth``: the standard differentiable convex-optimization layers, at
  their default settings; ``cvxpylayers eps=1e-8`` is the same layer with SCS at eps 1e-8
  (``solver_args``), so that speed is also compared at equal accuracy.
- ``loop``: a hand-written torch loop of about ten lines with the same math (`pgd_loop`,
  `admm_tv_loop`), stopped by the same relative test at the layer's tolerance; its backward
  is autograd through the unrolled loop.
- ``floor``: what the exact answer costs once the solution's active structure is known (the
  case's ``floor``; `reference.free_block_cholesky`, `reference.kkt_lu`).
"""

from __future__ import annotations

import warnings

import torch

from foldgen.runtime.admm import _admm_unpack, _admm_update
from foldgen.runtime.layer import _gather, _validate
from foldgen.runtime.linsolve import _solve_direct, _solve_gmres, _solve_lfpi

warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True")


def leaves(case):
    """Fresh copies of the call inputs; those in case.grad require grad."""
    return {k: v.clone().requires_grad_(k in case.grad) for k, v in case.inputs.items()}


def make_layer(case, method, **settings):
    m = case.generated
    kwargs = {**case.settings, **settings, "on_nonconvergence": "ignore"}
    if method is not None:
        kwargs["backward_method"] = method
    return getattr(m, case.layer_class)(**case.bound, **kwargs)


def _grads(outputs, inputs, cotangents):
    found = torch.autograd.grad(outputs, inputs, cotangents, retain_graph=True, allow_unused=True)
    return found


class Foldgen:
    label = "foldgen"

    def __init__(self, case, weight, method=None, **settings):
        self.case, self.weight = case, weight
        self.layer = make_layer(case, method, **settings)
        self.inputs = leaves(case)

    def forward(self):
        return self.layer(**self.inputs)

    def backward(self, x):
        names = self.case.grad
        found = _grads(x, [self.inputs[k] for k in names], self.weight)
        return dict(zip(names, found))

    @property
    def method(self):
        info = self.layer.backward_info
        return info.method if info is not None else self.layer.backward_method


class Unrolled:
    """Autograd through every iteration of the generated forward solver."""

    label = "unrolled"

    def __init__(self, case, weight, **settings):
        self.case, self.weight = case, weight
        self.layer = make_layer(case, None, **settings)
        self.inputs = leaves(case)

    def forward(self):
        return self.layer.unrolled(**self.inputs)

    backward = Foldgen.backward


class AutogradFold:
    """Fixed-point folding with Φᵀv from ``torch.autograd.grad`` of one update step."""

    label = "autograd-fold"

    def __init__(self, case, weight, method):
        self.case, self.weight, self.method = case, weight, method
        self.m = case.generated
        self.layer = make_layer(case, method)
        self.inputs = leaves(case)
        self.rule = rule_of(self.m)

    def forward(self):
        p = self.m.PROBLEM
        with torch.no_grad():
            values, sizes, batch = _validate(p, _gather(p, self.layer, [], self.inputs), None)
            x, state = p.solve(p, self.layer, values, None, sizes, batch)
        return x, state, sizes

    def _step(self, x, state, sizes, values):
        """(s*, s ↦ (U(s), x(s))) for the rule, with the values in the graph."""
        p = self.m.PROBLEM
        if self.rule in ("pgd", "sqp"):
            # The runtime's update map on the forward's own state (what update_map returns).
            s_star, update, read = p.update_map(p, self.layer, x, state, values)

            def step(s):
                return update(s), read(s)

            return s_star, step
        if self.rule == "admm":
            s_star, rho = state[0], state[1]
            tol = self.layer.tol

            def step(s):  # one sweep gives both U(s) and x(s)
                blocks = _admm_unpack(p, p.block_data(x, *values))
                fixed, _ = p.prepare(p, x, values, blocks, rho)
                x_s, u = _admm_update(p, x, s, values, blocks, rho, fixed, tol)
                return u, x_s

            return s_star, step
        raise ValueError(f"unknown rule {self.rule!r}")

    def backward(self, handle):
        p = self.m.PROBLEM
        x, state, sizes = handle
        values, _, _ = _validate(p, _gather(p, self.layer, [], self.inputs), None)
        s_star, step = self._step(x, state, sizes, values)
        s = s_star.detach().requires_grad_()
        u, x_s = step(s)
        g = _grads(x_s, [s], self.weight)[0]

        def phi_t(v):
            return _grads(u, [s], v)[0]

        layer = self.layer
        if self.method == "direct":
            n = s.shape[-1]
            unit = torch.eye(n, dtype=s.dtype).reshape(n, *([1] * (s.dim() - 1)), n)
            unit = unit.expand(n, *s.shape)
            try:
                cols = torch.autograd.grad(u, s, unit, retain_graph=True, is_grads_batched=True)[0]
            except RuntimeError:  # an operator without a batching rule: one product per column
                cols = torch.stack([phi_t(e) for e in unit])
            dense = cols.movedim(0, -1)  # [..., i, j] = (Φᵀ e_j)_i
            v, _, _ = _solve_direct(dense, g)
        elif self.method == "lfpi":
            v, _, _ = _solve_lfpi(phi_t, g, layer.backward_max_iter, layer.backward_tol)
        else:
            restart = min(s.shape[-1], 128)
            v, _, _ = _solve_gmres(phi_t, g, layer.backward_max_iter, layer.backward_tol, restart)
        names = self.case.grad
        index = {k: i for i, k in enumerate(p.parameters)}
        targets = [values[index[k]] for k in names]
        found = _grads([u, x_s], targets, [v, self.weight])
        return {k: _sum_to(t, self.inputs[k]) for k, t in zip(names, found)}


def rule_of(m):
    """The update rule a generated module was built with (its problem record says)."""
    return m.PROBLEM.rule


def _sum_to(t, like):
    return torch.zeros_like(like) if t is None else t.sum_to_size(like.shape)


class Cvxpylayers:
    label = "cvxpylayers"

    def __init__(self, case, weight, solver_args=None):
        self.case, self.weight = case, weight
        self.layer, self.names = case.cvxpylayer()
        self.inputs = leaves(case)
        self.solver_args = solver_args or {}

    def forward(self):
        params = [self.inputs[k] for k in self.names]
        return self.layer(*params, solver_args=self.solver_args)[0]

    backward = Foldgen.backward


class Qpth:
    label = "qpth"

    def __init__(self, case, weight):
        self.case, self.weight = case, weight
        self.inputs = leaves(case)

    def forward(self):
        return self.case.qpth(self.inputs)

    backward = Foldgen.backward


class HandLoop:
    """The case's hand-written loop (``case.loop``); backward by autograd through it."""

    label = "loop"

    def __init__(self, case, weight, tol, max_iter):
        self.case, self.weight, self.tol, self.max_iter = case, weight, tol, max_iter
        self.inputs = leaves(case)
        self.iterations = 0

    def forward(self):
        x, self.iterations = self.case.loop(self.inputs, self.tol, self.max_iter)
        return x

    backward = Foldgen.backward


class Floor:
    """A case's floor: ``forward()`` and ``backward()`` time the factorisations and solves
    that give x* and the gradient once the active structure is known; the backward returns
    the gradient where the floor computes all of it (else None: timed, not checked)."""

    label = "floor"

    def __init__(self, forward, backward, setting):
        self._forward, self._backward, self.setting = forward, backward, setting

    def forward(self):
        return self._forward()

    def backward(self, handle):
        return self._backward()


def _stopped(step, new, tol):
    """The layers' relative stopping test on a batch: ‖step‖ ≤ tol · max(1, ‖new‖∞)."""
    bound = tol * new.abs().amax(-1).clamp_min(1.0)
    return bool((step.norm(dim=-1) <= bound).all())


def pgd_loop(Q, c, lo, hi, tol, max_iter, accelerated=False):
    """Projected gradient descent on ½xᵀQx + cᵀx over lo ≤ x ≤ hi (±inf: unconstrained), step
    1/L from one eigvalsh; if ``accelerated``, FISTA momentum with O'Donoghue and Candès'
    gradient restart per element. (x, iterations)."""
    step = 1 / torch.linalg.eigvalsh(Q)[-1]
    x = y = torch.zeros_like(c).clamp(lo, hi)
    t = torch.ones_like(c[..., :1])
    for k in range(1, max_iter + 1):
        x_new = (y - step * (y @ Q + c)).clamp(lo, hi)
        if _stopped(x_new - x, x_new, tol):
            return x_new, k
        if accelerated:
            restart = ((y - x_new) * (x_new - x)).sum(-1, keepdim=True) > 0
            t_new = (1 + (1 + 4 * t * t).sqrt()) / 2
            beta = torch.where(restart, 0.0, (t - 1) / t_new)
            t = torch.where(restart, 1.0, t_new)
            y = x_new + beta * (x_new - x)
        else:
            y = x_new
        x = x_new
    return x, max_iter


def admm_tv_loop(y, D, lam, rho, tol, max_iter, fixed_iterations=None):
    """Scaled ADMM on ½‖x − y‖² + λ‖z‖₁, z = Dx, with ρ fixed and one Cholesky factor of
    I + ρDᵀD shared by the batch; stops on ‖(z, u)⁺ − (z, u)‖ ≤ tol·max(1, ‖(z, u)⁺‖∞), or runs
    exactly ``fixed_iterations`` sweeps without a test. (x, iterations)."""
    n = D.shape[1]
    factor = torch.linalg.cholesky(torch.eye(n, dtype=y.dtype) + rho * D.T @ D)
    z = u = y.new_zeros(y.shape[0], D.shape[0])
    count = fixed_iterations or max_iter
    for k in range(1, count + 1):
        x = torch.cholesky_solve((y + rho * (z - u) @ D).T, factor).T
        dx = x @ D.T
        w = dx + u
        z_new = w.sign() * (w.abs() - lam / rho).clamp_min(0)
        u_new = w - z_new
        if fixed_iterations is None:
            step = torch.cat([z_new - z, u_new - u], -1)
            if _stopped(step, torch.cat([z_new, u_new], -1), tol):
                return x, k
        z, u = z_new, u_new
    return x, count
