"""foldgen.runtime.pgd as ordinary Python: the solver run on a hand-written problem record,
with no spec, no derivation and no generated module in between.

The problem is min ½ xᵀQx + cᵀx over the box 0 ≤ x ≤ 1, whose record is written out here
the way a generated module's ``PROBLEM`` would be; its solution and derivative are checked
against their closed forms at a point with known active set.
"""

from __future__ import annotations

import types

import pytest
import torch

from foldgen.runtime.fold import _Fold, _Tape
from foldgen.runtime.pgd import (
    _check_step_size,
    _pgd_pullback,
    _pgd_solve_fixed,
    _pgd_solve_lipschitz,
    _pgd_update_map,
)
from foldgen.runtime.sets import _BOX

F64 = torch.float64


def box_qp_record(solve):
    """A problem record for ½ xᵀQx + cᵀx, 0 ≤ x ≤ 1 (inputs Q, c; c differentiable)."""

    def gradient(x, Q, c):
        return (Q @ x[..., None])[..., 0] + c

    return types.SimpleNamespace(
        rule="pgd",
        parameters={"Q": ("n", "n"), "c": ("n",)},
        grad_parameters=("c",),
        defaults={},
        dims={"n": 3},
        variable=("x", ("n",)),
        setting_checks={"step_size": _check_step_size},
        solve=solve,
        pullback=_pgd_pullback,
        update_map=_pgd_update_map,
        set=_BOX,
        set_data=lambda x, Q, c: (torch.zeros_like(c), torch.ones_like(c)),
        objective_grad_indices=(1,),
        set_grad_indices=(),
        objective=lambda x, Q, c: 0.5 * (x * gradient(x, Q, c) + c * x).sum(-1),
        gradient=gradient,
        hvp=lambda x, u, Q, c: (Q @ u[..., None])[..., 0],
        init=lambda Q, c: torch.zeros(c.shape[-1], dtype=c.dtype, device=c.device),
        gradient_vjp=lambda x, u, Q, c: u,
    )


def fake_layer(**settings):
    base = dict(
        max_iter=5000,
        tol=1e-12,
        step_size="auto",
        backward_method="direct",
        backward_max_iter=100,
        backward_tol=1e-12,
        forward_tol=1e-12,  # what the layer fits from tol and backward_tol for float64
        adjoint_tol=1e-12,
        backward_fallback=True,
        verbose=False,
        on_nonconvergence="raise",
        fold_unconverged=False,
        info=None,
        backward_info=None,
    )
    return types.SimpleNamespace(**{**base, **settings})


# Q = 2I: x* = clamp(−c/2, 0, 1), and ∂(Σ w x*)/∂c = −w/2 on the free components.
Q = 2 * torch.eye(3, dtype=F64)
C = torch.tensor([[-1.0, 0.5, -3.0], [-0.4, 2.0, -1.2]], dtype=F64)


@pytest.mark.parametrize(
    "solve", [_pgd_solve_lipschitz, _pgd_solve_fixed], ids=["lipschitz", "fixed"]
)
def test_solve_and_pullback_on_a_hand_written_record(solve):
    p = box_qp_record(solve)
    layer = fake_layer(step_size=0.5 if solve is _pgd_solve_fixed else "auto")
    x, state = solve(p, layer, [Q, C], None, {"n": 3}, torch.Size([2]))
    torch.testing.assert_close(x, (-C / 2).clamp(0, 1), atol=1e-12, rtol=0)
    assert layer.info.converged.tolist() == [True, True]
    w = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 2.0]], dtype=F64)
    grads = _pgd_pullback(p, layer, x, [Q, C], state, w)
    free = ((-C / 2 > 0) & (-C / 2 < 1)).to(F64)
    torch.testing.assert_close(grads[1], -w / 2 * free, atol=1e-12, rtol=0)
    assert grads[0] is None and bool(layer.backward_info.converged.all())


def test_the_folded_function_runs_on_the_record_too():
    p = box_qp_record(_pgd_solve_lipschitz)
    layer = fake_layer()
    c = C.clone().requires_grad_()
    x = _Fold.apply(layer, p, None, {"n": 3}, torch.Size([2]), _Tape(), Q, c)
    x.sum().backward()
    free = ((-C / 2 > 0) & (-C / 2 < 1)).to(F64)
    torch.testing.assert_close(c.grad, -free / 2, atol=1e-12, rtol=0)
