"""The folded ``autograd.Function`` and the layer's calls that go through it.

Forward: the rule's solver, outside autograd. Backward: the folded adjoint solve, itself a
second Function (`_Pullback`) so that both halves have vmap rules and the layer works under
``torch.func``: ``vmap`` moves the vmapped dimension into the batch (the layer is batched
already, and its loops are data-dependent, so vmap cannot trace them), and ``grad``, ``vjp``
and ``jacrev`` reach the folded backward through ``setup_context``.

What the forward leaves for the backward besides autograd's saved tensors (the rule's state,
the elements it vouches for) lives in a `_Tape`: plain tensors of the *physical* batch the
solver ran on, whose vmapped dimensions lead in the order vmap peeled them. The backward's
rule peels the same levels from the saved x and the cotangent in the same order, so its
innermost call sees the tape's layout again; a level the forward never saw (jacrev's vmap
over cotangents) is run one cotangent at a time instead.
"""

import math
import time

import torch

from foldgen.runtime.core import _per_element, _wrapped
from foldgen.runtime.layer import (
    BackwardInfo,
    _fit_tolerance,
    _gather,
    _progress,
    _report,
    _validate,
)

_ONCE = (
    "a foldgen layer is differentiable once: its backward (the folded adjoint solve) has no "
    "derivative of its own (double backward, create_graph=True, hessian)"
)


class _Tape:
    """One call's forward record for its backward: the rule's ``state``, the mask ``solved``
    of elements whose gradient the forward vouches for, and ``check`` (the inputs' finiteness
    is checked in the forward: they were wrapped by torch.func, so the call could not look at them)."""

    __slots__ = ("state", "solved", "check")

    def __init__(self, check=False):
        self.state, self.solved, self.check = None, None, check


def _check_finite(p, values, x_init):
    """ValueError naming the first input (or warm start) with a NaN or an Inf."""
    named = list(zip(p.parameters, values)) + [("the warm start", x_init)]
    for name, value in named:
        if isinstance(value, torch.Tensor) and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name}: contains NaN or Inf")


def _nonzero(t):
    """Whether the tangent t has a non-zero entry. torch.func passes zeros for the inputs it
    does not differentiate, so only a non-zero tangent of a grad: false input asks for the
    derivative the spec did not derive. A vmapped tangent (jacfwd's basis) cannot be looked
    at: it counts as zero."""
    try:
        return bool(t.ne(0).any())
    except RuntimeError:  # vmap: data-dependent control flow
        return False


def _lead(t, dim, size, rank, core):
    """t with its vmapped dimension ``dim`` moved to the front and 1s inserted after it, so
    that its batch dimensions (all but the ``core`` trailing ones) align with a batch of
    ``rank`` dimensions; an unbatched t (dim None) is returned as it is (it broadcasts)."""
    if dim is None or t is None:
        return t
    t = t.movedim(dim, 0)
    pad = rank - (t.dim() - 1 - core)
    return t.reshape(size, *([1] * pad), *t.shape[1:])


class _Fold(torch.autograd.Function):
    """Forward: the solver, outside autograd. Backward: the folded adjoint solve.

    The backward never lets a wrong gradient out: an element whose forward did not converge
    or was infeasible, whose adjoint solve missed its tolerance, or whose gradient is not
    finite contributes zero (to a parameter shared across the batch: the sum over the other
    elements) and is reported in ``backward_info.converged``.
    """

    @staticmethod
    def forward(layer, p, x_init, sizes, batch, tape, *values):
        if tape.check:
            _check_finite(p, values, x_init)
        start = time.perf_counter()
        x, state = p.solve(p, layer, values, x_init, sizes, batch)
        if layer.verbose:
            _progress(layer, "forward", layer.info, time.perf_counter() - start)
        vouched = layer.info.converged
        if layer.fold_unconverged:  # a truncated forward: fold at x_T wherever x_T is finite
            vouched = torch.isfinite(x).all(-1)
        tape.state, tape.solved = state, (vouched & layer.info.feasible).expand(batch)
        return x

    @staticmethod
    def setup_context(ctx, inputs, output):
        layer, p, _, _, _, tape, *values = inputs
        ctx.layer, ctx.problem, ctx.tape = layer, p, tape
        ctx.save_for_backward(output, *values)
        ctx.save_for_forward(output, *values)

    @staticmethod
    def backward(ctx, grad_x):
        x, *values = ctx.saved_tensors
        p, needs = ctx.problem, ctx.needs_input_grad[6:]
        wanted = tuple(
            i for i, (name, need) in enumerate(zip(p.parameters, needs))
            if need and name in p.grad_parameters
        )  # fmt: skip
        grads = [None] * len(values)
        if wanted:
            targets = tuple(tuple(v.shape) for v in values)
            found = _Pullback.apply(ctx.layer, p, ctx.tape, wanted, targets, grad_x, x, *values)
            for i, grad in zip(wanted, found):
                grads[i] = grad
        return (None, None, None, None, None, None, *grads)

    @staticmethod
    def jvp(ctx, *tangents):
        """Forward mode: ẋ = J θ̇ with J = ∂x*/∂θ, its rows from n folded pullbacks (one per
        entry of x, each met to the adjoint tolerance like a gradient): exact, and n times a
        backward's cost, so ``jacrev`` suits a Jacobian better than ``jacfwd``."""
        x, *values = ctx.saved_tensors
        p, tangents = ctx.problem, tangents[6:]
        names = list(p.parameters)
        for name, t in zip(names, tangents):
            if name not in p.grad_parameters and t is not None and _nonzero(t):
                raise ValueError(f"{name}: has a tangent, but the spec declares it grad: false")
        wanted = tuple(
            i for i, t in enumerate(tangents) if t is not None and names[i] in p.grad_parameters
        )
        batch, cores = x.shape[:-1], list(p.parameters.values())
        targets = tuple(
            (*batch, *v.shape[v.dim() - len(core) :]) for v, core in zip(values, cores)
        )
        columns = []
        for k in range(x.shape[-1]):
            unit = torch.zeros_like(x)
            unit[..., k] = 1
            rows = _Pullback.apply(ctx.layer, p, ctx.tape, wanted, targets, unit, x, *values)
            dot = [
                (row * tangents[i]).sum(tuple(range(-len(cores[i]), 0))) if cores[i]
                else row * tangents[i]
                for row, i in zip(rows, wanted)
            ]  # fmt: skip
            columns.append(sum(dot) if dot else x.new_zeros(batch))
        return torch.stack(columns, -1)

    @staticmethod
    def vmap(info, in_dims, layer, p, x_init, sizes, batch, tape, *values):
        size, rank = info.batch_size, len(batch)
        values = [
            _lead(v, d, size, rank, len(core))
            for v, d, core in zip(values, in_dims[6:], p.parameters.values())
        ]
        x_init = _lead(x_init, in_dims[2], size, rank, 1)
        x = _Fold.apply(layer, p, x_init, sizes, torch.Size((size, *batch)), tape, *values)
        return x, 0


class _Pullback(torch.autograd.Function):
    """The folded backward of `_Fold` for the inputs ``wanted`` (indices into the values):
    each gradient summed to its ``targets`` shape. Not differentiable itself."""

    @staticmethod
    def forward(layer, p, tape, wanted, targets, grad_x, x, *values):
        return _fold_backward(layer, p, tape, wanted, targets, grad_x, x, values)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_ONCE)

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(_ONCE)

    @staticmethod
    def vmap(info, in_dims, layer, p, tape, wanted, targets, grad_x, x, *values):
        size = info.batch_size
        g_dim, x_dim = in_dims[5], in_dims[6]
        if x_dim is None:
            # A level the forward did not run under (jacrev's vmap over cotangents): the
            # tape has no dimension for it, so one pullback per cotangent.
            found = [
                _Pullback.apply(layer, p, tape, wanted, targets, grad_x.select(g_dim, k), x,
                                *values)
                for k in range(size)
            ]  # fmt: skip
            return tuple(torch.stack(g) for g in zip(*found)), (0,) * len(wanted)
        x = x.movedim(x_dim, 0)
        rank = x.dim() - 2
        grad_x = grad_x.expand(size, *grad_x.shape) if g_dim is None else grad_x.movedim(g_dim, 0)
        cores = list(p.parameters.values())
        values = [
            _lead(v, d, size, rank, len(core)) for v, d, core in zip(values, in_dims[7:], cores)
        ]
        inner = list(targets)
        for i in wanted:
            pad = rank - (len(targets[i]) - len(cores[i]))
            inner[i] = (size, *([1] * pad), *targets[i])
        found = _Pullback.apply(layer, p, tape, wanted, tuple(inner), grad_x, x, *values)
        out = tuple(g.reshape(size, *targets[i]) for g, i in zip(found, wanted))
        return out, (0,) * len(wanted)


def _fold_backward(layer, p, tape, wanted, targets, grad_x, x, values):
    """The gradients of the inputs ``wanted`` from the cotangent ``grad_x`` of x: the rule's
    pullback, then zero for every element that is not vouched for, not solved to the
    adjoint tolerance or not finite, reported in ``layer.backward_info``."""
    batch = x.shape[:-1]
    solved = tape.solved.expand(batch)
    grad_x = torch.where(solved[..., None], grad_x, 0)
    start = time.perf_counter()
    grads = p.pullback(p, layer, x, values, tape.state, grad_x)
    seconds = time.perf_counter() - start
    info = layer.backward_info
    ok = solved & info.converged
    cores = list(p.parameters.values())
    full = {}
    for i in wanted:
        grad, core = grads[i], cores[i]
        if grad is None:  # the input does not reach the solution
            grad = x.new_zeros(targets[i])
        grad = grad.expand((*batch, *grad.shape[grad.dim() - len(core) :]))
        finite = torch.isfinite(grad)
        ok = ok & (finite.all(tuple(range(-len(core), 0))) if core else finite)
        full[i] = grad
    out = tuple(
        torch.where(_per_element(ok, cores[i]), full[i], 0).sum_to_size(targets[i]) for i in wanted
    )
    residual = torch.where(solved, info.residual, math.inf)
    layer.backward_info = BackwardInfo(
        info.method, info.iterations, residual, ok, solved, info.tol, info.fallback & ok
    )
    failed = solved & ~ok
    worst = float(torch.where(failed, info.residual, 0).max()) if failed.any() else 0.0
    detail = (
        f"relative residual up to {worst:.3g} > tol {layer.adjoint_tol:g}, a singular "
        "system or a non-finite gradient; those elements get a zero gradient"
    )
    if layer.verbose:
        _progress(layer, f"backward ({info.method})", layer.backward_info, seconds)
    _report(layer, f"the backward solve ({info.method})", ok | ~solved, detail)
    return out


def _prepare_call(layer, p, args, named, x_init):
    """The validated inputs, the call's tolerances fitted to their dtype, and the warm start
    (packed, for a problem whose variables are packed into one state)."""
    kwargs = {name: value for name, value in named.items() if value is not None}
    values, sizes, batch = _validate(p, _gather(p, layer, args, kwargs), x_init)
    dtype = values[0].dtype if values else torch.get_default_dtype()
    layer.forward_tol = _fit_tolerance(layer.tol, dtype)
    layer.adjoint_tol = _fit_tolerance(layer.backward_tol, dtype)
    if p.variables is not None:
        with torch.no_grad():
            x_init = p.pack_warm_start(p, [v.detach() for v in values], x_init)
        if x_init is not None:
            batch = torch.broadcast_shapes(batch, x_init.shape[:-1])
    return values, sizes, batch, x_init


def _outputs(p, x, values):
    """The layer's result: the variable, or the spec's variables unpacked from the state."""
    return x if p.variables is None else p.unpack(x, *values)


@torch.compiler.disable
def _forward(layer, p, args, named, x_init):
    """The layer's call: gather and validate the inputs, then the folded solve.

    Opaque to ``torch.compile``: the solver's loops stop on data (a graph break at every
    stopping test, a recompilation per batch size), so a compiled model runs the layer
    eagerly between its compiled parts (``compile=True`` compiles the loop body itself)."""
    values, sizes, batch, x_init = _prepare_call(layer, p, args, named, x_init)
    tape = _Tape(check=any(_wrapped(t) for t in (*values, x_init)))
    return _outputs(p, _Fold.apply(layer, p, x_init, sizes, batch, tape, *values), values)


def _unrolled(layer, p, args, named, x_init):
    """The forward solve under autograd (no folding): its backward unrolls the iterations."""
    values, sizes, batch, x_init = _prepare_call(layer, p, args, named, x_init)
    x, _ = p.solve(p, layer, values, x_init, sizes, batch)
    return _outputs(p, x, values)


def _update_map(layer, p, args, named, x_init):
    """(s*, U, read): the rule's state at the solution and its update map (``update_map``)."""
    values, sizes, batch, x_init = _prepare_call(layer, p, args, named, x_init)
    with torch.no_grad():
        x, state = p.solve(p, layer, [v.detach() for v in values], x_init, sizes, batch)
    return p.update_map(p, layer, x, state, values)
