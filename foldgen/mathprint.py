"""Readable math text for IR expressions, used in generated docstrings and error messages.

Matrix products are written by juxtaposition with explicit transposes (``Q x``, ``Aᵀ w``),
dot products as ``a·b``, elementwise products as ``a ⊙ b``, sums as ``Σ(a)``.

Text is a tree, the IR a DAG: a derived expression that shares subexpressions can have a text
far longer than itself (the Hessian product of ``sin`` nested 40 deep is 357 nodes and 174 728
characters; sharing can make it exponential). So the text is measured before it is made, node
by node over the DAG, and a formula longer than ``MATH_LIMIT`` characters is shown as its
beginning and a note: a docstring stays readable, and the work stays proportional to the DAG
and the limit.
"""

from __future__ import annotations

import math

from foldgen import dims
from foldgen.expr import (
    Add,
    Broadcast,
    Concat,
    Const,
    Diag,
    DiagPart,
    Expr,
    Eye,
    Func,
    Kron,
    KronLeft,
    KronRight,
    Leaf,
    LogSumExp,
    MatMul,
    Mul,
    Outer,
    Part,
    Pow,
    Reshape,
    Slice,
    Softmax,
    Sum,
    SumLargest,
    TopMask,
    Transpose,
    postorder,
    shape_str,
)
from foldgen.functions import ELEMENTWISE
from foldgen.source import number

MATH_LIMIT = 600
"""Longest formula shown in full (about seven docstring lines)."""

_SUPERSCRIPTS = str.maketrans("0123456789-.e+", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻·ᵉ⁺")
_SUBSCRIPTS = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")

# A form is a node's text as parts: literal strings and child nodes (whose own text goes
# there), with any parentheses already decided; plus the node's precedence.
Part_ = str | Expr
Form = tuple[list[Part_], int]


def _num(v: float) -> str:
    if not math.isfinite(v):
        return "∞" if v > 0 else "−∞"
    return str(int(v)) if v == int(v) and abs(v) < 1e15 else number(v)


def math_str(e: Expr, limit: int = MATH_LIMIT) -> str:
    """The text of e, or its first ``limit`` characters and a note saying it is cut."""
    forms: dict[Expr, Form] = {}
    size: dict[Expr, int] = {}
    for node in postorder([e]):
        parts, prec = forms[node] = _form(node, lambda c: forms[c][1])
        size[node] = sum(len(p) if isinstance(p, str) else size[p] for p in parts)
    if size[e] <= limit:
        return _full(e, forms)
    head = _prefix(e, forms, limit)
    cut = head.rfind(" ", limit - 40)
    head = head[:cut] if cut > 0 else head
    total = f"{size[e]:,}" if size[e] < 10**9 else "more than 10⁹"
    return f"{head} … (cut: {total} characters in all)"


def _full(e: Expr, forms: dict[Expr, Form]) -> str:
    """The whole text, each node's made once (every one is part of e's, so short)."""
    text: dict[Expr, str] = {}
    for node in postorder([e]):
        text[node] = "".join(p if isinstance(p, str) else text[p] for p in forms[node][0])
    return text[e]


def _prefix(e: Expr, forms: dict[Expr, Form], limit: int) -> str:
    """The first ``limit`` characters of e's text, without making the rest."""
    out: list[str] = []
    length = 0
    stack: list[Part_] = [e]
    while stack and length < limit:
        part = stack.pop()
        if isinstance(part, str):
            out.append(part)
            length += len(part)
        else:
            stack.extend(reversed(forms[part][0]))
    return "".join(out)[:limit]


def _form(e: Expr, prec) -> Form:
    """e's parts and precedence (4 atom, 3 product, 2 sum); ``prec`` gives a child's."""

    def wrap(c: Expr, p: int) -> list[Part_]:
        return [c] if prec(c) >= p else ["(", c, ")"]

    match e:
        case Leaf(name=name):
            return [name.lstrip("_")], 4
        case Const(value=v):
            return [_num(v)], 4 if v >= 0 else 2
        case Eye():
            return ["I"], 4
        case Add(terms=terms):
            parts = wrap(terms[0], 2)
            for t in terms[1:]:
                if isinstance(t, Mul) and isinstance(t.a, Const) and t.a.value < 0:
                    c = -t.a.value
                    parts += [" − " if c == 1 else f" − {_num(c)} ", *wrap(t.b, 3)]
                elif isinstance(t, Const) and t.value < 0:
                    parts.append(f" − {_num(-t.value)}")
                else:
                    parts += [" + ", *wrap(t, 2)]
            return parts, 2
        case Mul(a=a, b=b):
            if isinstance(a, Const) and a.value == -1:
                return ["−", *wrap(b, 3)], 2
            if isinstance(b, Pow) and isinstance(b.exp, Const) and b.exp.value == -1:
                return [*wrap(a, 3), " / ", *wrap(b.base, 4)], 3
            op = " " if isinstance(a, Const) or a.rank == 0 or b.rank == 0 else " ⊙ "
            return [*wrap(a, 3), op, *wrap(b, 3)], 3
        case Pow(base=b, exp=p):
            if isinstance(p, Const):
                if p.value == 0.5:
                    return ["√", *wrap(b, 4)], 4
                return [*wrap(b, 4), _num(p.value).translate(_SUPERSCRIPTS)], 4
            return [*wrap(b, 4), "^", *wrap(p, 4)], 4
        case MatMul(a=a, b=b):
            if a.rank == 1 and b.rank == 1:
                return [*wrap(a, 4), "·", *wrap(b, 4)], 3
            if a.rank == 1:
                return [*wrap(b, 4), "ᵀ ", *wrap(a, 4)], 3
            return [*wrap(a, 3), " ", *wrap(b, 4)], 3
        case Transpose(a=a):
            return [*wrap(a, 4), "ᵀ"], 4
        case Sum(a=a):
            return ["Σ(", a, ")"], 4
        case Broadcast(a=a):
            return [*wrap(a, 4), " 𝟙"], 3
        case Func(name=name, a=a):
            return [f"{ELEMENTWISE[name].math}(", a, ")"], 4
        case Diag(a=a):
            return ["diag(", a, ")"], 4
        case DiagPart(a=a):
            return ["diagonal(", a, ")"], 4
        case Outer(a=a, b=b):
            return [*wrap(a, 4), " ", *wrap(b, 4), "ᵀ"], 3
        case LogSumExp(a=a):
            return ["logsumexp(", a, ")"], 4
        case Softmax(a=a):
            return ["softmax(", a, ")"], 4
        case Kron(a=a, b=b):
            return [*wrap(a, 4), " ⊗ ", *wrap(b, 4)], 3
        case KronLeft(g=g, b=b):
            return ["kron_left(", g, ", ", b, ")"], 4
        case KronRight(g=g, a=a):
            return ["kron_right(", g, ", ", a, ")"], 4
        case SumLargest(a=a, k=k):
            return (["max(", a, ")"] if k == 1 else ["sum_largest(", a, f", {k})"]), 4
        case TopMask(a=a, k=k):
            return ["top", f"{k}(".translate(_SUBSCRIPTS), a, ")"], 4
        case Part(label=label) if label:
            return [label], 4
        case Reshape(a=Part(label=label)) if label:
            return [label], 4
        case Part(a=a, sizes=sizes, index=index):
            start = dims.total(sizes[:index])
            return [*wrap(a, 4), f"[{start}:{dims.add(start, sizes[index])}]"], 4
        case Reshape(a=Slice(a=a, axis=axis, start=start, stop=stop)) if (
            dims.sub(stop, start) == 1 and e.rank == a.rank - 1
        ):  # an index: x[i], X[:, j]
            return [*wrap(a, 4), f"[{start}]" if axis == 0 else f"[:, {start}]"], 4
        case Reshape(a=a, shape_=shape):
            return ["reshape(", a, f", {shape_str(shape)})"], 4
        case Slice(a=a, axis=axis, start=start, stop=stop):
            first = "" if start == 0 else str(start)
            last = "" if stop == a.shape[axis] else str(stop)
            where = f"{first}:{last}" if axis == 0 else f":, {first}:{last}"
            return [*wrap(a, 4), f"[{where}]"], 4
        case Concat(parts=parts, axis=axis):
            sep = "; " if axis == 0 and e.rank == 2 else ", "
            items: list[Part_] = ["["]
            for i, q in enumerate(parts):
                items += ([sep] if i else []) + [q]
            return [*items, "]"], 4
    raise TypeError(f"no math form for {type(e).__name__}")  # pragma: no cover
