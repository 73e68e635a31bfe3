"""The five examples of SPEC.md, verbatim, shared by the tests."""

BOX_QP = """\
foldgen: 1
name: box_qp
doc: Box-constrained convex QP, differentiable in the linear term.
dims: {n: 50}
parameters:
  Q: {shape: [n, n], grad: false, properties: [symmetric, psd]}
  c: {shape: [n]}
variables:
  x: {shape: [n]}
minimize: 0.5 * x @ Q @ x + c @ x
constraints:
  - 0 <= x <= 1
solver: {rule: pgd, step_size: auto, max_iter: 2000, tol: 1.0e-9}
backward: {method: gmres, max_iter: 200, tol: 1.0e-10}
"""

ENTROPIC_KNAPSACK = """\
foldgen: 1
name: entropic_knapsack
doc: Entropy-regularised continuous knapsack (the LML top-k layer).
dims: {n: 100}
parameters:
  c: {shape: [n]}
  k: {shape: [], grad: false, default: 5}
  eps: {shape: [], grad: false, default: 1.0}
variables:
  x: {shape: [n], init: k / n * ones(n)}
maximize: c @ x + eps * sum(entr(x))
constraints:
  - 0 <= x <= 1
  - sum(x) == k
solver: {rule: pgd, step_size: auto, max_iter: 5000, tol: 1.0e-9}
"""

PORTFOLIO = """\
foldgen: 1
name: portfolio
doc: Return-maximising portfolio under a risk budget.
dims: {n: 50}
parameters:
  mu: {shape: [n]}
  Sigma: {shape: [n, n], grad: false, properties: [symmetric, psd]}
  gamma: {shape: [], grad: false, default: 0.05}
variables:
  x: {shape: [n]}
maximize: mu @ x
constraints:
  - sum(x) == 1
  - x >= 0
  - quad_form(x, Sigma) <= gamma
solver: {rule: sqp, max_iter: 100, tol: 1.0e-9}
backward: {method: direct}
"""

TV_DENOISE = """\
foldgen: 1
name: tv_denoise
doc: Total-variation denoising with a learnable difference operator.
dims: {n: 100, m: 99}
parameters:
  y: {shape: [n]}
  D: {shape: [m, n]}
  lam: {shape: [], grad: false, default: 0.5}
variables:
  x: {shape: [n]}
minimize: 0.5 * sum_squares(x - y) + lam * norm1(D @ x)
solver: {rule: admm, rho: 1.0, max_iter: 3000, tol: 1.0e-9}
"""

NONCONVEX_QP = """\
foldgen: 1
name: nonconvex_qp
doc: A nonconvex program with linear constraints (a standard benchmark of learning-to-optimize work).
dims: {n: 100, neq: 50, nineq: 50}
parameters:
  p: {shape: [n]}
  Q: {shape: [n, n], grad: false, properties: [diagonal, psd]}
  A: {shape: [neq, n], grad: false}
  b: {shape: [neq], grad: false}
  G: {shape: [nineq, n], grad: false}
  h: {shape: [nineq], grad: false}
variables:
  y: {shape: [n]}
minimize: 0.5 * y @ Q @ y + p @ sin(y)
constraints:
  - A @ y == b
  - G @ y <= h
solver: {rule: sqp, max_iter: 200, tol: 1.0e-8}
"""
