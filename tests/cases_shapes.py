"""Battery cases for the specs with matrix, scalar or several variables (packed into one
state; the battery compares the variables flattened row-major and joined in spec order, as
``as_state`` in test_battery.py does). Each has an independent CVXPY model in its natural
CVXPY formulation.
"""

from __future__ import annotations

import numpy as np
import torch
from cases import TIGHT, Case, _rand, _randn
from cases_sqp import unrolled_sqp


def _nnls(batch, dtype, gen, m=12, n=5, k=3):
    return {
        "A": _randn(gen, *batch, m, n, dtype=dtype),
        "B": _randn(gen, *batch, m, k, dtype=dtype),
    }


def _nnls_cvx(v):
    import cvxpy as cp

    A, B = v["A"], v["B"]
    W = cp.Variable((A.shape[1], B.shape[1]))
    cp.Problem(cp.Minimize(0.5 * cp.sum_squares(A @ W - B)), [W >= 0]).solve(
        solver=cp.CLARABEL, **TIGHT
    )
    return W.value.ravel()


def _logreg(batch, dtype, gen, N=20, d=4, k=3):
    labels = torch.randint(0, k, (*batch, N), generator=gen)
    return {
        "X": _randn(gen, *batch, N, d, dtype=dtype),
        "Y": torch.nn.functional.one_hot(labels, k).to(dtype),
        "lam": torch.tensor(0.1, dtype=dtype),
    }


def _logreg_cvx(v):
    import cvxpy as cp

    X, Y, lam = v["X"], v["Y"], float(v["lam"])
    W = cp.Variable((X.shape[1], Y.shape[1]))
    S = X @ W
    loss = (cp.sum(cp.log_sum_exp(S, axis=1)) - cp.sum(cp.multiply(Y, S))) / X.shape[0]
    cp.Problem(cp.Minimize(loss + 0.5 * lam * cp.sum_squares(W))).solve(
        solver=cp.CLARABEL, **TIGHT
    )
    return W.value.ravel()


def _mpc(batch, dtype, gen, nx=3, nu=2):
    eye = torch.eye(nx, dtype=torch.float64)
    return {
        "A": (eye + 0.1 * _randn(gen, *batch, nx, nx, dtype=torch.float64)).to(dtype),
        "B": _randn(gen, *batch, nx, nu, dtype=dtype),
        "x0": 2 * _randn(gen, *batch, nx, dtype=dtype),
        "q": 1 + _rand(gen, *batch, nx, dtype=dtype),
        "r": 0.1 + _rand(gen, *batch, nu, dtype=dtype),
        "umax": torch.tensor(1.0, dtype=dtype),
    }


def _mpc_cvx(v, T=5):
    import cvxpy as cp

    A, B, x0, q, r, umax = v["A"], v["B"], v["x0"], v["q"], v["r"], float(v["umax"])
    X = cp.Variable((T + 1, A.shape[0]))
    U = cp.Variable((T, B.shape[1]))
    cost = 0.5 * cp.sum(cp.square(X) @ q) + 0.5 * cp.sum(cp.square(U) @ r)
    constraints = [X[0] == x0, X[1:] == X[:-1] @ A.T + U @ B.T, cp.abs(U) <= umax]
    cp.Problem(cp.Minimize(cost), constraints).solve(solver=cp.CLARABEL, **TIGHT)
    return np.concatenate([X.value.ravel(), U.value.ravel()])


def _mpc_lqr(batch, dtype, gen, nx=3, nu=2):
    """The bounded LQR at the spec's horizon (N = 20) with small nx, nu: H = L Lᵀ + 0.1 I,
    A scaled to spectral radius 0.95, x₀ large enough that some controls sit at ±1."""
    f64 = torch.float64
    nt = nx + nu
    L = _randn(gen, *batch, nt, nt, dtype=f64) / nt**0.5
    H = L @ L.mT + 0.1 * torch.eye(nt, dtype=f64)
    A = torch.eye(nx, dtype=f64) + 0.2 * _randn(gen, *batch, nx, nx, dtype=f64)
    A = A * (0.95 / torch.linalg.eigvals(A).abs().amax(-1))[..., None, None]
    values = {
        "Hxx": H[..., :nx, :nx], "Hxu": H[..., :nx, nx:], "Hux": H[..., nx:, :nx],
        "Huu": H[..., nx:, nx:], "A": A, "B": _randn(gen, *batch, nx, nu, dtype=f64),
        "b": 0.1 * _randn(gen, *batch, nx, dtype=f64), "x0": 3 * _randn(gen, *batch, nx, dtype=f64),
        "umax": torch.tensor(1.0, dtype=f64),
    }  # fmt: skip
    return {k: v.to(dtype) for k, v in values.items()}


def _mpc_lqr_cvx(v, N=20):
    import cvxpy as cp

    nx, nu = v["B"].shape
    H = np.block([[v["Hxx"], v["Hxu"]], [v["Hux"], v["Huu"]]])
    X, U = cp.Variable((N, nx)), cp.Variable((N, nu))
    tau = cp.hstack([X, U])
    factor = np.linalg.cholesky(0.5 * (H + H.T))  # ½ Σ τₜᵀHτₜ = ½ ‖τ F‖², F Fᵀ = H
    cost = 0.5 * cp.sum_squares(tau @ factor)
    constraints = [X[0] == v["x0"], X[1:] == X[:-1] @ v["A"].T + U[:-1] @ v["B"].T + v["b"]]
    constraints += [cp.abs(U) <= float(v["umax"])]
    cp.Problem(cp.Minimize(cost), constraints).solve(solver=cp.CLARABEL, **TIGHT)
    return np.concatenate([X.value.ravel(), U.value.ravel()])


def _transport(batch, dtype, gen, n=3, m=4):
    a = 0.5 + _rand(gen, *batch, n, dtype=torch.float64)
    b = 0.5 + _rand(gen, *batch, m, dtype=torch.float64)
    return {
        "C": _rand(gen, *batch, n, m, dtype=dtype),
        "a": (a / a.sum(-1, keepdim=True)).to(dtype),
        "b": (b / b.sum(-1, keepdim=True)).to(dtype),
        "eps": torch.tensor(0.1, dtype=dtype),
    }


def _transport_cvx(v):
    import cvxpy as cp

    C, a, b, eps = v["C"], v["a"], v["b"], float(v["eps"])
    P = cp.Variable(C.shape)
    objective = cp.sum(cp.multiply(C, P)) - eps * cp.sum(cp.entr(P))
    constraints = [cp.sum(P, axis=1) == a, cp.sum(P, axis=0) == b, P >= 0]
    cp.Problem(cp.Minimize(objective), constraints).solve(solver=cp.CLARABEL, **TIGHT)
    return P.value.ravel()


def _exp_cone(batch, dtype, gen):
    return {
        "a": _randn(gen, *batch, dtype=dtype),
        "b": 0.5 + _rand(gen, *batch, dtype=dtype),
        "c": _randn(gen, *batch, dtype=dtype),
        "ymin": torch.tensor(0.01, dtype=dtype),
    }


def _exp_cone_cvx(v):
    import cvxpy as cp

    x, y, z = cp.Variable(), cp.Variable(), cp.Variable()
    a, b, c, ymin = (float(v[k]) for k in ("a", "b", "c", "ymin"))
    objective = cp.square(x - a) + cp.square(y - b) + cp.square(z - c)
    constraints = [cp.constraints.ExpCone(x, y, z), y >= ymin]
    cp.Problem(cp.Minimize(objective), constraints).solve(solver=cp.CLARABEL, **TIGHT)
    return np.array([x.value, y.value, z.value])


def _psd(batch, dtype, gen, n=4):
    """A symmetric A = Q diag(λ) Qᵀ with |λ| in [0.5, 1.5] and mixed signs: the projection
    clips some eigenvalues, and none is near the kink at 0."""
    q, _ = torch.linalg.qr(_randn(gen, *batch, n, n, dtype=torch.float64))
    size = 0.5 + _rand(gen, *batch, n, dtype=torch.float64)
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)[:n]
    a = (q * (sign * size)[..., None, :]) @ q.mT
    return {"A": (0.5 * (a + a.mT)).to(dtype)}


def _psd_cvx(v):
    import cvxpy as cp

    A = v["A"]
    X = cp.Variable(A.shape, symmetric=True)
    cp.Problem(cp.Minimize(0.5 * cp.sum_squares(X - A)), [X >> 0]).solve(
        solver=cp.CLARABEL, **TIGHT
    )
    return X.value.ravel()


def _soc(batch, dtype, gen, n=6):
    """y anywhere, s between −½‖y‖ and 1.5‖y‖: the projection is y itself (s > ‖y‖) or on the
    cone's boundary at t = (s + ‖y‖)/2 ≥ ‖y‖/4, away from the apex."""
    y = _randn(gen, *batch, n, dtype=dtype)
    scale = -0.5 + 2.0 * _rand(gen, *batch, dtype=dtype)
    return {"y": y, "s": scale * torch.linalg.vector_norm(y, dim=-1)}


def _soc_cvx(v):
    import cvxpy as cp

    x, t = cp.Variable(v["y"].shape[-1]), cp.Variable()
    objective = cp.sum_squares(x - v["y"]) + cp.square(t - float(v["s"]))
    cp.Problem(cp.Minimize(objective), [cp.norm(x, 2) <= t]).solve(solver=cp.CLARABEL, **TIGHT)
    return np.concatenate([x.value, [t.value]])


CASES: dict[str, Case] = {
    "nnls_matrix": Case(_nnls, _nnls_cvx),
    "multiclass_logreg": Case(_logreg, _logreg_cvx),
    "mpc": Case(_mpc, _mpc_cvx, unrolled_sqp),
    "mpc_lqr": Case(_mpc_lqr, _mpc_lqr_cvx, unrolled_sqp),
    "optimal_transport": Case(_transport, _transport_cvx, unrolled_sqp),
    "exp_cone_projection": Case(_exp_cone, _exp_cone_cvx, unrolled_sqp),
    "psd_projection": Case(_psd, _psd_cvx),
    "soc_projection": Case(_soc, _soc_cvx),
}
