"""The same problems under every rule that can state them: what choosing a rule costs.

    python benchmarks/rules.py [--quick] [--repeats 3]

One process, one thread, float64, fixed data. Each problem is written once; only its
``solver`` line changes. For each rule: the forward and backward times (medians), the
iterations (most in the batch), the elements converged, and the largest gradient difference
from the first rule's (every rule's fixed point is the problem's solution, so they must
agree). The README's "Choosing a rule" table comes from this script's output.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

import foldgen

F64 = torch.float64

SOLVERS = {
    "pgd": "solver: {rule: pgd, max_iter: 20000, tol: 1.0e-10}",
    "admm": "solver: {rule: admm, max_iter: 20000, tol: 1.0e-10}",
    "sqp": "solver: {rule: sqp, max_iter: 200, tol: 1.0e-10}",
}


def spec(name, dims, parameters, objective, constraints, rule):
    lines = "\n".join(f"  - {c}" for c in constraints)
    params = "\n".join(f"  {p}" for p in parameters)
    return f"""
foldgen: 1
name: {name}_{rule}
dims: {{{dims}}}
parameters:
{params}
variables:
  x: {{shape: [n]}}
minimize: {objective}
constraints:
{lines}
{SOLVERS[rule]}
backward: {{method: auto, max_iter: 500, tol: 1.0e-10}}
"""


def _spd(n, gen):
    a = torch.randn(n, n, generator=gen, dtype=F64)
    return a @ a.T / n + 0.1 * torch.eye(n, dtype=F64)


def problems(quick):
    """(name, features, spec pieces, rules, bound inputs, call inputs, grad input)."""
    gen = torch.Generator().manual_seed(0)
    n, batch = (20, 8) if quick else (50, 16)
    Q = _spd(n, gen)
    quad = ["Q: {shape: [n, n], grad: false}", "c: {shape: [n]}"]
    yield (
        f"box QP (n={n})",
        "quadratic, bounds",
        (f"n: {n}", quad, "0.5 * quad_form(x, Q) + c @ x", ["0 <= x <= 1"]),
        ("pgd", "admm", "sqp"),
        {"Q": Q},
        {"c": torch.randn(batch, n, generator=gen, dtype=F64)},
        "c",
    )
    yield (
        f"simplex projection (n={n})",
        "projection, bounds + sum",
        (
            f"n: {n}",
            ["c: {shape: [n]}"],
            "0.5 * sum_squares(x - c)",
            ["x >= 0", "sum(x) == 1"],
        ),
        ("pgd", "admm", "sqp"),
        {},
        {"c": torch.randn(batch, n, generator=gen, dtype=F64)},
        "c",
    )
    m = 4
    A = torch.randn(m, n, generator=gen, dtype=F64)
    yield (
        f"equality QP (n={n}, m={m})",
        "quadratic, equalities",
        (
            f"n: {n}, m: {m}",
            [*quad, "A: {shape: [m, n], grad: false}", "b: {shape: [m]}"],
            "0.5 * quad_form(x, Q) + c @ x",
            ["A @ x == b"],
        ),
        ("pgd", "admm", "sqp"),
        {"Q": Q, "A": A},
        {
            "c": torch.randn(batch, n, generator=gen, dtype=F64),
            "b": torch.randn(batch, m, generator=gen, dtype=F64),
        },
        "c",
    )
    p = 15
    G = torch.randn(p, n, generator=gen, dtype=F64)
    yield (
        f"inequality QP (n={n}, p={p})",
        "quadratic, general inequalities",
        (
            f"n: {n}, p: {p}",
            [*quad, "G: {shape: [p, n], grad: false}", "h: {shape: [p]}"],
            "0.5 * quad_form(x, Q) + c @ x",
            ["G @ x <= h", "-1 <= x <= 1"],
        ),
        ("admm", "sqp"),
        {"Q": Q, "G": G},
        {
            "c": torch.randn(batch, n, generator=gen, dtype=F64),
            "h": torch.rand(batch, p, generator=gen, dtype=F64),
        },
        "c",
    )
    yield (
        f"entropic knapsack (n={n})",
        "smooth non-quadratic, bounds + sum",
        (
            f"n: {n}",
            ["c: {shape: [n]}"],
            "-(c @ x) - sum(entr(x)) - sum(entr(1 - x))",
            ["0 <= x <= 1", f"sum(x) == {n // 4}"],
        ),
        ("pgd", "sqp"),
        {},
        {"c": 3 * torch.randn(batch, n, generator=gen, dtype=F64)},
        "c",
    )
    yield (
        f"lasso (n={n})",
        "non-smooth objective (l1)",
        (
            f"n: {n}",
            quad,
            "0.5 * quad_form(x, Q) + c @ x + 0.1 * norm1(x)",
            ["-1 <= x <= 1"],
        ),
        ("admm",),
        {"Q": Q},
        {"c": torch.randn(batch, n, generator=gen, dtype=F64)},
        "c",
    )


def median_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def measure(text, bound, inputs, grad, repeats):
    layer = foldgen.compile(text)(**bound, on_nonconvergence="ignore")
    weight = torch.randn(
        next(iter(inputs.values())).shape[:1] + (layer(**inputs).shape[-1],),
        generator=torch.Generator().manual_seed(1),
        dtype=F64,
    )
    state = {}

    def forward():
        state["inputs"] = {k: v.clone().requires_grad_(k == grad) for k, v in inputs.items()}
        state["x"] = layer(**state["inputs"])

    def backward():
        (state["g"],) = torch.autograd.grad((state["x"] * weight).sum(), state["inputs"][grad])

    forward_ms = median_ms(forward, repeats)
    backward_times = []
    for _ in range(repeats):
        forward()
        backward_times.append(median_ms(backward, 1))
    info, back = layer.info, layer.backward_info
    return {
        "forward_ms": forward_ms,
        "backward_ms": statistics.median(backward_times),
        "iterations": int(info.iterations.max()),
        "converged": f"{int((info.converged & back.converged).sum())}/{info.converged.numel()}",
        "g": state["g"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke run)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    print("| problem | features | rule | forward ms | backward ms | iterations | converged "
          "| gradient vs first rule |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, features, pieces, rules, bound, inputs, grad in problems(args.quick):
        first = None
        slug = name.split(" (")[0].lower().replace(" ", "_").replace("-", "_")
        for rule in rules:
            row = measure(spec(slug, *pieces, rule), bound, inputs, grad, args.repeats)
            if first is None:
                first, diff = row["g"], "—"
            else:
                scale = float(first.abs().max().clamp_min(1.0))
                diff = f"{float((row['g'] - first).abs().max()) / scale:.1e}"
            print(
                f"| {name} | {features} | {rule} | {row['forward_ms']:.1f} | "
                f"{row['backward_ms']:.1f} | {row['iterations']} | {row['converged']} | {diff} |"
            )


if __name__ == "__main__":
    main()
