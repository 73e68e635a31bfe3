"""Projected gradient descent: U(x) = P_C(x − D ∇f(x)).

The forward's stopping test is relative to the data's scale, and divergence, empty sets and
points that violate the constraints are reported per element (foldgen/runtime/pgd.py, README).

D is the step: a scalar α (``step_size`` given, or 1/L for a quadratic objective, or a
Barzilai–Borwein step with backtracking), or — for a non-quadratic objective whose Hessian
diagonal h the derivation can see exactly — the Newton-like diagonal D = diag(1/h) with a
backtracking factor. Every D > 0 has the same fixed points (the KKT points), so the backward
may fold through U at x* with D frozen: Φ = J_P (I − D∇²f), and with D = diag(1/h) on a
separable objective Φ vanishes on the free set, which keeps the adjoint solve exact and fast
where the Hessian is badly conditioned (entropy near 0).

What this module decides at build time: which closed-form projection P_C the constraints
admit, which step mode applies, and the symbolic pieces the generated code evaluates:
∇f, ∇²f u, (∂∇f/∂θ)ᵀ u, the set data of C and its vector–Jacobian product.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from foldgen import dims
from foldgen import expr as E
from foldgen.derive import jacobian_diagonal, vjp
from foldgen.expr import Expr, Leaf
from foldgen.ir import (
    AffineEq,
    Ball,
    Bound,
    General,
    HalfSpace,
    L1Ball,
    PgdSettings,
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
    psd_text,
    single_vector_variable,
    smooth,
)
from foldgen.runtime.names import PGD, PGD_SOLVES, SETS

INF = float("inf")

ProjectionKind = Literal[
    "none", "box", "box_sum", "box_wsum", "affine", "halfspace", "ball", "l1ball", "psd", "soc"
]

# The derived functions a PGD module may define, as the problem record names them.
DERIVED_FIELDS = (
    "objective",
    "gradient",
    "hvp",
    "init",
    "gradient_vjp",
    "hessian_diagonal",
    "set_data_vjp",
)

STEP_TEXT = {
    "fixed": "a fixed step α (step_size in the spec, or the constructor's).",
    "lipschitz": "α = 1/L, L = λmax(∇²f) by 50 power iterations on the data (f is quadratic,\n"
    "    so ∇²f is constant); a step_size number overrides it.",
    "scaled": "D = β diag(1/h), h = diag ∇²f(x) derived in closed form (a Newton-like scaling),\n"
    "    β halved from 1 until f decreases (Armijo) and f, ∇f are finite; the backward folds\n"
    "    with D = diag(1/h(x*)).",
    "bb": "a Barzilai–Borwein step α, halved until f decreases (Armijo) and f, ∇f are finite;\n"
    "    the backward folds with the last accepted α.",
}


@dataclass(frozen=True)
class SetItem:
    """One tensor of the feasible set's data (a bound, A, b, a radius …)."""

    name: str
    expr: Expr
    lift: int  # core rank at run time (after the template's row lifting, if any)


@dataclass(frozen=True)
class Projection:
    """The closed-form projection onto C and its data."""

    kind: ProjectionKind
    items: tuple[SetItem, ...]
    row: bool  # affine: one row a·x = b, lifted to a 1×n matrix at run time
    description: str  # "0 ≤ x ≤ 1, Σx = k" for the docstring
    metric: bool  # accepts a diagonal metric (a vector step)


@dataclass(frozen=True)
class PgdPlan:
    rule: RuleName
    var: Leaf
    projection: Projection
    step_mode: str  # fixed | lipschitz | scaled | bb
    step_value: float | None
    functions: tuple[Derived, ...]
    objective_grad_params: tuple[str, ...]  # grad params reached through ∇f
    set_grad_params: tuple[str, ...]  # grad params reached through the set data
    math: dict[str, str]

    def emission(self, problem: Problem) -> Emission:
        projection = self.projection
        kind = "affine_row" if projection.kind == "affine" and projection.row else projection.kind
        has = {fn.name for fn in self.functions}
        record: list[tuple[str, Value]] = [
            ("solve", Ref(PGD_SOLVES[self.step_mode])),
            ("pullback", Ref(PGD["pullback"])),
            ("update_map", Ref(PGD["update_map"])),
            ("set", Ref(SETS[kind])),
            ("set_data", Ref("_set_data" if "_set_data" in has else PGD["no_set_data"])),
            ("objective_grad_indices", grad_indices(problem, self.objective_grad_params)),
            ("set_grad_indices", grad_indices(problem, self.set_grad_params)),
        ]
        record += [(name, Ref(f"_{name}")) for name in DERIVED_FIELDS if f"_{name}" in has]
        default: Value = self.step_value if self.step_mode == "fixed" else "auto"
        settings = [Setting("step_size", default, Ref(PGD["check_step_size"]))]
        if self.step_mode == "lipschitz":  # the accelerated loop, whose body can be compiled
            settings.append(Setting("compile", False, Ref(PGD["check_compile"])))
        return Emission(tuple(record), tuple(settings))

    def describe(self, problem: Problem) -> list[str]:
        x = self.var.name
        lines = [
            *problem_header(problem, x, self.math["objective"]),
            f"    subject to  {self.math['set']}",
            "",
            f"Update rule (PGD):  U({x}) = P_C({x} − D ∇f({x})),   ∇f({x}) = {self.math['gradient']}",
            f"Step D: {STEP_TEXT[self.step_mode]}",
            "Stopping: ‖U(x) − x‖ ≤ tol · max(σ₀, ‖U(x)‖∞), σ₀ = max(‖x₀‖∞, α‖∇f(x₀)‖∞) at the",
            "    projected init x₀ with α = ‖∇f‖/‖∇²f ∇f‖ (the data's scale); converged also needs",
            "    the constraints met to a relative max(tol, √eps) and ‖x‖∞ ≤ σ₀/(2 tol). Iterates",
            "    that stop being finite or grow beyond that stop as diverged (feasible False).",
            "",
            "Backward (folded): solve (I − Φᵀ) v = ∂L/∂x* at the fixed point, then"
            " ∂L/∂θ = Ψ_θᵀ v, with",
            "",
            "    Φᵀv = (I − ∇²f D) J_Pᵀ v,   ∇²f u = " + self.math["hvp"],
            "    Ψ_θᵀv = −(∂∇f/∂θ)ᵀ (D J_Pᵀ v) + (∂P_C/∂θ)ᵀ v,  where",
        ]
        for p in problem.grad_parameters:
            if p.name in self.objective_grad_params:
                lines.append(f"        (∂∇f/∂{p.name})ᵀ u = {self.math['dgrad_' + p.name]}")
        if self.set_grad_params:
            lines.append(
                "        and the set data depend on "
                + ", ".join(self.set_grad_params)
                + " (pulled back through the projection's closed-form Jacobian)."
            )
        return lines + [
            "",
            f"J_P is the closed-form Jacobian of the projection at the gradient step"
            f" {x} − D∇f({x}).",
            "No autograd runs through the solver: the backward evaluates these expressions inside",
            "the linear solver.",
        ]


def plan(problem: Problem) -> PgdPlan:
    """Everything the templates need to emit a PGD layer; rejects what PGD cannot do."""
    var = single_vector_variable(problem)
    x = var.leaf
    projection = _projection(problem, x)
    pnames = tuple(p.name for p in problem.parameters)
    grad_leaves = [p.leaf for p in problem.grad_parameters]

    f = problem.objective
    _require_smooth(problem, f)
    d = smooth(problem, x, f)
    g, hvp, obj_params = d.gradient, d.hvp, d.grad_params

    settings = problem.solver
    assert isinstance(settings, PgdSettings)
    step = settings.step_size
    hess_diag = None
    if step != "auto":
        mode, value = "fixed", float(step)
    elif d.quadratic:
        mode, value = "lipschitz", None
    else:
        hess_diag = jacobian_diagonal(g, x) if projection.metric else None
        mode, value = ("scaled" if hess_diag is not None else "bb"), None

    args = (x.name, *pnames)
    functions = d.functions(problem, x, f, "f")
    if hess_diag is not None:
        functions.append(
            Derived("_hessian_diagonal", args, (hess_diag,), "diag ∇²f(x), for the scaled step.")
        )
    set_params: tuple[str, ...] = ()
    if projection.items:
        functions.append(
            Derived(
                "_set_data",
                (x.name, *pnames),
                tuple(i.expr for i in projection.items),
                "The feasible set's data, evaluated once per solve.",
            )
        )
        bars = [Leaf(f"_{i.name}_bar", "aux", i.expr.shape) for i in projection.items]
        set_vjp = vjp(list(zip((i.expr for i in projection.items), bars)), grad_leaves)
        set_params = tuple(p.name for p in grad_leaves if not E.is_zero(set_vjp[p]))
        if set_params:
            functions.append(
                Derived(
                    "_set_data_vjp",
                    (x.name, *(b.name for b in bars), *pnames),
                    tuple(set_vjp[p] for p in grad_leaves if p.name in set_params),
                    "Cotangents of the set data pulled back to the parameters.",
                )
            )
    math = {
        "objective": math_str(f),
        "gradient": math_str(g),
        "hvp": math_str(hvp),
        "set": projection.description,
        **{
            f"dgrad_{p.name}": math_str(d.mixed[p.leaf])
            for p in problem.grad_parameters
            if p.name in obj_params
        },
    }
    return PgdPlan(
        rule="pgd",
        var=x,
        projection=projection,
        step_mode=mode,
        step_value=value,
        functions=tuple(functions),
        objective_grad_params=obj_params,
        set_grad_params=set_params,
        math=math,
    )


def _require_smooth(problem: Problem, f: Expr) -> None:
    """PGD steps along ∇f: a kink in f (max, sum_largest, pos) has no gradient to follow."""
    for node in E.postorder([f]):
        kink = isinstance(node, E.SumLargest) or (isinstance(node, E.Func) and node.name == "pos")
        if kink and any(node.depends_on(v) for v in f.leaves if v.kind == "var"):
            raise problem.error(
                (problem.sense,),
                f"rule 'pgd' needs a differentiable objective, and '{math_str(node)}' has "
                "kinks; use rule 'admm', which splits off max/norm_inf/sum_largest/norm1 terms "
                "by their proximal maps",
            )


def _projection(problem: Problem, x: Leaf) -> Projection:
    bound = next((b for b in problem.bounds if b.var == x), None)
    others = [c for c in problem.constraints]
    cone = _cone_projection(problem, x, bound)
    if cone is not None:
        return cone
    general = [c for c in others if isinstance(c, General)]
    if general and general[0].relation.op == ">>":
        raise psd_form_error(problem, general[0].source)
    if general:
        raise problem.error(
            ("constraints", general[0].source),
            "rule 'pgd' needs a feasible set with a closed-form projection, and this "
            "constraint is not one of the supported families (bounds, an affine equality, "
            "a half-space, a Euclidean or l1 ball, a capped simplex, bounds with one weighted "
            "sum, a PSD cone X >> M, the second-order cone norm2(u) <= t of the whole state "
            "(u, t)); use rule 'admm' or 'sqp'",
        )
    if not others:
        if bound is None:
            return Projection("none", (), False, "x unconstrained", True)
        return Projection("box", _bound_items(bound, x), False, _bound_text(bound, x), True)
    if len(others) > 1 or (bound is not None and not _bounded_section(others[0])):
        sources = sorted({*(bound.sources if bound else ()), *(c.source for c in others)})
        raise problem.error(
            ("constraints", sources[-1]),
            "rule 'pgd' has no closed-form projection onto the intersection of constraints "
            f"{', '.join(f'[{s}]' for s in sources)} (supported: one family alone, or bounds "
            "with sum(x) == k or w @ x == c); use rule 'admm' or 'sqp'",
        )
    c = others[0]
    n = x.shape
    if isinstance(c, SumEq):
        b = bound or Bound(x, None, None, ())
        items = (*_bound_items(b, x), SetItem("k", c.k, 0))
        text = (_bound_text(b, x) + ", " if bound else "") + f"Σ{x.name} = {math_str(c.k)}"
        if bound is None:  # a hyperplane alone is an affine set
            ones = SetItem("A", E.const(1.0, n), 1)
            return Projection("affine", (ones, SetItem("b", c.k, 0)), True, text, False)
        return Projection("box_sum", items, False, text, True)
    if isinstance(c, AffineEq) and bound is not None:  # one row (_bounded_section)
        section = (*_bound_items(bound, x), SetItem("w", c.A, 1), SetItem("c", c.b, 0))
        text = f"{_bound_text(bound, x)}, {math_str(c.A)}·{x.name} = {math_str(c.b)}"
        return Projection("box_wsum", section, False, text, True)
    if isinstance(c, AffineEq):
        row = c.A.rank == 1
        text = f"{math_str(c.A)}{'·' if row else ' '}{x.name} = {math_str(c.b)}"
        # A scalar right-hand side of A x = b means b·1: give it its full core shape, so that
        # batch axes of b are never read as its core axis at run time.
        rhs = c.b if row else E.broadcast(c.b, c.A.shape[:1])
        return Projection(
            "affine",
            (SetItem("A", c.A, c.A.rank), SetItem("b", rhs, rhs.rank)),
            row,
            text,
            False,
        )
    if isinstance(c, HalfSpace):
        text = f"{math_str(c.a)}·{x.name} ≤ {math_str(c.b)}"
        return Projection(
            "halfspace", (SetItem("a", c.a, 1), SetItem("b", c.b, 0)), False, text, False
        )
    if isinstance(c, Psd):
        return _psd_projection(problem, c)
    if isinstance(c, L1Ball):
        center = E.broadcast(c.center, n)
        text = f"‖{x.name} − {math_str(c.center)}‖₁ ≤ {math_str(c.radius)}"
        return Projection(
            "l1ball", (SetItem("c", center, 1), SetItem("r", c.radius, 0)), False, text, False
        )
    assert isinstance(c, Ball)
    center = E.broadcast(c.center, n)
    text = f"‖{x.name} − {math_str(c.center)}‖ ≤ {math_str(c.radius)}"
    return Projection(
        "ball", (SetItem("c", center, 1), SetItem("r", c.radius, 0)), False, text, False
    )


def _psd_projection(problem: Problem, c: Psd) -> Projection:
    """X − M ⪰ 0 on the whole state: P(Y) = M + V max(Λ, 0) Vᵀ of sym(Y − M), Euclidean
    only (a diagonal metric would not keep the eigenvectors)."""
    if not c.whole:
        raise problem.error(
            ("constraints", c.source),
            "rule 'pgd' projects onto a PSD cone only when its matrix is the only variable "
            "(the projection of several variables' state is not one eigendecomposition); "
            "use rule 'admm'",
        )
    text = f"{psd_text(c)} ⪰ 0 (symmetric)"
    return Projection("psd", (SetItem("m", E.vec(c.offset), 1),), False, text, False)


def _bounded_section(c) -> bool:
    """Whether bounds and c together have a closed-form projection: Σx = k (the capped
    simplex) or one weighted row w·x = c (the weighted box section)."""
    return isinstance(c, SumEq) or (isinstance(c, AffineEq) and c.A.rank == 1)


def _bound_items(b: Bound, x: Leaf) -> tuple[SetItem, SetItem]:
    lo = E.broadcast(b.lower, x.shape) if b.lower is not None else E.const(-INF, x.shape)
    hi = E.broadcast(b.upper, x.shape) if b.upper is not None else E.const(INF, x.shape)
    return SetItem("lo", lo, 1), SetItem("hi", hi, 1)


def _bound_text(b: Bound, x: Leaf) -> str:
    lo = f"{math_str(b.lower)} ≤ " if b.lower is not None else ""
    hi = f" ≤ {math_str(b.upper)}" if b.upper is not None else ""
    return f"{lo}{x.name}{hi}"


def _cone_projection(problem: Problem, x: Leaf, bound: Bound | None) -> Projection | None:
    """The second-order cone when it is the whole feasible set and exactly the state ordered
    as (u, t): ``norm2(x) <= t`` of variables x then t (packed), or ``norm2(x[:-1]) <= x[-1]``
    of one vector; its projection has a closed form and no data. Else None (another cone
    is a General to PGD, rejected with the others)."""
    if bound is not None or len(problem.constraints) != 1:
        return None
    c = problem.constraints[0]
    if not (isinstance(c, Soc) and _canonical_cone(c, x)):
        return None
    text = f"‖{math_str(c.u)}‖ ≤ {math_str(c.t)}"
    return Projection("soc", (), False, text, False)


def _canonical_cone(c: Soc, x: Leaf) -> bool:
    """Whether (u, t) = (x[:-1], x[-1]): as two packed blocks (a vector, then a scalar) or as a
    slice of one vector variable."""
    u, t = c.u, c.t
    if isinstance(u, E.Part) and u.a == x and u.index == 0 and len(u.sizes) == 2:
        return (
            u.sizes[1] == 1
            and isinstance(t, E.Reshape)
            and isinstance(t.a, E.Part)
            and (t.a.a, t.a.sizes, t.a.index) == (x, u.sizes, 1)
        )
    n = x.shape[0]
    last = dims.sub(n, 1)
    return u == E.slice_(x, 0, 0, last) and t == E.reshape(E.slice_(x, 0, last, n), ())
