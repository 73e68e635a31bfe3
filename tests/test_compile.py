"""compile=True (issue 12, part 5): the accelerated PGD loop's body goes through
torch.compile with a dynamic batch dimension, the data-dependent loop stays in Python. The
compiled body must give the eager body's iterates, and one graph must serve every batch
size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import foldgen

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64


def _module(name):
    module = foldgen.load_generated(ROOT / "generated" / "box_qp.py", name)
    module._COMPILED_STEP.clear()
    return module


def _data(n, batch, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen, dtype=F64)
    Q = a @ a.T / n + 0.1 * torch.eye(n, dtype=F64)
    return Q, torch.randn(batch, n, generator=gen, dtype=F64)


def test_compile_is_a_checked_setting_and_leaves_module_compile_alone():
    module = _module("box_qp_compile_setting")
    layer = module.BoxQp(compile=True)
    assert layer.compile_body is True and callable(layer.compile)  # nn.Module.compile intact
    assert module.BoxQp().compile_body is False
    with pytest.raises(ValueError, match="compile: expected True or False"):
        module.BoxQp(compile="yes")


def test_one_graph_serves_every_batch_size(monkeypatch):
    """A counting backend stands in for inductor: the body is captured once, with the
    batch size symbolic, for batches of 3, 8 and 21; results equal the eager layer's."""
    module = _module("box_qp_compile_graphs")
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend=counting, **kw))
    torch._dynamo.reset()
    Q, _ = _data(12, 1)
    compiled, eager = module.BoxQp(Q=Q, compile=True), module.BoxQp(Q=Q)
    for batch in (3, 8, 21):
        c = _data(12, batch, seed=batch)[1].requires_grad_()
        x = compiled(c)
        (g,) = torch.autograd.grad((x * x).sum(), c)
        c_ref = c.detach().clone().requires_grad_()
        x_ref = eager(c_ref)
        (g_ref,) = torch.autograd.grad((x_ref * x_ref).sum(), c_ref)
        assert torch.equal(compiled.info.iterations, eager.info.iterations)
        torch.testing.assert_close(x, x_ref, rtol=0, atol=1e-13)
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)
    assert len(graphs) == 1
    torch._dynamo.reset()


def test_inductor_compiles_the_body_once_and_matches_eager():
    """The default backend end to end (a few seconds on the first call), float64 and a
    second batch size without a new compilation."""
    module = _module("box_qp_compile_inductor")
    torch._dynamo.reset()
    Q, c = _data(6, 4)
    compiled, eager = module.BoxQp(Q=Q, compile=True), module.BoxQp(Q=Q)
    torch.testing.assert_close(compiled(c), eager(c), rtol=0, atol=1e-12)
    assert bool(compiled.info.converged.all())
    with torch._dynamo.config.patch(error_on_recompile=True):
        c5 = _data(6, 5, seed=1)[1]
        torch.testing.assert_close(compiled(c5), eager(c5), rtol=0, atol=1e-12)
    torch._dynamo.reset()


class _Net(torch.nn.Module):
    """A small model with the layer inside: features → c → the box QP's x* → a score."""

    def __init__(self, module, Q, **settings):
        super().__init__()
        self.encoder = torch.nn.Linear(3, Q.shape[0], dtype=F64)
        self.layer = module.BoxQp(Q=Q, **settings)

    def forward(self, z):
        return self.layer(self.encoder(z)).sum(-1)


def _train(net, forward, batches):
    """Two SGD steps per batch; returns the losses and the encoder's final weight."""
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    losses = []
    for z in batches:
        for _ in range(2):
            loss = ((forward(z) - 1) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    return losses, net.encoder.weight.detach().clone()


def test_a_model_with_the_layer_compiles_trains_and_does_not_recompile_per_batch():
    """torch.compile (default backend) of a model around the layer: the layer is an opaque
    boundary (it runs eagerly between the compiled parts), so training equals eager training
    and, once the batch dimension is dynamic (the second size), new sizes compile nothing."""
    from torch._dynamo.utils import counters

    module = _module("box_qp_compile_model")
    torch._dynamo.reset()
    counters.clear()
    Q, _ = _data(6, 1)
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(b, 3, generator=gen, dtype=F64) for b in (4, 5, 7, 9)]
    torch.manual_seed(0)
    eager = _Net(module, Q)
    torch.manual_seed(0)
    net = _Net(module, Q)
    compiled = torch.compile(net)
    losses, weight = _train(net, compiled, batches[:2])
    graphs = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        more, weight = _train(net, compiled, batches[2:])
    assert counters["stats"]["unique_graphs"] == graphs
    ref_losses, ref_weight = _train(eager, eager, batches)
    torch.testing.assert_close(losses + more, ref_losses, rtol=1e-12, atol=0)
    torch.testing.assert_close(weight, ref_weight, rtol=0, atol=1e-12)
    assert bool(net.layer.backward_info.converged.all())
    torch._dynamo.reset()


def test_fullgraph_fails_at_the_layer_with_the_documented_reason():
    module = _module("box_qp_compile_fullgraph")
    torch._dynamo.reset()
    Q, _ = _data(6, 1)
    net = _Net(module, Q)
    with pytest.raises(torch._dynamo.exc.Unsupported, match="torch.compiler.disable"):
        torch.compile(net, fullgraph=True)(torch.zeros(2, 3, dtype=F64))
    torch._dynamo.reset()
