"""Backward pass of the generated BoxQp layer against autograd through unrolled PGD.

Both differentiate the same forward (PGD, α = 1/L, run to the spec's tolerance) on the same
data: n = 100, batch 64, float64 by default. Times are medians of repeated runs of the
backward alone; both gradients are compared with the exact active-set gradient
∂L/∂c_F = −(Q_FF)⁻¹ g_F (zero on the components at a bound).

    python examples/box_qp_backward.py [--n 100] [--batch 64] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import load_generated


def exact_gradient(q, x, g):
    """−(Q_FF)⁻¹ g_F on the free set F of each element, zero elsewhere."""
    out = torch.zeros_like(g)
    for i in range(g.shape[0]):
        free = (x[i] > 0) & (x[i] < 1)
        sub = q[free][:, free]
        out[i, free] = -torch.linalg.solve(sub, g[i, free])
    return out


def unrolled(q, c, alpha, iterations):
    """PGD written in torch, differentiated by autograd through every iteration."""
    x = torch.zeros_like(c)
    for _ in range(iterations):
        x = torch.clamp(x - alpha * ((q @ x.unsqueeze(-1)).squeeze(-1) + c), 0.0, 1.0)
    return x


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--method", default="gmres", help="foldgen backward method")
    args = parser.parse_args()
    torch.manual_seed(0)
    n, batch = args.n, args.batch
    dtype = torch.float64
    box_qp = load_generated("box_qp")
    a = torch.randn(n, n, dtype=dtype)
    q = a @ a.T / n + 0.1 * torch.eye(n, dtype=dtype)
    c = torch.randn(batch, n, dtype=dtype)
    weight = torch.randn(batch, n, dtype=dtype)
    layer = box_qp.BoxQp(Q=q, backward_method=args.method)

    c_fold = c.clone().requires_grad_()
    x_fold = layer(c_fold)
    iterations = int(layer.info.iterations.max())
    alpha = float(layer.info.step[0])

    def fold_backward():
        c_fold.grad = None
        (layer(c_fold) * weight).sum().backward()

    def fold_forward():
        with torch.no_grad():
            layer(c_fold)

    c_unroll = c.clone().requires_grad_()

    def unroll_backward():
        c_unroll.grad = None
        (unrolled(q, c_unroll, alpha, iterations) * weight).sum().backward()

    def unroll_forward():
        with torch.no_grad():
            unrolled(q, c_unroll, alpha, iterations)

    fold_total = median_time(fold_backward, args.repeats)
    fold_fwd = median_time(fold_forward, args.repeats)
    unroll_total = median_time(unroll_backward, args.repeats)
    unroll_fwd = median_time(unroll_forward, args.repeats)
    exact = exact_gradient(q, x_fold.detach(), weight)
    fold_err = ((c_fold.grad - exact).norm() / exact.norm()).item()
    unroll_err = ((c_unroll.grad - exact).norm() / exact.norm()).item()
    fold_bwd = fold_total - fold_fwd
    unroll_bwd = unroll_total - unroll_fwd
    print(
        f"box_qp  n={n} batch={batch} float64, PGD forward {iterations} iterations, α = {alpha:.4g}"
    )
    print("| backward | time (median) | relative gradient error vs exact |")
    print("| --- | --- | --- |")
    print(f"| foldgen ({layer.backward_info.method}) | {fold_bwd * 1e3:.1f} ms | {fold_err:.1e} |")
    print(
        f"| autograd through {iterations} unrolled iterations | {unroll_bwd * 1e3:.1f} ms | {unroll_err:.1e} |"
    )
    print(
        f"speed-up: {unroll_bwd / fold_bwd:.1f}x "
        f"(backward = median(forward+backward) − median(forward), {args.repeats} runs each)"
    )


if __name__ == "__main__":
    main()
