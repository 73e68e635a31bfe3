"""A batch-aware torch printer for the vector IR, with common-subexpression elimination.

Conventions of the printed code: a tensor of core rank r has shape (..., *core) — vectors on
the last axis, matrices on the last two, any leading batch dimensions, which broadcast. So a
scalar tensor meeting a vector is printed as ``s[..., None]``, a matrix–vector product as
``_mv(A, x)`` (a helper of the module prelude), and sizes come from the inputs' shapes, never
from literals: the printed code is the same for n = 10 and n = 100 000. Dtype and device come
from a reference input wherever a constant tensor must be made.

A subexpression used more than once, or whose inline text would make a long line, becomes a
local ``_tN``; everything is printed in a deterministic order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    is_const,
    postorder,
)
from foldgen.functions import ELEMENTWISE
from foldgen.source import number

# Binding strength, higher binds tighter (Python's own order).
ATOM, POW, UNARY, MULT, ADDITIVE = 6, 5, 4, 3, 2
INLINE_LIMIT = 60
RETURN_LIMIT = 80
LINE_LIMIT = 80  # longest right-hand side: '    _out10 = ' + 80 characters stays within 99


@dataclass(frozen=True)
class Printed:
    """Printed text, its precedence, and whether it is a plain Python number (not a tensor)."""

    text: str
    prec: int
    number: bool = False


class TorchPrinter:
    """Prints IR expressions as statements of one generated function body."""

    def __init__(self, ref: str, dims: dict[str, str]):
        """``ref``: a tensor argument giving dtype/device; ``dims``: dim name → expression
        of the arguments' shapes (``{"n": "x.shape[-1]"}``)."""
        self.ref = ref
        self.dims = dims
        self.used_dims: set[str] = set()
        self.compound: dict[str, str] = {}  # a size such as n - 1 -> its local's name
        self.lines: list[str] = []
        self.memo: dict[Expr, Printed] = {}
        self.temps: set[str] = set()
        self.count = 0

    # -- statements -------------------------------------------------------------------------

    def assign_all(self, exprs: list[Expr]) -> list[str]:
        """Print every expression, emitting shared subexpressions once; returns their texts."""
        order = _printed_postorder(exprs)
        uses: dict[Expr, int] = {}
        for node in order:
            for c in _printed_operands(node):
                uses[c] = uses.get(c, 0) + 1
        roots = set(exprs)
        for r in exprs:  # an output that is also an operand elsewhere is computed once
            uses[r] = uses.get(r, 0) + 1
        for node in order:
            p = self._print_node(node)
            if len(p.text) > LINE_LIMIT:
                p = self._fit_line(node, p)
            used = uses.get(node, 0)
            long = len(p.text) > INLINE_LIMIT and not (node in roots and used == 1)
            if node.children and not p.number and (used > 1 or long):
                self.memo[node] = p
                p = self._hoist(node)
            self.memo[node] = p
        return [self.tensor(e) for e in exprs]

    def _fit_line(self, node: Expr, p: Printed) -> Printed:
        """Operands short enough to inline can still add up to an over-long line (an n-ary
        sum, a product of calls): hoist the longest into temps until the line fits.

        Hoisting one operand changes no other operand's text, so the order is the operands'
        by length, fixed up front; a sum's text is kept as its terms' parts and only the
        parts of a hoisted term change, so a sum of k terms costs O(k), not O(k²)."""
        kids = [
            c
            for c in dict.fromkeys(_printed_operands(node))
            if c.children and not self.memo[c].number and self.memo[c].text not in self.temps
        ]
        kids.sort(key=lambda c: -len(self.memo[c].text))  # stable: ties keep operand order
        if not isinstance(node, Add):
            for longest in kids:
                if len(p.text) <= LINE_LIMIT:
                    break
                self.memo[longest] = self._hoist(longest)
                p = self._print_node(node)
            return p
        parts = [self._add_part(node, i) for i in range(len(node.terms))]
        length = sum(map(len, parts)) + len(parts) - 1
        readers: dict[Expr, list[int]] = {}  # operand -> the terms whose part shows its text
        for i, t in enumerate(node.terms):
            for c in _add_part_operands(t):
                readers.setdefault(c, []).append(i)
        for longest in kids:
            if length <= LINE_LIMIT:
                break
            self.memo[longest] = self._hoist(longest)
            for i in readers[longest]:
                new = self._add_part(node, i)
                length += len(new) - len(parts[i])
                parts[i] = new
        return Printed(" ".join(parts), p.prec, p.number)

    def _hoist_constants(self, texts: list[str], constant: list[bool]) -> list[str]:
        """Texts with the constant blocks (``_z.new_full((n,), 0.0)``: numbers printed as
        tensors, which ``_fit_line`` cannot hoist) bound to temps, one per distinct text."""
        names: dict[str, str] = {}
        for text, is_constant in zip(texts, constant):
            if is_constant and text not in names:
                names[text] = self._hoist_text(text)
        return [names.get(text, text) for text in texts]

    def _hoist_text(self, text: str) -> str:
        name = f"_t{self.count}"
        self.count += 1
        self.temps.add(name)
        self.lines.append(f"{name} = {text}")
        return name

    def _hoist(self, node: Expr) -> Printed:
        """Emit ``_tN = <node's text>`` and return the temp's name."""
        return Printed(self._hoist_text(self.memo[node].text), ATOM)

    def tensor(self, e: Expr) -> str:
        """The printed value of e as a tensor of its full core shape."""
        p = self.memo[e]
        if not p.number and not isinstance(e, Broadcast):
            return p.text
        if p.number:
            return f"{self.ref}.new_full({self._shape_tuple(e.shape)}, {p.text})"
        return p.text

    def prologue(self) -> list[str]:
        """Size definitions the printed lines use (``n = c.shape[-1]``), in a stable order."""
        lines = [f"{d} = {self.dims[d]}" for d in sorted(self.used_dims)]
        return lines + [f"{name} = {dims.source(d)}" for d, name in self.compound.items()]

    # -- nodes ------------------------------------------------------------------------------

    def _get(self, e: Expr) -> Printed:
        return self.memo[e]

    def _as_tensor(self, e: Expr) -> Printed:
        """e's printed form as a tensor: a plain number (a dim, a constant vector such as
        ``ones(n)``) cannot be indexed, multiplied by ``@`` or passed to a torch function."""
        p = self._get(e)
        if not p.number:
            return p
        return Printed(f"{self.ref}.new_full({self._shape_tuple(e.shape)}, {p.text})", ATOM)

    def _wrap(self, p: Printed, prec: int) -> str:
        return p.text if p.prec >= prec else f"({p.text})"

    def _lifted(self, e: Expr, rank: int, prec: int) -> str:
        """Operand e (of lower core rank) aligned to broadcast against rank ``rank``."""
        p = self._get(e)
        if p.number or e.rank == rank:
            return self._wrap(p, prec)
        return f"{self._wrap(p, ATOM)}[..., {', '.join(['None'] * (rank - e.rank))}]"

    def _dim(self, d) -> str:
        if isinstance(d, int):
            return str(d)
        if not dims.is_name(d):  # arithmetic of dims (n - 1): a local of the dim names
            self.used_dims.update(dims.names(d))
            return self.compound.setdefault(d, f"_size{len(self.compound)}")
        self.used_dims.add(d)
        return d

    def _shape_tuple(self, shape) -> str:
        inner = ", ".join(self._dim(d) for d in shape)
        return f"({inner},)" if len(shape) == 1 else f"({inner})"

    def _print_node(self, e: Expr) -> Printed:
        match e:
            case Leaf(kind="dim", name=name):
                return Printed(self._dim(name), ATOM, number=True)
            case Leaf(name=name):
                return Printed(name, ATOM)
            case Const(value=v):
                # ±∞ is only ever a rule's absent bound (the parser refuses infinite numbers)
                text = (("-" if v < 0 else "") + "math.inf") if math.isinf(v) else number(v)
                return Printed(text, ATOM if v >= 0 else UNARY, number=True)
            case Eye(dim=d):
                return Printed(
                    f"torch.eye({self._dim(d)}, dtype={self.ref}.dtype, device={self.ref}.device)",
                    ATOM,
                )
            case Add():
                return self._print_add(e)
            case Mul():
                return self._print_mul(e)
            case Pow(base=b, exp=p):
                return self._print_pow(b, p)
            case MatMul(a=a, b=b):
                return self._print_matmul(a, b)
            case Transpose(a=a):
                return Printed(f"{self._wrap(self._as_tensor(a), ATOM)}.mT", ATOM)
            case Sum(a=a):
                axes = "-1" if a.rank == 1 else "(-2, -1)"
                return Printed(f"{self._wrap(self._as_tensor(a), ATOM)}.sum({axes})", ATOM)
            case Broadcast(a=a, shape_=shape):
                operand = self._get(a)
                if operand.number:
                    return Printed(
                        f"{self.ref}.new_full({self._shape_tuple(shape)}, {operand.text})", ATOM
                    )
                return Printed(f"_expand({operand.text}, {self._shape_tuple(shape)})", ATOM)
            case Func(name=name, a=a):
                return Printed(f"{ELEMENTWISE[name].torch}({self._as_tensor(a).text})", ATOM)
            case Diag(a=a):
                return Printed(f"torch.diag_embed({self._as_tensor(a).text})", ATOM)
            case DiagPart(a=a):
                return Printed(f"{self._wrap(self._as_tensor(a), ATOM)}.diagonal(0, -2, -1)", ATOM)
            case Outer(a=a, b=b):
                return Printed(
                    f"{self._wrap(self._as_tensor(a), ATOM)}[..., :, None] "
                    f"* {self._wrap(self._as_tensor(b), ATOM)}[..., None, :]",
                    MULT,
                )
            case LogSumExp(a=a):
                return Printed(f"torch.logsumexp({self._as_tensor(a).text}, -1)", ATOM)
            case Softmax(a=a):
                return Printed(f"torch.softmax({self._as_tensor(a).text}, -1)", ATOM)
            case Slice(a=a, axis=axis, start=start, stop=stop):
                return self._print_slice(a, axis, start, stop)
            case Kron(a=a, b=b):
                return Printed(
                    f"_kron({self._as_tensor(a).text}, {self._as_tensor(b).text})", ATOM
                )
            case KronLeft(g=g, b=b):
                args = f"{self._as_tensor(g).text}, {self._as_tensor(b).text}"
                return Printed(f"_kron_left({args})", ATOM)
            case KronRight(g=g, a=a):
                args = f"{self._as_tensor(g).text}, {self._as_tensor(a).text}"
                return Printed(f"_kron_right({args})", ATOM)
            case SumLargest(a=a, k=k):
                return Printed(f"_sum_largest({self._as_tensor(a).text}, {self._dim(k)})", ATOM)
            case TopMask(a=a, k=k):
                return Printed(f"_top_mask({self._as_tensor(a).text}, {self._dim(k)})", ATOM)
            case Part(a=a, sizes=sizes, index=index):
                start = dims.total(sizes[:index])
                return self._print_slice(a, 0, start, dims.add(start, sizes[index]))
            case Reshape(a=a, shape_=shape):
                flat = self._as_tensor(a).text
                return Printed(f"_reshape({flat}, {a.rank}, {self._shape_tuple(shape)})", ATOM)
            case Concat(parts=parts, axis=axis):
                texts = [self._as_tensor(p).text for p in parts]
                if len(", ".join(texts)) > LINE_LIMIT:  # constant blocks are no operands
                    texts = self._hoist_constants(texts, [self._get(p).number for p in parts])
                return Printed(f"_cat(({', '.join(texts)}), {e.rank}, {axis})", ATOM)
        raise TypeError(f"no printer for {type(e).__name__}")  # pragma: no cover

    def _print_slice(self, a: Expr, axis: int, start, stop) -> Printed:
        first = "" if start == 0 else self._dim(start)
        last = "" if stop == a.shape[axis] else self._dim(stop)
        index = ["..."] + [":"] * a.rank
        index[1 + axis] = f"{first}:{last}"
        return Printed(f"{self._wrap(self._as_tensor(a), ATOM)}[{', '.join(index)}]", ATOM)

    def _print_add(self, e: Add) -> Printed:
        parts = [self._add_part(e, i) for i in range(len(e.terms))]
        all_numbers = all(self._get(t).number for t in e.terms)
        return Printed(" ".join(parts), ADDITIVE, number=all_numbers)

    def _add_part(self, e: Add, i: int) -> str:
        """The text of the i-th term of a sum, with its sign: ``x``, ``+ y``, ``- 2.0 * z``."""
        t = e.terms[i]
        negative = isinstance(t, Mul) and isinstance(t.a, Const) and t.a.value < 0
        negative = negative or (isinstance(t, Const) and t.value < 0)
        negative = negative and self._get(t).text not in self.temps  # a temp: use its name
        if negative and i:
            return f"- {self._negated(t, e.rank)}"
        text = self._lifted(t, e.rank, ADDITIVE)
        return f"+ {text}" if i else text

    def _negated(self, t: Expr, rank: int) -> str:
        """Text of -t for a term with a negative numeric coefficient (printed after ' - ')."""
        if isinstance(t, Const):
            return number(-t.value)
        assert isinstance(t, Mul) and isinstance(t.a, Const)
        if _is_division(t):  # c / b with c < 0: b's reciprocal node is never printed
            base = t.b.base  # type: ignore[attr-defined]
            return f"{number(-t.a.value)} / {self._lifted(base, rank, MULT + 1)}"
        if t.a.value == -1.0:
            return self._lifted(t.b, rank, ADDITIVE + 1)
        return f"{number(-t.a.value)} * {self._lifted(t.b, rank, MULT + 1)}"

    def _print_mul(self, e: Mul) -> Printed:
        a, b = e.a, e.b
        # Division first: its operands are a and b's base, and b itself is never printed.
        if _is_division(e):
            assert isinstance(b, Pow)
            number_ = self._get(a).number and self._get(b.base).number
            left = self._lifted(a, e.rank, MULT)
            right = self._lifted(b.base, e.rank, MULT + 1)
            return Printed(f"{left} / {right}", MULT, number_)
        number_ = self._get(a).number and self._get(b).number
        if isinstance(a, Const) and a.value == -1.0:
            return Printed(f"-{self._lifted(b, e.rank, UNARY)}", UNARY, number_)
        left = self._lifted(a, e.rank, MULT)
        right = self._lifted(b, e.rank, MULT + 1)
        return Printed(f"{left} * {right}", MULT, number_)

    def _print_pow(self, base: Expr, p: Expr) -> Printed:
        bp = self._get(base)
        if isinstance(p, Const):
            if p.value == -1.0:
                return Printed(f"1.0 / {self._wrap(bp, MULT + 1)}", MULT, bp.number)
            if bp.number:  # a plain number (e.g. a dim): torch.sqrt(n) would fail on an int
                return Printed(f"{self._wrap(bp, POW + 1)} ** {number(p.value)}", POW, True)
            if p.value == 0.5:
                return Printed(f"torch.sqrt({bp.text})", ATOM)
            if p.value == -0.5:
                return Printed(f"torch.rsqrt({bp.text})", ATOM)
            if p.value == 2.0:
                return Printed(f"torch.square({bp.text})", ATOM)
            return Printed(f"torch.pow({bp.text}, {number(p.value)})", ATOM)
        exp = self._lifted(p, base.rank, ATOM)
        if bp.number and not self._get(p).number and base.rank:
            bp = self._as_tensor(base)  # torch.pow(2.0, s) would drop the core shape
        if bp.number and self._get(p).number:
            return Printed(f"{self._wrap(bp, POW + 1)} ** {exp}", POW, True)
        return Printed(f"torch.pow({bp.text}, {exp})", ATOM)

    def _print_matmul(self, a: Expr, b: Expr) -> Printed:
        pa, pb = self._as_tensor(a), self._as_tensor(b)
        at, bt = pa.text, pb.text
        match (a.rank, b.rank):
            case (2, 2):
                return Printed(f"{self._wrap(pa, MULT)} @ {self._wrap(pb, MULT + 1)}", MULT)
            case (2, 1):
                return Printed(f"_mv({at}, {bt})", ATOM)
            case (1, 2):
                return Printed(f"_mv({self._wrap(pb, ATOM)}.mT, {at})", ATOM)
            case _:
                return Printed(f"_dot({at}, {bt})", ATOM)


def _is_division(e: Expr) -> bool:
    return isinstance(e, Mul) and isinstance(e.b, Pow) and is_const(e.b.exp, -1.0)


def _printed_operands(e: Expr) -> tuple[Expr, ...]:
    """The children whose text a node's printed form uses (a / b skips the node b⁻¹)."""
    if _is_division(e):
        return (e.a, e.b.base)  # type: ignore[attr-defined]
    return e.children


def _add_part_operands(t: Expr) -> tuple[Expr, ...]:
    """The nodes whose text a sum's term ``t`` may show (see ``_negated``)."""
    if isinstance(t, Mul) and isinstance(t.a, Const):
        return (t, t.b.base) if _is_division(t) else (t, t.b)  # type: ignore[attr-defined]
    return (t,)


def _printed_postorder(roots: list[Expr]) -> list[Expr]:
    """Nodes reachable through printed operands, children first, deterministic."""
    return postorder(roots, _printed_operands)


def print_function(
    name: str,
    args: list[str],
    outputs: list[Expr],
    *,
    ref: str,
    dims: dict[str, str],
    doc: str,
    comments: list[str] | None = None,
) -> str:
    """Source of ``def name(args): ... return outputs`` (one output: a tensor, else a tuple)."""
    printer = TorchPrinter(ref, dims)
    results = printer.assign_all(outputs)
    body = printer.prologue() + printer.lines
    ret = results[0] if len(results) == 1 else ", ".join(results)
    if len(ret) > RETURN_LIMIT:  # one output a line keeps the function formatted
        names = [f"_out{i}" for i in range(len(results))]
        body += [f"{name} = {text}" for name, text in zip(names, results)]
        ret = ", ".join(names)
    head = f"def {name}({', '.join(args)}):"
    if len(head) > 99:  # as ruff formats it: the arguments on one line, else one a line
        inner = "    " + ", ".join(args)
        if len(inner) <= 99:
            head = f"def {name}(\n{inner}\n):"
        else:
            head = f"def {name}(\n" + "".join(f"    {a},\n" for a in args) + "):"
    lines = [head, f'    """{doc}"""']
    lines += [f"    # {c}" for c in comments or []]
    lines += [f"    {line}" for line in body]
    lines.append(_return_line(ret, len(results)))
    return "\n".join(lines) + "\n"


def _return_line(ret: str, count: int) -> str:
    """``return ret`` as ``ruff format`` lays it out: on one line, else the tuple inside
    parentheses on one line, else one element a line."""
    line = f"    return {ret}"
    if len(line) <= 99 or count == 1:
        return line
    if len(ret) + 8 <= 99:
        return f"    return (\n        {ret}\n    )"
    return "    return (\n" + "".join(f"        {r},\n" for r in ret.split(", ")) + "    )"
