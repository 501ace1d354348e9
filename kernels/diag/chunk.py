"""Chunked training kernels for scalar (or no) decay per head, forward and backward.

Linear attention, RetNet, Lightning, Mamba-2 and normalised attention run here. With G the chunk-local
cumulative log decay and S_c the state entering chunk c (fla's orientation, S ∈ R^{K×V}):

    forward   S_{c+1} = e^{G_L} S_c + (K ⊙ e^{G_L − G})ᵀ V                       (_state_kernel)
              O_c     = (Q ⊙ e^{G}) S_c + (Q Kᵀ ⊙ D) V,   D_ij = e^{G_i − G_j}, i ≥ j  (_output_kernel)
    backward  dS_c    = e^{G_L} dS_{c+1} + (Q ⊙ e^{G})ᵀ dO_c,   dS_N = dS_T         (_dstate_kernel)
              dQ, dK, dV of each chunk from S_c, dS_{c+1} and the chunk alone          (_grad_kernel)

The two state kernels are the only sequential parts (one program per head and state tile walks the
chunks); the others run every chunk at once. Every exponent is ≤ 0, so nothing overflows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._common import next_pow2
from .recurrent import _empty, _segment_reverse_cumsum

BT = 64  # chunk length


@triton.jit
def _decays(g, t_rows, m_t, H: tl.constexpr, i_h, DECAY: tl.constexpr):
    """Chunk-local cumulative log decay G [BT] and its total G_L (0 without decay)."""
    if DECAY == 1:
        b_g = tl.load(g + t_rows * H + i_h, mask=m_t, other=0.0).to(tl.float32)
    else:
        b_g = tl.zeros_like(t_rows).to(tl.float32)
    b_G = tl.cumsum(b_g, axis=0)
    return b_G, tl.sum(b_g, axis=0)


@triton.jit
def _state_kernel(k, v, g, h0, h, ht, offsets, chunk_offsets, MAXC,
                  H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                  BV: tl.constexpr, DECAY: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
                  PREC: tl.constexpr):
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(offsets + i_n).to(tl.int64)
    eos = tl.load(offsets + i_n + 1).to(tl.int64)
    c0 = tl.load(chunk_offsets + i_n).to(tl.int64)
    nc = tl.load(chunk_offsets + i_n + 1).to(tl.int64) - c0
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_state = o_k[:, None] * V + o_v[None, :]
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        b_h += tl.load(h0 + i_nh.to(tl.int64) * K * V + p_state, mask=m_kv, other=0.0).to(tl.float32)
    # chunks past a short sequence's end are masked no-ops (loop bounds must be plain ints)
    for c in range(0, MAXC):
        ok = c < nc
        tl.store(h + ((c0 + c) * H + i_h) * K * V + p_state, b_h, mask=m_kv & ok)
        t_rows = bos + c * BT + tl.arange(0, BT)
        m_t = (t_rows < eos) & ok
        b_k = tl.load(k + (t_rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :],
                      other=0.0).to(tl.float32)
        b_v = tl.load(v + (t_rows[:, None] * H + i_h) * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :],
                      other=0.0)
        b_G, b_GL = _decays(g, t_rows, m_t, H, i_h, DECAY)
        b_kd = (b_k * tl.exp(b_GL - b_G)[:, None]).to(b_v.dtype)
        b_h = b_h * tl.exp(b_GL) + tl.dot(tl.trans(b_kd), b_v, input_precision=PREC)
    if STORE_HT:
        tl.store(ht + i_nh.to(tl.int64) * K * V + p_state, b_h, mask=m_kv)


@triton.jit
def _output_kernel(q, k, v, g, h, o, offsets, chunk_indices,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr, DECAY: tl.constexpr, PREC: tl.constexpr):
    """O of one chunk and value block; the key dim is walked in blocks of BK."""
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n = tl.load(chunk_indices + i_c * 2).to(tl.int64)
    c = tl.load(chunk_indices + i_c * 2 + 1).to(tl.int64)
    bos = tl.load(offsets + i_n).to(tl.int64)
    eos = tl.load(offsets + i_n + 1).to(tl.int64)
    t_rows = bos + c * BT + tl.arange(0, BT)
    m_t = t_rows < eos
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    b_G, b_GL = _decays(g, t_rows, m_t, H, i_h, DECAY)
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    p_h = h + (i_c.to(tl.int64) * H + i_h) * K * V
    for kb in range(0, tl.cdiv(K, BK)):
        o_k = kb * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        b_q = tl.load(q + (t_rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.0)
        b_k = tl.load(k + (t_rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.0)
        b_h = tl.load(p_h + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.0)
        b_o += tl.dot(b_q, b_h.to(b_q.dtype), input_precision=PREC)
        b_A += tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
    causal = tl.arange(0, BT)[:, None] >= tl.arange(0, BT)[None, :]
    b_D = tl.exp(tl.where(causal, b_G[:, None] - b_G[None, :], float("-inf")))
    b_v = tl.load(v + (t_rows[:, None] * H + i_h) * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :],
                  other=0.0)
    b_o = b_o * tl.exp(b_G)[:, None] + tl.dot((b_A * b_D).to(b_v.dtype), b_v, input_precision=PREC)
    tl.store(o + (t_rows[:, None] * H + i_h) * V + o_v[None, :], b_o.to(o.dtype.element_ty),
             mask=m_t[:, None] & m_v[None, :])


@triton.jit
def _dstate_kernel(q, do, g, dht, dh, dh0, offsets, chunk_offsets, MAXC,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr, DECAY: tl.constexpr, HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
                   PREC: tl.constexpr):
    """dh[c] = gradient of the state leaving chunk c; walks the chunks backwards."""
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(offsets + i_n).to(tl.int64)
    eos = tl.load(offsets + i_n + 1).to(tl.int64)
    c0 = tl.load(chunk_offsets + i_n).to(tl.int64)
    nc = tl.load(chunk_offsets + i_n + 1).to(tl.int64) - c0
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_state = o_k[:, None] * V + o_v[None, :]
    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        b_dh += tl.load(dht + i_nh.to(tl.int64) * K * V + p_state, mask=m_kv, other=0.0).to(tl.float32)
    for i in range(0, MAXC):
        c = nc - 1 - i
        ok = c >= 0
        tl.store(dh + ((c0 + c) * H + i_h) * K * V + p_state, b_dh, mask=m_kv & ok)
        t_rows = bos + c * BT + tl.arange(0, BT)
        m_t = (t_rows < eos) & (t_rows >= bos) & ok
        b_q = tl.load(q + (t_rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :],
                      other=0.0)
        b_do = tl.load(do + (t_rows[:, None] * H + i_h) * V + o_v[None, :],
                       mask=m_t[:, None] & m_v[None, :], other=0.0)
        b_G, b_GL = _decays(g, t_rows, m_t, H, i_h, DECAY)
        b_qd = (b_q.to(tl.float32) * tl.exp(b_G)[:, None]).to(b_do.dtype)
        b_dh = b_dh * tl.exp(b_GL) + tl.dot(tl.trans(b_qd), b_do, input_precision=PREC)
    if STORE_DH0:
        tl.store(dh0 + i_nh.to(tl.int64) * K * V + p_state, b_dh, mask=m_kv)


@triton.jit
def _dqdk_kernel(q, k, v, g, h, do, dh, dq, dk, offsets, chunk_indices,
                 H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                 BV: tl.constexpr, DECAY: tl.constexpr, PREC: tl.constexpr):
    """dQ and dK of one chunk and key block; the value dim is walked in blocks of BV."""
    i_k, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n = tl.load(chunk_indices + i_c * 2).to(tl.int64)
    c = tl.load(chunk_indices + i_c * 2 + 1).to(tl.int64)
    bos = tl.load(offsets + i_n).to(tl.int64)
    eos = tl.load(offsets + i_n + 1).to(tl.int64)
    t_rows = bos + c * BT + tl.arange(0, BT)
    m_t = t_rows < eos
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    p_tk = (t_rows[:, None] * H + i_h) * K + o_k[None, :]
    p_state = (i_c.to(tl.int64) * H + i_h) * K * V
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)    # ∂L/∂(q_i·k_j), before the decay mask
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    for vb in range(0, tl.cdiv(V, BV)):
        o_v = vb * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        p_tv = (t_rows[:, None] * H + i_h) * V + o_v[None, :]
        b_v = tl.load(v + p_tv, mask=m_tv, other=0.0)
        b_do = tl.load(do + p_tv, mask=m_tv, other=0.0)
        m_kv = m_k[:, None] & m_v[None, :]
        b_h = tl.load(h + p_state + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0).to(b_v.dtype)
        b_dh = tl.load(dh + p_state + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0).to(b_v.dtype)
        b_dA += tl.dot(b_do, tl.trans(b_v), input_precision=PREC)
        b_dq += tl.dot(b_do, tl.trans(b_h), input_precision=PREC)
        b_dk += tl.dot(b_v, tl.trans(b_dh), input_precision=PREC)
    b_G, b_GL = _decays(g, t_rows, m_t, H, i_h, DECAY)
    causal = tl.arange(0, BT)[:, None] >= tl.arange(0, BT)[None, :]
    b_dA = b_dA * tl.exp(tl.where(causal, b_G[:, None] - b_G[None, :], float("-inf")))
    b_q = tl.load(q + p_tk, mask=m_tk, other=0.0)
    b_k = tl.load(k + p_tk, mask=m_tk, other=0.0)
    b_dq = b_dq * tl.exp(b_G)[:, None] + tl.dot(b_dA.to(b_k.dtype), b_k, input_precision=PREC)
    b_dk = b_dk * tl.exp(b_GL - b_G)[:, None] + tl.dot(tl.trans(b_dA).to(b_q.dtype), b_q, input_precision=PREC)
    tl.store(dq + p_tk, b_dq, mask=m_tk)
    tl.store(dk + p_tk, b_dk, mask=m_tk)


@triton.jit
def _dv_kernel(q, k, g, do, dh, dv, offsets, chunk_indices,
               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
               BV: tl.constexpr, DECAY: tl.constexpr, PREC: tl.constexpr):
    """dV of one chunk and value block; the key dim is walked in blocks of BK."""
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n = tl.load(chunk_indices + i_c * 2).to(tl.int64)
    c = tl.load(chunk_indices + i_c * 2 + 1).to(tl.int64)
    bos = tl.load(offsets + i_n).to(tl.int64)
    eos = tl.load(offsets + i_n + 1).to(tl.int64)
    t_rows = bos + c * BT + tl.arange(0, BT)
    m_t = t_rows < eos
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    m_tv = m_t[:, None] & m_v[None, :]
    p_tv = (t_rows[:, None] * H + i_h) * V + o_v[None, :]
    p_state = (i_c.to(tl.int64) * H + i_h) * K * V
    b_G, b_GL = _decays(g, t_rows, m_t, H, i_h, DECAY)
    e_L = tl.exp(b_GL - b_G)[:, None]
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    b_dv = tl.zeros([BT, BV], dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BK)):
        o_k = kb * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        b_q = tl.load(q + (t_rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.0)
        b_k = tl.load(k + (t_rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.0)
        b_dh = tl.load(dh + p_state + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :],
                       other=0.0).to(b_k.dtype)
        b_A += tl.dot(b_k, tl.trans(b_q), input_precision=PREC)            # Aᵀ: rows j, columns i
        b_dv += tl.dot((b_k.to(tl.float32) * e_L).to(b_k.dtype), b_dh, input_precision=PREC)
    anti = tl.arange(0, BT)[:, None] <= tl.arange(0, BT)[None, :]
    b_A = b_A * tl.exp(tl.where(anti, b_G[None, :] - b_G[:, None], float("-inf")))
    b_do = tl.load(do + p_tv, mask=m_tv, other=0.0)
    b_dv += tl.dot(b_A.to(b_do.dtype), b_do, input_precision=PREC)
    tl.store(dv + p_tv, b_dv, mask=m_tv)


def chunk_layout(offsets: Tensor, bt: int = BT) -> tuple[Tensor, Tensor, int]:
    """chunk_offsets [N+1] (first chunk of each sequence) and chunk_indices [NC, 2] (seq, chunk)."""
    lengths = offsets[1:] - offsets[:-1]
    nchunks = (lengths + bt - 1) // bt
    chunk_offsets = torch.cat([nchunks.new_zeros(1), nchunks.cumsum(0)])
    seq = torch.repeat_interleave(torch.arange(len(nchunks), device=offsets.device), nchunks)
    local = torch.arange(int(chunk_offsets[-1]), device=offsets.device) - chunk_offsets[seq]
    indices = torch.stack([seq, local], dim=1).contiguous()
    return chunk_offsets.contiguous(), indices, int(nchunks.max()) if len(nchunks) else 0


def _prec(dtype: torch.dtype) -> str:
    # fp32 inputs get exact fp32 products (tf32 would cost ~1e-3 relative error)
    return "ieee" if dtype == torch.float32 else "tf32"


def _tiles(K: int, V: int) -> tuple[int, int]:
    return max(16, next_pow2(K)), max(16, next_pow2(V))


class ChunkScalarDecay(torch.autograd.Function):
    """Autograd wrapper; tensors flattened to [T_total, H, ·], states [N, H, K, V] in fp32."""

    @staticmethod
    def forward(ctx, q, k, v, g, h0, offsets, store_ht: bool):
        Tt, H, K = q.shape
        V = v.shape[-1]
        N = offsets.numel() - 1
        BK, BV = _tiles(K, V)
        chunk_offsets, chunk_indices, maxc = chunk_layout(offsets)
        NC = chunk_indices.shape[0]
        decay, prec = int(g is not None), _prec(q.dtype)
        h = _empty(NC, H, K, V, dtype=torch.float32, device=q.device)
        ht = _empty(N, H, K, V, dtype=torch.float32, device=q.device) if store_ht else None
        BVs = min(BV, 64)
        _state_kernel[(triton.cdiv(K, BK), triton.cdiv(V, BVs), N * H)](
            k, v, g, h0, h, ht, offsets, chunk_offsets, maxc, H=H, K=K, V=V, BT=BT, BK=BK, BV=BVs,
            DECAY=decay, HAS_H0=h0 is not None, STORE_HT=store_ht, PREC=prec)
        o = _empty(Tt, H, V, dtype=v.dtype, device=q.device)
        _output_kernel[(triton.cdiv(V, BVs), NC, H)](
            q, k, v, g, h, o, offsets, chunk_indices, H=H, K=K, V=V, BT=BT, BK=min(BK, 64), BV=BVs,
            DECAY=decay, PREC=prec, num_warps=4, num_stages=2)
        ctx.save_for_backward(q, k, v, g, h0, offsets, h, ht, chunk_offsets, chunk_indices)
        ctx.maxc = maxc
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h0, offsets, h, ht, chunk_offsets, chunk_indices = ctx.saved_tensors
        Tt, H, K = q.shape
        V = v.shape[-1]
        N = offsets.numel() - 1
        NC = chunk_indices.shape[0]
        BK, BV = _tiles(K, V)
        BVs = min(BV, 64)
        decay, prec = int(g is not None), _prec(q.dtype)
        do = do.contiguous()
        dh = _empty(NC, H, K, V, dtype=torch.float32, device=q.device)
        dh0 = _empty(N, H, K, V, dtype=torch.float32, device=q.device) if h0 is not None else None
        _dstate_kernel[(triton.cdiv(K, BK), triton.cdiv(V, BVs), N * H)](
            q, do, g, dht.contiguous() if dht is not None else None, dh, dh0, offsets, chunk_offsets,
            ctx.maxc, H=H, K=K, V=V, BT=BT, BK=BK, BV=BVs, DECAY=decay, HAS_DHT=dht is not None,
            STORE_DH0=h0 is not None, PREC=prec)
        dq = _empty(Tt, H, K, dtype=torch.float32, device=q.device)
        dk = _empty(Tt, H, K, dtype=torch.float32, device=q.device)
        dv = _empty(Tt, H, V, dtype=torch.float32, device=q.device)
        BKs = min(BK, 64)
        _dqdk_kernel[(triton.cdiv(K, BKs), NC, H)](
            q, k, v, g, h, do, dh, dq, dk, offsets, chunk_indices, H=H, K=K, V=V, BT=BT, BK=BKs, BV=BVs,
            DECAY=decay, PREC=prec, num_warps=4, num_stages=2)
        _dv_kernel[(triton.cdiv(V, BVs), NC, H)](
            q, k, g, do, dh, dv, offsets, chunk_indices, H=H, K=K, V=V, BT=BT, BK=BKs, BV=BVs,
            DECAY=decay, PREC=prec, num_warps=4, num_stages=2)
        dg = None
        if g is not None:
            # the reverse cumsum adds T terms that largely cancel: do it in float64
            dg = _segment_reverse_cumsum((q.double() * dq - k.double() * dk).sum(-1), offsets)
            if dht is not None and ht is not None:
                fin = (dht.double() * ht).sum((-1, -2))            # ⟨dS_T, S_T⟩ per sequence, head
                has = offsets[1:] > offsets[:-1]
                add = torch.zeros_like(dg)
                add.index_add_(0, (offsets[1:] - 1)[has], fin[has])
                dg = dg + _segment_reverse_cumsum(add, offsets)
            dg = dg.to(g.dtype)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dg, dh0, None, None
