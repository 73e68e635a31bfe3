"""One call of a generated layer on random default-size data: the run-time half of the
untrusted-input contract (shared by the corpus test and the fuzzer).

The inputs honour what the spec declares about them (``psd``/``pd`` matrices are A Aᵀ/n + I/2,
``symmetric`` ones are symmetrised, ``diagonal`` ones diagonal, ``nonneg`` ones non-negative,
scalars with a default take it) and nothing more: random data may well make a problem
infeasible, unbounded or slow, and the layer must then *say so* per element rather than crash
or hand back non-finite numbers.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from types import ModuleType

import torch

from foldgen.spec import Spec
from foldgen.verify import random_inputs as verify_inputs


@dataclass(frozen=True)
class Outcome:
    """What one probing call did."""

    elements: int  # batch elements solved
    converged: int  # of those, reported converged (and feasible)
    finite: bool  # the solution and every returned gradient are finite


def _dims(module: ModuleType, spec: Spec, cap: int) -> dict[str, int]:
    """The spec's default sizes, each capped (a fuzzed default may be huge)."""
    return {name: min(int(size), cap) for name, size in module.DEFAULT_DIMS.items()} | {
        name: min(int(size), cap) for name, size in spec.dims.items()
    }


def random_inputs(
    module: ModuleType,
    spec: Spec,
    batch: tuple[int, ...] = (2,),
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    cap: int = 64,
) -> dict[str, torch.Tensor | float]:
    """Inputs for every parameter of the layer that has no default (`foldgen.verify`'s
    draw, every size capped), gradient parameters requiring grad."""
    properties = {name: set[str](p.properties) for name, p in spec.parameters.items()}
    drawn = verify_inputs(module, properties, _dims(module, spec, cap), batch, seed, cap)
    out: dict[str, torch.Tensor | float] = {}
    for name, t in drawn.items():
        if name in module.GRAD_PARAMETERS:
            t.requires_grad_(True)
        out[name] = t.to(dtype) if dtype != torch.float64 else t
    return out


def probe(
    module: ModuleType, spec: Spec, batch: tuple[int, ...] = (2,), seed: int = 0, **settings
) -> Outcome:
    """Build the layer, call it once on random data, back-propagate a random weight.

    Raises whatever the layer raises: a test calling this treats any exception as a failure
    of the contract (a ValueError is right only for inputs that break the declared shapes,
    which these never do).
    """
    layer = getattr(module, spec.class_name)(on_nonconvergence="ignore", **settings)
    values = random_inputs(module, spec, batch, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = layer(**values)
        xs = x if isinstance(x, tuple) else (x,)
        gen = torch.Generator().manual_seed(seed + 1)
        leaves = [v for v in values.values() if isinstance(v, torch.Tensor) and v.requires_grad]
        finite = all(bool(torch.isfinite(t).all()) for t in xs)
        if leaves:
            loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in xs)
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
            finite = finite and all(g is None or bool(torch.isfinite(g).all()) for g in grads)
    info = layer.info
    converged = info.converged & info.feasible
    return Outcome(converged.numel(), int(converged.sum()), finite)
