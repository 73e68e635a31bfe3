"""The layer as a torch.nn.Module citizen: state_dict, .to, repr, no_grad / inference_mode,
and determinism (the same inputs give the same bits)."""

from __future__ import annotations

from pathlib import Path

import torch
from cases import CASES

import foldgen

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64


def _module(name="box_qp"):
    return foldgen.load_generated(ROOT / "generated" / f"{name}.py", f"{name}_conventions")


def _data(n=6, batch=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen, dtype=F64)
    Q = a @ a.T / n + 0.3 * torch.eye(n, dtype=F64)
    return Q, torch.randn(batch, n, generator=gen, dtype=F64)


def test_state_dict_round_trips_bound_buffers_and_parameters():
    module = _module()
    Q, c = _data()
    layer = module.BoxQp(Q=Q)
    other = module.BoxQp(Q=torch.eye(6, dtype=F64))
    assert list(layer.state_dict()) == ["Q"]
    other.load_state_dict(layer.state_dict())
    assert torch.equal(other(c), layer(c))
    nnls = _module("nnls_matrix")
    gen = torch.Generator().manual_seed(1)
    A = torch.nn.Parameter(torch.randn(12, 5, generator=gen, dtype=F64))
    learn = nnls.NnlsMatrix(A=A)
    assert [n for n, _ in learn.named_parameters()] == ["A"]
    copy = nnls.NnlsMatrix(A=torch.nn.Parameter(torch.ones(12, 5, dtype=F64)))
    copy.load_state_dict(learn.state_dict())
    B = torch.randn(2, 12, 3, generator=gen, dtype=F64)
    assert torch.equal(copy(B), learn(B)) and isinstance(copy.A, torch.nn.Parameter)


def test_to_moves_and_casts_the_bound_inputs():
    module = _module()
    Q, c = _data()
    layer = module.BoxQp(Q=Q).to(torch.float32)
    assert layer.Q.dtype == torch.float32
    x = layer(c.float())
    assert x.dtype == torch.float32
    torch.testing.assert_close(x.double(), module.BoxQp(Q=Q)(c), rtol=0, atol=1e-4)
    assert module.BoxQp(Q=Q).to("meta").Q.device.type == "meta"


def test_repr_is_the_problem_in_one_line_and_the_settings():
    module = _module()
    text = repr(module.BoxQp(Q=_data()[0], max_iter=77))
    assert "\n" not in text
    assert text.startswith("BoxQp(minimize f(x) = 0.5 (Q x)·x + c·x subject to 0 ≤ x ≤ 1 [pgd]; ")
    assert "max_iter=77" in text and "step_size='auto'" in text and "bound=['Q']" in text
    portfolio = repr(_module("portfolio").Portfolio())
    assert "[sqp]; max_iter=100" in portfolio and "step=1.0" in portfolio


def test_no_grad_and_inference_mode_keep_no_backward_state():
    module = _module()
    Q, c = _data()
    layer = module.BoxQp(Q=Q)
    c = c.requires_grad_()
    expected = layer(c).detach()
    with torch.no_grad():
        x = layer(c)
    assert x.grad_fn is None and not x.requires_grad
    assert torch.equal(x, expected)
    with torch.inference_mode():
        y = layer(c)
    assert y.is_inference() and not y.requires_grad and torch.equal(y, expected)
    assert bool(layer.info.converged.all())


def test_the_same_inputs_give_the_same_bits():
    """Forward and backward are deterministic on CPU: two calls of one layer, and a fresh
    layer, agree bit for bit (same inputs, batch and thread count), for each rule."""
    for name in ("box_qp", "inequality_qp", "portfolio"):
        module = _module(name)
        cls = getattr(module, module.__all__[0])
        values = CASES[name].make((3,), F64, torch.Generator().manual_seed(1))
        grads = [n for n in values if n in module.GRAD_PARAMETERS]
        first = cls()
        runs = []
        for layer in (first, first, cls()):
            inputs = {n: v.clone().requires_grad_(n in grads) for n, v in values.items()}
            out = layer(**inputs)
            runs.append((out, torch.autograd.grad(out.sum(), [inputs[n] for n in grads])))
        for out, g in runs[1:]:
            assert torch.equal(out, runs[0][0]), name
            assert all(torch.equal(a, b) for a, b in zip(g, runs[0][1])), name
