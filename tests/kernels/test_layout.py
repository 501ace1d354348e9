"""Host-side helpers: the chunk layout built on the host for equal-length batches matches the general
one, and the SM count is asked once per device."""

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


def test_dense_layouts_are_made_once_per_shape():
    """The offsets and chunk lists of an equal-length batch are built once per (shape, chunk, device)
    and handed out again (no tensor op on later calls); another shape gets its own."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.append(str(func))
            return func(*args, **(kwargs or {}))

    first = seq_bounds(None, 3, 130, "cpu"), chunk_layout(seq_bounds(None, 3, 130, "cpu"), 64)
    with Ops() as ops:
        again = seq_bounds(None, 3, 130, "cpu"), chunk_layout(seq_bounds(None, 3, 130, "cpu"), 64)
    assert ops.seen == []
    assert again[0] is first[0] and again[1][0] is first[1][0] and again[1][1] is first[1][1]
    other = chunk_layout(seq_bounds(None, 3, 130, "cpu"), 32)
    assert other[2] == 5 and other[1] is not first[1][1] and first[1][2] == 3
    assert seq_bounds(None, 2, 130, "cpu") is not first[0]


def test_sm_count_is_asked_once_per_device(monkeypatch):
    """kernels._common.sm_count: 0 off CUDA; on CUDA the device's count, asked of torch once per device
    index (a plain "cuda" is the current device)."""
    from types import SimpleNamespace

    from kernels import _common

    asked = []
    monkeypatch.setattr(_common, "_PER_DEVICE", {})
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: asked.append(i) or SimpleNamespace(multi_processor_count=100 + i))
    assert _common.sm_count("cpu") == 0
    assert [_common.sm_count(d) for d in ("cuda", "cuda:1", "cuda:0", "cuda", "cuda:0")] == [101, 101, 100, 101, 100]
    assert asked == [1, 0]
