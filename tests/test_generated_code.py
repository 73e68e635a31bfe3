"""The generated modules as a product (STYLE.md practice 9), and their run-time input checks.

Static checks run on the committed ``generated/<name>.py`` of every spec in ``specs/``: it
parses, imports only torch and the standard library, never differentiates with autograd at
run time nor evaluates strings, defines the documented classes, documents its math, is
ruff-formatted, and imports in a fresh interpreter where foldgen cannot be imported.
Run-time checks (bad inputs, non-convergence) use ``box_qp`` and ``entropic_knapsack``.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

import foldgen

ROOT = Path(__file__).resolve().parents[1]
SPEC_FILES = sorted((ROOT / "specs").glob("*.yaml"))
F64 = torch.float64


def read_spec(path: Path) -> dict:
    with open(path, encoding="utf-8") as stream:
        return yaml.safe_load(stream)


def class_name(spec: dict) -> str:
    """`class:` if given, else the CamelCase of `name` (box_qp -> BoxQp)."""
    return spec.get("class") or "".join(w[:1].upper() + w[1:] for w in spec["name"].split("_"))


@pytest.fixture(params=SPEC_FILES, ids=lambda p: p.stem)
def generated(request):
    """(spec path, spec data, generated module path, its source, its ast)."""
    spec_path = request.param
    spec = read_spec(spec_path)
    path = ROOT / "generated" / f"{spec['name']}.py"
    assert path.is_file(), f"{path} is missing; run: foldgen build specs/*.yaml"
    source = path.read_text(encoding="utf-8")
    return spec_path, spec, path, source, ast.parse(source, filename=str(path))


def dotted(node: ast.AST) -> str | None:
    """`torch.autograd.grad` for the attribute chain torch.autograd.grad, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


# ---------------------------------------------------------------------------------------------
# Static checks


def test_parses(generated):
    _, _, path, source, _ = generated
    compile(source, str(path), "exec")  # also catches what ast.parse lets through


def test_header_records_the_spec(generated):
    spec_path, _, _, source, _ = generated
    header = source.split('"""', 1)[0]
    assert "@generated" in header and "DO NOT EDIT" in header
    assert f"specs/{spec_path.name}" in header
    assert f"foldgen {foldgen.__version__}" in header
    digest = re.search(r"sha256: ([0-9a-f]{64})\b", header)
    assert digest and digest.group(1) == hashlib.sha256(spec_path.read_bytes()).hexdigest()


def test_imports_only_torch_and_stdlib(generated):
    *_, tree = generated
    allowed = set(sys.stdlib_module_names) | {"torch"}
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            imported.append(node.module or "")
    assert "torch" in {name.split(".")[0] for name in imported}
    assert {name.split(".")[0] for name in imported} <= allowed, imported
    # No dynamic imports that would dodge the check above.
    calls = {dotted(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert not calls & {"__import__", "importlib.import_module", "importlib.__import__"}


FORBIDDEN_PREFIXES = ("torch.autograd.grad", "torch.func", "torch.autograd.functional")


def test_no_autograd_or_eval_at_run_time(generated):
    *_, tree = generated
    for node in ast.walk(tree):
        name = dotted(node) if isinstance(node, ast.Attribute) else None
        if name is not None:
            assert not any(name == p or name.startswith(p + ".") for p in FORBIDDEN_PREFIXES), (
                f"line {node.lineno}: {name}"
            )
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                assert not any(
                    full == p or full.startswith(p + ".") for p in FORBIDDEN_PREFIXES
                ), f"line {node.lineno}: from {node.module} import {alias.name}"
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                assert func.attr != "backward", f"line {node.lineno}: .backward() call"
            if isinstance(func, ast.Name):
                assert func.id not in {"eval", "exec", "compile", "__import__"}, (
                    f"line {node.lineno}: {func.id}()"
                )


def test_defines_the_classes(generated):
    _, spec, _, _, tree = generated
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert {class_name(spec), "SolveInfo", "BackwardInfo"} <= classes
    layer = next(
        n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name(spec)
    )
    assert any(dotted(base) == "torch.nn.Module" for base in layer.bases)
    assert {n.name for n in layer.body if isinstance(n, ast.FunctionDef)} >= {
        "__init__",
        "forward",
    }


def test_no_top_level_name_is_defined_twice(generated):
    """The shared skeleton, the rule's template and the runtime are pasted into one namespace:
    a name defined twice would silently replace the earlier definition."""
    *_, tree = generated
    names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    names += [
        t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
        if isinstance(t, ast.Name)
    ]  # fmt: skip
    assert sorted(n for n in set(names) if names.count(n) > 1) == []


def test_docstring_explains_the_math(generated):
    _, spec, _, _, tree = generated
    doc = ast.get_docstring(tree)
    assert doc, "no module docstring"
    sense = "minimize" if "minimize" in spec else "maximize"
    var = re.escape(", ".join(spec["variables"]))
    # The objective, as f(<variables>) = ..., naming every parameter the spec's objective uses.
    match = re.search(rf"^\s*minimize\s+f\({var}\) = (.+)$", doc, re.MULTILINE)
    assert match, doc
    objective_line = match.group(1)
    names = set(re.findall(r"[A-Za-z_]\w*", spec[sense])) - set(
        re.findall(r"([A-Za-z_]\w*)\s*\(", spec[sense])
    )
    for name in names & set(spec["parameters"]):
        assert re.search(rf"(?<![A-Za-z0-9_]){name}(?![A-Za-z0-9_])", objective_line), (
            name,
            objective_line,
        )
    if sense == "maximize":
        assert "maxim" in doc  # says that f is the negated objective
    variables = spec["variables"]
    one_vector = len(variables) == 1 and len(next(iter(variables.values())).get("shape", ())) == 1
    state = var if one_vector else "_z"  # several variables: the packed state, named in the doc
    assert re.search(rf"U\({state}\) =", doc), "the update map U"
    if not one_vector:
        assert f"_z = ({', '.join(variables)})" in doc
    assert "Φᵀv" in doc
    assert "Ψ" in doc


def ruff_command() -> list[str]:
    exe = Path(sys.executable).with_name("ruff")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("ruff")
    if found:
        return [found]
    pytest.fail("ruff is a test dependency (pip install -e '.[test]')")


def test_ruff_formatted(generated):
    _, _, path, _, _ = generated
    args = ["format", "--line-length", "99", str(path)]
    check = subprocess.run(
        [*ruff_command(), *args[:1], "--check", *args[1:]],
        capture_output=True,
        check=False,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    if check.returncode != 0:
        diff = subprocess.run(
            [*ruff_command(), *args[:1], "--diff", *args[1:]],
            capture_output=True,
            check=False,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        pytest.fail(f"ruff would reformat {path.name}:\n{diff.stdout}{diff.stderr}")
    # The file was really checked, not excluded by configuration.
    assert "already formatted" in check.stdout + check.stderr, check.stdout + check.stderr


ISOLATED = r"""
import sys
sys.modules["foldgen"] = None  # `import foldgen` (or foldgen.anything) now raises ImportError
directory, name, cls_name = sys.argv[1:4]
sys.path.insert(0, directory)
import importlib
module = importlib.import_module(name)
assert module.__file__.startswith(directory), module.__file__
layer = getattr(module, cls_name)()
import torch
if name == "box_qp":
    n = 4
    Q = torch.eye(n, dtype=torch.float64) * 2
    c = torch.tensor([1.0, -1.0, -3.0, 0.5], dtype=torch.float64, requires_grad=True)
    x = layer(Q, c)
    x.sum().backward()
    assert torch.allclose(x, torch.tensor([0.0, 0.5, 1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(c.grad, torch.tensor([0.0, -0.5, 0.0, 0.0], dtype=torch.float64))
elif name == "entropic_knapsack":
    c = torch.linspace(-1, 1, 6, dtype=torch.float64, requires_grad=True)
    x = layer(c, k=2.0)
    x.sum().backward()
    assert abs(float(x.sum()) - 2.0) < 1e-8 and bool(((x > 0) & (x < 1)).all())
    assert c.grad.abs().max() < 1e-8  # sum(x) == k: the gradient of sum(x) vanishes
loaded = sorted(k for k, v in sys.modules.items() if v is not None and k.split(".")[0] in
                {"foldgen", "templates", "jinja2", "pydantic", "yaml"})
assert not loaded, loaded
print("ok")
"""


def test_imports_and_runs_without_foldgen(generated, tmp_path):
    _, spec, path, _, _ = generated
    shutil.copy(path, tmp_path / path.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run(
        # -I: no PYTHONPATH, no user site, no script directory or cwd on sys.path.
        [sys.executable, "-I", "-c", ISOLATED, str(tmp_path), spec["name"], class_name(spec)],
        capture_output=True,
        check=False,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "ok"


# ---------------------------------------------------------------------------------------------
# Run-time behaviour of two generated layers


@functools.cache
def load(name: str):
    """generated/<name>.py imported from its file, under a name of its own."""
    spec = importlib.util.spec_from_file_location(
        f"_gen_code_{name}", ROOT / "generated" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


N = 4


def box_inputs():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(N, N, generator=gen, dtype=F64)
    return {
        "Q": a @ a.T / N + torch.eye(N, dtype=F64),
        "c": torch.randn(N, generator=gen, dtype=F64),
    }


def knapsack_inputs():
    gen = torch.Generator().manual_seed(0)
    return {"c": torch.randn(N, generator=gen, dtype=F64), "k": torch.tensor(2.0, dtype=F64)}


def nan_at(t, index, value=float("nan")):
    t = t.clone()
    t[index] = value
    return t


# (spec, case id, changes to the good inputs, the name the ValueError must start with)
BAD_INPUTS = [
    ("box_qp", "nan", lambda v: {"c": nan_at(v["c"], 1)}, "c"),
    ("box_qp", "inf", lambda v: {"Q": nan_at(v["Q"], (0, 0), float("inf"))}, "Q"),
    ("box_qp", "core-shape-vector-for-matrix", lambda v: {"Q": v["Q"][0]}, "Q"),
    ("box_qp", "core-shape-trailing-axis", lambda v: {"c": v["c"][:, None]}, "c"),
    ("box_qp", "inconsistent-sizes", lambda v: {"c": torch.zeros(N + 1, dtype=F64)}, "c"),
    ("box_qp", "integer-dtype-first", lambda v: {"Q": v["Q"].long()}, "Q"),
    ("box_qp", "integer-dtype", lambda v: {"c": torch.arange(N)}, "c"),
    ("box_qp", "float32-with-float64", lambda v: {"c": v["c"].float()}, "c"),
    ("box_qp", "list", lambda v: {"c": v["c"].tolist()}, "c"),
    ("box_qp", "batch-does-not-broadcast",
     lambda v: {"Q": v["Q"].expand(3, N, N), "c": v["c"].expand(2, N)}, "c"),
    ("box_qp", "requires-grad-on-grad-false",
     lambda v: {"Q": v["Q"].clone().requires_grad_()}, "Q"),
    ("entropic_knapsack", "nan", lambda v: {"c": nan_at(v["c"], 0)}, "c"),
    ("entropic_knapsack", "nan-scalar", lambda v: {"k": torch.tensor(float("nan"), dtype=F64)}, "k"),
    ("entropic_knapsack", "inf-number", lambda v: {"eps": float("inf")}, "eps"),
    ("entropic_knapsack", "core-shape", lambda v: {"c": v["c"][0]}, "c"),
    ("entropic_knapsack", "integer-dtype", lambda v: {"c": torch.arange(N)}, "c"),
    ("entropic_knapsack", "float32-with-float64",
     lambda v: {"k": torch.tensor(2.0, dtype=torch.float32)}, "k"),
    ("entropic_knapsack", "list", lambda v: {"c": v["c"].tolist(), "k": 2.0}, "c"),
    ("entropic_knapsack", "batch-does-not-broadcast",
     lambda v: {"c": v["c"].expand(3, N), "k": torch.full((2,), 2.0, dtype=F64)}, "k"),
    ("entropic_knapsack", "requires-grad-on-grad-false",
     lambda v: {"k": torch.tensor(2.0, dtype=F64, requires_grad=True)}, "k"),
    ("entropic_knapsack", "bool-scalar", lambda v: {"k": True}, "k"),
]  # fmt: skip

INPUTS = {"box_qp": box_inputs, "entropic_knapsack": knapsack_inputs}
CLASSES = {"box_qp": "BoxQp", "entropic_knapsack": "EntropicKnapsack"}


def layer_for(name, **kwargs):
    return getattr(load(name), CLASSES[name])(**kwargs)


def test_good_inputs_run():
    for name, make in INPUTS.items():
        x = layer_for(name, on_nonconvergence="raise")(**make())
        assert x.shape == (N,) and bool(torch.isfinite(x).all())


def test_number_bound_in_the_constructor_follows_the_call_dtype():
    """k=2.0 given to the constructor works with float64 and float32 calls alike."""
    layer = layer_for("entropic_knapsack", k=2.0, eps=1, tol=1e-5, on_nonconvergence="raise")
    for dtype in (torch.float64, torch.float32):
        c = knapsack_inputs()["c"].to(dtype)
        x = layer(c)
        assert x.dtype == dtype
        assert abs(float(x.sum()) - 2.0) <= 1e-5
    assert "k" in layer.bound and "k" not in dict(layer.named_buffers())


@pytest.mark.parametrize(
    "name, change, param",
    [(s, c, p) for s, _, c, p in BAD_INPUTS],
    ids=[f"{s}-{i}" for s, i, _, _ in BAD_INPUTS],
)
def test_bad_input_raises_value_error_naming_the_parameter(name, change, param):
    inputs = INPUTS[name]()
    inputs.update(change(inputs))
    with pytest.raises(ValueError) as err:
        layer_for(name)(**inputs)
    assert str(err.value).startswith(f"{param}:"), str(err.value)


def test_inconsistent_warm_start_names_it():
    with pytest.raises(ValueError, match=r"^x_init:"):
        layer_for("entropic_knapsack")(
            **knapsack_inputs(), x_init=torch.full((N + 1,), 0.5, dtype=F64)
        )


@pytest.mark.parametrize("name", list(INPUTS))
def test_missing_input_is_a_type_error_naming_it(name):
    inputs = INPUTS[name]()
    del inputs["c"]
    with pytest.raises(TypeError, match=r"'c'"):
        layer_for(name)(**inputs)


@pytest.mark.parametrize("name", list(INPUTS))
def test_unknown_keyword_is_a_type_error(name):
    with pytest.raises(TypeError, match=r"'bogus'"):
        layer_for(name)(**INPUTS[name](), bogus=1.0)


@pytest.mark.parametrize("name", list(INPUTS))
def test_too_many_positional_inputs_is_a_type_error(name):
    args = list(INPUTS[name]().values())
    with pytest.raises(TypeError):
        layer_for(name)(*args, *args, *args)


# Non-convergence: a batch of three in which max_iter = 1 reaches the fixed point for the
# first and last elements (they start at their solution) but not for the middle one.


def box_batch():
    Q = 2 * torch.eye(N, dtype=F64)
    c = torch.stack(
        [
            torch.full((N,), 5.0, dtype=F64),  # solution x = 0 = the start
            torch.linspace(-3, 3, N, dtype=F64),
            torch.full((N,), 3.0, dtype=F64),  # solution x = 0 = the start
        ]
    )
    return {"Q": Q, "c": c}


def knapsack_batch():
    c = torch.stack(
        [
            torch.zeros(N, dtype=F64),  # by symmetry x = k/n = the start
            torch.linspace(-3, 3, N, dtype=F64),
            torch.full((N,), 0.7, dtype=F64),
        ]
    )
    return {"c": c, "k": torch.tensor(2.0, dtype=F64)}


BATCHES = {"box_qp": box_batch, "entropic_knapsack": knapsack_batch}


def solve_alone(name, inputs, i):
    """Element i of a batch solved on its own, to convergence."""
    one = {k: (v[i] if v.dim() > len(load(name).PARAMETERS[k]) else v) for k, v in inputs.items()}
    return layer_for(name, on_nonconvergence="raise")(**one)


@pytest.mark.parametrize("name", list(BATCHES))
def test_nonconvergence_warns_naming_the_batch_element(name):
    module = load(name)
    inputs = BATCHES[name]()
    layer = layer_for(name, max_iter=1)
    with pytest.warns(module.ConvergenceWarning) as record:
        x = layer(**inputs)
    messages = [
        str(w.message) for w in record if issubclass(w.category, module.ConvergenceWarning)
    ]
    assert len(messages) == 1, messages
    assert re.search(r"element\(s\) 1\b", messages[0]), messages[0]
    assert not re.search(r"\b[02]\b", messages[0].split("element(s)")[1].split("(")[0])
    # The batch is not aborted: every element has a result, the converged ones exact.
    assert layer.info.converged.tolist() == [True, False, True]
    assert x.shape == (3, N) and bool(torch.isfinite(x).all())
    for i in (0, 2):
        torch.testing.assert_close(x[i], solve_alone(name, inputs, i))
    assert issubclass(module.ConvergenceWarning, Warning)


@pytest.mark.parametrize("name", list(BATCHES))
def test_nonconvergence_raises_on_request(name):
    module = load(name)
    layer = layer_for(name, max_iter=1, on_nonconvergence="raise")
    with pytest.raises(module.ConvergenceError, match=r"element\(s\) 1\b"):
        layer(**BATCHES[name]())
    assert issubclass(module.ConvergenceError, Exception)


@pytest.mark.parametrize("name", list(BATCHES))
def test_nonconvergence_ignored_on_request(name):
    layer = layer_for(name, max_iter=1, on_nonconvergence="ignore")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = layer(**BATCHES[name]())
    assert layer.info.converged.tolist() == [True, False, True]
    assert bool(torch.isfinite(x).all())


def test_nonconvergence_names_multi_dimensional_batch_indices():
    module = load("box_qp")
    inputs = box_batch()
    c = inputs["c"].reshape(3, 1, N).expand(3, 2, N)  # element (1, 0) and (1, 1) do not converge
    with pytest.warns(module.ConvergenceWarning, match=r"\(1, 0\), \(1, 1\)"):
        layer_for("box_qp", max_iter=1)(Q=inputs["Q"], c=c)
