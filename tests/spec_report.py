"""Per-spec figures for a closing note or a review, printed as a table: for each spec in
specs/ (or those named), its rule, build time, the forward's largest error against the CVXPY
reference of tests/cases.py (3 draws, where the problem is convex), gradcheck in float64,
forward iterations and the backward's method and iterations (median over a batch of 4).

    python tests/spec_report.py [spec ...]
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases import CASES, ROOT, SPECS, as_state, load_module  # noqa: E402
from test_battery import draw, make_layer  # noqa: E402

from foldgen.build import build  # noqa: E402


def report(name: str) -> dict[str, object]:
    spec = ROOT / "specs" / f"{name}.yaml"
    start = time.perf_counter()
    build(spec)
    seconds = time.perf_counter() - start
    module, case = load_module(name), CASES[name]
    layer = make_layer(module)
    error = None
    if case.cvxpy is not None:
        errors = []
        for seed in range(3):
            values = draw(case, seed=10 + seed)
            x = as_state(module, layer(**values))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                reference = case.cvxpy({k: v.numpy() for k, v in values.items()})
            errors.append(float(np.abs(x.numpy() - reference).max()))
        error = max(errors)
    values = draw(case, batch=(2,))
    names = list(module.GRAD_PARAMETERS)
    inputs = tuple(values[n].clone().requires_grad_() for n in names)
    gradcheck = torch.autograd.gradcheck(
        lambda *g: layer(**{**values, **dict(zip(names, g))}),
        inputs,
        eps=1e-6,
        atol=1e-6,
        rtol=1e-5,
        raise_exception=False,
    )
    values = draw(case, batch=(4,), seed=3)
    leaves = {n: v.clone().requires_grad_(n in names) for n, v in values.items()}
    x = as_state(module, layer(**leaves))
    forward = layer.info.iterations.tolist()
    x.sum().backward()
    info = layer.backward_info
    return {
        "spec": name,
        "rule": module.PROBLEM.rule,
        "build s": f"{seconds:.2f}",
        "fwd err vs CVXPY": "—" if error is None else f"{error:.1e}",
        "gradcheck": "pass" if gradcheck else "FAIL",
        "fwd iters": f"{statistics.median(forward):g} (max {max(forward)})",
        "bwd": f"{info.method}, {statistics.median(info.iterations.tolist()):g} it",
    }


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    rows = [report(name) for name in (argv or SPECS)]
    keys = list(rows[0])
    widths = [max(len(k), *(len(str(r[k])) for r in rows)) for k in keys]
    print("| " + " | ".join(k.ljust(w) for k, w in zip(keys, widths)) + " |")
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for r in rows:
        print("| " + " | ".join(str(r[k]).ljust(w) for k, w in zip(keys, widths)) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
