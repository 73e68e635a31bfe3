"""Spec loading: the examples of SPEC.md load as written, and bad specs give one located message."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from spec_examples import BOX_QP, ENTROPIC_KNAPSACK, NONCONVEX_QP, PORTFOLIO, TV_DENOISE

from foldgen import naming
from foldgen.errors import SpecError
from foldgen.spec import LoadedSpec, Spec, load_spec, load_spec_text

FILE = "specs/box_qp.yaml"


def load(text: str) -> LoadedSpec:
    return load_spec_text(text, FILE)


def edit(old: str, new: str) -> str:
    """BOX_QP with one change; `old` must occur exactly once, so a case cannot silently miss."""
    assert BOX_QP.count(old) == 1, old
    return BOX_QP.replace(old, new)


# ---------------------------------------------------------------------------------------------
# Bad specs: each is BOX_QP with one change, and the message, key and position it must produce.
#
#  1 foldgen: 1
#  2 name: box_qp
#  3 doc: Box-constrained convex QP, differentiable in the linear term.
#  4 dims: {n: 50}
#  5 parameters:
#  6   Q: {shape: [n, n], grad: false, properties: [symmetric, psd]}
#  7   c: {shape: [n]}
#  8 variables:
#  9   x: {shape: [n]}
# 10 minimize: 0.5 * x @ Q @ x + c @ x
# 11 constraints:
# 12   - 0 <= x <= 1
# 13 solver: {rule: pgd, step_size: auto, max_iter: 2000, tol: 1.0e-9}
# 14 backward: {method: gmres, max_iter: 200, tol: 1.0e-10}
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    id: str
    text: str
    message: str  # a fragment of the message
    key: str | None
    line: int | None
    col: int | None


# fmt: off
BAD_SPECS = [
    Bad("invalid-yaml", edit("c: {shape: [n]}", "c: {shape: [n]"),
        "invalid YAML: expected ',' or '}'", "parameters.c", 8, 1),
    Bad("bad-character", edit("doc: Box", "doc: \x07Box"),
        "invalid YAML: special characters", None, 3, 6),
    Bad("two-documents", BOX_QP + "---\nfoldgen: 1\n",
        "expected a single document", None, 15, 1),
    Bad("not-a-mapping", "- foldgen: 1\n- name: box_qp\n",
        "holds a list", None, 1, 1),
    Bad("empty-file", "# nothing here\n",
        "holds nothing", None, 2, 1),
    Bad("no-parameters", edit(BOX_QP[BOX_QP.index("parameters:") : BOX_QP.index("variables:")], "parameters: {}\n"),
        "declare at least one parameter", "parameters", 5, 13),
    Bad("missing-name", edit("name: box_qp\n", ""),
        "missing key 'name'", None, 1, 1),
    Bad("missing-parameters", edit(BOX_QP[BOX_QP.index("parameters:") : BOX_QP.index("variables:")], ""),
        "missing key 'parameters'", None, 1, 1),
    Bad("missing-variables", edit("variables:\n  x: {shape: [n]}\n", ""),
        "missing key 'variables'", None, 1, 1),
    Bad("missing-solver", edit("solver: {rule: pgd, step_size: auto, max_iter: 2000, tol: 1.0e-9}\n", ""),
        "missing key 'solver'", None, 1, 1),
    Bad("missing-rule", edit("rule: pgd, ", ""),
        "missing key 'rule'", "solver", 13, 9),
    Bad("missing-objective", edit("minimize: 0.5 * x @ Q @ x + c @ x\n", ""),
        "missing key 'minimize' or 'maximize'", None, 1, 1),
    Bad("both-objectives", edit("constraints:", "maximize: c @ x\nconstraints:"),
        "exactly one of 'minimize' and 'maximize'", "maximize", 11, 1),
    Bad("no-variables", edit("variables:\n  x: {shape: [n]}", "variables: {}"),
        "declare at least one variable", "variables", 8, 12),
    Bad("unknown-top-level-key", edit("constraints:", "constraint:"),
        "unknown key 'constraint' (did you mean 'constraints'?)", "constraint", 11, 1),
    Bad("unknown-solver-key", edit("step_size: auto", "stepsize: auto"),
        "unknown key 'stepsize' (did you mean 'step_size'?)", "solver.stepsize", 13, 21),
    Bad("unknown-parameter-key", edit("c: {shape: [n]}", "c: {shape: [n], gard: false}"),
        "unknown key 'gard' (did you mean 'grad'?)", "parameters.c.gard", 7, 19),
    Bad("unknown-rule", edit("rule: pgd", "rule: pdg"),
        "should be 'pgd', 'admm' or 'sqp', got 'pdg' (did you mean 'pgd'?)", "solver.rule", 13, 16),
    Bad("key-of-another-rule", edit("step_size: auto", "rho: 2.0"),
        "'rho' applies to rule 'admm', not 'pgd'", "solver.rho", 13, 21),
    Bad("pgd-key-under-admm", edit("rule: pgd", "rule: admm"),
        "'step_size' applies to rule 'pgd', not 'admm'", "solver.step_size", 13, 22),
    Bad("bad-step-size", edit("step_size: auto", "step_size: fast"),
        "expected a positive number or 'auto', got 'fast'", "solver.step_size", 13, 32),
    Bad("sqp-step-above-one", edit("rule: pgd, step_size: auto", "rule: sqp, step: 1.5"),
        "less than or equal to 1", "solver.step", 13, 27),
    Bad("bad-version", edit("foldgen: 1", "foldgen: 2"),
        "unsupported format version 2", "foldgen", 1, 10),
    Bad("name-not-snake-case", edit("name: box_qp", "name: BoxQP"),
        "'BoxQP' is not snake_case", "name", 2, 7),
    Bad("name-shadows-stdlib", edit("name: box_qp", "name: math"),
        "would shadow the module 'math'", "name", 2, 7),
    Bad("bad-class", edit("name: box_qp", "name: box_qp\nclass: boxy"),
        "'boxy' is not a class name", "class", 3, 8),
    Bad("unknown-dim", edit("c: {shape: [n]}", "c: {shape: [nn]}"),
        "unknown dim 'nn'; declared dims: n (did you mean 'n'?)", "parameters.c.shape[0]", 7, 15),
    Bad("no-dims", edit("dims: {n: 50}\n", ""),
        "unknown dim 'n'; no dims are declared", "parameters.Q.shape[0]", 5, 15),
    Bad("zero-dim", edit("{n: 50}", "{n: 0}"),
        "greater than 0, got 0", "dims.n", 4, 11),
    Bad("shape-not-a-list", edit("c: {shape: [n]}", "c: {shape: n}"),
        "expected a list of dims", "parameters.c.shape", 7, 14),
    Bad("reserved-name", edit("  c: {shape: [n]}", "  sum: {shape: [n]}"),
        "'sum' is a function of the expression language; choose another name, such as 'sum_'",
        "parameters.sum", 7, 3),
    Bad("keyword-name", edit("  c: {shape: [n]}", "  lambda: {shape: [n]}"),
        "'lambda' is a Python keyword", "parameters.lambda", 7, 3),
    Bad("invalid-name", edit("  c: {shape: [n]}", "  2c: {shape: [n]}"),
        "'2c' is not a valid name", "parameters.2c", 7, 3),
    Bad("yaml-boolean-key", edit("  c: {shape: [n]}", "  on: {shape: [n]}"),
        "key 'on' is read by YAML as true, not as a name; quote it", "parameters", 7, 3),
    Bad("name-in-two-maps", edit("  x: {shape: [n]}", "  c: {shape: [n]}"),
        "'c' is already declared in parameters", "variables.c", 9, 3),
    Bad("duplicate-yaml-key", edit("  c: {shape: [n]}", "  c: {shape: [n]}\n  c: {shape: []}"),
        "duplicate key 'c' (first given on line 7)", "parameters.c", 8, 3),
    Bad("default-on-vector", edit("c: {shape: [n]}", "c: {shape: [n], default: 1}"),
        "a default is only allowed for scalar parameters (shape: []), not for shape [n]",
        "parameters.c.default", 7, 28),
    Bad("properties-on-vector", edit("c: {shape: [n]}", "c: {shape: [n], properties: [nonneg, psd]}"),
        "'psd' needs a square matrix shape such as [n, n], not [n]", "parameters.c.properties[1]", 7, 40),
    Bad("unknown-property", edit("[symmetric, psd]", "[symetric, psd]"),
        "got 'symetric' (did you mean 'symmetric'?)", "parameters.Q.properties[0]", 6, 48),
    Bad("three-axis-variable", edit("x: {shape: [n]}", "x: {shape: [n, n, n]}"),
        "at most two axes", "variables.x.shape", 9, 14),
    Bad("negative-max-iter", edit("max_iter: 2000", "max_iter: -5"),
        "should be greater than 0, got -5", "solver.max_iter", 13, 48),
    Bad("bad-backward-method", edit("method: gmres", "method: gmrs"),
        "got 'gmrs' (did you mean 'gmres'?)", "backward.method", 14, 20),
    Bad("not-a-mapping-value", edit("backward: {method: gmres, max_iter: 200, tol: 1.0e-10}", "backward: x"),
        "expected a mapping (key: value entries), got 'x'", "backward", 14, 11),
    Bad("constraint-not-a-string", edit("0 <= x <= 1", "[0, 1]"),
        "expected a string, got a list", "constraints[0]", 12, 5),
    Bad("several-problems", edit("max_iter: 2000", "max_iter: -5").replace("method: gmres", "method: gmrs"),
        "should be greater than 0, got -5 (and 1 more problem)", "solver.max_iter", 13, 48),
]
# fmt: on


@pytest.mark.parametrize("case", BAD_SPECS, ids=[case.id for case in BAD_SPECS])
def test_bad_spec(case: Bad) -> None:
    with pytest.raises(SpecError) as caught:
        load(case.text)
    err = caught.value
    assert case.message in err.message
    assert (err.file, err.key, err.line, err.col) == (FILE, case.key, case.line, case.col)


def test_message_reads_like_a_compiler_diagnostic() -> None:
    with pytest.raises(SpecError) as caught:
        load(edit("step_size: auto", "rho: 2.0"))
    assert (
        str(caught.value)
        == "specs/box_qp.yaml:13:21: solver.rho: 'rho' applies to rule 'admm', not 'pgd'"
    )


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as caught:
        load_spec(missing)
    assert str(caught.value).startswith(f"{missing}: cannot read the spec")


def test_recursive_alias_is_an_error_not_a_crash() -> None:
    with pytest.raises(SpecError, match="an alias refers to a node that contains it"):
        load("a: &loop [*loop]\n")


# ---------------------------------------------------------------------------------------------
# Good specs
# ---------------------------------------------------------------------------------------------


def test_box_qp() -> None:
    spec = load(BOX_QP).spec
    assert (spec.name, spec.class_name, spec.sense) == ("box_qp", "BoxQp", "minimize")
    assert spec.objective == "0.5 * x @ Q @ x + c @ x"
    assert spec.dims == {"n": 50}
    assert list(spec.parameters) == ["Q", "c"]
    assert spec.parameters["Q"].shape == ("n", "n")
    assert spec.parameters["Q"].grad is False
    assert spec.parameters["Q"].properties == ("symmetric", "psd")
    assert spec.parameters["c"].grad is True
    assert spec.variables["x"].shape == ("n",)
    assert spec.variables["x"].init == "zeros"
    assert spec.constraints == ("0 <= x <= 1",)
    solver = spec.solver
    assert (solver.rule, solver.step_size, solver.max_iter, solver.tol) == (
        "pgd",
        "auto",
        2000,
        1e-9,
    )
    assert (solver.rho, solver.step) == (None, None)
    assert (spec.backward.method, spec.backward.max_iter, spec.backward.tol) == (
        "gmres",
        200,
        1e-10,
    )


def test_entropic_knapsack() -> None:
    spec = load(ENTROPIC_KNAPSACK).spec
    assert (spec.class_name, spec.sense) == ("EntropicKnapsack", "maximize")
    assert spec.objective == "c @ x + eps * sum(entr(x))"
    assert list(spec.parameters) == ["c", "k", "eps"]
    assert (spec.parameters["k"].shape, spec.parameters["k"].default) == ((), 5.0)
    assert spec.parameters["eps"].default == 1.0
    assert spec.variables["x"].init == "k / n * ones(n)"
    assert spec.constraints == ("0 <= x <= 1", "sum(x) == k")
    assert spec.backward == Spec.model_fields["backward"].default
    assert (spec.backward.method, spec.backward.max_iter, spec.backward.tol) == (
        "auto",
        500,
        1e-10,
    )


def test_portfolio() -> None:
    spec = load(PORTFOLIO).spec
    assert (spec.class_name, spec.sense, spec.objective) == ("Portfolio", "maximize", "mu @ x")
    assert spec.constraints == ("sum(x) == 1", "x >= 0", "quad_form(x, Sigma) <= gamma")
    assert (spec.solver.rule, spec.solver.step, spec.solver.step_size, spec.solver.rho) == (
        "sqp",
        1.0,
        None,
        None,
    )
    assert spec.backward.method == "direct"


def test_tv_denoise() -> None:
    spec = load(TV_DENOISE).spec
    assert spec.dims == {"n": 100, "m": 99}
    assert spec.parameters["D"].shape == ("m", "n")
    assert spec.constraints == ()
    assert (spec.solver.rule, spec.solver.rho, spec.solver.step_size) == ("admm", 1.0, None)


def test_nonconvex_qp() -> None:
    spec = load(NONCONVEX_QP).spec
    assert spec.class_name == "NonconvexQp"
    assert list(spec.dims) == ["n", "neq", "nineq"]
    assert list(spec.parameters) == ["p", "Q", "A", "b", "G", "h"]
    assert spec.parameters["Q"].properties == ("diagonal", "psd")
    assert spec.objective == "0.5 * y @ Q @ y + p @ sin(y)"
    assert (spec.solver.rule, spec.solver.max_iter, spec.solver.tol) == ("sqp", 200, 1e-8)


def test_rule_settings_get_their_defaults() -> None:
    admm = load(edit("rule: pgd, step_size: auto", "rule: admm")).spec.solver
    sqp = load(edit("rule: pgd, step_size: auto", "rule: sqp")).spec.solver
    pgd = load(edit("step_size: auto, ", "")).spec.solver
    assert (admm.rho, sqp.step, pgd.step_size) == (1.0, 1.0, "auto")


def test_numbers_that_yaml_reads_as_strings() -> None:
    # PyYAML reads 1e-9 (no dot) as a string; a user means a number.
    spec = load(
        edit("tol: 1.0e-9", "tol: 1e-9").replace("step_size: auto", "step_size: 1e-3")
    ).spec
    assert spec.solver.tol == 1e-9 and isinstance(spec.solver.tol, float)
    assert spec.solver.step_size == 1e-3


def test_numeric_init_is_an_expression() -> None:
    assert (
        load(edit("x: {shape: [n]}", "x: {shape: [n], init: 0.5}")).spec.variables["x"].init
        == "0.5"
    )


def test_explicit_class_name() -> None:
    assert load(edit("name: box_qp", "name: box_qp\nclass: BoxQP")).spec.class_name == "BoxQP"


def test_positions_and_located_errors() -> None:
    loaded = load(BOX_QP)
    assert loaded.locate(("constraints", 0)) == (12, 5)
    assert loaded.locate(("parameters", "c")) == (7, 6)
    assert loaded.locate(("parameters", "c"), at_key=True) == (7, 3)
    assert loaded.locate(("solver", "tol")) == (13, 59)
    assert loaded.locate(("parameters", "c", "grad")) == (7, 6)  # not written: its mapping
    err = loaded.error(("constraints", 0), "unknown name 'y'")
    assert str(err) == "specs/box_qp.yaml:12:5: constraints[0]: unknown name 'y'"


def test_file_and_text_give_the_same_spec_and_hash(tmp_path: Path) -> None:
    path = tmp_path / "box_qp.yaml"
    path.write_text(BOX_QP, encoding="utf-8")
    from_file, from_text = load_spec(path), load(BOX_QP)
    assert from_file.spec == from_text.spec
    assert from_file.sha256 == from_text.sha256 == hashlib.sha256(BOX_QP.encode()).hexdigest()
    assert from_file.file == str(path)


# ---------------------------------------------------------------------------------------------
# Errors and naming
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("err", "text"),
    [
        (
            SpecError("unknown name 'y'", file=FILE, line=14, col=5, key="constraints[0]"),
            "specs/box_qp.yaml:14:5: constraints[0]: unknown name 'y'",
        ),
        (SpecError("cannot read", file=FILE), "specs/box_qp.yaml: cannot read"),
        (SpecError("bad", key="solver.rule"), "solver.rule: bad"),
        (SpecError("bad"), "bad"),
    ],
)
def test_spec_error_text(err: SpecError, text: str) -> None:
    assert str(err) == text


def test_naming() -> None:
    assert naming.class_name("box_qp") == "BoxQp"
    assert naming.class_name("nonconvex_qp") == "NonconvexQp"
    assert naming.is_snake_case("qp2_box") and not naming.is_snake_case("Box_qp")
    assert not naming.is_snake_case("box__qp") and not naming.is_snake_case("_box")
    assert naming.key_path(("parameters", "Q", "shape")) == "parameters.Q.shape"
    assert naming.key_path(("constraints", 0)) == "constraints[0]"
    assert naming.key_path(("parameters", "Q", "shape", 1)) == "parameters.Q.shape[1]"
    assert {
        "sum",
        "abs",
        "lambda",
        "softplus",
        "torch",
        "self",
        "ctx",
        "len",
    } <= naming.RESERVED_NAMES
    assert naming.reserved_reason("_x") is not None
    assert naming.reserved_reason("x") is None
