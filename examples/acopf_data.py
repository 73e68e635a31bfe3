"""PYPOWER cases as inputs of the generated Acopf layer (specs/acopf.yaml), and PYPOWER's own
AC-OPF (``runopf``, a primal-dual interior point) as the reference.

The spec works in per unit on the system base (``baseMVA``): voltages V = e + j f, powers
divided by baseMVA. Costs are PYPOWER's polynomial costs c2 P² + c1 P + c0 with P in MW,
so the per-unit coefficients are c2·base², c1·base, c0, divided by ``COST_UNIT`` = 1000:
the layer's objective is in k$/h (PYPOWER's in $/h). The gradient of the optimal cost with
respect to a bus's per-unit active load, times 1000 / baseMVA, is that bus's locational
marginal price in $/MWh (PYPOWER's LAM_P); ``lmp`` does the conversion.

Every matrix is dense: the layer's batched dense linear algebra is what makes it fast on
small and medium networks (the SQP's KKT systems are dense anyway), and the parameters grow
as nb² and nl·nb (case118: 118 buses, 186 branches, 54 generators, 344 variables).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# PYPOWER's column indices (pypower.idx_bus / idx_gen / idx_brch / idx_cost), written out so
# that this module imports without pypower; ``reference`` needs pypower.
BUS_TYPE, PD, QD, VM, VA, VMAX, VMIN, LAM_P, LAM_Q = 1, 2, 3, 7, 8, 11, 12, 13, 14
GEN_BUS, PG, QG, QMAX, QMIN, GEN_STATUS, PMAX, PMIN = 0, 1, 2, 3, 4, 7, 8, 9
F_BUS, T_BUS, RATE_A, BR_STATUS = 0, 1, 5, 10
COST_MODEL, NCOST, COST = 0, 3, 4
REF = 3


@dataclass
class Case:
    """A PYPOWER case in the layer's terms: ``inputs`` in the spec's parameter order
    (float64 tensors), the sizes, and what turns results back into PYPOWER's units."""

    name: str
    inputs: dict[str, torch.Tensor]
    base_mva: float
    nb: int
    nl: int
    ng: int
    ref_angle: float  # radians

    @property
    def variables(self) -> int:
        return 2 * self.nb + 2 * self.ng

    @property
    def constraints(self) -> int:
        """Scalar constraints: 2 nb balances, 1 reference angle, 2 nb voltage bounds,
        2 nl flow limits and 4 ng generator bounds."""
        return 2 * self.nb + 1 + 2 * self.nb + 2 * self.nl + 4 * self.ng


def _pypower_case(case):
    """A case name (``"case30"``) or a PYPOWER case dict, in PYPOWER's internal order."""
    from pypower import api
    from pypower.ext2int import ext2int

    ppc = getattr(api, case)() if isinstance(case, str) else case
    return ext2int(ppc)


COST_UNIT = 1000.0  # the layer's objective is in thousands of $/h


def load_case(case, dtype: torch.dtype = torch.float64) -> Case:
    """The layer's inputs for a PYPOWER case (name or dict); in-service branches and
    generators only, every branch's RATE_A as its limit (0, PYPOWER's "unlimited", becomes a
    limit no flow reaches). Costs are in thousands of $/h (``COST_UNIT``): in $/h the
    balance multipliers (≈ LMP·baseMVA, thousands) dwarf the constraints' derivatives and the
    KKT systems lose about six digits (folded and unrolled derivatives differed by 3e-7 on
    case9, against 2e-14 in k$/h)."""
    from pypower.makeYbus import makeYbus

    ppc = _pypower_case(case)
    base = float(ppc["baseMVA"])
    bus, gen, branch = ppc["bus"], ppc["gen"], ppc["branch"]
    gen_on = gen[:, GEN_STATUS] > 0
    gen, cost = gen[gen_on], ppc["gencost"][: len(ppc["gen"])][gen_on]
    branch = branch[branch[:, BR_STATUS] > 0]
    if not np.all(cost[:, COST_MODEL] == 2) or not np.all(cost[:, NCOST] <= 3):
        raise ValueError("only polynomial costs of degree at most 2 are supported")
    nb, nl, ng = len(bus), len(branch), len(gen)
    Ybus, Yf, Yt = (m.toarray() for m in makeYbus(base, bus, branch))
    f_bus, t_bus = branch[:, F_BUS].astype(int), branch[:, T_BUS].astype(int)
    Cf = np.zeros((nl, nb))
    Cf[np.arange(nl), f_bus] = 1
    Ct = np.zeros((nl, nb))
    Ct[np.arange(nl), t_bus] = 1
    Cg = np.zeros((nb, ng))
    Cg[gen[:, GEN_BUS].astype(int), np.arange(ng)] = 1
    coefficients = np.zeros((ng, 3))  # c2, c1, c0 in MW
    for i, row in enumerate(cost):
        k = int(row[NCOST])
        coefficients[i, 3 - k :] = row[COST : COST + k]
    rate = branch[:, RATE_A] / base
    rate = np.where(rate > 0, rate, 1e3)
    ref = (bus[:, BUS_TYPE] == REF).astype(float)
    angle = math.radians(float(bus[bus[:, BUS_TYPE] == REF][0, VA]))
    data = {
        "G": Ybus.real, "B": Ybus.imag,
        "Gf": Yf.real, "Bf": Yf.imag, "Gt": Yt.real, "Bt": Yt.imag,
        "Cf": Cf, "Ct": Ct, "Cg": Cg,
        "Pd": bus[:, PD] / base, "Qd": bus[:, QD] / base,
        "c2": coefficients[:, 0] * base**2 / COST_UNIT,
        "c1": coefficients[:, 1] * base / COST_UNIT,
        "c0": coefficients[:, 2] / COST_UNIT,
        "Pmin": gen[:, PMIN] / base, "Pmax": gen[:, PMAX] / base,
        "Qmin": gen[:, QMIN] / base, "Qmax": gen[:, QMAX] / base,
        "Vmin": bus[:, VMIN], "Vmax": bus[:, VMAX],
        "Smax": rate, "ref": ref,
        "ref_cos": np.array(math.cos(angle)), "ref_sin": np.array(math.sin(angle)),
    }  # fmt: skip
    inputs = {k: torch.as_tensor(np.asarray(v), dtype=dtype) for k, v in data.items()}
    name = case if isinstance(case, str) else "case"
    return Case(name, inputs, base, nb, nl, ng, angle)


@dataclass
class Reference:
    """``runopf``'s solution in PYPOWER's units (MW, MVAr, p.u., degrees, $/h, $/MWh)."""

    objective: float
    vm: np.ndarray
    va: np.ndarray
    pg: np.ndarray
    qg: np.ndarray
    lmp: np.ndarray
    iterations: int
    seconds: float


def reference(case, tol: float = 1e-10) -> Reference:
    """PYPOWER's AC-OPF on the case (its PIPS interior point), run to ``tol`` on feasibility,
    gradient, complementarity and cost (PYPOWER's default 1e-6 is not tight enough to
    compare voltages at 1e-5)."""
    import time

    from pypower import api
    from pypower.api import ppoption, runopf

    ppc = getattr(api, case)() if isinstance(case, str) else case
    options = ppoption(
        VERBOSE=0, OUT_ALL=0, PDIPM_FEASTOL=tol, PDIPM_GRADTOL=tol, PDIPM_COMPTOL=tol,
        PDIPM_COSTTOL=tol,
    )  # fmt: skip
    start = time.perf_counter()
    result = runopf(ppc, options)
    seconds = time.perf_counter() - start
    if not result["success"]:
        raise RuntimeError(f"runopf did not converge on {case}")
    bus, gen = result["bus"], result["gen"]
    # The layer's generators are in PYPOWER's internal order (in service, sorted by bus).
    gen = gen[gen[:, GEN_STATUS] > 0][_pypower_case(case)["order"]["gen"]["e2i"]]
    return Reference(
        float(result["f"]), bus[:, VM].copy(), bus[:, VA].copy(), gen[:, PG].copy(),
        gen[:, QG].copy(), bus[:, LAM_P].copy(), int(result["raw"]["output"]["iterations"]),
        seconds,
    )  # fmt: skip


def cost(case: Case, Pg, c2=None, c1=None, c0=None):
    """The generation cost in k$/h of a dispatch Pg (p.u.), with the case's coefficients
    unless others are given (differentiable; a batch axis in front is kept)."""
    c2 = case.inputs["c2"] if c2 is None else c2
    c1 = case.inputs["c1"] if c1 is None else c1
    c0 = case.inputs["c0"] if c0 is None else c0
    return (c2 * Pg**2 + c1 * Pg + c0).sum(-1)


def lmp(case: Case, grad_Pd):
    """Locational marginal prices in $/MWh from ∂cost/∂Pd (k$/h per p.u.)."""
    return grad_Pd.detach().double().numpy() * COST_UNIT / case.base_mva


def to_pypower_units(case: Case, e, f, Pg, Qg):
    """The layer's (e, f, Pg, Qg) as PYPOWER reports them: |V| (p.u.), angle (degrees), MW,
    MVAr (numpy arrays; a batch axis in front is kept)."""
    e, f = e.detach().double().numpy(), f.detach().double().numpy()
    vm = np.hypot(e, f)
    va = np.degrees(np.arctan2(f, e))
    return (
        vm,
        va,
        Pg.detach().double().numpy() * case.base_mva,
        Qg.detach().double().numpy() * case.base_mva,
    )
