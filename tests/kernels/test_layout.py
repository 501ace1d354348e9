"""The chunk layout built on the host for equal-length batches matches the general one."""

import pytest
import torch

from kernels._common import seq_bounds
from kernels.diag.chunk import chunk_layout


@pytest.mark.parametrize("B,T,bt", [(1, 1, 64), (3, 64, 64), (2, 65, 64), (4, 100, 16), (2, 7, 32)])
def test_dense_layout_matches_general(B, T, bt):
    dense = seq_bounds(None, B, T, "cpu")
    assert getattr(dense, "_dense", None) == (B, T)
    general = dense.clone()   # the same offsets without the mark: built from the tensor itself
    assert not hasattr(general, "_dense")
    got, want = chunk_layout(dense, bt), chunk_layout(general, bt)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and got[2] == want[2]


def test_varlen_offsets_are_not_marked():
    cu = torch.tensor([0, 3, 3, 10])
    assert not hasattr(seq_bounds(cu, 1, 10, "cpu"), "_dense")
