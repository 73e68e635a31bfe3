"""Emission: print the derived expressions and render the module templates.

Decisions are made in Python (here and in the rule's plan); the Jinja templates only lay
text out. Runtime helpers (linear solvers, projections) live as plain, tested Python in
``templates/runtime/`` and are copied function by function — only those a module needs.
The output is deterministic: no timestamps, sorted where order is not given by the spec.
"""

from __future__ import annotations

import ast
import functools
import re
import shlex
import textwrap
from pathlib import Path

import jinja2

from foldgen._version import __version__
from foldgen.ir import Problem
from foldgen.printer import print_function
from foldgen.rules.base import Plan
from foldgen.source import comment, docstring, identifier, literal, number

RUNTIME_FILES = ("linsolve.py", "projections.py", "prox.py", "qp.py")


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


@functools.cache
def _runtime_functions() -> dict[str, tuple[str, tuple[str, ...], int]]:
    """name → (source, dependencies, order) for every top-level function of the runtime."""
    out: dict[str, tuple[str, tuple[str, ...], int]] = {}
    for filename in RUNTIME_FILES:
        text = (templates_dir() / "runtime" / filename).read_text(encoding="utf-8")
        for node in ast.parse(text).body:
            if isinstance(node, ast.FunctionDef):
                source = ast.get_source_segment(text, node) or ""
                needs = re.search(r"^\s*# needs: (.*)$", source, re.MULTILINE)
                deps = tuple(d.strip() for d in needs.group(1).split(",")) if needs else ()
                out[node.name] = (source, deps, len(out))
    return out


def runtime_source(names: tuple[str, ...]) -> str:
    """The named runtime functions and what they need, in their files' order."""
    table = _runtime_functions()
    wanted: set[str] = set()
    stack = list(names)
    while stack:
        name = stack.pop()
        if name not in wanted:
            wanted.add(name)
            stack.extend(table[name][1])
    ordered = sorted(wanted, key=lambda n: table[n][2])
    return "\n\n\n".join(table[n][0] for n in ordered) + "\n"


def _dim_sources(problem: Problem, args: tuple[str, ...]) -> dict[str, str]:
    """dim → expression of the arguments' shapes, falling back to the spec's default."""
    shapes = {p.name: p.shape for p in problem.parameters}
    shapes.update({v.name: v.shape for v in problem.variables})
    sources: dict[str, str] = {}
    for arg in args:
        for axis, dim in enumerate(shapes.get(arg, ())):
            if isinstance(dim, str) and dim not in sources:
                sources[dim] = f"{arg}.shape[{axis - len(shapes[arg])}]"
    for dim, default in problem.dims:
        sources.setdefault(dim, f"DEFAULT_DIMS[{dim!r}]")
    return sources


def _reference(problem: Problem, args: tuple[str, ...]) -> str:
    names = {p.name for p in problem.parameters} | {v.name for v in problem.variables}
    return next(a for a in args if a in names)


def _wrapped_dict(prefix: str, value: dict) -> str:
    """A dict literal, one entry a line when ``prefix`` + the literal would pass 99 columns
    (as ``ruff format`` lays it out)."""
    text = literal(value)
    if len(prefix) + len(text) <= 99:
        return text
    return "{\n" + "".join(f"    {literal(k)}: {literal(v)},\n" for k, v in value.items()) + "}"


def render(problem: Problem, plan: Plan, spec_file: str) -> str:
    """The generated module's source text.

    Spec text reaches it only through `foldgen.source`: the doc and the paths escaped for
    the docstring or comment they land in, names checked as identifiers, numbers finite.
    The spec's path is printed on the third line, never the first two, where Python would
    read a ``coding:`` declaration in it (a file named ``coding: utf-7`` would turn the
    doc's ``+ACI-`` into quotes).
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
    var = plan.var
    context = {
        "version": __version__,
        "spec_file": comment(spec_file),
        "rebuild": comment(f"foldgen build {shlex.quote(spec_file)}"),
        "spec_sha256": problem.loaded.sha256,
        "docstring": docstring(module_docstring(problem, plan)),
        "class_name": identifier(problem.class_name),
        "class_doc": docstring(class_docstring(problem, plan)),
        "parameters": problem.parameters,
        "parameters_literal": _wrapped_dict(
            "PARAMETERS = ", {p.name: p.shape for p in problem.parameters}
        ),
        "grad_parameters_literal": literal(tuple(p.name for p in problem.grad_parameters)),
        "defaults_literal": literal(
            {p.name: p.default for p in problem.parameters if p.default is not None}
        ),
        "dims_literal": literal(dict(problem.dims)),
        "variable_literal": literal((var.name, var.shape)),
        "var": {"name": var.name, "dims": var.shape[0]},
        "derived": derived,
        "runtime": runtime_source(plan.runtime_names()).rstrip("\n"),
        "rule": plan.rule,
        "solver": {"max_iter": problem.solver.max_iter, "tol": number(problem.solver.tol)},
        "backward": {
            "method": problem.backward.method,
            "max_iter": problem.backward.max_iter,
            "tol": number(problem.backward.tol),
        },
        **plan.context(problem),
    }
    return _environment().get_template("module.py.j2").render(**context)


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
    return "\n".join(fill(line) if len(line) > 92 else line for line in lines)


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
