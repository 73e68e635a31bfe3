"""Elementwise functions: their sympy definitions (for scalar calculus) and torch spellings.

Each function is a sympy function of one real variable. Its derivative is computed by sympy
(``sympy.diff``) and translated back into the vector IR, where an elementwise function's
Jacobian is the diagonal scaling ``diag(f'(a))``. Functions sympy lacks (sigmoid, softplus,
entr) are sympy ``Function`` subclasses with an ``fdiff``, so differentiation sees them, and the
printer maps each to the numerically stable torch op (``torch.nn.functional.softplus``,
``torch.special.entr``) instead of its textbook formula.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import sympy


class sigmoid(sympy.Function):  # noqa: N801 - named as the spec spells it
    """1 / (1 + exp(-t))."""

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        s = sigmoid(self.args[0])
        return s * (1 - s)


class softplus(sympy.Function):  # noqa: N801
    """log(1 + exp(t)), printed as the overflow-safe torch op."""

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return sigmoid(self.args[0])


class entr(sympy.Function):  # noqa: N801
    """-t log t (0 at t = 0), as in CVXPY and torch.special.entr."""

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return -sympy.log(self.args[0]) - 1


class huber(sympy.Function):  # noqa: N801
    """CVXPY's huber(t) with M = 1: t² for |t| ≤ 1, else 2|t| − 1 (convex, C¹); a general
    M is M²·huber(t/M), built by the parser."""

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return huber_slope(self.args[0])


class huber_slope(sympy.Function):  # noqa: N801
    """huber'(t) = 2·clamp(t, −1, 1)."""

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return huber_curvature(self.args[0])


class huber_curvature(sympy.Function):  # noqa: N801
    """huber''(t) = 2 for |t| ≤ 1, else 0 (its own derivative is zero almost everywhere)."""

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return sympy.S.Zero


class pos(sympy.Function):  # noqa: N801
    """max(t, 0), CVXPY's pos (convex, not differentiable at 0)."""

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return step(self.args[0])


class step(sympy.Function):  # noqa: N801
    """pos'(t): 1 for t > 0, else 0 (its own derivative is zero almost everywhere)."""

    def fdiff(self, argindex: int = 1) -> sympy.Expr:
        return sympy.S.Zero


T = sympy.Symbol("t", real=True)


@dataclass(frozen=True)
class Elementwise:
    """One elementwise function: how sympy sees it, how torch spells it."""

    name: str
    sympy_fn: Callable[[sympy.Expr], sympy.Expr]
    torch: str
    numeric: Callable[[float], float] | None
    math: str

    def derivative(self) -> sympy.Expr:
        """f'(t) as a sympy expression of the symbol T (zero where it is a Dirac delta:
        sign is piecewise constant, and its derivative is zero almost everywhere)."""
        return _derivative(self.sympy_fn)


@functools.cache
def _derivative(fn: Callable[[sympy.Expr], sympy.Expr]) -> sympy.Expr:
    """sympy's f'(T), computed once per function (a derivation asks for it at every node)."""
    return sympy.diff(fn(T), T).replace(sympy.DiracDelta, lambda *a: 0)


def _sigmoid(t: float) -> float:
    """Overflow-safe for any finite t."""
    if t >= 0:
        return 1.0 / (1.0 + math.exp(-t))
    e = math.exp(t)
    return e / (1.0 + e)


def _softplus(t: float) -> float:
    """log(1 + exp(t)) without overflow: max(t, 0) + log1p(exp(−|t|))."""
    return max(t, 0.0) + math.log1p(math.exp(-abs(t)))


def _huber(t: float) -> float:
    return t * t if abs(t) <= 1 else 2 * abs(t) - 1


def _huber_slope(t: float) -> float:
    return 2 * min(max(t, -1.0), 1.0)


def _huber_curvature(t: float) -> float:
    return 2.0 if abs(t) <= 1 else 0.0


def _pos(t: float) -> float:
    return max(t, 0.0)


def _step(t: float) -> float:
    return 1.0 if t > 0 else 0.0


def _sign(t: float) -> float:
    return math.copysign(1.0, t) if t else 0.0


ELEMENTWISE: dict[str, Elementwise] = {
    f.name: f
    for f in (
        Elementwise("exp", sympy.exp, "torch.exp", math.exp, "exp"),
        Elementwise("log", sympy.log, "torch.log", math.log, "log"),
        Elementwise("sqrt", sympy.sqrt, "torch.sqrt", math.sqrt, "√"),
        Elementwise("sin", sympy.sin, "torch.sin", math.sin, "sin"),
        Elementwise("cos", sympy.cos, "torch.cos", math.cos, "cos"),
        Elementwise("tanh", sympy.tanh, "torch.tanh", math.tanh, "tanh"),
        Elementwise("sigmoid", sigmoid, "torch.sigmoid", _sigmoid, "σ"),
        Elementwise(
            "softplus",
            softplus,
            "torch.nn.functional.softplus",
            _softplus,
            "softplus",
        ),
        Elementwise("abs", sympy.Abs, "torch.abs", abs, "abs"),
        Elementwise("sign", sympy.sign, "torch.sign", _sign, "sign"),
        Elementwise("entr", entr, "torch.special.entr", None, "entr"),
        Elementwise("pos", pos, "torch.relu", _pos, "pos"),
        # Printed as the runtime's batched definitions (foldgen/runtime/core.py).
        Elementwise("step", step, "_step", _step, "step"),
        Elementwise("huber", huber, "_huber", _huber, "huber"),
        Elementwise("huber_slope", huber_slope, "_huber_slope", _huber_slope, "huber′"),
        Elementwise(
            "huber_curvature", huber_curvature, "_huber_curvature", _huber_curvature, "huber″"
        ),
    )
}

# sympy classes back to our names, for translating derivatives into the IR.
SYMPY_TO_NAME: dict[type, str] = {
    sympy.exp: "exp",
    sympy.log: "log",
    sympy.sin: "sin",
    sympy.cos: "cos",
    sympy.tanh: "tanh",
    sigmoid: "sigmoid",
    softplus: "softplus",
    sympy.Abs: "abs",
    sympy.sign: "sign",
    entr: "entr",
    huber: "huber",
    huber_slope: "huber_slope",
    huber_curvature: "huber_curvature",
    pos: "pos",
    step: "step",
}
