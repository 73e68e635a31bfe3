"""What every update rule hands to the emitter.

A rule's ``plan(problem)`` returns a `Plan`: the derived expressions to print as functions,
the problem record's fields (names of derived and runtime functions, plain values) and its
settings (an `Emission`), and its account of the problem in readable math for the module
docstring. Rules decide; only emit formats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from foldgen import expr as E
from foldgen.derive import gradient, vjp
from foldgen.errors import RuleError
from foldgen.expr import Expr, Leaf
from foldgen.ir import Problem, Psd, Variable
from foldgen.mathprint import math_str

RuleName = Literal["pgd", "admm", "sqp"]


@dataclass(frozen=True)
class Derived:
    """A set of derived expressions printed as one generated function."""

    name: str
    args: tuple[str, ...]
    outputs: tuple[Expr, ...]
    doc: str


@dataclass(frozen=True)
class Ref:
    """A name the problem record binds: a derived function or a runtime definition
    (`foldgen.runtime`); emit copies (or imports) the runtime ones the module reaches."""

    name: str


#: A problem-record value: a name, or a plain Python value (a number, a string, a tuple of
#: them) that only emit formats.
Value = Ref | bool | int | float | str | None | tuple[Any, ...]


@dataclass(frozen=True)
class Setting:
    """A rule's own keyword setting of the layer's constructor, with its spec default and
    the runtime function that checks a given value."""

    name: str
    default: Value
    check: Ref


@dataclass(frozen=True)
class Emission:
    """What a rule hands to emit: the fields of the generated module's problem record
    (`foldgen.runtime.contract` declares them per rule) and the rule's own settings."""

    record: tuple[tuple[str, Value], ...]
    settings: tuple[Setting, ...] = ()


class Plan(Protocol):
    """A rule's decisions for one problem (rules/pgd.py, admm.py, sqp.py return one)."""

    @property
    def rule(self) -> RuleName: ...

    @property
    def var(self) -> Leaf: ...

    @property
    def functions(self) -> tuple[Derived, ...]:
        """The derived functions the generated module defines."""
        ...

    def emission(self, problem: Problem) -> Emission:
        """The problem record's rule fields and the rule's settings."""
        ...

    def describe(self, problem: Problem) -> list[str]:
        """The module docstring's body: problem, U, Φᵀv, Ψᵀv in readable math."""
        ...


def grad_indices(problem: Problem, names: tuple[str, ...]) -> tuple[int, ...]:
    """Positions of the named parameters in call order (how the runtime indexes gradients)."""
    order = [p.name for p in problem.parameters]
    return tuple(order.index(n) for n in names)


@dataclass(frozen=True)
class Smooth:
    """A smooth objective's derivatives, as PGD and ADMM both fold through them."""

    gradient: Expr  # ∇f
    hvp: Expr  # ∇²f u, u the aux leaf "_u"
    mixed: dict[Leaf, Expr]  # (∂∇f/∂θ)ᵀ u per grad parameter
    grad_params: tuple[str, ...]  # grad parameters ∇f depends on
    quadratic: bool  # ∇²f free of x

    def functions(
        self, problem: Problem, x: Leaf, f: Expr, name: str, what: str = "minimised"
    ) -> list[Derived]:
        """_objective, _gradient, _hvp, _init and, when some θ reaches ∇f, _gradient_vjp."""
        pnames = tuple(p.name for p in problem.parameters)
        args = (x.name, *pnames)
        init = problem.variables[0].init
        out = [
            Derived("_objective", args, (f,), f"{name}(x), {what}."),
            Derived("_gradient", args, (self.gradient,), f"∇{name}(x)."),
            Derived("_hvp", (x.name, "_u", *pnames), (self.hvp,), f"∇²{name}(x) u."),
            Derived("_init", pnames, (init,), "The starting point from the spec's init."),
        ]
        if self.grad_params:
            out.append(
                Derived(
                    "_gradient_vjp",
                    (x.name, "_u", *pnames),
                    tuple(e for p, e in self.mixed.items() if p.name in self.grad_params),
                    f"(∂∇{name}/∂θ)ᵀ u for the gradient parameters θ that ∇{name} depends on.",
                )
            )
        return out


def smooth(problem: Problem, x: Leaf, f: Expr) -> Smooth:
    """∇f, ∇²f u and (∂∇f/∂θ)ᵀ u by symbolic reverse mode (u the aux leaf "_u")."""
    leaves = [p.leaf for p in problem.grad_parameters]
    g = gradient(f, x)
    second = vjp([(g, Leaf("_u", "aux", x.shape))], [x, *leaves])
    mixed = {p: second[p] for p in leaves}
    used = tuple(p.name for p in leaves if not E.is_zero(second[p]))
    return Smooth(g, second[x], mixed, used, not second[x].depends_on(x))


def problem_header(problem: Problem, x: str, objective: str) -> list[str]:
    """The docstring's first lines: default sizes and the objective, as every rule states them."""
    dims = ", ".join(f"{d} = {v}" for d, v in problem.dims) or "none"
    negated = "   (the negated maximisation objective)" if problem.sense == "maximize" else ""
    if problem.packing is not None:
        x = ", ".join(v.name for v in problem.packing.variables)
    return [
        f"Problem (default sizes {dims}; every size is read from the inputs at run time):",
        "",
        f"    minimize    f({x}) = {objective}{negated}",
    ]


def single_vector_variable(problem: Problem) -> Variable:
    """The problem's one vector variable: lowering packs the spec's variables into one
    (`foldgen.ir.Packing`) whenever they are several or not a vector."""
    (var,) = problem.variables
    assert var.leaf.rank == 1, "ir.lower packs non-vector variables"
    return var


def psd_name(c: Psd) -> str:
    """The PSD constraint's matrix variable, by its name in the spec."""
    b = c.block
    return b.label if isinstance(b, E.Part) and b.label else math_str(b)


def psd_text(c: Psd, name: str | None = None) -> str:
    """X − M as the docstrings show it (X by its variable's name, or ``name``)."""
    name = psd_name(c) if name is None else name
    return name if E.is_zero(c.offset) else f"{name} − {math_str(c.offset)}"


def psd_form_error(problem: Problem, source: int) -> RuleError:
    """A '>>' the IR did not recognise as the PSD cone of one matrix variable."""
    return problem.error(
        ("constraints", source),
        "a PSD constraint needs one matrix variable minus something free of the variables "
        "(X >> M, M << X, X - M >> 0), the one form with a closed-form projection here; "
        "a PSD constraint on an expression of variables is not supported yet",
    )


SOLVERS = (
    "_solve_lfpi",
    "_solve_gmres",
    "_solve_cg",
    "_solve_direct",
    "_dense_from_matvec",
)  # TEMP
