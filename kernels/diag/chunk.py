"""Chunked training kernels for scalar (or no) decay per head, forward and backward.

Linear attention, RetNet, Lightning, Mamba-2 and normalised attention run here. With G the chunk-local
cumulative log decay and S_c the state entering chunk c (fla's orientation, S ∈ R^{K×V}):

    forward   S_{c+1} = e^{G_L} S_c + (K ⊙ e^{G_L − G})ᵀ V                       (_state_kernel)
              O_c     = (Q ⊙ e^{G}) S_c + (Q Kᵀ ⊙ D) V,   D_ij = e^{G_i − G_j}, i ≥ j  (_output_kernel)
    backward  dS_c    = e^{G_L} dS_{c+1} + (Q ⊙ e^{G})ᵀ dO_c,   dS_N = dS_T         (_dstate_kernel)
              dQ, dK, dV of each chunk from S_c, dS_{c+1} and the chunk alone          (_grad_kernel)

The two state kernels are the only sequential parts (one program per head and state tile walks the
chunks); the others run every chunk at once. Every exponent is ≤ 0, so nothing overflows.
Where it is faster (FUSED_FORWARD), the forward is one pass instead (_fused_fwd_kernel, over
segments of the sequences where they are too few: _segment_pass_kernel joins them).

Numerics. Each exponent is a sum of the g between its two rows (G from the chunk start, G_L − G as a
reverse sum, G_i − G_j by a cumulative sum down each column of the pair matrix), never a difference
of prefix sums, whose rounding (|G| · 6e-8) is all that is left of a strong decay's pair terms —
for fp32 inputs; 16-bit ones, whose own rounding is far coarser, take G_i − G_j (FAST_PAIRS). The
decay gradient is summed inside _dqdk_kernel from the pairs that straddle each step,

    dg_t = e^{G_L} ⟨S_c, dS_{c+1}⟩ + Σ_{i≥t} q_i·dq_i^inter + Σ_{j<t} k_j·dk_j^inter
           + Σ_{i≥t} (q_i·dq_i^strict − k_i·dk_i^strict),

(inter: through the chunk's incoming and outgoing states; strict: intra-chunk pairs i > j). The
diagonal pairs q_i·k_i (do_i·v_i), ~e^{20} times dg under a decay of −20 per step, never enter it,
unlike the usual Σ_{s≥t} (q_s·dq_s − k_s·dk_s).
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._common import (cdiv, chunk_grid, dependent_launch, fp32_products, layout_cache, next_pow2, sm_count,
                       tensor_descriptors)
from .._tl import (batch_place, chain_link, chunk_head, chunk_qkv, chunk_span, load_scaled, log_decay, state_tile,
                   store_chunk, tile_offsets)
from .recurrent import _empty

BT = 64  # chunk length

# Launch settings per kernel (warps, pipelining stages): the fastest of warps {2, 4, 8} x stages
# {1, 2, 3} for each kernel at bf16, K = V = 128, T = 4096 on the H200 (`python -m kernels.sweep launch`,
# 2026-12-01; dqdk 0.61 ms here vs 1.07 with the 8 warps ptxas's spill report had suggested).
LAUNCH = {"fused_fwd": dict(num_warps=4, num_stages=2),   # 0.485 ms at T = 4096 (8 warps: 0.66)
          # the one pass of a forward without autograd (no states kept), apart from the one before
          # a backward, for settings of its own
          "fused_fwd_only": dict(num_warps=4, num_stages=2),
          "state": dict(num_warps=4, num_stages=2), "output": dict(num_warps=4, num_stages=3),
          # the segments' states from zero (the state kernel of the segmented one pass), apart from the
          # two-pass one, capped at 128 registers a thread (more programs an SM): H200, bf16, H = 16,
          # K = V = 128 (`python -m kernels.sweep ab --ops scalar --T T --set
          # "kernels.diag.chunk.LAUNCH[segment_state]={'num_warps': 4, 'num_stages': 2, 'maxnreg': 128}"`,
          # three alternating rounds, 2026-12-02): Mamba-2 forward 16K 0.422 → 0.401 ms, 32K 0.429 →
          # 0.424 (rounds 0.409-0.431), 8K 0.352 → 0.352; fwd+bwd 1.812 → 1.793, 2.068 → 2.056, 1.609 →
          # 1.612. A cap of 96: 32K unchanged (0.428). The one pass under a cap lost
          # (experiments_2026-12-02f.md §6).
          "segment_state": dict(num_warps=4, num_stages=2, maxnreg=128),
          # the same with a whole state a program (SEGMENT_WHOLE_STATE)
          "segment_state_whole": dict(num_warps=8, num_stages=2, maxnreg=128),
          "dstate": dict(num_warps=4, num_stages=2), "dqdk": dict(num_warps=4, num_stages=3),
          "dv": dict(num_warps=4, num_stages=3)}
# Elsewhere (fp32 operands, or head dims over 128: larger tiles) the settings they were verified with,
# which stay within shared memory up to K = V = 256 (`python -m kernels.compile_check`; fp32's exact
# "ieee" products spill, hence tf32x3 by default: kernels._common.FP32_PRODUCTS).
SAFE = {"fused_fwd": dict(num_warps=8), "fused_fwd_only": dict(num_warps=8), "state": dict(num_warps=4),
        "segment_state": dict(num_warps=4), "segment_state_whole": dict(num_warps=8),
        "output": dict(num_warps=4, num_stages=2),
        "dstate": dict(num_warps=4),
        "dqdk": dict(num_warps=8, num_stages=2), "dv": dict(num_warps=4, num_stages=2)}


def pick_launch(tuned: dict, safe: dict, name: str, dtype: torch.dtype, K: int, V: int) -> dict:
    """The tuned settings for 16-bit inputs with head dims up to 128 (where they were measured), else
    the safe ones."""
    return tuned[name] if dtype != torch.float32 and max(K, V) <= 128 else safe[name]


def _launch(name: str, dtype: torch.dtype, K: int, V: int) -> dict:
    return pick_launch(LAUNCH, SAFE, name, dtype, K, V)


@triton.jit
def _decays(g, t_rows, m_t, eos, H: tl.constexpr, i_h, BT: tl.constexpr, DECAY: tl.constexpr):
    """A chunk's log decays (all 0 without decay): g, G_t = Σ_{s≤t} g_s, Gs_t = Σ_{s>t} g_s and G_L.

    Gs is a reverse cumulative sum of the next rows' g, not G_L − G_t.
    """
    if DECAY == 1:
        b_g = log_decay(tl.load(g + t_rows * H + i_h, mask=m_t, other=0.0))
        m_n = m_t & (t_rows + 1 < eos) & (tl.arange(0, BT) + 1 < BT)
        b_gn = log_decay(tl.load(g + (t_rows + 1) * H + i_h, mask=m_n, other=0.0))
    else:
        b_g = tl.zeros([BT], dtype=tl.float32)
        b_gn = b_g
    return b_g, tl.cumsum(b_g, axis=0), tl.cumsum(b_gn, axis=0, reverse=True), tl.sum(b_g, axis=0)


@triton.jit
def _pair_decays(b_g, b_G, BT: tl.constexpr, DECAY: tl.constexpr, STRICT: tl.constexpr, TRANS: tl.constexpr,
                 FAST: tl.constexpr):
    """D_ij = e^{Σ_{j<s≤i} g_s} for i ≥ j (i > j if STRICT), 0 elsewhere; Dᵀ (rows j, columns i) if TRANS.

    Exact: the exponent is a cumulative sum of g down each column, exact to rounding however large
    the chunk's total decay (G_i − G_j from prefix sums is off by |G| · 6e-8). FAST (16-bit inputs):
    G_i − G_j all the same — its relative error, ≤ 1e-4 for a chunk decaying by 1000 nats, is far
    below the inputs' 4e-3 — without the column scan, which was a fifth of the one-pass forward.
    """
    o = tl.arange(0, BT)
    if TRANS:
        later = o[None, :] > o[:, None]
        keep = o[None, :] >= o[:, None]
        if STRICT:
            keep = later
    else:
        later = o[:, None] > o[None, :]
        keep = o[:, None] >= o[None, :]
        if STRICT:
            keep = later
    if DECAY == 1:
        if FAST:
            if TRANS:
                b_E = b_G[None, :] - b_G[:, None]
            else:
                b_E = b_G[:, None] - b_G[None, :]
        elif TRANS:
            b_E = tl.cumsum(tl.where(later, b_g[None, :], 0.0), axis=1)
        else:
            b_E = tl.cumsum(tl.where(later, b_g[:, None], 0.0), axis=0)
        b_D = tl.exp(tl.where(keep, b_E, float("-inf")))
    else:
        b_D = tl.where(keep, 1.0, 0.0)
    return b_D


@triton.jit
def _decayed_update(b_h, b_k, b_v, b_Gs, b_GL, PREC: tl.constexpr, DECAY_V: tl.constexpr):
    """S e^{G_L} + (K ⊙ e^{G_L − G})ᵀ V for a chunk's [BT, BK] keys and [BT, BV] values; DECAY_V: as
    Kᵀ (e^{G_L − G} ⊙ V), the value tile scaled and cast instead of the keys."""
    if DECAY_V:
        b_vd = (b_v.to(tl.float32) * tl.exp(b_Gs)[:, None]).to(b_v.dtype)
        return b_h * tl.exp(b_GL) + tl.dot(tl.trans(b_k.to(b_v.dtype)), b_vd, input_precision=PREC)
    b_kd = (b_k.to(tl.float32) * tl.exp(b_Gs)[:, None]).to(b_v.dtype)
    return b_h * tl.exp(b_GL) + tl.dot(tl.trans(b_kd), b_v, input_precision=PREC)


@triton.jit
def _excl_combine(s1, p1, s2, p2):
    # (inclusive, exclusive) prefix sums in one scan: the exclusive one is never inclusive − x
    return s1 + s2, s1 + p2


@triton.jit
def _state_kernel(k, v, g, h0, h, ht, offsets, chunk_offsets, MAXC,
                  H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                  BV: tl.constexpr, DECAY: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
                  PREC: tl.constexpr, STORE_H: tl.constexpr = True, logw=None, STORE_LOGW: tl.constexpr = False,
                  NSEG=1, SKIP_LAST: tl.constexpr = False, NSKIP=1, DECAY_V: tl.constexpr = False,
                  PDL: tl.constexpr = False):
    """The state leaving each chunk (h) or the sequence (ht); STORE_LOGW: also the sequence's total log
    decay (the sum of its chunks' G_L, one value per sequence-head) into logw. SKIP_LAST: the
    sequences are segments (or pieces of segments), NSEG to a batch sequence, and the programs cover
    all but each one's last NSKIP. DECAY_V: see _decayed_update. PDL: first of a chain of dependent
    launches (chain_link)."""
    chain_link(PDL)
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    if SKIP_LAST:
        i_n += i_n // (NSEG - NSKIP) * NSKIP
        i_nh = i_n * H + i_h
    bos, eos, c0, nc = chunk_span(offsets, chunk_offsets, i_n)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v, m_kv, p_state, b_h = state_tile(h0, i_nh, o_k, o_v, K, V, BK, BV, HAS_H0)
    b_lw = 0.0
    # chunks past a short sequence's end are masked no-ops (loop bounds must be plain ints)
    for c in range(0, MAXC):
        ok = c < nc
        if STORE_H:
            tl.store(h + ((c0 + c) * H + i_h) * K * V + p_state, b_h, mask=m_kv & ok)
        t_rows = bos + c * BT + tl.arange(0, BT)
        m_t = (t_rows < eos) & ok
        b_k = tl.load(k + (t_rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :],
                      other=0.0)
        b_v = tl.load(v + (t_rows[:, None] * H + i_h) * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :],
                      other=0.0)
        _, _, b_Gs, b_GL = _decays(g, t_rows, m_t, eos, H, i_h, BT, DECAY)
        b_h = _decayed_update(b_h, b_k, b_v, b_Gs, b_GL, PREC, DECAY_V)
        if STORE_LOGW:
            b_lw += b_GL
    if STORE_HT:
        tl.store(ht + i_nh.to(tl.int64) * K * V + p_state, b_h, mask=m_kv)
    if STORE_LOGW:
        tl.store(logw + i_nh, b_lw, mask=(i_k == 0) & (i_v == 0))


@triton.jit
def _output_kernel(q, k, v, g, h, o, offsets, chunk_indices, scale,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr, DECAY: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr):
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
    b_g, b_G, _, _ = _decays(g, t_rows, m_t, eos, H, i_h, BT, DECAY)
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
    b_D = _pair_decays(b_g, b_G, BT, DECAY, False, False, FAST)
    b_v = tl.load(v + (t_rows[:, None] * H + i_h) * V + o_v[None, :], mask=m_t[:, None] & m_v[None, :],
                  other=0.0)
    b_o = b_o * tl.exp(b_G)[:, None] + tl.dot((b_A * b_D).to(b_v.dtype), b_v, input_precision=PREC)
    tl.store(o + (t_rows[:, None] * H + i_h) * V + o_v[None, :], (b_o * scale).to(o.dtype.element_ty),
             mask=m_t[:, None] & m_v[None, :])


@triton.jit
def _fused_fwd_kernel(q, k, v, g, h0, h, o, ht, offsets, chunk_offsets, MAXC, scale,
                      H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                      BV: tl.constexpr, DECAY: tl.constexpr, HAS_H0: tl.constexpr, STORE_H: tl.constexpr,
                      STORE_HT: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr,
                      DECAY_V: tl.constexpr = False, TMA: tl.constexpr = False, q_d=None, k_d=None, v_d=None,
                      o_d=None, T_seq=1, PDL: tl.constexpr = False):
    """The forward in one pass: a program per (sequence, head, value tile) walks the chunks with the
    state in registers, O_c = (Q ⊙ e^G) S_c + (Q Kᵀ ⊙ D) V, then S_{c+1} as in _state_kernel.

    The per-chunk states are written only with STORE_H (for the backward): without it the kernel
    moves q, k, v and o alone. BK covers all of K (one tile). DECAY_V: see _decayed_update. TMA: q, k,
    v and o move through the tensor descriptors q_d … o_d of an equal-length batch [B, T_seq, H, ·]
    (the copy engine fills rows past a sequence's end with zeros and writes none there; the
    program's rows may be a segment of a sequence; FUSED_TMA). PDL: last of a chain of dependent
    launches, after the scan that makes h0 (chain_link)."""
    chain_link(PDL)
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos, c0, nc = chunk_span(offsets, chunk_offsets, i_n)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v, m_kv, p_state, b_h = state_tile(h0, i_nh, o_k, o_v, K, V, BK, BV, HAS_H0)
    o_t = tl.arange(0, BT)
    i_b, t0 = batch_place(bos, T_seq)
    o_tk, o_tv = tile_offsets(H, K, V, BT, o_k, o_v)   # (unused with TMA)
    for c in range(0, MAXC):
        ok = c < nc
        if STORE_H:
            tl.store(h + ((c0 + c) * H + i_h) * K * V + p_state, b_h, mask=m_kv & ok)
        c_start = bos + c * BT
        t_rows = c_start + o_t
        m_t = (t_rows < eos) & ok
        b_q, b_k, b_v = chunk_qkv(q, k, v, q_d, k_d, v_d, TMA, i_b, t0, c, c_start, i_h, i_v, m_t, m_k, m_v, o_tk,
                                  o_tv, H, K, V, BT, BK, BV)
        b_g, b_G, b_Gs, b_GL = _decays(g, t_rows, m_t, eos, H, i_h, BT, DECAY)
        # the state enters the product in the input dtype, as the stored states of the two-pass path
        b_o = tl.dot(b_q, b_h.to(b_q.dtype), input_precision=PREC) * tl.exp(b_G)[:, None]
        b_A = tl.dot(b_q, tl.trans(b_k), input_precision=PREC) * _pair_decays(b_g, b_G, BT, DECAY, False, False,
                                                                                 FAST)
        b_o += tl.dot(b_A.to(b_v.dtype), b_v, input_precision=PREC)
        store_chunk(o, o_d, (b_o * scale).to(o.dtype.element_ty), TMA, i_b, t0, c, c_start, i_h, i_v, m_t, m_v,
                    o_tv, H, V, BT, BV)
        b_h = _decayed_update(b_h, b_k, b_v, b_Gs, b_GL, PREC, DECAY_V)
    if STORE_HT:
        tl.store(ht + i_nh.to(tl.int64) * K * V + p_state, b_h, mask=m_kv)


@triton.jit
def _segment_pass_kernel(dS, logw, h0, S_in, ht, NSEG, H: tl.constexpr, KV: tl.constexpr, BKV: tl.constexpr,
                         HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, V: tl.constexpr = 0, EVERY=1,
                         U: tl.constexpr = 1, PDL: tl.constexpr = False):
    """The states entering the segments of one sequence: S_{j+1} = e^{w_j} S_j + ΔS_j over its NSEG
    segments, ΔS_j being segment j's own state from zero and w_j its total log decay: a scalar per
    segment and head, or with V > 0 one per key row of the [K, V] state (key-wise decays, w [.., K]).
    EVERY > 1: the NSEG are pieces, EVERY to a segment, and S_in holds the states entering the
    segments only (every EVERY-th piece's). U > 1: the loads of U segments at a time, issued together,
    then their steps in order (one wait on memory per U segments instead of one each). PDL: in a chain
    of dependent launches, after the kernel that makes dS (chain_link)."""
    chain_link(PDL)
    i_t, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    o = i_t * BKV + tl.arange(0, BKV)
    m = o < KV
    b_S = tl.zeros([BKV], dtype=tl.float32)
    if HAS_H0:
        b_S += tl.load(h0 + i_nh.to(tl.int64) * KV + o, mask=m, other=0.0).to(tl.float32)
    if U > 1:
        o_u = tl.arange(0, U)
        for j0 in range(0, NSEG, U):
            rows = j0 + o_u
            i_r = (i_n * NSEG + rows).to(tl.int64) * H + i_h
            m2 = (rows < NSEG)[:, None] & m[None, :]
            b_d = tl.load(dS + i_r[:, None] * KV + o[None, :], mask=m2, other=0.0)
            if V == 0:
                b_w = tl.load(logw + i_r, mask=rows < NSEG, other=0.0)[:, None] + tl.zeros([U, BKV], tl.float32)
            else:
                b_w = tl.load(logw + i_r[:, None] * (KV // V) + (o // V)[None, :], mask=m2, other=0.0)
            for u in tl.static_range(U):
                j = j0 + u
                i_o = ((i_n * NSEG + j) // EVERY).to(tl.int64) * H + i_h
                tl.store(S_in + i_o * KV + o, b_S.to(S_in.dtype.element_ty),
                         mask=m & (j % EVERY == 0) & (j < NSEG))
                # row u of the block (a select, so a row never loaded adds nothing, NaN or not)
                pick = (o_u == u)[:, None]
                b_wu = tl.sum(tl.where(pick, b_w, 0.0), axis=0)
                b_du = tl.sum(tl.where(pick, b_d, 0.0), axis=0)
                b_S = tl.where(j < NSEG, b_S * tl.exp(b_wu) + b_du, b_S)
    else:
        for j in range(0, NSEG):
            i_s = (i_n * NSEG + j).to(tl.int64) * H + i_h
            i_o = ((i_n * NSEG + j) // EVERY).to(tl.int64) * H + i_h
            tl.store(S_in + i_o * KV + o, b_S.to(S_in.dtype.element_ty), mask=m & (j % EVERY == 0))
            # (after the last segment b_S is the final state: stored with STORE_HT only, so that segment's
            # own state and decay may be left unmade without one, SEGMENT_SKIP_LAST)
            if V == 0:
                b_w = tl.load(logw + i_s)
            else:
                b_w = tl.load(logw + i_s * (KV // V) + o // V, mask=m, other=0.0)
            b_S = b_S * tl.exp(b_w) + tl.load(dS + i_s * KV + o, mask=m, other=0.0)
    if STORE_HT:
        tl.store(ht + i_nh.to(tl.int64) * KV + o, b_S, mask=m)


@triton.jit
def _dstate_kernel(q, do, g, dht, dh, dh0, offsets, chunk_offsets, MAXC, do_scale,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr, DECAY: tl.constexpr, HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
                   PREC: tl.constexpr, SCALE_DO: tl.constexpr = False):
    """dh[c] = gradient of the state leaving chunk c; walks the chunks backwards. SCALE_DO: dO
    tiles times do_scale as loaded (DO_SCALE_IN_KERNELS); so in _dqdk_kernel and _dv_kernel."""
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos, c0, nc = chunk_span(offsets, chunk_offsets, i_n)
    o_k = i_k * BK + tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v, m_kv, p_state, b_dh = state_tile(dht, i_nh, o_k, o_v, K, V, BK, BV, HAS_DHT)
    for i in range(0, MAXC):
        c = nc - 1 - i
        ok = c >= 0
        tl.store(dh + ((c0 + c) * H + i_h) * K * V + p_state, b_dh, mask=m_kv & ok)
        t_rows = bos + c * BT + tl.arange(0, BT)
        m_t = (t_rows < eos) & (t_rows >= bos) & ok
        b_q = tl.load(q + (t_rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :],
                      other=0.0)
        b_do = load_scaled(do + (t_rows[:, None] * H + i_h) * V + o_v[None, :],
                           m_t[:, None] & m_v[None, :], do_scale, SCALE_DO)
        _, b_G, _, b_GL = _decays(g, t_rows, m_t, eos, H, i_h, BT, DECAY)
        b_qd = (b_q.to(tl.float32) * tl.exp(b_G)[:, None]).to(b_do.dtype)
        b_dh = b_dh * tl.exp(b_GL) + tl.dot(tl.trans(b_qd), b_do, input_precision=PREC)
    if STORE_DH0:
        tl.store(dh0 + i_nh.to(tl.int64) * K * V + p_state, b_dh, mask=m_kv)


@triton.jit
def _dqdk_kernel(q, k, v, g, h, do, dh, dq, dk, dg, offsets, chunk_indices, T, do_scale,
                 H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                 BV: tl.constexpr, DECAY: tl.constexpr, DG: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr,
                 SCALE_DO: tl.constexpr = False, HEADS_INNER: tl.constexpr = False):
    """dQ and dK of one chunk and key block (the value dim walked in blocks of BV) and, with DG, this
    key block's share of the decay gradient (see the module docstring)."""
    i_k = tl.program_id(0)
    i_c, i_h = chunk_head(1, HEADS_INNER)
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
    b_hdh = tl.zeros([BK], dtype=tl.float32)       # Σ_v S_c ⊙ dS_{c+1}
    for vb in range(0, tl.cdiv(V, BV)):
        o_v = vb * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        p_tv = (t_rows[:, None] * H + i_h) * V + o_v[None, :]
        b_v = tl.load(v + p_tv, mask=m_tv, other=0.0)
        b_do = load_scaled(do + p_tv, m_tv, do_scale, SCALE_DO)
        m_kv = m_k[:, None] & m_v[None, :]
        b_h = tl.load(h + p_state + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)
        b_dh = tl.load(dh + p_state + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)
        b_dA += tl.dot(b_do, tl.trans(b_v), input_precision=PREC)
        b_dq += tl.dot(b_do, tl.trans(b_h.to(b_v.dtype)), input_precision=PREC)
        b_dk += tl.dot(b_v, tl.trans(b_dh.to(b_v.dtype)), input_precision=PREC)
        if DG:
            b_hdh += tl.sum(b_h.to(tl.float32) * b_dh.to(tl.float32), axis=1)
    b_g, b_G, b_Gs, b_GL = _decays(g, t_rows, m_t, eos, H, i_h, BT, DECAY)
    o_t = tl.arange(0, BT)
    # the diagonal pairs (do_i·v_i) are added apart from the strictly causal ones: the decay
    # gradient must never see them
    b_dAd = tl.sum(tl.where(o_t[:, None] == o_t[None, :], b_dA, 0.0), axis=1)
    b_dA = b_dA * _pair_decays(b_g, b_G, BT, DECAY, True, False, FAST)
    # dq whole before dk's strict part: one fewer [BT, BK] tile live at a time
    b_q = tl.load(q + p_tk, mask=m_tk, other=0.0)
    b_k = tl.load(k + p_tk, mask=m_tk, other=0.0)
    # through the incoming state, then the strict pairs
    b_dq = tl.dot(b_dA.to(b_k.dtype), b_k, acc=b_dq * tl.exp(b_G)[:, None], input_precision=PREC)
    b_qf, b_kf = b_q.to(tl.float32), b_k.to(tl.float32)
    if DG:
        b_x = tl.sum(b_qf * b_dq, axis=1)
    tl.store(dq + p_tk, b_dq + b_dAd[:, None] * b_kf, mask=m_tk)
    b_dk = b_dk * tl.exp(b_Gs)[:, None]                     # through the outgoing state
    if DG:
        b_y = tl.sum(b_kf * b_dk, axis=1)
    b_dks = tl.dot(tl.trans(b_dA).to(b_q.dtype), b_q, input_precision=PREC)
    tl.store(dk + p_tk, b_dk + b_dks + b_dAd[:, None] * b_qf, mask=m_tk)
    if DG:
        # pairs (i ≥ t > j) inside the chunk as a suffix sum over i (those with both ends ≥ t cancel);
        # keys before t with the outgoing state as an exclusive prefix sum
        b_suf = tl.cumsum(b_x - tl.sum(b_kf * b_dks, axis=1), axis=0, reverse=True)
        _, b_pre = tl.associative_scan((b_y, tl.zeros([BT], dtype=tl.float32)), 0, _excl_combine)
        b_dg = tl.exp(b_GL) * tl.sum(b_hdh, axis=0) + b_suf + b_pre
        tl.store(dg + (i_k * T + t_rows) * H + i_h, b_dg, mask=m_t)


@triton.jit
def _dv_kernel(q, k, g, do, dh, dv, offsets, chunk_indices, do_scale,
               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
               BV: tl.constexpr, DECAY: tl.constexpr, PREC: tl.constexpr, FAST: tl.constexpr,
               SCALE_DO: tl.constexpr = False, HEADS_INNER: tl.constexpr = False):
    """dV of one chunk and value block; the key dim is walked in blocks of BK."""
    i_v = tl.program_id(0)
    i_c, i_h = chunk_head(1, HEADS_INNER)
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
    b_g, b_G, b_Gs, _ = _decays(g, t_rows, m_t, eos, H, i_h, BT, DECAY)
    e_L = tl.exp(b_Gs)[:, None]
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
    b_A = b_A * _pair_decays(b_g, b_G, BT, DECAY, False, True, FAST)
    b_do = load_scaled(do + p_tv, m_tv, do_scale, SCALE_DO)
    b_dv += tl.dot(b_A.to(b_do.dtype), b_do, input_precision=PREC)
    tl.store(dv + p_tv, b_dv, mask=m_tv)


def chunk_layout(offsets: Tensor, bt: int = BT) -> tuple[Tensor, Tensor, int]:
    """chunk_offsets [N+1] (first chunk of each sequence) and chunk_indices [NC, 2] (seq, chunk).

    For offsets of equal-length sequences (from ``seq_bounds`` without cu_seqlens) everything is
    known on the host, so nothing is read back from the device, and the layout is made once per
    shape (``layout_cache``).
    """
    dense = getattr(offsets, "_dense", None)
    if dense is not None:
        B, T = dense

        def make():
            nc = (T + bt - 1) // bt
            idx = torch.arange(B * nc, device=offsets.device)
            chunk_offsets = torch.arange(B + 1, device=offsets.device) * nc    # (nc = 0 when T = 0)
            return chunk_offsets, torch.stack([idx // nc, idx % nc], dim=1).contiguous(), nc
        return layout_cache(("chunks", B, T, bt, str(offsets.device)), make)
    lengths = offsets[1:] - offsets[:-1]
    nchunks = (lengths + bt - 1) // bt
    chunk_offsets = torch.cat([nchunks.new_zeros(1), nchunks.cumsum(0)])
    seq = torch.repeat_interleave(torch.arange(len(nchunks), device=offsets.device), nchunks)
    local = torch.arange(int(chunk_offsets[-1]), device=offsets.device) - chunk_offsets[seq]
    indices = torch.stack([seq, local], dim=1).contiguous()
    return chunk_offsets.contiguous(), indices, int(nchunks.max()) if len(nchunks) else 0


def _prec(dtype: torch.dtype) -> str:
    # fp32 inputs get fp32-accurate products (tf32 would cost ~1e-3 relative error): see FP32_PRODUCTS
    return fp32_products() if dtype == torch.float32 else "tf32"


# Pair decays e^{G_i − G_j} from prefix sums (FAST in _pair_decays) instead of a column scan: None
# (default) for 16-bit inputs, whose rounding is ~40x coarser than the prefix sums' error at the
# strongest decays the tests use; True / False force it (the tests run it in fp32).
FAST_PAIRS: bool | None = None


def _fast(dtype: torch.dtype) -> bool:
    return dtype != torch.float32 if FAST_PAIRS is None else FAST_PAIRS


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the per-chunk states kept between kernels. The running state is fp32 inside the state
    kernels; the copies they store for the other kernels only enter products cast to the input dtype
    (bf16 for bf16 inputs), so storing them in bf16 changes nothing but halves their traffic."""
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


def _entry_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the states entering the segments of a forward-only pass (SEGMENT_ENTRY_16BIT)."""
    return _state_dtype(dtype) if SEGMENT_ENTRY_16BIT else torch.float32


# 16-bit q, k, v with K ≠ V gave this family's kernels wrong results on the H200 (Triton 3.6) where
# fp32 and K = V passed: dV for K > V, dQ and dK for K < V, the two-pass output, a one pass's final
# state, an illegal access at K = 32, V = 16 — never under the interpreter, whose logic is the same.
# Each failing shape had unequal key and value tiles; with both the wider one (masked lanes) every
# shape tried passed: (40, 24), (24, 40), (32, 16), (16, 32), (64, 32), (200, 72), (72, 200),
# (256, 128), two passes and one, bf16 and fp16 (`python -m kernels.gpu_check --only unequal`,
# kernels/results/experiments_2026-12-05b.md). EQUAL_TILES — None: for 16-bit inputs; True: always
# (the tests force it under the interpreter's fp32); False: never (the failing tiles, to show it).
EQUAL_TILES: bool | None = None


def _tiles(K: int, V: int, dtype: torch.dtype | None = None) -> tuple[int, int]:
    BK, BV = max(16, next_pow2(K)), max(16, next_pow2(V))
    if EQUAL_TILES or (EQUAL_TILES is None and dtype is not None and dtype != torch.float32):
        BK = BV = max(BK, BV)
    return BK, BV


# The one-pass forward (_fused_fwd_kernel) instead of the state and output kernels. FUSED_FORWARD: None
# (default) where the H200 measured it faster (`python -m kernels.bench --ops scalar --impls
# ours,ours-fused`, bf16, H = 16, K = V = 128, B·T = 32K, 2026-12-01): without a backward where there is a
# program per SM (forward 0.48 vs 0.56 ms at T = 1K–4K; with a backward storing its states it was 2.06 vs
# 2.03 ms then, faster since: FUSED_BEFORE_BACKWARD), and cut into segments where there are fewer programs
# than SMs, before a backward only where at most half as many, and within a quarter of a program per SM in
# two segments, forward and before a backward. With 8 programs per SM over the segments
# (SEGMENT_PROGRAMS_PER_SM; `python -m kernels.sweep profile --ops scalar --T T --impls ours` with and
# without `--set kernels.diag.chunk.FUSED_FORWARD=True`, 2026-12-01): T = 16K, B = 2 (64 programs):
# forward 0.467 vs 0.754 ms, fwd+bwd 2.25 vs 2.46; T = 8K, B = 4 (128 programs): forward 0.527 vs 0.545,
# one pass without segments 0.479, fwd+bwd 2.12 / 2.06 / 2.05; there, with the segments' log decays summed
# in the scan (SEGMENT_DECAY_IN_SCAN; `python -m kernels.sweep ab --ops scalar,key --T 8192 --set
# kernels.diag.chunk.FUSED_MIN_PROGRAMS=L --set kernels.diag.chunk.SEGMENT_PROGRAMS_PER_SM=P`,
# 2026-12-01), two segments against one pass: forward Mamba-2 0.479 → 0.406 ms, GLA 0.630 → 0.612, fwd+bwd
# 2.028 → 1.997 and 3.784 → 3.741; three 0.519 / 0.714, four 0.416 / 0.706, eleven 0.480 / 0.682 (all
# slower for GLA); at T = 4K (256 programs) two segments 0.281 → 0.414, so none there; T = 32K, B = 1 (32
# programs): forward 0.469, fwd+bwd 2.66 (0.99 and 3.24 with 2 per SM, where two passes took 1.29 and
# 3.44). Two passes elsewhere and off CUDA. True: wherever it can run (tests, the GPU check, the
# benchmark's ours-fused); False: never. (Re-timed 2026-12-04, when the delta rule's pass gained from 128
# programs for 132 SMs: `--set kernels.diag.chunk.FUSED_MIN_PROGRAMS=128` at 8K, one pass against the two
# segments, forward GLA 0.451 → 0.584 ms, Mamba-2 0.347 → 0.460, fwd+bwd 3.013 → 3.186, 1.562 → 1.702: the
# segments stay; experiments_2026-12-04e.md §7.)
FUSED_FORWARD: bool | None = None
# Before a backward too where there is a program per SM, for 16-bit inputs: the pass that stores the
# per-chunk states replaces the state and output kernels. Re-measured 2026-12-05, after the benchmark's
# ours-fused rows (run 2026-12-05_1649) showed it: on the H200, `python -m kernels.sweep ab --ops scalar
# --T T --set kernels.diag.chunk.FUSED_FORWARD=True`, three alternating rounds, Mamba-2's bf16 forward +
# backward 1.546 → 1.400 ms at 1K, 1.538 → 1.396 at 4K (the state and output kernels 0.170 + 0.269 ms
# against the pass's 0.301, `sweep profile --modes fwd+bwd`), while fp32 inputs (tf32x3 products) lost,
# 9.05 → 11.61 ms at 4K, and keep the two kernels; on an H100, this rule against `--set
# kernels.diag.chunk.FUSED_BEFORE_BACKWARD=False`, bf16 1.788 → 1.573 at 1K, 1.774 → 1.566 at 4K, and fp16
# (the pass forced) 2.809 → 2.420 at 4K (kernels/results/experiments_2026-12-05f.md).
FUSED_BEFORE_BACKWARD = True
BEFORE_BACKWARD_DTYPES = (torch.bfloat16, torch.float16)
FUSED_BV = 64   # value tile of the one-pass forward
# The forward-only one pass (no states kept for a backward) moves q, k, v and o through the copy
# engine (host-made tensor descriptors of the batch as [B, T, H, ·]) instead of tiles of pointers: the
# address tiles a program held across its loop go ([64, 128] 32-bit offsets are 64 registers a thread
# at 4 warps) and the loads land in shared memory as the products want them. ptxas (`python -m
# kernels.compile_check --family scalar --dtype bf16 --K 128 --segments`, sm_90): spills 656 → 220 B
# whole, 344 → 0 over segments, shared memory 56 → 73 KB. H200, bf16, H = 16, K = V = 128 (`python -m
# kernels.sweep ab --ops scalar --T T --set kernels.diag.chunk.FUSED_TMA=True`, three alternating
# rounds, 2026-12-02): Mamba-2 forward 4K 0.282 → 0.263 ms, 16K 0.396 → 0.385, 32K 0.402 → 0.418
# (rounds 0.396 / 0.483 / 0.418); the pass before a backward lost with it (fwd+bwd 16K 1.784 → 1.805,
# 32K 2.022 → 2.039) and keeps its pointers. Descriptors made on the GPU, one a sequence (packed
# batches too), timed noisily (4K 0.362 → 0.392 ms, rounds 0.261–0.436) and need a Triton allocator:
# not kept. Only for equal-length batches of kernels._common.TMA_DTYPES (tensor_descriptors). False:
# pointer tiles everywhere.
FUSED_TMA = True
FUSED_MIN_PROGRAMS: int | None = None   # None: the GPU's SM count (the GPU check sets 1 to force it)
# Programs per SM that the segmented one pass aims for (segments = this × SMs / programs, at most one
# per chunk): a program waits on its own chain of chunks and others fill the gaps. More segments
# shorten each chain but add states from zero and a longer segment scan. H200, bf16, H = 16,
# K = V = 128, T = 32K, B = 1, forward kernels' time (`python -m kernels.sweep profile --ops scalar,key
# --T 32768 --impls ours --set kernels.diag.chunk.SEGMENT_PROGRAMS_PER_SM=P`, 2026-12-01), P = 2 / 4 /
# 8 / 12 / 16 / 24: Mamba-2 0.692 / 0.570 / 0.469 / 0.505 / 0.513 / 0.554 ms, GLA 0.863 / 0.763 /
# 0.692 / 0.715 / 0.737 / 0.787 (fwd+bwd at 8 vs 2: 2.66 vs 2.92, 4.15 vs 4.33).
SEGMENT_PROGRAMS_PER_SM = 8
# Key tile of the state kernel (the two-pass forward's and the segments' states from zero): 64 splits
# K = 128 in two, twice the programs, each holding a [64, 64] state and reading half the keys; None,
# the whole padded K (one [128, 64] state a program). H200, bf16, H = 16, K = V = 128 (`python -m
# kernels.sweep profile --ops scalar --T T --impls ours --set kernels.diag.chunk.STATE_BK=B`,
# 2026-12-01): T = 32K, B = 1, the segments' states 0.144 → 0.133 ms (forward 0.468 → 0.458); T = 4K,
# the two-pass state kernel of a forward + backward 0.176 → 0.173.
STATE_BK: int | None = 64
# Value tile of the state kernel (at most the family's own): with STATE_BK = None and 128, a program
# holds the whole [128, 128] state and reads each chunk's k and v once ([64, 64] tiles read both
# twice). It lost: H200, bf16, H = 16, K = V = 128 (`python -m kernels.sweep ab --ops scalar --T T --set
# kernels.diag.chunk.STATE_BK=None --set kernels.diag.chunk.STATE_BV=128 --set
# "kernels.diag.chunk.LAUNCH[state]={'num_warps': 8, 'num_stages': 2}"`, three alternating rounds,
# 2026-12-02), Mamba-2 forward T = 32K 0.440 → 0.465 ms, 16K 0.431 → 0.457, 8K 0.350 → 0.380 (a
# quarter as many programs; LAUNCH["state"] then set the segments' launch too, since LAUNCH["segment_state"]).
# The key-wise family's segments gained from it and take their own tiles
# (kernels.diag.chunk_key.SEGMENT_STATE_TILES; experiments_2026-12-02c.md §1).
STATE_BV = 64
# The segments' states from zero with the whole padded K a program ([128, 64] tiles: k read once a
# value tile and v once, where [64, 64] tiles read v twice) where that still gives at least this many
# programs per SM. H200, bf16, H = 16, K = V = 128 (`python -m kernels.sweep ab --ops scalar --T T --set
# kernels.diag.chunk.STATE_BK=None`, three alternating rounds, 2026-12-02, the programs [128, 64] tiles
# give in brackets): T = 32K (992, 7.5 per SM) forward 0.440 → 0.431 ms, fwd+bwd 2.115 → 2.098; 16K
# (960) 0.432 → 0.421, 1.864 → 1.856; 8K (256, two pieces of each of two segments) 0.350 → 0.360,
# 1.653 → 1.664; 4K (no segments) unchanged. None: STATE_BK's tiles always.
SEGMENT_WHOLE_K_PER_SM: int | None = 4
# Where the rule above gives the whole padded K, the whole padded V too: a program holds the whole
# state and reads each chunk's k and v once (k was read once a value tile), under its own launch
# entry (LAUNCH["segment_state_whole"]: 8 warps capped at 128 registers, two programs an SM; uncapped,
# 234 registers and one). H200, bf16, H = 16, K = V = 128 (`python -m kernels.sweep ab --ops scalar
# --T T --set "kernels.diag.chunk.SEGMENT_STATE_TILES=(128,128)" --set
# "kernels.diag.chunk.LAUNCH[segment_state]={'num_warps': 8, 'num_stages': 2, 'maxnreg': 128}"`, a
# switch since replaced by this one, three alternating rounds, 2026-12-02): Mamba-2 forward 16K 0.397
# → 0.390 ms, 32K 0.397 → 0.394 (fwd+bwd 1.790 → 1.784, 2.017 → 2.014); 8K, where the rule gives
# [64, 64] tiles, lost with whole states (0.351 → 0.361) and keeps its tiles; 3 stages lost (32K
# 0.398 → 0.413). Uncapped it had lost (experiments_2026-12-02c.md §1).
SEGMENT_WHOLE_STATE = True
# (The segments' states from zero through tensor descriptors of k and v, as FUSED_TMA for the one
# pass, lost though ptxas had their spills 416 → 0 B: H200, bf16, H = 16, K = V = 128, `python -m
# kernels.sweep ab --ops scalar --T T --set kernels.diag.chunk.SEGMENT_STATE_TMA=True`, three
# alternating rounds, 2026-12-02: Mamba-2 forward 16K 0.380 → 0.385 ms, 32K 0.382 → 0.390; removed,
# experiments_2026-12-02i.md §1.)
# The three kernels of a forward over segments (states from zero, the scan over segments, the one
# pass) as a chain of programmatic dependent launches (Hopper on; kernels._common.dependent_launch):
# each next kernel's programs are launched while the one before finishes its last wave and wait on
# the GPU (gdc_wait) for its results, instead of starting after it has drained and been launched.
# H200, bf16, H = 16, K = V = 128 (`python -m kernels.sweep ab --ops scalar --T T --set
# kernels.diag.chunk.SEGMENT_PDL=B`, 2026-12-02/03; experiments_2026-12-02i.md §3): Mamba-2 forward
# 16K 0.384 → 0.379 ms (three rounds, entering states fp32); with them bf16, five rounds, 8K 0.340 →
# 0.343 and 32K 0.374 → 0.377 in the fast rounds, but at 16K the chain's rounds stayed fast (0.370–
# 0.390) where the plain launches' went slow (0.407–0.567). fwd+bwd 8K / 16K 1.607 → 1.604, 1.782 →
# 1.779. A wash in the fast mode; on, as the benchmark ran. GPU-checked (`python -m kernels.gpu_check
# --only fused:mamba2,chunk_scalar,mamba2 --dtypes bfloat16,float32 --set
# kernels.diag.chunk.SEGMENT_WHOLE_K_PER_SM=0`).
SEGMENT_PDL = True
# The states entering the segments, which the scan over segments writes and the forward-only pass over
# segments reads (fp32: 36 MB each way for Mamba-2 at 16K, a fifth of q, k, v and o's bytes), stored
# in _state_dtype (bf16 for bf16 inputs) as the two-pass path stores its per-chunk states. The pass
# starts its fp32 running state from the rounded one: its first chunk's product used that rounding
# already, later chunks carry it decayed (an error of the order of the per-chunk rounding of the
# two-pass path); the scan, the final state and the pass before a backward stay fp32. H200, bf16,
# H = 16, K = V = 128 (`python -m kernels.sweep ab --ops scalar --T T --rounds 5 --set
# kernels.diag.chunk.SEGMENT_ENTRY_16BIT=False`, 2026-12-03; experiments_2026-12-02i.md §3): Mamba-2
# forward 16K 0.380 → 0.373 ms, 32K 0.387 → 0.377 (every round); fwd+bwd unchanged. GPU-checked with
# SEGMENT_PDL (bf16 o errors as before, 3.7e-3). The key-wise family's pass over segments follows it
# (`--ops key`, 2026-12-03; experiments_2026-12-03.md §3): GLA forward 16K 0.629 → 0.616, 32K 0.646 →
# 0.623.
SEGMENT_ENTRY_16BIT = True
# The segments' log decays (a segment's sum of g, or per state row of gk for the key-wise family)
# summed by the states-from-zero kernel as it walks the segment (fp32, by chunk totals) instead of by
# torch in fp64 (cast, pad, sum, cast: four small launches and their host work, on the forward's
# path). H200, bf16, H = 16, K = V = 128 (`python -m kernels.sweep ab --ops scalar,key --T T --set
# kernels.diag.chunk.SEGMENT_DECAY_IN_SCAN=True`, three alternating rounds, 2026-12-01): T = 32K
# forward Mamba-2 0.473 → 0.445 ms, GLA 0.697 → 0.667, fwd+bwd 2.446 → 2.419 and 4.179 → 4.146; T = 16K
# 0.464 → 0.439, 0.679 → 0.651, 2.196 → 2.171, 3.941 → 3.915. GPU-checked (`python -m kernels.gpu_check
# --only chunk_scalar,chunk_key,fused:mamba2/segments,fused:gla/segments --set` it, bf16 and fp32).
# False: the torch sums (kept for A/B).
SEGMENT_DECAY_IN_SCAN = True
# The states from zero of each sequence's last segment only where the final state is wanted: the
# segments' states entering them need the others only (at T = 8K, two segments, half the programs of
# that kernel). H200, bf16, H = 16, K = V = 128 (`python -m kernels.sweep ab --ops scalar,key --T T
# --set kernels.diag.chunk.SEGMENT_SKIP_LAST=True`, three alternating rounds, 2026-12-02): T = 8K
# forward Mamba-2 0.406 → 0.395 ms, GLA 0.612 → 0.596, fwd+bwd 1.712 → 1.700, 3.276 → 3.261; T = 16K
# and 32K (16 and 32 segments a sequence, one of them skipped) within 1.2%, never slower. GPU-checked
# (`python -m kernels.gpu_check --only chunk_scalar,chunk_key,fused:mamba2/segments,fused:gla/segments
# --set` it, bf16 and fp32). False: every segment's (kept for A/B; the tests run both).
SEGMENT_SKIP_LAST = True
# Segments whose loads the scan over segments (_segment_pass_kernel) issues together: 1, one after
# another, each waiting on memory (0.024 ms at T = 32K, 31 segments: about 31 memory latencies;
# `python -m kernels.sweep profile --ops scalar --T 32768 --impls ours`, 2026-12-02); U > 1, U at a
# time, then their steps in order. H200, bf16, H = 16, K = V = 128, T = 32K (`python -m kernels.sweep ab
# --ops scalar --T 32768 --set kernels.diag.chunk.SEGMENT_PASS_ROWS=U`, three alternating rounds,
# 2026-12-02): Mamba-2 forward 0.428 → 0.421 ms at U = 4, 0.429 → 0.421 at U = 8, fwd+bwd 2.078 → 2.071
# and 2.079 → 2.060 (an associative scan over 32 at a time lost: experiments_2026-12-02f.md §1). The
# key-wise family has its own (kernels.diag.chunk_key.SEGMENT_PASS_ROWS).
SEGMENT_PASS_ROWS = 8
# The output's scale (o = scale · what the kernels compute) on dO in this family's backward kernels,
# tile by tile as they load it, instead of a torch do * scale before them: that pass over dO took
# 0.064 ms of Mamba-2's 2.025 ms forward + backward at T = 32K (H200, bf16, H = 16, K = V = 128;
# `python -m kernels.sweep profile --ops scalar --T 32768 --impls ours`, 2026-12-02). The same bits
# (fp32 product, rounded to dO's dtype); ptxas (`python -m kernels.compile_check`, sm_90): the dQ/dK
# kernel 1520 → 1592 B of spills. Timed (`python -m kernels.sweep ab --ops scalar --T T --set
# kernels.diag.chunk.DO_SCALE_IN_KERNELS=True`, three alternating rounds, 2026-12-02): Mamba-2 forward
# + backward 4K 1.598 → 1.583 ms, 32K 2.042 → 2.075 (each round within 0.002), so off; the key-wise
# family gained at both and has it on (kernels.diag.chunk_key.DO_SCALE_IN_KERNELS).
DO_SCALE_IN_KERNELS = False
# The state update (K ⊙ e^{G_L − G})ᵀ V as Kᵀ (e^{G_L − G} ⊙ V) (the [64, 64] value tile scaled and cast
# instead of the [64, 128] key tile) in these of the scalar family's kernels, where their value tile is
# narrower than their key tile (decay_v): "state" the state kernel, "pass" the one pass storing states
# for a backward, "pass_fwd" the one pass without. H200, bf16, H = 16, K = V = 128 (`python -m
# kernels.sweep ab --ops scalar --T T --set "kernels.diag.chunk.DECAY_V=('NAME',)"`, three alternating
# rounds against none, 2026-12-02): "pass" fwd+bwd T = 32K 2.096 → 2.048 ms, 16K 1.855 → 1.809 (4K: no one
# pass before a backward); "pass_fwd" forward 4K 0.280 → 0.277 but 16K 0.423 → 0.429, 32K 0.429 → 0.447
# (not kept); "state" (the segments' states from zero with whole-K tiles) forward 32K 0.429 → 0.426,
# fwd+bwd 2.095 → 2.092. () : k scaled everywhere.
DECAY_V: tuple[str, ...] = ("state", "pass")


def decay_v(kernel: str, BK: int, BV: int) -> bool:
    """Whether ``kernel``'s state update with (BK, BV) tiles scales v instead of k (DECAY_V)."""
    return kernel in DECAY_V and BV < BK


# The segments' states from zero by pieces of at most this many chunks (each segment cut into
# state_split(per) of them, their states joined by the scan over segments): at T = 8K a segment is 64
# chunks, each program of the kernel walked all 64 one after another, and it took 0.121 ms of a 0.406
# ms Mamba-2 forward (before SEGMENT_SKIP_LAST: `python -m kernels.sweep profile --ops scalar --T 8192
# --impls ours`, 2026-12-02), the one pass 0.271; in pieces of 16, 0.069. H200, bf16, H = 16, K = V =
# 128 (`python -m kernels.sweep ab --ops scalar,key --T 8192 --set kernels.diag.chunk.SEGMENT_STATE_CHUNKS=C`,
# three alternating rounds, 2026-12-02), forward Mamba-2 / GLA from 0.396 / 0.596 ms: C = 32 (two
# pieces) 0.353 / 0.576, 16 0.360 / 0.587, 8 0.373 / 0.606; fwd+bwd 1.709 → 1.665, 3.277 → 3.257 at
# 32. At 16K and 32K segments are 16 chunks, not cut by 32; cut by 8 they lost (0.436 → 0.455, 0.650 →
# 0.678). GPU-checked (`python -m kernels.gpu_check --only fused:mamba2/pieces,fused:gla/pieces`,
# bf16 and fp32). None: a piece is a whole segment.
SEGMENT_STATE_CHUNKS: int | None = 32
# Key and value tiles (BK, BV) of the scalar family's backward reverse state scan (_dstate_kernel) where
# its own tiles (the whole padded K, 64 values) would give at most half as many programs as SMs (long T,
# small B): more, smaller programs, each waiting on its own chain of chunks. H200, bf16, H = 16,
# K = V = 128 (`python -m kernels.sweep profile --ops scalar --T T --impls ours` with and without
# `--set kernels.diag.chunk.DSTATE_FEW_TILES=None`, 2026-12-01, forward + backward): T = 32K, B = 1 (32
# programs with its own tiles): 2.658 ms, (64, 32) 2.538, (64, 16) 2.475, (32, 32) 2.425; T = 16K (64
# programs): 2.233 → 2.174 with (32, 32); T = 8K (128 programs) slower: 2.033 → 2.192. The key-wise
# family keeps its own (64, 64): at 32K 4.179 ms, (64, 32) 4.154, (64, 16) 4.135, (32, 32) 4.333. None:
# always the family's own tiles.
DSTATE_FEW_TILES: tuple[int, int] | None = (32, 32)
# (key, value) tiles of every reverse state scan, scalar and key-wise, overriding the above where set
# (the tests split the scan this way; `--set kernels.diag.chunk.DSTATE_TILES=(64,32)` times a choice).
DSTATE_TILES: tuple[int, int] | None = None


def state_tiles(BK: int, BV: int) -> tuple[int, int]:
    """(key, value) tiles of the state kernel from a family's own: STATE_BK splits the keys, STATE_BV
    the values."""
    return min(BK, STATE_BK or BK), min(BV, STATE_BV)


def segment_state_tiles(BK: int, BV: int, pieces: int, V: int, device) -> tuple[int, int]:
    """(key, value) tiles of the scalar family's segments' states from zero, ``pieces`` sequence-heads
    of them: state_tiles', with the whole padded K (BK) on CUDA where that gives at least
    SEGMENT_WHOLE_K_PER_SM programs per SM, and then the whole padded V with SEGMENT_WHOLE_STATE."""
    BKs, BVs = state_tiles(BK, BV)
    least = SEGMENT_WHOLE_K_PER_SM
    if least is not None and torch.device(device).type == "cuda" \
            and pieces * cdiv(V, BVs) >= least * sm_count(device):
        return BK, BV if SEGMENT_WHOLE_STATE and BV <= 128 else BVs
    return BKs, BVs


def dstate_tiles(BK: int, BV: int, K: int = 0, V: int = 0, NH: int = 0, device=None) -> tuple[int, int]:
    """(key, value) tiles of a family's reverse state scan: its own (BK, BV), DSTATE_TILES' where set
    (never wider than its own), or, given the shapes (K, V, NH sequence-heads) and a CUDA device,
    DSTATE_FEW_TILES' where its own would give at most half as many programs as SMs."""
    tiles = DSTATE_TILES
    if tiles is None and DSTATE_FEW_TILES is not None and device is not None \
            and torch.device(device).type == "cuda" and 2 * cdiv(K, BK) * cdiv(V, BV) * NH <= sm_count(device):
        tiles = DSTATE_FEW_TILES
    return (BK, BV) if tiles is None else (min(BK, tiles[0]), min(BV, tiles[1]))


def _fused_segments(offsets: Tensor, N: int, H: int, V: int, K: int, device, backward: bool,
                    auto: bool | None = None, dtype: torch.dtype | None = None) -> int | None:
    """How the forward runs: None for the two-pass kernels, else the one-pass forward over that many
    segments per sequence. One segment where there is a program per SM already; an equal-length batch
    with too few sequence-heads (long T, small B) is cut into segments that run in parallel, joined by
    a short scan over the segments' own states (_segment_pass_kernel); a packed batch with too few
    keeps the two-pass kernels. ``backward``: whether the forward must store states for one. ``auto``:
    whether this family's measured limits apply (default: FUSED_FORWARD is None); False gives the
    pass wherever it can run, as when forced. ``dtype``: the inputs' (FUSED_BEFORE_BACKWARD)."""
    if FUSED_FORWARD is False or K > 128:
        return None
    auto = FUSED_FORWARD is None if auto is None else auto
    if auto and torch.device(device).type != "cuda":
        return None
    least = FUSED_MIN_PROGRAMS
    if least is None:
        least = sm_count(device)
    programs = N * H * cdiv(V, min(FUSED_BV, max(16, next_pow2(V))))
    dense = getattr(offsets, "_dense", None)
    band = least > programs and 4 * programs >= 3 * least
    if programs >= least:
        pass_first = FUSED_BEFORE_BACKWARD and dtype in BEFORE_BACKWARD_DTYPES
        return None if auto and backward and not pass_first else 1
    if band and dense is None:
        return None if auto and backward else 1
    # within a quarter of a program per SM: two segments, forward and before a backward (2 per SM;
    # 3 and 4 lost, see SEGMENT_PROGRAMS_PER_SM); more programs per SM only where fewer
    if auto and backward and not band and 2 * programs > least:
        return None
    if dense is None:
        return None
    nc = cdiv(dense[1], BT)
    nseg = min(nc, 2 if band else cdiv(SEGMENT_PROGRAMS_PER_SM * least, max(programs, 1)))
    per = cdiv(nc, max(nseg, 1))
    return cdiv(nc, per) if nc else 1


def _segment_layout(B: int, T: int, nseg: int, device, bt: int = BT, split: int = 1) -> tuple[Tensor, Tensor, int]:
    """Offsets and chunk offsets of the B·nseg segments (whole chunks of ``bt``, the last of a sequence
    ragged) that an equal-length batch [B, T] is cut into, and the chunks of the longest, built on the
    host (once per shape). ``split``: each segment cut further into that many pieces of whole chunks
    (B·nseg·split of them, in order; a short segment's last pieces may be empty)."""
    def make():
        nc = cdiv(T, bt)
        per = cdiv(nc, nseg)
        sub = cdiv(per, split)
        # first chunk of each piece of a sequence, then its end
        firsts = [min(j * per + i * sub, (j + 1) * per, nc) for j in range(nseg) for i in range(split)] + [nc]
        starts = [n * T + min(c * bt, T) for n in range(B) for c in firsts[:-1]]
        offsets = torch.tensor(starts + [B * T], dtype=torch.int64).to(device, non_blocking=True)
        chunks = [b - a for _ in range(B) for a, b in itertools.pairwise(firsts)]
        chunk_offsets = torch.tensor([0] + list(itertools.accumulate(chunks)), dtype=torch.int64)
        return offsets, chunk_offsets.to(device, non_blocking=True), sub
    return layout_cache(("segments", B, T, nseg, bt, split, str(torch.device(device))), make)


def state_split(per: int) -> int:
    """Pieces per segment for the segments' states from zero (SEGMENT_STATE_CHUNKS): 1, or enough
    that none walks more than that many of a segment's ``per`` chunks."""
    if not SEGMENT_STATE_CHUNKS or not SEGMENT_DECAY_IN_SCAN:   # (the torch sums are per segment)
        return 1
    return cdiv(per, SEGMENT_STATE_CHUNKS)


class Pieces(NamedTuple):
    """How the segments' states from zero run (segment_pieces): ``split`` pieces a segment, their
    offsets and chunk offsets, the most chunks a piece has, how many pieces (per head) the state
    kernel runs, and its keywords for the skip (SKIP_LAST, NSEG, NSKIP)."""
    split: int
    offsets: Tensor
    chunk_offsets: Tensor
    most: int
    count: int
    skip_kw: dict


def segment_pieces(B: int, T: int, nseg: int, per: int, final: bool, device) -> Pieces:
    """The segments' states from zero of both diagonal families: each of an equal-length batch's
    nseg segments (``per`` chunks) in state_split(per) pieces (SEGMENT_STATE_CHUNKS), the last
    segment's left out where no ``final`` state is wanted (SEGMENT_SKIP_LAST)."""
    split = state_split(per)
    offsets, chunk_offsets, most = _segment_layout(B, T, nseg, device, split=split)
    skip = SEGMENT_SKIP_LAST and not final
    return Pieces(split, offsets, chunk_offsets, most, B * (nseg - skip) * split,
                  dict(NSEG=nseg * split if skip else 1, SKIP_LAST=skip, NSKIP=split))


def segment_states(dS: Tensor, logw: Tensor, h0: Tensor | None, ht: Tensor | None, nseg: int,
                   split: int = 1, rows: int | None = None, pdl: bool = False,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """The states entering each of the NS = N·nseg segments ([NS, H, K, V] in ``dtype``; the scan runs
    in fp32) from their own states from zero ``dS`` and their log decays ``logw`` ([NS, H] scalar, or
    [NS, H, K] per state row), by _segment_pass_kernel; the sequences' final states go to ``ht`` (fp32)
    when it is given. ``split``: dS and logw are of the segments' pieces (NS·split of them, ``split`` to
    a segment). ``rows``: segments loaded at once (default SEGMENT_PASS_ROWS). ``pdl``: launched as a
    link of a chain of dependent launches (kernels._common.dependent_launch), after the kernel that
    makes dS."""
    NP, H, K, V = dS.shape
    S_in = _empty(NP // split, H, K, V, dtype=dtype, device=dS.device)
    BKV = min(1024, next_pow2(K * V))
    _segment_pass_kernel[(cdiv(K * V, BKV), NP // (nseg * split) * H)](
        dS, logw, h0, S_in, ht, nseg * split, H=H, KV=K * V, BKV=BKV, HAS_H0=h0 is not None,
        STORE_HT=ht is not None, V=V if logw.dim() == 3 else 0, EVERY=split, U=rows or SEGMENT_PASS_ROWS,
        **dependent_launch(pdl, dS.device))
    return S_in


class ChunkScalarDecay(torch.autograd.Function):
    """Autograd wrapper; tensors flattened to [T_total, H, ·], states [N, H, K, V] in fp32."""

    @staticmethod
    def forward(ctx, q, k, v, g, h0, offsets, store_ht: bool, scale: float = 1.0):
        Tt, H, K = q.shape
        V = v.shape[-1]
        N = offsets.numel() - 1
        ctx.scale = scale
        BK, BV = _tiles(K, V, q.dtype)
        chunk_offsets, chunk_indices, maxc = chunk_layout(offsets)
        NC = chunk_indices.shape[0]
        decay, prec = int(g is not None), _prec(q.dtype)
        ht = _empty(N, H, K, V, dtype=torch.float32, device=q.device) if store_ht else None
        keep = any(ctx.needs_input_grad[:5])   # the per-chunk states are only needed by a backward
        nseg = _fused_segments(offsets, N, H, V, K, q.device, keep, dtype=q.dtype)
        if nseg is not None:
            h = _empty(NC, H, K, V, dtype=_state_dtype(q.dtype), device=q.device) if keep else None
            o = _empty(Tt, H, V, dtype=v.dtype, device=q.device)
            BVf = min(FUSED_BV, BV)
            launch = _launch("fused_fwd" if keep else "fused_fwd_only", q.dtype, K, V)
            # the one pass's settings, whole sequences or segments
            pass_kw = dict(H=H, K=K, V=V, BT=BT, BK=BK, BV=BVf, DECAY=decay, STORE_H=keep, PREC=prec,
                           FAST=_fast(q.dtype), DECAY_V=decay_v("pass" if keep else "pass_fwd", BK, BVf),
                           **tensor_descriptors(FUSED_TMA and not keep, offsets, BT, q=(q, BK), k=(k, BK),
                                                v=(v, BVf), o=(o, BVf)),
                           **launch)
            if nseg == 1:
                _fused_fwd_kernel[(cdiv(V, BVf), N * H)](
                    q, k, v, g, h0, h, o, ht, offsets, chunk_offsets, maxc, scale, HAS_H0=h0 is not None,
                    STORE_HT=store_ht, **pass_kw)
            else:
                B, T = offsets._dense
                s_offsets, s_chunk_offsets, per = _segment_layout(B, T, nseg, q.device)
                NS = B * nseg
                f32 = torch.float32
                # each segment's own state from zero (no per-chunk states), by pieces of a segment
                # with SEGMENT_STATE_CHUNKS (shorter chains, more programs), then the scan over segments
                pc = segment_pieces(B, T, nseg, per, store_ht, q.device)
                dS = _empty(NS * pc.split, H, K, V, dtype=f32, device=q.device)
                BKs, BVs = segment_state_tiles(BK, BV, pc.count * H, V, q.device)
                # (each piece's log decay from the same kernel, with SEGMENT_DECAY_IN_SCAN)
                logw = _empty(NS * pc.split, H, dtype=f32, device=q.device) if SEGMENT_DECAY_IN_SCAN else None
                _state_kernel[(cdiv(K, BKs), cdiv(V, BVs), pc.count * H)](
                    k, v, g, None, None, dS, pc.offsets, pc.chunk_offsets, pc.most, H=H, K=K, V=V, BT=BT, BK=BKs,
                    BV=BVs, DECAY=decay, HAS_H0=False, STORE_HT=True, STORE_H=False, PREC=prec, logw=logw,
                    STORE_LOGW=logw is not None, DECAY_V=decay_v("state", BKs, BVs), **pc.skip_kw,
                    **dependent_launch(SEGMENT_PDL, q.device, first=True),
                    # (tiles wider than [128, 64] are SEGMENT_WHOLE_STATE's)
                    **_launch("segment_state_whole" if BKs * BVs > 128 * 64 else "segment_state", q.dtype, K, V))
                if logw is None and g is None:
                    logw = torch.zeros(NS, H, dtype=f32, device=q.device)
                elif logw is None:   # segment sums of the log decay, in fp64 (a whole segment's sum)
                    gp = torch.nn.functional.pad(g.view(B, T, H).double(), (0, 0, 0, nseg * per * BT - T))
                    logw = gp.view(B, nseg, per * BT, H).sum(2).to(f32).reshape(NS, H)
                S_in = segment_states(dS, logw, h0, ht, nseg, pc.split, pdl=SEGMENT_PDL,
                                      dtype=f32 if keep else _entry_dtype(q.dtype))
                # segments are whole chunks in order, so their chunk c0 + c is the batch's own
                _fused_fwd_kernel[(cdiv(V, BVf), NS * H)](
                    q, k, v, g, S_in, h, o, None, s_offsets, s_chunk_offsets, per, scale, HAS_H0=True,
                    STORE_HT=False, **pass_kw, **dependent_launch(SEGMENT_PDL, q.device))
            ctx.save_for_backward(q, k, v, g, h0, offsets, h, chunk_offsets, chunk_indices)
            ctx.maxc = maxc
            return o, ht
        h = _empty(NC, H, K, V, dtype=_state_dtype(q.dtype), device=q.device)
        BKs, BVs = state_tiles(BK, BV)
        _state_kernel[(cdiv(K, BKs), cdiv(V, BVs), N * H)](
            k, v, g, h0, h, ht, offsets, chunk_offsets, maxc, H=H, K=K, V=V, BT=BT, BK=BKs, BV=BVs,
            DECAY=decay, HAS_H0=h0 is not None, STORE_HT=store_ht, PREC=prec, DECAY_V=decay_v("state", BKs, BVs),
            **_launch("state", q.dtype, K, V))
        o = _empty(Tt, H, V, dtype=v.dtype, device=q.device)
        _output_kernel[(cdiv(V, BVs), NC, H)](
            q, k, v, g, h, o, offsets, chunk_indices, scale, H=H, K=K, V=V, BT=BT, BK=min(BK, 64), BV=BVs,
            DECAY=decay, PREC=prec, FAST=_fast(q.dtype), **_launch("output", q.dtype, K, V))
        ctx.save_for_backward(q, k, v, g, h0, offsets, h, chunk_offsets, chunk_indices)
        ctx.maxc = maxc
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h0, offsets, h, chunk_offsets, chunk_indices = ctx.saved_tensors
        Tt, H, K = q.shape
        V = v.shape[-1]
        N = offsets.numel() - 1
        NC = chunk_indices.shape[0]
        BK, BV = _tiles(K, V, q.dtype)
        BVs = min(BV, 64)
        decay, prec = int(g is not None), _prec(q.dtype)
        # o = scale · (what the kernels compute): every gradient through o carries the scale: dO
        # times it in torch, or in the kernels as they load it (DO_SCALE_IN_KERNELS)
        sdo = DO_SCALE_IN_KERNELS and ctx.scale != 1.0
        do = do.contiguous() if sdo or ctx.scale == 1.0 else do * ctx.scale
        dh = _empty(NC, H, K, V, dtype=_state_dtype(q.dtype), device=q.device)
        dh0 = _empty(N, H, K, V, dtype=torch.float32, device=q.device) if h0 is not None else None
        BKd, BVd = dstate_tiles(BK, BVs, K, V, N * H, q.device)
        _dstate_kernel[(cdiv(K, BKd), cdiv(V, BVd), N * H)](
            q, do, g, dht.contiguous() if dht is not None else None, dh, dh0, offsets, chunk_offsets,
            ctx.maxc, ctx.scale, H=H, K=K, V=V, BT=BT, BK=BKd, BV=BVd, DECAY=decay, HAS_DHT=dht is not None,
            STORE_DH0=h0 is not None, PREC=prec, SCALE_DO=sdo, **_launch("dstate", q.dtype, K, V))
        dq = _empty(Tt, H, K, dtype=q.dtype, device=q.device)
        dk = _empty(Tt, H, K, dtype=k.dtype, device=q.device)
        dv = _empty(Tt, H, V, dtype=v.dtype, device=q.device)
        BKs = min(BK, 64)
        NKs = cdiv(K, BKs)
        want_dg = g is not None and ctx.needs_input_grad[3]
        # one share of dg per key block, summed below
        dg = _empty(NKs, Tt, H, dtype=torch.float32, device=q.device) if want_dg else None
        grid, inner = chunk_grid((NKs,), NC, H)
        _dqdk_kernel[grid](
            q, k, v, g, h, do, dh, dq, dk, dg, offsets, chunk_indices, Tt, ctx.scale, HEADS_INNER=inner, H=H, K=K,
            V=V, BT=BT, BK=BKs, BV=BVs, DECAY=decay, DG=want_dg, PREC=prec, FAST=_fast(q.dtype), SCALE_DO=sdo,
            **_launch("dqdk", q.dtype, K, V))
        grid, inner = chunk_grid((cdiv(V, BVs),), NC, H)
        _dv_kernel[grid](
            q, k, g, do, dh, dv, offsets, chunk_indices, ctx.scale, HEADS_INNER=inner, H=H, K=K, V=V, BT=BT, BK=BKs,
            BV=BVs, DECAY=decay, PREC=prec, FAST=_fast(q.dtype), SCALE_DO=sdo, **_launch("dv", q.dtype, K, V))
        if want_dg:
            dg = (dg[0] if NKs == 1 else dg.sum(0)).to(g.dtype)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dg, dh0, None, None, None
