"""AC optimal power flow (specs/acopf.yaml) on PYPOWER's IEEE cases against PYPOWER's own
solver (``runopf``, its PIPS primal-dual interior point, run to 1e-10 on every criterion).

    python benchmarks/acopf.py --threads 1                 # case9, 30, 57, 118, 300 (~2 min)
    python benchmarks/acopf.py --cases case9 case300       # any PYPOWER case names

For each case: the problem's size, the SQP's iterations, the median forward time (one solve)
and backward time (the gradient of the optimal cost w.r.t. the 2·nb loads) of the generated
layer, runopf's time and iterations, and the errors against runopf: the objective's relative
gap, the largest voltage-magnitude, angle (radians) and dispatch (p.u.) differences and the
largest LMP difference ($/MWh; the LMP is ∂cost*/∂Pd, from the layer's backward). Writes the
markdown table to benchmarks/results/acopf.md. Needs pypower (the test extra).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))

import acopf_data  # noqa: E402
from _common import load_generated  # noqa: E402

HEADER = (
    "| case | buses | branches | generators | variables | constraints | SQP iterations "
    "| forward ms | backward ms | runopf ms (iterations) | objective gap | max ΔVm | max Δθ (rad) "
    "| max ΔPg, ΔQg (p.u.) | max ΔLMP ($/MWh) | converged |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
    "| ---: | ---: | --- |"
)


def measure(module, name, repeats):
    """One table row: ``repeats`` runopf calls (each timed by ``reference``) and ``repeats``
    forward + backward passes of the layer, each backward on its own forward's graph."""
    case = acopf_data.load_case(name)
    runs = [acopf_data.reference(name) for _ in range(repeats)]
    reference, runopf_s = runs[-1], statistics.median(r.seconds for r in runs)
    layer = module.Acopf()
    forward_times, backward_times = [], []
    for _ in range(repeats):
        values = dict(case.inputs)
        values["Pd"], values["Qd"] = (values[k].clone().requires_grad_() for k in ("Pd", "Qd"))
        start = time.perf_counter()
        e, f, Pg, Qg = layer(**values)
        forward_times.append(time.perf_counter() - start)
        cost = acopf_data.cost(case, Pg)
        start = time.perf_counter()
        grad_pd, _ = torch.autograd.grad(cost, [values["Pd"], values["Qd"]])
        backward_times.append(time.perf_counter() - start)
    info = layer.info
    forward_s = statistics.median(forward_times)
    vm, va, pg, qg = acopf_data.to_pypower_units(case, e, f, Pg, Qg)
    lmp = acopf_data.lmp(case, grad_pd)
    base = case.base_mva
    dispatch = max(np.abs(pg - reference.pg).max(), np.abs(qg - reference.qg).max()) / base
    gap = abs(cost.item() * acopf_data.COST_UNIT - reference.objective) / reference.objective
    return (
        f"| {name} | {case.nb} | {case.nl} | {case.ng} | {case.variables} | {case.constraints} "
        f"| {int(info.iterations.max())} | {forward_s * 1e3:.0f} "
        f"| {statistics.median(backward_times) * 1e3:.1f} "
        f"| {runopf_s * 1e3:.0f} ({reference.iterations}) | {gap:.1e} "
        f"| {np.abs(vm - reference.vm).max():.1e} "
        f"| {np.abs(np.radians(va - reference.va)).max():.1e} | {dispatch:.1e} "
        f"| {np.abs(lmp - reference.lmp).max():.1e} | {bool(info.converged.all())} |"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases", nargs="+", default=["case9", "case30", "case57", "case118", "case300"]
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "acopf.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    module = load_generated("acopf")
    rows = [HEADER]
    for name in args.cases:
        rows.append(measure(module, name, args.repeats))
        print(rows[-1], flush=True)
    note = (
        f"\nOne thread ({args.threads}), float64, medians of {args.repeats}; torch "
        f"{torch.__version__}. Errors are against runopf at 1e-10 tolerances.\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(rows) + "\n" + note)
    print(note)


if __name__ == "__main__":
    main()
