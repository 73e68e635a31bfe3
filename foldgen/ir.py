"""The problem IR: a typed, frozen, canonical form of a spec.

``lower(loaded)`` parses every expression of a validated spec into the vector IR and sorts the
constraints into the families the update rules know:

- ``Bound``        l ≤ x ≤ u, elementwise; l, u scalars or vectors of parameters (or ±∞)
- ``AffineEq``     A x = b (A a matrix, or one row a with a·x = b)
- ``SumEq``        Σx = k (with a box: the capped simplex)
- ``HalfSpace``    a·x ≤ b
- ``Ball``         ‖x − c‖₂ ≤ r
- ``L1Ball``       ‖x − c‖₁ ≤ r
- ``Psd``          X − M symmetric positive semidefinite (``X >> M``), X one matrix variable
- ``Soc``          ‖A x + b‖₂ ≤ cᵀx + d, a second-order cone (a ``General`` to rules without it)
- ``General``      anything else, kept for rules with general constraint handling

Recognition is by algebra, not by spelling: a constraint is affine in x when the symbolic
gradient of its difference of sides does not depend on x, so ``x @ a <= b``, ``a @ x - b <= 0``
and ``-b >= -(a @ x)`` are the same half-space. The objective is stored in minimisation form.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from foldgen import dims as dim_arith
from foldgen import expr as E
from foldgen.affine import affine_map, linear_row
from foldgen.derive import gradient, vjp
from foldgen.errors import RuleError
from foldgen.expr import ConstantError, Expr, Leaf, NodeBudgetExceeded, ShapeError, shape_str
from foldgen.limits import DEFAULT_LIMITS, Limits
from foldgen.parse import ExprError, Relation, Scope, parse_constraint, parse_expression
from foldgen.spec import LoadedSpec, SolverSpec

_T = TypeVar("_T")

INF = float("inf")

# Only a matrix that cannot receive gradients may use its symmetry in simplification: the
# gradient of a grad: true matrix is that of the expression as written (entries independent).
STRUCTURAL = frozenset({"symmetric", "psd", "pd", "diagonal"})


@dataclass(frozen=True)
class Parameter:
    name: str
    leaf: Leaf
    grad: bool
    default: float | None
    properties: tuple[str, ...]

    @property
    def shape(self) -> E.Shape:
        return self.leaf.shape


@dataclass(frozen=True)
class Variable:
    name: str
    leaf: Leaf
    init: Expr  # an expression of the parameters and dims, of the variable's shape

    @property
    def shape(self) -> E.Shape:
        return self.leaf.shape


@dataclass(frozen=True)
class Packing:
    """How the spec's variables sit in the one state vector the rules iterate on.

    Scalars, vectors and matrices, in spec order, each flattened row-major into consecutive
    blocks of ``packed`` (sizes may be dim arithmetic); ``views[i]`` is variable i as an
    expression of the packed leaf, which is what every expression of the problem uses."""

    variables: tuple[Variable, ...]  # the spec's own, with leaves of their own shapes
    packed: Leaf
    sizes: tuple[E.Dim, ...]
    views: tuple[Expr, ...]


PACKED_NAME = "_z"
"""The packed state's name in generated code (users cannot declare names that start '_')."""


@dataclass(frozen=True)
class Bound:
    var: Leaf
    lower: Expr | None  # broadcast to the variable's shape
    upper: Expr | None
    sources: tuple[int, ...]  # constraint indices, for messages
    lower_source: int | None = None  # the constraint index of each side, for messages
    upper_source: int | None = None


@dataclass(frozen=True)
class AffineEq:
    var: Leaf
    A: Expr  # (m, n), or (n,) for one row a·x = b
    b: Expr  # (m,), or a scalar
    source: int


@dataclass(frozen=True)
class SumEq:
    var: Leaf
    k: Expr
    source: int


@dataclass(frozen=True)
class HalfSpace:
    var: Leaf
    a: Expr
    b: Expr
    source: int


@dataclass(frozen=True)
class Ball:
    var: Leaf
    center: Expr  # of the variable's shape (zero when absent)
    radius: Expr
    source: int


@dataclass(frozen=True)
class L1Ball:
    var: Leaf
    center: Expr  # of the variable's shape (zero when absent)
    radius: Expr
    source: int


@dataclass(frozen=True)
class Psd:
    """reshape(block, (n, n)) − offset ∈ S₊ⁿ, the symmetric PSD matrices (``X >> M``).

    The relation implies symmetry of X − M: the set is {X : X − M = (X − M)ᵀ ⪰ 0}, so the
    Euclidean projection of any Y is M + P₊(sym(Y − M)), sym(W) = (W + Wᵀ)/2, exactly (the
    skew part of Y − M is orthogonal to every symmetric matrix)."""

    var: Leaf
    offset: Expr  # (n, n), free of the variables
    source: int
    block: Expr  # the n² entries that form X: var itself, or its Part of a packed state

    @property
    def whole(self) -> bool:
        """Whether X is the whole of var (the only variable), not one block of several."""
        b = self.block
        return b == self.var or (isinstance(b, E.Part) and len(b.sizes) == 1)

    @property
    def start(self) -> E.Dim:
        """Where X's n² entries begin in var."""
        b = self.block
        if isinstance(b, E.Part):
            return dim_arith.total(b.sizes[: b.index]) if b.index else 0
        return 0


@dataclass(frozen=True)
class General:
    relation: Relation
    source: int


@dataclass(frozen=True)
class Soc(General):
    """‖A x + b‖₂ ≤ cᵀx + d: the affine image (A x + b, cᵀx + d) lies in the second-order
    cone {(u, t) : ‖u‖ ≤ t}. A subclass of General, so that a rule without a cone handles
    (or rejects) it as the relation it is; ``u`` and ``t`` are the two sides as expressions."""

    var: Leaf
    A: Expr  # (m, n)
    b: Expr  # (m,)
    c: Expr  # (n,)
    d: Expr  # scalar
    u: Expr  # A x + b
    t: Expr  # cᵀx + d


Constraint = AffineEq | SumEq | HalfSpace | Ball | L1Ball | Psd | General


@dataclass(frozen=True)
class Origin:
    """Where a problem came from: the spec's file (as messages name it) and its sha256."""

    file: str
    sha256: str


@dataclass(frozen=True)
class PgdSettings:
    """rule: pgd, with its defaults resolved."""

    max_iter: int
    tol: float
    step_size: float | Literal["auto"]
    rule: Literal["pgd"] = "pgd"


@dataclass(frozen=True)
class AdmmSettings:
    """rule: admm, with its defaults resolved."""

    max_iter: int
    tol: float
    rho: float
    adapt_rho: bool = True  # residual balancing of ρ (rho is its starting value)
    rule: Literal["admm"] = "admm"


@dataclass(frozen=True)
class SqpSettings:
    """rule: sqp, with its defaults resolved."""

    max_iter: int
    tol: float
    step: float
    rule: Literal["sqp"] = "sqp"


SolverSettings = PgdSettings | AdmmSettings | SqpSettings


@dataclass(frozen=True)
class BackwardSettings:
    """How the backward solves its adjoint system, defaults resolved."""

    method: Literal["lfpi", "gmres", "cg", "direct", "active_set", "auto"]
    max_iter: int
    tol: float


def solver_settings(spec: SolverSpec) -> SolverSettings:
    """The validated ``solver`` block as the rule's own settings (spec.py has resolved each
    rule's default; nothing downstream re-resolves one)."""
    if spec.rule == "pgd":
        assert spec.step_size is not None
        return PgdSettings(spec.max_iter, spec.tol, spec.step_size)
    if spec.rule == "admm":
        assert spec.rho is not None and spec.adapt_rho is not None
        return AdmmSettings(spec.max_iter, spec.tol, float(spec.rho), spec.adapt_rho)
    assert spec.step is not None
    return SqpSettings(spec.max_iter, spec.tol, float(spec.step))


@dataclass(frozen=True)
class Problem:
    """Everything the rules need, with no reference back to YAML."""

    name: str
    class_name: str
    doc: str | None
    dims: tuple[tuple[str, int], ...]
    parameters: tuple[Parameter, ...]
    variables: tuple[Variable, ...]
    objective: Expr  # minimised
    sense: str  # as written: the layer reports and documents the user's own sense
    bounds: tuple[Bound, ...]
    constraints: tuple[Constraint, ...]
    solver: SolverSettings
    backward: BackwardSettings
    origin: Origin
    limits: Limits
    expressions: tuple[tuple[tuple, Expr], ...] = ()
    """(key path, expression) of the objective and each relation, to locate a rule's error."""
    budget: E.NodeBudget = field(
        default_factory=lambda: E.NodeBudget(DEFAULT_LIMITS.expression_nodes), compare=False
    )
    """The spec's expression_nodes bound, shared by lowering and the rule's derivations."""
    packing: Packing | None = None
    """Set when the spec's variables are not one vector: they are packed into one."""

    @property
    def grad_parameters(self) -> tuple[Parameter, ...]:
        return tuple(p for p in self.parameters if p.grad)

    def error(self, path: tuple, message: str) -> RuleError:
        """A rule's complaint about the spec at ``path``; `foldgen.build` locates it."""
        return RuleError(path, message)


def lower(loaded: LoadedSpec) -> Problem:
    """Parse and classify a validated spec; raises a located SpecError on any problem."""
    budget = E.NodeBudget(loaded.limits.expression_nodes)
    with budget:
        return _lower(loaded, budget)


def _lower(loaded: LoadedSpec, budget: E.NodeBudget) -> Problem:
    spec = loaded.spec
    params = tuple(
        Parameter(
            name,
            Leaf(
                name,
                "param",
                tuple(p.shape),
                frozenset(p.properties) & STRUCTURAL if not p.grad else frozenset(),
            ),
            p.grad,
            p.default,
            tuple(p.properties),
        )
        for name, p in spec.parameters.items()
    )
    var_leaves = {
        name: Leaf(name, "var", tuple(dim_arith.canonical(d) for d in v.shape))
        for name, v in spec.variables.items()
    }
    dims = dict(spec.dims)
    param_scope = Scope(dims, {p.name: p.leaf for p in params}, loaded.limits)
    full_scope = Scope(dims, {**{p.name: p.leaf for p in params}, **var_leaves}, loaded.limits)
    expressions: list[tuple[tuple, Expr]] = []

    variables = []
    for name, v in spec.variables.items():
        leaf = var_leaves[name]
        init = _init_expression(loaded, name, str(v.init), leaf, param_scope)
        variables.append(Variable(name, leaf, init))

    key = spec.sense
    objective = _located(loaded, (key,), lambda: parse_expression(spec.objective, full_scope))
    if objective.rank != 0:
        raise loaded.error(
            (key,), f"the objective must be a scalar, got {shape_str(objective.shape)}"
        )
    if not any(objective.depends_on(v) for v in var_leaves.values()):
        raise loaded.error((key,), "the objective does not depend on any variable")
    if key == "maximize":
        objective = E.neg(objective)
    expressions.append(((key,), objective))

    lowers: dict[Leaf, tuple[Expr, int]] = {}
    uppers: dict[Leaf, tuple[Expr, int]] = {}
    families: list[Constraint] = []
    relations_of: list[tuple[int, Relation]] = []  # the families' relations, for packing
    for i, text in enumerate(spec.constraints):
        path = ("constraints", i)
        relations = _located(loaded, path, functools.partial(parse_constraint, text, full_scope))
        for rel in relations:
            expressions.append(
                (path, _located(loaded, path, functools.partial(E.sub, rel.lhs, rel.rhs)))
            )
            found = _located(
                loaded,
                path,
                functools.partial(_classify, loaded, i, rel, list(var_leaves.values())),
            )
            if isinstance(found, tuple):
                sides = found[1] if found[0] == "bounds" else [found]
                for kind, var, value in sides:
                    table = lowers if kind == "lower" else uppers
                    if var in table:
                        first = table[var][1]
                        raise loaded.error(
                            ("constraints", i),
                            f"variable '{var.name}' already has a {kind} bound "
                            f"(constraints[{first}]); combine them into one bound",
                        )
                    table[var] = (value, i)
            else:
                families.append(found)
                relations_of.append((i, rel))
    bounds = tuple(
        Bound(
            v,
            lowers[v][0] if v in lowers else None,
            uppers[v][0] if v in uppers else None,
            tuple(sorted({t[v][1] for t in (lowers, uppers) if v in t})),
            lowers[v][1] if v in lowers else None,
            uppers[v][1] if v in uppers else None,
        )
        for v in var_leaves.values()
        if v in lowers or v in uppers
    )
    packing = None
    if len(variables) > 1 or variables[0].leaf.rank != 1:
        packing = _packing(tuple(variables))
        mapping: dict[Expr, Expr] = dict(zip((v.leaf for v in variables), packing.views))

        def packed(e: Expr) -> Expr:
            return E.substitute(e, mapping)

        objective = _located(loaded, (key,), functools.partial(packed, objective))
        expressions = [
            (path, _located(loaded, path, functools.partial(packed, e))) for path, e in expressions
        ]
        families = []
        for i, rel in relations_of:
            path = ("constraints", i)
            moved = Relation(
                _located(loaded, path, functools.partial(packed, rel.lhs)),
                rel.op,
                _located(loaded, path, functools.partial(packed, rel.rhs)),
            )
            found = _located(
                loaded, path, functools.partial(_classify, loaded, i, moved, [packing.packed])
            )
            families.append(General(moved, i) if isinstance(found, tuple) else found)
        bounds = _packed_bounds(packing, bounds)
        init = E.concat([E.vec(v.init) for v in variables])
        variables = [Variable(PACKED_NAME, packing.packed, init)]
    return Problem(
        name=spec.name,
        class_name=spec.class_name,
        doc=spec.doc,
        dims=tuple(dims.items()),
        parameters=params,
        variables=tuple(variables),
        objective=objective,
        sense=key,
        bounds=bounds,
        constraints=tuple(families),
        solver=solver_settings(spec.solver),
        backward=BackwardSettings(spec.backward.method, spec.backward.max_iter, spec.backward.tol),
        origin=Origin(loaded.file, loaded.sha256),
        limits=loaded.limits,
        expressions=tuple(expressions),
        budget=budget,
        packing=packing,
    )


def _packing(variables: tuple[Variable, ...]) -> Packing:
    sizes = tuple(dim_arith.product(v.leaf.shape) for v in variables)
    packed = Leaf(PACKED_NAME, "var", (dim_arith.total(sizes),))
    views = tuple(
        E.reshape(E.part(packed, sizes, i, v.name), v.leaf.shape) for i, v in enumerate(variables)
    )
    return Packing(variables, packed, sizes, views)


def _packed_bounds(packing: Packing, bounds: tuple[Bound, ...]) -> tuple[Bound, ...]:
    """The variables' bounds as one bound of the packed state (±∞ where a variable has none)."""
    if not bounds:
        return ()
    by_var = {b.var: b for b in bounds}
    sides = []
    for side in ("lower", "upper"):
        fill = -INF if side == "lower" else INF
        blocks: list[Expr] = []
        for v, size in zip(packing.variables, packing.sizes):
            b = by_var.get(v.leaf)
            value = getattr(b, side) if b is not None else None
            if value is None:
                blocks.append(E.const(fill, (size,)))
            else:
                blocks.append(
                    E.vec(E.broadcast(value, v.leaf.shape))
                    if v.leaf.shape
                    else E.broadcast(value, (1,))
                )
        sides.append(
            E.concat(blocks) if any(getattr(b, side) is not None for b in bounds) else None
        )
    sources = tuple(sorted({i for b in bounds for i in b.sources}))
    lows = [b.lower_source for b in bounds if b.lower_source is not None]
    highs = [b.upper_source for b in bounds if b.upper_source is not None]
    return (
        Bound(
            packing.packed,
            sides[0],
            sides[1],
            sources,
            lows[0] if lows else None,
            highs[0] if highs else None,
        ),
    )


def _located(loaded: LoadedSpec, path: tuple, fn: Callable[[], _T]) -> _T:
    """fn(), with any expression error reported at ``path``."""
    try:
        return fn()
    except (ExprError, ShapeError, ConstantError) as err:
        raise loaded.error(path, str(err)) from None
    except NodeBudgetExceeded as err:
        raise loaded.error(path, too_many_nodes(err, loaded.limits)) from None


def too_many_nodes(err: NodeBudgetExceeded, limits: Limits) -> str:
    return (
        f"the derived expressions need more than {err.limit} distinct nodes "
        "(expression_nodes); " + limits.raise_hint("expression_nodes")
    )


def derivation_error(problem: Problem, err: ConstantError) -> RuleError:
    """Locate a constant-folding failure of a rule's derivation (``x ** 1e300`` is finite,
    the coefficient 1e300 · (1e300 − 1) of its second derivative is not): at the first
    expression whose own first and second derivatives fail, as every rule builds them (∇,
    Hessian products, the mixed (∂∇/∂θ)ᵀ products); else at the objective. Only called on
    failure, so a build derives nothing twice."""
    variables = [v.leaf for v in problem.variables]
    params = [p.leaf for p in problem.grad_parameters]
    for path, e in problem.expressions:
        xs = [v for v in variables if e.depends_on(v)]
        if not xs:
            continue
        w = Leaf("_w", "aux", e.shape) if e.rank else E.const(1.0)
        try:
            with E.NodeBudget(problem.limits.expression_nodes):
                first = vjp([(e, w)], xs)
                wrt = xs + [p for p in params if e.depends_on(p)]
                vjp([(first[x], Leaf("_u", "aux", x.shape)) for x in xs], wrt)
        except ConstantError as own:
            return problem.error(path, f"differentiating this expression: {own}")
        except NodeBudgetExceeded:
            continue
    return problem.error((problem.sense,), f"deriving the update rule's expressions: {err}")


def _init_expression(loaded: LoadedSpec, name: str, text: str, leaf: Leaf, scope: Scope) -> Expr:
    path = ("variables", name, "init")
    if text in ("zeros", "ones"):
        return E.const(0.0 if text == "zeros" else 1.0, leaf.shape)
    init = _located(loaded, path, lambda: parse_expression(text, scope))
    if init.rank and init.shape != leaf.shape:
        raise loaded.error(
            path, f"init has shape {shape_str(init.shape)}, the variable {shape_str(leaf.shape)}"
        )
    return E.broadcast(init, leaf.shape)


def _classify(loaded: LoadedSpec, i: int, rel: Relation, variables: list[Leaf]):
    """A ('lower'|'upper', var, bound) triple for a bound, else a constraint family."""
    lhs, op, rhs = rel.lhs, rel.op, rel.rhs
    if op == ">=":
        lhs, rhs, op = rhs, lhs, "<="
    diff = E.sub(lhs, rhs)
    used = [v for v in variables if diff.depends_on(v)]
    if not used:
        raise loaded.error(("constraints", i), "this constraint involves no variable")
    if op == ">>":
        return (_psd(diff, used[0], i) if len(used) == 1 else None) or General(rel, i)
    if len(used) > 1:
        return General(rel, i)
    x = used[0]
    # Affine in x: the symbolic gradient (of each entry) is free of x.
    try:
        offset = E.substitute(diff, {x: E.zero(x.shape)})
    except ConstantError:  # 1/(a @ x) at x = 0, log(x) at 0: not affine, whatever it is
        return General(rel, i)
    linear = E.sub(diff, offset)
    if diff.rank == 0 and x.rank == 0 and op == "<=":  # c·s ≤ b of a scalar variable s
        coeff = _scalar_coefficient(linear, x)
        if coeff is not None:
            bound = E.mul(E.div(E.const(-1.0), E.const(coeff)), offset)
            return ("upper" if coeff > 0 else "lower", x, bound)
    if diff.rank == 0:
        a = gradient(diff, x)
        if not a.depends_on(x):
            if op == "==":
                if a == E.const(1.0, x.shape):
                    return SumEq(x, E.neg(offset), i)
                return AffineEq(x, a, E.neg(offset), i)
            return HalfSpace(x, a, E.neg(offset), i)
        largest = _largest_bounds(diff, x) if op == "<=" else None
        if largest:
            return ("bounds", largest)
        ball = (_ball(diff, x, i) or _l1_ball(diff, x, i)) if op == "<=" else None
        return ball or (_soc(rel, diff, x, i) if op == "<=" else None) or General(rel, i)
    # Vector constraints: c·x against a bound (c a positive or negative number), or A x = b.
    coeff = _scalar_coefficient(linear, x) if diff.shape == x.shape else None
    if coeff is not None and op == "<=":
        bound = E.mul(E.div(E.const(-1.0), E.const(coeff)), offset)  # checked: 1/1e-320
        return ("upper" if coeff > 0 else "lower", x, bound)
    if op == "==" and isinstance(linear, E.MatMul) and linear.b == x and linear.a.rank == 2:
        if not linear.a.depends_on(x):
            return AffineEq(x, linear.a, E.neg(offset), i)
    return General(rel, i)


def _one_term(diff: Expr, x: Leaf) -> tuple[Expr, Expr] | None:
    """(t, r) with diff = t + r where t is diff's only term that depends on x (r free of x,
    a zero when nothing else is there), else None: how each set family reads its relation."""
    terms = diff.terms if isinstance(diff, E.Add) else (diff,)
    core = [t for t in terms if t.depends_on(x)]
    if len(core) != 1:
        return None
    return core[0], E.add(*(t for t in terms if not t.depends_on(x)))


def _largest_bounds(diff: Expr, x: Leaf) -> list[tuple[str, Leaf, Expr]] | None:
    """max(c·x + o) + r ≤ 0 (also min(x) ≥ r, as max(−x) ≤ −r) and norm_inf(c·x + o) + r
    ≤ 0, with r free of x, are bounds of x: entrywise c·x + o ≤ −r (and ≥ r for norm_inf)."""
    split = _one_term(diff, x)
    if split is None:
        return None
    t, rest = split
    scale = 1.0
    if isinstance(t, E.Mul) and isinstance(t.a, E.Const) and t.a.rank == 0 and t.a.value > 0:
        scale, t = t.a.value, t.b
    if not (isinstance(t, E.SumLargest) and t.k == 1):
        return None
    inner, both = t.a, False
    if isinstance(inner, E.Func) and inner.name == "abs":
        inner, both = inner.a, True
    if isinstance(inner, E.Reshape) and inner.a.shape == x.shape:  # max(X) of a matrix
        inner = inner.a
    if inner.shape != x.shape:
        return None
    try:
        offset = E.substitute(inner, {x: E.zero(x.shape)})
    except ConstantError:
        return None
    coeff = _scalar_coefficient(E.sub(inner, offset), x)
    if coeff is None:
        return None
    limit = E.div(E.neg(rest), E.const(scale))  # c·x + o ≤ limit (and ≥ −limit)
    upper = E.div(E.sub(limit, offset), E.const(coeff))
    sides = [("upper" if coeff > 0 else "lower", x, upper)]
    if both:
        lower = E.div(E.sub(E.neg(limit), offset), E.const(coeff))
        sides.append(("lower" if coeff > 0 else "upper", x, lower))
    return sides


def _scalar_coefficient(linear: Expr, x: Leaf) -> float | None:
    if linear == x:
        return 1.0
    if isinstance(linear, E.Mul) and isinstance(linear.a, E.Const) and linear.b == x:
        return linear.a.value or None
    return None


def _ball(diff: Expr, x: Leaf, i: int) -> Ball | None:
    """‖x − c‖ − r ≤ 0 or Σ(x − c)² − r ≤ 0, with c and r free of x."""
    split = _one_term(diff, x)
    if split is None:
        return None
    t, rest = split[0], E.neg(split[1])
    squared = False
    if isinstance(t, E.Pow) and t.exp == E.const(0.5):
        t = t.base
    else:
        squared = True
    if not (isinstance(t, E.Sum) and isinstance(t.a, E.Pow) and t.a.exp == E.const(2.0)):
        return None
    inner = t.a.base
    center = E.sub(x, inner)
    if center.depends_on(x):
        return None
    radius = E.power(rest, E.const(0.5)) if squared else rest
    return Ball(x, center, radius, i)


def _l1_ball(diff: Expr, x: Leaf, i: int) -> L1Ball | None:
    """s·‖x − c‖₁ − t ≤ 0 (also ‖c − x‖₁, Σ|x − c|), s > 0 a number, c and t free of x:
    the l1 ball of radius t/s."""
    split = _one_term(diff, x)
    if split is None:
        return None
    t, rest, scale = split[0], E.neg(split[1]), 1.0
    if isinstance(t, E.Mul):
        coefficient = t.a
        if not (isinstance(coefficient, E.Const) and coefficient.rank == 0):
            return None
        t, scale = t.b, coefficient.value
    if scale <= 0 or not math.isfinite(scale):
        return None
    if not isinstance(t, E.Sum):
        return None
    body = t.a
    if not (isinstance(body, E.Func) and body.name == "abs"):
        return None
    inner = body.a
    if inner.shape != x.shape:
        return None
    center = E.sub(x, inner)
    if center.depends_on(x):
        center = E.add(x, inner)  # |c − x| = |x − c|
        if center.depends_on(x):
            return None
    radius = rest if scale == 1.0 else E.div(rest, E.const(scale))
    return L1Ball(x, center, radius, i)


def _psd(diff: Expr, x: Leaf, i: int) -> Psd | None:
    """X − M with X exactly one matrix variable (x itself, reshape(x), or its block of the
    packed state) and M free of x; anything else (2·X, Aᵀ X A, X − Y) is not recognised."""
    split = _one_term(diff, x)
    if split is None:
        return None
    t = split[0]
    block: Expr
    if t == x and x.rank == 2:
        block = x
    elif isinstance(t, E.Reshape) and (t.a == x or (isinstance(t.a, E.Part) and t.a.a == x)):
        block = t.a
    else:
        return None
    offset = E.neg(split[1])
    return Psd(x, E.broadcast(offset, diff.shape), i, block)


def _soc(rel: Relation, diff: Expr, x: Leaf, i: int) -> Soc | None:
    """s‖u‖₂ − (cᵀx + d) ≤ 0 (norm2(u), sqrt(sum_squares(u)), s > 0 a number) with u affine
    in x and the rest an affine scalar: the second-order cone ‖s u‖ ≤ cᵀx + d. A Euclidean
    ball (u = x − center, the rest free of x) is recognised before, by `_ball`."""
    terms = diff.terms if isinstance(diff, E.Add) else (diff,)
    norms = [t for t in terms if _norm_argument(t) is not None and t.depends_on(x)]
    if len(norms) != 1:
        return None
    found = _norm_argument(norms[0])
    assert found is not None
    scale, inner = found
    rest = E.neg(E.add(*(t for t in terms if t is not norms[0])))  # cᵀx + d
    if not inner.depends_on(x):
        return None
    try:  # a constant that leaves the finite numbers here leaves the relation a General
        u = E.mul(E.const(scale), E.vec(inner)) if scale != 1.0 else E.vec(inner)
        vector = affine_map(u, x)
        c = linear_row(rest, x) if rest.depends_on(x) else E.zero(x.shape)
        if vector is None or c is None:
            return None
        d = E.substitute(rest, {x: E.zero(x.shape)})
    except ConstantError:
        return None
    A, b = vector
    return Soc(rel, i, x, A, b, c, d, u, rest)


def _norm_argument(t: Expr) -> tuple[float, Expr] | None:
    """(s, u) for the term s·‖u‖₂ = s·(Σu²)^½ (or s·sqrt(Σu²)), s > 0 a finite number."""
    scale = 1.0
    if isinstance(t, E.Mul) and isinstance(t.a, E.Const) and t.a.rank == 0:
        scale, t = t.a.value, t.b
    if not (scale > 0 and math.isfinite(scale)):
        return None
    if isinstance(t, E.Pow) and t.exp == E.const(0.5):
        body = t.base
    elif isinstance(t, E.Func) and t.name == "sqrt":
        body = t.a
    else:
        return None
    if not (isinstance(body, E.Sum) and isinstance(body.a, E.Pow) and body.a.exp == E.const(2.0)):
        return None
    return scale, body.a.base
