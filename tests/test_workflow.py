"""The spec author's workflow: ``foldgen show``, ``foldgen schema``, ``foldgen build
--verify`` and the pre-commit hooks."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from spec_examples import BOX_QP, ENTROPIC_KNAPSACK, NONCONVEX_QP, PORTFOLIO, TV_DENOISE

import foldgen.api
from foldgen import verify as verify_module
from foldgen.cli import main
from foldgen.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))


def run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


# ------------------------------------------------------------------------------------ show


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_show_prints_the_derived_math_and_writes_nothing(spec, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, out, err = run(capsys, "show", str(spec))
    assert status == 0 and err == ""
    assert "minimize" in out and "Backward method:" in out
    assert "Φᵀ" in out or "(I − Φᵀ)" in out
    source = (ROOT / "generated" / f"{spec.stem}.py").read_text(encoding="utf-8")
    docstring = source.split('"""', 2)[1].strip()
    assert out.startswith(docstring.splitlines()[0])  # the module's own account
    assert list(tmp_path.iterdir()) == []


def test_show_formats(capsys):
    status, md, _ = run(capsys, "show", "--format", "markdown", str(ROOT / "specs/portfolio.yaml"))
    assert status == 0
    assert md.startswith("# Portfolio: ") and "```text\nminimize    f(x) = −mu·x" in md
    assert md.count("```") % 2 == 0
    status, tex, _ = run(capsys, "show", "--format", "latex", str(ROOT / "specs/box_qp.yaml"))
    assert status == 0
    assert tex.startswith(r"\section*{BoxQp: ")
    assert r"&\text{subject to}  0 \le  x \le  1" in tex
    assert tex.count(r"\begin{align*}") == tex.count(r"\end{align*}") >= 2
    math = [part.split(r"\end{align*}")[0] for part in tex.split(r"\begin{align*}")[1:]]
    assert not any(ch in block for block in math for ch in "≤∇ᵀΦΨ·−")  # all mapped


def test_show_of_a_bad_spec_is_one_located_message(tmp_path, capsys):
    bad = tmp_path / "box_qp.yaml"
    bad.write_text(BOX_QP.replace("+ c @ x", "+ cc @ x"), encoding="utf-8")
    status, out, err = run(capsys, "show", str(bad))
    assert status == 2 and out == ""
    assert err.startswith(f"error: {bad}:10:11: minimize: unknown name 'cc'")
    assert len(err.splitlines()) == 1


# ---------------------------------------------------------------------------------- schema


@pytest.fixture(scope="module")
def schema():
    status = main(["schema"])
    assert status == 0
    from foldgen.spec import spec_schema

    return spec_schema()


def test_schema_is_valid_json_schema_with_descriptions(schema, capsys):
    main(["schema"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(schema))
    jsonschema.Draft202012Validator.check_schema(schema)
    props = schema["properties"]
    assert props["solver"]["description"] and props["constraints"]["description"]
    solver = schema["$defs"]["SolverSpec"]["properties"]
    assert solver["rule"]["enum"] == ["pgd", "admm", "sqp"]
    assert all(field.get("description") for field in solver.values())
    assert '"gt"' not in json.dumps(schema)  # JSON Schema's own bound keywords only


@pytest.mark.parametrize(
    "text",
    [*(p.read_text(encoding="utf-8") for p in SPECS),
     BOX_QP, ENTROPIC_KNAPSACK, PORTFOLIO, TV_DENOISE, NONCONVEX_QP],
)  # fmt: skip
def test_every_shipped_spec_and_every_documented_example_validates(schema, text):
    jsonschema.validate(yaml.safe_load(text), schema)


#: Schema errors: wrong keys, types, enums and bounds. The build rejects each too (exit 2).
SCHEMA_ERRORS = [
    ("unknown-top-level-key", "backward:", "solvr: {rule: pgd}\nbackward:"),
    ("unknown-rule", "rule: pgd,", "rule: newton,"),
    ("max-iter-zero", "max_iter: 2000", "max_iter: 0"),
    ("max-iter-text", "max_iter: 2000", "max_iter: many"),
    ("negative-tol", "tol: 1.0e-9}", "tol: -1.0e-9}"),
    ("unknown-property", "properties: [symmetric, psd]", "properties: [symmetric, convex]"),
    ("grad-not-bool", "c: {shape: [n]}", "c: {shape: [n], grad: maybe}"),
    ("unknown-backward-method", "method: gmres", "method: newton"),
    ("version-2", "foldgen: 1", "foldgen: 2"),
    ("missing-solver", "solver: {rule: pgd, step_size: auto, max_iter: 2000, tol: 1.0e-9}\n", ""),
    ("unknown-parameter-key", "c: {shape: [n]}", "c: {shape: [n], shap: [n]}"),
]  # fmt: skip


@pytest.mark.parametrize("case", SCHEMA_ERRORS, ids=lambda c: c[0])
def test_schema_errors_fail_the_schema_and_the_build(schema, case, tmp_path, capsys):
    _, old, new = case
    assert BOX_QP.count(old) == 1
    text = BOX_QP.replace(old, new)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(yaml.safe_load(text), schema)
    spec = tmp_path / "box_qp.yaml"
    spec.write_text(text, encoding="utf-8")
    status, _, err = run(capsys, "build", str(spec), "-o", str(tmp_path / "out"))
    assert status == 2 and err.startswith(f"error: {spec}:") and len(err.splitlines()) == 1


def test_the_golden_tables_semantic_errors_pass_the_schema(schema):
    """The schema checks structure; expressions, names and shapes are the build's (the
    golden table's bad specs that are not YAML errors are all of that kind)."""
    from test_cli import BAD

    semantic = [b for b in BAD if not b.id.startswith("yaml-")]
    assert len(semantic) >= 15
    for bad in semantic:
        jsonschema.validate(yaml.safe_load(bad.text), schema)


# ---------------------------------------------------------------------------------- verify


def test_build_verify_checks_then_writes(tmp_path, capsys):
    out = tmp_path / "out"
    specs = [str(ROOT / "specs" / f"{n}.yaml") for n in ("box_qp", "portfolio", "tv_denoise")]
    status, stdout, err = run(capsys, "build", "--verify", *specs, "-o", str(out))
    assert status == 0, err
    assert stdout.count("checks passed") == 3 and "FAILED" not in stdout
    assert "∇²ₓₓL u against autograd of ∇ₓL" in stdout  # SQP's checks
    assert "the block data's VJP against autograd of its data" in stdout  # ADMM's
    assert "∂⟨w, x*⟩/∂c against central differences" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["box_qp.py", "portfolio.py", "tv_denoise.py"]


def _checks(name, break_field=None, factor=1.1):
    spec = load_spec(ROOT / "specs" / f"{name}.yaml").spec
    module = foldgen.api.compile_module(ROOT / "specs" / f"{name}.yaml")
    if break_field is not None:
        right = getattr(module.PROBLEM, break_field)

        def wrong(*args):
            out = right(*args)
            if isinstance(out, (tuple, list)):
                return type(out)(None if o is None else o * factor for o in out)
            return out * factor

        setattr(module.PROBLEM, break_field, wrong)
    props = {k: set(v.properties) for k, v in spec.parameters.items()}
    return {c.name: c for c in verify_module.verify(module, props)}


@pytest.mark.parametrize(
    "name, field, check",
    [
        ("box_qp", "hvp", "∇²f u against autograd of ∇f"),
        ("box_qp", "gradient", "∇f against autograd of f"),
        ("ball_least_squares", "set_data_vjp", "the set data's VJP against autograd of its data"),
        ("lasso", "gradient_vjp", "(∂∇f/∂θ)ᵀu against autograd of ∇f"),
        ("portfolio", "kkt_vjp", "the KKT VJP against autograd of (∇ₓL, g, h)"),
        ("portfolio", "inequalities_vjp", "J_gᵀw against autograd of the constraints"),
        ("portfolio", "lagrangian_hvp", "∇²ₓₓL u against autograd of ∇ₓL"),
    ],
)
def test_verify_catches_a_wrong_derivative(name, field, check):
    assert _checks(name)[check].ok
    broken = _checks(name, field)[check]
    assert not broken.ok and broken.error > 1e-3


def test_verify_catches_a_wrong_folded_gradient():
    """A pullback 10% off: every VJP still matches, finite differences do not."""
    checks = _checks("box_qp", "pullback")
    assert checks["∇f against autograd of f"].ok
    fd = checks["∂⟨w, x*⟩/∂c against central differences"]
    assert not fd.ok and fd.error > 1e-2


def test_build_verify_fails_with_exit_3_and_writes_nothing(tmp_path, capsys, monkeypatch):
    real = foldgen.api.module_from_source

    def broken(built):
        module = real(built)
        right = module.PROBLEM.hvp
        module.PROBLEM.hvp = lambda *args: 2 * right(*args)
        return module

    monkeypatch.setattr(foldgen.api, "module_from_source", broken)
    out = tmp_path / "out"
    status, stdout, err = run(capsys, "build", "--verify", str(ROOT / "specs/box_qp.yaml"),
                              "-o", str(out))  # fmt: skip
    assert status == 3 and "FAILED" in stdout
    assert "derivation check(s) exceeded their tolerance" in err and "nothing written" in err
    assert not out.exists()


# ------------------------------------------------------------------------------ pre-commit


def test_pre_commit_hooks_run_foldgen_check(capsys, tmp_path):
    hooks = {h["id"]: h for h in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}
    check = hooks["foldgen-check"]
    assert check["entry"] == "foldgen check --partial" and check["language"] == "python"
    assert check["files"] == r"\.ya?ml$" and check["pass_filenames"] is True
    assert hooks["foldgen-build"]["entry"] == "foldgen build"
    # what pre-commit runs on a commit that changes one spec: its module is up to date, and
    # the other modules of generated/ are not reported as orphans
    entry = check["entry"].split()[1:]
    one = str(ROOT / "specs" / "box_qp.yaml")
    status, out, _ = run(capsys, *entry, "-o", str(ROOT / "generated"), one)
    assert status == 0 and "1 generated file(s) up to date" in out
    status, _, err = run(capsys, "check", "-o", str(ROOT / "generated"), one)
    assert status == 1 and "no given spec builds it" in err  # without --partial
    # a changed spec whose module was not rebuilt fails the hook
    spec = tmp_path / "specs" / "box_qp.yaml"
    spec.parent.mkdir()
    spec.write_text(BOX_QP, encoding="utf-8")
    out_dir = tmp_path / "generated"
    assert main(["build", str(spec), "-o", str(out_dir)]) == 0
    spec.write_text(BOX_QP.replace("max_iter: 2000", "max_iter: 3000"), encoding="utf-8")
    capsys.readouterr()
    status, _, err = run(capsys, *entry, "-o", str(out_dir), str(spec))
    assert status == 1 and "differs from its spec" in err
