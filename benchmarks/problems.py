"""The benchmark cases: data, the generated layer, the KKT reference, and the convex peers.

Each case is one problem instance batch on which every method runs. Sizes follow the issue's
defaults; ``make_cases(quick=True)`` shrinks them for the CI smoke run.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from peers import admm_tv_loop, pgd_loop
from reference import Local, free_block_cholesky, kkt_lu, padded_indices

import foldgen

F64 = torch.float64
ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def generated_module(name):
    """generated/<name>.py, imported once per process for all cases and methods."""
    return foldgen.load_generated(ROOT / "generated" / f"{name}.py")


@dataclass
class BenchCase:
    """One row group of the table: a generated layer on fixed data, and how to check it."""

    name: str
    module: str  # generated/<module>.py
    layer_class: str
    bound: dict  # constructor inputs (no gradient)
    inputs: dict  # call inputs; those in ``grad`` get gradients
    grad: list
    batched: set  # inputs with a leading batch axis (others are shared by the batch)
    local: Callable  # (x_i, params_i) -> reference.Local
    convex: bool = True
    cvxpylayer: Callable | None = None  # () -> (CvxpyLayer, names of the inputs it takes)
    qpth: Callable | None = None  # (inputs) -> x, with qpth's QPFunction
    solution: Callable | None = None  # () -> x*, where foldgen's own may be inaccurate
    methods: list = field(default_factory=lambda: [None])  # foldgen backward methods to show
    settings: dict = field(default_factory=dict)  # extra layer settings
    # (inputs, tol, max_iter) -> (x, iterations): a hand-written loop with the same math.
    loop: Callable | None = None
    # (x*, g, foldgen's forward iterations) -> (forward(), backward(), what they time): the
    # exact answer's cost once x*'s active structure is known (see reference.py).
    floor: Callable | None = None

    @property
    def generated(self):
        return generated_module(self.module)

    def params(self) -> dict:
        return {**self.bound, **self.inputs}

    def batch_size(self) -> int:
        return self.inputs[self.grad[0]].shape[0]

    def head(self, k: int) -> BenchCase:
        """The same case on the first k batch elements."""
        inputs = {n: (v[:k] if n in self.batched else v) for n, v in self.inputs.items()}
        return replace(self, inputs=inputs)


# ---------------------------------------------------------------------------------------------
# Data.


def spd(n, gen, floor=0.1):
    a = torch.randn(n, n, generator=gen, dtype=F64)
    return a @ a.T / n + floor * torch.eye(n, dtype=F64)


def conditioned(n, cond, gen):
    """A symmetric matrix with eigenvalues log-spaced in [1, cond]."""
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64))
    eig = torch.logspace(0, torch.log10(torch.tensor(float(cond))).item(), n, dtype=F64)
    return (u * eig) @ u.T


def _bounds_active(x, lo=0.0, hi=1.0, tol=1e-10):
    """The box bounds that hold with equality at x (as constraint functions)."""
    at_lo = (x <= lo + tol).nonzero()[:, 0]
    at_hi = (x >= hi - tol).nonzero()[:, 0]
    return lambda x, p: torch.cat([lo - x[at_lo], x[at_hi] - hi])


# ---------------------------------------------------------------------------------------------
# Cases.


def box_qp(n, batch, gen):
    Q = spd(n, gen)
    c = torch.randn(batch, n, generator=gen, dtype=F64)

    def local(x, p):
        objective = lambda x, p: 0.5 * x @ p["Q"] @ x + p["c"] @ x  # noqa: E731
        return Local(objective, _bounds_active(x))

    def cvxpylayer():
        import cvxpy as cp
        from cvxpylayers.torch import CvxpyLayer

        x, c_ = cp.Variable(n), cp.Parameter(n)
        objective = 0.5 * cp.quad_form(x, cp.psd_wrap(Q.numpy())) + c_ @ x
        problem = cp.Problem(cp.Minimize(objective), [x >= 0, x <= 1])
        return CvxpyLayer(problem, parameters=[c_], variables=[x]), ["c"]

    def qpth(inputs):
        from qpth.qp import QPFunction

        eye = torch.eye(n, dtype=F64)
        G = torch.cat([eye, -eye])
        h = torch.cat([torch.ones(n, dtype=F64), torch.zeros(n, dtype=F64)])
        empty = torch.empty(0, dtype=F64)
        return QPFunction(verbose=-1)(Q, inputs["c"], G, h, empty, empty)

    def loop(inputs, tol, max_iter):
        return pgd_loop(Q, inputs["c"], 0.0, 1.0, tol, max_iter)

    def floor(x, g, iterations):
        free = (x > 1e-10) & (x < 1 - 1e-10)
        solve = free_block_cholesky(Q, free, g)
        rhs = -(c + torch.where(free, 0.0, x) @ Q)  # x_F = Q_FF⁻¹(−c_F − Q_FU x_U)
        setting = "bwd: Cholesky of Q_FF padded to the largest free set + 2 triangular solves; fwd: the same for x_F"
        return (lambda: solve(rhs)), (lambda: {"c": -solve(g)}), setting

    return BenchCase(
        f"box_qp n={n} b={batch}", "box_qp", "BoxQp", {"Q": Q}, {"c": c}, ["c"], {"c"},
        local, cvxpylayer=cvxpylayer, qpth=qpth, loop=loop, floor=floor,
    )  # fmt: skip


def _knapsack_local(x, p):
    def objective(x, p):
        return -(p["c"] @ x - p["eps"] * (x * torch.log(x)).sum())

    # The entropy's infinite slope at 0 keeps x > 0; the bound x ≤ 1 is active for large c.
    at_one = (x >= 1 - 1e-7).nonzero()[:, 0]
    return Local(objective, lambda x, p: torch.cat([(x.sum() - p["k"])[None], x[at_one] - 1]))


def knapsack(n, k, batch, scale, gen, rule):
    c = scale * torch.randn(batch, n, generator=gen, dtype=F64)
    bound = {"k": torch.tensor(float(k), dtype=F64), "eps": torch.tensor(1.0, dtype=F64)}

    def cvxpylayer():
        import cvxpy as cp
        from cvxpylayers.torch import CvxpyLayer

        x, c_ = cp.Variable(n), cp.Parameter(n)
        objective = c_ @ x + cp.sum(cp.entr(x))
        problem = cp.Problem(cp.Maximize(objective), [x >= 0, x <= 1, cp.sum(x) == k])
        return CvxpyLayer(problem, parameters=[c_], variables=[x]), ["c"]

    def solution():
        """The reference point for both rules: PGD, which converges on every element."""
        layer = generated_module("entropic_knapsack").EntropicKnapsack(**bound, tol=1e-12)
        return layer(c)

    module, cls = {
        "pgd": ("entropic_knapsack", "EntropicKnapsack"),
        "sqp": ("entropic_knapsack_sqp", "EntropicKnapsackSqp"),
    }[rule]
    return BenchCase(
        f"{module} n={n} k={k} b={batch} scale={scale:g}", module, cls, bound, {"c": c},
        ["c"], {"c"}, _knapsack_local, cvxpylayer=cvxpylayer, solution=solution,
    )  # fmt: skip


def portfolio(n, batch, gen):
    F = 0.2 * torch.randn(n, 3, generator=gen, dtype=F64)
    Sigma = F @ F.T + torch.diag(0.02 + 0.06 * torch.rand(n, generator=gen, dtype=F64))
    mu = 0.1 + 0.05 * torch.randn(batch, n, generator=gen, dtype=F64)
    gamma = torch.tensor(0.05, dtype=F64)

    def local(x, p):
        zero = (x <= 1e-8).nonzero()[:, 0]
        risk = x @ p["Sigma"] @ x >= p["gamma"] - 1e-8

        def active(x, p):
            parts = [(x.sum() - 1)[None], -x[zero]]
            if risk:
                parts.append((x @ p["Sigma"] @ x - p["gamma"])[None])
            return torch.cat(parts)

        return Local(lambda x, p: -(p["mu"] @ x), active)

    def cvxpylayer():
        import cvxpy as cp
        from cvxpylayers.torch import CvxpyLayer

        chol = torch.linalg.cholesky(Sigma).numpy()
        x, mu_ = cp.Variable(n), cp.Parameter(n)
        constraints = [cp.sum(x) == 1, x >= 0, cp.sum_squares(chol.T @ x) <= float(gamma)]
        problem = cp.Problem(cp.Maximize(mu_ @ x), constraints)
        return CvxpyLayer(problem, parameters=[mu_], variables=[x]), ["mu"]

    def floor(x, g, iterations):
        # Forward: per SQP iteration one LU of the interior point's full KKT matrix, size
        # 2n + 2 (H, the budget row, the n + 1 inequalities with their −S/Λ block).
        ones, eye = torch.ones(batch, 1, n, dtype=F64), torch.eye(n, dtype=F64)
        rows = torch.cat([ones, -eye.expand(batch, n, n), (2 * x @ Sigma)[:, None]], 1)
        corner = torch.cat([torch.zeros(batch, 1), -torch.ones(batch, n + 1)], 1).to(F64)
        full = kkt_lu(2 * Sigma, rows, torch.ones(batch, n + 2, dtype=torch.bool), corner)
        rhs_full = torch.randn(batch, 2 * n + 2, dtype=F64)
        # Backward: one LU of the active set's KKT matrix, H = 2ν Σ with ν the risk
        # multiplier (least squares of Jᵀν = μ, as in the reference); ∂ℓ/∂μ = w_x.
        zero = x <= 1e-8
        index, valid = padded_indices(zero)
        J = torch.zeros(batch, index.shape[1] + 2, n, dtype=F64)
        J[:, 0] = 1
        J[:, 1:-1] = -eye[index]
        mask = torch.cat(
            [
                torch.ones(batch, 1, dtype=torch.bool),
                valid,
                ((x @ Sigma) * x).sum(-1, keepdim=True) >= gamma - 1e-8,
            ],
            1,
        )
        J[:, -1] = 2 * x @ Sigma
        J = J.masked_fill(~mask[..., None], 0)
        nu = torch.stack(  # per element, on its real rows only
            [
                torch.linalg.lstsq(J[i, mask[i]].T, mu[i, :, None]).solution[-1, 0]
                for i in range(batch)
            ]
        ).masked_fill(~mask[:, -1], 0)
        active = kkt_lu(2 * nu[:, None, None] * Sigma, J, mask)
        rhs = torch.cat([g, torch.zeros(batch, J.shape[1], dtype=F64)], 1)

        def forward():
            for _ in range(iterations):
                full(rhs_full)

        setting = (
            f"fwd: {iterations} SQP it × LU of the (2n+2) IP KKT; bwd: LU of the active-set KKT"
        )
        return forward, (lambda: {"mu": active(rhs)[:, :n]}), setting

    bound = {"Sigma": Sigma, "gamma": gamma}
    return BenchCase(
        f"portfolio n={n} b={batch}", "portfolio", "Portfolio", bound, {"mu": mu}, ["mu"],
        {"mu"}, local, cvxpylayer=cvxpylayer, floor=floor,
    )  # fmt: skip


def piecewise_constant(batch, n, gen, pieces=5, noise=0.3):
    """Signals with ``pieces`` random levels between random jump points, plus noise."""
    clean = torch.empty(batch, n, dtype=F64)
    for i in range(batch):
        jumps = torch.sort(torch.randperm(n - 1, generator=gen)[: pieces - 1] + 1).values
        levels = torch.randn(pieces, generator=gen, dtype=F64)
        edges = [0, *jumps.tolist(), n]
        for j in range(pieces):
            clean[i, edges[j] : edges[j + 1]] = levels[j]
    return clean, clean + noise * torch.randn(batch, n, generator=gen, dtype=F64)


def tv_denoise(n, batch, gen):
    _, y = piecewise_constant(batch, n, gen)
    D = torch.diff(torch.eye(n, dtype=F64), dim=0)  # (n − 1, n) forward differences
    lam = torch.tensor(0.5, dtype=F64)

    def local(x, p):
        # Near x*, ‖Dx‖₁ is smooth off the fused pairs Z = {(Dx)ᵢ = 0} and Z holds as equalities.
        dx = p["D"] @ x
        fused = dx.abs() <= 1e-6
        sign = torch.where(fused, 0.0, torch.sign(dx))

        def objective(x, p):
            return 0.5 * ((x - p["y"]) ** 2).sum() + p["lam"] * (sign * (p["D"] @ x)).sum()

        return Local(objective, lambda x, p: (p["D"] @ x)[fused])

    def cvxpylayer():
        import cvxpy as cp
        from cvxpylayers.torch import CvxpyLayer

        x, y_, D_ = cp.Variable(n), cp.Parameter(n), cp.Parameter((n - 1, n))
        objective = 0.5 * cp.sum_squares(x - y_) + float(lam) * cp.norm1(D_ @ x)
        problem = cp.Problem(cp.Minimize(objective))
        return CvxpyLayer(problem, parameters=[y_, D_], variables=[x]), ["y", "D"]

    rho = 1.0  # the spec's

    def loop(inputs, tol, max_iter):
        return admm_tv_loop(inputs["y"], inputs["D"], lam, rho, tol, max_iter)

    def floor(x, g, iterations):
        # Forward: the minimal loop (one shared factorisation) for foldgen's iteration count,
        # without a stopping test. Backward: one LU of the KKT matrix of the fused pairs
        # Z = {(Dx)ᵢ = 0} as equalities, [[I, D_Zᵀ], [D_Z, 0]], padded; ∂ℓ/∂y = w_x.
        index, valid = padded_indices((x @ D.T).abs() <= 1e-6)
        active = kkt_lu(torch.eye(n, dtype=F64), D[index], valid)
        rhs = torch.cat([g, torch.zeros(batch, index.shape[1], dtype=F64)], 1)

        def forward():
            admm_tv_loop(y, D, lam, rho, 0.0, iterations, fixed_iterations=iterations)

        def backward():
            active(rhs)  # the y part only; D's is outer products of w (not timed, not checked)

        setting = f"fwd: one Cholesky of I + ρDᵀD + {iterations} bare ADMM sweeps; bwd: LU of the fused set's KKT"
        return forward, backward, setting

    return BenchCase(
        f"tv_denoise n={n} b={batch}", "tv_denoise", "TvDenoise", {"lam": lam},
        {"y": y, "D": D}, ["y", "D"], {"y"}, local, cvxpylayer=cvxpylayer, loop=loop,
        floor=floor,
    )  # fmt: skip


def nonconvex_qp(n, batch, gen):
    """DC3's nonconvex program: Q = diag(U[0, 1]), A and G Gaussian and shared, b ∈ U[−1, 1]
    per element and h = Σⱼ |G A⁺|ᵢⱼ (feasible for every such b); p ∈ U[0, 1] per element."""
    neq = nineq = n // 2
    Q = torch.diag(torch.rand(n, generator=gen, dtype=F64))
    A = torch.randn(neq, n, generator=gen, dtype=F64)
    G = torch.randn(nineq, n, generator=gen, dtype=F64)
    h = (G @ torch.linalg.pinv(A)).abs().sum(-1)
    b = 2 * torch.rand(batch, neq, generator=gen, dtype=F64) - 1
    p = torch.rand(batch, n, generator=gen, dtype=F64)

    def local(y, p_):
        tight = (p_["G"] @ y - p_["h"] >= -1e-8).nonzero()[:, 0]

        def objective(y, q):
            return 0.5 * y @ q["Q"] @ y + q["p"] @ torch.sin(y)

        def active(y, q):
            return torch.cat([q["A"] @ y - q["b"], (q["G"] @ y - q["h"])[tight]])

        return Local(objective, active)

    bound = {"Q": Q, "A": A, "G": G, "h": h}
    return BenchCase(
        f"nonconvex_qp n={n} b={batch}", "nonconvex_qp", "NonconvexQp", bound,
        {"p": p, "b": b}, ["p"], {"p", "b"}, local, convex=False,
    )  # fmt: skip


def quadratic(n, batch, cond, gen):
    Q = conditioned(n, cond, gen)
    b = torch.randn(batch, n, generator=gen, dtype=F64)

    def local(x, p):
        return Local(lambda x, p: 0.5 * x @ p["Q"] @ x - p["b"] @ x)

    def cvxpylayer():
        import cvxpy as cp
        from cvxpylayers.torch import CvxpyLayer

        x, b_ = cp.Variable(n), cp.Parameter(n)
        objective = 0.5 * cp.quad_form(x, cp.psd_wrap(Q.numpy())) - b_ @ x
        return CvxpyLayer(cp.Problem(cp.Minimize(objective)), [b_], [x]), ["b"]

    def loop(inputs, tol, max_iter):
        return pgd_loop(Q, -inputs["b"], -math.inf, math.inf, tol, max_iter, accelerated=True)

    def floor(x, g, iterations):
        def solve(rhs):  # one Cholesky of the shared Q, all right-hand sides at once
            return torch.cholesky_solve(rhs.T, torch.linalg.cholesky(Q)).T

        setting = "one Cholesky of Q + 2 triangular solves for the batch (fwd: x = Q⁻¹b)"
        return (lambda: solve(b)), (lambda: {"b": solve(g)}), setting

    return BenchCase(
        f"quadratic n={n} b={batch} cond={cond:g}", "quadratic", "Quadratic", {"Q": Q},
        {"b": b}, ["b"], {"b"}, local, cvxpylayer=cvxpylayer,
        methods=["gmres", "lfpi", "direct"], settings={"backward_max_iter": 100_000},
        loop=loop, floor=floor,
    )  # fmt: skip


def inequality_qp(n, p, batch, gen):
    """qpth's random QPs (the OptNet paper's): P = LLᵀ + 0.1I, G Gaussian, h = G z₀ + s₀ with
    s₀ > 0, per element q and h; inequality_qp's box −1 ≤ x ≤ 1 with z₀ inside it. ADMM."""
    L = torch.randn(n, n, generator=gen, dtype=F64)
    P = L @ L.T / n + 0.1 * torch.eye(n, dtype=F64)
    G = torch.randn(p, n, generator=gen, dtype=F64)
    z0 = torch.rand(batch, n, generator=gen, dtype=F64) - 0.5
    h = z0 @ G.T + torch.rand(batch, p, generator=gen, dtype=F64)
    q = torch.randn(batch, n, generator=gen, dtype=F64)

    def active_rows(x, h_):
        tight = (x @ G.T - h_ >= -1e-8).nonzero()[:, 0]
        at_hi, at_lo = (x >= 1 - 1e-8).nonzero()[:, 0], (x <= -1 + 1e-8).nonzero()[:, 0]
        return tight, at_hi, at_lo

    def local(x, p_):
        tight, at_hi, at_lo = active_rows(x, p_["h"])

        def active(x, q_):
            return torch.cat([(q_["G"] @ x - q_["h"])[tight], x[at_hi] - 1, -1 - x[at_lo]])

        return Local(lambda x, q_: 0.5 * x @ q_["P"] @ x + q_["q"] @ x, active)

    def cvxpylayer():
        import cvxpy as cp
        from cvxpylayers.torch import CvxpyLayer

        x, q_, h_ = cp.Variable(n), cp.Parameter(n), cp.Parameter(p)
        objective = 0.5 * cp.quad_form(x, cp.psd_wrap(P.numpy())) + q_ @ x
        constraints = [G.numpy() @ x <= h_, x >= -1, x <= 1]
        problem = cp.Problem(cp.Minimize(objective), constraints)
        return CvxpyLayer(problem, parameters=[q_, h_], variables=[x]), ["q", "h"]

    def qpth(inputs):
        from qpth.qp import QPFunction

        eye = torch.eye(n, dtype=F64)
        G_all = torch.cat([G, eye, -eye])
        h_all = torch.cat([inputs["h"], torch.ones(batch, 2 * n, dtype=F64)], 1)
        empty = torch.empty(0, dtype=F64)
        return QPFunction(verbose=-1)(P, inputs["q"], G_all, h_all, empty, empty)

    def floor(x, g, iterations):
        # One LU of the active set's KKT matrix [[P, J_Aᵀ], [J_A, 0]] (rows of G, ±e_i),
        # padded; fwd: x* from it (rhs (−q, h_A, ±1)), bwd: ∂ℓ/∂q = −w_x.
        rows, values, eye = [], [], torch.eye(n, dtype=F64)
        for i in range(batch):
            tight, at_hi, at_lo = active_rows(x[i], h[i])
            rows.append(torch.cat([G[tight], eye[at_hi], -eye[at_lo]]))
            values.append(torch.cat([h[i, tight], torch.ones(len(at_hi) + len(at_lo))]))
        m = max(max(len(r) for r in rows), 1)
        J = torch.zeros(batch, m, n, dtype=F64)
        valid = torch.zeros(batch, m, dtype=torch.bool)
        rhs_f = torch.cat([-q, torch.zeros(batch, m, dtype=F64)], 1)
        for i, r in enumerate(rows):
            J[i, : len(r)], valid[i, : len(r)] = r, True
            rhs_f[i, n : n + len(r)] = values[i]
        solve = kkt_lu(P, J, valid)
        rhs_b = torch.cat([g, torch.zeros(batch, m, dtype=F64)], 1)
        setting = "LU of the active set's KKT (rows of G and ±e_i, padded); fwd: x* from it"
        return (lambda: solve(rhs_f)), (lambda: {"q": -solve(rhs_b)[:, :n]}), setting

    return BenchCase(
        f"inequality_qp n={n} p={p} b={batch}", "inequality_qp", "InequalityQp",
        {"P": P, "G": G}, {"q": q, "h": h}, ["q"], {"q", "h"}, local,
        cvxpylayer=cvxpylayer, qpth=qpth, floor=floor,
    )  # fmt: skip


def make_cases(quick=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if quick:
        return [
            box_qp(20, 8, gen),
            knapsack(30, 5, 8, 5.0, gen, "pgd"),
            knapsack(30, 5, 8, 5.0, gen, "sqp"),
            portfolio(10, 8, gen),
            tv_denoise(30, 4, gen),
            nonconvex_qp(20, 8, gen),
            quadratic(20, 8, 100, gen),
            inequality_qp(10, 10, 4, gen),
        ]
    cases = [box_qp(n, batch, gen) for n in (20, 100, 500) for batch in (1, 64)]
    cases += [
        knapsack(100, 5, 64, scale, gen, rule) for rule in ("pgd", "sqp") for scale in (1, 5)
    ]
    cases += [portfolio(50, 64, gen), tv_denoise(100, 32, gen), nonconvex_qp(100, 64, gen)]
    cases += [quadratic(100, 64, cond, gen) for cond in (10, 100, 1000)]
    cases += [inequality_qp(n, p, 16, gen) for n, p in ((10, 10), (50, 50))]
    return cases
