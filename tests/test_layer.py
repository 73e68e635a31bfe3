"""The layer machinery every generated module shares (foldgen/runtime/layer.py).

Input validation: unsupported dtypes (float16, bfloat16) and a variable of size 0 are
ValueErrors naming the input; a dtype, batch or size mismatch names the odd input (the one
that disagrees with the others), not merely the later one; an empty batch is an empty result.

The backward's guarantee ("never a wrong gradient"): an element whose forward did not
converge or was infeasible, whose adjoint solve missed its tolerance, or whose incoming
gradient is not finite gets a zero gradient, reported in ``backward_info`` (``converged``
False; ``forward_converged`` says whose failure it was); a parameter shared across the batch
receives the sum over the other elements only; every other element's gradient is what it is
alone.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from cases import CASES, load_module
from cases_sqp import nonconvex_qp_data

F64 = torch.float64


def draw(name, batch=(), seed=0):
    return CASES[name].make(batch, F64, torch.Generator().manual_seed(seed))


def layer_for(name, **kwargs):
    module = load_module(name)
    return module, getattr(module, module.__all__[0])(**kwargs)


# ---------------------------------------------------------------------------------------------
# Inputs


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["box_qp", "tv_denoise", "nonconvex_qp"])
def test_half_precision_is_rejected_naming_the_input(name, dtype):
    module, layer = layer_for(name)
    values = {k: v.to(dtype) for k, v in draw(name).items()}
    first = next(iter(module.PARAMETERS))
    with pytest.raises(
        ValueError, match=rf"^{first}: dtype {dtype} is not supported; use float32"
    ):
        layer(**values)


def test_one_half_precision_input_is_the_one_named():
    _, layer = layer_for("nonconvex_qp")
    values = draw("nonconvex_qp")
    with pytest.raises(ValueError, match=r"^G: dtype torch.float16 is not supported"):
        layer(**{**values, "G": values["G"].half()})
    with pytest.raises(ValueError, match=r"^y_init: expected a torch.float64 tensor"):
        layer(**values, y_init=torch.zeros(10, dtype=torch.float16))


def test_dtype_mismatch_names_the_minority():
    _, layer = layer_for("nonconvex_qp")
    values = draw("nonconvex_qp")
    with pytest.raises(
        ValueError, match=r"^p: dtype torch.float32 differs from Q's torch.float64$"
    ):
        layer(**{**values, "p": values["p"].float()})
    # Of two inputs that disagree, the later one is named, with the other.
    _, box = layer_for("box_qp")
    v = draw("box_qp")
    with pytest.raises(
        ValueError, match=r"^c: dtype torch.float64 differs from Q's torch.float32"
    ):
        box(Q=v["Q"].float(), c=v["c"])


def test_batch_mismatch_names_the_odd_input():
    _, layer = layer_for("nonconvex_qp")
    values = draw("nonconvex_qp", batch=(3,))
    odd = torch.rand(4, 10, dtype=F64)  # the only input with a batch of 4
    with pytest.raises(
        ValueError, match=r"^p: batch dimensions \(4,\) do not broadcast with Q's \(3,\)$"
    ):
        layer(**{**values, "p": odd})
    with pytest.raises(ValueError, match=r"^h: batch dimensions \(4,\) do not broadcast"):
        layer(**{**values, "h": values["h"][:1].expand(4, -1)})


def test_size_mismatch_names_the_odd_input():
    _, layer = layer_for("nonconvex_qp")
    values = draw("nonconvex_qp")
    with pytest.raises(ValueError, match=r"^p: axis -1 has size 11, but n = 10 from Q$"):
        layer(**{**values, "p": torch.rand(11, dtype=F64)})


def test_variable_of_size_zero_is_a_value_error_naming_the_input():
    _, layer = layer_for("box_qp")
    with pytest.raises(ValueError, match=r"^Q: axis -2 has size 0, but n, the size of x, must"):
        layer(Q=torch.zeros(0, 0, dtype=F64), c=torch.zeros(0, dtype=F64))


@pytest.mark.parametrize("name", ["box_qp", "tv_denoise", "nonconvex_qp"])
def test_empty_batch_is_an_empty_result(name):
    module, layer = layer_for(name, on_nonconvergence="raise")
    values = {k: v[:0] for k, v in draw(name, batch=(2,)).items() if v.dim()}
    leaves = {k: v.clone().requires_grad_() for k, v in values.items()}
    leaves = {k: v if k in module.GRAD_PARAMETERS else v.detach() for k, v in leaves.items()}
    x = layer(**leaves)
    assert x.shape == (0, values[module.GRAD_PARAMETERS[0]].shape[-1])
    assert layer.info.converged.shape == (0,)
    x.sum().backward()
    for k in module.GRAD_PARAMETERS:
        if k in leaves:
            assert leaves[k].grad.shape == leaves[k].shape
    assert layer.backward_info.converged.shape == (0,)


# ---------------------------------------------------------------------------------------------
# The backward's guarantee


def test_infeasible_element_gets_zero_gradient_and_a_shared_parameter_the_rest():
    """A ball of radius −1 admits no point: that element's gradients are zero, not NaN, and
    the shared matrix A receives exactly the gradient of the feasible element alone."""
    module, layer = layer_for("ball_least_squares")
    v = draw("ball_least_squares")
    A = v["A"].clone().requires_grad_()  # unbatched: shared by both elements
    radius = torch.tensor([0.6, -1.0], dtype=F64, requires_grad=True)
    center = v["center"].expand(2, -1).clone().requires_grad_()
    weight = torch.randn(2, 5, generator=torch.Generator().manual_seed(1), dtype=F64)
    with pytest.warns(module.ConvergenceWarning, match=r"element\(s\) 1 \(the constraints"):
        x = layer(A=A, b=v["b"], center=center, radius=radius)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the forward's failure is not reported twice
        (x * weight).sum().backward()
    info = layer.backward_info
    assert info.converged.tolist() == [True, False]
    assert info.forward_converged.tolist() == [True, False]
    assert float(info.residual[1]) == float("inf")
    for grad in (A.grad, radius.grad, center.grad):
        assert bool(torch.isfinite(grad).all())
    assert float(radius.grad[1]) == 0 and bool((center.grad[1] == 0).all())
    _, alone = layer_for("ball_least_squares", on_nonconvergence="raise")
    A0 = v["A"].clone().requires_grad_()
    r0 = radius[0].detach().clone().requires_grad_()
    c0 = v["center"].clone().requires_grad_()
    (alone(A=A0, b=v["b"], center=c0, radius=r0) * weight[0]).sum().backward()
    torch.testing.assert_close(A.grad, A0.grad, atol=1e-10, rtol=0)
    torch.testing.assert_close(radius.grad[0], r0.grad, atol=1e-10, rtol=0)
    torch.testing.assert_close(center.grad[0], c0.grad, atol=1e-10, rtol=0)


def two_step_box_batch():
    """box_qp with Q = 2I: the step is 1/L = 1/2 and U(x) = clamp(−c/2, 0, 1), reached in
    one step from anywhere; elements 0 and 2 start there, element 1 at 0 (one iteration is not
    enough). The exact gradient of Σ x w is −w/2 on the free components, 0 on the clamped."""
    n = 6
    c = torch.tensor(
        [[-1.0, 0.5, -3.0, -0.4, 2.0, -1.2], [-0.3, -1.0, 0.7, -1.5, -0.2, 4.0]], dtype=F64
    )
    c = torch.cat([c, c[:1]])
    x_init = (-c / 2).clamp(0, 1)
    x_init[1] = 0
    return 2 * torch.eye(n, dtype=F64), c, x_init


def test_unconverged_forward_element_gets_zero_gradient():
    module, layer = layer_for("box_qp", max_iter=1, on_nonconvergence="ignore")
    Q, c, x_init = two_step_box_batch()
    c = c.clone().requires_grad_()
    x = layer(Q=Q, c=c, x_init=x_init)
    assert layer.info.converged.tolist() == [True, False, True]
    weight = torch.linspace(-1, 1, 6, dtype=F64)
    (x * weight).sum().backward()
    free = ((-c.detach() / 2 > 0) & (-c.detach() / 2 < 1)).to(F64)
    expected = -weight / 2 * free
    expected[1] = 0
    torch.testing.assert_close(c.grad, expected, atol=1e-12, rtol=0)
    assert layer.backward_info.converged.tolist() == [True, False, True]
    assert layer.backward_info.forward_converged.tolist() == [True, False, True]


def test_fold_unconverged_differentiates_a_truncated_forward_at_its_last_iterate():
    """Opted in, the element stopped after one iteration is folded at x_1. Here U does not
    depend on x (Φ = 0), so its folded gradient is the exact one, like its neighbours'."""
    module, layer = layer_for(
        "box_qp", max_iter=1, on_nonconvergence="ignore", fold_unconverged=True
    )
    Q, c, x_init = two_step_box_batch()
    c = c.clone().requires_grad_()
    x = layer(Q=Q, c=c, x_init=x_init)
    assert layer.info.converged.tolist() == [True, False, True]
    weight = torch.linspace(-1, 1, 6, dtype=F64)
    (x * weight).sum().backward()
    free = ((-c.detach() / 2 > 0) & (-c.detach() / 2 < 1)).to(F64)
    torch.testing.assert_close(c.grad, -weight / 2 * free, atol=1e-12, rtol=0)
    assert layer.backward_info.converged.tolist() == [True, True, True]


def test_fold_unconverged_still_zeroes_an_infeasible_element():
    module, layer = layer_for(
        "ball_least_squares", on_nonconvergence="ignore", fold_unconverged=True
    )
    v = draw("ball_least_squares")
    radius = torch.tensor([0.6, -1.0], dtype=F64, requires_grad=True)
    x = layer(A=v["A"], b=v["b"], center=v["center"], radius=radius)
    x.sum().backward()
    assert layer.backward_info.converged.tolist() == [True, False]
    assert radius.grad[1] == 0 and radius.grad[0] != 0


def test_adjoint_that_misses_its_tolerance_gives_zero_and_is_reported():
    """LFPI with one product: exact where Φ = 0 (Q = 2I), short elsewhere (a random Q); the
    fallback chain is switched off, so the short element is zeroed."""
    module, layer = layer_for(
        "box_qp", backward_method="lfpi", backward_max_iter=1, backward_fallback=False
    )
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(6, 6, generator=gen, dtype=F64)
    Q = torch.stack([2 * torch.eye(6, dtype=F64), a @ a.T / 6 + torch.eye(6, dtype=F64)])
    c = torch.tensor([[-1.0, 0.5, -3.0, -0.4, 2.0, -1.2]], dtype=F64).expand(2, 6)
    c = c.clone().requires_grad_()
    x = layer(Q=Q, c=c)
    assert layer.info.converged.tolist() == [True, True]
    weight = torch.linspace(-1, 1, 6, dtype=F64)
    with pytest.warns(
        module.ConvergenceWarning,
        match=r"backward solve \(lfpi\) did not converge .*element\(s\) 1 ",
    ):
        (x * weight).sum().backward()
    info = layer.backward_info
    assert info.converged.tolist() == [True, False]
    assert info.forward_converged.tolist() == [True, True]
    assert float(info.residual[1]) > layer.backward_tol
    free = ((-c[0].detach() / 2 > 0) & (-c[0].detach() / 2 < 1)).to(F64)
    torch.testing.assert_close(c.grad[0], -weight / 2 * free, atol=1e-12, rtol=0)
    assert bool((c.grad[1] == 0).all())
    # Under on_nonconvergence="raise" the same backward raises.
    layer.on_nonconvergence = "raise"
    x = layer(Q=Q, c=c)
    with pytest.raises(module.ConvergenceError, match=r"backward solve \(lfpi\)"):
        (x * weight).sum().backward()


def test_fallback_chain_rescues_an_adjoint_its_method_left_short():
    """The same short LFPI, with the default fallback: GMRES (one product is not enough
    either), then the dense LU, which solves it; the gradient equals the direct method's."""
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(6, 6, generator=gen, dtype=F64)
    Q = torch.stack([2 * torch.eye(6, dtype=F64), a @ a.T / 6 + torch.eye(6, dtype=F64)])
    weight = torch.linspace(-1, 1, 6, dtype=F64)
    grads = []
    for settings in (
        {"backward_method": "lfpi", "backward_max_iter": 1},
        {"backward_method": "direct"},
    ):
        module, layer = layer_for("box_qp", **settings)
        c = torch.tensor([[-1.0, 0.5, -3.0, -0.4, 2.0, -1.2]], dtype=F64).expand(2, 6)
        c = c.clone().requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            (layer(Q=Q, c=c) * weight).sum().backward()
        grads.append((c.grad, layer.backward_info))
    (rescued, info), (direct, _) = grads
    assert info.method == "lfpi" and info.converged.tolist() == [True, True]
    assert info.fallback.tolist() == [False, True]
    torch.testing.assert_close(rescued, direct, atol=1e-12, rtol=0)


def test_least_squares_is_the_last_resort_for_a_singular_system():
    """A consistent singular system (I − Φᵀ) v = g: LU may fail, the pseudo-inverse gives
    the minimum-norm solution and reports a small residual."""
    from foldgen.runtime.linsolve import _solve_lstsq

    phi_t = torch.diag(torch.tensor([1.0, 0.5, 0.0], dtype=F64))  # I − Φᵀ = diag(0, .5, 1)
    g = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    v, _, residual = _solve_lstsq(phi_t, g)
    torch.testing.assert_close(v, torch.tensor([0.0, 2.0, 2.0], dtype=F64))
    assert float(residual) < 1e-14
    _, _, inconsistent = _solve_lstsq(phi_t, torch.tensor([1.0, 1.0, 2.0], dtype=F64))
    assert float(inconsistent) > 0.1  # no solution: the caller zeroes and reports it


@pytest.mark.parametrize("name", ["box_qp", "tv_denoise", "nonconvex_qp"])
def test_nonfinite_incoming_gradient_stays_in_its_element(name):
    module, layer = layer_for(name, on_nonconvergence="ignore")
    values = (
        draw(name, batch=(2,))
        if name != "nonconvex_qp"
        else nonconvex_qp_data((2,), F64, torch.Generator().manual_seed(3))
    )
    grad_name = module.GRAD_PARAMETERS[0]
    results = []
    for poison in (False, True):
        leaf = values[grad_name].clone().requires_grad_()
        x = layer(**{**values, grad_name: leaf})
        upstream = torch.ones_like(x)
        if poison:
            upstream[1, 0] = float("nan")
        x.backward(upstream)
        results.append(leaf.grad)
    clean, poisoned = results
    assert bool(torch.isfinite(poisoned).all())
    assert bool((poisoned[1] == 0).all())
    torch.testing.assert_close(poisoned[0], clean[0], atol=1e-12, rtol=0)
    assert layer.backward_info.converged.tolist() == [True, False]
    assert layer.backward_info.forward_converged.tolist() == [True, True]


# ---------------------------------------------------------------------------------------------
# The public call surface: named inputs, overrides, unrolled and update_map


def _box_qp_data(seed=0, batch=2):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(6, 6, generator=gen, dtype=F64)
    Q = a @ a.T + torch.eye(6, dtype=F64)
    c = torch.randn(batch, 6, generator=gen, dtype=F64)
    return Q, c


def test_forward_signature_names_the_inputs():
    import inspect

    module, layer = layer_for("box_qp")
    parameters = inspect.signature(layer.forward).parameters
    assert [n for n in parameters if not n.startswith("_")] == ["Q", "c", "x_init"]
    assert all(parameters[n].kind is inspect.Parameter.KEYWORD_ONLY for n in ("Q", "c"))


def test_positional_inputs_fill_the_unbound_ones_and_a_name_overrides_a_bound_one():
    Q, c = _box_qp_data()
    _, free = layer_for("box_qp")
    _, bound = layer_for("box_qp", Q=2 * Q)
    expected = free(Q, c)
    torch.testing.assert_close(bound(c, Q=Q), expected, atol=0, rtol=0)  # the override
    torch.testing.assert_close(bound(c), free(2 * Q, c), atol=0, rtol=0)  # the bound value
    torch.testing.assert_close(bound.Q, 2 * Q)  # overriding does not rebind
    with pytest.raises(TypeError, match="given twice"):
        free(Q, c, c=c)


def test_update_map_reproduces_the_folded_gradient_by_unrolling_from_the_fixed_point():
    Q, c = _box_qp_data(seed=3)
    module, layer = layer_for("box_qp", tol=1e-12)
    weight = torch.randn(c.shape, generator=torch.Generator().manual_seed(4), dtype=F64)
    c = c.clone().requires_grad_()
    (folded,) = torch.autograd.grad((layer(Q, c) * weight).sum(), c)
    s, update, read = layer.update_map(Q, c)
    torch.testing.assert_close(update(s), s, atol=1e-10, rtol=0)  # a fixed point
    for _ in range(2000):
        s = update(s)
    (unrolled,) = torch.autograd.grad((read(s) * weight).sum(), c)
    torch.testing.assert_close(unrolled, folded, atol=1e-10, rtol=0)


def test_unrolled_differentiates_the_iterations_and_agrees_at_convergence():
    Q, c = _box_qp_data(seed=5)
    module, layer = layer_for("box_qp", tol=1e-13)
    c = c.clone().requires_grad_()
    x = layer.unrolled(Q, c)
    assert x.grad_fn is not None and "Fold" not in type(x.grad_fn).__name__
    (unrolled,) = torch.autograd.grad(x.sum(), c)
    (folded,) = torch.autograd.grad(layer(Q, c).sum(), c)
    torch.testing.assert_close(unrolled, folded, atol=1e-8, rtol=0)
