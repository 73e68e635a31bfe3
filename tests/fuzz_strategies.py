"""Hypothesis strategies for spec files: valid ones from the grammar of SPEC.md, and mutations
of the shipped specs down to YAML- and byte-level garbage (issue 8, "specs are untrusted").

`valid_specs()` draws a declaration context (dims, parameters, variables) and then objectives,
constraints and inits as *typed* expressions of SPEC.md's grammar over it (so most of them
type-check and reach the derivation and the runtime), with a small chance per node of a
mistyped operand (so shape errors are exercised too). `mutated_specs()` starts from a shipped
spec or a drawn valid one and applies a few data-, text- and byte-level mutations. Both draw
`bytes`: what a file in a pull request could hold.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from contract import PAYLOAD
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
SHIPPED: tuple[str, ...] = tuple(
    p.read_text(encoding="utf-8") for p in sorted((ROOT / "specs").glob("*.yaml"))
)
"""The text of every shipped spec (the seeds of the mutations)."""

Shape = tuple[str, ...]
"""A shape as dim names: () a scalar, (n,) a vector, (m, n) a matrix."""

DIM_POOL = ("n", "m", "r")
PARAM_POOL = ("a", "b", "c", "A", "B", "G", "Q", "P", "h", "s", "t", "lam", "w")
VAR_POOL = ("x", "y", "z", "u")
ELEMENTWISE = (
    "exp", "log", "sqrt", "sin", "cos", "tanh", "sigmoid", "softplus", "square", "abs", "entr",
    "logistic", "huber", "pos", "neg",
)  # fmt: skip
REDUCTIONS = (
    "sum", "sum_squares", "norm2", "norm1", "log_sum_exp", "mean", "trace", "max", "min",
    "norm_inf",
)  # fmt: skip
PROPERTIES = ("symmetric", "psd", "pd", "diagonal", "nonneg")

HOSTILE_STRINGS = (
    f'"""\n{PAYLOAD}\n"""',
    f"'''\n{PAYLOAD}\n'''",
    f"\n{PAYLOAD}\n#",
    f"\r{PAYLOAD}\r#",
    f"\u2028{PAYLOAD}\u2029",
    f"\x85{PAYLOAD}",
    "\\",
    "\\N{",
    "\\x",
    "\\u12",
    '"',
    "'",
    "\x00",
    "\x1b[31mred",
    "\ud800",
    "\ufeff",
    "\u202eevil",
    "{{ 7 * 7 }}",
    "{% for x in y %}",
    "{#",
    "%s %d {0}",
    "${HOME}",
    "x" * 5000,
    "é" * 3000,
    "",
    " ",
    "\t",
    "null",
    "~",
    "yes",
    ".inf",
    "-.nan",
    "0x1F",
    "1_000",
    "1e309",
    "9" * 400,
    "__import__('os').system('true')",
    "x.__class__",
    "lambda: 0",
    "[x for x in y]",
    "f'{x}'",
    "x[0]",
    "x if x else x",
    "(x := 1)",
    "...",
    "1j",
    "'str'",
    "x ** 1e300",
    "10 ** 10 ** 10",
    "-" * 3000 + "x",
    "(" * 300 + "x" + ")" * 300,
    "x" + " * x" * 24,
)  # fmt: skip
HOSTILE_NAMES = (
    "__class__", "_x", "self", "torch", "math", "forward", "info", "backward_info", "training",
    "bound", "max_iter", "tol", "step_size", "rho", "step", "on_nonconvergence", "fold_unconverged", "backward_fallback", "verbose",
    "backward_method", "PARAMETERS", "DEFAULTS", "DEFAULT_DIMS", "VARIABLE", "SolveInfo",
    "BackwardInfo", "ConvergenceWarning", "ConvergenceError", "dataclasses", "warnings", "sys",
    "x\ny", "ｘ", "é", "a" * 300, "1", "True", "None", "sum", "print", "eval", "ctx",
)  # fmt: skip
YAML_TAGS = (
    "!!python/object:os.system",
    "!!python/object/apply:os.system",
    "!!python/name:os.system",
    "!!bool",
    "!!int",
    "!!float",
    "!!str",
    "!!null",
    "!!timestamp",
    "!!binary",
    "!!set",
    "!!omap",
    "!!pairs",
    "!!map",
    "!!seq",
    "!custom",
    "!<tag:yaml.org,2002:python/tuple>",
)
ODD_CHARS = (
    "\x00", "\r", "\r\n", "\t", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\u2028", "\u2029",
    "\ufeff", "\u200b", "\u202e", "\u0301", "ｘ", "😀", "\ue000", "\U0010ffff",
)  # fmt: skip
HUGE_NUMBERS = (
    "9" * 400, "-" + "9" * 400, "1e309", "-1e309", "1e-400", ".inf", "-.inf", ".nan", "0x7fffffff",
    "0o777", "1_000_000", "1.0e+308", "4.9e-324", "0", "-0", "-1", "2**64", "18446744073709551617",
)  # fmt: skip


@dataclass(frozen=True)
class Context:
    """What expressions may refer to: dims (names → default size), parameters, variables."""

    dims: dict[str, int]
    params: dict[str, Shape]
    variables: dict[str, Shape]

    def leaves(self, shape: Shape, *, variables: bool = True) -> list[str]:
        """Names (and transposes) that have exactly this shape."""
        found = [name for name, s in self.params.items() if s == shape]
        if variables:  # twice: an objective should usually depend on the variables
            found += 2 * [name for name, s in self.variables.items() if s == shape]
        if len(shape) == 2:
            found += [f"{name}.T" for name, s in self.params.items() if s == shape[::-1]]
        if not shape:
            found += list(self.dims)
        return found

    def matrix_shapes(self) -> list[Shape]:
        """Matrix shapes some leaf has (a parameter, its transpose, or an identity)."""
        shapes = {(d, d) for d in self.dims}
        for s in [*self.params.values(), *self.variables.values()]:
            if len(s) == 2:
                shapes |= {s, s[::-1]}
        return sorted(shapes)


_NUMBERS = st.one_of(
    st.integers(-5, 5).map(str),
    st.sampled_from(["0.5", "1.0", "2.0", "1e-3", "1.0e-9", "3.25", "1e3", "0.1"]),
    st.floats(-100, 100, allow_nan=False, allow_infinity=False).map(lambda f: repr(abs(f))),
)


_COEFFICIENTS = st.sampled_from(["0.5", "1.0", "2", "0.1", "3.5"])


@st.composite
def expressions(
    draw: st.DrawFn, ctx: Context, shape: Shape, depth: int, variables: bool = True
) -> str:
    """An expression of the grammar with this shape (or, rarely, a deliberately wrong one)."""
    if depth > 0 and draw(st.integers(0, 99)) < 2:
        shape = draw(st.sampled_from([(), *[(d,) for d in ctx.dims], *ctx.matrix_shapes()]))
    sub = depth - 1

    def e(s: Shape) -> str:
        return draw(expressions(ctx, s, sub, variables))

    leaves = ctx.leaves(shape, variables=variables)
    options = ["leaf"] if leaves else []
    if not shape:
        options += ["number"]
    elif len(shape) == 1:
        options += ["ones"]
    elif shape[0] == shape[1]:
        options += ["eye"]
    else:
        options += ["ones"]  # ones(m, n): a non-square shape no leaf may have
    if depth > 0:
        options += ["binary", "binary", "scale", "neg", "elementwise", "power"]
        if not shape:
            options += ["reduce", "reduce", "dot", "matvec_scalar", "quad_form", "index"]
        elif len(shape) == 1:
            options += ["matvec", "diag_part", "row", "axis_sum", "maximum"]
        else:
            options += ["transpose", "matmul"] + (["diag"] if shape[0] == shape[1] else [])
    kind = draw(st.sampled_from(options))
    if kind == "leaf":
        return draw(st.sampled_from(leaves))
    if kind == "number":
        return draw(_NUMBERS)
    if kind == "ones":
        return f"ones({', '.join(shape)})"
    if kind == "eye":
        return f"eye({shape[0]})"
    if kind == "binary":
        op = draw(st.sampled_from(["+", "-", "*", "/"]))
        return f"({e(shape)} {op} {e(shape)})"
    if kind == "scale":
        op = draw(st.sampled_from(["+", "-", "*", "/"]))
        scalar, full = e(()), e(shape)
        return f"({scalar} {op} {full})" if draw(st.booleans()) else f"({full} {op} {scalar})"
    if kind == "neg":
        return f"-{e(shape)}"
    if kind == "elementwise":
        return f"{draw(st.sampled_from(ELEMENTWISE))}({e(shape)})"
    if kind == "power":
        exponent = draw(st.sampled_from(["2", "3", "0.5", "1.5", "-1", "2.0", "4"]))
        if draw(st.integers(0, 9)) == 0:
            exponent = f"({e(())})"
        return f"({e(shape)}) ** {exponent}"
    if kind == "reduce":
        reduction = draw(st.sampled_from(REDUCTIONS))
        vectors = [(d,) for d in sorted(ctx.dims)]
        shapes = vectors if reduction == "log_sum_exp" else [(), *vectors, *ctx.matrix_shapes()]
        return f"{reduction}({e(draw(st.sampled_from(shapes)))})"
    if kind == "index":  # an entry of a vector: x[0], x[-1], x[n - 1]
        d = draw(st.sampled_from(sorted(ctx.dims)))
        at = draw(st.sampled_from(["0", "-1", f"{d} - 1", "1"]))
        return f"({e((d,))})[{at}]"
    if kind == "row":  # a row or a column of a matrix
        rows = [s for s in ctx.matrix_shapes() if s[1] == shape[0]]
        cols = [s for s in ctx.matrix_shapes() if s[0] == shape[0]]
        if rows and draw(st.booleans()):
            return f"({e(draw(st.sampled_from(rows)))})[0]"
        if cols:
            return f"({e(draw(st.sampled_from(cols)))})[:, -1]"
        return f"ones({shape[0]})"
    if kind == "axis_sum":
        cols = [s for s in ctx.matrix_shapes() if s[1] == shape[0]]
        if cols:
            return f"sum({e(draw(st.sampled_from(cols)))}, axis=0)"
        return f"ones({shape[0]})"
    if kind == "maximum":
        op = draw(st.sampled_from(["maximum", "minimum", "max", "min"]))
        return f"{op}({e(shape)}, {e(shape)})"
    if kind == "dot":
        v = (draw(st.sampled_from(sorted(ctx.dims))),)
        return f"dot({e(v)}, {e(v)})"
    if kind == "matvec_scalar":
        v = (draw(st.sampled_from(sorted(ctx.dims))),)
        return f"({e(v)} @ {e(v)})"
    if kind == "quad_form":
        d = draw(st.sampled_from(sorted(ctx.dims)))
        return f"quad_form({e((d,))}, {e((d, d))})"
    if kind == "matvec":
        rows = [s for s in ctx.matrix_shapes() if s[0] == shape[0]]
        cols = [s for s in ctx.matrix_shapes() if s[1] == shape[0]]
        if rows and draw(st.booleans()):
            m = draw(st.sampled_from(rows))
            return f"({e(m)} @ {e((m[1],))})"
        if cols:
            m = draw(st.sampled_from(cols))
            return f"({e((m[0],))} @ {e(m)})"
        return f"ones({shape[0]})"
    if kind == "diag_part":
        return f"diag({e((shape[0], shape[0]))})"
    if kind == "transpose":
        return f"({e(shape[::-1])}).T"
    if kind == "matmul":
        have = set(ctx.matrix_shapes())
        inner = [k for k in sorted(ctx.dims) if (shape[0], k) in have and (k, shape[1]) in have]
        k = draw(st.sampled_from(inner))
        return f"({e((shape[0], k))} @ {e((k, shape[1]))})"
    assert kind == "diag"
    return f"diag({e((shape[0],))})"


_SPACES = st.sampled_from(["", " ", "  "])


@st.composite
def constraints(draw: st.DrawFn, ctx: Context) -> str:
    """One constraint: a familiar form (bounds, budget, affine, ball) or a random relation."""
    var = draw(st.sampled_from(sorted(ctx.variables)))
    vshape = ctx.variables[var]
    scalars = ctx.leaves(())
    bound = st.one_of(_NUMBERS, st.sampled_from(scalars)) if scalars else _NUMBERS
    form = draw(st.integers(0, 9))
    if form == 0:
        return f"{draw(bound)} <= {var} <= {draw(bound)}"
    if form == 1:
        return f"{var} {draw(st.sampled_from(['>=', '<=']))} {draw(bound)}"
    if form == 2:
        return f"sum({var}) == {draw(bound)}"
    if form == 3:
        return f"norm2({var}) <= {draw(bound)}"
    if form == 4 and vshape:
        rows = [s for s in ctx.matrix_shapes() if s[1] == vshape[0]]
        if rows:
            m = draw(st.sampled_from(rows))
            op = draw(st.sampled_from(["==", "<=", ">="]))
            lhs = draw(expressions(ctx, m, 0, variables=False))
            rhs = draw(expressions(ctx, (m[0],), 1, variables=False))
            return f"{lhs} @ {var} {op} {rhs}"
    shape = draw(st.sampled_from([(), *[(d,) for d in ctx.dims]]))
    depth = draw(st.integers(0, 3))
    a = draw(expressions(ctx, shape, depth))
    if draw(st.integers(0, 4)) < 4:  # make sure it constrains the variable, mostly
        a = f"({a} + {var})" if shape == vshape else f"({a} + sum({var}))"
    b = draw(expressions(ctx, shape if draw(st.booleans()) else (), depth))
    op = draw(st.sampled_from(["<=", ">=", "=="]))
    if draw(st.integers(0, 4)) == 0:
        c = draw(expressions(ctx, (), 1))
        chain = "<=" if op != ">=" else ">="
        return f"{b} {chain} {a} {chain} {c}"
    sp = draw(_SPACES)
    return f"{a}{sp}{op}{sp}{b}"


@st.composite
def objective_terms(draw: st.DrawFn, ctx: Context) -> str:
    """One term of an objective: a familiar one in a variable, or a random scalar expression."""
    var = draw(st.sampled_from(sorted(ctx.variables)))
    shape = ctx.variables[var]
    form = draw(st.integers(0, 6))
    if form == 0:
        return f"0.5 * sum_squares({var} - {draw(expressions(ctx, shape, 1, variables=False))})"
    if form == 1:
        return f"{draw(expressions(ctx, shape, 1, variables=False))} @ {var}" if shape else var
    if form == 2 and shape:
        return f"0.5 * quad_form({var}, {draw(expressions(ctx, (shape[0], shape[0]), 1))})"
    if form == 3:
        return f"{draw(_COEFFICIENTS)} * {draw(st.sampled_from(REDUCTIONS))}({var})"
    return draw(expressions(ctx, (), draw(st.integers(1, 4))))


@st.composite
def contexts(draw: st.DrawFn) -> tuple[Context, dict[str, Any], dict[str, Any], dict[str, int]]:
    """Dims, parameters and variables, as a Context and as the spec's YAML data."""
    dim_names = draw(st.lists(st.sampled_from(DIM_POOL), min_size=1, max_size=3, unique=True))
    dims = {d: draw(st.integers(1, 6)) for d in dim_names}
    shapes = st.sampled_from(
        [(), *[(d,) for d in dim_names], *[(a, b) for a in dim_names for b in dim_names]]
    )
    fewest = 0 if draw(st.integers(0, 19)) == 19 else 1  # a layer without inputs, rarely
    names = draw(st.lists(st.sampled_from(PARAM_POOL), min_size=fewest, max_size=5, unique=True))
    params: dict[str, Shape] = {}
    param_data: dict[str, Any] = {}
    for name in names:
        shape = draw(shapes)
        params[name] = shape
        entry: dict[str, Any] = {"shape": list(shape)}
        if draw(st.booleans()):
            entry["grad"] = draw(st.booleans())
        if not shape and draw(st.integers(0, 2)) == 0:
            entry["default"] = draw(st.sampled_from([0.5, 1.0, 5, 0.05, 2]))
        if draw(st.integers(0, 3)) == 0:
            square = len(shape) == 2 and shape[0] == shape[1]
            pool = PROPERTIES if square else ("nonneg",)
            entry["properties"] = draw(st.lists(st.sampled_from(pool), max_size=2, unique=True))
        param_data[name] = entry
    # Mostly one vector variable (what every rule supports); sometimes a scalar or two.
    most = 2 if draw(st.integers(0, 9)) == 9 else 1
    var_names = draw(st.lists(st.sampled_from(VAR_POOL), min_size=1, max_size=most, unique=True))
    variables: dict[str, Shape] = {}
    for name in var_names:
        kind = draw(st.integers(0, 19))  # mostly vectors; scalars and matrices sometimes
        if kind < 17:
            variables[name] = (draw(st.sampled_from(dim_names)),)
        elif kind < 19:
            variables[name] = ()
        else:
            variables[name] = (draw(st.sampled_from(dim_names)), draw(st.sampled_from(dim_names)))
    ctx = Context(dims, params, variables)
    var_data: dict[str, Any] = {}
    for name, shape in variables.items():
        entry = {"shape": list(shape)}
        init = draw(st.integers(0, 5))
        if init == 1:
            entry["init"] = draw(st.sampled_from(["zeros", "ones"]))
        elif init == 2:
            entry["init"] = draw(expressions(ctx, shape, 2, variables=False))
        elif init == 3:
            entry["init"] = draw(st.sampled_from([0.5, 1, -2.0]))
        var_data[name] = entry
    return ctx, param_data, var_data, dims


_SOLVERS = {
    "pgd": st.fixed_dictionaries(
        {"rule": st.just("pgd")},
        optional={
            "step_size": st.one_of(st.just("auto"), st.floats(1e-4, 2.0)),
            "max_iter": st.integers(1, 5000),
            "tol": st.sampled_from([1e-12, 1e-9, 1e-6, 1e-3]),
        },
    ),
    "admm": st.fixed_dictionaries(
        {"rule": st.just("admm")},
        optional={
            "rho": st.floats(1e-3, 100.0),
            "max_iter": st.integers(1, 5000),
            "tol": st.sampled_from([1e-12, 1e-9, 1e-6]),
        },
    ),
    "sqp": st.fixed_dictionaries(
        {"rule": st.just("sqp")},
        optional={
            "step": st.floats(0.05, 1.0),
            "max_iter": st.integers(1, 300),
            "tol": st.sampled_from([1e-10, 1e-8, 1e-6]),
        },
    ),
}
_BACKWARD = st.fixed_dictionaries(
    {},
    optional={
        "method": st.sampled_from(["lfpi", "gmres", "cg", "direct", "auto"]),
        "max_iter": st.integers(1, 500),
        "tol": st.sampled_from([1e-12, 1e-10, 1e-6]),
    },
)
_DOCS = st.one_of(
    st.sampled_from(["A fuzzed problem.", "Minimise something; differentiable in c."]),
    st.text(max_size=80),
    st.sampled_from(HOSTILE_STRINGS),
)


@st.composite
def valid_spec_data(draw: st.DrawFn) -> dict[str, Any]:
    """The YAML data of a spec drawn from the grammar (it may still fail a semantic check)."""
    ctx, param_data, var_data, dims = draw(contexts())
    name = draw(st.sampled_from(["fuzz", "p", "layer_a", "qp2", "my_problem"]))
    data: dict[str, Any] = {"foldgen": 1, "name": name}
    if draw(st.integers(0, 4)) == 0:
        data["class"] = draw(st.sampled_from(["Layer", "FuzzLayer", "X1"]))
    if draw(st.booleans()):
        data["doc"] = draw(_DOCS)
    data["dims"] = dims
    data["parameters"] = param_data
    data["variables"] = var_data
    terms = draw(st.lists(objective_terms(ctx), min_size=1, max_size=3))
    objective = " + ".join(terms)
    if draw(st.integers(0, 4)) < 4:  # a term in the variable, so most objectives depend on it
        var = draw(st.sampled_from(sorted(ctx.variables)))
        objective += f" + {draw(_COEFFICIENTS)} * {draw(st.sampled_from(REDUCTIONS))}({var})"
    sense = draw(st.sampled_from(["minimize", "minimize", "maximize"]))
    data[sense] = objective
    cons = draw(st.lists(constraints(ctx), max_size=3))
    if cons:
        data["constraints"] = cons
    data["solver"] = solver = draw(st.sampled_from(sorted(_SOLVERS)).flatmap(_SOLVERS.__getitem__))
    if solver["rule"] == "admm" and draw(st.integers(0, 3)) < 3:  # something to split off
        var = draw(st.sampled_from(sorted(ctx.variables)))
        norm = draw(st.sampled_from(["norm1", "norm2"]))
        data[sense] += f" + {draw(_COEFFICIENTS)} * {norm}({var})"
    if draw(st.booleans()):
        data["backward"] = draw(_BACKWARD)
    return data


@st.composite
def dumped(draw: st.DrawFn, data: Any) -> str:
    """YAML text of `data` in one of the styles a person might write."""
    return yaml.safe_dump(
        data,
        sort_keys=False,
        allow_unicode=draw(st.booleans()),
        default_flow_style=draw(st.sampled_from([False, None])),
        width=draw(st.sampled_from([80, 10_000])),
    )


def valid_specs() -> st.SearchStrategy[bytes]:
    """UTF-8 YAML of specs drawn from the grammar."""
    return valid_spec_data().flatmap(dumped).map(lambda text: text.encode("utf-8"))


# ---------------------------------------------------------------------------------------
# Mutations
# ---------------------------------------------------------------------------------------


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value of the data (not the root)."""
    found: list[tuple[Any, ...]] = []
    items = (
        data.items()
        if isinstance(data, dict)
        else enumerate(data)
        if isinstance(data, list)
        else ()
    )
    for key, value in items:
        found.append((*prefix, key))
        found += _paths(value, (*prefix, key))
    return found


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


_ODD_VALUES = st.one_of(
    st.sampled_from(
        [None, True, False, 0, -1, 1, 10**400, -(10**30), 1.5, float("inf"), float("nan"), ""]
    ),
    st.sampled_from([[], {}, [1, 2], {"a": 1}, [[[]]], "x", "auto", "zeros", "[n]"]),
    st.sampled_from(HOSTILE_STRINGS),
    st.text(max_size=30),
    st.integers(),
    st.floats(),
)


@st.composite
def _mutate_data(draw: st.DrawFn, data: dict[str, Any]) -> dict[str, Any]:
    """One mutation of the YAML data: drop, duplicate, retype, swap, insert or rename."""
    data = copy.deepcopy(data)
    paths = _paths(data)
    kind = draw(
        st.sampled_from(["drop", "retype", "retype", "swap", "add_key", "rename", "hostile"])
    )
    path = draw(st.sampled_from(paths))
    parent, key = _get(data, path[:-1]), path[-1]
    if kind == "drop":
        del parent[key]
    elif kind == "retype":
        parent[key] = draw(_ODD_VALUES)
    elif kind == "hostile":
        parent[key] = draw(st.sampled_from(HOSTILE_STRINGS))
    elif kind == "swap":
        other = draw(st.sampled_from(paths))
        if other[: len(path)] != path and path[: len(other)] != other:
            holder = _get(data, other[:-1])
            first, second = copy.deepcopy(parent[key]), copy.deepcopy(holder[other[-1]])
            parent[key], holder[other[-1]] = second, first
    elif kind == "add_key":
        target = parent if isinstance(parent, dict) else data
        name = draw(st.one_of(st.sampled_from(HOSTILE_NAMES), st.text(max_size=10)))
        target[name] = draw(_ODD_VALUES)
    else:  # rename a declared name everywhere, to a name the generated code may use itself
        groups = [g for g in ("dims", "parameters", "variables") if isinstance(data.get(g), dict)]
        if groups:
            group = draw(st.sampled_from(groups))
            if data[group]:
                old = draw(st.sampled_from(sorted(data[group], key=str)))
                new = draw(st.sampled_from(HOSTILE_NAMES))
                data = _renamed(data, str(old), new)
    return data


def _renamed(data: Any, old: str, new: str) -> Any:
    """`data` with the name `old` replaced by `new` in keys and as a word in strings."""
    word = re.compile(rf"\b{re.escape(old)}\b")
    if isinstance(data, dict):
        return {(new if k == old else k): _renamed(v, old, new) for k, v in data.items()}
    if isinstance(data, list):
        return [_renamed(v, old, new) for v in data]
    if isinstance(data, str):
        return word.sub(lambda _: new, data)
    return data


@st.composite
def _mutate_text(draw: st.DrawFn, text: str) -> str:
    """One mutation of the YAML text: tags, anchors, aliases, nesting, odd characters, numbers."""
    lines = text.splitlines(keepends=True) or [""]
    kind = draw(
        st.sampled_from(
            [
                "tag", "tag", "alias", "bomb", "recursive", "merge", "nest", "nest_map", "char",
                "char", "crlf", "tabs", "number", "long", "duplicate", "truncate", "documents",
                "top_level", "comment",
            ]
        )
    )  # fmt: skip
    i = draw(st.integers(0, len(lines) - 1))
    line = lines[i]
    if kind == "tag":
        tag = draw(st.sampled_from(YAML_TAGS))
        return (
            "".join(lines[:i])
            + re.sub(r": ", f": {tag} ", line, count=1)
            + "".join(lines[i + 1 :])
        )
    if kind == "alias":
        m = re.match(r"(\s*)([^:\s]+): (.+)", line)
        if m:
            lines[i] = f"{m.group(1)}{m.group(2)}: &anc {m.group(3)}\n"
            j = draw(st.integers(0, len(lines) - 1))
            lines[j] = re.sub(r": (.+)", ": *anc", lines[j], count=1)
        return "".join(lines)
    if kind == "bomb":
        levels, width = draw(st.integers(1, 9)), draw(st.integers(2, 10))
        bomb = [f"b0: &b0 [{', '.join(['lol'] * width)}]\n"]
        bomb += [f"b{k}: &b{k} [{', '.join([f'*b{k - 1}'] * width)}]\n" for k in range(1, levels)]
        target = draw(st.sampled_from(["doc", "constraints", "minimize", "dims", "name"]))
        tail = re.sub(rf"(?m)^{target}:.*$", f"{target}: *b{levels - 1}", text, count=1)
        return "".join(bomb) + tail
    if kind == "recursive":
        return re.sub(r"(?m)^(constraints|dims|doc):.*$", r"\1: &r [*r]", text, count=1)
    if kind == "merge":
        return re.sub(r"(?m)^solver: ", "solver: &s ", text, count=1) + "backward: {<<: *s}\n"
    if kind == "nest":
        depth = draw(st.sampled_from([10, 33, 100, 1000, 3000]))
        return re.sub(
            r": (.+)", lambda m: ": " + "[" * depth + m.group(1) + "]" * depth, text, count=1
        )
    if kind == "nest_map":
        depth = draw(st.sampled_from([10, 40, 500]))
        return text + "deep: " + "{a: " * depth + "1" + "}" * depth + "\n"
    if kind == "char":
        position = draw(st.integers(0, len(text)))
        return text[:position] + draw(st.sampled_from(ODD_CHARS)) + text[position:]
    if kind == "crlf":
        return text.replace("\n", draw(st.sampled_from(["\r\n", "\r"])))
    if kind == "tabs":
        return text.replace("  ", "\t")
    if kind == "number":
        numbers = list(re.finditer(r"(?<![\w.])\d+(?:\.\d+)?(?:e-?\d+)?(?![\w.])", text))
        if numbers:
            m = draw(st.sampled_from(numbers))
            return text[: m.start()] + draw(st.sampled_from(HUGE_NUMBERS)) + text[m.end() :]
        return text
    if kind == "long":
        return re.sub(
            r"(?m)^doc:.*$", "doc: " + "x" * draw(st.sampled_from([10_001, 2_000_000])), text
        )
    if kind == "duplicate":
        return "".join(lines[: i + 1]) + line + "".join(lines[i + 1 :])
    if kind == "truncate":
        return text[: draw(st.integers(0, len(text)))]
    if kind == "documents":
        return draw(st.sampled_from(["---\n", "", "%YAML 1.1\n---\n"])) + text + "---\n" + text
    if kind == "top_level":
        return draw(st.sampled_from(["", "~\n", "- a\n- b\n", "42\n", '"text"\n', "[]\n", "{}\n"]))
    return text.replace("\n", " # comment: [unclosed\n", 1)


@st.composite
def _mutate_bytes(draw: st.DrawFn, raw: bytes) -> bytes:
    """A byte-level mutation: not UTF-8, a BOM, another encoding, a cut multibyte character."""
    kind = draw(st.sampled_from(["latin1", "invalid", "bom", "utf16", "cut"]))
    if kind == "latin1":
        return (
            raw.decode("utf-8", "replace").replace("Box", "Bôx").encode("latin-1", "replace")
            + b"# \xe9\n"
        )
    if kind == "invalid":
        position = draw(st.integers(0, len(raw)))
        return (
            raw[:position]
            + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\x80"]))
            + raw[position:]
        )
    if kind == "bom":
        return b"\xef\xbb\xbf" + raw
    if kind == "utf16":
        return raw.decode("utf-8", "replace").encode("utf-16")
    return "é€😀".encode() + raw[: draw(st.integers(0, len(raw)))] + "€".encode()[:2]


@st.composite
def mutated_specs(draw: st.DrawFn) -> bytes:
    """A shipped or drawn spec after one to three mutations (data, text and byte level)."""
    if draw(st.booleans()):
        data = yaml.safe_load(draw(st.sampled_from(SHIPPED)))
    else:
        data = draw(valid_spec_data())
    data_mutations = draw(st.integers(0, 2))
    for _ in range(data_mutations):
        data = draw(_mutate_data(data))
    text = draw(dumped(data))
    for _ in range(draw(st.integers(0 if data_mutations else 1, 2))):
        text = draw(_mutate_text(text))
    raw = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:
        raw = draw(_mutate_bytes(raw))
    return raw
