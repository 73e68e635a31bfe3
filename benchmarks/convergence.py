"""Backward-convergence study (the paper's analysis): the gradient error against the number of
forward iterations, for unrolling and for folding with LFPI, GMRES and a dense solve, and the
peak memory of forward + backward against the same count.

The forward runs exactly T iterations (tol 0); unrolling differentiates those T iterations,
folding solves its adjoint system at x_T. The error is against the KKT reference at the
converged solution.
"""

from __future__ import annotations

import csv

import torch
from memory import PeakMemory
from peers import Foldgen, Unrolled
from problems import box_qp, quadratic
from reference import batched_kkt_gradient, relative_error

METHODS = ["lfpi", "gmres", "direct"]


def _problems(quick):
    gen = torch.Generator().manual_seed(1)
    n, batch = (20, 4) if quick else (100, 16)
    return [quadratic(n, batch, 100, gen), box_qp(n, batch, gen)]


def _at(case, iterations, weight, method=None):
    """A runner whose forward stops after exactly ``iterations`` iterations."""
    settings = dict(
        max_iter=iterations,
        tol=0.0,
        backward_max_iter=100_000,
        backward_tol=1e-13,
        fold_unconverged=True,
    )
    if method is None:
        return Unrolled(case, weight, **settings)
    return Foldgen(case, weight, method, **settings)


def study(out, quick=False):
    counts = [1, 3, 10, 30] if quick else [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    rows = []
    for case in _problems(quick):
        torch.manual_seed(0)
        converged = Foldgen(case, None)
        x = converged.forward().detach()
        weight = torch.randn_like(x)
        reference = batched_kkt_gradient(
            case.local, x, case.params(), case.batched, weight, case.grad
        )
        for count in counts:
            row = {"case": case.name, "iterations": count}
            for label, method in [("unrolled", None)] + [(f"fold-{m}", m) for m in METHODS]:
                runner = _at(case, count, weight, method)
                with PeakMemory() as memory:
                    grads = runner.backward(runner.forward())
                row[f"{label}_err"] = relative_error(grads, reference)
                row[f"{label}_mb"] = memory.peak / 2**20
            rows.append(row)
    with open(out / "convergence.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _plot(rows, out / "convergence.png")
    return _summary(rows)


def _summary(rows):
    labels = ["unrolled"] + [f"fold-{m}" for m in METHODS]
    head = "| case | T | " + " | ".join(f"{k} err" for k in labels)
    head += " | unrolled MB | fold-gmres MB |"
    lines = [head, "|" + " --- |" * (len(labels) + 4)]
    for r in rows:
        errs = " | ".join(f"{r[f'{k}_err']:.1e}" for k in labels)
        mem = f"{r['unrolled_mb']:.3g} | {r['fold-gmres_mb']:.3g}"
        lines.append(f"| {r['case']} | {r['iterations']} | {errs} | {mem} |")
    return "\n".join(lines)


def _plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r["case"] for r in rows))
    fig, axes = plt.subplots(1, len(cases) + 1, figsize=(5 * (len(cases) + 1), 4))
    labels = ["unrolled"] + [f"fold-{m}" for m in METHODS]
    styles = {"unrolled": "o-", "fold-lfpi": "s--", "fold-gmres": "^-.", "fold-direct": "x:"}
    for ax, case in zip(axes, cases):
        mine = [r for r in rows if r["case"] == case]
        counts = [r["iterations"] for r in mine]
        for label in labels:
            errors = [max(r[f"{label}_err"], 1e-17) for r in mine]
            ax.loglog(counts, errors, styles[label], label=label)
        ax.set_title(f"gradient error vs forward iterations\n{case}", fontsize=9)
        ax.set_xlabel("forward iterations T")
        ax.set_ylabel("relative error vs KKT reference")
        ax.legend(fontsize=8)
    ax = axes[-1]
    for case in cases:
        mine = [r for r in rows if r["case"] == case]
        counts = [r["iterations"] for r in mine]
        short = case.split(" ")[0]
        ax.loglog(counts, [r["unrolled_mb"] for r in mine], "o-", label=f"unrolled, {short}")
        ax.loglog(counts, [r["fold-gmres_mb"] for r in mine], "^-.", label=f"foldgen, {short}")
    ax.set_title("peak memory of forward + backward", fontsize=9)
    ax.set_xlabel("forward iterations T")
    ax.set_ylabel("MB of live torch tensors")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
