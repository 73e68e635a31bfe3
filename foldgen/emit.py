"""Emission: print the derived expressions and render the module templates.

Decisions are made in Python (here and in the rule's plan); the Jinja template only lays
the module's own text out. The solvers live as plain, tested Python in `foldgen.runtime`;
`foldgen.link` finds the definitions a module reaches, which are copied after it (or
imported from a shared runtime file). The output is deterministic: no timestamps, sorted
where order is not given by the spec.
"""

from __future__ import annotations

import functools
import shlex
import textwrap
from pathlib import Path
from typing import Literal

import jinja2

from foldgen import dims
from foldgen import expr as E
from foldgen._version import __version__
from foldgen.ir import Problem, Variable
from foldgen.link import (
    SHARED_RUNTIME,
    STDLIB_IMPORTS,
    block,
    closure,
    free_names,
    identifiers,
    imports_for,
    modules_used,
    runtime_definitions,
)
from foldgen.printer import print_function
from foldgen.rules.base import Plan, Ref, Value
from foldgen.source import comment, docstring, identifier, literal, number, string_literal


def templates_dir() -> Path:
    """The templates shipped with the package (``foldgen/templates`` in a wheel), else the
    source tree's top-level ``templates/``."""
    try:
        from importlib.resources import files

        root = Path(str(files("foldgen.templates")))
        if (root / "module.py.j2").exists():
            return root
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parent.parent / "templates"


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def _dim_sources(problem: Problem, args: tuple[str, ...]) -> dict[str, str]:
    """dim → expression of the arguments' shapes, falling back to the spec's default."""
    shapes = {p.name: p.shape for p in problem.parameters}
    shapes.update({v.name: v.shape for v in problem.variables})
    if problem.packing is not None:
        shapes.update({v.name: v.shape for v in problem.packing.variables})
    sources: dict[str, str] = {}
    for arg in args:
        for axis, dim in enumerate(shapes.get(arg, ())):
            if isinstance(dim, str) and dims.is_name(dim) and dim not in sources:
                sources[dim] = f"{arg}.shape[{axis - len(shapes[arg])}]"
    for dim, default in problem.dims:
        sources.setdefault(dim, f'DEFAULT_DIMS["{dim}"]')
    return sources


def _reference(problem: Problem, args: tuple[str, ...]) -> str:
    names = {p.name for p in problem.parameters} | {v.name for v in problem.variables}
    if problem.packing is not None:
        names |= {v.name for v in problem.packing.variables}
    return next(a for a in args if a in names)


def _wrapped_dict(prefix: str, value: dict) -> str:
    """A dict literal, one entry a line when ``prefix`` + the literal would pass 99 columns
    (as ``ruff format`` lays it out)."""
    text = literal(value)
    if len(prefix) + len(text) <= 99:
        return text
    return "{\n" + "".join(f"    {literal(k)}: {literal(v)},\n" for k, v in value.items()) + "}"


RuntimeMode = Literal["inline", "shared"]

#: The problem record's fields every rule shares (foldgen.runtime.contract.Problem).
COMMON_RECORD = (
    ("parameters", "PARAMETERS"),
    ("grad_parameters", "GRAD_PARAMETERS"),
    ("defaults", "DEFAULTS"),
    ("dims", "DEFAULT_DIMS"),
    ("variable", "VARIABLE"),
    ("variables", "VARIABLES"),
)


#: The layer's settings every rule shares, after the rule's own.
def _common_settings(problem: Problem) -> list[tuple[str, str]]:
    return [
        ("backward_method", string_literal(problem.backward.method)),
        ("backward_max_iter", str(problem.backward.max_iter)),
        ("backward_tol", number(problem.backward.tol)),
        ("backward_fallback", "True"),
        ("on_nonconvergence", '"warn"'),
        ("fold_unconverged", "False"),
        ("verbose", "False"),
    ]


def _record_value(name: str, value: Value) -> str:
    """A record entry's value; a tuple too long for its ``    name=value,`` line is laid out
    one element a line, as ``ruff format`` would."""
    text = _value(value)
    if len(f"    {name}={text},") <= 99 or not isinstance(value, tuple):
        return text
    return "(\n" + "".join(f"        {_value(v)},\n" for v in value) + "    )"


def _value(value: Value) -> str:
    """A record value as source: a name as itself, tuples element-wise, else a literal."""
    if isinstance(value, Ref):
        return value.name
    if isinstance(value, tuple):
        inner = ", ".join(_value(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return literal(value)


def render(problem: Problem, plan: Plan, spec_file: str, runtime: RuntimeMode = "inline") -> str:
    """The generated module's source text.

    Spec text reaches it only through `foldgen.source`: the doc and the paths escaped for
    the docstring or comment they land in, names checked as identifiers, numbers finite.
    The spec's path is printed on the third line, never the first two, where Python would
    read a ``coding:`` declaration in it (a file named ``coding: utf-7`` would turn the
    doc's ``+ACI-`` into quotes).

    The module's own code (the layer class, the tables, the derived functions, the problem
    record) comes from the template; the runtime definitions it reaches follow it, copied
    (``inline``) or imported from the directory's ``_foldgen_runtime.py`` (``shared``).
    """
    for name in (problem.class_name, *(p.name for p in problem.parameters)):
        identifier(name)
    derived = []
    for fn in plan.functions:
        derived.append(
            print_function(
                fn.name,
                list(fn.args),
                list(fn.outputs),
                ref=_reference(problem, fn.args),
                dims=_dim_sources(problem, fn.args),
                doc=fn.doc,
            ).rstrip("\n")
        )
    derived += _packing_functions(problem)
    emission = plan.emission(problem)
    var = plan.var
    record = [("rule", string_literal(plan.rule)), *COMMON_RECORD]
    packed = problem.packing is not None
    record += [
        ("pack", "_pack" if packed else "None"),
        ("unpack", "_unpack" if packed else "None"),
        ("pack_warm_start", "_packed_warm_start" if packed else "None"),
    ]
    record += [(name, _record_value(name, v)) for name, v in emission.record]
    checks = {s.name: s.check.name for s in emission.settings}
    record.append(
        ("setting_checks", "{" + ", ".join(f'"{k}": {v}' for k, v in checks.items()) + "}")
    )
    settings = [
        ("max_iter", str(problem.solver.max_iter)),
        ("tol", number(problem.solver.tol)),
        *((s.name, _value(s.default)) for s in emission.settings),
        *_common_settings(problem),
    ]
    context = {
        "version": __version__,
        "spec_file": comment(spec_file),
        "rebuild": comment(f"foldgen build {shlex.quote(spec_file)}"),
        "spec_sha256": problem.origin.sha256,
        "docstring": docstring(module_docstring(problem, plan)),
        "class_name": identifier(problem.class_name),
        "class_doc": docstring(class_docstring(problem, plan)),
        "problem_line": string_literal(problem_line(problem, plan)),
        "parameters": problem.parameters,
        "call_order": ", ".join(p.name for p in problem.parameters),
        "settings": settings,
        "parameters_literal": _wrapped_dict(
            "PARAMETERS = ", {p.name: p.shape for p in problem.parameters}
        ),
        "grad_parameters_literal": literal(tuple(p.name for p in problem.grad_parameters)),
        "defaults_literal": literal(
            {p.name: p.default for p in problem.parameters if p.default is not None}
        ),
        "dims_literal": literal(dict(problem.dims)),
        "variable_literal": literal((var.name, var.shape)),
        "variables_literal": _variables_literal(problem),
        "warm_starts": [v.name for v in _spec_variables(problem)],
        "forward_summary": fill(
            f"Solve for each batch element; returns {_returns_text(problem)}.", "        ", 92
        ).lstrip(),
        "packed": packed,
        "zero_size": "a variable of size 0" if packed else f"{var.shape[0]} = 0",
        "var": {"name": var.name, "dims": var.shape[0]},
        "derived": derived,
        "record": record,
    }
    template = _environment().get_template("module.py.j2")
    # The names the module's own code uses: the skeleton's by ast; the derived functions'
    # (printed by foldgen, their size growing with the spec) by a scan of their identifiers.
    skeleton = template.render(**{**context, "derived": []}, imports="import torch", runtime="")
    used = free_names(skeleton) | identifiers(derived)
    own_modules = (used & set(STDLIB_IMPORTS)) | {"types"}  # types: the problem record
    if runtime == "inline":
        reached = closure(used)
        lines = imports_for(own_modules | modules_used(reached))
        return template.render(**context, imports="\n".join(lines), runtime=block(reached))
    names = sorted(used & set(runtime_definitions()))
    lines = [*imports_for(own_modules), "", *_shared_import(names)]
    return template.render(**context, imports="\n".join(lines), runtime="")


def _spec_variables(problem: Problem) -> tuple[Variable, ...]:
    return problem.packing.variables if problem.packing is not None else problem.variables


def _variables_literal(problem: Problem) -> str:
    if problem.packing is None:
        return "None"
    return literal(tuple((v.name, v.shape) for v in problem.packing.variables))


def _shape_words(shape: tuple) -> str:
    inner = ", ".join(["...", *map(str, shape)])
    return f"({inner})"


def _returns_text(problem: Problem) -> str:
    """What the forward returns, for its docstring: one tensor or a tuple in spec order."""
    variables = _spec_variables(problem)
    parts = [f"{v.name} of shape {_shape_words(v.shape)}" for v in variables]
    if len(parts) == 1:
        return parts[0]
    return "the tuple (" + ", ".join(v.name for v in variables) + "): " + "; ".join(parts)


def _packing_functions(problem: Problem) -> list[str]:
    """``_unpack`` (the packed state to the spec's variables) and ``_pack`` (back), printed
    from the packing's views: the layer's outputs and warm starts go through them."""
    packing = problem.packing
    if packing is None:
        return []
    pnames = [p.name for p in problem.parameters]
    z = packing.packed.name
    leaves = [E.Leaf(v.name, "aux", v.shape) for v in packing.variables]
    names = [v.name for v in packing.variables]
    unpack = print_function(
        "_unpack",
        [z, *pnames],
        list(packing.views),
        ref=z,
        dims=_dim_sources(problem, (z, *pnames)),
        doc="The spec's variables, in order, read from the packed state.",
    )
    pack = print_function(
        "_pack",
        [*names, *pnames],
        [E.concat([E.vec(leaf) for leaf in leaves])],
        ref=names[0],
        dims=_dim_sources(problem, (*names, *pnames)),
        doc="The packed state holding the given variables.",
    )
    return [unpack.rstrip("\n"), pack.rstrip("\n")]


def _shared_import(names: list[str]) -> list[str]:
    """Import the runtime from the directory's _foldgen_runtime.py: relative inside a
    package, else from sys.path (the directory itself, when a script runs there)."""
    listed = "".join(f"        {n},\n" for n in names)
    body = f"    from {{0}}{SHARED_RUNTIME} import (\n{listed}    )"
    return [
        "try:",
        body.format("."),
        "except ImportError:",
        body.format(""),
    ]


def fill(text: str, indent: str = "", width: int = 92) -> str:
    """Wrap long docstring lines, keeping each line's own indentation."""
    out = []
    for line in text.split("\n"):
        lead = indent + line[: len(line) - len(line.lstrip())]
        wrapped = textwrap.wrap(
            line.strip(), width=width - len(lead), break_long_words=False, break_on_hyphens=False
        )
        out += [lead + w for w in wrapped] or [""]
    return "\n".join(out)


def module_docstring(problem: Problem, plan: Plan) -> str:
    """Title, the rule's own account of the problem and its derivatives, wrapped."""
    lines = [f"{problem.class_name}: {problem.doc or problem.name}", "", *plan.describe(problem)]
    if problem.packing is not None:
        names = ", ".join(v.name for v in problem.packing.variables)
        lines += [
            "",
            f"{problem.packing.packed.name} = ({names}): the variables flattened row-major and "
            "joined in this order, the one state the rule iterates on.",
        ]
    return "\n".join(fill(line) if len(line) > 92 else line for line in lines)


#: The longest problem line ``repr(layer)`` shows; a longer one ends in an ellipsis.
PROBLEM_LINE_CHARS = 160


def problem_line(problem: Problem, plan: Plan) -> str:
    """The problem in one line for ``repr(layer)``: the docstring's minimize / subject to
    lines joined, and the rule."""
    lines = plan.describe(problem)
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("minimize"))
    end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
    parts = [" ".join(line.split()) for line in lines[start:end]]
    text = "".join(
        ("" if i == 0 else " " if part.startswith("subject to") else ", ") + part
        for i, part in enumerate(parts)
    )
    if len(text) > PROBLEM_LINE_CHARS:
        text = text[: PROBLEM_LINE_CHARS - 1].rstrip() + "…"
    return f"{text} [{problem.solver.rule}]"


def class_docstring(problem: Problem, plan: Plan) -> str:
    call = ", ".join(p.name for p in problem.parameters)
    shapes = "; ".join(
        f"{p.name} (..., {', '.join(map(str, p.shape))})" if p.shape else f"{p.name} (...)"
        for p in problem.parameters
    )
    head = fill(problem.doc or problem.name, width=88).replace("\n", "\n    ")
    usage = fill(f"Call: layer({call}) -> {plan.var.name}; shapes {shapes}.", "    ", 92)
    return (
        f"{head}\n\n"
        f"{usage}\n"
        "    Leading batch dimensions broadcast. Inputs given to the constructor are bound\n"
        "    (buffers, or parameters if nn.Parameter) and left out of the call. After a call,\n"
        "    ``info`` (SolveInfo) and, after backward, ``backward_info`` describe each element.\n"
        "    "
    )
