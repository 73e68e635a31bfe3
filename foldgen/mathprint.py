"""Readable math text for IR expressions, used in generated docstrings and error messages.

Matrix products are written by juxtaposition with explicit transposes (``Q x``, ``Aᵀ w``),
dot products as ``a·b``, elementwise products as ``a ⊙ b``, sums as ``Σ(a)``.
"""

from __future__ import annotations

from foldgen.expr import (
    Add,
    Broadcast,
    Const,
    Diag,
    DiagPart,
    Expr,
    Eye,
    Func,
    Leaf,
    LogSumExp,
    MatMul,
    Mul,
    Outer,
    Pow,
    Softmax,
    Sum,
    Transpose,
)
from foldgen.functions import ELEMENTWISE
from foldgen.printer import number

_SUPERSCRIPTS = str.maketrans("0123456789-.", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻·")


def _num(v: float) -> str:
    return str(int(v)) if v == int(v) else number(v)


def math_str(e: Expr) -> str:
    return _m(e)[0]


def _wrap(e: Expr, prec: int) -> str:
    text, p = _m(e)
    return text if p >= prec else f"({text})"


def _m(e: Expr) -> tuple[str, int]:
    """(text, precedence): 4 atom, 3 product, 2 sum."""
    match e:
        case Leaf(name=name):
            return name.lstrip("_"), 4
        case Const(value=v):
            return _num(v), 4 if v >= 0 else 2
        case Eye():
            return "I", 4
        case Add(terms=terms):
            out = _wrap(terms[0], 2)
            for t in terms[1:]:
                if isinstance(t, Mul) and isinstance(t.a, Const) and t.a.value < 0:
                    c = -t.a.value
                    rest = _wrap(t.b, 3)
                    out += f" − {rest}" if c == 1 else f" − {_num(c)} {rest}"
                elif isinstance(t, Const) and t.value < 0:
                    out += f" − {_num(-t.value)}"
                else:
                    out += f" + {_wrap(t, 2)}"
            return out, 2
        case Mul(a=a, b=b):
            if isinstance(a, Const) and a.value == -1:
                return f"−{_wrap(b, 3)}", 2
            if isinstance(b, Pow) and isinstance(b.exp, Const) and b.exp.value == -1:
                return f"{_wrap(a, 3)} / {_wrap(b.base, 4)}", 3
            op = " " if isinstance(a, Const) or a.rank == 0 or b.rank == 0 else " ⊙ "
            return f"{_wrap(a, 3)}{op}{_wrap(b, 3)}", 3
        case Pow(base=b, exp=p):
            if isinstance(p, Const):
                if p.value == 0.5:
                    return f"√{_wrap(b, 4)}", 4
                return f"{_wrap(b, 4)}{_num(p.value).translate(_SUPERSCRIPTS)}", 4
            return f"{_wrap(b, 4)}^{_wrap(p, 4)}", 4
        case MatMul(a=a, b=b):
            if a.rank == 1 and b.rank == 1:
                return f"{_wrap(a, 4)}·{_wrap(b, 4)}", 3
            if a.rank == 1:
                return f"{_wrap(b, 4)}ᵀ {_wrap(a, 4)}", 3
            return f"{_wrap(a, 3)} {_wrap(b, 4)}", 3
        case Transpose(a=a):
            return f"{_wrap(a, 4)}ᵀ", 4
        case Sum(a=a):
            return f"Σ({math_str(a)})", 4
        case Broadcast(a=a):
            return f"{_wrap(a, 4)} 𝟙", 3
        case Func(name=name, a=a):
            return f"{ELEMENTWISE[name].math}({math_str(a)})", 4
        case Diag(a=a):
            return f"diag({math_str(a)})", 4
        case DiagPart(a=a):
            return f"diagonal({math_str(a)})", 4
        case Outer(a=a, b=b):
            return f"{_wrap(a, 4)} {_wrap(b, 4)}ᵀ", 3
        case LogSumExp(a=a):
            return f"logsumexp({math_str(a)})", 4
        case Softmax(a=a):
            return f"softmax({math_str(a)})", 4
    raise TypeError(f"no math form for {type(e).__name__}")  # pragma: no cover
