"""Scaling study (``python benchmarks/run.py --scaling``): box_qp forward and backward time against n at batch
64 and against the batch at n = 100, for foldgen, qpth and the floor (the active-set Cholesky,
`problems.box_qp`'s floor), with the log-log slope of each (time ∝ size^slope).

A point whose predicted time (the last point's forward + backward, extrapolated with the slope
so far, or n³ / batch¹ before two points) exceeds POINT_LIMIT_S is skipped and recorded as
such, so that qpth's large sizes do not take the run past ~10 minutes.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path

import torch
from peers import Floor, Foldgen, Qpth
from problems import box_qp

METHODS = ["foldgen", "qpth", "floor"]
FIELDS = ["sweep", "method", "n", "batch", "fwd_ms", "bwd_ms", "runs", "note"]


def sweeps(quick: bool) -> list[tuple[str, list[tuple[int, int]]]]:
    """(name, [(n, batch), …]) of each sweep."""
    if quick:
        return [("n", [(n, 8) for n in (10, 20, 40)]), ("batch", [(20, b) for b in (1, 4, 16)])]
    return [
        ("n", [(n, 64) for n in (20, 50, 100, 200, 500, 1000)]),
        ("batch", [(100, b) for b in (1, 8, 64, 512)]),
    ]


def slope(sizes: list[float], times: list[float]) -> float:
    """The least-squares slope of log(time) against log(size); NaN below two points."""
    if len(sizes) < 2:
        return math.nan
    xs, ys = [math.log(s) for s in sizes], [math.log(t) for t in times]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else math.nan


def _runner(method: str, case, weight):
    if method == "foldgen":
        return Foldgen(case, weight)
    if method == "qpth":
        return Qpth(case, weight)
    fold = Foldgen(case, weight)
    x = fold.forward().detach()
    forward, backward, setting = case.floor(x, weight, int(fold.layer.info.iterations.max()))
    return Floor(forward, backward, setting)


def run_scaling(
    quick: bool, measure: Callable, repeats: int, budget: float, log: Callable, limit: float
) -> list[dict]:
    """The study's rows (one per sweep, method and point; skipped points carry a note)."""
    rows = []
    for sweep, points in sweeps(quick):
        for method in METHODS:
            done: list[tuple[float, float]] = []  # (size, fwd + bwd seconds)
            for n, batch in points:
                size = n if sweep == "n" else batch
                row = {"sweep": sweep, "method": method, "n": n, "batch": batch}
                rows.append(row)
                if done:
                    fitted = slope([s for s, _ in done], [t for _, t in done])
                    power = fitted if not math.isnan(fitted) else (3.0 if sweep == "n" else 1.0)
                    predicted = done[-1][1] * (size / done[-1][0]) ** max(power, 0.0)
                    if predicted > limit:
                        row["note"] = f"skipped: predicted {predicted:.0f} s > {limit:g} s"
                        log(f"  {sweep} {method:8s} n={n} b={batch}: {row['note']}")
                        continue
                case = box_qp(n, batch, torch.Generator().manual_seed(n * 1000 + batch))
                torch.manual_seed(0)
                weight = torch.randn(batch, n, dtype=torch.float64)
                timed, _, _ = measure(_runner(method, case, weight), repeats, budget)
                row.update(fwd_ms=timed["fwd_ms"], bwd_ms=timed["bwd_ms"], runs=timed["runs"])
                done.append((size, (timed["fwd_ms"] + timed["bwd_ms"]) / 1e3))
                log(f"  {sweep} {method:8s} n={n} b={batch}: "
                    f"{timed['fwd_ms']:.3g} + {timed['bwd_ms']:.3g} ms")  # fmt: skip
    return rows


def exponents(rows: list[dict]) -> list[dict]:
    """Per sweep and method: the fitted slopes of forward and backward, and over what range."""
    found = []
    for sweep in dict.fromkeys(r["sweep"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["sweep"] == sweep and r["method"] == method]
            timed = [r for r in mine if r.get("fwd_ms") not in (None, "")]
            if not mine:
                continue
            key = "n" if sweep == "n" else "batch"
            sizes = [float(r[key]) for r in timed]
            found.append({
                "sweep": sweep, "method": method,
                "fwd": slope(sizes, [float(r["fwd_ms"]) for r in timed]),
                "bwd": slope(sizes, [float(r["bwd_ms"]) for r in timed]),
                "range": f"{key} {int(min(sizes))}–{int(max(sizes))}" if sizes else "none",
                "skipped": len(mine) - len(timed),
            })  # fmt: skip
    return found


def table(rows: list[dict]) -> str:
    """The markdown table of `exponents`."""
    lines = [
        "| sweep | method | fwd exponent | bwd exponent | measured over | skipped points |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for e in exponents(rows):
        lines.append(
            f"| time vs {e['sweep']} | {e['method']} | {e['fwd']:.2f} | {e['bwd']:.2f} | "
            f"{e['range']} | {e['skipped']} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 13})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), constrained_layout=True)
    colors = {"foldgen": "C0", "qpth": "C6", "floor": "k"}
    slopes = {(e["sweep"], e["method"]): e for e in exponents(rows)}
    for ax, sweep in zip(axes, ["n", "batch"]):
        for method in METHODS:
            timed = [
                r for r in rows
                if r["sweep"] == sweep and r["method"] == method and r.get("fwd_ms") not in (None, "")
            ]  # fmt: skip
            if not timed:
                continue
            sizes = [float(r[sweep]) for r in timed]
            e = slopes[(sweep, method)]
            for part, style in (("fwd", "-o"), ("bwd", "--s")):
                times = [float(r[f"{part}_ms"]) for r in timed]
                label = f"{method} {part} (slope {e[part]:.2f})"
                ax.plot(sizes, times, style, color=colors[method], label=label, lw=2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        mine = [r for r in rows if r["sweep"] == sweep]
        if mine:
            ticks = sorted({int(r[sweep]) for r in mine})
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
            other = "batch" if sweep == "n" else "n"
            ax.set_xlabel(f"{sweep} ({other} = {mine[0][other]})")
        ax.set_ylabel("ms (median, log)")
        ax.set_title(f"box_qp: time vs {sweep}")
        ax.grid(True, which="major", alpha=0.4)
        if ax.get_lines():
            ax.legend(fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_csv(rows: list[dict], out: Path) -> None:
    with open(out / "scaling.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in FIELDS})


def read(out: Path) -> list[dict]:
    with open(out / "scaling.csv") as f:
        return list(csv.DictReader(f))
