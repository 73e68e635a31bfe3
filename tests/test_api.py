"""The Python API: ``foldgen.compile`` builds in memory what ``foldgen build`` writes, and
reports a bad spec with the same located SpecError."""

from __future__ import annotations

import inspect
import pickle
import sys
from pathlib import Path

import pytest
import torch
import yaml

import foldgen
from foldgen.build import build

ROOT = Path(__file__).resolve().parent.parent
BOX_QP = ROOT / "specs" / "box_qp.yaml"
F64 = torch.float64


def _data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(6, 6, generator=gen, dtype=F64)
    Q = a @ a.T + torch.eye(6, dtype=F64)
    c = torch.randn(3, 6, generator=gen, dtype=F64)
    return Q, c


def _solve_and_grad(layer_class):
    Q, c = _data()
    c = c.clone().requires_grad_()
    x = layer_class()(Q=Q, c=c)
    (x * torch.arange(6, dtype=F64)).sum().backward()
    return x.detach(), c.grad


@pytest.mark.parametrize(
    "given",
    [
        pytest.param(lambda: BOX_QP, id="path"),
        pytest.param(lambda: str(BOX_QP), id="path-string"),
        pytest.param(lambda: BOX_QP.read_text(), id="yaml-text"),
        pytest.param(lambda: yaml.safe_load(BOX_QP.read_text()), id="dict"),
    ],
)
def test_compile_matches_the_generated_module(given):
    compiled = foldgen.compile(given())
    written = foldgen.load_generated(ROOT / "generated" / "box_qp.py", "generated_box_qp_api")
    x, g = _solve_and_grad(compiled)
    x_ref, g_ref = _solve_and_grad(getattr(written, written.__all__[0]))
    assert torch.equal(x, x_ref) and torch.equal(g, g_ref)
    assert compiled.__name__ == written.__all__[0]


def test_compiled_module_is_registered_and_inspectable():
    layer_class = foldgen.compile(BOX_QP)
    module = sys.modules[layer_class.__module__]
    assert layer_class.__module__ == "box_qp"
    assert getattr(module, "BoxQp") is layer_class
    assert "def forward" in inspect.getsource(layer_class.forward)
    copy = pickle.loads(pickle.dumps(layer_class()))
    assert type(copy) is layer_class


def test_compile_source_is_the_build_source_apart_from_the_recorded_path():
    module = foldgen.compile_module(BOX_QP.read_text())
    source = inspect.getsource(module)
    built = build(BOX_QP).source
    assert source.splitlines()[3:] == built.splitlines()[3:]
    assert "# from <string>" in source.splitlines()[2]


def test_a_bad_spec_is_a_located_spec_error_and_registers_nothing():
    text = BOX_QP.read_text().replace("tol: 1.0e-10", "tol: -1")
    assert text != BOX_QP.read_text()
    before = set(sys.modules)
    with pytest.raises(foldgen.SpecError) as err:
        foldgen.compile(text)
    assert str(err.value).startswith("<string>:")
    assert "tol" in str(err.value)
    assert set(sys.modules) == before


def test_a_dict_error_names_the_key():
    spec = yaml.safe_load(BOX_QP.read_text())
    spec["solver"]["rule"] = "newton"
    with pytest.raises(foldgen.SpecError, match=r"^<dict>:\d+:\d+: solver\.rule: "):
        foldgen.compile(spec)


def test_compile_rejects_other_types():
    with pytest.raises(TypeError, match="a path, YAML text or a mapping"):
        foldgen.compile(42)


def test_load_generated_restores_sys_modules_when_the_import_fails(tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(RuntimeError, match="boom"):
        foldgen.load_generated(bad)
    assert "broken" not in sys.modules
