"""foldgen against its peers, side by side on the same data, in one process.

    python benchmarks/run.py --threads 1            # the full table and study (~35 min, 2 cores)
    python benchmarks/run.py --threads 1 --scaling  # the scaling study alone (~5 min)
    python benchmarks/run.py --quick                # small sizes, a smoke run (about 2 min)
    python benchmarks/run.py --render               # the tables and plots again from the CSVs

Prints markdown tables and writes results.csv, table.md, times.png, convergence.csv and
convergence.png (with --scaling: scaling.csv, scaling.md, scaling.png) to --out (default
benchmarks/results). Times are medians of repeated runs (forward: one solve, inputs requiring
grad; backward: one gradient of ⟨g, x*⟩ on a recorded forward); memory is the peak of live
torch tensors during forward + backward; the gradient error is relative to the float64 dense
KKT implicit-differentiation reference. Each case has a floor row where one is defined (the
exact answer's factorisations and solves given x*'s active structure; see the cases in
problems.py) and a hand-written loop where it is ten lines; every row's times are also given
as ratios to the floor and to foldgen, and the issue's targets are judged from those.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import time
import warnings
from pathlib import Path

import scaling
import torch
from convergence import study
from memory import PeakMemory
from peers import AutogradFold, Cvxpylayers, Floor, Foldgen, HandLoop, Qpth, Unrolled
from problems import make_cases
from reference import batched_kkt_gradient, relative_error

HERE = Path(__file__).resolve().parent
FIELDS = [
    "case", "method", "solver", "fwd_ms", "bwd_ms", "peak_mb", "grad_err", "fwd_floor_x",
    "bwd_floor_x", "fwd_x", "bwd_x", "total_x", "fwd_iters", "bwd_iters", "converged", "runs",
]  # fmt: skip
NUMERIC = {
    "fwd_ms", "bwd_ms", "peak_mb", "grad_err", "fwd_floor_x", "bwd_floor_x", "fwd_x", "bwd_x",
    "total_x",
}  # fmt: skip
CVX_TIGHT = "cvxpylayers eps=1e-8"
TIGHT_ARGS = {"eps": 1e-8}  # SCS's eps_abs = eps_rel (diffcp maps eps to both)


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
        log(f"  {label:20s} {solver[:40]:40s} {time.perf_counter() - start:6.1f} s")
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
            layer = fold.layer
    if case.solution is not None:
        x_star = case.solution().detach()
    if case.floor is not None:
        forward, backward, setting = case.floor(x_star, weight, iterations)
        add("floor", Floor(forward, backward, setting), setting)
    if case.loop is not None:
        loop = HandLoop(case, weight, layer.tol, layer.max_iter)
        add("loop", loop, "")
        rows[-1]["solver"] = f"{loop.iterations} iterations; bwd: autograd through the loop"
    skip = unrolled_too_big(case, weight, log)
    if skip:
        rows.append({"case": case.name, "method": "unrolled", "solver": skip})
        gradients.append(None)
    else:
        add("unrolled", Unrolled(case, weight), f"{iterations} iterations")
    # The peer has LFPI, GMRES and the dense solve; GMRES stands in for foldgen's own
    # structured solves (active_set), which a hand-written fold would not have.
    peer_solver = solver if solver in ("direct", "lfpi", "gmres") else "gmres"
    add("autograd-fold", AutogradFold(case, weight, peer_solver), peer_solver)
    if case.cvxpylayer is not None:
        add("cvxpylayers", Cvxpylayers(case, weight), "default")
        add(CVX_TIGHT, Cvxpylayers(case, weight, TIGHT_ARGS), "SCS eps 1e-8")
    if case.qpth is not None:
        add("qpth", Qpth(case, weight), "default")
    reference = batched_kkt_gradient(
        case.local, x_star, case.params(), case.batched, weight, case.grad
    )
    for row, grads in zip(rows, gradients):
        if grads is not None:  # None: not run, or a floor that only times its solves
            row["grad_err"] = relative_error(grads, reference)
    return add_ratios(rows)


def add_ratios(rows):
    """Each row's times against its case's floor and first foldgen row: fwd_floor_x and
    bwd_floor_x (row ÷ floor), fwd_x, bwd_x and total_x (row ÷ foldgen, fwd + bwd for the
    total). Rows without times, and ratios without a floor, are left out. Returns rows."""
    for case in dict.fromkeys(r["case"] for r in rows):
        mine = [r for r in rows if r["case"] == case]
        base = next(r for r in mine if r["method"] == "foldgen")
        floor = next((r for r in mine if r["method"] == "floor" and "fwd_ms" in r), None)
        for r in mine:
            if "fwd_ms" not in r:
                continue
            r["fwd_x"] = r["fwd_ms"] / base["fwd_ms"]
            r["bwd_x"] = r["bwd_ms"] / base["bwd_ms"]
            r["total_x"] = (r["fwd_ms"] + r["bwd_ms"]) / (base["fwd_ms"] + base["bwd_ms"])
            if floor is not None:
                r["fwd_floor_x"] = r["fwd_ms"] / floor["fwd_ms"]
                r["bwd_floor_x"] = r["bwd_ms"] / floor["bwd_ms"]
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
    head = (
        "| case | method | setting | fwd ms | bwd ms | peak MB | grad rel err | fwd ÷ floor "
        "| bwd ÷ floor | fwd ÷ foldgen | bwd ÷ foldgen | total ÷ foldgen |"
    )
    lines = [head, "|" + " --- |" * 12]
    for r in rows:
        solver = r["solver"]
        if r.get("fwd_iters"):  # foldgen: iterations (forward, backward), converged elements
            solver += f"; it {r['fwd_iters']}/{r['bwd_iters']}; conv {r['converged']}"
        cells = [
            r["case"], r["method"], solver, fmt(r.get("fwd_ms"), "ms"),
            fmt(r.get("bwd_ms"), "ms"), fmt(r.get("peak_mb"), "mb"),
            fmt(r.get("grad_err"), "err"), fmt(r.get("fwd_floor_x"), "x"),
            fmt(r.get("bwd_floor_x"), "x"), fmt(r.get("fwd_x"), "x"), fmt(r.get("bwd_x"), "x"),
            fmt(r.get("total_x"), "x"),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(ratio, goal):
    """'12.3× met' or '1.2× missed' against a speed-up goal."""
    return f"{ratio:.3g}× {'met' if ratio >= goal else 'missed'}"


def targets(rows):
    """The earlier per-case targets: speed-ups of foldgen's backward over runtime-autograd
    folding (≥10×) and over unrolling (≥5×, at its own accuracy), of forward + backward over
    cvxpylayers at batch 64 (≥30×), and foldgen's gradient error (≤1e-8)."""
    head = (
        "| case | bwd: autograd-fold ÷ foldgen (≥10×) | bwd: unrolled ÷ foldgen (≥5×), "
        "unrolled err | total: cvxpylayers ÷ foldgen (≥30× at b=64) | foldgen err (≤1e-8) |"
    )
    lines = [head, "|" + " --- |" * 5]
    for case in dict.fromkeys(r["case"] for r in rows):
        mine = _by_method(rows, case)
        fold = mine["foldgen"]
        folded = mine.get("autograd-fold", {})
        cells = [case, verdict(folded["bwd_x"], 10) if "bwd_x" in folded else "not run"]
        unrolled = mine.get("unrolled", {"solver": "not run"})
        if "bwd_x" in unrolled and math.isnan(unrolled.get("grad_err", math.nan)):
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
        err = fold.get("grad_err", math.nan)
        cells.append(f"{err:.1e} {'met' if err <= 1e-8 else 'missed'}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _by_method(rows, case):
    """The case's rows by method (the first row of each: foldgen's first backward method)."""
    mine = {}
    for r in rows:
        if r["case"] == case:
            mine.setdefault(r["method"], r)
    return mine


def _total(r):
    return r["fwd_ms"] + r["bwd_ms"]


def _check(mine, needed, ratio, goal, at_most, what):
    """(figure, verdict) for ratio(mine) against goal: 'met' when ratio ≤ goal (at_most) or
    ≥ goal; 'n/a' when a needed row is missing or was not run."""
    absent = [m for m in needed if "fwd_ms" not in mine.get(m, {})]
    if absent:
        return f"{', '.join(absent)} not run", "n/a"
    value = ratio(mine)
    met = value <= goal if at_most else value >= goal
    return f"{what(mine)}: {value:.3g}×", "met" if met else "missed"


def _ms(value):
    return fmt(value, "ms") + " ms"


# (which cases, target, methods needed, ratio, goal, at most?, the figures behind the ratio)
TARGETS = [
    (
        ("box_qp n=100 b=64", "box_qp n=500 b=64"), "forward ≤ hand-written loop",
        ("loop",), lambda m: m["foldgen"]["fwd_ms"] / m["loop"]["fwd_ms"], 1.0, True,
        lambda m: f"{_ms(m['foldgen']['fwd_ms'])} vs {_ms(m['loop']['fwd_ms'])}",
    ),
    (
        ("box_qp n=100 b=64", "box_qp n=500 b=64"), "backward ≤ 1.5× floor",
        ("floor",), lambda m: m["foldgen"]["bwd_ms"] / m["floor"]["bwd_ms"], 1.5, True,
        lambda m: f"{_ms(m['foldgen']['bwd_ms'])} vs {_ms(m['floor']['bwd_ms'])}",
    ),
    (
        ("box_qp n=100 b=64", "box_qp n=500 b=64"), "backward ≥ 10× faster than autograd-fold",
        ("autograd-fold",), lambda m: m["autograd-fold"]["bwd_ms"] / m["foldgen"]["bwd_ms"],
        10.0, False,
        lambda m: f"{_ms(m['autograd-fold']['bwd_ms'])} vs {_ms(m['foldgen']['bwd_ms'])}",
    ),
    (
        ("box_qp n=100 b=64", "box_qp n=500 b=64"), "backward ≥ 10× faster than unrolling",
        ("unrolled",), lambda m: m["unrolled"]["bwd_ms"] / m["foldgen"]["bwd_ms"], 10.0, False,
        lambda m: f"{_ms(m['unrolled']['bwd_ms'])} vs {_ms(m['foldgen']['bwd_ms'])}",
    ),
    (
        ("box_qp n=100 b=64", "box_qp n=500 b=64"), "fwd + bwd ≥ 30× faster than cvxpylayers",
        ("cvxpylayers",), lambda m: _total(m["cvxpylayers"]) / _total(m["foldgen"]), 30.0, False,
        lambda m: f"{_ms(_total(m['cvxpylayers']))} vs {_ms(_total(m['foldgen']))}",
    ),
    (
        ("box_qp n=100 b=64", "box_qp n=500 b=64"), "fwd + bwd ≥ 30× faster than " + CVX_TIGHT,
        (CVX_TIGHT,), lambda m: _total(m[CVX_TIGHT]) / _total(m["foldgen"]), 30.0, False,
        lambda m: f"{_ms(_total(m[CVX_TIGHT]))} vs {_ms(_total(m['foldgen']))}",
    ),
    (
        ("portfolio",), "forward ≤ 3× floor", ("floor",),
        lambda m: m["foldgen"]["fwd_ms"] / m["floor"]["fwd_ms"], 3.0, True,
        lambda m: f"{_ms(m['foldgen']['fwd_ms'])} vs {_ms(m['floor']['fwd_ms'])}",
    ),
    (
        ("portfolio",), "forward faster than " + CVX_TIGHT, (CVX_TIGHT,),
        lambda m: m[CVX_TIGHT]["fwd_ms"] / m["foldgen"]["fwd_ms"], 1.0, False,
        lambda m: f"{_ms(m[CVX_TIGHT]['fwd_ms'])} vs {_ms(m['foldgen']['fwd_ms'])}",
    ),
    (
        ("portfolio",), "backward ≤ 2× floor", ("floor",),
        lambda m: m["foldgen"]["bwd_ms"] / m["floor"]["bwd_ms"], 2.0, True,
        lambda m: f"{_ms(m['foldgen']['bwd_ms'])} vs {_ms(m['floor']['bwd_ms'])}",
    ),
    (
        ("tv_denoise",), "forward ≤ 1.5× the minimal loop", ("loop",),
        lambda m: m["foldgen"]["fwd_ms"] / m["loop"]["fwd_ms"], 1.5, True,
        lambda m: f"{_ms(m['foldgen']['fwd_ms'])} vs {_ms(m['loop']['fwd_ms'])}",
    ),
    (
        ("tv_denoise",), "fwd + bwd ≥ 3× faster than " + CVX_TIGHT, (CVX_TIGHT,),
        lambda m: _total(m[CVX_TIGHT]) / _total(m["foldgen"]), 3.0, False,
        lambda m: f"{_ms(_total(m[CVX_TIGHT]))} vs {_ms(_total(m['foldgen']))}",
    ),
    (
        ("inequality_qp",), "ADMM forward within 2× of qpth", ("qpth",),
        lambda m: m["foldgen"]["fwd_ms"] / m["qpth"]["fwd_ms"], 2.0, True,
        lambda m: f"{_ms(m['foldgen']['fwd_ms'])} vs {_ms(m['qpth']['fwd_ms'])}",
    ),
    (
        ("inequality_qp",), "ADMM more accurate than qpth (qpth err ÷ foldgen err)", ("qpth",),
        lambda m: m["qpth"]["grad_err"] / max(m["foldgen"]["grad_err"], 1e-300), 1.0, False,
        lambda m: f"{m['qpth']['grad_err']:.1e} vs {m['foldgen']['grad_err']:.1e}",
    ),
]  # fmt: skip


def target_lines(rows):
    """(case, target, figure, verdict) for every target of issue 12 that applies to a case of
    the run (a case matches a target's name exactly or by its family prefix), a 'not in this
    run' line for a named case that is absent, and per case convergence and gradient error."""
    cases = list(dict.fromkeys(r["case"] for r in rows))
    absent = {n for names, *_ in TARGETS for n in names if " " in n and n not in cases}
    lines = [(name, "its targets", "not in this run", "n/a") for name in sorted(absent)]
    for names, target, needed, ratio, goal, at_most, what in TARGETS:
        matched = [c for c in cases if any(c == n or c.startswith(n + " ") for n in names)]
        for case in matched:
            mine = _by_method(rows, case)
            lines.append((case, target, *_check(mine, needed, ratio, goal, at_most, what)))
    for case in cases:
        fold = _by_method(rows, case)["foldgen"]
        if case.startswith("inequality_qp"):
            done, total = fold.get("converged", "0/0").split("/")
            lines.append((case, "ADMM converged by default", fold.get("converged", "?"),
                          "met" if done == total else "missed"))  # fmt: skip
        err = fold.get("grad_err", math.nan)
        verdict = "met" if err <= 1e-8 else "missed"
        lines.append((case, "gradient ≤ 1e-8 relative", f"{err:.1e}", verdict))
    return lines


def issue_targets(rows):
    """The markdown table of `target_lines`, with a count of met targets."""
    found = target_lines(rows)
    lines = ["| case | target | figures | verdict |", "| --- | --- | --- | --- |"]
    lines += [
        f"| {case} | {target} | {figure} | {verdict} |" for case, target, figure, verdict in found
    ]
    met = sum(v == "met" for *_, v in found)
    judged = sum(v in ("met", "missed") for *_, v in found)
    return "\n".join(lines) + f"\n\nMet {met} of {judged} (n/a: not run or not in this run)."


PLOT_METHODS = [
    ("floor", "k", "|"), ("foldgen", "C0", "o"), ("loop", "C1", "s"), ("unrolled", "C2", "v"),
    ("autograd-fold", "C3", "^"), ("cvxpylayers", "C4", "D"), (CVX_TIGHT, "C5", "d"),
    ("qpth", "C6", "P"),
]  # fmt: skip


def _short(case):
    return case.replace("entropic_knapsack", "knapsack").replace(" scale=", " s=")


def plot_times(rows, path):
    """Forward, backward and their total per case and method, the floor as a black bar: one
    row per case, three log-scale panels (readable at ~800 px)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r["case"] for r in rows))
    plt.rcParams.update({"font.size": 14})
    fig, axes = plt.subplots(
        1, 3, figsize=(13, 0.42 * len(cases) + 2.6), sharey=True, constrained_layout=True
    )
    panels = [("forward", lambda r: r["fwd_ms"]), ("backward", lambda r: r["bwd_ms"]),
              ("forward + backward", _total)]  # fmt: skip
    for ax, (title, value) in zip(axes, panels):
        for j, (method, color, marker) in enumerate(PLOT_METHODS):
            ys, xs = [], []
            for i, case in enumerate(cases):
                r = _by_method(rows, case).get(method)
                if r is not None and "fwd_ms" in r:
                    ys.append(i)
                    xs.append(value(r))
            size = 300 if method == "floor" else 70
            ax.scatter(xs, ys, s=size, c=color, marker=marker, label=method, zorder=3,
                       linewidths=2.5 if method == "floor" else 0.5)  # fmt: skip
        ax.set_xscale("log")
        ax.set_title(title)
        ax.set_xlabel("ms (median, log)")
        ax.grid(True, axis="x", which="major", alpha=0.4)
        for i in range(len(cases)):
            ax.axhline(i, color="0.9", lw=0.8, zorder=0)
    axes[0].set_yticks(range(len(cases)), [_short(c) for c in cases], fontsize=13)
    axes[0].invert_yaxis()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=13)
    fig.suptitle("Time per case, one thread, float64 (floor: the exact answer's cost)")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(rows, header, out):
    """Print the tables; write table.md and times.png."""
    text = f"{header}\n\n{markdown(rows)}\n\n"
    if rows:
        text += f"## Targets (issue 12)\n\n{issue_targets(rows)}\n\n"
        text += f"## Targets per case\n\n{targets(rows)}\n"
    print(f"\n{text}")
    (out / "table.md").write_text(text)
    if rows:
        plot_times(rows, out / "times.png")


def read_results(out):
    """The rows of results.csv (numbers as floats) and the run's header line."""
    with open(out / "results.csv") as f:
        rows = [
            {k: (float(v) if k in NUMERIC else v) for k, v in row.items() if v not in ("", None)}
            for row in csv.DictReader(f)
        ]
    return add_ratios(rows), (out / "header.txt").read_text().strip()


def merge_rows(rows, names, out, note):
    """The earlier run's rows with the cases ``names`` replaced by ``rows`` (in the earlier
    order, new cases last), and its header with ``note`` added: a rerun of a few cases
    keeps the table whole."""
    old, header = read_results(out)
    fresh = {name: [r for r in rows if r["case"] == name] for name in names}
    merged, done = [], set()
    for row in old:
        if row["case"] not in fresh:
            merged.append(row)
        elif row["case"] not in done:
            merged.extend(fresh[row["case"]])
            done.add(row["case"])
    merged.extend(r for name in names if name not in done for r in fresh[name])
    return merged, f"{header}; {note}"


def write_scaling(rows, out, render=False):
    """scaling.csv (unless re-rendering), scaling.md (the exponents) and scaling.png."""
    if not render:
        scaling.write_csv(rows, out)
    stamp = time.strftime("%Y-%m-%d")
    header = f"torch {torch.__version__}, {torch.get_num_threads()} threads, float64, {stamp}"
    if render and (out / "scaling.md").exists():  # the run's own header, not this process's
        header = (out / "scaling.md").read_text().splitlines()[0]
    text = f"{header}\n\n{scaling.table(rows)}\n"
    print(f"\n{text}")
    (out / "scaling.md").write_text(text)
    scaling.plot(rows, out / "scaling.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per median")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per median at most")
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--no-study", action="store_true", help="skip the convergence study")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="with --only: replace those cases' rows in results.csv, keep the other cases'",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--render",
        action="store_true",
        help="only redo table.md and times.png from results.csv (and scaling.md and "
        "scaling.png from scaling.csv, where there is one)",
    )
    parser.add_argument(
        "--scaling",
        action="store_true",
        help="only the scaling study: box_qp time vs n and vs batch (scaling.csv, .md, .png)",
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
        if (args.out / "scaling.csv").exists():
            write_scaling(scaling.read(args.out), args.out, render=True)
        return
    started = time.perf_counter()
    if args.scaling:
        log = lambda s: print(s, flush=True)  # noqa: E731
        budget = min(args.budget, 5.0)
        found = scaling.run_scaling(
            args.quick, measure, args.repeats, budget, log, 5.0 if args.quick else 60.0
        )
        write_scaling(found, args.out)
        print(f"total {time.perf_counter() - started:.0f} s; wrote {args.out}")
        return
    rows, names = [], []
    for case in make_cases(args.quick):
        if args.only not in case.name:
            continue
        print(f"{case.name}", flush=True)
        names.append(case.name)
        rows.extend(run_case(case, args.repeats, args.budget, lambda s: print(s, flush=True)))
    stamp = time.strftime("%Y-%m-%d")
    header = f"torch {torch.__version__}, {torch.get_num_threads()} threads, float64, {stamp}"
    if args.merge and (args.out / "results.csv").exists():
        rows, header = merge_rows(rows, names, args.out, f"{args.only!r} rerun {stamp}")
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
