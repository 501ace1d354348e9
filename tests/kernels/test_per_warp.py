"""kernels._common.PER_WARP: the forwards' kernels launched through twins compiled with per-warp products
(mma.sync instead of Hopper's warp-group products on the GPU; the same code here) give the same bits as
the kernels themselves, and leave the environment as they found it."""

import os

import pytest
import torch

import dsf
import kernels.delta.chunk as C
import kernels.diag.chunk as dc
from kernels import _common
from kernels.delta import chunk_delta
from kernels.diag import chunk_diag, chunk_key

NAMES = {"delta.ut", "delta.pass", "delta.segment_state", "delta.chain", "key.gate", "key.pass",
         "key.segment_state"}


def _delta():
    d = dsf.random_inputs("gated_deltanet", B=1, T=150, H=2, K=32, V=24, seed=3)
    x = {n: t.float() for n, t in d.items()}
    S0 = torch.randn(1, 2, 32, 24, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        return chunk_delta(x["q"], x["k"], x["v"], x["beta"], x["g"], chunk_size=16, initial_state=S0,
                           output_final_state=True)


def _gla():
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 200, 2, d, generator=gen) for d in (24, 24, 20))
    gk = torch.nn.functional.logsigmoid(torch.randn(2, 200, 2, 24, generator=gen) + 2) / 4
    with torch.no_grad():
        return chunk_diag(q, k, v, "key", gk, initial_state=torch.randn(2, 2, 24, 20, generator=gen),
                          output_final_state=True)


@pytest.mark.parametrize("segments", [False, True], ids=["whole", "segments"])
@pytest.mark.parametrize("family", ["delta", "key"])
def test_per_warp_twins_give_the_same_bits(monkeypatch, family, segments):
    monkeypatch.setattr(dc, "FUSED_FORWARD", True)
    monkeypatch.setattr(dc, "FUSED_MIN_PROGRAMS", 1000 if segments else 1)
    if family == "delta":
        monkeypatch.setattr(C, "FUSED_FORWARD", True)
        monkeypatch.setattr(C, "WU_IN_SCAN", True)
        monkeypatch.setattr(C, "SEGMENTS", segments)
        monkeypatch.setattr(C, "SEGMENTS_WU_IN_SCAN", True)
        monkeypatch.setattr(C, "FUSED_MIN_PROGRAMS", 6 if segments else 1)
        run, kernels_used = _delta, [C._ut_kernel, C._state_kernel] + [C._segment_chain_kernel] * segments
    else:
        monkeypatch.setattr(chunk_key._scalar, "_fused_segments", lambda *a, **kw: 2 if segments else 1)
        run = _gla
        kernels_used = [chunk_key._gate_kernel, chunk_key._fused_fwd_kernel] + [chunk_key._state_kernel] * segments
    monkeypatch.setattr(_common, "_TWINS", {})
    plain = run()
    assert _common._TWINS == {}
    monkeypatch.setattr(_common, "PER_WARP", set(NAMES))
    twin = run()
    assert set(_common._TWINS) == set(kernels_used)
    assert "DISABLE_MMA_V3" not in os.environ
    for a, b in zip(plain, twin):
        assert torch.equal(a, b)


def test_the_variable_is_restored_as_it_was(monkeypatch):
    """A DISABLE_MMA_V3 the user set stays set, to its value, after a twin's launch."""
    monkeypatch.setenv("DISABLE_MMA_V3", "0")
    monkeypatch.setattr(_common, "PER_WARP", {"x"})
    seen = []

    class Kernel:
        fn = None

    monkeypatch.setattr("triton.jit", lambda fn: {(1,): lambda *a, **kw: seen.append(os.environ["DISABLE_MMA_V3"])})
    _common.products(Kernel(), "x")[(1,)]()
    assert seen == ["1"] and os.environ["DISABLE_MMA_V3"] == "0"
