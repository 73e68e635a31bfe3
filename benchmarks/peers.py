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
  their default settings.
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

    def __init__(self, case, weight):
        self.case, self.weight = case, weight
        self.layer, self.names = case.cvxpylayer()
        self.inputs = leaves(case)

    def forward(self):
        return self.layer(*[self.inputs[k] for k in self.names])[0]

    backward = Foldgen.backward


class Qpth:
    label = "qpth"

    def __init__(self, case, weight):
        self.case, self.weight = case, weight
        self.inputs = leaves(case)

    def forward(self):
        return self.case.qpth(self.inputs)

    backward = Foldgen.backward
