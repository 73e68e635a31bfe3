"""Train a small network through the generated BoxQp layer.

A hidden linear map turns features into the linear term c of a box-constrained QP; the
network sees only (features, optimal solution) pairs and learns c so that the layer's
solutions match. Gradients reach the network through the layer's folded backward.

    python examples/train_box_qp.py            # full run (~15 s on 2 cores)
    python examples/train_box_qp.py --quick    # a few seconds
    python examples/train_box_qp.py --quick --from-spec   # compile specs/box_qp.yaml in memory

``--from-spec`` skips generated/: ``foldgen.compile`` builds the layer class from the spec
in the process (the same source ``foldgen build`` writes), as a notebook would.
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import ROOT, load_generated

import foldgen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few epochs on a small problem")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--from-spec", action="store_true", help="foldgen.compile the spec instead of importing"
    )
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    n, features, samples = (20, 8, 128) if args.quick else (50, 16, 512)
    epochs = 5 if args.quick else 40

    if args.from_spec:
        BoxQp = foldgen.compile(ROOT / "specs" / "box_qp.yaml")
    else:
        BoxQp = load_generated("box_qp").BoxQp
    a = torch.randn(n, n, dtype=torch.float64)
    q = a @ a.T / n + 0.1 * torch.eye(n, dtype=torch.float64)
    layer = BoxQp(Q=q)  # Q bound once, as a buffer

    hidden = torch.randn(features, n, dtype=torch.float64)
    inputs = torch.randn(samples, features, dtype=torch.float64)
    with torch.no_grad():
        targets = layer(inputs @ hidden)

    model = torch.nn.Sequential(
        torch.nn.Linear(features, 64), torch.nn.Tanh(), torch.nn.Linear(64, n)
    ).double()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        for batch in torch.randperm(samples).split(64):
            x = layer(model(inputs[batch]))
            loss = torch.nn.functional.mse_loss(x, targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            full = torch.nn.functional.mse_loss(layer(model(inputs)), targets).item()
        seconds = time.perf_counter() - start
        print(f"epoch {epoch:3d}  solution MSE {full:.3e}  {seconds:.2f} s/epoch")
    info = layer.info
    print(
        f"forward: {int(info.iterations.max())} iterations at most, "
        f"all converged: {bool(info.converged.all())}"
    )


if __name__ == "__main__":
    main()
