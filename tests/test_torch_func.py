"""torch.func on every generated layer: vmap (nested too) equals the batched call; grad, vjp,
jacrev, jvp and jacfwd give the folded derivative, checked against autograd on the batched
call (itself checked against finite differences and unrolling by the battery)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cases import CASES, SPECS, as_state, load_module

import foldgen

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=SPECS)
def spec(request):
    module = load_module(request.param)
    return request.param, module, CASES[request.param]


def make_layer(module, **kwargs):
    return getattr(module, module.__all__[0])(on_nonconvergence="raise", **kwargs)


def draw(case, batch, seed=0):
    return case.make(batch, F64, torch.Generator().manual_seed(seed))


def batched_dims(module, values, rank=1):
    """in_dims for vmap over the leading dimension: 0 for the inputs drawn batched."""
    cores = module.PARAMETERS
    return {n: 0 if v.dim() - len(cores[n]) >= rank else None for n, v in values.items()}


def call(module, layer, names):
    """The layer as a function of positional tensors (vmap and grad take positions)."""

    def f(*tensors):
        return as_state(module, layer(**dict(zip(names, tensors))))

    return f


def test_vmap_equals_the_batched_call(spec):
    _, module, case = spec
    values = draw(case, (3,), seed=1)
    layer = make_layer(module)
    names = list(values)
    dims = batched_dims(module, values)
    expected = as_state(module, layer(**values))
    mapped = torch.func.vmap(call(module, layer, names), in_dims=tuple(dims[n] for n in names))
    got = mapped(*values.values())
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    assert layer.info.converged.shape == (3,) and bool(layer.info.converged.all())


def test_nested_vmap_and_a_vmapped_dim_that_is_not_first(spec):
    _, module, case = spec
    values = draw(case, (2, 3), seed=2)
    layer = make_layer(module)
    names = list(values)
    dims = batched_dims(module, values, rank=2)
    expected = as_state(module, layer(**values))
    inner = torch.func.vmap(call(module, layer, names), in_dims=tuple(dims[n] for n in names))
    # the outer level maps the inputs' second dimension: move it there first
    moved = [v if dims[n] is None else v.movedim(0, 1) for n, v in values.items()]
    outer_dims = tuple(None if dims[n] is None else 1 for n in names)
    got = torch.func.vmap(inner, in_dims=outer_dims)(*moved)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_per_example_grad_equals_autograd_on_the_batch(spec):
    """vmap(grad(f)) per element: for a batched input the rows of autograd's gradient, for an
    input the batch shares the sum over elements of the per-element gradients."""
    _, module, case = spec
    values = draw(case, (3,), seed=3)
    layer = make_layer(module)
    names = list(values)
    grads = [n for n in names if n in module.GRAD_PARAMETERS]
    dims = batched_dims(module, values)
    x = as_state(module, layer(**values))
    weight = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=F64)
    argnums = tuple(names.index(n) for n in grads)
    f = call(module, layer, names)

    def loss(w, *tensors):
        return (f(*tensors) * w).sum()

    per = torch.func.vmap(
        torch.func.grad(loss, argnums=tuple(a + 1 for a in argnums)),
        in_dims=(0, *(dims[n] for n in names)),
    )(weight, *values.values())
    inputs = {n: v.clone().requires_grad_(n in grads) for n, v in values.items()}
    reference = torch.autograd.grad(loss(weight, *inputs.values()), [inputs[n] for n in grads])
    for n, g, ref in zip(grads, per, reference):
        total = g if dims[n] == 0 else g.sum(0)
        torch.testing.assert_close(total, ref, atol=1e-10, rtol=1e-8, msg=n)


def test_vjp_and_jacrev_and_forward_mode(spec):
    """One unbatched element: jacrev equals the Jacobian autograd assembles row by row,
    vjp its transpose product, jvp and jacfwd (n folded pullbacks) the same Jacobian."""
    _, module, case = spec
    values = draw(case, (), seed=5)
    layer = make_layer(module)
    names = list(values)
    name = next(n for n in names if n in module.GRAD_PARAMETERS)
    rest = {n: v for n, v in values.items() if n != name}

    def f(t):
        return as_state(module, layer(**rest, **{name: t}))

    theta = values[name]
    jac = torch.func.jacrev(f)(theta)
    reference = torch.autograd.functional.jacobian(f, theta)
    torch.testing.assert_close(jac, reference, atol=1e-10, rtol=1e-8)
    out, pull = torch.func.vjp(f, theta)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(6), dtype=F64)
    (vjp,) = pull(cot)
    flat = jac.reshape(out.numel(), -1)
    torch.testing.assert_close(vjp.reshape(-1), cot.reshape(-1) @ flat, atol=1e-10, rtol=1e-8)
    tangent = torch.randn(theta.shape, generator=torch.Generator().manual_seed(7), dtype=F64)
    _, jvp = torch.func.jvp(f, (theta,), (tangent,))
    torch.testing.assert_close(jvp.reshape(-1), flat @ tangent.reshape(-1), atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(torch.func.jacfwd(f)(theta), jac, atol=1e-10, rtol=1e-8)


# ---------------------------------------------------------------- one spec, in more detail


def _box_qp(batch, seed=0, n=6):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen, dtype=F64)
    Q = a @ a.T / n + 0.5 * torch.eye(n, dtype=F64)
    return Q, torch.randn(*batch, n, generator=gen, dtype=F64)


def _module():
    return foldgen.load_generated(ROOT / "generated" / "box_qp.py", "box_qp_torch_func")


def test_jacrev_of_a_batched_call_and_inside_vmap():
    module = _module()
    layer = module.BoxQp(on_nonconvergence="raise")
    Q, c = _box_qp((3,), seed=1)
    full = torch.func.jacrev(lambda c: layer(Q, c))(c)  # (3, n, 3, n): block diagonal
    per = torch.func.vmap(torch.func.jacrev(lambda c: layer(Q, c)))(c)
    for i in range(3):
        torch.testing.assert_close(full[i, :, i], per[i], atol=1e-12, rtol=0)
        for j in set(range(3)) - {i}:
            assert bool((full[i, :, j] == 0).all())
    free = ((layer(Q, c) > 0) & (layer(Q, c) < 1)).to(F64)  # J = -(Q_FF)^-1 on the free set
    for i in range(3):
        F = free[i].bool()
        expected = torch.zeros(6, 6, dtype=F64)
        expected[F.nonzero(), F.nonzero().T] = -torch.linalg.inv(Q[F][:, F])
        torch.testing.assert_close(per[i], expected, atol=1e-10, rtol=0)


def test_a_bound_input_and_a_shared_one_under_vmap():
    module = _module()
    Q, c = _box_qp((4,), seed=2)
    bound = module.BoxQp(Q=Q, on_nonconvergence="raise")
    got = torch.func.vmap(bound)(c)
    torch.testing.assert_close(got, bound(c), atol=1e-12, rtol=0)
    assert bound.info.iterations.shape == (4,)


def test_nan_under_vmap_is_the_named_error_and_higher_order_is_refused():
    module = _module()
    layer = module.BoxQp()
    Q, c = _box_qp((3,), seed=3)
    bad = c.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="c: contains NaN or Inf"):
        torch.func.vmap(layer, in_dims=(None, 0))(Q, bad)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.func.hessian(lambda c: (layer(Q, c) ** 2).sum())(c[0])
    cc = c.clone().requires_grad_()
    (g,) = torch.autograd.grad((layer(Q, cc) ** 2).sum(), cc, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        g.sum().backward()


def test_a_tangent_on_a_grad_false_input_is_refused():
    module = _module()
    layer = module.BoxQp()
    Q, c = _box_qp((), seed=4)
    with pytest.raises(ValueError, match="Q: has a tangent, but the spec declares it grad: false"):
        torch.func.jvp(lambda Q: layer(Q, c), (Q,), (torch.ones_like(Q),))


def test_a_matrix_variables_warm_start_plain_and_under_vmap():
    """W_init of the one (matrix) variable of nnls_matrix: accepted (a single variable
    unpacks to a bare tensor, once iterated row by row by mistake), a start at the solution
    needs no iteration, and a vmapped warm start equals the batched call."""
    module = foldgen.load_generated(ROOT / "generated" / "nnls_matrix.py", "nnls_warm")
    gen = torch.Generator().manual_seed(3)
    A = torch.randn(4, 12, 5, generator=gen, dtype=F64)
    B = torch.randn(4, 12, 3, generator=gen, dtype=F64)
    W0 = torch.rand(4, 5, 3, generator=gen, dtype=F64)
    layer = module.NnlsMatrix(on_nonconvergence="raise")
    solution = layer(A=A, B=B)
    started = layer(A=A, B=B, W_init=W0)
    torch.testing.assert_close(started, solution, atol=1e-7, rtol=0)
    layer(A=A, B=B, W_init=solution)
    assert layer.info.iterations.tolist() == [0, 0, 0, 0]
    mapped = torch.func.vmap(lambda A, B, W: layer(A=A, B=B, W_init=W))(A, B, W0)
    torch.testing.assert_close(mapped, started, atol=1e-12, rtol=0)
