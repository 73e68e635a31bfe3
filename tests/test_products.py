"""Matrix products that match the data's batching (issue 12, part): the runtime's `_mv` is
one GEMM x @ Aᵀ for a matrix shared by the batch, with no broadcast (B, m, n) copy of it,
and the batched product where A itself is batched; the results equal einsum's."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from foldgen.runtime.core import _mv

F64 = torch.float64


class _Shapes(TorchDispatchMode):
    """Every aten op's name and the shapes of its tensor outputs, as dispatched."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, list[tuple[int, ...]]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        results = out if isinstance(out, (tuple, list)) else (out,)
        shapes = [tuple(t.shape) for t in results if isinstance(t, torch.Tensor)]
        self.ops.append((str(func.overloadpacket.__name__), shapes))
        return out


@pytest.mark.parametrize(
    "a_shape,x_shape",
    [
        ((5, 7), (64, 7)),  # a shared matrix, a batch of vectors
        ((5, 7), (3, 4, 7)),  # two batch axes
        ((5, 7), (7,)),  # no batch at all
        ((64, 5, 7), (64, 7)),  # both batched
        ((64, 5, 7), (7,)),  # a batch of matrices, one vector
        ((2, 1, 5, 7), (3, 7)),  # batch axes that broadcast
    ],
)
def test_mv_equals_einsum(a_shape, x_shape):
    g = torch.Generator().manual_seed(0)
    A = torch.randn(a_shape, generator=g, dtype=F64)
    x = torch.randn(x_shape, generator=g, dtype=F64)
    expected = torch.einsum("...mn,...n->...m", A, x)
    torch.testing.assert_close(_mv(A, x), expected, rtol=1e-14, atol=1e-14)


def test_a_shared_matrix_is_one_gemm_without_a_broadcast_copy():
    A = torch.randn(50, 50, dtype=F64)
    x = torch.randn(64, 50, dtype=F64)
    with _Shapes() as record:
        _mv(A, x)
    big = [op for op, shapes in record.ops if any(len(s) == 3 for s in shapes)]
    assert big == [], record.ops  # nothing of shape (64, 50, 50), nor any 3-D tensor
    products = [op for op, _ in record.ops if op in ("mm", "bmm", "mv", "matmul", "addmm")]
    assert products == ["mm"], record.ops


def test_a_batched_matrix_keeps_the_batched_product():
    A = torch.randn(64, 50, 50, dtype=F64)
    x = torch.randn(64, 50, dtype=F64)
    with _Shapes() as record:
        _mv(A, x)
    assert [op for op, _ in record.ops if op in ("bmm", "mm")] == ["bmm"], record.ops


def test_a_lifted_matrix_multiplies_all_its_vectors_without_a_broadcast_copy():
    """The dense-Jacobian path: A lifted to (B, 1, m, n) against (B, k, n) unit vectors is
    one (k, n) @ (n, m) product per element; no (B, k, m, n) copy of A appears."""
    g = torch.Generator().manual_seed(1)
    A = torch.randn(16, 1, 5, 7, generator=g, dtype=F64)
    x = torch.randn(16, 9, 7, generator=g, dtype=F64)
    expected = torch.einsum("bmn,bkn->bkm", A[:, 0], x)
    with _Shapes() as record:
        out = _mv(A, x)
    torch.testing.assert_close(out, expected, rtol=1e-14, atol=1e-14)
    assert all(len(s) < 4 for _, shapes in record.ops for s in shapes), record.ops
