"""Train through a generated layer with DistributedDataParallel (gloo, processes on one machine).

The model of ``train_box_qp.py`` (features → c → the box QP's solution x*) is wrapped in
``torch.nn.parallel.DistributedDataParallel``; each process solves its shard of the global
batch and DDP averages the gradients. The layer holds nothing but its bound inputs (here Q, a
buffer every rank has), so it shards with the batch like any other layer. Before training,
the averaged gradient of one step is compared with the gradient one process computes on the
whole global batch.

    python examples/train_ddp.py --quick          # 2 processes, a few seconds
    python examples/train_ddp.py --world 4        # 4 processes
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import load_generated  # noqa: E402

F64 = torch.float64


def make_problem(n, features, samples, seed):
    """Q, the inputs, and targets from a hidden linear map (the same on every rank)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen, dtype=F64)
    Q = a @ a.T / n + 0.1 * torch.eye(n, dtype=F64)
    hidden = torch.randn(features, n, generator=gen, dtype=F64)
    inputs = torch.randn(samples, features, generator=gen, dtype=F64)
    layer = load_generated("box_qp").BoxQp(Q=Q)
    with torch.no_grad():
        targets = layer(inputs @ hidden)
    return Q, inputs, targets


class Model(torch.nn.Module):
    def __init__(self, Q, features, seed):
        super().__init__()
        torch.manual_seed(seed)  # the same initial weights on every rank
        self.encoder = torch.nn.Linear(features, Q.shape[0], dtype=F64)
        self.layer = load_generated("box_qp").BoxQp(Q=Q)

    def forward(self, z):
        return self.layer(self.encoder(z))


def gradient(model, inputs, targets):
    """The encoder's gradient of the mean squared error on (inputs, targets)."""
    model.zero_grad()
    torch.nn.functional.mse_loss(model(inputs), targets).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def _worker(rank, world, port, config, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        n, features, samples, epochs, seed = config
        Q, inputs, targets = make_problem(n, features, samples, seed)
        ddp = torch.nn.parallel.DistributedDataParallel(Model(Q, features, seed))
        shard = slice(rank, samples, world)  # rank r takes every world-th sample
        first = gradient(ddp, inputs[shard], targets[shard])  # averaged over the ranks by DDP
        opt = torch.optim.Adam(ddp.parameters(), lr=0.05)
        start, losses = time.perf_counter(), []
        for _ in range(epochs):
            for batch in torch.arange(samples)[shard].split(16):
                loss = torch.nn.functional.mse_loss(ddp(inputs[batch]), targets[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
            total = torch.nn.functional.mse_loss(ddp(inputs[shard]), targets[shard]).detach()
            dist.all_reduce(total)
            losses.append(float(total) / world)
        if rank == 0:  # as lists: a tensor in a queue needs its sender alive to be read
            results.put(([g.tolist() for g in first], losses, time.perf_counter() - start))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(world=2, n=20, features=8, samples=64, epochs=5, seed=0):
    """Run ``world`` processes; returns (rank 0's first averaged gradient, the mean loss per
    epoch, seconds) from the DDP run."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    config = (n, features, samples, epochs, seed)
    mp.start_processes(
        _worker, args=(world, _free_port(), config, results), nprocs=world, start_method="spawn"
    )
    first, losses, seconds = results.get(timeout=60)
    return [torch.tensor(g, dtype=F64) for g in first], losses, seconds


def single_process_gradient(n=20, features=8, samples=64, seed=0):
    """The same first gradient, by one process on the whole global batch."""
    Q, inputs, targets = make_problem(n, features, samples, seed)
    return gradient(Model(Q, features, seed), inputs, targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small problem, a few epochs")
    parser.add_argument("--world", type=int, default=2, help="processes")
    args = parser.parse_args()
    n, features, samples, epochs = (20, 8, 64, 5) if args.quick else (50, 16, 512, 20)
    first, losses, seconds = train(args.world, n, features, samples, epochs)
    reference = single_process_gradient(n, features, samples)
    gap = max(float((a - b).abs().max()) for a, b in zip(first, reference))
    print(f"{args.world} processes (gloo), n = {n}, {samples} samples")
    print(f"averaged DDP gradient vs one process on the global batch: max difference {gap:.2e}")
    print(f"loss per epoch: {' '.join(f'{v:.2e}' for v in losses)}  ({seconds:.1f} s)")
    if gap > 1e-10:
        sys.exit("the DDP gradient differs from the single-process gradient")


if __name__ == "__main__":
    main()
