"""One problem, three update rules: the same solution and the same gradient."""

from __future__ import annotations

import torch
from cases import ROOT, load_module

from foldgen.build import build

F64 = torch.float64
BASE = (ROOT / "specs" / "box_qp.yaml").read_text()
SOLVERS = {
    "pgd": "solver: {rule: pgd, step_size: auto, max_iter: 5000, tol: 1.0e-12}",
    "admm": "solver: {rule: admm, rho: 1.0, max_iter: 20000, tol: 1.0e-12}",
    "sqp": "solver: {rule: sqp, max_iter: 100, tol: 1.0e-12}",
}


def _layer(rule, tmp_path):
    text = BASE.replace("name: box_qp", f"name: box_qp_{rule}")
    text = text.replace(
        "solver: {rule: pgd, step_size: auto, max_iter: 2000, tol: 1.0e-9}", SOLVERS[rule]
    )
    text = text.replace(
        "backward: {method: gmres, max_iter: 200, tol: 1.0e-10}", "backward: {method: direct}"
    )
    spec = tmp_path / f"box_qp_{rule}.yaml"
    spec.write_text(text)
    built = build(spec)
    (tmp_path / built.filename).write_text(built.source)
    module = load_module(built.name, tmp_path)
    return getattr(module, module.__all__[0])(on_nonconvergence="raise")


def test_pgd_admm_and_sqp_agree(tmp_path):
    gen = torch.Generator().manual_seed(11)
    n = 12
    a = torch.randn(4, n, n, generator=gen, dtype=F64)
    q = a @ a.mT / n + 0.3 * torch.eye(n, dtype=F64)
    c = (1.5 * torch.randn(4, n, generator=gen, dtype=F64)).requires_grad_()
    weight = torch.randn(4, n, generator=gen, dtype=F64)
    results = {}
    for rule in SOLVERS:
        x = _layer(rule, tmp_path)(q, c)
        (grad,) = torch.autograd.grad((x * weight).sum(), c)
        results[rule] = (x.detach(), grad)
    x_ref, g_ref = results["pgd"]
    for rule in ("admm", "sqp"):
        x, g = results[rule]
        assert (x - x_ref).abs().max() < 1e-8, rule
        assert (g - g_ref).abs().max() < 1e-7 * g_ref.abs().max().clamp_min(1.0), rule
