"""ADMM: the splitting f(x) = f₀(x) + Σᵢ gᵢ(Aᵢ x) found in the spec, and its folded backward.

What this module decides at build time (MATH.md §4):

- the splitting. Each top-level term ``c * norm1(M @ x + o)`` (also ``c * sum(abs(...))``,
  c ≥ 0 a scalar expression of the parameters) becomes a block zᵢ = M x with
  gᵢ(z) = c‖z + o‖₁; every constraint becomes a block with the indicator of a set as gᵢ:
  bounds and affine relations ``l <= A @ x <= u`` (equalities as l = u, relations with the
  same A merged into one two-sided block) a box on zᵢ = A x, a Euclidean or ℓ1 ball a
  ball on zᵢ = x. Everything else is the smooth part f₀, which must not contain ``abs`` of x.
- how the x-update is solved: one Cholesky factor of K = ∇²f₀ + ρ Σ AᵢᵀAᵢ per call when f₀ is
  quadratic (∇²f₀ free of x), else damped Newton steps on the augmented Lagrangian.
- the symbolic pieces the generated code evaluates: f₀, ∇f₀, ∇²f₀ u, (∂∇f₀/∂θ)ᵀ u, the blocks'
  data (Aᵢ and the prox data) and the VJP of that data to the parameters.

Anything else is rejected with a located SpecError that says why and suggests ``sqp``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from foldgen import dims as dim_arith
from foldgen import expr as E
from foldgen.affine import affine_map as _affine
from foldgen.derive import vjp
from foldgen.expr import Expr, Leaf
from foldgen.ir import (
    AdmmSettings,
    AffineEq,
    Ball,
    General,
    HalfSpace,
    L1Ball,
    Problem,
    Psd,
    Soc,
    SumEq,
)
from foldgen.mathprint import math_str
from foldgen.rules.base import (
    Derived,
    Emission,
    Ref,
    RuleName,
    Setting,
    Value,
    grad_indices,
    problem_header,
    psd_form_error,
    psd_name,
    psd_text,
    single_vector_variable,
)
from foldgen.rules.base import smooth as derive_smooth
from foldgen.runtime.names import ADMM, ADMM_VARIANTS, PROXES

INF = float("inf")

# The derived functions an ADMM module may define, as the problem record names them.
DERIVED_FIELDS = (
    "objective",
    "gradient",
    "hvp",
    "init",
    "gradient_vjp",
    "block_data",
    "block_data_vjp",
)

ProxKind = Literal[
    "l1", "box", "ball", "l1ball", "linf", "sum_largest", "psd", "soc", "hinge", "l2"
]

PROX_TEXT = {
    "l1": "soft-thresholding at c/ρ",
    "linf": "w − P(w) with P the projection onto the l1 ball of radius c/ρ (Moreau)",
    "hinge": "w − c/ρ above c/ρ, 0 on [0, c/ρ], w below 0",
    "l2": "block soft-thresholding w (1 − (c/ρ)/‖w‖)₊",
    "sum_largest": "w − P(w) with P the projection onto {0 ≤ u ≤ c/ρ, Σu = k c/ρ} (Moreau)",
    "box": "clamp to [lo, hi]",
    "ball": "projection onto the ball",
    "l1ball": "projection onto the l1 ball (soft-thresholding at the level that meets r)",
    "psd": "M + V max(Λ, 0) Vᵀ, Λ, V the eigenvalues and -vectors of sym(⟨z⟩ − M)",
    "soc": "projection onto the second-order cone, shifted by (b, d)",
}

SQP_HINT = "use rule 'sqp'"


@dataclass(frozen=True)
class Block:
    """One block zᵢ = Aᵢ x of the splitting and its proximal term gᵢ."""

    kind: ProxKind
    matrix: Expr | None  # Aᵢ, (m, n); None: zᵢ = x
    data: tuple[Expr, ...]  # l1: (offset o, weight c); box: (lo, hi); (l1)ball: (center,
    # radius); psd: (M,) flattened row-major
    text: str  # gᵢ in readable math (⟨z⟩ stands for the block's zᵢ), for the docstring
    constraint: str = ""  # the constraint it enforces, for the docstring ("" for an l1 term)
    sources: tuple[int, ...] = ()  # the spec's constraints[i] it comes from (messages name them)

    @property
    def label(self) -> str:
        """How a run-time message names the block: its constraints[i] and its math."""
        if not self.sources:
            return f"the objective's term {self.text}"
        where = ", ".join(f"constraints[{i}]" for i in self.sources)
        return f"{where} ({self.constraint})"


@dataclass(frozen=True)
class AdmmPlan:
    rule: RuleName
    var: Leaf
    blocks: tuple[Block, ...]
    quadratic: bool
    rho: float
    adapt_rho: bool
    functions: tuple[Derived, ...]
    objective_grad_params: tuple[str, ...]  # grad params reached through ∇f₀
    block_grad_params: tuple[str, ...]  # grad params reached through the block data
    math: dict[str, str]

    def emission(self, problem: Problem) -> Emission:
        has = {fn.name for fn in self.functions}
        variant = "quadratic" if self.quadratic else "newton"
        ranks: list[int] = []
        for b in self.blocks:
            ranks += ([2] if b.matrix is not None else []) + [d.rank for d in b.data]
        record: list[tuple[str, Value]] = [
            ("solve", Ref(ADMM_VARIANTS[variant]["solve"])),
            ("pullback", Ref(ADMM["pullback"])),
            ("update_map", Ref(ADMM["update_map"])),
            ("prepare", Ref(ADMM_VARIANTS[variant]["prepare"])),
            ("x_update", Ref(ADMM_VARIANTS[variant]["x_update"])),
            ("terms", tuple(Ref(PROXES[b.kind]) for b in self.blocks)),
            ("matrices", tuple(b.matrix is not None for b in self.blocks)),
            ("data_ranks", tuple(ranks)),
            ("labels", tuple(b.label for b in self.blocks)),
            ("objective_grad_indices", grad_indices(problem, self.objective_grad_params)),
            ("block_grad_indices", grad_indices(problem, self.block_grad_params)),
        ]
        record += [(name, Ref(f"_{name}")) for name in DERIVED_FIELDS if f"_{name}" in has]
        settings = (
            Setting("rho", self.rho, Ref(ADMM["check_rho"])),
            Setting("adapt_rho", self.adapt_rho, Ref(ADMM["check_adapt_rho"])),
        )
        return Emission(tuple(record), settings)

    def describe(self, problem: Problem) -> list[str]:
        x = self.var.name
        constraints = [b.constraint for b in self.blocks if b.constraint]
        lines = [
            *problem_header(problem, x, self.math["objective"]),
            f"    subject to  {', '.join(constraints) if constraints else '(nothing)'}",
            "",
            f"Splitting (ADMM, scaled form):  minimize f₀({x}) + Σᵢ gᵢ(zᵢ)  s.t.  zᵢ = Aᵢ {x}, with",
            "",
            f"    f₀({x}) = {self.math['smooth']}     (smooth; ∇f₀({x}) = {self.math['gradient']})",
        ]
        for i, b in enumerate(self.blocks, 1):
            text = b.text.replace("⟨z⟩", f"z{i}")
            lines.append(f"    g{i}(z{i}) = {text}     (prox: {PROX_TEXT[b.kind]})")
        if self.quadratic:
            solve = [
                "x-update: f₀ is quadratic, so K = ∇²f₀ + ρ Σᵢ AᵢᵀAᵢ is built densely and",
                "Cholesky-factored once per call (again only when ρ adapts); every x-update and",
                "the backward reuse that factor.",
            ]
        else:
            solve = [
                "x-update: f₀ is not quadratic, so damped Newton steps on the augmented Lagrangian",
                "(K(x) = ∇²f₀(x) + ρ Σᵢ AᵢᵀAᵢ, one Cholesky factor per step, Armijo backtracking),",
                "warm-started at the previous x, to ‖∇‖ ≤ tol/100; the backward uses K at the output.",
            ]
        lines += [
            "",
            "Update rule: U(z, u) = (z⁺, u⁺) on the state s = (z, u) of all blocks, ρ the penalty:",
            "",
            f"    {x}(z, u) = argmin_{x} f₀({x}) + (ρ/2) Σᵢ ‖Aᵢ {x} − zᵢ + uᵢ‖²",
            f"    zᵢ⁺ = prox_(gᵢ/ρ)(Aᵢ {x} + uᵢ),   uᵢ⁺ = uᵢ + Aᵢ {x} − zᵢ⁺",
            "",
            f"and the layer returns {x}(s*). In terms of the output alone, U({x}) = {x}(z⁺, u⁺).",
            "Stopping: ‖U(s) − s‖ ≤ tol · ‖U(s)‖∞ (relative to the state's scale); every 10",
            "sweeps, OSQP's certificates of an empty set (on δu) and, f₀ quadratic, of an",
            "unbounded problem (on δx) stop the element with feasible False.",
            *solve,
            f"∇²f₀ u = {self.math['hvp']}",
            "",
            "Backward (folded): the output link gives g = (∂x/∂s)ᵀ ∂L/∂x; solve (I − Φᵀ) v = g, then",
            "∂L/∂θ = Ψᵀv + (∂x/∂θ)ᵀ ∂L/∂x. With v = (z̄, ū), Jᵢ the prox Jacobian at wᵢ = Aᵢ x + uᵢ,",
            "",
            "    w̄ᵢ = Jᵢᵀ(z̄ᵢ − ūᵢ) + ūᵢ,   r = K⁻¹ Σᵢ Aᵢᵀ w̄ᵢ",
            "    Φᵀv = (ρ Aᵢ r,  w̄ᵢ − ρ Aᵢ r)ᵢ",
            "    Ψᵀv = −(∂∇f₀/∂θ)ᵀ r + Σᵢ (∂Aᵢ/∂θ)ᵀ[w̄ᵢ xᵀ − ρ((Aᵢx − zᵢ + uᵢ) rᵀ + (Aᵢ r) xᵀ)]",
            "          + Σᵢ (∂dataᵢ/∂θ)ᵀ (∂proxᵢ/∂dataᵢ)ᵀ(z̄ᵢ − ūᵢ),   where",
        ]
        for p in problem.grad_parameters:
            if p.name in self.objective_grad_params:
                lines.append(f"        (∂∇f₀/∂{p.name})ᵀ u = {self.math['dgrad_' + p.name]}")
        if self.block_grad_params:
            lines.append(
                "        and the block data (Aᵢ, prox data) depend on "
                + ", ".join(self.block_grad_params)
                + "."
            )
        lines += [
            "The output link is the same pullback with v = 0 and ∂L/∂x added to Σᵢ Aᵢᵀ w̄ᵢ.",
            "No autograd runs through the solver: the backward evaluates these expressions inside",
            "the linear solver.",
        ]
        return lines


def plan(problem: Problem) -> AdmmPlan:
    """Everything emit needs to write an ADMM layer; rejects what ADMM cannot do."""
    var = single_vector_variable(problem)
    x = var.leaf
    smooth, l1_blocks = _split_objective(problem, x)
    blocks = (*l1_blocks, *_constraint_blocks(problem, x))
    if not blocks:
        raise problem.error(
            ("solver", "rule"),
            "rule 'admm' needs something to split off: a norm1/abs term in the objective or a "
            "constraint; for a smooth unconstrained problem use rule 'pgd'",
        )
    pnames = tuple(p.name for p in problem.parameters)
    grad_leaves = [p.leaf for p in problem.grad_parameters]

    d = derive_smooth(problem, x, smooth)
    g, hvp, quadratic, obj_params = d.gradient, d.hvp, d.quadratic, d.grad_params
    functions = d.functions(problem, x, smooth, "f₀", "the smooth part of the objective")
    args = (x.name, *pnames)
    items: list[Expr] = []
    for b in blocks:
        items += ([b.matrix] if b.matrix is not None else []) + list(b.data)
    functions.append(
        Derived(
            "_block_data",
            args,
            tuple(items),
            "The blocks' data, flat: per block its matrix Aᵢ (when zᵢ ≠ x), then its prox data.",
        )
    )
    bars = [Leaf(f"_bar{i}", "aux", e.shape) for i, e in enumerate(items)]
    data_vjp = vjp(list(zip(items, bars)), grad_leaves)
    block_params = tuple(p.name for p in grad_leaves if not E.is_zero(data_vjp[p]))
    if block_params:
        functions.append(
            Derived(
                "_block_data_vjp",
                (x.name, *(b.name for b in bars), *pnames),
                tuple(data_vjp[p] for p in grad_leaves if p.name in block_params),
                "Cotangents of the block data pulled back to the parameters.",
            )
        )
    math = {
        "objective": math_str(problem.objective),
        "smooth": math_str(smooth),
        "gradient": math_str(g),
        "hvp": math_str(hvp),
        **{
            f"dgrad_{p.name}": math_str(d.mixed[p.leaf])
            for p in problem.grad_parameters
            if p.name in obj_params
        },
    }
    settings = problem.solver
    assert isinstance(settings, AdmmSettings)
    return AdmmPlan(
        rule="admm",
        var=x,
        blocks=blocks,
        quadratic=quadratic,
        rho=settings.rho,
        adapt_rho=settings.adapt_rho,
        functions=tuple(functions),
        objective_grad_params=obj_params,
        block_grad_params=block_params,
        math=math,
    )


# --------------------------------------------------------------------------- the objective


def _factors(e: Expr) -> list[Expr]:
    """The operands of a product tree (elementwise products only)."""
    if isinstance(e, E.Mul):
        return _factors(e.a) + _factors(e.b)
    return [e]


def _split_objective(problem: Problem, x: Leaf) -> tuple[Expr, list[Block]]:
    """(f₀, l1 blocks): every top-level term c·Σ|M x + o| is split off, the rest is f₀."""
    key = (problem.sense,)
    objective = problem.objective
    terms = objective.terms if isinstance(objective, E.Add) else (objective,)
    smooth: list[Expr] = []
    blocks: list[Block] = []
    for term in terms:
        factors = _factors(term)
        found: list[Expr] = [
            f
            for f in factors
            if isinstance(f, E.Sum)
            and isinstance(f.a, E.Func)
            and f.a.name in ("abs", "pos")
            and f.depends_on(x)
        ]
        found += [
            f
            for f in factors
            if isinstance(f, E.Func)
            and f.name in ("abs", "pos")
            and f.rank == 0
            and f.depends_on(x)
        ]
        found += [f for f in factors if isinstance(f, E.SumLargest) and f.depends_on(x)]
        found += [f for f in factors if _norm2_argument(f) is not None and f.depends_on(x)]
        if not found:
            smooth.append(term)
            continue
        core = found[0]
        others = [f for f in factors if f is not core]
        if any(f.depends_on(x) or f.rank != 0 for f in others):
            raise problem.error(
                key,
                f"rule 'admm' splits off terms c * norm1(A @ x + b) with c a scalar free of "
                f"{x.name}, but '{math_str(term)}' scales the norm by something else; "
                "rewrite it, or " + SQP_HINT,
            )
        weight: Expr = E.const(1.0)
        for f in others:
            weight = E.mul(weight, f)
        if _negative(weight):
            raise problem.error(
                key,
                f"the term '{math_str(term)}' has a negative weight: minimising −c·g of a "
                "convex g (a norm, a max) is not convex, and its proximal map does not exist "
                "(the weight c must be ≥ 0)",
            )
        if isinstance(core, E.SumLargest):
            blocks.append(_largest_block(problem, core, weight, x))
            continue
        l2_arg = _norm2_argument(core)
        if l2_arg is not None:
            blocks.append(_l2_block(problem, l2_arg, weight, x))
            continue
        assert isinstance(core, (E.Sum, E.Func))
        arg = core.a.a if isinstance(core, E.Sum) and isinstance(core.a, E.Func) else core.a
        affine = _affine(arg, x)
        if affine is None:
            raise problem.error(
                key,
                f"rule 'admm' splits off norm1/abs/pos of an affine expression of {x.name} "
                f"(A @ {x.name} + b), and '{math_str(arg)}' is not one; " + SQP_HINT,
            )
        matrix, offset = affine
        inner = "⟨z⟩" + ("" if E.is_zero(offset) else f" + {math_str(offset)}")
        func = core.a if isinstance(core, E.Sum) else core
        if isinstance(func, E.Func) and func.name == "pos":  # the hinge Σ max(A x + o, 0)
            text = f"{_weight_text(weight)}Σ max({inner}, 0), ⟨z⟩ = {_map_text(matrix, x)}"
            blocks.append(Block("hinge", _matrix_or_none(matrix), (offset, weight), text))
            continue
        text = f"{_weight_text(weight)}‖{inner}‖₁, ⟨z⟩ = {_map_text(matrix, x)}"
        blocks.append(Block("l1", _matrix_or_none(matrix), (offset, weight), text))
    smooth_expr = E.add(*smooth) if smooth else E.zero()
    for node in E.postorder([smooth_expr]):
        kink = isinstance(node, E.SumLargest) or (
            isinstance(node, E.Func) and node.name in ("abs", "pos")
        )
        if kink and node.depends_on(x):
            raise problem.error(
                key,
                f"rule 'admm' needs the objective to be smooth apart from top-level terms "
                f"c * norm1(A @ {x.name} + b), and '{math_str(node)}' is nested inside another "
                "expression; " + SQP_HINT,
            )
    return smooth_expr, blocks


def _norm2_argument(f: Expr) -> Expr | None:
    """e for the factor ‖e‖₂ = (Σ e²)^½ of a vector e (not the squared norm: that is smooth)."""
    if not (isinstance(f, E.Pow) and f.exp == E.const(0.5) and isinstance(f.base, E.Sum)):
        return None
    inner = f.base.a
    if isinstance(inner, E.Pow) and inner.exp == E.const(2.0) and inner.base.rank == 1:
        return inner.base
    return None


def _l2_block(problem: Problem, arg: Expr, weight: Expr, x: Leaf) -> Block:
    """c·norm2(A x + o): its prox is block soft-thresholding (the group lasso's), exact at
    A x + o = 0 where norm2 has no gradient."""
    affine = _affine(arg, x)
    if affine is None:
        raise problem.error(
            (problem.sense,),
            f"rule 'admm' splits off norm2 of an affine expression of {x.name} "
            f"(A @ {x.name} + b), and '{math_str(arg)}' is not one; " + SQP_HINT,
        )
    matrix, offset = affine
    inner = "⟨z⟩" + ("" if E.is_zero(offset) else f" + {math_str(offset)}")
    text = f"{_weight_text(weight)}‖{inner}‖₂, ⟨z⟩ = {_map_text(matrix, x)}"
    return Block("l2", _matrix_or_none(matrix), (offset, weight), text)


def _largest_block(problem: Problem, core: E.SumLargest, weight: Expr, x: Leaf) -> Block:
    """c·norm_inf(A x + o) (k = 1 of |·|) or c·sum_largest(A x + o, k): a block whose prox
    is, by Moreau's identity, the identity minus a projection onto the dual norm's ball (the
    l1 ball of radius c/ρ) or onto the scaled capped simplex {0 ≤ u ≤ c/ρ, Σu = k c/ρ}."""
    inner = core.a
    linf = isinstance(inner, E.Func) and inner.name == "abs" and core.k == 1
    arg = inner.a if linf else inner  # type: ignore[attr-defined]
    affine = _affine(arg, x)
    if affine is None:
        raise problem.error(
            (problem.sense,),
            f"rule 'admm' splits off max/norm_inf/sum_largest of an affine expression of "
            f"{x.name} (A @ {x.name} + b), and '{math_str(arg)}' is not one; " + SQP_HINT,
        )
    matrix, offset = affine
    inner_text = "⟨z⟩" + ("" if E.is_zero(offset) else f" + {math_str(offset)}")
    where = f"⟨z⟩ = {_map_text(matrix, x)}"
    if linf:
        text = f"{_weight_text(weight)}‖{inner_text}‖∞, {where}"
        return Block("linf", _matrix_or_none(matrix), (offset, weight), text)
    k = E.size_of((core.k,))
    data = E.concat([E.reshape(weight, (1,)), E.reshape(k, (1,))])
    name = "max" if core.k == 1 else "sum_largest"
    extra = "" if core.k == 1 else f", {core.k}"
    text = f"{_weight_text(weight)}{name}({inner_text}{extra}), {where}"
    return Block("sum_largest", _matrix_or_none(matrix), (offset, data), text)


def _negative(weight: Expr) -> bool:
    if isinstance(weight, E.Const):
        return weight.value < 0
    return isinstance(weight, E.Mul) and isinstance(weight.a, E.Const) and weight.a.value < 0


def _weight_text(weight: Expr) -> str:
    if E.is_const(weight, 1.0):
        return ""
    return f"{math_str(weight)} "


def _map_text(matrix: Expr, x: Leaf) -> str:
    if isinstance(matrix, E.Eye):
        return x.name
    text = math_str(matrix)
    return f"{text} {x.name}" if isinstance(matrix, Leaf) else f"({text}) {x.name}"


def _matrix_or_none(matrix: Expr) -> Expr | None:
    return None if isinstance(matrix, E.Eye) else matrix


# --------------------------------------------------------------------------- affine maps


def _psd_block(c: Psd, x: Leaf) -> Block:
    """The indicator of X − M ⪰ 0 on z = X's n² entries: z = x for the whole state, else
    the rows of the identity that select X's block of the packed state."""
    n2 = c.block.shape[0]
    matrix: Expr | None = None
    if not c.whole:
        start = c.start
        matrix = E.slice_(E.Eye(x.shape[0]), 0, start, dim_arith.add(start, n2))
    constraint = f"{psd_text(c)} ⪰ 0"
    text = f"indicator of {psd_text(c, '⟨z⟩')} ⪰ 0, ⟨z⟩ = {psd_name(c)}"
    return Block("psd", matrix, (E.vec(c.offset),), text, constraint, (c.source,))


def _normalise(matrix: Expr) -> tuple[float, Expr]:
    """matrix = s · M with s a number and M without a negative leading coefficient."""
    if isinstance(matrix, E.Mul) and isinstance(matrix.a, E.Const) and matrix.a.rank == 0:
        return matrix.a.value, matrix.b
    return 1.0, matrix


# --------------------------------------------------------------------------- constraints


@dataclass
class _Box:
    """l ≤ M x ≤ u being collected from several relations."""

    matrix: Expr
    lower: Expr | None = None
    upper: Expr | None = None
    lower_source: int | None = None
    upper_source: int | None = None
    repeats: set[int] = field(default_factory=set)  # constraints that repeat a bound exactly


def _constraint_blocks(problem: Problem, x: Leaf) -> list[Block]:
    n = x.shape[0]
    boxes: dict[Expr, _Box] = {}
    balls: list[Block] = []

    def add(matrix: Expr, op: str, value: Expr, source: int) -> None:
        """Record M x (op) value; op in '<=', '>=', '=='.

        A scalar value (``G @ x <= h`` with h a scalar) is broadcast to M x's shape here, so
        that the block's data always has its full core shape and a batched scalar is never
        read as a vector at run time.
        """
        value = E.broadcast(value, matrix.shape[:1]) if value.rank == 0 else value
        box = boxes.setdefault(matrix, _Box(matrix))
        for side in ("lower", "upper"):
            if op == "==" or (op == ">=") == (side == "lower"):
                if getattr(box, side) is not None:
                    first = getattr(box, f"{side}_source")
                    if getattr(box, side) == value:  # the same bound again: redundant
                        box.repeats.add(source)
                        continue
                    raise problem.error(
                        ("constraints", source),
                        f"this constraint gives {_map_text(matrix, x)} a second {side} bound "
                        f"(the first is in constraints[{first}]); combine them into one",
                    )
                setattr(box, side, value)
                setattr(box, f"{side}_source", source)

    def relation(matrix: Expr, offset: Expr, op: str, source: int) -> None:
        """A x + o (op) 0 with op in '<=', '=='."""
        scale, base = _normalise(matrix)
        value = E.mul(E.const(-1.0 / scale), offset)
        if op == "==":
            add(base, "==", value, source)
        else:
            add(base, "<=" if scale > 0 else ">=", value, source)

    for bound in problem.bounds:
        eye = E.Eye(n)
        if bound.lower is not None:
            side = bound.lower_source if bound.lower_source is not None else bound.sources[0]
            add(eye, ">=", E.broadcast(bound.lower, x.shape), side)
        if bound.upper is not None:
            side = bound.upper_source if bound.upper_source is not None else bound.sources[-1]
            add(eye, "<=", E.broadcast(bound.upper, x.shape), side)
    for c in problem.constraints:
        if isinstance(c, AffineEq):
            if c.A.rank == 1:
                add(E.outer(E.const(1.0, (1,)), c.A), "==", E.broadcast(c.b, (1,)), c.source)
            else:
                relation(c.A, E.neg(c.b), "==", c.source)
        elif isinstance(c, SumEq):
            row = E.outer(E.const(1.0, (1,)), E.const(1.0, x.shape))
            add(row, "==", E.broadcast(c.k, (1,)), c.source)
        elif isinstance(c, HalfSpace):
            relation(
                E.outer(E.const(1.0, (1,)), c.a), E.broadcast(E.neg(c.b), (1,)), "<=", c.source
            )
        elif isinstance(c, Ball):
            center = E.broadcast(c.center, x.shape)
            ball = f"‖⟨z⟩ − {math_str(c.center)}‖ ≤ {math_str(c.radius)}"
            text = f"indicator of {ball}, ⟨z⟩ = {x.name}"
            constraint = ball.replace("⟨z⟩", x.name)
            balls.append(Block("ball", None, (center, c.radius), text, constraint, (c.source,)))
        elif isinstance(c, Psd):
            balls.append(_psd_block(c, x))
        elif isinstance(c, L1Ball):
            center = E.broadcast(c.center, x.shape)
            ball = f"‖⟨z⟩ − {math_str(c.center)}‖₁ ≤ {math_str(c.radius)}"
            text = f"indicator of {ball}, ⟨z⟩ = {x.name}"
            constraint = ball.replace("⟨z⟩", x.name)
            block = Block("l1ball", None, (center, c.radius), text, constraint, (c.source,))
            balls.append(block)
        elif isinstance(c, Soc):
            balls.append(_soc_block(c, x))
        else:
            assert isinstance(c, General)
            rel = c.relation
            lhs, op, rhs = rel.lhs, rel.op, rel.rhs
            if op == ">>":
                raise psd_form_error(problem, c.source)
            if op == ">=":
                lhs, rhs, op = rhs, lhs, "<="
            affine = _affine(E.sub(lhs, rhs), x)
            if affine is None:
                raise problem.error(
                    ("constraints", c.source),
                    "rule 'admm' splits constraints that are affine in "
                    f"{x.name} (l <= A @ {x.name} <= u, A @ {x.name} == b), bounds, Euclidean "
                    f"and l1 balls, PSD cones X >> M, second-order cones norm2(A @ {x.name} + b) <= c @ {x.name} + d; "
                    "this one is none of those (a nonlinear set has no closed-form proximal map "
                    "here); " + SQP_HINT,
                )
            relation(*affine, op, c.source)
    blocks: list[Block] = []
    for box in boxes.values():
        m = box.matrix.shape[0]
        lo = box.lower if box.lower is not None else E.const(-INF, (m,))
        hi = box.upper if box.upper is not None else E.const(INF, (m,))
        z = _map_text(box.matrix, x)
        lo_text = f"{math_str(box.lower)} ≤ " if box.lower is not None else ""
        hi_text = f" ≤ {math_str(box.upper)}" if box.upper is not None else ""
        if box.lower is not None and box.lower == box.upper:
            lo_text, hi_text = "", f" = {math_str(box.upper)}"
        text = f"indicator of {lo_text}⟨z⟩{hi_text}, ⟨z⟩ = {z}"
        constraint = f"{lo_text}{z}{hi_text}"
        sides = {i for i in (box.lower_source, box.upper_source) if i is not None}
        sources = tuple(sorted(sides | box.repeats))
        matrix = _matrix_or_none(box.matrix)
        blocks.append(Block("box", matrix, (lo, hi), text, constraint, sources))
    return blocks + balls


def _soc_block(c: Soc, x: Leaf) -> Block:
    """‖A x + b‖ ≤ cᵀx + d as the block z = (A x, cᵀx) with g the indicator of the cone
    shifted by (b, d): its prox projects w + (b, d) onto the cone and subtracts (b, d)."""
    m = c.A.shape[0]
    matrix = E.concat([c.A, E.outer(E.const(1.0, (1,)), c.c)], 0)
    data = (E.broadcast(c.b, (m,)), c.d)
    b_text = "" if E.is_zero(c.b) else f" + {math_str(c.b)}"
    d_text = "" if E.is_zero(c.d) else f" + {math_str(c.d)}"
    cone = f"‖⟨z⟩₁{b_text}‖ ≤ ⟨z⟩₂{d_text}"
    text = f"indicator of {cone}, ⟨z⟩ = (⟨z⟩₁, ⟨z⟩₂) = {_map_text(matrix, x)}"
    constraint = f"‖{math_str(c.u)}‖ ≤ {math_str(c.t)}"
    return Block("soc", matrix, data, text, constraint, (c.source,))
