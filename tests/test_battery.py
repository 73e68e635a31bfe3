"""The standard battery, applied to every spec in specs/ (STYLE.md practice 11).

For each generated layer: finite differences (gradcheck, float64) on every grad parameter;
the folded gradient against autograd through the unrolled update map run to convergence;
the forward against CVXPY on convex specs; backward methods against each other; batched
calls against a loop of unbatched ones; float32 against float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cases import CASES, SPECS, as_state, load_module

from foldgen.runtime.pgd import _lipschitz

F64 = torch.float64


def test_every_spec_has_a_case():
    assert sorted(CASES) == SPECS


@pytest.fixture(scope="module", params=SPECS)
def spec(request):
    name = request.param
    module = load_module(name)
    return name, module, CASES[name]


def make_layer(module, **kwargs):
    cls = getattr(module, module.__all__[0])
    return cls(on_nonconvergence="raise", **kwargs)


def draw(case, batch=(), dtype=F64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return case.make(batch, dtype, gen)


def grad_names(module):
    return list(module.GRAD_PARAMETERS)


def test_gradcheck(spec):
    name, module, case = spec
    values = draw(case, batch=(2,))
    layer = make_layer(module)
    names = grad_names(module)

    def fn(*grads):
        return layer(**{**values, **dict(zip(names, grads))})

    inputs = tuple(values[n].clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)
    assert bool(layer.info.converged.all())


def _unroll_step(module, x_star, values):
    """A step D for the unrolled reference: the forward's own scaled step where it has one,
    else 1/λmax(∇²f(x*)) — any D > 0 gives the same fixed point and derivative."""
    p = module.PROBLEM
    if hasattr(p, "hessian_diagonal"):
        h = p.hessian_diagonal(x_star, *values)
        d = 1 / h
        return d, d
    d = (1 / _lipschitz(p, x_star, values, iterations=200))[..., None]
    return d, torch.ones_like(x_star)


def unrolled_gradient(module, layer, values, weight, iterations):
    """Autograd through `iterations` applications of U from x*: Σ_k Φᵏ Ψ, the unrolled limit."""
    names = grad_names(module)
    with torch.no_grad():
        x_star = as_state(module, layer(**values))
    inputs = {n: v.clone().requires_grad_(n in names) for n, v in values.items()}
    ordered = [inputs[n] for n in module.PARAMETERS]
    d, metric = _unroll_step(module, x_star, [v.detach() for v in ordered])
    p = module.PROBLEM
    S = p.set.prepare(p.set_data(x_star, *ordered))
    x = x_star
    for _ in range(iterations):
        x, _ = p.set.project(x - d * p.gradient(x, *ordered), metric, S)
    assert torch.allclose(x, x_star, atol=1e-9), "x* is not a fixed point of the unrolled map"
    grads = torch.autograd.grad((x * weight).sum(), [inputs[n] for n in names])
    return dict(zip(names, grads))


def folded_gradient(module, layer, values, weight):
    names = grad_names(module)
    inputs = {n: v.clone().requires_grad_(n in names) for n, v in values.items()}
    x = as_state(module, layer(**inputs))
    grads = torch.autograd.grad((x * weight).sum(), [inputs[n] for n in names])
    return dict(zip(names, grads))


def test_folded_equals_unrolled(spec):
    name, module, case = spec
    values = draw(case, batch=(3,), seed=1)
    layer = make_layer(module)
    weight = torch.randn(
        as_state(module, layer(**values)).shape,
        generator=torch.Generator().manual_seed(2),
        dtype=F64,
    )
    folded = folded_gradient(module, layer, values, weight)
    if case.unrolled is not None:
        unrolled = case.unrolled(module, layer, values, weight)
    else:
        unrolled = unrolled_gradient(module, layer, values, weight, iterations=3000)
    for n in folded:
        scale = unrolled[n].abs().max().clamp_min(1.0)
        assert (folded[n] - unrolled[n]).abs().max() <= 1e-8 * scale, n


@pytest.mark.parametrize("name", [s for s in SPECS if CASES[s].cvxpy is not None])
def test_forward_matches_cvxpy(name):
    module, case = load_module(name), CASES[name]
    layer = make_layer(module)
    for seed in range(3):
        values = draw(case, seed=10 + seed)
        x = as_state(module, layer(**values))
        reference = case.cvxpy({k: v.numpy() for k, v in values.items()})
        np.testing.assert_allclose(x.numpy(), reference, atol=2e-6)


@pytest.mark.parametrize("method", ["direct", "gmres", "lfpi", "active_set"])
def test_backward_methods_agree(spec, method):
    name, module, case = spec
    values = draw(case, batch=(4,), seed=3)
    reference_layer = make_layer(module, backward_method="direct")
    weight = torch.randn(
        as_state(module, reference_layer(**values)).shape,
        generator=torch.Generator().manual_seed(4),
        dtype=F64,
    )
    reference = folded_gradient(module, reference_layer, values, weight)
    layer = make_layer(module, backward_method=method, backward_max_iter=5000, backward_tol=1e-13)
    layer.on_nonconvergence = "ignore"
    grads = folded_gradient(module, layer, values, weight)
    converged = layer.backward_info.converged
    if method != "lfpi":
        assert bool(converged.all())
    if method == "active_set" and module.PROBLEM.rule == "sqp":  # the closed-form KKT solve
        assert layer.backward_info.method == "active_set"  # these data are regular (δ = 0)
    elif method == "active_set" and module.PROBLEM.rule == "admm":  # a QP's KKT solve
        polishable = module._admm_polishable(module.PROBLEM)
        assert (layer.backward_info.method == "active_set") == polishable
    elif method == "active_set":  # the reduced solve runs wherever the structure is proven:
        # J_P a free-set diagonal, or an orthogonal projector under a scalar step
        jacobian, step = module.PROBLEM.set.jacobian, layer.info.alpha.shape[-1]
        structured = jacobian == "diagonal" or (jacobian == "projector" and step == 1)
        assert layer.backward_info.method == ("active_set" if structured else "direct")
    for n in grads:
        scale = reference[n].abs().max().clamp_min(1.0)
        diff = (grads[n] - reference[n]).abs()
        if method == "lfpi":  # LFPI converges only where ρ(Φ) < 1: compare those elements
            diff = diff[converged] if diff.dim() and diff.shape[0] == converged.shape[0] else diff
        assert diff.max() <= 1e-9 * scale, (n, method)


def test_batched_equals_loop(spec):
    name, module, case = spec
    values = draw(case, batch=(3,), seed=5)
    layer = make_layer(module)
    batched = as_state(module, layer(**values))
    for i in range(3):
        single = {
            n: (v[i] if v.dim() > len(module.PARAMETERS[n]) else v) for n, v in values.items()
        }
        alone = as_state(module, layer(**single))
        torch.testing.assert_close(alone.expand_as(batched[i]), batched[i], atol=1e-10, rtol=0)


def test_float32_runs_and_agrees(spec):
    name, module, case = spec
    values64 = draw(case, batch=(2,), seed=6)
    values32 = {n: v.float() for n, v in values64.items()}
    layer = make_layer(module, tol=1e-6)
    layer.on_nonconvergence = "ignore"
    x32 = as_state(module, layer(**values32))
    assert x32.dtype == torch.float32
    names = grad_names(module)
    inputs = {n: v.clone().requires_grad_(n in names) for n, v in values32.items()}
    x = as_state(module, layer(**inputs))
    grads = torch.autograd.grad(x.sum(), [inputs[n] for n in names])
    assert all(g.dtype == torch.float32 and bool(torch.isfinite(g).all()) for g in grads)
    x64 = as_state(module, make_layer(module)(**values64))
    assert (x32.double() - x64).abs().max() < 1e-3
