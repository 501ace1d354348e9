r"""Flash-style tiled causal softmax attention in Triton, forward and backward (FlashAttention-2).

    o_i = Σ_{j visible from i} softmax_j(s · q_i·k_j) v_j,
    visible: j <= i and (window is None or i − j < window or j < sink_tokens)

Positions count from each sequence's start (varlen: sequences packed along T with cu_seqlens, B = 1).

Forward: one program per (sequence, head, query tile) keeps the running max m, the denominator l
and the fp32 accumulator in registers while it walks the key tiles; tiles outside the causal band /
window are never loaded (sink tiles are visited separately), tiles fully inside it skip the mask.
Scores live in log2 units (exp2); the log-sum-exp (log2 units, fp32, [H, total T]) is saved.

Backward: delta = rowsum(do ⊙ o); a kernel over key tiles accumulates dk, dv over the query tiles
that see them; a second kernel over query tiles accumulates dq. No atomics: deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._common import apply, cdiv, check_cu_seqlens, interpreter_upcast, seq_bounds
from . import _utils as U
from ._utils import key_ranges, load_rows, query_ranges, visible

__all__ = ["flash_attention", "FlashAttention"]


# ---------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------

@triton.jit
def _fwd_tile(acc, l_i, m_i, q, k_base, v_base, start_n, rows, offs_n, offs_k, offs_v, L,
              stride_kt, stride_vt, qk_scale, WINDOW, SINK, HEAD_K: tl.constexpr,
              HEAD_V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, MASK: tl.constexpr,
              HAS_WINDOW: tl.constexpr, DOT_PREC: tl.constexpr):
    cols = start_n + offs_n
    k = load_rows(k_base, cols, stride_kt, offs_k, L, HEAD_K, BK, MASK)
    v = load_rows(v_base, cols, stride_vt, offs_v, L, HEAD_V, BV, MASK)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
    if MASK:
        s = tl.where(visible(rows, cols, WINDOW, SINK, HAS_WINDOW), s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    return acc, l_i, m_new


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, CU, qk_scale, stride_qt, stride_qh, stride_kt, stride_kh,
                stride_vt, stride_vh, stride_ot, stride_oh, stride_lh, NUM_M, H, WINDOW, SINK,
                HEAD_K: tl.constexpr, HEAD_V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_WINDOW: tl.constexpr,
                DOT_PREC: tl.constexpr):
    i_nh = tl.program_id(0)
    i_n, i_h = i_nh // H, i_nh % H
    pid_m = NUM_M - 1 - tl.program_id(1)  # the longest (last) query tiles start first
    bos = tl.load(CU + i_n).to(tl.int64)
    L = (tl.load(CU + i_n + 1).to(tl.int64) - bos).to(tl.int32)
    start_m = pid_m * BLOCK_M
    if start_m >= L:
        return
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BK)
    offs_v = tl.arange(0, BV)
    k_base = K + bos * stride_kt + i_h * stride_kh
    v_base = V + bos * stride_vt + i_h * stride_vh
    q = load_rows(Q + bos * stride_qt + i_h * stride_qh, rows, stride_qt, offs_k, L, HEAD_K, BK, True)
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)  # finite: a row with no visible key yet stays NaN-free
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BV], tl.float32)
    sink_hi, lo, a, b, hi = key_ranges(start_m, L, WINDOW, SINK, BLOCK_M, BLOCK_N, HAS_WINDOW)
    if HAS_WINDOW:
        for start_n in range(0, sink_hi, BLOCK_N):
            acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, start_n, rows, offs_n, offs_k,
                                      offs_v, L, stride_kt, stride_vt, qk_scale, WINDOW, SINK, HEAD_K,
                                      HEAD_V, BK, BV, True, HAS_WINDOW, DOT_PREC)
        for start_n in range(lo, a, BLOCK_N):
            acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, start_n, rows, offs_n, offs_k,
                                      offs_v, L, stride_kt, stride_vt, qk_scale, WINDOW, SINK, HEAD_K,
                                      HEAD_V, BK, BV, True, HAS_WINDOW, DOT_PREC)
    for start_n in range(a, b, BLOCK_N):
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, start_n, rows, offs_n, offs_k,
                                  offs_v, L, stride_kt, stride_vt, qk_scale, WINDOW, SINK, HEAD_K,
                                  HEAD_V, BK, BV, False, HAS_WINDOW, DOT_PREC)
    for start_n in range(b, hi, BLOCK_N):
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, start_n, rows, offs_n, offs_k,
                                  offs_v, L, stride_kt, stride_vt, qk_scale, WINDOW, SINK, HEAD_K,
                                  HEAD_V, BK, BV, True, HAS_WINDOW, DOT_PREC)
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    o = acc / l_safe[:, None]
    row_ok = rows < L
    o_ptrs = O + bos * stride_ot + i_h * stride_oh + rows[:, None] * stride_ot + offs_v[None, :]
    tl.store(o_ptrs, o.to(O.dtype.element_ty), mask=row_ok[:, None] & (offs_v[None, :] < HEAD_V))
    tl.store(LSE + i_h * stride_lh + bos + rows, m_i + tl.math.log2(l_safe), mask=row_ok)


# ---------------------------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------------------------

@triton.jit
def _bwd_preprocess(O, DO, DELTA, stride_ot, stride_oh, stride_dt, stride_dh, stride_lh, TT,
                    HEAD_V: tl.constexpr, BV: tl.constexpr, BLOCK_T: tl.constexpr):
    """delta[h, t] = Σ_v o[t, h, v] · do[t, h, v] in fp32."""
    i_t, i_h = tl.program_id(0), tl.program_id(1)
    rows = (i_t * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
    offs_v = tl.arange(0, BV)
    mask = (rows[:, None] < TT) & (offs_v[None, :] < HEAD_V)
    o = tl.load(O + i_h * stride_oh + rows[:, None] * stride_ot + offs_v[None, :], mask=mask, other=0.0)
    do = tl.load(DO + i_h * stride_dh + rows[:, None] * stride_dt + offs_v[None, :], mask=mask,
                 other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + i_h * stride_lh + rows, delta, mask=rows < TT)


@triton.jit
def _dkdv_tile(dk, dv, k, v, q_base, do_base, lse_base, delta_base, start_m, cols, offs_m, offs_k,
               offs_v, L, stride_qt, stride_dt, qk_scale, WINDOW, SINK, HEAD_K: tl.constexpr,
               HEAD_V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, MASK: tl.constexpr,
               HAS_WINDOW: tl.constexpr, DOT_PREC: tl.constexpr):
    rows = start_m + offs_m
    q = load_rows(q_base, rows, stride_qt, offs_k, L, HEAD_K, BK, MASK)
    do = load_rows(do_base, rows, stride_dt, offs_v, L, HEAD_V, BV, MASK)
    if MASK:  # rows past the sequence get lse = +inf, hence p = 0
        lse = tl.load(lse_base + rows, mask=rows < L, other=float("inf"))
        delta = tl.load(delta_base + rows, mask=rows < L, other=0.0)
    else:
        lse = tl.load(lse_base + rows)
        delta = tl.load(delta_base + rows)
    pT = tl.math.exp2(tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * qk_scale - lse[None, :])
    if MASK:
        pT = tl.where(tl.trans(visible(rows, cols, WINDOW, SINK, HAS_WINDOW)), pT, 0.0)
    dv += tl.dot(pT.to(do.dtype), do, input_precision=DOT_PREC)
    dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
    dsT = pT * (dpT - delta[None, :])
    dk += tl.dot(dsT.to(q.dtype), q, input_precision=DOT_PREC)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, CU, qk_scale, sm_scale, stride_qt, stride_qh,
                     stride_kt, stride_kh, stride_vt, stride_vh, stride_dt, stride_dh, stride_lh,
                     NUM_N, H, WINDOW, SINK, HEAD_K: tl.constexpr, HEAD_V: tl.constexpr,
                     BK: tl.constexpr, BV: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, HAS_WINDOW: tl.constexpr, DOT_PREC: tl.constexpr):
    i_nh = tl.program_id(0)
    i_n, i_h = i_nh // H, i_nh % H
    pid_n = tl.program_id(1)  # the first key tiles have the most queries: start them first
    bos = tl.load(CU + i_n).to(tl.int64)
    L = (tl.load(CU + i_n + 1).to(tl.int64) - bos).to(tl.int32)
    start_n = pid_n * BLOCK_N
    if start_n >= L:
        return
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BK)
    offs_v = tl.arange(0, BV)
    k_ptr = K + bos * stride_kt + i_h * stride_kh
    v_ptr = V + bos * stride_vt + i_h * stride_vh
    k = load_rows(k_ptr, cols, stride_kt, offs_k, L, HEAD_K, BK, True)
    v = load_rows(v_ptr, cols, stride_vt, offs_v, L, HEAD_V, BV, True)
    q_base = Q + bos * stride_qt + i_h * stride_qh
    do_base = DO + bos * stride_dt + i_h * stride_dh
    lse_base = LSE + i_h * stride_lh + bos
    delta_base = DELTA + i_h * stride_lh + bos
    dk = tl.zeros([BLOCK_N, BK], tl.float32)
    dv = tl.zeros([BLOCK_N, BV], tl.float32)
    lo, a, b, hi = query_ranges(start_n, L, WINDOW, SINK, BLOCK_M, BLOCK_N, HAS_WINDOW)
    for start_m in range(lo, a, BLOCK_M):
        dk, dv = _dkdv_tile(dk, dv, k, v, q_base, do_base, lse_base, delta_base, start_m, cols, offs_m,
                            offs_k, offs_v, L, stride_qt, stride_dt, qk_scale, WINDOW, SINK, HEAD_K,
                            HEAD_V, BK, BV, True, HAS_WINDOW, DOT_PREC)
    for start_m in range(a, b, BLOCK_M):
        dk, dv = _dkdv_tile(dk, dv, k, v, q_base, do_base, lse_base, delta_base, start_m, cols, offs_m,
                            offs_k, offs_v, L, stride_qt, stride_dt, qk_scale, WINDOW, SINK, HEAD_K,
                            HEAD_V, BK, BV, False, HAS_WINDOW, DOT_PREC)
    for start_m in range(b, hi, BLOCK_M):
        dk, dv = _dkdv_tile(dk, dv, k, v, q_base, do_base, lse_base, delta_base, start_m, cols, offs_m,
                            offs_k, offs_v, L, stride_qt, stride_dt, qk_scale, WINDOW, SINK, HEAD_K,
                            HEAD_V, BK, BV, True, HAS_WINDOW, DOT_PREC)
    col_ok = cols < L
    dk_ptrs = DK + bos * stride_kt + i_h * stride_kh + cols[:, None] * stride_kt + offs_k[None, :]
    tl.store(dk_ptrs, (dk * sm_scale).to(DK.dtype.element_ty),
             mask=col_ok[:, None] & (offs_k[None, :] < HEAD_K))
    dv_ptrs = DV + bos * stride_vt + i_h * stride_vh + cols[:, None] * stride_vt + offs_v[None, :]
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=col_ok[:, None] & (offs_v[None, :] < HEAD_V))


@triton.jit
def _dq_tile(dq, q, do, lse, delta, k_base, v_base, start_n, rows, offs_n, offs_k, offs_v, L,
             stride_kt, stride_vt, qk_scale, WINDOW, SINK, HEAD_K: tl.constexpr,
             HEAD_V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, MASK: tl.constexpr,
             HAS_WINDOW: tl.constexpr, DOT_PREC: tl.constexpr):
    cols = start_n + offs_n
    k = load_rows(k_base, cols, stride_kt, offs_k, L, HEAD_K, BK, MASK)
    v = load_rows(v_base, cols, stride_vt, offs_v, L, HEAD_V, BV, MASK)
    p = tl.math.exp2(tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale - lse[:, None])
    if MASK:
        p = tl.where(visible(rows, cols, WINDOW, SINK, HAS_WINDOW), p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
    ds = p * (dp - delta[:, None])
    dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)
    return dq


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, CU, qk_scale, sm_scale, stride_qt, stride_qh,
                   stride_kt, stride_kh, stride_vt, stride_vh, stride_dt, stride_dh, stride_lh, NUM_M,
                   H, WINDOW, SINK, HEAD_K: tl.constexpr, HEAD_V: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   HAS_WINDOW: tl.constexpr, DOT_PREC: tl.constexpr):
    i_nh = tl.program_id(0)
    i_n, i_h = i_nh // H, i_nh % H
    pid_m = NUM_M - 1 - tl.program_id(1)
    bos = tl.load(CU + i_n).to(tl.int64)
    L = (tl.load(CU + i_n + 1).to(tl.int64) - bos).to(tl.int32)
    start_m = pid_m * BLOCK_M
    if start_m >= L:
        return
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BK)
    offs_v = tl.arange(0, BV)
    q = load_rows(Q + bos * stride_qt + i_h * stride_qh, rows, stride_qt, offs_k, L, HEAD_K, BK, True)
    do = load_rows(DO + bos * stride_dt + i_h * stride_dh, rows, stride_dt, offs_v, L, HEAD_V, BV, True)
    row_ok = rows < L
    lse = tl.load(LSE + i_h * stride_lh + bos + rows, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + i_h * stride_lh + bos + rows, mask=row_ok, other=0.0)
    k_base = K + bos * stride_kt + i_h * stride_kh
    v_base = V + bos * stride_vt + i_h * stride_vh
    dq = tl.zeros([BLOCK_M, BK], tl.float32)
    sink_hi, lo, a, b, hi = key_ranges(start_m, L, WINDOW, SINK, BLOCK_M, BLOCK_N, HAS_WINDOW)
    if HAS_WINDOW:
        for start_n in range(0, sink_hi, BLOCK_N):
            dq = _dq_tile(dq, q, do, lse, delta, k_base, v_base, start_n, rows, offs_n, offs_k, offs_v,
                          L, stride_kt, stride_vt, qk_scale, WINDOW, SINK, HEAD_K, HEAD_V, BK, BV,
                          True, HAS_WINDOW, DOT_PREC)
        for start_n in range(lo, a, BLOCK_N):
            dq = _dq_tile(dq, q, do, lse, delta, k_base, v_base, start_n, rows, offs_n, offs_k, offs_v,
                          L, stride_kt, stride_vt, qk_scale, WINDOW, SINK, HEAD_K, HEAD_V, BK, BV,
                          True, HAS_WINDOW, DOT_PREC)
    for start_n in range(a, b, BLOCK_N):
        dq = _dq_tile(dq, q, do, lse, delta, k_base, v_base, start_n, rows, offs_n, offs_k, offs_v,
                      L, stride_kt, stride_vt, qk_scale, WINDOW, SINK, HEAD_K, HEAD_V, BK, BV,
                      False, HAS_WINDOW, DOT_PREC)
    for start_n in range(b, hi, BLOCK_N):
        dq = _dq_tile(dq, q, do, lse, delta, k_base, v_base, start_n, rows, offs_n, offs_k, offs_v,
                      L, stride_kt, stride_vt, qk_scale, WINDOW, SINK, HEAD_K, HEAD_V, BK, BV,
                      True, HAS_WINDOW, DOT_PREC)
    dq_ptrs = DQ + bos * stride_qt + i_h * stride_qh + rows[:, None] * stride_qt + offs_k[None, :]
    tl.store(dq_ptrs, (dq * sm_scale).to(DQ.dtype.element_ty),
             mask=row_ok[:, None] & (offs_k[None, :] < HEAD_K))


# ---------------------------------------------------------------------------------------------
# host side
# ---------------------------------------------------------------------------------------------

def _forward(q, k, v, bounds, max_len, scale, window, sink_tokens):
    """q, k: [TT, H, K], v: [TT, H, V] contiguous; bounds: int64 [N+1]. Returns o, lse [H, TT]."""
    TT, H, K = q.shape
    Vd = v.shape[-1]
    N = bounds.numel() - 1
    o = U._alloc((TT, H, Vd), q.dtype, q.device)
    lse = U._alloc((H, TT), torch.float32, q.device)
    BK, BV = U.head_blocks(K, Vd)
    cfg = U.fwd_config(BK, BV, q.dtype)
    num_m = cdiv(max_len, cfg["BLOCK_M"])
    if N == 0 or num_m == 0:
        return o, lse
    _fwd_kernel[(N * H, num_m)](
        q, k, v, o, lse, bounds, scale * U.LOG2E, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        v.stride(0), v.stride(1), o.stride(0), o.stride(1), lse.stride(0), num_m, H,
        window or 0, sink_tokens, HEAD_K=K, HEAD_V=Vd, BK=BK, BV=BV, BLOCK_M=cfg["BLOCK_M"],
        BLOCK_N=cfg["BLOCK_N"], HAS_WINDOW=window is not None, DOT_PREC=U.dot_precision(q.dtype),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return o, lse


def _backward(do, q, k, v, o, lse, bounds, max_len, scale, window, sink_tokens):
    TT, H, K = q.shape
    Vd = v.shape[-1]
    N = bounds.numel() - 1
    dq = U._alloc(q.shape, q.dtype, q.device)
    dk = U._alloc(k.shape, k.dtype, k.device)
    dv = U._alloc(v.shape, v.dtype, v.device)
    delta = U._alloc((H, TT), torch.float32, q.device)
    if N == 0 or max_len == 0:
        return dq, dk, dv
    BK, BV = U.head_blocks(K, Vd)
    BLOCK_T = 16 if U.interpreting() else 64
    _bwd_preprocess[(cdiv(TT, BLOCK_T), H)](
        o, do, delta, o.stride(0), o.stride(1), do.stride(0), do.stride(1), delta.stride(0), TT,
        HEAD_V=Vd, BV=BV, BLOCK_T=BLOCK_T)
    common = dict(HEAD_K=K, HEAD_V=Vd, BK=BK, BV=BV, HAS_WINDOW=window is not None,
                  DOT_PREC=U.dot_precision(q.dtype))
    args = (scale * U.LOG2E, scale, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0),
            v.stride(1), do.stride(0), do.stride(1), lse.stride(0))
    cfg = U.bwd_config(BK, BV, q.dtype)
    num_n = cdiv(max_len, cfg["BLOCK_N"])
    _bwd_dkdv_kernel[(N * H, num_n)](
        q, k, v, do, lse, delta, dk, dv, bounds, *args, num_n, H, window or 0, sink_tokens,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"], **common)
    cfg = U.dq_config(BK, BV, q.dtype)
    num_m = cdiv(max_len, cfg["BLOCK_M"])
    _bwd_dq_kernel[(N * H, num_m)](
        q, k, v, do, lse, delta, dq, bounds, *args, num_m, H, window or 0, sink_tokens,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"], **common)
    return dq, dk, dv


class FlashAttention(torch.autograd.Function):
    """Autograd wrapper over flattened inputs q, k [TT, H, K], v [TT, H, V] and int64 bounds [N+1]."""

    @staticmethod
    def forward(ctx, q, k, v, bounds, max_len, scale, window, sink_tokens):
        dtype = q.dtype
        q, k, v = interpreter_upcast(q, k, v)
        o, lse = _forward(q, k, v, bounds, max_len, scale, window, sink_tokens)
        ctx.save_for_backward(q, k, v, o, lse, bounds)
        ctx.cfg = (max_len, scale, window, sink_tokens)
        return o.to(dtype)

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, bounds = ctx.saved_tensors
        dtype = do.dtype
        do = interpreter_upcast(do)[0].to(q.dtype).contiguous()
        dq, dk, dv = (g.to(dtype) for g in _backward(do, q, k, v, o, lse, bounds, *ctx.cfg))
        need = ctx.needs_input_grad
        return (dq if need[0] else None, dk if need[1] else None, dv if need[2] else None,
                None, None, None, None, None)


def _prepare(op, q, k, v, scale, window, sink_tokens, cu_seqlens):
    U.check_common(op, q, k, v)
    for name, t, d in (("q", q, "K"), ("k", k, "K"), ("v", v, "V")):
        U.check_rank(op, name, t, (4,), f"[B, T, H, {d}]")
    B, T, H, K = q.shape
    if tuple(k.shape) != (B, T, H, K):
        raise ValueError(f"{op}: k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}")
    if tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(f"{op}: v must be [B, T, H, V] with B, T, H = {(B, T, H)}, "
                         f"got {tuple(v.shape)}")
    Vd = v.shape[-1]
    U.check_heads(op, K, Vd)
    scale = U.check_options(op, scale, window, sink_tokens, K)
    check_cu_seqlens(op, cu_seqlens, B, T)
    if cu_seqlens is None:
        max_len = T
    else:
        c = cu_seqlens.tolist()
        max_len = max((b - a for a, b in zip(c, c[1:])), default=0)
    U.check_offsets(op, max_len, H * K, H * Vd)
    if H * T * B > U.INT32_MAX:
        raise ValueError(f"{op}: H·B·T = {H * B * T} exceeds the int32 range of the lse buffer")
    if cdiv(max_len, 16) > U.GRID_MAX_YZ:
        raise ValueError(f"{op}: sequences of {max_len} tokens exceed the launch grid; split them")
    if T == 0:  # seq_bounds cannot step by 0
        bounds = torch.zeros(B + 1 if cu_seqlens is None else cu_seqlens.numel(), dtype=torch.int64,
                             device=q.device)
    else:
        bounds = seq_bounds(cu_seqlens, B, T, q.device)
    return scale, max_len, bounds, (B, T, H, K, Vd)


def flash_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None,
                    window: int | None = None, sink_tokens: int = 0,
                    cu_seqlens: Tensor | None = None) -> Tensor:
    """Causal softmax attention, tiled (FlashAttention-2), differentiable in q, k, v.

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V]; one dtype among float32 / float16 / bfloat16, on CUDA
            (or the CPU under TRITON_INTERPRET=1). 1 <= K, V <= 256, K may differ from V.
        scale: score scale, K ** -0.5 when None.
        window: a query sees the last `window` keys, itself included (None: all earlier keys).
        sink_tokens: the first positions of each sequence stay visible to every later query.
        cu_seqlens: int [N + 1] offsets of N sequences packed along T (B must be 1); positions,
            windows and sinks are relative to each sequence's start.
    Returns:
        o [B, T, H, V] in the input dtype (fp32 accumulation).
    """
    op = "flash_attention"
    scale, max_len, bounds, (B, T, H, K, Vd) = _prepare(op, q, k, v, scale, window, sink_tokens,
                                                        cu_seqlens)
    flat = lambda t: t.reshape(B * T, H, t.shape[-1]).contiguous()  # noqa: E731
    o = apply(FlashAttention, flat(q), flat(k), flat(v), bounds, max_len, scale, window, sink_tokens)
    return o.reshape(B, T, H, Vd)
