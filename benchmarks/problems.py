"""The benchmark cases: data, the generated layer, the KKT reference, and the convex peers.

Each case is one problem instance batch on which every method runs. Sizes follow the issue's
defaults; ``make_cases(quick=True)`` shrinks them for the CI smoke run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from reference import Local

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

    return BenchCase(
        f"box_qp n={n} b={batch}", "box_qp", "BoxQp", {"Q": Q}, {"c": c}, ["c"], {"c"},
        local, cvxpylayer=cvxpylayer, qpth=qpth,
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

    bound = {"Sigma": Sigma, "gamma": gamma}
    return BenchCase(
        f"portfolio n={n} b={batch}", "portfolio", "Portfolio", bound, {"mu": mu}, ["mu"],
        {"mu"}, local, cvxpylayer=cvxpylayer,
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

    return BenchCase(
        f"tv_denoise n={n} b={batch}", "tv_denoise", "TvDenoise", {"lam": lam},
        {"y": y, "D": D}, ["y", "D"], {"y"}, local, cvxpylayer=cvxpylayer,
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

    return BenchCase(
        f"quadratic n={n} b={batch} cond={cond:g}", "quadratic", "Quadratic", {"Q": Q},
        {"b": b}, ["b"], {"b"}, local, cvxpylayer=cvxpylayer,
        methods=["gmres", "lfpi", "direct"], settings={"backward_max_iter": 100_000},
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
        ]
    cases = [box_qp(n, batch, gen) for n in (20, 100, 500) for batch in (1, 64)]
    cases += [
        knapsack(100, 5, 64, scale, gen, rule) for rule in ("pgd", "sqp") for scale in (1, 5)
    ]
    cases += [portfolio(50, 64, gen), tv_denoise(100, 32, gen), nonconvex_qp(100, 64, gen)]
    cases += [quadratic(100, 64, cond, gen) for cond in (10, 100, 1000)]
    return cases
