"""Emission by reachability (foldgen.link): a generated module is its problem plus only the
runtime definitions it reaches, and ``--runtime shared`` moves those into one file.

Checked on every shipped spec: no top-level definition of a generated module goes unused;
the runtime block is fenced, versioned and hashed; the problem record holds what the rule's
contract (foldgen.runtime.contract) declares; a shared-runtime build computes exactly what
the inline build computes, and ``check`` notices a stale shared runtime.
"""

from __future__ import annotations

import ast
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cases import CASES, SPECS, as_state

import foldgen
from foldgen.build import build
from foldgen.link import RUNTIME_MODULES, runtime_definitions, runtime_dir
from foldgen.runtime import contract
from foldgen.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
F64 = torch.float64


def _top_level(tree: ast.Module) -> dict[str, ast.stmt]:
    out: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, ast.Assign):
            out.update({t.id: node for t in node.targets if isinstance(t, ast.Name)})
    return out


def _loads(node: ast.AST) -> set[str]:
    return {
        n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
    }


def unused_definitions(source: str) -> list[str]:
    """Top-level definitions no other top-level statement uses (``__all__`` counts as use)."""
    tree = ast.parse(source)
    defs = _top_level(tree)
    exported = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            exported = {e.value for e in node.value.elts}  # type: ignore[attr-defined]
    unused = []
    for name, node in defs.items():
        if name in exported or name == "__all__":
            continue
        used = any(name in _loads(other) for other in tree.body if other is not node)
        if not used:
            unused.append(name)
    return unused


@pytest.fixture(scope="module", params=SPECS)
def built(request):
    return request.param, build(ROOT / "specs" / f"{request.param}.yaml").source


def test_no_unused_top_level_definition(built):
    name, source = built
    assert unused_definitions(source) == [], name


def test_the_checker_finds_an_unused_definition():
    source = "__all__ = ['f']\n\ndef f():\n    return g()\n\ndef g():\n    return 1\n\ndef h():\n    return h()\n"
    assert unused_definitions(source) == ["h"]


def test_the_runtime_block_is_fenced_versioned_and_hashed(built):
    name, source = built
    match = re.search(
        r"# foldgen (\S+) runtime \(sha256 ([0-9a-f]{16})\).*?\n# =+\n\n\n(.*?)\n\n\n# =+\n"
        r"# end of the foldgen runtime",
        source,
        re.S,
    )
    assert match, name
    assert match.group(1) == foldgen.__version__
    assert hashlib.sha256(match.group(3).encode()).hexdigest()[:16] == match.group(2)


def test_the_layer_class_comes_first(built):
    name, source = built
    tree = ast.parse(source)
    first = next(n for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef)))
    assert (
        isinstance(first, ast.ClassDef)
        and first.name == load_spec(ROOT / "specs" / f"{name}.yaml").spec.class_name
    )


def test_templates_hold_only_the_module_skeleton():
    """The solvers are Python in foldgen/runtime/, not Jinja."""
    assert sorted(p.name for p in (ROOT / "templates").glob("*.j2")) == ["module.py.j2"]
    for module in RUNTIME_MODULES:
        assert "{%" not in (runtime_dir() / f"{module}.py").read_text()


def test_runtime_names_are_unique_and_private():
    """Copied into one namespace, every runtime definition keeps its own name; all but the
    records a module exports are private."""
    exported = {"SolveInfo", "BackwardInfo", "ConvergenceWarning", "ConvergenceError"}
    table = runtime_definitions()  # raises on a name defined twice
    public = {n for n in table if not n.startswith("_")}
    assert public <= exported
    from foldgen.runtime import names

    tables = [names.SETS, names.PROXES, names.PGD_SOLVES, names.PGD, names.ADMM, names.SQP]
    tables += names.ADMM_VARIANTS.values()
    for choices in tables:
        assert set(choices.values()) <= set(table), set(choices.values()) - set(table)


def test_record_matches_the_rule_contract():
    for name in SPECS:
        module = foldgen.load_generated(ROOT / "generated" / f"{name}.py", f"emission_{name}")
        rule = load_spec(ROOT / "specs" / f"{name}.yaml").spec.solver.rule
        if rule not in contract.RECORDS:
            continue
        required, *optional = contract.RECORDS[rule]
        fields = set(vars(module.PROBLEM))
        allowed = contract.fields(required).union(*(contract.fields(o) for o in optional))
        assert contract.fields(required) <= fields, (name, contract.fields(required) - fields)
        assert fields <= allowed, (name, fields - allowed)


def _run(module, values, settings=None):
    layer = getattr(module, module.__all__[0])(**(settings or {}))
    leaves = {
        k: v.clone().requires_grad_() if k in module.GRAD_PARAMETERS else v
        for k, v in values.items()
    }
    x = as_state(module, layer(**leaves))
    (x * torch.linspace(-1, 1, x.shape[-1], dtype=x.dtype)).sum().backward()
    return x.detach(), {
        k: v.grad for k, v in leaves.items() if getattr(v, "grad", None) is not None
    }


def test_shared_runtime_build_matches_inline(tmp_path):
    out = tmp_path / "layers"
    specs = [str(ROOT / "specs" / f"{name}.yaml") for name in SPECS]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "foldgen.cli",
            "build",
            "--runtime",
            "shared",
            *specs,
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert (out / "_foldgen_runtime.py").exists()
    for name in SPECS:
        shared = (out / f"{name}.py").read_text()
        assert "_foldgen_runtime import" in shared
        assert unused_definitions(shared) == [], name
        assert len(shared.splitlines()) < len(
            build(ROOT / "specs" / f"{name}.yaml").source.splitlines()
        )
    sys.path.insert(0, str(out))
    try:
        for name in SPECS:
            values = CASES[name].make((2,), F64, torch.Generator().manual_seed(3))
            inline = foldgen.load_generated(ROOT / "generated" / f"{name}.py", f"inline_{name}")
            shared = foldgen.load_generated(out / f"{name}.py", f"shared_{name}")
            x_i, g_i = _run(inline, values)
            x_s, g_s = _run(shared, values)
            assert torch.equal(x_i, x_s), name
            assert g_i.keys() == g_s.keys() and all(torch.equal(g_i[k], g_s[k]) for k in g_i)
    finally:
        sys.path.remove(str(out))
    check = [
        sys.executable,
        "-m",
        "foldgen.cli",
        "check",
        "--runtime",
        "shared",
        *specs,
        "-o",
        str(out),
    ]
    assert subprocess.run(check, capture_output=True).returncode == 0
    runtime = out / "_foldgen_runtime.py"
    runtime.write_text(runtime.read_text() + "\n# edited\n")
    stale = subprocess.run(check, capture_output=True, text=True)
    assert stale.returncode == 1 and "_foldgen_runtime.py (differs" in stale.stderr


def test_shared_runtime_modules_work_inside_a_package(tmp_path):
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    spec = str(ROOT / "specs" / "box_qp.yaml")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "foldgen.cli",
            "build",
            "--runtime",
            "shared",
            spec,
            "-o",
            str(package),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    code = (
        "import torch; from mypkg.box_qp import BoxQp; "
        "x = BoxQp()(2 * torch.eye(3), torch.tensor([-1.0, 0.5, -3.0])); print(x.tolist())"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert [round(v, 6) for v in eval(run.stdout)] == [0.5, 0.0, 1.0]
