"""Shared by the examples: import a generated module from generated/ without installing it."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

import foldgen

ROOT = Path(__file__).resolve().parent.parent


def load_generated(name: str):
    """generated/<name>.py as a module (build it first: foldgen build specs/*.yaml)."""
    path = ROOT / "generated" / f"{name}.py"
    if not path.exists():
        sys.exit(f"{path} is missing: run `foldgen build specs/{name}.yaml` first")
    return foldgen.load_generated(path)


class ChunkedLayer:
    """A generated layer called on chunks of the batch, counting the solves that did not
    converge (forward and backward) instead of hiding them.

    Every input is split along the batch axis (positional or named: all batched); the result
    is the solutions (a tuple for several variables) and a mask of the converged ones (the
    caller leaves the others out of its loss).
    """

    def __init__(self, layer, chunk):
        self.layer, self.chunk = layer, chunk
        self.solves = self.failed = self.backward_failed = 0

    def __call__(self, *inputs, **named):
        parts = [t.split(self.chunk) for t in inputs]
        named_parts = {k: t.split(self.chunk) for k, t in named.items()}
        xs, oks = [], []
        for i in range(len([*parts, *named_parts.values()][0])):
            args = [p[i] for p in parts]
            xs.append(self.layer(*args, **{k: p[i] for k, p in named_parts.items()}))
            oks.append(self.layer.info.converged)
        ok = torch.cat(oks)
        self.solves += ok.numel()
        self.failed += int((~ok).sum())
        if isinstance(xs[0], tuple):  # several variables: each joined over the chunks
            return tuple(torch.cat(v) for v in zip(*xs)), ok
        return torch.cat(xs), ok

    def after_backward(self):
        info = self.layer.backward_info
        if info is not None:
            self.backward_failed += int((~info.converged).sum())


def train_and_track(name, model, loss_of, evaluate, *, samples, batch, epochs, lr, seed, after_backward=None):  # fmt: skip
    """Adam on mini-batches of ``samples`` rows, the same batches for every method (seeded);
    ``evaluate(model)`` runs before training and after each epoch (its first entry is printed as
    the test regret). Returns the evaluations and the mean training seconds per epoch (the
    evaluations are not timed)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        evals = [evaluate(model)]
    train_time = 0.0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        total = 0.0
        for rows in torch.randperm(samples, generator=order).split(batch):
            loss = loss_of(model, rows)
            optimizer.zero_grad()
            loss.backward()
            if after_backward is not None:
                after_backward()
            optimizer.step()
            total += loss.item() * len(rows)
        seconds = time.perf_counter() - start
        train_time += seconds
        with torch.no_grad():
            evals.append(evaluate(model))
        print(
            f"{name:<16} epoch {epoch:2d}  train loss {total / samples:+.5f}  "
            f"test regret {evals[-1][0]:.4f}  {seconds:.2f} s/epoch"
        )
    return evals, train_time / epochs


def plot_regret(results, reference, reference_label, title, path, styles=None, difference=None):
    """Test regret per epoch of each method, with a reference level; saved to ``path``.

    ``difference``, a pair of method names (a, b) whose curves lie on top of each other,
    adds a lower panel with a − b per epoch, so that the agreement is visible rather than
    one curve hidden under the other."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    if difference is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    else:
        fig, (ax, low) = plt.subplots(
            2, 1, figsize=(6.4, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]}
        )
    for name, result in results.items():
        style = dict(marker="o", markersize=4)
        style.update((styles or {}).get(name, {}))
        ax.plot(range(len(result["history"])), result["history"], label=name, **style)
    ax.axhline(reference, color="gray", linestyle=":", label=reference_label)
    ax.set_ylabel("normalized regret (test)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    if difference is not None:
        a, b = difference
        gap = [x - y for x, y in zip(results[a]["history"], results[b]["history"])]
        low.plot(range(len(gap)), gap, marker="o", markersize=4, color="C3")
        low.axhline(0, color="gray", lw=0.8)
        low.set_ylabel(f"{a} − {b}", fontsize=8)
        low.grid(alpha=0.3)
        low.set_xlabel("epoch")
    else:
        ax.set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
