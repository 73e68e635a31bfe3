"""Reserved names stay in step with what generated modules define, and each is refused with
a located message; the build limits each give one located message and can be raised."""

from __future__ import annotations

import ast
import contextlib
import io
from pathlib import Path

import pytest
import torch
from spec_examples import BOX_QP

from foldgen import naming
from foldgen.cli import main
from foldgen.errors import SpecError
from foldgen.limits import DEFAULT_LIMITS, Limits, parse_limit
from foldgen.spec import load_spec_text

ROOT = Path(__file__).resolve().parents[1]
GENERATED = sorted((ROOT / "generated").glob("*.py"))


def names_a_module_defines(path: Path) -> tuple[set[str], set[str], set[str]]:
    """(public top-level names, constructor keywords, attributes set or defined on the layer)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top: set[str] = set()
    settings: set[str] = set()
    attributes: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            top.add(node.name)
        elif isinstance(node, ast.Assign):
            top.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            top.update((a.asname or a.name).split(".")[0] for a in node.names)
        if isinstance(node, ast.ClassDef) and any("Module" in ast.unparse(b) for b in node.bases):
            for sub in ast.walk(node):
                if isinstance(sub, ast.FunctionDef):
                    attributes.add(sub.name)
                    if sub.name == "__init__":
                        settings.update(a.arg for a in sub.args.kwonlyargs)
                if isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store):
                    attributes.add(sub.attr)
    # Attributes the runtime sets on a layer from outside its class (``layer.x = ...``).
    for sub in ast.walk(tree):
        if (
            isinstance(sub, ast.Attribute)
            and isinstance(sub.ctx, ast.Store)
            and isinstance(sub.value, ast.Name)
            and sub.value.id == "layer"
        ):
            attributes.add(sub.attr)
    return {n for n in top if not n.startswith("_")}, settings, attributes


@pytest.mark.parametrize("path", GENERATED, ids=[p.stem for p in GENERATED])
def test_every_name_a_module_defines_is_reserved(path):
    top, settings, attributes = names_a_module_defines(path)
    spec_names = set(
        load_spec_text((ROOT / "specs" / f"{path.stem}.yaml").read_text(), "s").spec.parameters
    )
    class_names = {n for n in top if n[0].isupper() and n not in naming.MODULE_GLOBALS}
    assert len(class_names) == 1  # the layer itself
    assert top - class_names <= naming.MODULE_GLOBALS
    assert settings - spec_names <= naming.LAYER_SETTINGS
    public = {a for a in attributes if not a.startswith("_")} - spec_names - settings
    assert public <= naming.LAYER_ATTRIBUTES


def test_layer_attributes_cover_torch_module():
    module = torch.nn.Module()
    public = {n for n in set(dir(module)) | set(vars(module)) if not n.startswith("_")}
    assert public <= naming.LAYER_ATTRIBUTES, sorted(public - naming.LAYER_ATTRIBUTES)


def replace_param(name: str) -> str:
    return BOX_QP.replace("  c: {shape: [n]}", f"  {name}: {{shape: [n]}}").replace(
        "+ c @ x", f"+ {name} @ x"
    )


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("tol", "is a setting of the layer's constructor"),
        ("adapt_rho", "is a setting of the layer's constructor"),
        ("training", "is an attribute of the layer or of torch.nn.Module"),
        ("state_dict", "is an attribute of the layer or of torch.nn.Module"),
        ("backward_info", "is an attribute of the layer"),
        ("PARAMETERS", "is a name of the generated module"),
        ("warnings", "is a name of the generated module"),
        ("x_init", "is the layer's warm-start argument for variable 'x'"),
    ],
)
def test_reserved_parameter_names_are_refused_where_written(name, fragment):
    with pytest.raises(SpecError) as caught:
        load_spec_text(replace_param(name), "box.yaml")
    err = caught.value
    assert fragment in err.message and f"such as '{name}_'" in err.message
    assert (err.key, err.line, err.col) == (f"parameters.{name}", 7, 3)


@pytest.mark.parametrize("cls", ["SolveInfo", "PARAMETERS", "ConvergenceWarning", "Q"])
def test_a_class_name_may_not_collide_with_the_module(cls):
    with pytest.raises(SpecError) as caught:
        load_spec_text(BOX_QP.replace("name: box_qp", f"name: box_qp\nclass: {cls}"), "b.yaml")
    assert caught.value.key == "class" and "class name" in caught.value.message


def test_look_alike_letters_are_refused_not_folded():
    """Python folds 'ｃ' (full-width) into 'c' in identifiers; a spec may not rely on that."""
    with pytest.raises(SpecError) as caught:
        load_spec_text(BOX_QP.replace("+ c @ x", "+ \uff43 @ x"), "b.yaml")
    assert caught.value.key == "minimize" and "U+FF43" in caught.value.message
    with pytest.raises(SpecError) as caught:
        load_spec_text(replace_param("c\u00e9"), "b.yaml")
    assert caught.value.key == "parameters.cé" and "ASCII" in caught.value.message


# ---------------------------------------------------------------------------------------------
# Limits


def alias_bomb(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n" + BOX_QP


LIMIT_CASES = [
    ("spec_bytes", BOX_QP + "#" * 2_000_000 + "\n", None),
    ("yaml_depth", BOX_QP + "extra: " + "[" * 40 + "]" * 40 + "\n", "extra" + "[0]" * 31),
    ("yaml_nodes", alias_bomb(4), "a4[0][6][8][8][8]"),
    ("name_chars", BOX_QP.replace("name: box_qp", "name: " + "a" * 65), "name"),
    ("dim_size", BOX_QP.replace("{n: 50}", "{n: 10000000000}"), "dims.n"),
    (
        "number_digits",
        BOX_QP.replace("max_iter: 2000", "max_iter: " + "9" * 101),
        "solver.max_iter",
    ),
    ("text_chars", BOX_QP.replace("doc: Box", "doc: " + "B" * 10_001), "doc"),
]


@pytest.mark.parametrize("name, text, key", LIMIT_CASES, ids=[c[0] for c in LIMIT_CASES])
def test_each_limit_is_one_located_message_that_says_how_to_raise_it(name, text, key):
    with pytest.raises(SpecError) as caught:
        load_spec_text(text, "b.yaml")
    err = caught.value
    assert f"--limit {name}=VALUE (now {getattr(DEFAULT_LIMITS, name)})" in err.message
    assert err.key == key
    assert (err.line is None) == (name == "spec_bytes")
    # ... and raising the limit lets the same spec through that check.
    raised = parse_limit(f"{name}={getattr(DEFAULT_LIMITS, name) * 10}")
    try:
        load_spec_text(text, "b.yaml", raised)
    except SpecError as other:
        assert f"--limit {name}=" not in other.message


def test_an_alias_bomb_stops_early():
    """Nine levels would expand to 10⁹ values; the walk stops after yaml_nodes of them."""
    import time

    start = time.perf_counter()
    with pytest.raises(SpecError, match="yaml_nodes"):
        load_spec_text(alias_bomb(9), "b.yaml")
    assert time.perf_counter() - start < 5.0  # generous: it is milliseconds


def test_limit_flag(tmp_path):
    spec = tmp_path / "box.yaml"
    spec.write_text(BOX_QP.replace("{n: 50}", "{n: 10000000000}"), encoding="utf-8")
    out = tmp_path / "out"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["build", str(spec), "-o", str(out)]) == 2
    assert "dims.n: size 10000000000 is larger than 1000000000" in err.getvalue()
    assert not out.exists()
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["build", str(spec), "-o", str(out), "--limit", "dim_size=1e11"]) == 0
    assert (out / "box_qp.py").exists()


@pytest.mark.parametrize(
    "text", ["nope=1", "dim_size", "dim_size=-1", "dim_size=x", "build_seconds=inf"]
)
def test_bad_limit_flags_are_usage_errors(text):
    with pytest.raises(ValueError):
        parse_limit(text)
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit) as caught:
        main(["build", "x.yaml", "--limit", text])
    assert caught.value.code == 2


def test_limits_are_a_plain_record():
    assert Limits() == DEFAULT_LIMITS
    assert parse_limit("build_seconds=2.5").build_seconds == 2.5
