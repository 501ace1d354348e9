"""Triton helpers shared by the chunked kernel families: where a sequential chunk scan starts, its tiles."""

import triton
import triton.language as tl


@triton.jit
def chunk_span(offsets, chunk_offsets, i_n):
    """Sequence i_n's tokens [bos, eos) and its chunks c0 … c0 + nc − 1 in the packed chunk list
    (int64, so offsets times the head and state sizes do not overflow)."""
    bos = tl.load(offsets + i_n).to(tl.int64)
    eos = tl.load(offsets + i_n + 1).to(tl.int64)
    c0 = tl.load(chunk_offsets + i_n).to(tl.int64)
    nc = tl.load(chunk_offsets + i_n + 1).to(tl.int64) - c0
    return bos, eos, c0, nc


@triton.jit
def chain_link(PDL: tl.constexpr):
    """A kernel's place in a chain of dependent launches (PDL: launched with launch_pdl, Hopper on,
    kernels._common.dependent_launch): wait until the kernel before it has finished and its writes are
    visible, then let the next one's programs start on the SMs this one's last wave leaves free. Called
    before a program reads what the previous kernel wrote or writes anything (memory the allocator
    handed on may still be read before the wait)."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def state_tile(init, i_nh, o_k, o_v, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
               HAS_INIT: tl.constexpr):
    """Rows o_k and columns o_v ([BK], [BV]) of a [K, V] state: their masks, the tile's offsets in the
    state, and its starting value in fp32 — sequence-head i_nh's state in ``init`` (with HAS_INIT),
    else zeros."""
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_state = o_k[:, None] * V + o_v[None, :]
    b = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_INIT:
        b += tl.load(init + i_nh.to(tl.int64) * K * V + p_state, mask=m_kv, other=0.0).to(tl.float32)
    return m_k, m_v, m_kv, p_state, b


@triton.jit
def tile_offsets(H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, o_k, o_v):
    """32-bit offsets of the [BT, ·] key and value tiles of a chunk ([T, H, ·] layout) from the chunk's
    first row, for a pointer already moved there by a scalar (``k + (c_start * H + i_h) * K + o_tk``):
    tiles of 64-bit pointers cost the sequential scans registers they do not have (ptxas sm_90, bf16,
    K = V = 128: the scalar one-pass forward spilled 796 B at 4 warps with them, 332 B without)."""
    o_t = tl.arange(0, BT)
    return o_t[:, None] * (H * K) + o_k[None, :], o_t[:, None] * (H * V) + o_v[None, :]


@triton.jit
def load_scaled(ptr, mask, scale, SCALE: tl.constexpr):
    """A tile of ``ptr`` (0 where masked), with SCALE times ``scale`` and rounded back to its dtype:
    what a torch ``x * scale`` would have handed the kernel, without that extra pass over x in memory."""
    b = tl.load(ptr, mask=mask, other=0.0)
    if SCALE:
        b = (b.to(tl.float32) * scale).to(b.dtype)
    return b


@triton.jit
def batch_place(bos, T_seq):
    """Where row ``bos`` of an equal-length batch [B, T_seq] lies: its sequence and its row in it, as
    the int32 coordinates a tensor descriptor takes."""
    i_b = bos // T_seq
    return i_b.to(tl.int32), (bos - i_b * T_seq).to(tl.int32)


@triton.jit
def chunk_qkv(q, k, v, q_d, k_d, v_d, TMA: tl.constexpr, i_b, t0, c, c_start, i_h, i_v, m_t, m_k, m_v, o_tk, o_tv,
              H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
              BV: tl.constexpr):
    """Chunk c's [BT, BK] q and k tiles and [BT, BV] v tile (value tile i_v; the chunk starts at row
    c_start, t0 + c·BT of sequence i_b): through the descriptors q_d, k_d, v_d with TMA, else through
    the pointer offsets o_tk, o_tv (0 where masked)."""
    if TMA:
        b_q = q_d.load([i_b, t0 + c * BT, i_h, 0]).reshape(BT, BK)
        b_k = k_d.load([i_b, t0 + c * BT, i_h, 0]).reshape(BT, BK)
        b_v = v_d.load([i_b, t0 + c * BT, i_h, i_v * BV]).reshape(BT, BV)
    else:
        m_tk = m_t[:, None] & m_k[None, :]
        b_q = tl.load(q + (c_start * H + i_h) * K + o_tk, mask=m_tk, other=0.0)
        b_k = tl.load(k + (c_start * H + i_h) * K + o_tk, mask=m_tk, other=0.0)
        b_v = tl.load(v + (c_start * H + i_h) * V + o_tv, mask=m_t[:, None] & m_v[None, :], other=0.0)
    return b_q, b_k, b_v


@triton.jit
def store_chunk(o, o_d, b_o, TMA: tl.constexpr, i_b, t0, c, c_start, i_h, i_v, m_t, m_v, o_tv, H: tl.constexpr,
                V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr):
    """Chunk c's [BT, BV] output tile b_o (already in o's dtype) into o, as chunk_qkv reads."""
    if TMA:
        o_d.store([i_b, t0 + c * BT, i_h, i_v * BV], b_o.reshape(1, BT, 1, BV))
    else:
        tl.store(o + (c_start * H + i_h) * V + o_tv, b_o, mask=m_t[:, None] & m_v[None, :])


@triton.jit
def chunk_head(AXIS: tl.constexpr, HEADS_INNER: tl.constexpr):
    """(chunk, head) of a chunk-parallel program: the chunk on grid axis AXIS and the head on AXIS + 1,
    or with HEADS_INNER the head on AXIS and the chunk on AXIS + 1 (kernels._common.chunk_grid)."""
    if HEADS_INNER:
        return tl.program_id(AXIS + 1), tl.program_id(AXIS)
    else:
        return tl.program_id(AXIS), tl.program_id(AXIS + 1)


# log2 e and ln 2: log decays into log2 units for exp_units, and back (constexprs, so kernels may read them)
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
# Log decays below this are taken as it (log_decay): e^{−200} is 0 in fp32, as e^{−inf} is, but a −inf
# (a reset) made the chunked kernels' differences of cumulative decays −inf − (−inf) = NaN, and a huge
# finite one left the later decays of its chunk to the rounding of a huge sum.
LOG_DECAY_FLOOR = tl.constexpr(-200.0)


@triton.jit
def log_decay(x):
    """Log decays as loaded, in fp32 and at least LOG_DECAY_FLOOR (NaN stays NaN)."""
    x = x.to(tl.float32)
    return tl.where(x < LOG_DECAY_FLOOR, LOG_DECAY_FLOOR, x)


@triton.jit
def exp_units(x, EX2: tl.constexpr):
    """e^x of fp32 values (EX2 = 0); 2^x of x in log2 units (EX2 = 1); the same as one ex2.approx.ftz
    instruction, results under 2^-126 flushed to 0 (EX2 = 2: inline PTX, compiled kernels only), where
    tl.exp takes a multiply by log2 e and, to keep subnormals, a compare and two predicated multiplies."""
    if EX2 == 2:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    elif EX2 == 1:
        return tl.math.exp2(x)
    else:
        return tl.exp(x)
