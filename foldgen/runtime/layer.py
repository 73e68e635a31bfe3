"""The layer machinery every generated module shares: the info records and warnings, input
gathering and validation, the adjoint solve and the folded ``autograd.Function``.

Everything the problem contributes arrives as ``p``, the generated module's problem record
(see `foldgen.runtime.contract`): its parameters' shapes, its defaults, its derived functions
and the rule's ``solve``/``pullback``. Nothing here depends on a spec, so the same code serves
every module, copied into it or imported from a shared runtime file.
"""

import dataclasses
import math
import sys
import types
import warnings

import torch

from foldgen.runtime.core import _as_tuple, _norm, _wrapped
from foldgen.runtime.linsolve import (
    _dense_from_matvec,
    _solve_cg,
    _solve_direct,
    _solve_gmres,
    _solve_lfpi,
    _solve_lstsq,
)

_BACKWARD_METHODS = ("auto", "active_set", "lfpi", "gmres", "cg", "direct")
_NONCONVERGENCE_POLICIES = ("warn", "raise", "ignore")


_SHARED = "_foldgen_shared"


def _shared_class(name, base, doc):
    """The process-wide class ``name``, one for every foldgen module of any version.

    The first module imported defines it in the stdlib-only module ``_foldgen_shared``
    (registered in ``sys.modules``); later ones, and ``foldgen`` itself, reuse it, so one
    ``warnings.filterwarnings(..., category=ConvergenceWarning)`` or ``except
    ConvergenceError`` covers every generated layer.
    """
    shared = sys.modules.get(_SHARED)
    if shared is None:
        shared = types.ModuleType(_SHARED, "Classes shared by every foldgen-generated module.")
        sys.modules[_SHARED] = shared
    found = getattr(shared, name, None)
    if not (isinstance(found, type) and issubclass(found, base)):
        found = type(name, (base,), {"__doc__": doc, "__module__": _SHARED})
        setattr(shared, name, found)
    return found


ConvergenceWarning = _shared_class(
    "ConvergenceWarning",
    RuntimeWarning,
    "A batch element's forward or backward solve stopped before its tolerance.",
)
ConvergenceError = _shared_class(
    "ConvergenceError",
    RuntimeError,
    'Raised instead of ConvergenceWarning under on_nonconvergence="raise".',
)


@dataclasses.dataclass(frozen=True)
class SolveInfo:
    """What the forward did, per batch element (tensors of the batch shape).

    The first five fields are every rule's; then each rule fills its own and leaves the
    others None: PGD ``alpha`` (the step D, (..., 1) or (..., n) for a diagonal D), ADMM
    ``rho`` (the penalty ρ at the end), SQP ``alpha`` (the last line-search step) and
    ``multipliers`` ((λ, ν) of the inequality and equality constraints). ADMM on a QP also
    fills ``polished``: True where the answer is the solve of the guessed active set's KKT
    system, accepted because one ADMM sweep from it passed the stopping test.
    """

    iterations: torch.Tensor  # int64
    residual: torch.Tensor  # ‖U(x) − x‖ at the returned x
    converged: torch.Tensor  # bool: residual ≤ tol and the feasible set is non-empty
    feasible: torch.Tensor  # bool: False where the constraints admit no point
    step: torch.Tensor  # the rule's step, one number per element (PGD: mean α; ADMM: ρ; SQP: α)
    alpha: torch.Tensor | None = None  # PGD, SQP: the step the backward folds with
    rho: torch.Tensor | None = None  # ADMM: the penalty the backward folds with
    multipliers: tuple | None = None  # SQP: (λ, ν), each (..., m)
    tol: float | None = None  # the tolerance this call used (the setting, fitted to the dtype)
    polished: torch.Tensor | None = None  # ADMM (QPs): bool, the answer came from a polish


@dataclasses.dataclass(frozen=True)
class BackwardInfo:
    """What the backward's adjoint solve (I − Φᵀ) v = ∂L/∂x did, per batch element.

    Where ``converged`` is False the element's gradient is zero: its forward did not converge
    or was infeasible, or its adjoint solve did not reach the tolerance, or its gradient was
    not finite; ``forward_converged`` tells the forward's failures apart from the backward's.
    """

    method: str
    iterations: torch.Tensor  # int64
    residual: torch.Tensor  # ‖(I − Φᵀ) v − g‖ / ‖g‖ (inf where the system was not solved)
    converged: torch.Tensor  # bool: the gradient is the folded derivative (else it is zero)
    forward_converged: torch.Tensor  # bool: the forward converged and was feasible
    tol: float | None = None  # the tolerance this call's solve used (fitted to the dtype)
    fallback: torch.Tensor | None = None  # bool: the gradient came from a fallback solver


def _gather(p, layer, args, kwargs):
    """The parameter values in call order: positional, keyword, bound, then defaults.

    ``args`` fill the inputs not bound in the constructor, in call order; ``kwargs`` name
    any input, a bound one included (it overrides the bound value for this call).
    """
    free = [name for name in p.parameters if name not in layer.bound]
    if len(args) > len(free):
        raise TypeError(
            f"{layer.__class__.__name__} takes {len(free)} positional inputs "
            f"({', '.join(free)}), got {len(args)}"
        )
    given = dict(zip(free, args))
    for name, value in kwargs.items():
        if name not in p.parameters:
            raise TypeError(f"unknown input '{name}'; the inputs are {', '.join(p.parameters)}")
        if name in given:
            raise TypeError(f"input '{name}' given twice")
        given[name] = value
    values = []
    for name in p.parameters:
        if name in given:
            values.append(given[name])
        elif name in layer.bound:
            values.append(getattr(layer, name))
        elif name in p.defaults:
            values.append(p.defaults[name])
        else:
            raise TypeError(f"missing input '{name}'")
    return values


def _validate(p, values, x_init):
    """Tensors of one supported dtype and one device, with consistent sizes; else ValueError
    naming the odd input (the one that disagrees with the majority; of two, the later).

    Returns the tensors, the sizes of the dims, and the broadcast batch shape.
    """
    given = []  # (name, core, tensor) of the inputs given as tensors
    for (name, core), value in zip(p.parameters.items(), values):
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and not core
        if not isinstance(value, torch.Tensor) and not number:
            raise ValueError(
                f"{name}: expected a tensor of shape {_shape_text(core)}, got {type(value).__name__}"
            )
        if isinstance(value, torch.Tensor):
            _check_dtype(name, value)
            given.append((name, core, value))
    if not given:
        # Every input is a plain number (defaults included): torch's default dtype and device.
        default = torch.zeros(())
        dtype, device = default.dtype, default.device
    else:
        dtype, holder = _majority([(name, value.dtype) for name, _, value in given])
        for name, _, value in given:
            if value.dtype != dtype:
                raise ValueError(f"{name}: dtype {value.dtype} differs from {holder}'s {dtype}")
        device, holder = _majority([(name, value.device) for name, _, value in given])
        for name, _, value in given:
            if value.device != device:
                raise ValueError(f"{name}: device {value.device} differs from {holder}'s {device}")
    tensors = []
    for (name, core), value in zip(p.parameters.items(), values):
        if not isinstance(value, torch.Tensor):
            value = torch.tensor(float(value), dtype=dtype, device=device)
        if value.dim() < len(core):
            raise ValueError(
                f"{name}: expected shape {_shape_text(core)}, got {tuple(value.shape)}"
            )
        if not _wrapped(value) and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name}: contains NaN or Inf")
        if value.requires_grad and name not in p.grad_parameters:
            raise ValueError(
                f"{name}: requires grad, but the spec declares it grad: false "
                "(detach it, or declare grad: true)"
            )
        tensors.append(value)
    shapes = [(name, t.shape, core) for (name, core), t in zip(p.parameters.items(), tensors)]
    for name, t, core in _warm_starts(p, x_init):
        if not isinstance(t, torch.Tensor) or t.dtype != dtype:
            raise ValueError(f"{name}: expected a {dtype} tensor")
        if t.device != device:
            raise ValueError(f"{name}: device {t.device} differs from the inputs' {device}")
        if t.dim() < len(core):
            raise ValueError(f"{name}: expected shape {_shape_text(core)}, got {tuple(t.shape)}")
        if not _wrapped(t) and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}: contains NaN or Inf")
        # A packed problem's warm starts are checked against the variables' shapes when
        # packed (their sizes may be dim arithmetic); here they give only the batch shape.
        shapes.append(
            (name, t.shape, core)
            if p.variables is None
            else (name, t.shape[: t.dim() - len(core)], ())
        )
    sizes = _dim_sizes(p, shapes)
    batch = _batch_shape(shapes)
    return tensors, sizes, batch


def _warm_starts(p, x_init):
    """(argument name, tensor, core shape) of each warm start given."""
    if p.variables is None:
        return [] if x_init is None else [(f"{p.variable[0]}_init", x_init, p.variable[1])]
    cores = dict(p.variables)
    return [(f"{name}_init", t, cores[name]) for name, t in x_init.items() if t is not None]


def _packed_warm_start(p, values, warm):
    """The packed state of the given warm starts, the spec's init for the variables not
    given (None when none is given); ValueError naming a warm start of the wrong shape."""
    if not any(t is not None for t in warm.values()):
        return None
    # one variable unpacks to a bare tensor, several to a tuple
    parts = list(_as_tuple(p.unpack(p.init(*values), *values)))
    for i, ((name, core), t) in enumerate(zip(p.variables, warm.values())):
        if t is None:
            continue
        expected = tuple(parts[i].shape[parts[i].dim() - len(core) :])
        got = tuple(t.shape[t.dim() - len(core) :])
        if got != expected:
            sizes = ", ".join(["...", *map(str, expected)])
            raise ValueError(
                f"{name}_init: expected shape ({sizes}) = {_shape_text(core)}, "
                f"got {tuple(t.shape)}"
            )
        parts[i] = t
    cores = [len(core) for _, core in p.variables]
    batch = torch.broadcast_shapes(*(t.shape[: t.dim() - k] for t, k in zip(parts, cores)))
    parts = [t.expand(torch.Size(batch) + t.shape[t.dim() - k :]) for t, k in zip(parts, cores)]
    return p.pack(*parts, *values)


def _check_dtype(name, value):
    """float32 and float64 only: the solvers' linear algebra (LU, Cholesky, eigh, pinv) has no
    float16/bfloat16 kernels, so half precision is refused here rather than deep inside."""
    if not value.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {value.dtype}")
    if value.dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"{name}: dtype {value.dtype} is not supported; use float32 or float64 "
            "(cast the input, and the result back if needed)"
        )


def _majority(pairs):
    """The most common value among (name, value) pairs (ties to the first seen), and the
    first name holding it: inputs that differ from it are the odd ones."""
    counts = {}
    for name, value in pairs:
        counts.setdefault(value, [0, name])[0] += 1
    value, (_, name) = max(counts.items(), key=lambda item: item[1][0])
    return value, name


def _dim_sizes(p, shapes):
    """The size of each named dim, by majority over the inputs that carry it; ValueError
    naming the input whose size differs, or the one that gives the variable's dim size 0."""
    seen = {}  # dim -> [(name, size)]
    for name, shape, core in shapes:
        for axis, dim in enumerate(core):
            size = shape[len(shape) - len(core) + axis]
            if isinstance(dim, int):
                if size != dim:
                    raise ValueError(
                        f"{name}: axis {axis - len(core)} has size {size}, expected {dim}"
                    )
            else:
                seen.setdefault(dim, []).append((name, axis - len(core), size))
    sizes = {}
    for dim, found in seen.items():
        size, holder = _majority([(name, size) for name, _, size in found])
        for name, axis, other in found:
            if other != size:
                raise ValueError(
                    f"{name}: axis {axis} has size {other}, but {dim} = {size} from {holder}"
                )
        sizes[dim] = size
    dim = p.variable[1][0]
    if p.variables is None and dim in seen and sizes[dim] == 0:
        name, axis, _ = seen[dim][0]
        raise ValueError(
            f"{name}: axis {axis} has size 0, but {dim}, the size of {p.variable[0]}, "
            "must be at least 1"
        )
    return sizes


def _batch_shape(shapes):
    """The broadcast batch shape of the inputs; else ValueError naming the input in conflict
    with the most others (ties to the later one) and one it conflicts with."""
    batches = [(name, shape[: len(shape) - len(core)]) for name, shape, core in shapes]
    try:
        return torch.broadcast_shapes(*(batch for _, batch in batches))
    except RuntimeError:
        pass

    def clash(a, b):
        try:
            torch.broadcast_shapes(a, b)
        except RuntimeError:
            return True
        return False

    conflicts = [[other for other in batches if clash(batch, other[1])] for _, batch in batches]
    odd = max(reversed(range(len(batches))), key=lambda i: len(conflicts[i]))
    (name, batch), (other, other_batch) = batches[odd], conflicts[odd][0]
    raise ValueError(
        f"{name}: batch dimensions {tuple(batch)} do not broadcast with {other}'s "
        f"{tuple(other_batch)}"
    )


def _shape_text(core):
    return "(" + ", ".join(["...", *map(str, core)]) + ")"


def _progress(layer, what, info, seconds):
    """verbose=True: one line per solve on stderr (iterations, residual, elements converged,
    time), for watching a training run."""
    done = int(info.converged.sum())
    iterations = int(info.iterations.max()) if info.iterations.numel() else 0
    finite = info.residual[torch.isfinite(info.residual)]
    worst = float(finite.max()) if finite.numel() else 0.0
    print(
        f"{layer.__class__.__name__} {what}: {done}/{info.converged.numel()} converged, "
        f"≤ {iterations} iterations, residual ≤ {worst:.2e}, {seconds:.3f} s",
        file=sys.stderr,
    )


def _report(layer, what, converged, detail):
    """Apply the non-convergence policy for the elements where ``converged`` is False."""
    _report_groups(layer, what, [(converged, detail)])


def _report_groups(layer, what, groups):
    """Apply the non-convergence policy once for a call: ``groups`` are (converged, detail)
    pairs, one per reason; every group with a failed element becomes one clause of a single
    warning (or error), so a call never emits more than one."""
    if layer.on_nonconvergence == "ignore":
        return
    clauses = [
        f"{_where(converged)} ({detail})"
        for converged, detail in groups
        if not bool(converged.all())
    ]
    if not clauses:
        return
    name = layer.__class__.__name__
    message = f"{name}: {what} did not converge for {'; and for '.join(clauses)}"
    if layer.on_nonconvergence == "raise":
        raise ConvergenceError(message)
    warnings.warn(message, ConvergenceWarning, stacklevel=_caller_level(layer))


def _where(converged):
    """The elements where ``converged`` is False, as a message names them (at most ten)."""
    if converged.dim() == 0:
        return "the (unbatched) input"
    return f"batch element(s) {_indices(~converged)}"


def _indices(mask):
    """The batch indices where ``mask`` (batched) holds, at most ten: "0, 3 and 5 more"."""
    found = [tuple(i) if len(i) > 1 else i[0] for i in mask.nonzero().tolist()]
    more = f" and {len(found) - 10} more" if len(found) > 10 else ""
    return ", ".join(map(str, found[:10])) + more


#: The clause for elements whose iterates stopped being finite or ran away.
_DIVERGED = "the iterates diverged (unbounded below?); the last finite iterate is returned"


def _trend(residual, halfway, bound, failed, iterations):
    """The residual trend of the worst element in ``failed`` (residual/bound largest), for a
    max_iter warning: where it was at iteration ``iterations // 2`` (``halfway``), where it
    ended, and how many more iterations that rate would need; "" where nothing failed or
    no halfway value was recorded."""
    if halfway is None or not bool(failed.any()):
        return ""
    ratio = torch.where(failed, residual / bound.clamp_min(torch.finfo(bound.dtype).tiny), -1)
    i = int(ratio.reshape(-1).argmax())
    end, mid, goal = (float(t.reshape(-1)[i]) for t in (residual, halfway, bound))
    half = iterations // 2
    span = iterations - half
    if not (math.isfinite(mid) and math.isfinite(end)) or mid <= 0 or end <= 0 or span <= 0:
        return ""
    text = f"; the worst fell from {mid:.2g} at iteration {half} to {end:.2g} at {iterations}"
    rate = math.log(end / mid) / span  # log of the factor per iteration
    if rate >= -1e-12:
        return text + ", stalled: more iterations will not help"
    more = math.log(goal / end) / rate if goal > 0 else math.inf
    if not math.isfinite(more):
        return text
    return text + f", about {math.ceil(more):,} more iterations at that rate"


def _caller_level(layer):
    """The warning's stack level of the first frame outside foldgen's code (the runtime, the
    layer's own module) and torch."""
    frame, level = sys._getframe(1), 1
    own = type(layer).__module__
    while frame is not None and (
        frame.f_globals is globals()
        or frame.f_globals.get("__name__", "") == own
        or frame.f_globals.get("__name__", "").startswith("torch")
    ):
        frame, level = frame.f_back, level + 1
    return level


def _structured_result(phi_t, v, g):
    """A structure's closed-form v as the iterative solvers return it: (v, one iteration, the
    relative residual of (I − Φᵀ) v = g through the matrix-free ``phi_t`` itself), so a
    structure that does not hold is seen by the tolerance check and falls back; v is 0 where
    it is not finite."""
    residual = _norm(v - phi_t(v) - g) / _norm(g).clamp_min(torch.finfo(g.dtype).tiny)
    residual = torch.where(torch.isfinite(residual), residual, math.inf)
    iterations = torch.ones(g.shape[:-1], dtype=torch.int64, device=g.device)
    return torch.where(torch.isfinite(v), v, 0), iterations, residual


def _adjoint(layer, phi_t, dense_phi_t, g, usable=None, structure=None):
    """Solve (I − Φᵀ) v = g by the layer's backward method; records ``backward_info``.

    ``dense_phi_t()`` builds the Φᵀ map over one extra batch axis, for the dense solve.
    ``structure``, where the rule proves one (PGD's `_ActiveSet`, SQP's `_SqpKkt`), offers
    ``solve(phi_t, g)``, the exact reduced solve, and ``dense()``, Φᵀ in closed form for
    ``direct``; where ``structure.exact`` (Φᵀ = (1 − α)I) ``direct`` is that solve itself.
    An element the rule cannot differentiate (``usable`` False), whose right-hand side is not
    finite, or whose solve misses the tolerance gets v = 0 and ``converged`` False; the
    reporting and the zeroing of its gradients are ``_Fold.backward``'s.
    """
    n = g.shape[-1]
    batch = g.shape[:-1]
    ok = torch.isfinite(g).all(-1)
    if usable is not None:
        ok = ok & usable.expand(batch)
    g = torch.where(ok[..., None], g, 0)
    method, tol = layer.backward_method, layer.adjoint_tol
    small = n <= 128 and batch.numel() * n * n <= 2**24  # Φᵀ small enough to materialise
    structured = structure is not None and structure.available
    if method in ("auto", "active_set"):
        # The exact reduced solve where the structure is proven; else a dense LU while Φᵀ
        # is small enough to materialise, else matrix-free GMRES.
        method = "active_set" if structured else "direct" if small else "gmres"
    dense = []  # Φᵀ as a matrix, built at most once

    def solve(name, rhs):
        if name == "active_set":
            return structure.solve(phi_t, rhs)
        if name == "direct" and structured and structure.exact:
            return structure.solve(phi_t, rhs)  # Φᵀ's closed form solves it exactly
        if name in ("direct", "lstsq"):
            if not dense:
                if structured:
                    dense.append(structure.dense().expand(*batch, n, n))
                else:
                    dense.append(_dense_from_matvec(dense_phi_t(), batch, n, g.dtype, g.device))
            return (_solve_direct if name == "direct" else _solve_lstsq)(dense[0], rhs)
        return _iterative(layer, name, phi_t, rhs, tol)

    v, iterations, residual = solve(method, g)
    residual = torch.where(ok, residual, math.inf)
    converged = ok & (residual <= tol)
    fallback = torch.zeros_like(ok)
    chain = _FALLBACKS[method] if layer.backward_fallback else ()
    for name in chain:
        retry = ok & ~converged
        if not bool(retry.any()):
            break
        if name in ("direct", "lstsq") and not small:
            continue
        v2, iterations2, residual2 = solve(name, torch.where(retry[..., None], g, 0))
        rescued = retry & (residual2 <= tol)
        v = torch.where(rescued[..., None], v2, v)
        residual = torch.where(rescued, residual2, residual)
        iterations = iterations + torch.where(retry, iterations2, 0)
        converged = converged | rescued
        fallback = fallback | rescued
    # The forward's flags are _Fold.backward's to fill in.
    unknown = torch.ones_like(ok)
    layer.backward_info = BackwardInfo(
        method, iterations, residual, converged, unknown, tol, fallback
    )
    return torch.where(converged[..., None], v, 0)


#: What the backward tries, in order, for the elements its method left short of the
#: tolerance (backward_fallback=True): a Krylov method, a dense LU, then the minimum-norm
#: least-squares solution (the dense ones only while Φᵀ is small enough to materialise).
_FALLBACKS = {
    "active_set": ("gmres", "direct", "lstsq"),
    "direct": ("gmres", "lstsq"),
    "gmres": ("direct", "lstsq"),
    "lfpi": ("gmres", "direct", "lstsq"),
    "cg": ("gmres", "direct", "lstsq"),
}


def _iterative(layer, name, phi_t, g, tol):
    max_iter = layer.backward_max_iter
    if name == "lfpi":
        return _solve_lfpi(phi_t, g, max_iter, tol)
    if name == "cg":
        return _solve_cg(phi_t, g, max_iter, tol)
    restart = min(g.shape[-1], 128)  # a full Krylov space for moderate n: no restart stagnation
    return _solve_gmres(phi_t, g, max_iter, tol, restart)


#: Settings stored under another attribute name: ``compile`` would hide nn.Module.compile.
_SETTING_ATTRIBUTES = {"compile": "compile_body"}


def _init_layer(layer, p, inputs, settings):
    """The constructor's body: check and store the settings, bind the given inputs.

    ``settings`` are the keyword settings by name; ``p.setting_checks`` maps each of the
    rule's own settings to its validator. A bound input becomes a buffer, an ``nn.Parameter`` a parameter, and a
    plain number stays a number (it takes each call's dtype and device).
    """
    method = settings["backward_method"]
    if method not in _BACKWARD_METHODS:
        raise ValueError(f"backward_method: unknown method {method!r}")
    policy = settings["on_nonconvergence"]
    if policy not in _NONCONVERGENCE_POLICIES:
        expected = "'warn', 'raise' or 'ignore'"
        raise ValueError(f"on_nonconvergence: expected {expected}, got {policy!r}")
    layer.max_iter = int(settings["max_iter"])
    layer.tol = float(settings["tol"])
    for name, check in p.setting_checks.items():
        setattr(layer, _SETTING_ATTRIBUTES.get(name, name), check(settings[name]))
    layer._rule_settings = tuple(_SETTING_ATTRIBUTES.get(name, name) for name in p.setting_checks)
    layer.backward_method = method
    layer.backward_max_iter = int(settings["backward_max_iter"])
    layer.backward_tol = float(settings["backward_tol"])
    layer.forward_tol, layer.adjoint_tol = layer.tol, layer.backward_tol  # refit per call
    layer.on_nonconvergence = policy
    layer.backward_fallback = bool(settings["backward_fallback"])
    layer.verbose = bool(settings["verbose"])
    layer.fold_unconverged = bool(settings["fold_unconverged"])
    layer.bound = []
    for name, value in inputs.items():
        if value is None:
            continue
        layer.bound.append(name)
        if isinstance(value, torch.nn.Parameter):
            layer.register_parameter(name, value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            setattr(layer, name, value)
        else:
            layer.register_buffer(name, torch.as_tensor(value))
    layer.info = None
    layer.backward_info = None


#: In a dtype coarser than float64 a tolerance is at least this many machine epsilons.
_EPS_FACTOR = 100


def _fit_tolerance(tol, dtype):
    """The tolerance a call in ``dtype`` uses for the setting ``tol``: the settings are
    float64 tolerances; in float32 one below 100·eps (1.2e-5) cannot be met, so it is raised
    to that. tol = 0 (a fixed number of iterations) stays 0."""
    if dtype == torch.float64 or tol == 0:
        return tol
    return max(tol, _EPS_FACTOR * torch.finfo(dtype).eps)


def _extra_repr(layer):
    """``repr(layer)``: the problem in one line, the settings (the rule's own included) and
    the bound inputs."""
    names = ("max_iter", "tol", *layer._rule_settings, "backward_method", "backward_tol",
             "backward_max_iter", "on_nonconvergence")  # fmt: skip
    settings = ", ".join(f"{name}={getattr(layer, name)!r}" for name in names)
    bound = f", bound={layer.bound}" if layer.bound else ""
    return f"{layer._problem_line}; {settings}{bound}"
