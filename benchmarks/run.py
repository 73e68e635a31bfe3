"""foldgen against its peers, side by side on the same data, in one process.

    python benchmarks/run.py --threads 1  # the full table and study (27 min on 2 cores)
    python benchmarks/run.py --quick      # small sizes, a smoke run (about 1.5 min)
    python benchmarks/run.py --render     # table.md and backward.png again from results.csv

Prints a markdown table and writes results.csv, table.md, backward.png, convergence.csv and
convergence.png to --out (default benchmarks/results). Times are medians of repeated runs
(forward: one solve, inputs requiring grad; backward: one gradient of ⟨g, x*⟩ on a recorded
forward); memory is the peak of live torch tensors during forward + backward; the gradient
error is relative to the float64 dense KKT implicit-differentiation reference.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import time
import warnings
from pathlib import Path

import torch
from convergence import study
from memory import PeakMemory
from peers import AutogradFold, Cvxpylayers, Foldgen, Qpth, Unrolled
from problems import make_cases
from reference import batched_kkt_gradient, relative_error

HERE = Path(__file__).resolve().parent
FIELDS = [
    "case", "method", "solver", "fwd_ms", "bwd_ms", "peak_mb", "grad_err", "bwd_x", "total_x",
    "fwd_iters", "bwd_iters", "converged", "runs",
]  # fmt: skip


def median_ms(fn, repeats, budget):
    """Median wall time of fn() in ms over up to ``repeats`` calls within ``budget`` seconds
    (at least one call); also the last result. The caller has warmed fn up."""
    times, deadline = [], time.perf_counter() + budget
    while not times or (len(times) < repeats and time.perf_counter() < deadline):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, len(times), result


def measure(runner, repeats, budget):
    """One row's numbers for a method, with its gradients and last output. The first
    forward + backward, under the memory tracker, gives the gradients and the peak memory
    and serves as the warm-up."""
    with PeakMemory() as memory:
        grads = runner.backward(runner.forward())
    fwd, runs, handle = median_ms(runner.forward, repeats, budget)
    bwd, _, _ = median_ms(lambda: runner.backward(handle), repeats, budget)
    row = {"fwd_ms": fwd, "bwd_ms": bwd, "peak_mb": memory.peak / 2**20, "runs": runs}
    return row, grads, handle


PROBE = 4  # batch elements of the unrolling probe
MEMORY_LIMIT_GB, TIME_LIMIT_S = 4.0, 120.0


def unrolled_too_big(case, weight, log):
    """Why unrolling is not run on the full batch ('' when it is): its memory and time grow
    with the batch, so a run on the first PROBE elements predicts them."""
    batch = case.batch_size()
    if batch <= PROBE:
        return ""
    runner = Unrolled(case.head(PROBE), weight[:PROBE])
    start = time.perf_counter()
    with PeakMemory() as memory:
        runner.backward(runner.forward())
    scale = batch / PROBE
    gigabytes, seconds = memory.peak / 2**30 * scale, (time.perf_counter() - start) * scale
    log(f"  unrolled probe: batch {PROBE} -> predicted {gigabytes:.2g} GB, {seconds:.0f} s")
    if gigabytes > MEMORY_LIMIT_GB or seconds > TIME_LIMIT_S:
        return (
            f"not run: needs ≈{gigabytes:.2g} GB, ≈{seconds:.0f} s (batch-{PROBE} run × {scale:g})"
        )
    return ""


def run_case(case, repeats, budget, log):
    """Every method on one case; the rows carry times, memory and gradient errors."""
    torch.manual_seed(0)
    weight = torch.randn(case.inputs[case.grad[0]].shape, dtype=torch.float64)
    rows, gradients = [], []

    def add(label, runner, solver):
        start = time.perf_counter()
        row, grads, handle = measure(runner, repeats, budget)
        rows.append({"case": case.name, "method": label, "solver": solver, **row})
        gradients.append(grads)
        log(f"  {label:14s} {solver:16s} {time.perf_counter() - start:6.1f} s")
        return handle

    for method in case.methods:
        fold = Foldgen(case, weight, method)
        x = add("foldgen", fold, str(method))
        info, binfo = fold.layer.info, fold.layer.backward_info
        rows[-1].update(
            solver=binfo.method,
            fwd_iters=int(info.iterations.max()),
            bwd_iters=int(binfo.iterations.max()),
            converged=f"{int(info.converged.sum())}/{info.converged.numel()}",
        )
        if len(rows) == 1:
            x_star, solver, iterations = x.detach(), binfo.method, rows[0]["fwd_iters"]
    skip = unrolled_too_big(case, weight, log)
    if skip:
        rows.append({"case": case.name, "method": "unrolled", "solver": skip})
        gradients.append(None)
    else:
        add("unrolled", Unrolled(case, weight), f"{iterations} iterations")
    add("autograd-fold", AutogradFold(case, weight, solver), solver)
    if case.cvxpylayer is not None:
        add("cvxpylayers", Cvxpylayers(case, weight), "default")
    if case.qpth is not None:
        add("qpth", Qpth(case, weight), "default")
    if case.solution is not None:
        x_star = case.solution().detach()
    reference = batched_kkt_gradient(
        case.local, x_star, case.params(), case.batched, weight, case.grad
    )
    base = rows[0]
    for row, grads in zip(rows, gradients):
        if grads is None:  # not run
            continue
        row["grad_err"] = relative_error(grads, reference)
        row["bwd_x"] = row["bwd_ms"] / base["bwd_ms"]
        row["total_x"] = (row["fwd_ms"] + row["bwd_ms"]) / (base["fwd_ms"] + base["bwd_ms"])
    return rows


def fmt(value, kind):
    if value is None or value == "":
        return ""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if kind == "ms":
        return f"{value:.3g}" if value < 100 else f"{value:.0f}"
    if kind == "err":
        return f"{value:.1e}"
    if kind == "x":
        return f"{value:.2g}×" if value < 10 else f"{value:.0f}×"
    if kind == "mb":
        return f"{value:.3g}"
    return str(value)


def markdown(rows):
    head = "| case | method | setting | fwd ms | bwd ms | peak MB | grad rel err | bwd ÷ foldgen | total ÷ foldgen |"
    lines = [head, "|" + " --- |" * 9]
    for r in rows:
        solver = r["solver"]
        if r.get("fwd_iters"):  # foldgen: iterations (forward, backward), converged elements
            solver += f"; it {r['fwd_iters']}/{r['bwd_iters']}; conv {r['converged']}"
        cells = [
            r["case"], r["method"], solver, fmt(r.get("fwd_ms"), "ms"),
            fmt(r.get("bwd_ms"), "ms"), fmt(r.get("peak_mb"), "mb"),
            fmt(r.get("grad_err"), "err"), fmt(r.get("bwd_x"), "x"), fmt(r.get("total_x"), "x"),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(ratio, goal):
    """'12.3× met' or '1.2× missed' against a speed-up goal."""
    return f"{ratio:.3g}× {'met' if ratio >= goal else 'missed'}"


def targets(rows):
    """The issue's targets, per case: speed-ups of foldgen's backward over runtime-autograd
    folding (≥10×) and over unrolling (≥5×, at its own accuracy), of forward + backward over
    cvxpylayers at batch 64 (≥30×), and foldgen's gradient error (≤1e-8)."""
    head = (
        "| case | bwd: autograd-fold ÷ foldgen (≥10×) | bwd: unrolled ÷ foldgen (≥5×), "
        "unrolled err | total: cvxpylayers ÷ foldgen (≥30× at b=64) | foldgen err (≤1e-8) |"
    )
    lines = [head, "|" + " --- |" * 5]
    for case in dict.fromkeys(r["case"] for r in rows):
        mine = {}
        for r in rows:
            if r["case"] == case:
                mine.setdefault(r["method"], r)
        fold = mine["foldgen"]
        cells = [case, verdict(mine["autograd-fold"]["bwd_x"], 10)]
        unrolled = mine["unrolled"]
        if "bwd_x" in unrolled and math.isnan(unrolled["grad_err"]):
            cells.append(f"{unrolled['bwd_x']:.3g}×, but its gradient is NaN")
        elif "bwd_x" in unrolled:
            cells.append(f"{verdict(unrolled['bwd_x'], 5)}, {unrolled['grad_err']:.1e}")
        else:
            cells.append(unrolled["solver"])
        cvx = mine.get("cvxpylayers")
        if cvx is None:
            cells.append("n/a (not convex)" if "nonconvex" in case else "n/a")
        elif " b=64" in case:
            cells.append(verdict(cvx["total_x"], 30))
        else:
            cells.append(f"{cvx['total_x']:.3g}× (batch < 64)")
        err = fold["grad_err"]
        cells.append(f"{err:.1e} {'met' if err <= 1e-8 else 'missed'}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_backward(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r["case"] for r in rows))
    methods = ["foldgen", "unrolled", "autograd-fold", "cvxpylayers", "qpth"]
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(cases) + 2))
    height = 0.8 / len(methods)
    for j, method in enumerate(methods):
        ys, widths = [], []
        for i, case in enumerate(cases):
            found = [
                r for r in rows if r["case"] == case and r["method"] == method and "bwd_ms" in r
            ]
            if found:
                ys.append(i + j * height)
                widths.append(found[0]["bwd_ms"])
        ax.barh(ys, widths, height=height, label=method)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(cases))], cases, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("backward time, ms (median, log scale)")
    ax.set_title("Backward pass of ⟨g, x*⟩ on the same data (foldgen: first method of each case)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(rows, header, out):
    """Print the table and the targets; write table.md and backward.png."""
    text = f"{header}\n\n{markdown(rows)}\n\n## Targets\n\n{targets(rows) if rows else ''}\n"
    print(f"\n{text}")
    (out / "table.md").write_text(text)
    if rows:
        plot_backward(rows, out / "backward.png")


def read_results(out):
    """The rows of results.csv (numbers as floats) and the run's header line."""
    numeric = {"fwd_ms", "bwd_ms", "peak_mb", "grad_err", "bwd_x", "total_x"}
    with open(out / "results.csv") as f:
        rows = [
            {k: (float(v) if k in numeric else v) for k, v in row.items() if v != ""}
            for row in csv.DictReader(f)
        ]
    return rows, (out / "header.txt").read_text().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per median")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per median at most")
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--no-study", action="store_true", help="skip the convergence study")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--render",
        action="store_true",
        help="only redo table.md and backward.png from results.csv",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats, args.budget = min(args.repeats, 3), min(args.budget, 2.0)
    warnings.filterwarnings("ignore", category=UserWarning)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.render:
        rows, header = read_results(args.out)
        write_outputs(rows, header, args.out)
        return
    rows = []
    started = time.perf_counter()
    for case in make_cases(args.quick):
        if args.only not in case.name:
            continue
        print(f"{case.name}", flush=True)
        rows.extend(run_case(case, args.repeats, args.budget, lambda s: print(s, flush=True)))
    stamp = time.strftime("%Y-%m-%d")
    header = f"torch {torch.__version__}, {torch.get_num_threads()} threads, float64, {stamp}"
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in FIELDS})
    (args.out / "header.txt").write_text(header + "\n")
    write_outputs(rows, header, args.out)
    if not args.no_study:
        print(study(args.out, quick=args.quick))
    print(f"total {time.perf_counter() - started:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
