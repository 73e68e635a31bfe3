"""Numerics users can trust (issue 10, first part): tolerances fitted to the call's dtype,
and one warning class for every generated layer of the process.

A spec's tolerances are float64 ones. In float32 the layer raises each to 100·eps (1.2e-5),
which a float32 solve can meet, and records the one it used in ``info.tol`` and
``backward_info.tol``; float64 calls use the settings unchanged (bit for bit as before).
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import foldgen
from foldgen.runtime.layer import _fit_tolerance

ROOT = Path(__file__).resolve().parent.parent
EPS32 = torch.finfo(torch.float32).eps


def box_qp(name="box_qp_numerics"):
    return foldgen.load_generated(ROOT / "generated" / "box_qp.py", name)


def tutorial_data(dtype, seed=0, n=50, batch=8):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    Q = (a @ a.T / n + 0.1 * torch.eye(n, dtype=torch.float64)).to(dtype)
    c = torch.randn(batch, n, generator=gen, dtype=torch.float64).to(dtype)
    return Q, c


def test_fitted_tolerance():
    assert _fit_tolerance(1e-9, torch.float64) == 1e-9
    assert _fit_tolerance(1e-9, torch.float32) == pytest.approx(100 * EPS32)
    assert _fit_tolerance(1e-3, torch.float32) == 1e-3  # already coarse enough
    assert _fit_tolerance(0.0, torch.float32) == 0.0  # a fixed iteration count stays one


def test_float32_box_qp_converges_quietly_with_the_spec_tolerances():
    """The spec says tol 1e-9 and backward tol 1e-10; in float32 every element converges,
    forward and backward, with no warning, and info says which tolerance was used."""
    module = box_qp()
    Q, c = tutorial_data(torch.float32)
    c = c.requires_grad_()
    layer = module.BoxQp()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = layer(Q, c)
        x.sum().backward()
    assert bool(layer.info.converged.all()) and int(layer.info.iterations.max()) < 200
    assert layer.info.tol == pytest.approx(100 * EPS32)
    assert bool(layer.backward_info.converged.all())
    assert layer.backward_info.tol == pytest.approx(100 * EPS32)
    # The float32 answer is the float64 one to float32 accuracy.
    Q64, c64 = tutorial_data(torch.float64)
    c64 = c64.requires_grad_()
    reference = module.BoxQp(tol=1e-12)
    x64 = reference(Q64, c64)
    x64.sum().backward()
    torch.testing.assert_close(x.detach().double(), x64.detach(), atol=2e-4, rtol=0)
    torch.testing.assert_close(c.grad.double(), c64.grad, atol=2e-3, rtol=0)
    assert reference.info.tol == 1e-12 and layer.tol == 1e-9  # the settings are untouched


def test_one_warning_class_for_every_generated_module():
    first = box_qp("numerics_a")
    second = foldgen.load_generated(ROOT / "generated" / "lasso.py", "numerics_b")
    compiled = foldgen.compile_module(ROOT / "specs" / "sparsemax.yaml")
    assert first.ConvergenceWarning is second.ConvergenceWarning is compiled.ConvergenceWarning
    assert first.ConvergenceWarning is foldgen.ConvergenceWarning
    assert first.ConvergenceError is second.ConvergenceError is foldgen.ConvergenceError
    assert issubclass(foldgen.ConvergenceWarning, RuntimeWarning)
    Q, c = tutorial_data(torch.float64, batch=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=foldgen.ConvergenceWarning)
        first.BoxQp(max_iter=1)(Q, c)  # would warn: one filter silences every module
    with pytest.raises(foldgen.ConvergenceError):
        first.BoxQp(max_iter=1, on_nonconvergence="raise")(Q, c)


def test_the_shared_class_needs_no_foldgen(tmp_path):
    """A generated module imported where foldgen is not installed still shares its class
    with every other generated module of the process."""
    code = (
        "import sys, importlib.util\n"
        "sys.modules['foldgen'] = None\n"
        "mods = []\n"
        "for i, name in enumerate(['box_qp', 'lasso']):\n"
        f"    s = importlib.util.spec_from_file_location(f'm{{i}}', r'{ROOT / 'generated'}/' + name + '.py')\n"
        "    m = importlib.util.module_from_spec(s); s.loader.exec_module(m); mods.append(m)\n"
        "a, b = mods\n"
        "assert a.ConvergenceWarning is b.ConvergenceWarning\n"
        "print(a.ConvergenceWarning.__module__)\n"
    )
    run = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "_foldgen_shared"


def test_a_solve_that_hits_max_iter_says_what_to_try():
    lasso = foldgen.load_generated(ROOT / "generated" / "lasso.py", "numerics_lasso")
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(2, 40, 20, generator=gen, dtype=torch.float64)
    b = torch.randn(2, 40, generator=gen, dtype=torch.float64)
    with pytest.warns(
        foldgen.ConvergenceWarning, match=r"\(ρ up to 10\); the worst fell .*; try adapt_rho=True"
    ):
        lasso.Lasso(max_iter=3, adapt_rho=False)(
            A=A, b=b, lam=torch.tensor(0.5, dtype=torch.float64)
        )
    Q, c = tutorial_data(torch.float64, batch=2)
    with pytest.warns(foldgen.ConvergenceWarning, match=r"raise max_iter, use step_size='auto'"):
        box_qp("numerics_hint").BoxQp(max_iter=1)(Q, c)


def test_verbose_prints_one_line_per_solve(capsys):
    Q, c = tutorial_data(torch.float64, batch=3)
    c = c.requires_grad_()
    layer = box_qp("numerics_verbose").BoxQp(verbose=True)
    layer(Q, c).sum().backward()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("BoxQp forward: 3/3 converged, ≤ ")
    assert lines[1].startswith("BoxQp backward (active_set): 3/3 converged")
    assert all(line.endswith(" s") for line in lines)
    box_qp("numerics_quiet").BoxQp()(Q, c)
    assert capsys.readouterr().err == ""
