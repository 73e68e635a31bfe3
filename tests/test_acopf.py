"""The AC optimal power flow spec (specs/acopf.yaml) against PYPOWER's own AC-OPF solver
(``runopf``, a primal-dual interior point no one here wrote), on IEEE cases: the optimal
cost, voltages and dispatch, and the gradient of the optimal cost w.r.t. the loads against
the locational marginal prices runopf reports (its power-balance multipliers). pypower is a
test extra; without it these tests are skipped with that reason."""

from __future__ import annotations

import cases  # noqa: F401  (cases imports cases_sqp; importing that first is circular)
import numpy as np
import pytest
import torch
from cases_sqp import acopf_data
from test_battery import load_module


@pytest.fixture(scope="module")
def module():
    return load_module("acopf")


@pytest.mark.parametrize("name", ["case9", "case30"])
def test_matches_runopf(module, name):
    data = acopf_data()
    case, reference = data.load_case(name), data.reference(name)
    layer = module.Acopf(on_nonconvergence="raise")
    inputs = dict(case.inputs)
    inputs["Pd"] = inputs["Pd"].clone().requires_grad_()
    e, f, Pg, Qg = layer(**inputs)
    assert bool(layer.info.converged.all())
    cost = data.cost(case, Pg)
    cost.backward()
    objective = cost.item() * data.COST_UNIT
    assert abs(objective - reference.objective) <= 1e-6 * abs(reference.objective)
    vm, va, pg, qg = data.to_pypower_units(case, e, f, Pg, Qg)
    base = case.base_mva
    np.testing.assert_allclose(vm, reference.vm, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.radians(va), np.radians(reference.va), rtol=0, atol=1e-5)
    np.testing.assert_allclose(pg / base, reference.pg / base, rtol=0, atol=1e-5)
    np.testing.assert_allclose(qg / base, reference.qg / base, rtol=0, atol=1e-5)
    lmp = data.lmp(case, inputs["Pd"].grad)
    np.testing.assert_allclose(
        lmp, reference.lmp, rtol=1e-5, atol=1e-5 * np.abs(reference.lmp).max()
    )


def test_a_batch_of_load_scenarios_matches_runopf_one_by_one(module):
    """Four load levels of case9 in one batched call, each against its own runopf."""
    data = acopf_data()
    case = data.load_case("case9")
    scales = torch.tensor([0.8, 0.9, 1.0, 1.1], dtype=torch.float64)
    inputs = dict(case.inputs)
    inputs["Pd"] = inputs["Pd"] * scales[:, None]
    inputs["Qd"] = inputs["Qd"] * scales[:, None]
    layer = module.Acopf(on_nonconvergence="raise")
    _, _, Pg, _ = layer(**inputs)
    from pypower.api import case9

    for i, scale in enumerate(scales.tolist()):
        ppc = case9()
        ppc["bus"][:, 2:4] *= scale
        reference = data.reference(ppc)
        assert abs(float(data.cost(case, Pg[i])) * data.COST_UNIT - reference.objective) <= (
            1e-6 * reference.objective
        )


def test_cost_gradient_is_the_multiplier(module):
    """The envelope theorem inside the layer: ∂cost*/∂Pd equals the balance multipliers the
    layer itself reports (ν of the first block), the same physics read two ways."""
    data = acopf_data()
    case = data.load_case("case30")
    layer = module.Acopf()
    inputs = dict(case.inputs)
    inputs["Pd"] = inputs["Pd"].clone().requires_grad_()
    _, _, Pg, _ = layer(**inputs)
    data.cost(case, Pg).backward()
    nu = layer.info.multipliers[1]
    torch.testing.assert_close(inputs["Pd"].grad, nu[..., : case.nb], atol=1e-8, rtol=1e-7)
