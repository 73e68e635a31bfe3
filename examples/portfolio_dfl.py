"""Decision-focused portfolio learning through the generated Portfolio layer, with
cvxpylayers on the same data as a reference.

The layer solves maximize mu'x s.t. sum(x) = 1, x >= 0, x'Sigma x <= gamma (SQP, folded
backward). Returns come from a PyEPO-style factor model whose mean is a degree-deg polynomial
of the features; a linear model predicts them (misspecified for deg > 1, the regime where
training on the decision is known to help; but over the features' range this mean is nearly
linear, so a least-squares fit loses little). Three models from the same initialisation:

  foldgen_dfl      loss -r'x*(r_hat), the realised return of the decision, through foldgen;
  two_stage        loss ||r_hat - r||^2, decisions taken with foldgen;
  cvxpylayers_dfl  foldgen_dfl's loss and batches, through a cvxpylayers layer (SCS).

Test metric: normalized regret, the mean over samples of (r'x*(r) - r'x*(r_hat)) /
|r'x*(r)|. Each DFL model takes its test decisions with the layer it was trained through;
the oracle decisions x*(r) and two-stage's come from foldgen. "seconds_per_epoch" times the
training passes only (forward, backward, optimizer step), both layers on one thread.
The decision does not change when a constant is added to r_hat or it is scaled by a positive
number, so the DFL models' MSE is not what they are trained for; the regret compares methods.

    python examples/portfolio_dfl.py            # full run: 1 min 46-52 s on 2 shared cores
    python examples/portfolio_dfl.py --quick    # 21 s (cvxpylayers runs every epoch too)

Measured with seed 0 (30 assets, deg 4, 256 train / 128 test, 10 epochs): test regret 0.0269
for foldgen_dfl and for cvxpylayers_dfl (the two agree to 4 digits at every epoch), 0.0264 for
two_stage; decisions with the noise-free E[r | z] reach 0.0252, so there is little left to
gain and DFL does not beat two-stage here. Training: 4.3-4.6 s per epoch through foldgen
against 0.77-0.81 s through cvxpylayers/SCS (the SQP forward is the cost); no foldgen solve
failed to converge.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cvxpy as cp
import torch
from _common import ROOT, ChunkedLayer, load_generated, plot_regret, train_and_track
from cvxpylayers.torch import CvxpyLayer


def make_data(samples, assets, features, deg, noise, seed):
    """Features, realised returns, covariance and risk budget of a factor model in the style
    of PyEPO's portfolio generator (four factors, noise level ``noise``)."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.bernoulli(torch.full((assets, features), 0.5), generator=gen)
    loadings = (2 * torch.rand(assets, 4, generator=gen) - 1) * 0.0025 * noise
    z = torch.randn(samples, features, generator=gen)
    mean = (0.05 / features**0.5 * z @ mix.T + 0.1 ** (1 / deg)) ** deg
    factors = torch.randn(samples, 4, generator=gen)
    idiosyncratic = 0.01 * noise * torch.randn(samples, assets, generator=gen)
    r = mean + factors @ loadings.T + idiosyncratic
    sigma = loadings @ loadings.T + (0.01 * noise) ** 2 * torch.eye(assets)
    gamma = 2.25 * sigma.sum() / assets**2  # 2.25 times the equal-weight portfolio's variance
    return z, r, sigma, gamma, mean


class Linear(torch.nn.Module):
    """r_hat = mean + scale * (W z + c), with the training returns' per-asset mean and overall
    standard deviation: the output starts on the returns' scale (about 0.1 +- 0.02), so the
    two-stage fit converges within a few epochs instead of first shrinking W by a factor 20.
    All methods share it (the decision ignores the positive scale)."""

    def __init__(self, features, returns):
        super().__init__()
        self.linear = torch.nn.Linear(features, returns.shape[-1])
        self.register_buffer("mean", returns.mean(0))
        self.register_buffer("scale", returns.std())

    def forward(self, z):
        return self.mean + self.scale * self.linear(z)


class Cvxpylayers:
    """The same problem as a cvxpy problem in cvxpylayers, for reference.

    The risk constraint is written sum_squares(C'x) <= 1 with C the Cholesky factor of
    Sigma / gamma: with gamma ~ 5e-6 the unscaled form sits below SCS's absolute tolerance and
    its solutions broke the risk budget many times over.
    """

    def __init__(self, sigma, gamma, chunk):
        n = sigma.shape[-1]
        factor = torch.linalg.cholesky(sigma / gamma).numpy()
        x, mu = cp.Variable(n), cp.Parameter(n)
        risk = cp.sum_squares(factor.T @ x) <= 1
        problem = cp.Problem(cp.Maximize(mu @ x), [cp.sum(x) == 1, x >= 0, risk])
        # SCS to 1e-8 (its default is 1e-4), serial like the foldgen layer here.
        options = dict(eps_abs=1e-8, eps_rel=1e-8, n_jobs_forward=1)
        self.layer = CvxpyLayer(problem, parameters=[mu], variables=[x], solver_args=options)
        self.chunk = chunk

    def __call__(self, mu):
        # diffcp takes n_jobs_backward only on the path that prepares a backward.
        grad = torch.is_grad_enabled() and mu.requires_grad
        args = dict(n_jobs_backward=1) if grad else {}
        xs = [self.layer(part, solver_args=args)[0] for part in mu.split(self.chunk)]
        x = torch.cat(xs)
        return x, torch.ones(len(x), dtype=torch.bool)

    def after_backward(self):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer assets, samples, epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deg", type=int, default=4, help="degree of E[r | z] in z")
    parser.add_argument("--out", type=Path, default=ROOT / "examples" / "figures")
    args = parser.parse_args()
    # Many small batched factorisations: one thread avoids oversubscribing a shared CPU.
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    features = 5
    assets, train, test, epochs = (20, 64, 32, 6) if args.quick else (30, 256, 128, 10)
    batch, lr = (8 if args.quick else 32), 0.03

    z, r, sigma, gamma, r_mean = make_data(
        train + test, assets, features, args.deg, 1.0, args.seed
    )
    module = load_generated("portfolio")
    # The same risk budget as x'(Sigma / gamma)x <= 1: with Sigma and gamma ~ 1e-5 as given,
    # a few SQP subproblems were wrongly found infeasible in training (3 of 5504 solves).
    layer = module.Portfolio(Sigma=sigma / gamma, gamma=1.0, on_nonconvergence="ignore")
    foldgen = ChunkedLayer(
        layer, chunk=32
    )  # on_nonconvergence="ignore": counted and reported below
    z_train, r_train = z[:train], r[:train]
    z_test, r_test = z[train:], r[train:]
    print(
        f"{assets} assets, {features} features, deg {args.deg}, {train} train / {test} test, "
        f"gamma = {float(gamma):.3g}"
    )

    start = time.perf_counter()
    with torch.no_grad():
        x_best, ok_best = foldgen(r_test)
    best = torch.where(ok_best, (r_test * x_best).sum(-1), torch.nan)
    print(f"oracle decisions x*(r) on the test set: {time.perf_counter() - start:.1f} s")

    def regret(solve, r_hat):
        """Mean normalized regret of the decisions x*(r_hat), the largest x'Sigma x / gamma,
        and the number of test samples left out (a solve did not converge)."""
        with torch.no_grad():
            x, ok = solve(r_hat)
        ok = ok & torch.isfinite(best)
        value = (best - (r_test * x).sum(-1)) / best.abs()
        risk = float(((x @ sigma) * x).sum(-1).max() / gamma)
        return float(value[ok].mean()), risk, int((~ok).sum())

    def fit(name, solve, loss_of):
        """Train a fresh model with loss_of(model, rows) -> scalar; test with ``solve``."""
        torch.manual_seed(args.seed)  # the same initial model for every method
        model = Linear(features, r_train)
        evals, seconds = train_and_track(
            name, model, loss_of, lambda model: regret(solve, model(z_test)),
            samples=train, batch=batch, epochs=epochs, lr=lr, seed=args.seed,
            after_backward=solve.after_backward,
        )  # fmt: skip
        with torch.no_grad():
            mse = float(((model(z_test) - r_test) ** 2).mean())
        final, risk, skipped = evals[-1]
        return dict(history=[e[0] for e in evals], regret=final, mse=mse, risk=risk,
                    seconds=seconds, skipped=skipped)  # fmt: skip

    def decision_loss(solve):
        def loss_of(model, rows):
            x, ok = solve(model(z_train[rows]))
            # Mean over the converged solves (the others have no usable decision).
            return -(r_train[rows][ok] * x[ok]).sum() / max(int(ok.sum()), 1)

        return loss_of

    def mse_loss(model, rows):
        return ((model(z_train[rows]) - r_train[rows]) ** 2).mean()

    cvxpylayers = Cvxpylayers(sigma, gamma, chunk=32)
    results = {"foldgen_dfl": fit("foldgen_dfl", foldgen, decision_loss(foldgen))}
    results["two_stage"] = fit("two_stage", foldgen, mse_loss)
    results["cvxpylayers_dfl"] = fit("cvxpylayers_dfl", cvxpylayers, decision_loss(cvxpylayers))

    print(
        f"foldgen solves not converged: {foldgen.failed} of {foldgen.solves} forward (left out "
        f"of the losses and regrets), {foldgen.backward_failed} backward"
    )
    # A reference no model of z can beat on average: decisions with E[r | z].
    with torch.no_grad():
        reference = regret(foldgen, r_mean[train:])[0]
    print(f"reference: decisions with the noise-free E[r | z]: regret {reference:.4f}")
    for name, result in results.items():
        print(f"{name}: largest x'Sigma x / gamma of its test decisions: {result['risk']:.6f}")
        if result["skipped"]:
            print(f"{name}: {result['skipped']} test samples left out of the final regret")
    for name, result in results.items():
        print(
            f"RESULT method={name} regret={result['regret']:.6f} mse={result['mse']:.6g} "
            f"seconds_per_epoch={result['seconds']:.3f}"
        )

    plot_regret(
        results, reference, "decisions with E[r | z]",
        f"Portfolio ({assets} assets, deg {args.deg}): normalized test regret of x*(r̂)",
        args.out / "portfolio_dfl.png",
        styles={"foldgen_dfl": dict(marker="o", markersize=7, markerfacecolor="none"),
                "cvxpylayers_dfl": dict(linestyle="--", marker="x")},  # it overlays foldgen's
        difference=("foldgen_dfl", "cvxpylayers_dfl"),
    )  # fmt: skip


if __name__ == "__main__":
    main()
