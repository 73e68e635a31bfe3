"""Backward pass of the generated BoxQp layer against autograd through the unrolled forward.

Both differentiate the same forward algorithm (accelerated PGD, α = 1/L, as many iterations
as the layer needed to reach the spec's tolerance) on the same data: n = 100, batch 64, float64 by default. Times are medians of repeated runs of the
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
    """The layer's forward algorithm (accelerated PGD with restarts, α = 1/L) written in
    torch and differentiated by autograd through every iteration."""

    def gradient(x):
        return (q @ x.unsqueeze(-1)).squeeze(-1) + c

    x = x_prev = torch.zeros_like(c)
    t = torch.ones(c.shape[:-1], dtype=c.dtype)
    for _ in range(iterations):
        t_next = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        y = x + ((t - 1) / t_next)[..., None] * (x - x_prev)
        fast = torch.clamp(y - alpha * gradient(y), 0.0, 1.0)
        plain = torch.clamp(x - alpha * gradient(x), 0.0, 1.0)
        restart = ((y - fast) * (fast - x)).sum(-1) > 0
        x, x_prev = torch.where(restart[..., None], plain, fast), x
        t = torch.where(restart, 1.0, t_next)
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
