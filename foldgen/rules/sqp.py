"""Sequential quadratic programming: U(s) = s + α (QP(s) − (0, λ, ν)), s = (x, λ, ν).

For min f(x) s.t. g(x) ≤ 0, h(x) = 0 each step solves the QP

    min_d ½ dᵀ(∇²ₓₓL + δI)d + ∇fᵀd   s.t.   g + J_g d ≤ 0,   h + J_h d = 0

for (d, λ_QP, ν_QP), L = f + λᵀg + νᵀh. Every constraint family of the IR goes back to blocks
g_b(x) ≤ 0 or h_b(x) = 0 (scalar or vector); bounds become blocks too. The generated module
concatenates the blocks at run time (their count and ranks are fixed here, their sizes are
read from the inputs).

What this module derives at build time: f, ∇f, the blocks, Σ J_bᵀ w_b (the dense Jacobians
come from it evaluated on the unit vectors over one extra batch axis), ∇ₓL, ∇²ₓₓL u, and the
parameter products (∂∇ₓL/∂θ)ᵀu + Σ(∂g_b/∂θ)ᵀw_b + Σ(∂h_b/∂θ)ᵀw'_b that Ψᵀ needs.

The backward differentiates the QP solution map through its KKT matrix K on the active set
(unfolding) and folds: Φ = I − αP − αK⁻¹F_s, Ψ = −αK⁻¹F_θ, with P the projector onto the
multiplier part and F the KKT residual; with the exact Hessian and full steps Φ = 0 at the
solution (implicit differentiation of the KKT conditions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from foldgen import expr as E
from foldgen.derive import gradient, vjp
from foldgen.expr import Expr, Leaf
from foldgen.ir import (
    AffineEq,
    Ball,
    Bound,
    General,
    HalfSpace,
    L1Ball,
    Problem,
    Psd,
    SqpSettings,
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
    single_vector_variable,
)
from foldgen.runtime.names import SQP

# Functions whose derivative is not continuous: SQP needs a twice differentiable problem.
NONSMOOTH = {"abs": "abs/norm1", "sign": "sign", "pos": "pos/neg/max/min", "step": "pos"}

# The derived functions an SQP module may define, as the problem record names them.
DERIVED_FIELDS = (
    "objective",
    "gradient",
    "init",
    "inequalities",
    "inequalities_vjp",
    "equalities",
    "equalities_vjp",
    "lagrangian_gradient",
    "lagrangian_hvp",
    "kkt_vjp",
)

# The runtime stand-ins for a kind of constraint (inequality or equality) the problem lacks.
NONE = SQP["no_constraints"]
NO_JACOBIAN = SQP["no_jacobian"]


@dataclass(frozen=True)
class Block:
    """One constraint block: ``expr`` ≤ 0 (inequality) or = 0 (equality)."""

    expr: Expr
    text: str  # readable, for the docstring
    source: int | None = None  # the spec's constraint index it comes from

    def label(self, name: str, relation: str) -> str:
        """How messages name the block: its constraint index and its docstring line
        (``constraints[1] (g0: Σ(x) ≤ 0)``), shortened; printed by foldgen from the IR, so
        it holds names, numbers and operators, never the spec's own text."""
        text = self.text if len(self.text) <= 60 else self.text[:59] + "…"
        line = f"{name}: {text} {relation} 0"
        return line if self.source is None else f"constraints[{self.source}] ({line})"

    @property
    def rank(self) -> int:
        return self.expr.rank


@dataclass(frozen=True)
class SqpPlan:
    rule: RuleName
    var: Leaf
    inequalities: tuple[Block, ...]
    equalities: tuple[Block, ...]
    functions: tuple[Derived, ...]
    grad_params: tuple[str, ...]  # grad parameters the KKT conditions depend on
    math: dict[str, str]

    def emission(self, problem: Problem) -> Emission:
        has = {fn.name for fn in self.functions}
        record: list[tuple[str, Value]] = [
            ("solve", Ref(SQP["solve"])),
            ("pullback", Ref(SQP["pullback"])),
            ("update_map", Ref(SQP["update_map"])),
            ("ineq_ranks", tuple(b.rank for b in self.inequalities)),
            ("eq_ranks", tuple(b.rank for b in self.equalities)),
            ("ineq_values", Ref(SQP["inequalities"] if self.inequalities else NONE)),
            ("eq_values", Ref(SQP["equalities"] if self.equalities else NONE)),
            (
                "ineq_jacobian",
                Ref(SQP["inequality_jacobian"] if self.inequalities else NO_JACOBIAN),
            ),
            ("eq_jacobian", Ref(SQP["equality_jacobian"] if self.equalities else NO_JACOBIAN)),
            ("kkt_grad_indices", grad_indices(problem, self.grad_params)),
            ("ineq_labels", tuple(b.label(f"g{i}", "≤") for i, b in enumerate(self.inequalities))),
            ("eq_labels", tuple(b.label(f"h{i}", "=") for i, b in enumerate(self.equalities))),
        ]
        record += [(name, Ref(f"_{name}")) for name in DERIVED_FIELDS if f"_{name}" in has]
        settings = problem.solver
        assert isinstance(settings, SqpSettings)
        return Emission(tuple(record), (Setting("step", settings.step, Ref(SQP["check_step"])),))

    def describe(self, problem: Problem) -> list[str]:
        x = self.var.name
        lines = problem_header(problem, x, self.math["objective"])
        head = "    subject to  "
        for i, b in enumerate(self.inequalities):
            lines.append(f"{head}g{i}({x}) = {b.text} ≤ 0")
            head = "                "
        for i, b in enumerate(self.equalities):
            lines.append(f"{head}h{i}({x}) = {b.text} = 0")
            head = "                "
        lines += [
            "",
            "Lagrangian L = f + Σᵢ lamᵢ·gᵢ + Σⱼ nuⱼ·hⱼ, one multiplier block per constraint block",
            "(λ = (lam0, lam1, …), ν = (nu0, …) concatenated), and",
            f"    ∇ₓL = {self.math['lagrangian_gradient']}",
            f"    ∇²ₓₓL u = {self.math['hvp']}",
            "",
            f"Update rule (SQP), state s = ({x}, λ, ν) (x stands for {x} below): the QP",
            "",
            "    min_d ½ dᵀ(∇²ₓₓL + δI)d + ∇f·d   s.t.   g + J_g d ≤ 0,   h + J_h d = 0",
            "",
            "gives (d, λ_QP, ν_QP), and U(s) = (x + αd, λ + α(λ_QP − λ), ν + α(ν_QP − ν));",
            f"the layer returns the {x}-part of the fixed point, U({x}) = {x} + αd.",
            "The QP is solved by a batched primal-dual interior point polished on its active set;",
            "δ ≥ 0 makes ∇²ₓₓL positive definite on the null space of the equality and estimated",
            "active constraints (δ = 0 near a solution satisfying second-order sufficiency);",
            "α ≤ step is found by Armijo backtracking on the ℓ1 merit f + μ(‖h‖₁ + ‖g₊‖₁),",
            "μ ≥ 2‖(λ_QP, ν_QP)‖∞, or accepted when it shrinks the KKT residual.",
            "",
            "Backward (folded): solve (I − Φᵀ) v = (∂L/∂x*, 0, 0) at the fixed point, then",
            "∂L/∂θ = Ψ_θᵀ v. With K the QP's KKT matrix on the active set A (λᵢ > −gᵢ) and",
            "w = K⁻¹v = (w_x, w_λ, w_ν) (K is symmetric; inactive rows hold λᵢ = 0):",
            "",
            "    Φᵀv = v − α(0, v_λ, v_ν) − α(∇²ₓₓL w_x + J_gᵀ(1_A ⊙ w_λ) + J_hᵀ w_ν, 0, 0)",
            "    Ψ_θᵀv = −α[(∂∇ₓL/∂θ)ᵀ w_x + (∂g/∂θ)ᵀ(1_A ⊙ w_λ) + (∂h/∂θ)ᵀ w_ν]",
            "",
            "Where the active and equality rows are linearly dependent (a degenerate vertex, a",
            "redundant equality), K has −P in its multiplier block, P the projector onto their",
            "left null space: nonsingular, the same x-part, minimum-norm multipliers.",
            "With the exact Hessian (δ = 0) and α = 1, Φ = 0: one KKT solve, i.e. implicit",
            "differentiation of the KKT conditions. The gradient flows to "
            + (", ".join(self.grad_params) or "no parameter")
            + ".",
            "No autograd runs through the solver: the backward evaluates these expressions inside",
            "the linear solver.",
        ]
        return lines


def plan(problem: Problem) -> SqpPlan:
    """Everything emit needs for an SQP layer; rejects what SQP cannot do."""
    var = single_vector_variable(problem)
    x = var.leaf
    _require_smooth(problem, problem.objective, (problem.sense,))
    inequalities: list[Block] = []
    equalities: list[Block] = []
    for b in problem.bounds:
        inequalities += _bound_blocks(b, x)
    for c in problem.constraints:
        kind, block = _block(problem, c, x)
        (inequalities if kind == "ineq" else equalities).append(block)

    pnames = tuple(p.name for p in problem.parameters)
    grad_leaves = [p.leaf for p in problem.grad_parameters]
    f = problem.objective
    lams = [Leaf(f"_lam{i}", "aux", b.expr.shape) for i, b in enumerate(inequalities)]
    nus = [Leaf(f"_nu{i}", "aux", b.expr.shape) for i, b in enumerate(equalities)]
    wgs = [Leaf(f"_wg{i}", "aux", b.expr.shape) for i, b in enumerate(inequalities)]
    whs = [Leaf(f"_wh{i}", "aux", b.expr.shape) for i, b in enumerate(equalities)]
    u = Leaf("_u", "aux", x.shape)
    pairs = [(b.expr, m) for b, m in zip(inequalities + equalities, lams + nus)]
    lagrangian = E.add(f, *(E.sum_(E.mul(m, e)) for e, m in pairs))
    grad_f = gradient(f, x)
    grad_l = gradient(lagrangian, x)
    hvp = vjp([(grad_l, u)], [x])[x]
    mult = tuple(m.name for m in lams + nus)

    args = (x.name, *pnames)
    functions = [
        Derived("_objective", args, (f,), "f(x), minimised."),
        Derived("_gradient", args, (grad_f,), "∇f(x)."),
        Derived("_init", pnames, (var.init,), "The starting point from the spec's init."),
    ]
    for name, blocks, ws, what in (
        ("_inequalities", inequalities, wgs, "g"),
        ("_equalities", equalities, whs, "h"),
    ):
        if not blocks:
            continue
        functions.append(
            Derived(name, args, tuple(b.expr for b in blocks), f"The blocks of {what}(x).")
        )
        jt = vjp([(b.expr, w) for b, w in zip(blocks, ws)], [x])[x]
        functions.append(
            Derived(
                name + "_vjp",
                (x.name, *(w.name for w in ws), *pnames),
                (jt,),
                f"J_{what}(x)ᵀ w, w in blocks.",
            )
        )
    functions += [
        Derived(
            "_lagrangian_gradient",
            (x.name, *mult, *pnames),
            (grad_l,),
            "∇ₓL(x, λ, ν), multipliers in blocks.",
        ),
        Derived("_lagrangian_hvp", (x.name, *mult, "_u", *pnames), (hvp,), "∇²ₓₓL(x, λ, ν) u."),
    ]
    theta = vjp(
        [(grad_l, u), *((b.expr, w) for b, w in zip(inequalities + equalities, wgs + whs))],
        grad_leaves,
    )
    grad_params = tuple(p.name for p in grad_leaves if not E.is_zero(theta[p]))
    if grad_params:
        functions.append(
            Derived(
                "_kkt_vjp",
                (
                    x.name,
                    *mult,
                    "_u",
                    *(w.name for w in wgs),
                    *(w.name for w in whs),
                    *pnames,
                ),
                tuple(theta[p] for p in grad_leaves if p.name in grad_params),
                "(∂∇ₓL/∂θ)ᵀ u + (∂g/∂θ)ᵀ w_g + (∂h/∂θ)ᵀ w_h for the gradient parameters θ.",
            )
        )
    math = {
        "objective": math_str(f),
        "lagrangian_gradient": math_str(grad_l),
        "hvp": math_str(hvp),
    }
    return SqpPlan(
        rule="sqp",
        var=x,
        inequalities=tuple(inequalities),
        equalities=tuple(equalities),
        functions=tuple(functions),
        grad_params=grad_params,
        math=math,
    )


def _require_smooth(problem: Problem, e: Expr, path: tuple) -> None:
    for node in E.postorder([e]):
        if isinstance(node, E.SumLargest):
            raise problem.error(
                path,
                "rule 'sqp' needs twice differentiable functions, and max/min/norm_inf/"
                "sum_largest are not differentiable where entries tie; use rule 'admm' (their "
                "proximal maps) or an epigraph reformulation (max(x) <= t as x <= t)",
            )
        if isinstance(node, E.Func) and node.name in NONSMOOTH:
            raise problem.error(
                path,
                f"rule 'sqp' needs twice differentiable functions, and {NONSMOOTH[node.name]} "
                "is not differentiable at 0; use rule 'admm' (proximal maps) or a smooth "
                "reformulation (e.g. split x = x⁺ − x⁻ with bounds)",
            )


def _bound_blocks(b: Bound, x: Leaf) -> list[Block]:
    out = []
    for side, value, source in (
        ("lower", b.lower, b.lower_source),
        ("upper", b.upper, b.upper_source),
    ):
        if value is None:
            continue
        value = E.broadcast(value, x.shape)
        # A packed state's bound holds ±∞ for the variables it leaves free: one block per
        # bounded variable (an infinite bound is no constraint, and not a finite residual).
        pieces: list[tuple[Expr, Expr]] = [(x, value)]
        if isinstance(value, E.Concat):
            sizes = tuple(p.shape[0] for p in value.parts)
            pieces = [
                (E.part(x, sizes, i), v)
                for i, v in enumerate(value.parts)
                if not (isinstance(v, E.Const) and math.isinf(v.value))
            ]
        for xi, vi in pieces:
            out.append(_make(E.sub(vi, xi) if side == "lower" else E.sub(xi, vi), source))
    return out


def _block(problem: Problem, c, x: Leaf) -> tuple[str, Block]:
    """('ineq' | 'eq', the block) for one constraint family."""
    if isinstance(c, AffineEq):
        return "eq", _make(E.sub(E.matmul(c.A, x), c.b), c.source)
    if isinstance(c, SumEq):
        return "eq", _make(E.sub(E.sum_(x), c.k), c.source)
    if isinstance(c, HalfSpace):
        return "ineq", _make(E.sub(E.matmul(c.a, x), c.b), c.source)
    if isinstance(c, Ball):
        # Squared, so the block is smooth at the centre: ‖x − c‖² − r² ≤ 0.
        diff = E.sub(x, E.broadcast(c.center, x.shape))
        return "ineq", _make(
            E.sub(E.sum_(E.power(diff, E.const(2.0))), E.power(c.radius, E.const(2.0))),
            c.source,
        )
    if isinstance(c, L1Ball):  # non-smooth: _require_smooth names abs/norm1 and rejects it
        diff = E.sub(x, E.broadcast(c.center, x.shape))
        e = E.sub(E.sum_(E.func("abs", diff)), c.radius)
        _require_smooth(problem, e, ("constraints", c.source))
        return "ineq", _make(e, c.source)
    if isinstance(c, Psd) or (isinstance(c, General) and c.relation.op == ">>"):
        raise problem.error(
            ("constraints", c.source), "rule 'sqp' has no PSD constraints; use pgd or admm"
        )
    assert isinstance(c, General)
    rel = c.relation
    path = ("constraints", c.source)
    if rel.op == "==":
        kind, e = "eq", E.sub(rel.lhs, rel.rhs)
    elif rel.op == ">=":
        kind, e = "ineq", E.sub(rel.rhs, rel.lhs)
    else:
        kind, e = "ineq", E.sub(rel.lhs, rel.rhs)
    if e.rank > 1:  # a matrix relation is one block of its entries, row-major
        e = E.vec(e)
    _require_smooth(problem, e, path)
    return kind, _make(e, c.source)


def _make(e: Expr, source: int | None = None) -> Block:
    return Block(e, math_str(e), source)
