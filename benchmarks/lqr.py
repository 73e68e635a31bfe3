"""Bounded LQR, the acados differentiable-MPC benchmark's setting, against mpc.pytorch,
qpth and cvxpylayers on the same data in one process (acados itself is not run here: its
figures are the published ones, quoted beside).

    python benchmarks/lqr.py --threads 1            # 128 problems, both u_max (~6 min)
    python benchmarks/lqr.py --quick                # 4 problems: a smoke run

Setting (Frey et al., "Differentiable Nonlinear Model Predictive Control", 2025): 128
problems, horizon N = 20, nx = 8, nu = 4, stage cost ½ τᵀHτ over τ = (x, u), dynamics
x⁺ = A x + B u + b from a given x₀, controls |u| ≤ u_max with u_max = 1e4 (no bound active)
and 1.0 (bounds active); gradients w.r.t. the cost and dynamics, 248 parameters: H = L Lᵀ +
0.1 I through its factor L (144 entries: cvxpylayers' DPP form needs the factor, and every
method gets the same L), A (64), B (32) and b (8). Each method's forward is one batched call
on inputs that require grad; its backward is one gradient of ⟨g, (X, U)⟩ w.r.t. (L, A, B, b)
for a fixed random g. The reference is the KKT system on the active bounds, solved in float64
and differentiated by autograd (independent of every method); "grad err" is
‖∇ − ∇_ref‖ / ‖∇_ref‖ over all 248 × 128 entries, "x err" the largest |(X, U) − ref|.
Writes benchmarks/results/lqr.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))

from _common import load_generated  # noqa: E402
from reference import relative_error  # noqa: E402

NX, NU = 8, 4
F64 = torch.float64
# Published (Frey et al. 2025, Table 2; a laptop, 4 threads): acados's times in ms and the
# other tools' times as multiples of acados's, for u_max = 1e4 and 1.0.
ACADOS_MS = {"forward": {1e4: 7.6, 1.0: 17.4}, "backward": {1e4: 36.6, 1.0: 58.4}}
PUBLISHED_X = {
    "mpc.pytorch": {"forward": {1e4: 9.2, 1.0: 1460.0}},
    "cvxpylayers": {"forward": {1e4: 42.6, 1.0: 118.0}, "backward": {1e4: 17.1, 1.0: 26.3}},
}


def make_data(batch, horizon, umax, seed=0):
    """L, A, B, b (requiring grad: the 248 parameters) and x₀, u_max; A = I + 0.1 G scaled to
    spectral radius 0.98 (over 20 steps an unstable A's states grow by 1.3²⁰ and the problem
    is a test of conditioning), B Gaussian, x₀ ~ 10 N(0, I): at u_max = 1 about a quarter of
    the controls sit at a bound (3 N(0, I) gave 3 %)."""
    g = torch.Generator().manual_seed(seed)
    nt = NX + NU
    return {
        "L": torch.randn(batch, nt, nt, generator=g, dtype=F64) / nt**0.5,
        "A": stable(
            torch.eye(NX, dtype=F64) + 0.1 * torch.randn(batch, NX, NX, generator=g, dtype=F64)
        ),
        "B": torch.randn(batch, NX, NU, generator=g, dtype=F64),
        "b": 0.1 * torch.randn(batch, NX, generator=g, dtype=F64),
        "x0": 10 * torch.randn(batch, NX, generator=g, dtype=F64),
        "umax": umax,
        "N": horizon,
    }


GRAD = ("L", "A", "B", "b")


def stable(A, radius=0.98):
    return A * (radius / torch.linalg.eigvals(A).abs().amax(-1))[..., None, None]


def weight_of(L):
    nt = L.shape[-1]
    return L @ L.mT + 0.1 * torch.eye(nt, dtype=L.dtype)


class Foldgen:
    label = "foldgen (sqp)"

    def __init__(self):
        self.module = load_generated("mpc_lqr")
        self.layer = self.module.MpcLqr(on_nonconvergence="ignore")

    def __call__(self, d, p):
        H = weight_of(p["L"])
        X, U = self.layer(
            Hxx=H[:, :NX, :NX],
            Hxu=H[:, :NX, NX:],
            Hux=H[:, NX:, :NX],
            Huu=H[:, NX:, NX:],
            A=p["A"],
            B=p["B"],
            b=p["b"],
            x0=d["x0"],
            umax=torch.tensor(d["umax"], dtype=F64),
        )  # fmt: skip (N is the spec's default, 20: no input carries it)
        return X, U, self.layer.info.converged

    def backward_ok(self):
        info = self.layer.backward_info
        return info.converged if info is not None else None


class MpcPytorch:
    label = "mpc.pytorch"

    def __call__(self, d, p):
        from mpc import mpc as mpc_module
        from mpc.mpc import LinDx, QuadCost

        batch, N = p["L"].shape[0], d["N"]
        H = weight_of(p["L"])
        C = H.unsqueeze(0).expand(N, batch, -1, -1)
        c = torch.zeros(N, batch, NX + NU, dtype=F64)
        F = torch.cat([p["A"], p["B"]], -1).unsqueeze(0).expand(N - 1, batch, -1, -1)
        f = p["b"].unsqueeze(0).expand(N - 1, batch, -1)
        bound = torch.full((N, batch, NU), d["umax"], dtype=F64)
        controller = mpc_module.MPC(
            NX, NU, N, u_lower=-bound, u_upper=bound, lqr_iter=50, verbose=-1, eps=1e-10,
            back_eps=1e-10, n_batch=batch, exit_unconverged=False, detach_unconverged=False,
            backprop=True,
        )  # fmt: skip
        x, u, _ = controller(d["x0"], QuadCost(C, c), LinDx(F, f))
        return x.transpose(0, 1), u.transpose(0, 1), None


class Qpth:
    label = "qpth"

    def __call__(self, d, p):
        from qpth.qp import QPFunction, QPSolvers

        Q, E, e, G, h = dense_qp(d, p)
        z = QPFunction(verbose=-1, eps=1e-12, maxIter=50, solver=QPSolvers.PDIPM_BATCHED)(
            Q, torch.zeros(Q.shape[:-1], dtype=F64), G, h, E, e
        )
        return *split(z, d["N"]), None


class Cvxpylayers:
    label = "cvxpylayers"

    def __init__(self, N, solver_args=None, label=None):
        import cvxpy as cp
        import numpy as np
        from cvxpylayers.torch import CvxpyLayer

        nt = NX + NU
        X, U = cp.Variable((N, NX)), cp.Variable((N, NU))
        L, A, B = cp.Parameter((nt, nt)), cp.Parameter((NX, NX)), cp.Parameter((NX, NU))
        b, x0, umax = cp.Parameter(NX), cp.Parameter(NX), cp.Parameter(nonneg=True)
        tau = cp.hstack([X, U])
        cost = 0.5 * cp.sum_squares(tau @ L) + 0.05 * cp.sum_squares(tau)
        row = np.ones((N - 1, 1)) @ cp.reshape(b, (1, NX), order="C")
        constraints = [X[0] == x0, X[1:] == X[:-1] @ A.T + U[:-1] @ B.T + row]
        constraints += [U <= umax, U >= -umax]
        problem = cp.Problem(cp.Minimize(cost), constraints)
        assert problem.is_dpp()
        self.layer = CvxpyLayer(problem, parameters=[L, A, B, b, x0, umax], variables=[X, U])
        self.args = {"n_jobs_forward": 1, **(solver_args or {})}
        if label:
            self.label = label

    def __call__(self, d, p):
        batch = p["L"].shape[0]
        umax = torch.full((batch,), d["umax"], dtype=F64)
        args = dict(self.args)
        if torch.is_grad_enabled():
            args["n_jobs_backward"] = 1
        X, U = self.layer(p["L"], p["A"], p["B"], p["b"], d["x0"], umax, solver_args=args)
        return X, U, None


def dense_qp(d, p):
    """The QP in z = (vec X, vec U) (row-major, foldgen's packing): Q, the equalities
    E z = e (x₀ and the N − 1 dynamics steps) and the bounds G z ≤ h, differentiable in p."""
    N, batch = d["N"], p["L"].shape[0]
    H = weight_of(p["L"])
    eye_n = torch.eye(N, dtype=F64)

    def kron(M):  # I_N ⊗ M, batched
        return torch.einsum("st,bij->bsitj", eye_n, M).reshape(batch, N * M.shape[-2], -1)

    Q = torch.cat(
        [torch.cat([kron(H[:, :NX, :NX]), kron(H[:, :NX, NX:])], -1),
         torch.cat([kron(H[:, NX:, :NX]), kron(H[:, NX:, NX:])], -1)], -2,
    )  # fmt: skip
    shift = torch.eye(N, dtype=F64)[1:]  # rows t + 1
    keep = torch.eye(N, dtype=F64)[:-1]  # rows t
    EX = torch.einsum("st,ij->sitj", shift, torch.eye(NX, dtype=F64)).reshape(1, -1, N * NX)
    EX = EX - torch.einsum("st,bij->bsitj", keep, p["A"]).reshape(batch, -1, N * NX)
    EU = -torch.einsum("st,bij->bsitj", keep, p["B"]).reshape(batch, -1, N * NU)
    first = torch.zeros(batch, NX, N * (NX + NU), dtype=F64)
    first[:, :, :NX] = torch.eye(NX, dtype=F64)
    E = torch.cat([first, torch.cat([EX.expand(batch, -1, -1), EU], -1)], -2)
    e = torch.cat([d["x0"], p["b"].repeat(1, N - 1)], -1)
    S = torch.cat([torch.zeros(N * NU, N * NX, dtype=F64), torch.eye(N * NU, dtype=F64)], -1)
    G = torch.cat([S, -S]).expand(batch, -1, -1)
    h = torch.full((batch, 2 * N * NU), d["umax"], dtype=F64)
    return Q, E, e, G, h


def split(z, N):
    return z[:, : N * NX].reshape(-1, N, NX), z[:, N * NX :].reshape(-1, N, NU)


def kkt_reference(d, p, U_star, g):
    """(X, U) and ∂⟨g, (X, U)⟩/∂(L, A, B, b) from the KKT system on the bounds that the
    solution U_star holds (float64 autograd through one dense solve per element)."""
    q = {k: p[k].detach().clone().requires_grad_() for k in GRAD}
    Q, E, e, G, h = dense_qp(d, q)
    N = d["N"]
    n = Q.shape[-1]
    bound = d["umax"]
    zs, loss = [], 0.0
    for i in range(Q.shape[0]):
        u = U_star[i].reshape(-1)
        upper, lower = u >= bound * (1 - 1e-7), u <= -bound * (1 - 1e-7)
        rows = torch.cat([G[i][: N * NU][upper], G[i][N * NU :][lower]])
        rhs = torch.cat([h[i][: N * NU][upper], h[i][N * NU :][lower]])
        C, c = torch.cat([E[i], rows]), torch.cat([e[i], rhs])
        m = C.shape[0]
        K = torch.cat([torch.cat([Q[i], C.T], 1), torch.cat([C, torch.zeros(m, m, dtype=F64)], 1)])
        z = torch.linalg.solve(K, torch.cat([torch.zeros(n, dtype=F64), c]))[:n]
        zs.append(z)
        loss = loss + (z * g[i]).sum()
    grads = torch.autograd.grad(loss, [q[k] for k in GRAD])
    return split(torch.stack(zs).detach(), N), dict(zip(GRAD, grads))


def run(method, d, g, repeats):
    """Median forward and backward ms, the gradients and the solution of the last run."""
    forward_ms, backward_ms = [], []
    for _ in range(repeats):
        p = {k: d[k].clone().requires_grad_() for k in GRAD}
        start = time.perf_counter()
        X, U, ok = method(d, p)
        forward_ms.append(1e3 * (time.perf_counter() - start))
        loss = (torch.cat([X.reshape(len(X), -1), U.reshape(len(U), -1)], -1) * g).sum()
        start = time.perf_counter()
        grads = torch.autograd.grad(loss, [p[k] for k in GRAD], allow_unused=True)
        backward_ms.append(1e3 * (time.perf_counter() - start))
    grads = {
        k: torch.zeros_like(d[k]) if v is None else v for k, v in zip(GRAD, grads)
    }  # fmt: skip
    return statistics.median(forward_ms), statistics.median(backward_ms), grads, X, U, ok


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "lqr.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    batch, N = (4 if args.quick else 128), 20  # N: the spec's default horizon
    foldgen = Foldgen()
    methods = [
        foldgen, MpcPytorch(), Qpth(), Cvxpylayers(N),
        Cvxpylayers(N, {"eps": 1e-8}, label="cvxpylayers eps=1e-8"),
    ]  # fmt: skip
    lines = [
        "| u_max | method | forward ms | backward ms | forward ÷ foldgen | backward ÷ foldgen "
        "| published forward ÷ acados | published backward ÷ acados | x err | grad err "
        "| converged |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for umax in (1e4, 1.0):
        d = make_data(batch, N, umax)
        g = torch.randn(
            batch, N * (NX + NU), generator=torch.Generator().manual_seed(1), dtype=F64
        )
        rows = {}
        for method in methods:
            try:
                rows[method.label] = run(method, d, g, args.repeats)
            except Exception as err:  # a peer that fails is reported, not fatal
                print(f"{method.label} failed at u_max = {umax:g}: {type(err).__name__}: {err}")
        _, _, _, _, U_ref_from, _ = rows[foldgen.label]
        (X_ref, U_ref), reference = kkt_reference(d, d, U_ref_from.detach(), g)
        base_f, base_b = rows[foldgen.label][0], rows[foldgen.label][1]
        active = int((U_ref.abs() >= umax * (1 - 1e-7)).sum())
        print(f"u_max = {umax:g}: {active} of {U_ref.numel()} control entries at a bound")
        for label, (fwd, bwd, grads, X, U, ok) in rows.items():
            x_err = max(float((X - X_ref).abs().max()), float((U - U_ref).abs().max()))
            published = PUBLISHED_X.get(label.split(" ")[0], {})
            pub_f = published.get("forward", {}).get(umax)
            pub_b = published.get("backward", {}).get(umax)
            converged = "—" if ok is None else f"{int(ok.sum())}/{len(ok)}"
            lines.append(
                f"| {umax:g} | {label} | {fwd:.1f} | {bwd:.1f} | {fwd / base_f:.3g} "
                f"| {bwd / base_b:.3g} | {'' if pub_f is None else f'{pub_f:g}'} "
                f"| {'' if pub_b is None else f'{pub_b:g}'} | {x_err:.1e} "
                f"| {relative_error(grads, reference):.1e} | {converged} |"
            )
            print(lines[-1], flush=True)
        lines.append(
            f"| {umax:g} | acados (published, not run here) | {ACADOS_MS['forward'][umax]:g} "
            f"| {ACADOS_MS['backward'][umax]:g} | | | 1 | 1 | | | |"
        )
    note = (
        f"\n{batch} problems, N = {N}, nx = {NX}, nu = {NU}; one thread ({args.threads}), "
        f"float64, medians of {args.repeats}; torch {torch.__version__}. acados's row is the "
        "published one (a laptop, 4 threads), not a measurement here.\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n" + note)
    print(note)


if __name__ == "__main__":
    main()
