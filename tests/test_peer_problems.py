"""Problems from the peers' own test suites (cvxpylayers, qpth, JAXopt's projections and
implicit-differentiation tests), written as their authors would in CVXPY and compiled as
written: the forward against CVXPY and gradcheck in float64 (issue 11's measure). Each entry
is the spec body, the inputs it draws and the CVXPY model of one batch element."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import cvxpy as cp
import numpy as np
import pytest
import torch
from cases import as_state

import foldgen

F64 = torch.float64
TIGHT = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12}


@dataclass(frozen=True)
class Peer:
    body: str  # the spec from `dims:` on (foldgen and name are added)
    data: Callable[[torch.Generator], dict[str, torch.Tensor]]  # batch (2, ...)
    cvxpy: Callable[[dict[str, np.ndarray]], np.ndarray]  # one element -> the variables, flat
    atol: float = 1e-6


def _n(g, *shape):
    return torch.randn(2, *shape, generator=g, dtype=F64)


def _u(g, *shape):
    return torch.rand(2, *shape, generator=g, dtype=F64)


def _solve(objective, constraints, *variables, maximize=False):
    sense = cp.Maximize if maximize else cp.Minimize
    cp.Problem(sense(objective), constraints).solve(solver=cp.CLARABEL, **TIGHT)
    return np.concatenate([np.ravel(v.value) for v in variables])


def _solve_scs(objective, constraints, *variables):
    """SCS run to 1e-12: Clarabel stops about 1e-6 short on some second-order cones (checked
    on the socp entry: SCS and foldgen agree to 5e-14 in x, Clarabel is 2.3e-6 off)."""
    cp.Problem(cp.Minimize(objective), constraints).solve(
        solver=cp.SCS, eps=1e-12, max_iters=200_000
    )
    return np.concatenate([np.ravel(v.value) for v in variables])


def _projection(constraint, solve=None):
    """JAXopt's projections: argmin ½‖x − y‖² over a set."""

    def reference(v):
        x = cp.Variable(v["y"].shape[-1])
        return (solve or _solve)(cp.sum_squares(x - v["y"]), constraint(x, v), x)

    return reference


SOLVER = "solver: {{rule: {rule}, max_iter: 50000, tol: 1.0e-12}}\nbackward: {{method: direct}}\n"


def _body(text: str, rule: str) -> str:
    return text.strip() + "\n" + SOLVER.format(rule=rule)


PEERS: dict[str, Peer] = {
    # cvxpylayers' tests and examples
    "relu": Peer(
        _body(
            """
dims: {n: 6}
parameters: {y: {shape: [n]}}
variables: {x: {shape: [n]}}
minimize: sum_squares(x - y)
constraints: ["x >= 0"]
""",
            "pgd",
        ),
        lambda g: {"y": _n(g, 6)},
        _projection(lambda x, v: [x >= 0]),
    ),
    "sigmoid": Peer(
        _body(
            """
dims: {n: 6}
parameters: {y: {shape: [n]}}
variables: {x: {shape: [n], init: 0.5 * ones(n)}}
minimize: -(y @ x) - sum(entr(x)) - sum(entr(1 - x))
constraints: ["0 <= x <= 1"]
""",
            "pgd",
        ),
        lambda g: {"y": _n(g, 6)},
        lambda v: (
            lambda x: _solve(-(v["y"] @ x) - cp.sum(cp.entr(x)) - cp.sum(cp.entr(1 - x)), [], x)
        )(cp.Variable(6)),
        atol=2e-6,
    ),
    "softmax": Peer(
        _body(
            """
dims: {n: 6}
parameters: {y: {shape: [n]}}
variables: {x: {shape: [n], init: ones(n) / n}}
minimize: -(y @ x) - sum(entr(x))
constraints: ["sum(x) == 1", "x >= 0"]
""",
            "pgd",
        ),
        lambda g: {"y": _n(g, 6)},
        lambda v: (lambda x: _solve(-(v["y"] @ x) - cp.sum(cp.entr(x)), [cp.sum(x) == 1], x))(
            cp.Variable(6)
        ),
        atol=2e-6,
    ),
    "sparsemax": Peer(
        _body(
            """
dims: {n: 6}
parameters: {y: {shape: [n]}}
variables: {x: {shape: [n]}}
minimize: sum_squares(x - y)
constraints: ["sum(x) == 1", "x >= 0"]
""",
            "pgd",
        ),
        lambda g: {"y": _n(g, 6)},
        _projection(lambda x, v: [cp.sum(x) == 1, x >= 0]),
    ),
    "csoftmax": Peer(
        _body(
            """
dims: {n: 6}
parameters: {y: {shape: [n]}, u: {shape: [n], grad: false}}
variables: {x: {shape: [n], init: ones(n) / n}}
minimize: -(y @ x) - sum(entr(x))
constraints: ["sum(x) == 1", "0 <= x <= u"]
""",
            "pgd",
        ),
        lambda g: {"y": 2 * _n(g, 6), "u": 0.15 + 0.3 * _u(g, 6)},
        lambda v: (
            lambda x: _solve(-(v["y"] @ x) - cp.sum(cp.entr(x)), [cp.sum(x) == 1, x <= v["u"]], x)
        )(cp.Variable(6)),
        atol=2e-6,
    ),
    "lml": Peer(
        _body(
            """
dims: {n: 6}
parameters: {y: {shape: [n]}}
variables: {x: {shape: [n], init: 0.5 * ones(n)}}
minimize: -(y @ x) - sum(entr(x)) - sum(entr(1 - x))
constraints: ["sum(x) == 2", "0 <= x <= 1"]
""",
            "pgd",
        ),
        lambda g: {"y": _n(g, 6)},
        lambda v: (
            lambda x: _solve(
                -(v["y"] @ x) - cp.sum(cp.entr(x)) - cp.sum(cp.entr(1 - x)), [cp.sum(x) == 2], x
            )
        )(cp.Variable(6)),
        atol=2e-6,
    ),
    "least_squares": Peer(
        _body(
            """
dims: {m: 10, n: 4}
parameters: {A: {shape: [m, n]}, b: {shape: [m]}, lam: {shape: [], default: 0.1}}
variables: {x: {shape: [n]}}
minimize: sum_squares(A @ x - b) + lam * sum_squares(x)
""",
            "pgd",
        ),
        lambda g: {"A": _n(g, 10, 4), "b": _n(g, 10), "lam": torch.tensor(0.1, dtype=F64)},
        lambda v: (
            lambda x: _solve(
                cp.sum_squares(v["A"] @ x - v["b"]) + float(v["lam"]) * cp.sum_squares(x), [], x
            )
        )(cp.Variable(4)),
    ),
    "logistic_regression": Peer(
        _body(
            """
dims: {N: 20, d: 3}
parameters: {X: {shape: [N, d]}, y: {shape: [N], grad: false}}
variables: {beta: {shape: [d]}}
maximize: sum(y * (X @ beta) - logistic(X @ beta)) - 0.1 * sum_squares(beta)
""",
            "pgd",
        ),
        lambda g: {"X": _n(g, 20, 3), "y": (_u(g, 20) > 0.5).to(F64)},
        lambda v: (
            lambda b: _solve(
                cp.sum(cp.multiply(v["y"], v["X"] @ b) - cp.logistic(v["X"] @ b))
                - 0.1 * cp.sum_squares(b),
                [],
                b,
                maximize=True,
            )
        )(cp.Variable(3)),
    ),
    "lasso": Peer(
        _body(
            """
dims: {m: 12, n: 5}
parameters: {A: {shape: [m, n]}, b: {shape: [m]}, lam: {shape: [], default: 0.5}}
variables: {x: {shape: [n]}}
minimize: sum_squares(A @ x - b) + lam * pnorm(x, 1)
""",
            "admm",
        ),
        lambda g: {"A": _n(g, 12, 5), "b": _n(g, 12), "lam": torch.tensor(0.5, dtype=F64)},
        lambda v: (
            lambda x: _solve(cp.sum_squares(v["A"] @ x - v["b"]) + 0.5 * cp.pnorm(x, 1), [], x)
        )(cp.Variable(5)),
    ),
    "socp": Peer(
        _body(
            """
dims: {m: 4, n: 3}
parameters:
  y: {shape: [n]}
  A: {shape: [m, n]}
  b: {shape: [m]}
  c: {shape: [n]}
  d: {shape: []}
variables: {x: {shape: [n]}}
minimize: sum_squares(x - y)
constraints: ["norm(A @ x + b) <= c @ x + d"]
""",
            "sqp",
        ),
        lambda g: {
            "y": 3 * _n(g, 3),
            "A": _n(g, 4, 3),
            "b": _n(g, 4),
            "c": 0.1 * _n(g, 3),
            "d": 2 + _u(g),
        },
        _projection(
            lambda x, v: [cp.norm(v["A"] @ x + v["b"]) <= v["c"] @ x + v["d"]], _solve_scs
        ),
    ),
    "entropy_maximization": Peer(
        _body(
            """
dims: {n: 6, m: 3}
parameters: {A: {shape: [m, n]}, b: {shape: [m]}}
variables: {x: {shape: [n], init: ones(n) / n}}
maximize: sum(entr(x))
constraints: ["A @ x <= b", "sum(x) == 1", "x >= 0"]
""",
            "sqp",
        ),
        lambda g: {"A": _n(g, 3, 6), "b": 0.2 + _u(g, 3)},
        lambda v: (
            lambda x: _solve(
                cp.sum(cp.entr(x)), [v["A"] @ x <= v["b"], cp.sum(x) == 1], x, maximize=True
            )
        )(cp.Variable(6)),
        atol=2e-6,
    ),
    # qpth's tests
    "qpth_inequality_qp": Peer(
        _body(
            """
dims: {n: 5, m: 4}
parameters:
  Q: {shape: [n, n], grad: false, properties: [symmetric, pd]}
  p: {shape: [n]}
  G: {shape: [m, n]}
  h: {shape: [m]}
variables: {x: {shape: [n]}}
minimize: 0.5 * quad_form(x, Q) + p @ x
constraints: ["G @ x <= h"]
""",
            "admm",
        ),
        lambda g: (
            lambda L: {
                "Q": L @ L.mT + torch.eye(5, dtype=F64),
                "p": _n(g, 5),
                "G": _n(g, 4, 5),
                "h": _u(g, 4),
            }
        )(_n(g, 5, 5)),
        lambda v: (
            lambda x: _solve(0.5 * cp.quad_form(x, v["Q"]) + v["p"] @ x, [v["G"] @ x <= v["h"]], x)
        )(cp.Variable(5)),
    ),
    "qpth_equality_qp": Peer(
        _body(
            """
dims: {n: 5, m: 4, k: 2}
parameters:
  Q: {shape: [n, n], grad: false, properties: [symmetric, pd]}
  p: {shape: [n]}
  G: {shape: [m, n]}
  h: {shape: [m]}
  A: {shape: [k, n]}
  b: {shape: [k]}
variables: {x: {shape: [n]}}
minimize: 0.5 * x @ Q @ x + p @ x
constraints: ["G @ x <= h", "A @ x == b"]
""",
            "sqp",
        ),
        lambda g: (
            lambda L: {
                "Q": L @ L.mT + torch.eye(5, dtype=F64),
                "p": _n(g, 5),
                "G": _n(g, 4, 5),
                "h": _u(g, 4),
                "A": _n(g, 2, 5),
                "b": 0.1 * _n(g, 2),
            }
        )(_n(g, 5, 5)),
        lambda v: (
            lambda x: _solve(
                0.5 * cp.quad_form(x, v["Q"]) + v["p"] @ x,
                [v["G"] @ x <= v["h"], v["A"] @ x == v["b"]],
                x,
            )
        )(cp.Variable(5)),
    ),
    # JAXopt's projections
    "projection_hyperplane": Peer(
        _body(
            """
dims: {n: 6}
parameters: {y: {shape: [n]}, a: {shape: [n]}, b: {shape: []}}
variables: {x: {shape: [n]}}
minimize: 0.5 * sum_squares(x - y)
constraints: ["a @ x == b"]
""",
            "pgd",
        ),
        lambda g: {"y": _n(g, 6), "a": _n(g, 6), "b": _n(g)},
        _projection(lambda x, v: [v["a"] @ x == v["b"]]),
    ),
    "projection_halfspace": Peer(
        _body(
            """
dims: {n: 6}
parameters: {y: {shape: [n]}, a: {shape: [n]}, b: {shape: []}}
variables: {x: {shape: [n]}}
minimize: 0.5 * sum_squares(x - y)
constraints: ["a @ x <= b"]
""",
            "pgd",
        ),
        lambda g: {"y": _n(g, 6), "a": _n(g, 6), "b": _n(g)},
        _projection(lambda x, v: [v["a"] @ x <= v["b"]]),
    ),
    "projection_polyhedron": Peer(
        _body(
            """
dims: {n: 6, m: 3, k: 2}
parameters:
  y: {shape: [n]}
  A: {shape: [k, n]}
  b: {shape: [k]}
  G: {shape: [m, n]}
  h: {shape: [m]}
variables: {x: {shape: [n]}}
minimize: 0.5 * sum_squares(x - y)
constraints: ["A @ x == b", "G @ x <= h"]
""",
            "admm",
        ),
        lambda g: {
            "y": _n(g, 6),
            "A": _n(g, 2, 6),
            "b": 0.1 * _n(g, 2),
            "G": _n(g, 3, 6),
            "h": 0.1 * _u(g, 3),
        },
        _projection(lambda x, v: [v["A"] @ x == v["b"], v["G"] @ x <= v["h"]]),
    ),
    "projection_l2_ball": Peer(
        _body(
            """
dims: {n: 6}
parameters: {y: {shape: [n]}, r: {shape: []}}
variables: {x: {shape: [n]}}
minimize: 0.5 * sum_squares(x - y)
constraints: ["norm2(x) <= r"]
""",
            "pgd",
        ),
        lambda g: {"y": 2 * _n(g, 6), "r": 0.5 + _u(g)},
        _projection(lambda x, v: [cp.norm(x, 2) <= v["r"]]),
    ),
    "projection_linf_ball": Peer(
        _body(
            """
dims: {n: 6}
parameters: {y: {shape: [n]}, r: {shape: []}}
variables: {x: {shape: [n]}}
minimize: 0.5 * sum_squares(x - y)
constraints: ["norm_inf(x) <= r"]
""",
            "pgd",
        ),
        lambda g: {"y": 2 * _n(g, 6), "r": 0.5 + _u(g)},
        _projection(lambda x, v: [cp.norm_inf(x) <= v["r"]]),
    ),
    "projection_l1_ball": Peer(
        _body(
            """
dims: {n: 6}
parameters: {y: {shape: [n]}, r: {shape: []}}
variables: {x: {shape: [n]}}
minimize: 0.5 * sum_squares(x - y)
constraints: ["norm1(x) <= r"]
""",
            "pgd",
        ),
        lambda g: {"y": 2 * _n(g, 6), "r": 0.5 + _u(g)},
        _projection(lambda x, v: [cp.norm1(x) <= v["r"]]),
    ),
    "projection_box_section": Peer(
        _body(
            """
dims: {n: 6}
parameters: {y: {shape: [n]}, w: {shape: [n], grad: false}, c: {shape: []}}
variables: {x: {shape: [n]}}
minimize: 0.5 * sum_squares(x - y)
constraints: ["0 <= x <= 1", "w @ x == c"]
""",
            "pgd",
        ),
        lambda g: {"y": _n(g, 6), "w": 0.5 + _u(g, 6), "c": 1 + _u(g)},
        _projection(lambda x, v: [x >= 0, x <= 1, v["w"] @ x == v["c"]]),
    ),
    "projection_birkhoff": Peer(
        _body(
            """
dims: {n: 4}
parameters: {Y: {shape: [n, n]}}
variables: {X: {shape: [n, n]}}
minimize: 0.5 * sum_squares(X - Y)
constraints: ["sum(X, axis=1) == 1", "sum(X, axis=0) == 1", "X >= 0"]
""",
            "sqp",
        ),
        lambda g: {"Y": _n(g, 4, 4)},
        lambda v: (
            lambda X: _solve(
                0.5 * cp.sum_squares(X - v["Y"]),
                [cp.sum(X, axis=1) == 1, cp.sum(X, axis=0) == 1, X >= 0],
                X,
            )
        )(cp.Variable((4, 4))),
    ),
    "projection_kl_simplex": Peer(
        _body(
            """
dims: {n: 6}
parameters: {y: {shape: [n]}}
variables: {x: {shape: [n], init: ones(n) / n}}
minimize: -sum(entr(x)) - x @ log(y)
constraints: ["sum(x) == 1", "x >= 0"]
""",
            "pgd",
        ),
        lambda g: {"y": 0.1 + _u(g, 6)},
        lambda v: (
            lambda x: _solve(-cp.sum(cp.entr(x)) - x @ np.log(v["y"]), [cp.sum(x) == 1], x)
        )(cp.Variable(6)),
        atol=2e-6,
    ),
    "projection_second_order_cone": Peer(
        _body(
            """
dims: {n: 4}
parameters: {y: {shape: [n]}, s: {shape: []}}
variables: {x: {shape: [n]}, t: {init: 1}}
minimize: 0.5 * sum_squares(x - y) + 0.5 * (t - s) ** 2
constraints: ["norm(x) <= t"]
""",
            "sqp",
        ),
        lambda g: {"y": 2 * _n(g, 4), "s": _n(g)},
        lambda v: (
            lambda x, t: _solve(
                0.5 * cp.sum_squares(x - v["y"]) + 0.5 * cp.square(t - v["s"]),
                [cp.norm(x) <= t],
                x,
                t,
            )
        )(cp.Variable(4), cp.Variable()),
    ),
    "projection_psd": Peer(
        _body(
            """
dims: {n: 3}
parameters: {A: {shape: [n, n]}}
variables: {X: {shape: [n, n]}}
minimize: 0.5 * sum_squares(X - A)
constraints: ["X >> 0"]
""",
            "pgd",
        ),
        lambda g: (lambda B: {"A": 0.5 * (B + B.mT)})(_n(g, 3, 3)),
        lambda v: (lambda X: _solve(0.5 * cp.sum_squares(X - v["A"]), [X >> 0], X))(
            cp.Variable((3, 3), symmetric=True)
        ),
    ),
    # JAXopt's implicit-differentiation tests
    "elastic_net": Peer(
        _body(
            """
dims: {m: 12, n: 5}
parameters: {A: {shape: [m, n]}, b: {shape: [m]}}
variables: {x: {shape: [n]}}
minimize: 0.5 * sum_squares(A @ x - b) + 0.3 * norm1(x) + 0.2 * sum_squares(x)
""",
            "admm",
        ),
        lambda g: {"A": _n(g, 12, 5), "b": _n(g, 12)},
        lambda v: (
            lambda x: _solve(
                0.5 * cp.sum_squares(v["A"] @ x - v["b"])
                + 0.3 * cp.norm1(x)
                + 0.2 * cp.sum_squares(x),
                [],
                x,
            )
        )(cp.Variable(5)),
    ),
    "huber_regression": Peer(
        _body(
            """
dims: {m: 12, n: 4}
parameters: {A: {shape: [m, n]}, b: {shape: [m]}}
variables: {x: {shape: [n]}}
minimize: sum(huber(A @ x - b, 0.5)) + 0.1 * sum_squares(x)
""",
            "pgd",
        ),
        lambda g: {"A": _n(g, 12, 4), "b": 2 * _n(g, 12)},
        lambda v: (
            lambda x: _solve(
                cp.sum(cp.huber(v["A"] @ x - v["b"], 0.5)) + 0.1 * cp.sum_squares(x), [], x
            )
        )(cp.Variable(4)),
    ),
    "multiclass_logreg_bias": Peer(
        _body(
            """
dims: {N: 15, d: 3, k: 3}
parameters: {X: {shape: [N, d]}, Y: {shape: [N, k], grad: false}}
variables: {W: {shape: [d, k]}, c: {shape: [k]}}
minimize: sum(log_sum_exp_rows(X @ W + c)) - sum(Y * (X @ W + c)) + 0.5 * sum_squares(W) + 0.5 * sum_squares(c)
""".replace("log_sum_exp_rows(X @ W + c)", "log(sum(exp(X @ W + c), axis=1))"),
            "pgd",
        ),
        lambda g: {
            "X": _n(g, 15, 3),
            "Y": torch.nn.functional.one_hot(torch.randint(0, 3, (2, 15), generator=g), 3).to(F64),
        },
        lambda v: (
            lambda W, c: _solve(
                cp.sum(cp.log_sum_exp(v["X"] @ W + c[None, :], axis=1))
                - cp.sum(cp.multiply(v["Y"], v["X"] @ W + c[None, :]))
                + 0.5 * cp.sum_squares(W)
                + 0.5 * cp.sum_squares(c),
                [],
                W,
                c,
            )
        )(cp.Variable((3, 3)), cp.Variable(3)),
    ),
}


@pytest.mark.parametrize("name", list(PEERS))
def test_peer_problem_builds_matches_cvxpy_and_gradchecks(name):
    peer = PEERS[name]
    cls = foldgen.compile(f"foldgen: 1\nname: {name}\n" + peer.body)
    layer = cls(on_nonconvergence="raise")
    values = peer.data(torch.Generator().manual_seed(0))
    module = sys.modules[cls.__module__]
    x = as_state(module, layer(**values))
    for e in range(2):
        reference = peer.cvxpy(
            {k: v[e].numpy() if v.dim() else v.numpy() for k, v in values.items()}
        )
        np.testing.assert_allclose(x[e].numpy(), reference, atol=peer.atol, rtol=0)
    names = list(module.GRAD_PARAMETERS)
    inputs = tuple(values[n].clone().requires_grad_() for n in names)

    def fn(*grads):
        return layer(**{**values, **dict(zip(names, grads))})

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)
