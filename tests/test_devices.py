"""Device and dtype hygiene without a GPU: every tensor the layer creates takes its device and
dtype from the inputs. Run with the default device set to ``meta`` and the default dtype to
float32, a factory call that forgot ``device=``/``dtype=`` makes a meta or float32 tensor, and
meeting the inputs' CPU float64 tensors raises or loses precision. Forward and backward (each
backward method) must give the normal run's numbers, on the inputs' device."""

from __future__ import annotations

import pytest
import torch
from cases import CASES, SPECS, as_state, load_module

F64 = torch.float64


@pytest.fixture(scope="module", params=SPECS)
def spec(request):
    return load_module(request.param), CASES[request.param]


def _run(module, values, method):
    layer = getattr(module, module.__all__[0])(on_nonconvergence="raise", backward_method=method)
    grads = [n for n in values if n in module.GRAD_PARAMETERS]
    inputs = {n: v.clone().requires_grad_(n in grads) for n, v in values.items()}
    x = as_state(module, layer(**inputs))
    weight = torch.linspace(-1, 1, x.numel(), dtype=F64, device=x.device).reshape(x.shape)
    return x, torch.autograd.grad((x * weight).sum(), [inputs[n] for n in grads])


@pytest.mark.parametrize("method", ["auto", "direct", "gmres"])
def test_nothing_is_created_on_the_default_device_or_dtype(spec, method):
    module, case = spec
    values = case.make((2,), F64, torch.Generator().manual_seed(0))
    x_ref, g_ref = _run(module, values, method)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        with torch.device("meta"):
            x, g = _run(module, values, method)
    finally:
        torch.set_default_dtype(previous)
    assert x.device.type == "cpu" and x.dtype == F64
    torch.testing.assert_close(x, x_ref, rtol=0, atol=1e-13)
    for a, b in zip(g, g_ref):
        assert a.device.type == "cpu" and a.dtype == F64
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
