"""Shared helpers for the IR tests (parse, derive, printer): leaves, random batched data, and
compiling a printed function into a callable.

The printed code expects the runtime helpers ``_mv``, ``_dot`` and ``_expand``; they are the
ones of ``foldgen/runtime/core.py``, which every generated module copies (or imports).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from foldgen.expr import Expr, Leaf, Shape
from foldgen.parse import Scope
from foldgen.printer import print_function
from foldgen.runtime import core


def namespace() -> dict[str, object]:
    """A fresh namespace holding what printed functions may use: torch, math and the runtime's
    core helpers (_mv, _dot, _expand, _huber, ...)."""
    helpers = {k: v for k, v in vars(core).items() if k.startswith("_") and callable(v)}
    return {"torch": torch, "math": math, **helpers}


def leaf(name: str, shape: Iterable = (), kind: str = "param", props: Iterable[str] = ()) -> Leaf:
    return Leaf(name, kind, tuple(shape), frozenset(props))


def scope(leaves: Iterable[Leaf], dims: dict[str, int]) -> Scope:
    return Scope(dict(dims), {lf.name: lf for lf in leaves})


def dim_sources(args: Iterable[Leaf]) -> dict[str, str]:
    """dim name -> expression of the arguments' shapes (``{"n": "x.shape[-1]"}``)."""
    out: dict[str, str] = {}
    for a in args:
        for axis, d in enumerate(a.shape):
            if isinstance(d, str) and d not in out:
                out[d] = f"{a.name}.shape[{axis - len(a.shape)}]"
    return out


def source_of(
    name: str, args: list[Leaf], outputs: list[Expr], ref: str | None = None, doc: str = "test"
) -> str:
    """The printed function (``ref`` defaults to the first argument)."""
    return print_function(
        name,
        [a.name for a in args],
        outputs,
        ref=ref or args[0].name,
        dims=dim_sources(args),
        doc=doc,
    )


def compile_source(source: str, name: str):
    """The callable ``name`` defined by ``source``, in a namespace with the module helpers."""
    ns = namespace()
    exec(compile(source, f"<printed {name}>", "exec"), ns)  # noqa: S102 - printed by foldgen
    return ns[name]


def compile_function(name: str, args: list[Leaf], outputs: list[Expr], ref: str | None = None):
    """(source, callable) of the printed function; the callable always returns a tuple."""
    source = source_of(name, args, outputs, ref)
    fn = compile_source(source, name)
    if len(outputs) == 1:
        return source, lambda *a: (fn(*a),)
    return source, fn


def core_shape(shape: Shape, dims: dict[str, int]) -> tuple[int, ...]:
    return tuple(dims[d] if isinstance(d, str) else d for d in shape)


def random_tensor(
    lf: Leaf,
    dims: dict[str, int],
    batch: tuple[int, ...],
    gen: torch.Generator,
    *,
    positive: bool = False,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Random data for one leaf: N(0, 1), or U(0.5, 2) where ``positive``; symmetric where
    the leaf says so."""
    shape = batch + core_shape(lf.shape, dims)
    if positive:
        t = 0.5 + 1.5 * torch.rand(shape, generator=gen, dtype=torch.float64)
    else:
        t = torch.randn(shape, generator=gen, dtype=torch.float64)
    if lf.properties & {"symmetric", "psd", "pd"}:
        t = 0.5 * (t + t.mT)
    return t.to(dtype)


def random_data(
    leaves: Iterable[Leaf],
    dims: dict[str, int],
    batch: tuple[int, ...] = (),
    seed: int = 0,
    positive: Iterable[str] = (),
    dtype: torch.dtype = torch.float64,
) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    pos = set(positive)
    return {
        lf.name: random_tensor(lf, dims, batch, gen, positive=lf.name in pos, dtype=dtype)
        for lf in leaves
    }


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-9, what: str = ""):
    """``actual`` equals ``expected`` to ``rtol`` relative to the largest entry; ``actual`` may
    have fewer (broadcastable) batch dimensions, e.g. a constant output."""
    actual = torch.as_tensor(actual, dtype=expected.dtype)
    assert torch.broadcast_shapes(actual.shape, expected.shape) == expected.shape, (
        f"{what}: shape {tuple(actual.shape)} does not broadcast to {tuple(expected.shape)}"
    )
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(
        actual.expand(expected.shape),
        expected,
        rtol=rtol,
        atol=rtol * scale,
        msg=lambda m: f"{what}: {m}",
    )


def symmetric_part(t: torch.Tensor) -> torch.Tensor:
    return 0.5 * (t + t.mT)
