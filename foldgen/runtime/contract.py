"""The contract between a generated module and the runtime, in code.

A generated module ends with ``PROBLEM``, its *problem record*: the tables of its inputs,
the functions derived from its spec, and its rule's choices. The runtime reads nothing else
of it. This module declares the record's fields once, per rule, with signatures and
docstrings; `foldgen.rules` promises them (each plan's ``emission``), and
tests/test_generated_code.py checks every generated record against these declarations.

Derived functions take the parameters' values positionally, in call order (``*values``),
after their own leading arguments; each is batched over any leading dimensions. Nothing here
is ever copied into a generated module: it is documentation that mypy and the tests read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

Tensor = torch.Tensor


class Problem(Protocol):
    """The fields every rule's record has."""

    rule: str  # "pgd", "admm" or "sqp"
    parameters: dict[str, tuple[str | int, ...]]  # name → core shape, in call order
    grad_parameters: tuple[str, ...]  # the inputs that may require grad
    defaults: dict[str, float]  # default values of scalar inputs
    dims: dict[str, int]  # default size of each dim
    variable: tuple[str, tuple[str | int, ...]]  # the (packed) variable's name and core shape
    # The spec's variables (name, core shape) when they are packed into one state (several
    # variables, or one that is not a vector), else None; then pack/unpack are set.
    variables: tuple[tuple[str, tuple[str | int, ...]], ...] | None
    pack: Callable[..., Tensor] | None  # (each variable, *values) -> the packed state
    unpack: Callable[..., tuple[Tensor, ...]] | None  # (packed state, *values) -> variables
    # (p, values, {name: warm start or None}) -> the packed warm start, or None if none given
    pack_warm_start: Callable[..., Tensor | None] | None
    setting_checks: dict[str, Callable[[Any], Any]]  # the rule's settings' validators

    def solve(
        self, p: Any, layer: Any, values: list[Tensor], x_init: Tensor | None, sizes: dict, batch
    ) -> tuple[Tensor, Any]:
        """The forward solve: x (..., n) and the state the backward folds with; records
        ``layer.info`` and reports non-convergence per element."""
        ...

    def pullback(
        self, p: Any, layer: Any, x: Tensor, values: list[Tensor], state: Any, grad_x: Tensor
    ) -> list[Tensor | None]:
        """∂L/∂θ for each input in call order (None where none) from ∂L/∂x at the solution;
        records ``layer.backward_info`` through `foldgen.runtime.layer._adjoint`."""
        ...

    def update_map(
        self, p: Any, layer: Any, x: Tensor, state: Any, values: list[Tensor]
    ) -> tuple[Any, Callable[[Any], Any], Callable[[Any], Tensor]]:
        """(s*, U, read): the rule's full iterate at the solution x (from ``solve``'s state),
        the update map with the step frozen and ``values`` in autograd's graph, and the
        function that reads x from a state (the layer's ``update_map``)."""
        ...

    def init(self, *values: Tensor) -> Tensor:
        """The spec's starting point x₀ (before any projection)."""
        ...


class SmoothObjective(Protocol):
    """The derivatives of a smooth objective f, as PGD and ADMM fold through them."""

    def objective(self, x: Tensor, *values: Tensor) -> Tensor:
        """f(x), (...)."""
        ...

    def gradient(self, x: Tensor, *values: Tensor) -> Tensor:
        """∇f(x), (..., n)."""
        ...

    def hvp(self, x: Tensor, u: Tensor, *values: Tensor) -> Tensor:
        """∇²f(x) u, (..., n)."""
        ...


class PgdProblem(Problem, SmoothObjective, Protocol):
    """The record of a PGD module (`foldgen.runtime.pgd`)."""

    set: Any  # a foldgen.runtime.sets._FeasibleSet record
    objective_grad_indices: tuple[int, ...]  # inputs ∇f depends on (call-order indices)
    set_grad_indices: tuple[int, ...]  # inputs the set data depend on

    def set_data(self, x: Tensor, *values: Tensor) -> tuple[Tensor, ...]:
        """The feasible set's data (bounds, A and b, a radius …), evaluated once per solve."""
        ...


class PgdOptional(Protocol):
    """Fields a PGD record has only when its plan needs them."""

    def gradient_vjp(self, x: Tensor, u: Tensor, *values: Tensor) -> Tensor | tuple[Tensor, ...]:
        """(∂∇f/∂θ)ᵀ u for the inputs at ``objective_grad_indices``."""
        ...

    def hessian_diagonal(self, x: Tensor, *values: Tensor) -> Tensor:
        """diag ∇²f(x), for the scaled step (step mode ``scaled``)."""
        ...

    def set_data_vjp(self, x: Tensor, *bars_then_values: Tensor) -> Tensor | tuple[Tensor, ...]:
        """The set data's cotangents pulled back to the inputs at ``set_grad_indices``."""
        ...


class AdmmProblem(Problem, SmoothObjective, Protocol):
    """The record of an ADMM module (`foldgen.runtime.admm`): f₀ smooth, the blocks
    gᵢ(Aᵢ x) with a closed-form prox each."""

    terms: tuple[Any, ...]  # per block, its foldgen.runtime.admm._AdmmProx record
    matrices: tuple[bool, ...]  # per block, whether zᵢ = Aᵢ x has a matrix (else zᵢ = x)
    data_ranks: tuple[int, ...]  # core ranks of block_data's outputs
    labels: tuple[str, ...]  # per block, how messages name it (its constraints[i] and math)
    objective_grad_indices: tuple[int, ...]  # inputs ∇f₀ depends on
    block_grad_indices: tuple[int, ...]  # inputs the block data depend on

    def block_data(self, x: Tensor, *values: Tensor) -> tuple[Tensor, ...]:
        """The blocks' data, flat: per block its matrix Aᵢ (when it has one), then its prox
        data (two tensors)."""
        ...

    def prepare(self, p: Any, x: Tensor, values: list[Tensor], blocks: list, rho: Tensor):
        """What every x-update reuses (a Cholesky factor when f₀ is quadratic), and where it
        exists: `_admm_prepare_quadratic` or `_admm_prepare_newton`."""
        ...

    def x_update(
        self, p: Any, x: Tensor, z: list, u: list, values: list, blocks: list, rho, fixed, tol
    ) -> tuple[Tensor, Tensor]:
        """argmin f₀ + (ρ/2) Σᵢ ‖Aᵢx − zᵢ + uᵢ‖² and where it succeeded (a factor solve, or a
        damped Newton method when f₀ is not quadratic)."""
        ...


class AdmmOptional(Protocol):
    def gradient_vjp(self, x: Tensor, u: Tensor, *values: Tensor) -> Tensor | tuple[Tensor, ...]:
        """(∂∇f₀/∂θ)ᵀ u for the inputs at ``objective_grad_indices``."""
        ...

    def block_data_vjp(self, x: Tensor, *bars_then_values: Tensor) -> Tensor | tuple:
        """The block data's cotangents pulled back to the inputs at ``block_grad_indices``."""
        ...


class SqpProblem(Problem, Protocol):
    """The record of an SQP module (`foldgen.runtime.sqp`): min f s.t. g(x) ≤ 0, h(x) = 0,
    g and h in blocks (a scalar block has rank 0, a vector block rank 1)."""

    ineq_ranks: tuple[int, ...]
    eq_ranks: tuple[int, ...]
    ineq_labels: tuple[str, ...]  # each block's name in messages: constraints[i] (g0: …)
    eq_labels: tuple[str, ...]
    kkt_grad_indices: tuple[int, ...]  # inputs the KKT system depends on
    ineq_values: Callable[..., Any]  # `_sqp_inequalities` or `_sqp_no_constraints`
    eq_values: Callable[..., Any]  # `_sqp_equalities` or `_sqp_no_constraints`
    ineq_jacobian: Callable[..., Any]  # `_sqp_inequality_jacobian` or `_sqp_no_jacobian`
    eq_jacobian: Callable[..., Any]  # `_sqp_equality_jacobian` or `_sqp_no_jacobian`

    def objective(self, x: Tensor, *values: Tensor) -> Tensor:
        """f(x), (...)."""
        ...

    def gradient(self, x: Tensor, *values: Tensor) -> Tensor:
        """∇f(x), (..., n)."""
        ...

    def lagrangian_gradient(self, x: Tensor, *multipliers_then_values: Tensor) -> Tensor:
        """∇ₓL(x, λ, ν), the multipliers in blocks."""
        ...

    def lagrangian_hvp(self, x: Tensor, *multipliers_u_values: Tensor) -> Tensor:
        """∇²ₓₓL(x, λ, ν) u."""
        ...

    def kkt_vjp(self, x: Tensor, *multipliers_u_w_values: Tensor) -> Tensor | tuple:
        """(∂∇ₓL/∂θ)ᵀ u + (∂g/∂θ)ᵀ w_g + (∂h/∂θ)ᵀ w_h for the inputs at kkt_grad_indices."""
        ...


class SqpOptional(Protocol):
    def inequalities(self, x: Tensor, *values: Tensor) -> Tensor | tuple:
        """The blocks of g(x) (when there are inequalities)."""
        ...

    def inequalities_vjp(self, x: Tensor, *w_then_values: Tensor) -> Tensor:
        """J_g(x)ᵀ w, w in blocks."""
        ...

    def equalities(self, x: Tensor, *values: Tensor) -> Tensor | tuple:
        """The blocks of h(x) (when there are equalities)."""
        ...

    def equalities_vjp(self, x: Tensor, *w_then_values: Tensor) -> Tensor:
        """J_h(x)ᵀ w, w in blocks."""
        ...


#: Each rule's record: the fields it always has, and those it may have.
RECORDS: dict[str, tuple[type, ...]] = {
    "pgd": (PgdProblem, PgdOptional),
    "admm": (AdmmProblem, AdmmOptional),
    "sqp": (SqpProblem, SqpOptional),
}


def fields(protocol: type) -> set[str]:
    """The names a protocol declares (attributes and methods), its bases' included."""
    names: set[str] = set()
    for cls in protocol.__mro__:
        if cls in (object, Protocol) or not getattr(cls, "_is_protocol", False):
            continue
        names |= set(getattr(cls, "__annotations__", {}))
        names |= {n for n, v in vars(cls).items() if callable(v) and not n.startswith("_")}
    return names
