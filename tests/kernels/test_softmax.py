"""Flash softmax attention (Triton) against the float64 dsf reference.

Runs under Triton's CPU interpreter when there is no GPU (tests/conftest.py sets TRITON_INTERPRET),
so the shapes stay small. Every buffer the kernels write starts as NaN, so unwritten elements show.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import dsf
from kernels.softmax import _utils, flash_attention, flash_decode

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 1e-5


def rel(out, ref):
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.isfinite(out).all(), "non-finite output (unwritten buffer?)"
    return ((out - ref).norm() / ref.norm()).item()


def reference(q, k, v, **kw):
    """float64 dsf reference, per sequence when cu_seqlens is given (B = 1)."""
    cu = kw.pop("cu_seqlens", None)
    if cu is None:
        return dsf.recurrent("softmax_attention", q=q, k=k, v=v, **kw)[0]
    c = cu.tolist()
    parts = [dsf.recurrent("softmax_attention", q=q[:, a:b], k=k[:, a:b], v=v[:, a:b], **kw)[0]
             for a, b in zip(c, c[1:]) if b > a]
    return torch.cat(parts, dim=1)


def inputs(B, T, H, K, V, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, H, d, generator=g).to(dtype=dtype, device=DEV) for d in (K, K, V)]


def check(B, T, H, K, V, grads=False, **kw):
    q, k, v = inputs(B, T, H, K, V)
    if grads:
        q, k, v = (x.requires_grad_() for x in (q, k, v))
    o = flash_attention(q, k, v, **kw)
    assert o.shape == (B, T, H, V) and o.dtype == q.dtype
    xd = [x.detach().double().cpu().requires_grad_(grads) for x in (q, k, v)]
    kw_ref = dict(kw)
    if kw_ref.get("cu_seqlens") is not None:
        kw_ref["cu_seqlens"] = kw_ref["cu_seqlens"].cpu()
    r = reference(*xd, **kw_ref)
    assert rel(o, r) < TOL
    if grads:
        do = torch.randn(B, T, H, V, generator=torch.Generator().manual_seed(1))
        g = torch.autograd.grad(o, (q, k, v), do.to(DEV))
        gr = torch.autograd.grad(r, xd, do.double())
        for name, a, b in zip("qkv", g, gr):
            # (one key: the weights are 1 whatever q and k are, so dq and dk are exactly zero; fp32 round-off)
            assert rel(a, b) < TOL or (b.abs().max() == 0 and a.abs().max() < 1e-6), f"d{name}"


@pytest.mark.parametrize("T,K,V", [(1, 16, 16), (7, 16, 32), (33, 32, 16)])
def test_forward_odd_lengths(T, K, V):
    check(2, T, 2, K, V)


# windows of 2 and 18 (≡ 2 mod the 16-wide key tiles) start a query tile's keys one row into a tile
@pytest.mark.parametrize("T,window,sinks", [(40, 5, 2), (33, 16, 0), (37, 1, 17), (40, 2, 0), (40, 18, 1)])
def test_window_and_sinks(T, window, sinks):
    check(2, T, 2, 16, 16, window=window, sink_tokens=sinks)


def test_scale():
    check(1, 20, 2, 16, 16, scale=0.7)


@pytest.mark.parametrize("T,K,V,kw", [(33, 32, 16, {}), (40, 16, 32, dict(window=7, sink_tokens=3)),
                                      (40, 16, 16, dict(window=18, sink_tokens=1)), (1, 16, 16, {}),
                                      (1, 16, 16, dict(window=1, sink_tokens=2))])
def test_gradients(T, K, V, kw):
    check(1, T, 2, K, V, grads=True, **kw)


@pytest.mark.parametrize("cu,kw", [([0, 5, 5, 17], {}), ([0, 1, 20, 37], dict(window=6, sink_tokens=2))])
def test_varlen(cu, kw):
    check(1, cu[-1], 2, 16, 16, grads=True, cu_seqlens=torch.tensor(cu, device=DEV), **kw)


@pytest.mark.parametrize("tiles", [(32, 16, 16, 32, 32, 16), (16, 32, 32, 16, 16, 32)])
def test_uneven_tiles(monkeypatch, tiles):
    """Query and key tiles of different sizes (the GPU configs mix them)."""
    f_m, f_n, b_m, b_n, q_m, q_n = tiles
    cfg = lambda m, n: lambda *a: dict(BLOCK_M=m, BLOCK_N=n, num_warps=4, num_stages=1)  # noqa: E731
    monkeypatch.setattr(_utils, "fwd_config", cfg(f_m, f_n))
    monkeypatch.setattr(_utils, "bwd_config", cfg(b_m, b_n))
    monkeypatch.setattr(_utils, "dq_config", cfg(q_m, q_n))
    cu = torch.tensor([0, 3, 40], device=DEV)
    check(1, 40, 1, 16, 16, grads=True, window=17, sink_tokens=5, cu_seqlens=cu)


def test_half_precision():
    for dtype in (torch.float16, torch.bfloat16):
        q, k, v = inputs(1, 24, 2, 16, 16, dtype=dtype)
        o = flash_attention(q, k, v, window=9, sink_tokens=1)
        assert o.dtype == dtype
        r = reference(*(x.double().cpu() for x in (q, k, v)), window=9, sink_tokens=1)
        assert rel(o, r) < 1e-2


@pytest.mark.parametrize("kw", [{}, dict(window=6, sink_tokens=2)])
def test_decode(kw):
    B, L, H, K, V = 3, 37, 2, 16, 32
    q, kc, vc = inputs(B, L, H, K, V, seed=3)
    q = q[:, :1]
    lens = torch.tensor([37, 1, 20], device=DEV)
    o = flash_decode(q, kc, vc, cache_seqlens=lens, **kw)
    assert o.shape == (B, 1, H, V)
    o3 = flash_decode(q[:, 0], kc, vc, cache_seqlens=lens, **kw)
    assert o3.shape == (B, H, V) and torch.equal(o3, o[:, 0])
    for b, n in enumerate(lens.tolist()):
        qq = torch.zeros(1, n, H, K, dtype=torch.float64)
        qq[:, -1] = q[b, 0].double().cpu()
        r = reference(qq, kc[b:b + 1, :n].double().cpu(), vc[b:b + 1, :n].double().cpu(), **kw)
        assert rel(o[b:b + 1, 0], r[:, -1]) < TOL
    full = flash_decode(q, kc, vc, **kw)  # no lengths: the whole cache
    r = reference(*(x.double().cpu() for x in (kc * 0 + q, kc, vc)), **kw)
    assert rel(full[:, 0], r[:, -1]) < TOL


# --------------------------------------------------------------------------------------- errors

def qkv(T=8, K=16, V=16, B=1, dtype=torch.float32):
    return inputs(B, T, 2, K, V, dtype=dtype)


@pytest.mark.parametrize("make,exc,match", [
    (lambda: (*qkv()[:2], qkv()[2].to("meta")), ValueError, "is on meta"),
    (lambda: qkv(K=257), ValueError, "head dim K=257"),
    (lambda: qkv(V=300), ValueError, "head dim V=300"),
    (lambda: (*qkv()[:2], qkv()[2].half()), TypeError, "share one dtype"),
    (lambda: (qkv()[0].long(), *qkv()[1:]), TypeError, "floating-point"),
    (lambda: qkv(dtype=torch.float64), TypeError, "not supported"),
    (lambda: (qkv()[0][0], *qkv()[1:]), ValueError, r"\[B, T, H, K\]"),
    (lambda: (qkv()[0], qkv(T=9)[1], qkv()[2]), ValueError, "shape of q"),
    (lambda: (*qkv()[:2], qkv(T=9)[2]), ValueError, "v must be"),
])
def test_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        flash_attention(*make())


@pytest.mark.parametrize("cu,B,match", [
    ([1, 4, 8], 1, "start at 0"),
    ([0, 5, 3, 8], 1, "non-decreasing"),
    ([0, 4, 7], 1, "end at T=8"),
    ([0, 4, 8], 2, "B=1"),
])
def test_cu_seqlens_errors(cu, B, match):
    q, k, v = qkv(B=B)
    with pytest.raises(ValueError, match=match):
        flash_attention(q, k, v, cu_seqlens=torch.tensor(cu))


@pytest.mark.parametrize("kw,exc", [(dict(window=0), ValueError), (dict(window=2.5), ValueError),
                                    (dict(sink_tokens=-1), ValueError), (dict(scale="x"), TypeError),
                                    (dict(cu_seqlens=torch.tensor([0.0, 8.0])), TypeError)])
def test_option_errors(kw, exc):
    with pytest.raises(exc):
        flash_attention(*qkv(), **kw)


def test_needs_cuda_without_interpreter(monkeypatch):
    if DEV == "cuda":
        pytest.skip("tensors are on CUDA")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="need CUDA"):
        flash_attention(*qkv())


def test_decode_errors():
    q, kc, vc = inputs(2, 6, 2, 16, 16)
    with pytest.raises(ValueError, match="one token"):
        flash_decode(q[:, :2], kc, vc)
    with pytest.raises(ValueError, match="k_cache must be"):
        flash_decode(q[:, :1], kc[:, :, :1], vc)
    with pytest.raises(ValueError, match=r"\[1, L=6\]"):
        flash_decode(q[:, :1], kc, vc, cache_seqlens=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"\[1, L=6\]"):
        flash_decode(q[:, :1], kc, vc, cache_seqlens=torch.tensor([7, 3]))
    with pytest.raises(ValueError, match="shape"):
        flash_decode(q[:, :1], kc, vc, cache_seqlens=torch.tensor([2]))
    with pytest.raises(TypeError, match="share one dtype"):
        flash_decode(q[:, :1].half(), kc, vc)
    with pytest.raises(ValueError, match="is on meta"):
        flash_decode(q[:, :1], kc, vc.to("meta"))


def test_empty():
    q, k, v = qkv(T=0)
    assert flash_attention(q, k, v).shape == (1, 0, 2, 16)
    cu = torch.tensor([0, 0, 0])
    assert flash_attention(q, k, v, cu_seqlens=cu).shape == (1, 0, 2, 16)


def test_deterministic():
    q, k, v = (x.requires_grad_() for x in qkv(T=20))
    runs = []
    for _ in range(2):
        o = flash_attention(q, k, v, window=5, sink_tokens=1)
        runs.append([o, *torch.autograd.grad(o.sum(), (q, k, v))])
    assert all(torch.equal(a, b) for a, b in itertools.zip_longest(*runs))
