r"""One decoding step of causal softmax attention over a KV cache, in one fused Triton launch.

The new token sits at position p = n − 1 of its sequence, n = cache_seqlens[b] (or the cache length
L): the cache already holds its key and value. It sees key j iff j <= p and (window is None or
p − j < window or j < sink_tokens). One program per (batch, head) walks the sink tiles, then the
window's tiles, with an online softmax in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _utils as U

__all__ = ["flash_decode"]


@triton.jit
def _decode_tile(acc, l_i, m_i, q, k_base, v_base, start_n, offs_n, offs_k, offs_v, n, pos,
                 stride_kt, stride_vt, qk_scale, WINDOW, SINK, HEAD_K: tl.constexpr,
                 HEAD_V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_WINDOW: tl.constexpr):
    cols = start_n + offs_n
    col_ok = cols < n
    k = tl.load(k_base + cols[:, None] * stride_kt + offs_k[None, :],
                mask=col_ok[:, None] & (offs_k[None, :] < HEAD_K), other=0.0).to(tl.float32)
    v = tl.load(v_base + cols[:, None] * stride_vt + offs_v[None, :],
                mask=col_ok[:, None] & (offs_v[None, :] < HEAD_V), other=0.0).to(tl.float32)
    s = tl.sum(k * q[None, :], 1) * qk_scale
    ok = col_ok & (cols <= pos)
    if HAS_WINDOW:
        ok = ok & (((pos - cols) < WINDOW) | (cols < SINK))
    s = tl.where(ok, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 0))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s - m_new)
    l_i = l_i * alpha + tl.sum(p, 0)
    acc = acc * alpha + tl.sum(p[:, None] * v, 0)
    return acc, l_i, m_new


@triton.jit
def _decode_kernel(Q, K, V, O, LENS, qk_scale, stride_qb, stride_qh, stride_kb, stride_kt,
                   stride_kh, stride_vb, stride_vt, stride_vh, stride_ob, stride_oh, H, L_CACHE,
                   WINDOW, SINK, HEAD_K: tl.constexpr, HEAD_V: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr, BLOCK_N: tl.constexpr, HAS_LENS: tl.constexpr,
                   HAS_WINDOW: tl.constexpr):
    pid = tl.program_id(0)
    i_b, i_h = pid // H, pid % H
    i_b64 = i_b.to(tl.int64)
    if HAS_LENS:
        n = tl.load(LENS + i_b).to(tl.int32)
    else:
        n = L_CACHE
    pos = n - 1
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BK)
    offs_v = tl.arange(0, BV)
    q = tl.load(Q + i_b64 * stride_qb + i_h * stride_qh + offs_k, mask=offs_k < HEAD_K,
                other=0.0).to(tl.float32)
    k_base = K + i_b64 * stride_kb + i_h * stride_kh
    v_base = V + i_b64 * stride_vb + i_h * stride_vh
    m_i = tl.max(tl.full([BLOCK_N], -1.0e30, tl.float32), 0)
    l_i = tl.sum(tl.zeros([BLOCK_N], tl.float32), 0)
    acc = tl.zeros([BV], tl.float32)
    if HAS_WINDOW:
        lo = (tl.maximum(pos - WINDOW + 1, 0) // BLOCK_N) * BLOCK_N
        sink_hi = tl.minimum(tl.cdiv(SINK, BLOCK_N) * BLOCK_N, lo)
        for start_n in range(0, sink_hi, BLOCK_N):
            acc, l_i, m_i = _decode_tile(acc, l_i, m_i, q, k_base, v_base, start_n, offs_n, offs_k,
                                         offs_v, n, pos, stride_kt, stride_vt, qk_scale, WINDOW, SINK,
                                         HEAD_K, HEAD_V, BK, BV, HAS_WINDOW)
    else:
        lo = 0
    for start_n in range(lo, n, BLOCK_N):
        acc, l_i, m_i = _decode_tile(acc, l_i, m_i, q, k_base, v_base, start_n, offs_n, offs_k, offs_v,
                                     n, pos, stride_kt, stride_vt, qk_scale, WINDOW, SINK, HEAD_K,
                                     HEAD_V, BK, BV, HAS_WINDOW)
    o = acc / tl.where(l_i > 0.0, l_i, 1.0)
    tl.store(O + i_b64 * stride_ob + i_h * stride_oh + offs_v, o.to(O.dtype.element_ty),
             mask=offs_v < HEAD_V)


def _check_lens(op: str, cache_seqlens, B: int, L: int, device) -> Tensor | None:
    if cache_seqlens is None:
        return None
    if not isinstance(cache_seqlens, Tensor) or cache_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{op}: cache_seqlens must be an int32/int64 tensor, got "
                        f"{getattr(cache_seqlens, 'dtype', type(cache_seqlens).__name__)}")
    if tuple(cache_seqlens.shape) != (B,):
        raise ValueError(f"{op}: cache_seqlens must have shape [B] = ({B},), got "
                         f"{tuple(cache_seqlens.shape)}")
    lens = cache_seqlens.to(device=device)
    capturing = lens.is_cuda and torch.cuda.is_current_stream_capturing()
    if B and not capturing:  # one host sync; skipped while a CUDA graph is being captured
        lo, hi = torch.stack([lens.min(), lens.max()]).tolist()
        if lo < 1 or hi > L:
            raise ValueError(f"{op}: cache_seqlens must lie in [1, L={L}] (the cache holds the current "
                             f"token), got values in [{lo}, {hi}]")
    return lens.contiguous()


def flash_decode(q: Tensor, k_cache: Tensor, v_cache: Tensor, cache_seqlens: Tensor | None = None,
                 scale: float | None = None, window: int | None = None,
                 sink_tokens: int = 0) -> Tensor:
    """Attention output of one new query token per sequence over its KV cache.

    Args:
        q: [B, 1, H, K] or [B, H, K], the new token's query.
        k_cache: [B, L, H, K], v_cache: [B, L, H, V]: keys / values of every token so far, the
            current one included (position n − 1, n = cache_seqlens[b] or L).
        cache_seqlens: int [B], the valid lengths of padded caches (1 <= n <= L); None: all L.
        scale, window, sink_tokens: as in :func:`flash_attention`.
    Returns:
        o shaped like q with V channels: [B, 1, H, V] or [B, H, V], in the input dtype.
    """
    op = "flash_decode"
    device = U.check_common(op, q, k_cache, v_cache)
    U.check_rank(op, "q", q, (3, 4), "[B, 1, H, K] or [B, H, K]")
    U.check_rank(op, "k_cache", k_cache, (4,), "[B, L, H, K]")
    U.check_rank(op, "v_cache", v_cache, (4,), "[B, L, H, V]")
    if q.dim() == 4 and q.shape[1] != 1:
        raise ValueError(f"{op}: q must hold one token per sequence, [B, 1, H, K], got "
                         f"{tuple(q.shape)}; use flash_attention for several")
    q3 = q.reshape(q.shape[0], q.shape[-2], q.shape[-1])
    B, H, K = q3.shape
    L = k_cache.shape[1]
    if tuple(k_cache.shape) != (B, L, H, K):
        raise ValueError(f"{op}: k_cache must be [B, L, H, K] with B, H, K = {(B, H, K)}, got "
                         f"{tuple(k_cache.shape)}")
    if tuple(v_cache.shape[:3]) != (B, L, H):
        raise ValueError(f"{op}: v_cache must be [B, L, H, V] with B, L, H = {(B, L, H)}, got "
                         f"{tuple(v_cache.shape)}")
    Vd = v_cache.shape[-1]
    U.check_heads(op, K, Vd)
    scale = U.check_options(op, scale, window, sink_tokens, K)
    if L < 1 and B > 0:
        raise ValueError(f"{op}: the cache must hold at least the current token, got L={L}")
    lens = _check_lens(op, cache_seqlens, B, L, device)
    q3, kc, vc = q3.contiguous(), k_cache.contiguous(), v_cache.contiguous()
    U.check_offsets(op, L, kc.stride(1), vc.stride(1))
    o = U._alloc((B, H, Vd), q.dtype, device)
    if B * H > 0:
        BK, BV = U.head_blocks(K, Vd)
        cfg = U.decode_config(BK, BV, q.dtype)
        _decode_kernel[(B * H,)](
            q3, kc, vc, o, lens if lens is not None else kc, scale * U.LOG2E, q3.stride(0),
            q3.stride(1), kc.stride(0), kc.stride(1), kc.stride(2), vc.stride(0), vc.stride(1),
            vc.stride(2), o.stride(0), o.stride(1), H, L, window or 0, sink_tokens, HEAD_K=K,
            HEAD_V=Vd, BK=BK, BV=BV, BLOCK_N=cfg["BLOCK_N"], HAS_LENS=lens is not None,
            HAS_WINDOW=window is not None, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return o if q.dim() == 3 else o.unsqueeze(1)
