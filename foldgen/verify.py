"""``foldgen build --verify``: check a built module's derivation on random data of its
default sizes, in float64, before anyone trains through it.

Two kinds of check, each a relative error against a tolerance:

* every derived VJP (the printed closed forms the backward evaluates) against autograd of
  the printed primal expressions it was derived from, at the forward's solution: ∇f from f,
  ∇²f u, (∂∇f/∂θ)ᵀu, the set's and the blocks' data VJPs, J_gᵀw and J_hᵀw, ∇ₓL, ∇²ₓₓL u and
  the KKT VJP, whichever the rule has;
* the folded gradient of ⟨w, x*(θ)⟩ against central finite differences through the forward
  (solved tighter than the spec asks, so that the quotient measures the derivative, not the
  solver's tolerance), along a random direction of each gradient parameter, on the elements
  that converged.

The random inputs honour the parameters' declared properties (psd, symmetric, diagonal,
nonneg) and nothing more, as ``tests/probe.py`` draws them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType

import torch

F64 = torch.float64

#: Relative error allowed between a derived VJP and autograd's (both exact up to rounding).
VJP_TOL = 1e-8
#: Relative error allowed between the folded gradient and central differences.
FD_TOL = 1e-4


@dataclass(frozen=True)
class Check:
    """One comparison: what was compared, its relative error and the tolerance; ``skipped``
    says why it could not be made (it then passes: random data gave nothing to compare)."""

    name: str
    error: float
    tol: float
    skipped: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.skipped) or self.error <= self.tol  # NaN fails


def random_inputs(
    module: ModuleType,
    properties: Mapping[str, set[str]],
    dims: Mapping[str, int],
    batch: tuple[int, ...] = (2,),
    seed: int = 0,
    cap: int | None = None,
) -> dict[str, torch.Tensor]:
    """Float64 inputs for every parameter without a default, honouring its declared
    ``properties``: psd/pd matrices are A Aᵀ/n + I/2, symmetric ones symmetrised, diagonal
    ones diagonal, nonneg ones non-negative. ``dims`` gives each dim's size; ``cap``, if
    given, bounds every size (a literal one too)."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, core in module.PARAMETERS.items():
        if name in module.DEFAULTS:
            continue
        props = set(properties.get(name, ()))
        sizes = (int(dims[d]) if isinstance(d, str) else d for d in core)
        shape = batch + tuple(size if cap is None else min(size, cap) for size in sizes)
        t = torch.randn(shape, generator=gen, dtype=F64)
        if len(core) == 2 and props & {"psd", "pd"} and "diagonal" not in props:
            t = t @ t.mT / shape[-1] + 0.5 * torch.eye(shape[-1], dtype=F64)
        elif len(core) == 2 and "diagonal" in props:
            d = t.diagonal(dim1=-2, dim2=-1)
            d = d.abs() + 0.5 if props & {"psd", "pd", "nonneg"} else d
            t = torch.diag_embed(d)
        elif len(core) == 2 and "symmetric" in props:
            t = 0.5 * (t + t.mT)
        if "nonneg" in props:
            t = t.abs()
        out[name] = t
    return out


def _error(got, want) -> float:
    """max |got − want| / max(1, max |want|), over matching tensors (None: zero); NaN where
    the reference itself is not finite (the point is outside the functions' domain)."""
    worst = 0.0
    for g, w in zip(got, want):
        if w is not None and not bool(torch.isfinite(w).all()):
            return math.nan
        w = torch.zeros(()) if w is None else w.detach()
        g = torch.zeros_like(w) if g is None else g.detach()
        g, w = torch.broadcast_tensors(g, w)
        scale = max(1.0, float(w.abs().max())) if w.numel() else 1.0
        diff = float((g - w).abs().max()) if w.numel() else 0.0
        worst = max(worst, diff / scale if math.isfinite(diff) else math.inf)
    return worst


def _tuple(t):
    return t if isinstance(t, tuple) else (t,)


def _like(t, gen):
    return torch.randn(t.shape, generator=gen, dtype=F64)


def _grad(out, inputs):
    """d⟨out⟩/d inputs (zeros where an input does not reach it)."""
    found = torch.autograd.grad(out, inputs, allow_unused=True, create_graph=True)
    return [torch.zeros_like(i) if g is None else g for g, i in zip(found, inputs)]


def _weighted(outputs, weights):
    return sum((o * w).sum() for o, w in zip(outputs, weights))


class _Point:
    """The data of one check: x* and the multipliers (leaves needing grad), the values
    expanded to the batch (so each element's gradient is its own), and random weights."""

    def __init__(self, module, values, x, multipliers, seed):
        self.p = module.PROBLEM
        self.gen = torch.Generator().manual_seed(seed)
        batch = x.shape[:-1]
        cores = list(self.p.parameters.values())
        self.values = [
            v.detach().expand(*batch, *v.shape[v.dim() - len(core) :]).clone().requires_grad_()
            for v, core in zip(values, cores)
        ]
        self.x = x.detach().clone().requires_grad_()
        self.multipliers = [m.detach().clone() for m in multipliers]
        self.u = _like(self.x, self.gen)

    def weights(self, outputs):
        return [_like(o, self.gen) for o in outputs]

    def chosen(self, indices):
        return [self.values[i] for i in indices]


def _objective_checks(pt: _Point) -> list[Check]:
    p, x, values, u = pt.p, pt.x, pt.values, pt.u
    checks = []
    (grad_auto,) = _grad(p.objective(x, *values).sum(), [x])
    checks.append(Check("∇f against autograd of f", _error([p.gradient(x, *values)], [grad_auto]),
                        VJP_TOL))  # fmt: skip
    if hasattr(p, "hvp"):
        (hvp_auto,) = _grad((grad_auto * u).sum(), [x])
        got = p.hvp(x, u, *values)
        checks.append(Check("∇²f u against autograd of ∇f", _error([got], [hvp_auto]), VJP_TOL))
    indices = getattr(p, "objective_grad_indices", ())
    if hasattr(p, "gradient_vjp") and indices:
        want = _grad((grad_auto * u).sum(), pt.chosen(indices))
        got = _tuple(p.gradient_vjp(x, u, *values))
        checks.append(Check("(∂∇f/∂θ)ᵀu against autograd of ∇f", _error(got, want), VJP_TOL))
    return checks


def _data_check(pt: _Point, name: str, data, vjp, indices) -> list[Check]:
    """A data function's VJP to the parameters ``indices`` against autograd of its blocks."""
    if not indices:
        return []
    outputs = _tuple(data(pt.x, *pt.values))
    weights = pt.weights(outputs)
    want = _grad(_weighted(outputs, weights), pt.chosen(indices))
    got = _tuple(vjp(pt.x, *weights, *pt.values))
    return [Check(f"{name} against autograd of its data", _error(got, want), VJP_TOL)]


def _constraint_checks(pt: _Point) -> list[Check]:
    p, x, values, u = pt.p, pt.x, pt.values, pt.u
    checks = []
    g = _tuple(p.inequalities(x, *values)) if hasattr(p, "inequalities") else ()
    h = _tuple(p.equalities(x, *values)) if hasattr(p, "equalities") else ()
    w_g, w_h = pt.weights(g), pt.weights(h)
    for name, blocks, weights, vjp in (("J_gᵀw", g, w_g, "inequalities_vjp"),
                                       ("J_hᵀw", h, w_h, "equalities_vjp")):  # fmt: skip
        if blocks:
            (want,) = _grad(_weighted(blocks, weights), [x])
            got = getattr(p, vjp)(x, *weights, *values)
            checks.append(Check(f"{name} against autograd of the constraints",
                                _error([got], [want]), VJP_TOL))  # fmt: skip
    lam = pt.multipliers[: len(g)]
    nu = pt.multipliers[len(g) :]
    lagrangian = p.objective(x, *values).sum() + _weighted(g, lam) + _weighted(h, nu)
    (grad_l,) = _grad(lagrangian, [x])
    got = p.lagrangian_gradient(x, *lam, *nu, *values)
    checks.append(Check("∇ₓL against autograd of L", _error([got], [grad_l]), VJP_TOL))
    (hvp_l,) = _grad((grad_l * u).sum(), [x])
    got = p.lagrangian_hvp(x, *lam, *nu, u, *values)
    checks.append(Check("∇²ₓₓL u against autograd of ∇ₓL", _error([got], [hvp_l]), VJP_TOL))
    indices = getattr(p, "kkt_grad_indices", ())
    if indices:
        total = (grad_l * u).sum() + _weighted(g, w_g) + _weighted(h, w_h)
        want = _grad(total, pt.chosen(indices))
        got = _tuple(p.kkt_vjp(x, *lam, *nu, u, *w_g, *w_h, *values))
        checks.append(Check("the KKT VJP against autograd of (∇ₓL, g, h)", _error(got, want),
                            VJP_TOL))  # fmt: skip
    return checks


def derived_checks(module: ModuleType, values: list[torch.Tensor], x, info, seed=0):
    """Each derived function of the rule against autograd, at x (the packed state)."""
    p = module.PROBLEM
    multipliers: list[torch.Tensor] = []
    if p.rule == "sqp":  # the runtime's own split of (λ, ν) into the constraint blocks
        _, _, sizes = module._sqp_constraints(p, x, values)
        multipliers = module._sqp_multiplier_blocks(p, *info.multipliers, sizes)
    pt = _Point(module, values, x, multipliers, seed)
    checks = _objective_checks(pt)
    if p.rule == "pgd" and hasattr(p, "set_data_vjp"):
        checks += _data_check(pt, "the set data's VJP", p.set_data, p.set_data_vjp,
                              p.set_grad_indices)  # fmt: skip
    if p.rule == "admm":
        checks += _data_check(pt, "the block data's VJP", p.block_data, p.block_data_vjp,
                              p.block_grad_indices)  # fmt: skip
    if p.rule == "sqp":
        checks += _constraint_checks(pt)
    return checks


def _state(module, out):
    """The layer's result as the rule's packed state: the variables flattened row-major
    and joined in spec order (one variable: itself)."""
    if module.VARIABLES is None:
        return out
    outs = out if isinstance(out, tuple) else (out,)
    flat = [
        o.reshape(*o.shape[: o.dim() - len(c)], -1) for o, (_, c) in zip(outs, module.VARIABLES)
    ]
    return torch.cat(flat, -1)


def gradient_check(
    module: ModuleType, values: Mapping[str, torch.Tensor], seed: int = 0
) -> list[Check]:
    """The folded gradient of ⟨w, x*⟩ against central differences through the forward, per
    gradient parameter and batch element (each element has its own copy of every input),
    on the elements that converged in all three solves. The solves run at a tolerance of
    at most 1e-11 and ten times the spec's iterations."""
    cls = getattr(module, module.__all__[0])
    defaults = cls.__init__.__kwdefaults__
    layer = cls(
        tol=min(float(defaults["tol"]), 1e-11),
        max_iter=10 * int(defaults["max_iter"]),
        on_nonconvergence="ignore",
    )
    grads = [n for n in values if n in module.GRAD_PARAMETERS]
    gen = torch.Generator().manual_seed(seed + 7)
    inputs = {n: v.clone().requires_grad_(n in grads) for n, v in values.items()}
    x = _state(module, layer(**inputs))
    base = layer.info.converged.clone()
    weight = torch.randn(x.shape, generator=gen, dtype=F64)
    folded = torch.autograd.grad((x * weight).sum(), [inputs[n] for n in grads]) if grads else ()
    checks = []
    for name, g in zip(grads, folded):
        v, rank = values[name], len(module.PARAMETERS[name])
        d = torch.randn(v.shape, generator=gen, dtype=F64)
        eps = 1e-6 * max(1.0, float(v.abs().max()))
        ok, sides = base, []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                shifted = _state(module, layer(**{**values, name: v + sign * eps * d}))
            ok = ok & layer.info.converged
            sides.append((shifted * weight).reshape(*ok.shape, -1).sum(-1))
        label = f"∂⟨w, x*⟩/∂{name} against central differences"
        if not bool(ok.any()):
            why = "no element converged in all three solves on random data"
            checks.append(Check(label, math.nan, FD_TOL, why))
            continue
        fd = (sides[0] - sides[1]) / (2 * eps)
        exact = (g * d).reshape(*ok.shape, -1).sum(-1) if rank else (g * d).reshape(ok.shape)
        err = float((exact - fd)[ok].abs().max()) / max(1.0, float(fd[ok].abs().max()))
        checks.append(Check(label, err, FD_TOL))
    return checks


def verify(
    module: ModuleType, properties: Mapping[str, set[str]], seed: int = 0, draws: int = 4
) -> list[Check]:
    """Every check for ``module`` on random inputs of its default sizes (batch 2): the first
    of ``draws`` random draws on which an element converges (random data may well make a
    problem infeasible or unbounded), else the last. The derived VJPs are compared at the
    forward's x where it is finite, else at a random x."""
    p = module.PROBLEM
    layer = getattr(module, module.__all__[0])(on_nonconvergence="ignore")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in range(draws):
            values = random_inputs(module, properties, module.DEFAULT_DIMS, seed=seed + k)
            with torch.no_grad():
                x = _state(module, layer(**values))
            if bool(layer.info.converged.any()):
                break
        if not bool(torch.isfinite(x).all()):
            x = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
        ordered = [
            torch.as_tensor(values[n] if n in values else p.defaults[n], dtype=F64)
            for n in p.parameters
        ]
        checks = [
            Check(c.name, c.error, c.tol, "the reference is not finite at the test point")
            if math.isnan(c.error) else c
            for c in derived_checks(module, ordered, x, layer.info, seed)
        ]  # fmt: skip
        checks += gradient_check(module, values, seed)
    return checks
