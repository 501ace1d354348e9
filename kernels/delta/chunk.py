r"""Chunked (WY/UT) training kernels for the delta rule and the gated delta rule, forward and backward.

Per head, in fla's orientation (state S [K, V], fp32), for one chunk of C tokens with Q, K [C, K],
V [C, V], β [C], the chunk-local cumulative log decay G [C] (G = 0 without a gate), its total G_L,
Γ_ij = e^{G_i − G_j} for i ≥ j (0 above the diagonal) and the scale s::

    A   = strict_lower(diag(β) K Kᵀ ⊙ Γ)          T = (I + A)⁻¹            (_ut_kernel)
    W   = T diag(β e^G) K                          U = T diag(β) V          (_wu_kernel)
    Vn  = U − W S                                  (the chunk's pseudo-values)
    S'  = e^{G_L} S + (K ⊙ e^{G_L − G})ᵀ Vn                                 (_state_kernel)
    O   = s [ (Q ⊙ e^G) S + (Q Kᵀ ⊙ Γ) Vn ]                                 (_output_kernel)

T is inverted in 16 × 16 sub-blocks: each diagonal block as (I − A)(I + A²)(I + A⁴)(I + A⁸) (or by
forward substitution in registers, UT_POWERS = False), the blocks below the diagonal by block forward
substitution (a few 16 × 16 matrix products).
Only the state kernel walks the chunks in order, one program per (sequence, head, value tile);
the others run every chunk at once. Where it is faster (FUSED_FORWARD) the state kernel also writes
O and the output kernel is skipped.

Backward, with dO and dS' (the gradient of the state leaving the chunk)::

    dVn = s (Q Kᵀ ⊙ Γ)ᵀ dO + (K ⊙ e^{G_L − G}) dS'                (_dvn_local_kernel + _dstate_kernel)
    dS  = e^{G_L} dS' + s (Q ⊙ e^G)ᵀ dO − Wᵀ dVn                  (_dstate_kernel, chunks last to first)
    dQ, the output and state parts of dK, dW = −dVn Sᵀ            (_dqkw_kernel, every chunk at once)
    dT  = dVn (βV)ᵀ + dW (β e^G K)ᵀ,  dA = −Tᵀ dT Tᵀ (strict lower part)
    dV, dβ and the rest of dK from dT, dA and dW                  (_wy_bwd_kernel)

The gate's gradient needs care with strong decays. dg_j collects exactly the terms that hold g_j:
Σ_{i ≥ j} of the e^{G_i} terms (a reverse cumsum), Σ_{b < j} of the e^{G_L − G_b} terms, the
"straddle" sums Σ_{a ≥ j > b} E_ab of every decayed C × C product (E = gradient ⊙ entry) and
⟨dS', e^{G_L} S⟩ — all inside the chunk, so nothing is summed across chunks. (The shortcut
dG = q·dq − k·dk followed by one reverse cumsum is exact in theory but cancels O(1) terms down to
a dg of ~1e-4.) Likewise G is an fp64 cumsum carried as an fp32 pair (hi, lo), so that
G_i − G_j keeps fp32 relative accuracy when G itself reaches −1000. Every exponent is ≤ 0 for g ≤ 0.

Dots on raw inputs (Q Kᵀ, K Kᵀ) run in the input dtype; dots that touch an fp32 quantity (T,
states, gradients) run in bf16 for bf16 inputs (``HALF_OPERANDS``, as fla does) and in fp32
otherwise (tf32 for fp16, exact for fp32). What only ever enters products as such an operand is
stored in that operand dtype: T, W, U, Vn, the states entering each chunk, their gradients and dW.
The state carried through a scan, the final state and the other gradients are fp32.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from .. import _common
from .._common import (apply, cdiv, check_chunk_size, check_cu_seqlens, check_device, check_head_dim, check_scale,
                       chunk_grid, fp32_products, interpreter_upcast, next_pow2, seq_bounds, sm_count, stand_in,
                       tensor_descriptors)
from .._tl import batch_place, chunk_head, chunk_span, state_tile, store_chunk, tile_offsets
from .._tl import LOG2E, log_decay
from .._tl import exp_units as _exp
from ..diag.chunk import chunk_layout
from .recurrent import _check_qkv_dtype, _check_same, _need_float, _need_tensor

__all__ = ["chunk_delta", "ChunkDelta", "CHUNK_SIZES"]

CHUNK_SIZES = (16, 32, 64)
# sub-block of the UT inverse: the smallest tile tl.dot takes (a constexpr, so kernels may read it)
BC = tl.constexpr(16)


def _empty(*shape, dtype, device) -> Tensor:
    """Every buffer the kernels write goes through here (tests poison it with NaN)."""
    return torch.empty(*shape, dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------
# building blocks (also meant for other chunked delta-like kernels)
# --------------------------------------------------------------------------------------------

@triton.jit
def _load_gates(g, rows, m, i_h, H: tl.constexpr, GATED: tl.constexpr):
    """A chunk's log decays g over ``rows`` (log_decay: fp32, floored; masked rows 0); zeros, nothing loaded,
    without a gate."""
    if GATED:
        return log_decay(tl.load(g + rows * H + i_h, mask=m, other=0.0))
    else:
        return tl.zeros([rows.shape[0]], dtype=tl.float32)


@triton.jit
def _sum_gates(b_g, off, GATED: tl.constexpr):
    """Cumulative log decay ``off`` + Σ b_g (loaded by _load_gates) as an fp32 pair (hi, lo), and the total.

    GATED = 1 (fp32 inputs): the cumsum in fp64 — with strong decays G reaches −1000 inside a chunk, where
    fp32 keeps only ~1e-4 of absolute precision; the pair keeps differences G_i − G_j (see _gdiff)
    accurate to fp32 relative error. GATED = 2 (16-bit inputs, whose own rounding is 4e-3): an fp32
    cumsum and lo = 0. GATED = 0: zeros, nothing summed.
    """
    if GATED == 1:
        b_g = b_g.to(tl.float64)
        G = tl.cumsum(b_g, axis=0) + off
        hi = G.to(tl.float32)
        return hi, (G - hi.to(tl.float64)).to(tl.float32), off + tl.sum(b_g, axis=0)
    elif GATED == 2:
        b_g = b_g.to(tl.float32)
        return tl.cumsum(b_g, axis=0) + off, tl.zeros_like(b_g), off + tl.sum(b_g, axis=0)
    else:
        return b_g, b_g, off + tl.sum(b_g, axis=0)


@triton.jit
def _cum_gates(g, rows, m, i_h, off, H: tl.constexpr, GATED: tl.constexpr, EX2: tl.constexpr = 0):
    """Cumulative log decay ``off`` + Σ g over ``rows`` (masked rows add 0; zeros without a gate), as
    _sum_gates gives it; with EX2 (16-bit inputs' gates) in log2 units, ``off`` too."""
    b_g = _load_gates(g, rows, m, i_h, H, GATED)
    if EX2:
        b_g = b_g * LOG2E
    return _sum_gates(b_g, off, GATED)


@triton.jit
def _gamma(b_G, b_Gl, BT: tl.constexpr, STRICT: tl.constexpr, GATED: tl.constexpr, EX2: tl.constexpr = 0):
    """Γ_ij = e^{G_i − G_j} for i ≥ j (i > j if STRICT), 0 elsewhere; without a gate, the mask alone.
    EX2 > 0: G in log2 units, Γ_ij = 2^{G_i − G_j} (see _exp)."""
    o = tl.arange(0, BT)
    if STRICT:
        keep = o[:, None] > o[None, :]
    else:
        keep = o[:, None] >= o[None, :]
    if GATED == 2:   # (no lo parts: adding their zero difference would cost an add an element)
        return _exp(tl.where(keep, b_G[:, None] - b_G[None, :], float("-inf")), EX2)
    elif GATED:
        return _exp(tl.where(keep, _gdiff(b_G[:, None], b_Gl[:, None], b_G[None, :], b_Gl[None, :]),
                             float("-inf")), EX2)
    else:
        return tl.where(keep, 1.0, 0.0)


@triton.jit
def _hilo(x):
    """An fp64 value as an fp32 pair (hi, lo)."""
    hi = x.to(tl.float32)
    return hi, (x - hi.to(tl.float64)).to(tl.float32)


@triton.jit
def _gdiff(a_hi, a_lo, b_hi, b_lo):
    """a − b for values held as (hi, lo) pairs: exact hi − hi for close values, plus the small parts."""
    return (a_hi - b_hi) + (a_lo - b_lo)


@triton.jit
def _chunk_gates(g, rows, m, i_h, H: tl.constexpr, GATED: tl.constexpr):
    """(G, G_lo, G_L, G_L_lo): a chunk's cumulative log decay and its total, as (hi, lo) pairs."""
    return _gates_of(_load_gates(g, rows, m, i_h, H, GATED), GATED)


@triton.jit
def _gates_of(b_g, GATED: tl.constexpr):
    """_chunk_gates from the chunk's log decays as _load_gates loaded them."""
    b_G, b_Gl, tot = _sum_gates(b_g, 0.0, GATED)
    if GATED == 1:
        b_L, b_Ll = _hilo(tot)
    else:
        b_L, b_Ll = tot, tot * 0.0
    return b_G, b_Gl, b_L, b_Ll


@triton.jit
def _excl_cumsum(r, N: tl.constexpr):
    """Σ_{b<j} r_b for every j, summing only those terms (an inclusive cumsum minus r_j cancels)."""
    o = tl.arange(0, N)
    return tl.sum(tl.where(o[:, None] < o[None, :], r[:, None], 0.0), axis=0)


@triton.jit
def _straddle(E, N: tl.constexpr, PREC: tl.constexpr):
    """Σ_{a ≥ j > b} E_ab for every j: what the decays e^{G_a − G_b} (which hold g_j exactly when
    b < j ≤ a) give to the gradient of g_j, from E = ∂L/∂(decayed entry) ⊙ entry."""
    o = tl.arange(0, N)
    X = tl.dot(E, tl.where(o[:, None] < o[None, :], 1.0, 0.0), input_precision=PREC)   # Σ_{b<j} E_ab
    return tl.sum(tl.where(o[:, None] >= o[None, :], X, 0.0), axis=0)


@triton.jit
def _inv_unit_lower(A, N: tl.constexpr):
    """(I + A)⁻¹ for a strictly lower-triangular N × N block A, by forward substitution.

    Row i of L = (I + A)⁻¹ − I is −A_i − Σ_{j<i} A_ij L_j; rows are replaced one at a time, so when
    row i is formed every row it reads is final (and A_ij = 0 for j ≥ i masks the rest).
    """
    o = tl.arange(0, N)
    L = -A
    for i in tl.static_range(1, N):
        sel = o[:, None] == i
        row = tl.sum(tl.where(sel, L, 0.0), axis=0)             # −A_i
        row = row + tl.sum(row[:, None] * L, axis=0)
        L = tl.where(sel, row[None, :], L)
    return L + tl.where(o[:, None] == o[None, :], 1.0, 0.0)


@triton.jit
def _inv_unit_lower_pow(A, N: tl.constexpr, PREC: tl.constexpr):
    """(I + A)⁻¹ for a strictly lower-triangular 16 × 16 block A as (I − A)(I + A²)(I + A⁴)(I + A⁸):
    A¹⁶ = 0, so the product is the whole series Σ (−A)ᵏ, in six matrix products instead of fifteen
    dependent row updates."""
    o = tl.arange(0, N)
    A2 = tl.dot(A, A, input_precision=PREC)
    A4 = tl.dot(A2, A2, input_precision=PREC)
    A8 = tl.dot(A4, A4, input_precision=PREC)
    X = tl.where(o[:, None] == o[None, :], 1.0, 0.0) - A
    X = X + tl.dot(X, A2, input_precision=PREC)
    X = X + tl.dot(X, A4, input_precision=PREC)
    return X + tl.dot(X, A8, input_precision=PREC)


@triton.jit
def _inv_block(A, N: tl.constexpr, PREC: tl.constexpr, POW: tl.constexpr):
    """(I + A)⁻¹ of a diagonal block, by powers (POW) or by forward substitution."""
    if POW:
        return _inv_unit_lower_pow(A, N, PREC)
    else:
        return _inv_unit_lower(A, N)


@triton.jit
def _gram_block(k, beta, r_a, m_a, G_a, Gl_a, r_b, m_b, G_b, Gl_b, i_h, H: tl.constexpr, K: tl.constexpr,
                BK: tl.constexpr, N: tl.constexpr, DIAG: tl.constexpr, PREC: tl.constexpr,
                GATED: tl.constexpr, EX2: tl.constexpr = 0):
    """Block (a, b) of A = strict_lower(diag(β) K Kᵀ ⊙ Γ): rows r_a, columns r_b of one chunk."""
    acc = tl.zeros([N, N], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        b_ka = tl.load(k + (r_a[:, None] * H + i_h) * K + o_k[None, :], mask=m_a[:, None] & m_k[None, :],
                       other=0.0)
        b_kb = tl.load(k + (r_b[:, None] * H + i_h) * K + o_k[None, :], mask=m_b[:, None] & m_k[None, :],
                       other=0.0)
        acc += tl.dot(b_ka, tl.trans(b_kb), input_precision=PREC)
    return _gram_finish(acc, beta, r_a, m_a, G_a, Gl_a, G_b, Gl_b, i_h, H, N, DIAG, GATED, EX2)


@triton.jit
def _key_rows(k, r, m, i_h, H: tl.constexpr, K: tl.constexpr, KP: tl.constexpr, ONCE: tl.constexpr):
    """Rows r of k as one [N, KP] tile (ONCE; KP: K padded), else nothing (0)."""
    if ONCE:
        o_k = tl.arange(0, KP)
        return tl.load(k + (r[:, None] * H + i_h) * K + o_k[None, :], mask=m[:, None] & (o_k < K)[None, :],
                       other=0.0)
    else:
        return 0


@triton.jit
def _gram(k, b_ka, b_kb, beta, r_a, m_a, G_a, Gl_a, r_b, m_b, G_b, Gl_b, i_h, H: tl.constexpr, K: tl.constexpr,
          BK: tl.constexpr, N: tl.constexpr, DIAG: tl.constexpr, PREC: tl.constexpr, GATED: tl.constexpr,
          ONCE: tl.constexpr, EX2: tl.constexpr = 0):
    """_gram_block, from the key rows already loaded (b_ka, b_kb from _key_rows) with ONCE."""
    if ONCE:
        acc = tl.dot(b_ka, tl.trans(b_kb), input_precision=PREC)
        return _gram_finish(acc, beta, r_a, m_a, G_a, Gl_a, G_b, Gl_b, i_h, H, N, DIAG, GATED, EX2)
    else:
        return _gram_block(k, beta, r_a, m_a, G_a, Gl_a, r_b, m_b, G_b, Gl_b, i_h, H, K, BK, N, DIAG, PREC, GATED,
                           EX2)


@triton.jit
def _gram_finish(acc, beta, r_a, m_a, G_a, Gl_a, G_b, Gl_b, i_h, H: tl.constexpr, N: tl.constexpr,
                 DIAG: tl.constexpr, GATED: tl.constexpr, EX2: tl.constexpr = 0):
    """K Kᵀ's block ``acc`` times β of its rows and Γ, strictly lower on a diagonal block; EX2: the gates
    in log2 units, Γ through _exp (16-bit inputs: no lo parts)."""
    b_beta = tl.load(beta + r_a * H + i_h, mask=m_a, other=0.0).to(tl.float32)
    o = tl.arange(0, N)
    if EX2:
        d = G_a[:, None] - G_b[None, :]
        if DIAG:
            d = tl.where(o[:, None] > o[None, :], d, float("-inf"))
        return acc * b_beta[:, None] * _exp(d, EX2)
    elif GATED:
        d = _gdiff(G_a[:, None], Gl_a[:, None], G_b[None, :], Gl_b[None, :])
        if DIAG:
            d = tl.where(o[:, None] > o[None, :], d, float("-inf"))
        return acc * b_beta[:, None] * tl.exp(d)
    elif DIAG:
        return tl.where(o[:, None] > o[None, :], acc * b_beta[:, None], 0.0)
    else:
        return acc * b_beta[:, None]


@triton.jit
def _store_block(Tm, blk, r, m, col0, i_h, H: tl.constexpr, BT: tl.constexpr, N: tl.constexpr):
    o = tl.arange(0, N)
    tl.store(Tm + (r[:, None] * H + i_h) * BT + col0 + o[None, :], blk.to(Tm.dtype.element_ty),
             mask=m[:, None])


@triton.jit
def _mm(a, b, DT: tl.constexpr, PREC: tl.constexpr):
    """a @ b accumulated in fp32, both operands cast to DT (the input dtype, or fp32)."""
    return tl.dot(a.to(DT), b.to(DT), input_precision=PREC)


# --------------------------------------------------------------------------------------------
# forward kernels
# --------------------------------------------------------------------------------------------

@triton.jit
def _ut_kernel(k, beta, g, Tm, offsets, chunk_indices,
               H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
               GATED: tl.constexpr, PREC: tl.constexpr, POW: tl.constexpr, KP: tl.constexpr = 16,
               ONCE: tl.constexpr = False, EX2: tl.constexpr = 0):
    """T = (I + strict_lower(β K Kᵀ ⊙ Γ))⁻¹ of one chunk, stored row by row as [T_total, H, BT] in Tm's
    dtype (the operand dtype, see _wy).

    The chunk is cut into NB = BT / 16 row blocks; with T_aa = (I + A_aa)⁻¹ (POW: a product of
    powers, else forward substitution) the blocks below the diagonal are
    T_ab = −T_aa Σ_{b ≤ c < a} A_ac T_cb (block forward substitution). ONCE: each row block's keys
    loaded once, as a [16, KP] tile (KP: K padded), for all the products A_ab it enters; else every
    block product loads its two blocks' keys again, BK columns at a time. EX2 (16-bit inputs' gates):
    the log decays summed in log2 units, Γ's exps through _exp (UT_EX2).
    """
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    i_n = tl.load(chunk_indices + i_c * 2).to(tl.int64)
    c = tl.load(chunk_indices + i_c * 2 + 1).to(tl.int64)
    bos = tl.load(offsets + i_n).to(tl.int64)
    eos = tl.load(offsets + i_n + 1).to(tl.int64)
    t0 = bos + c * BT
    o = tl.arange(0, BC)
    zero = tl.zeros([BC, BC], dtype=tl.float32)

    r0 = t0 + o
    m0 = r0 < eos
    k0 = _key_rows(k, r0, m0, i_h, H, K, KP, ONCE)
    G0, L0, s0 = _cum_gates(g, r0, m0, i_h, 0.0, H, GATED, EX2)
    A00 = _gram(k, k0, k0, beta, r0, m0, G0, L0, r0, m0, G0, L0, i_h, H, K, BK, BC, True, PREC, GATED, ONCE, EX2)
    T00 = _inv_block(A00, BC, PREC, POW)
    _store_block(Tm, T00, r0, m0, 0, i_h, H, BT, BC)
    if BT >= 32:
        r1 = r0 + BC
        m1 = r1 < eos
        k1 = _key_rows(k, r1, m1, i_h, H, K, KP, ONCE)
        G1, L1, s1 = _cum_gates(g, r1, m1, i_h, s0, H, GATED, EX2)
        A10 = _gram(k, k1, k0, beta, r1, m1, G1, L1, r0, m0, G0, L0, i_h, H, K, BK, BC, False, PREC, GATED, ONCE, EX2)
        A11 = _gram(k, k1, k1, beta, r1, m1, G1, L1, r1, m1, G1, L1, i_h, H, K, BK, BC, True, PREC, GATED, ONCE, EX2)
        T11 = _inv_block(A11, BC, PREC, POW)
        T10 = -tl.dot(T11, tl.dot(A10, T00, input_precision=PREC), input_precision=PREC)
        _store_block(Tm, zero, r0, m0, BC, i_h, H, BT, BC)
        _store_block(Tm, T10, r1, m1, 0, i_h, H, BT, BC)
        _store_block(Tm, T11, r1, m1, BC, i_h, H, BT, BC)
    if BT == 64:
        r2 = r0 + 2 * BC
        r3 = r0 + 3 * BC
        m2 = r2 < eos
        m3 = r3 < eos
        k2 = _key_rows(k, r2, m2, i_h, H, K, KP, ONCE)
        k3 = _key_rows(k, r3, m3, i_h, H, K, KP, ONCE)
        G2, L2, s2 = _cum_gates(g, r2, m2, i_h, s1, H, GATED, EX2)
        G3, L3, s3 = _cum_gates(g, r3, m3, i_h, s2, H, GATED, EX2)
        A20 = _gram(k, k2, k0, beta, r2, m2, G2, L2, r0, m0, G0, L0, i_h, H, K, BK, BC, False, PREC, GATED, ONCE, EX2)
        A21 = _gram(k, k2, k1, beta, r2, m2, G2, L2, r1, m1, G1, L1, i_h, H, K, BK, BC, False, PREC, GATED, ONCE, EX2)
        A22 = _gram(k, k2, k2, beta, r2, m2, G2, L2, r2, m2, G2, L2, i_h, H, K, BK, BC, True, PREC, GATED, ONCE, EX2)
        A30 = _gram(k, k3, k0, beta, r3, m3, G3, L3, r0, m0, G0, L0, i_h, H, K, BK, BC, False, PREC, GATED, ONCE, EX2)
        A31 = _gram(k, k3, k1, beta, r3, m3, G3, L3, r1, m1, G1, L1, i_h, H, K, BK, BC, False, PREC, GATED, ONCE, EX2)
        A32 = _gram(k, k3, k2, beta, r3, m3, G3, L3, r2, m2, G2, L2, i_h, H, K, BK, BC, False, PREC, GATED, ONCE, EX2)
        A33 = _gram(k, k3, k3, beta, r3, m3, G3, L3, r3, m3, G3, L3, i_h, H, K, BK, BC, True, PREC, GATED, ONCE, EX2)
        T22 = _inv_block(A22, BC, PREC, POW)
        T33 = _inv_block(A33, BC, PREC, POW)
        T21 = -tl.dot(T22, tl.dot(A21, T11, input_precision=PREC), input_precision=PREC)
        T20 = -tl.dot(T22, tl.dot(A20, T00, input_precision=PREC) + tl.dot(A21, T10, input_precision=PREC),
                      input_precision=PREC)
        T32 = -tl.dot(T33, tl.dot(A32, T22, input_precision=PREC), input_precision=PREC)
        T31 = -tl.dot(T33, tl.dot(A31, T11, input_precision=PREC) + tl.dot(A32, T21, input_precision=PREC),
                      input_precision=PREC)
        T30 = -tl.dot(T33, tl.dot(A30, T00, input_precision=PREC) + tl.dot(A31, T10, input_precision=PREC)
                      + tl.dot(A32, T20, input_precision=PREC), input_precision=PREC)
        _store_block(Tm, zero, r0, m0, 2 * BC, i_h, H, BT, BC)
        _store_block(Tm, zero, r0, m0, 3 * BC, i_h, H, BT, BC)
        _store_block(Tm, zero, r1, m1, 2 * BC, i_h, H, BT, BC)
        _store_block(Tm, zero, r1, m1, 3 * BC, i_h, H, BT, BC)
        _store_block(Tm, T20, r2, m2, 0, i_h, H, BT, BC)
        _store_block(Tm, T21, r2, m2, BC, i_h, H, BT, BC)
        _store_block(Tm, T22, r2, m2, 2 * BC, i_h, H, BT, BC)
        _store_block(Tm, zero, r2, m2, 3 * BC, i_h, H, BT, BC)
        _store_block(Tm, T30, r3, m3, 0, i_h, H, BT, BC)
        _store_block(Tm, T31, r3, m3, BC, i_h, H, BT, BC)
        _store_block(Tm, T32, r3, m3, 2 * BC, i_h, H, BT, BC)
        _store_block(Tm, T33, r3, m3, 3 * BC, i_h, H, BT, BC)


@triton.jit
def _wu_kernel(k, v, beta, g, Tm, w, u, offsets, chunk_indices,
               H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
               BV: tl.constexpr, GATED: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr,
               HEADS_INNER: tl.constexpr = False):
    """W = T diag(β e^G) K and U = T diag(β) V of one chunk."""
    i_c, i_h = chunk_head(0, HEADS_INNER)
    i_n = tl.load(chunk_indices + i_c * 2).to(tl.int64)
    c = tl.load(chunk_indices + i_c * 2 + 1).to(tl.int64)
    bos = tl.load(offsets + i_n).to(tl.int64)
    eos = tl.load(offsets + i_n + 1).to(tl.int64)
    rows = bos + c * BT + tl.arange(0, BT)
    m_t = rows < eos
    b_T = tl.load(Tm + (rows[:, None] * H + i_h) * BT + tl.arange(0, BT)[None, :], mask=m_t[:, None],
                  other=0.0)
    b_beta = tl.load(beta + rows * H + i_h, mask=m_t, other=0.0).to(tl.float32)
    b_G, b_Gl, b_L, b_Ll = _chunk_gates(g, rows, m_t, i_h, H, GATED)
    b_xs = b_beta * tl.exp(b_G + b_Gl)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m = m_t[:, None] & (o_k < K)[None, :]
        p = (rows[:, None] * H + i_h) * K + o_k[None, :]
        b_k = tl.load(k + p, mask=m, other=0.0).to(tl.float32)
        b_w = _mm(b_T, b_k * b_xs[:, None], DT, PREC)
        tl.store(w + p, b_w.to(w.dtype.element_ty), mask=m)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m = m_t[:, None] & (o_v < V)[None, :]
        p = (rows[:, None] * H + i_h) * V + o_v[None, :]
        b_v = tl.load(v + p, mask=m, other=0.0).to(tl.float32)
        b_u = _mm(b_T, b_v * b_beta[:, None], DT, PREC)
        tl.store(u + p, b_u.to(u.dtype.element_ty), mask=m)


@triton.jit
def _q_tile(q, q_d, TMA: tl.constexpr, i_b, t, i_h, r_k, o_tk, m_tk, BT: tl.constexpr, KP: tl.constexpr):
    """A chunk's [BT, KP] query tile (rows t… of sequence i_b): through the descriptor q_d with TMA, else
    the pointer offsets r_k + o_tk (0 where masked)."""
    if TMA:
        return q_d.load([i_b, t, i_h, 0]).reshape(BT, KP)
    else:
        return tl.load(q + r_k + o_tk, mask=m_tk, other=0.0)


@triton.jit
def _state_kernel(k, w, u, g, h0, h, vn, ht, offsets, chunk_offsets, MAXC,
                  H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, KP: tl.constexpr,
                  BV: tl.constexpr, GATED: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
                  DT: tl.constexpr, PREC: tl.constexpr, q, o, scale, OUT: tl.constexpr, STORE_H: tl.constexpr,
                  v, beta, Tm, WU: tl.constexpr, ZERO_U: tl.constexpr = False, EYE: tl.constexpr = False,
                  pt=None, TRANS: tl.constexpr = False, TMA: tl.constexpr = False, q_d=None, k_d=None, v_d=None,
                  o_d=None, T_seq=1, KS: tl.constexpr = False, KS_TRANS: tl.constexpr = False,
                  t_d=None, T_TMA: tl.constexpr = False, AHEAD: tl.constexpr = False, EX2: tl.constexpr = 0,
                  KD16: tl.constexpr = False, MERGE_KQ: tl.constexpr = False):
    """Walk one sequence's chunks: store each entering state, the pseudo-values Vn = U − W S and S'.

    With OUT it also writes the outputs, as _output_kernel would from the stored S and Vn (the
    one-pass forward); then S and Vn are stored only with STORE_H, for a backward. With WU it makes
    each chunk's W and U itself from T, k, v and β, as _wu_kernel would store them (WU_IN_SCAN); with
    KS too, outside the transitions' scans, Vn = T diag(β) (V − diag(e^G) K S) without them (VN_FROM_KS);
    with KS_TRANS in those scans as well, and Pn = −T diag(β e^G) K P (TRANS_FROM_KS).
    ZERO_U and EYE (V = K): the chunks' transition instead, S' = (e^{G_L} I − (K ⊙ e^{G_L − G})ᵀ W) S
    from S = I, into ht (a segment's, for _forward_segments). TRANS: both at once — the state into ht
    and, in a second [K, BV] tile (columns i_v·BV… of K), the transition into ``pt``, sharing each
    chunk's loads of k, W (or its making) and the gates. TMA (with OUT, without STORE_H): k, q, v and o
    through the descriptors k_d, q_d, v_d, o_d of an equal-length batch [B, T_seq, H, ·] (FUSED_TMA);
    T_TMA (with TMA): T through t_d too (PASS_T_TMA). AHEAD (with W, U from K S): each chunk's β and
    gates loaded a chunk ahead (PASS_AHEAD). EX2 > 0: the chunk's log decays in log2 units, each exp a
    2^x (_exp); KD16 (bf16 inputs): the decayed keys K ⊙ e^{G_L − G} a bf16 product (PASS_EX2).
    MERGE_KQ (with OUT and Vn from K S): K S and Q S as one product of the stacked [K; Q] tile
    (PASS_MERGE_KQ)."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos, c0, nc = chunk_span(offsets, chunk_offsets, i_n)
    o_k = tl.arange(0, KP)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v, m_kv, p_state, b_S = state_tile(h0, i_nh, o_k, o_v, K, V, KP, BV, HAS_H0)
    if EYE:
        b_S = tl.where(o_k[:, None] == o_v[None, :], 1.0, 0.0)
    if TRANS:   # the transition's column tile: from I, with no values (as ZERO_U and EYE)
        o_p = i_v * BV + tl.arange(0, BV)
        b_P = tl.where(o_k[:, None] == o_p[None, :], 1.0, 0.0)
    o_tk, o_tv = tile_offsets(H, K, V, BT, o_k, o_v)
    i_b, t0 = batch_place(bos, T_seq)
    # Vn (and Pn) from K S (and K P), without W and U: VN_FROM_KS, TRANS_FROM_KS
    FROM_KS: tl.constexpr = WU and KS and (KS_TRANS or not (TRANS or ZERO_U))
    MKQ: tl.constexpr = MERGE_KQ and FROM_KS and OUT
    if AHEAD:   # chunk 0's β and gates (the loop loads each next chunk's: small loads it cannot pipeline)
        rows = bos + tl.arange(0, BT)
        m_t = (rows < eos) & (nc > 0)
        b_beta_next = tl.load(beta + rows * H + i_h, mask=m_t, other=0.0)
        b_g_next = _load_gates(g, rows, m_t, i_h, H, GATED)
    # chunks past a short sequence's end are masked no-ops (loop bounds must be plain ints)
    for c in range(0, MAXC):
        ok = c < nc
        if STORE_H:
            tl.store(h + ((c0 + c) * H + i_h) * K * V + p_state, b_S, mask=m_kv & ok)
        c_start = bos + c * BT
        rows = c_start + tl.arange(0, BT)
        m_t = (rows < eos) & ok
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        r_k, r_v = (c_start * H + i_h) * K, (c_start * H + i_h) * V   # the chunk's first row
        if AHEAD:
            b_beta_here, b_g_here = b_beta_next, b_g_next
            m_next = (rows + BT < eos) & (c + 1 < nc)
            b_beta_next = tl.load(beta + (rows + BT) * H + i_h, mask=m_next, other=0.0)
            b_g_next = _load_gates(g, rows + BT, m_next, i_h, H, GATED)
        if TMA:
            b_kr = k_d.load([i_b, t0 + c * BT, i_h, 0]).reshape(BT, KP)
        else:
            b_kr = tl.load(k + r_k + o_tk, mask=m_tk, other=0.0)
        if AHEAD:
            b_G, b_Gl, b_L, b_Ll = _gates_of(b_g_here, GATED)
        else:
            b_G, b_Gl, b_L, b_Ll = _chunk_gates(g, rows, m_t, i_h, H, GATED)
        if EX2:   # log decays in log2 units, for _exp (16-bit inputs' lo parts are zeros)
            b_G, b_Gl = b_G * LOG2E, b_Gl * LOG2E
            b_L, b_Ll = b_L * LOG2E, b_Ll * LOG2E
        if FROM_KS:
            # Vn = T diag(β) (V − diag(e^G) K S) (VN_FROM_KS); Pn = −T diag(β e^G) K P (TRANS_FROM_KS)
            o_tt = tl.arange(0, BT)
            if T_TMA:
                b_T = t_d.load([i_b, t0 + c * BT, i_h, 0]).reshape(BT, BT)
            else:
                b_T = tl.load(Tm + (c_start * H + i_h) * BT + o_tt[:, None] * (H * BT) + o_tt[None, :],
                              mask=m_t[:, None], other=0.0)
            if AHEAD:
                b_beta = b_beta_here.to(tl.float32)
            else:
                b_beta = tl.load(beta + rows * H + i_h, mask=m_t, other=0.0).to(tl.float32)
            if MKQ:   # rows 0…BT−1 of the stacked tile are K, BT…2BT−1 Q: one wait on the product, not two
                b_q = _q_tile(q, q_d, TMA, i_b, t0 + c * BT, i_h, r_k, o_tk, m_tk, BT, KP)
                b_kqs = _mm(tl.reshape(tl.permute(tl.join(b_kr, b_q), (2, 0, 1)), (2 * BT, KP)), b_S, DT, PREC)
                b_ks, b_qs = tl.split(tl.permute(tl.reshape(b_kqs, (2, BT, BV)), (1, 2, 0)))
            else:
                b_ks = _mm(b_kr, b_S, DT, PREC)
            if GATED:
                b_ks = b_ks * _exp(b_G + b_Gl, EX2)[:, None]
            if ZERO_U:
                b_x = -b_ks
            else:
                if TMA:
                    b_v = v_d.load([i_b, t0 + c * BT, i_h, i_v * BV]).reshape(BT, BV).to(tl.float32)
                else:
                    b_v = tl.load(v + r_v + o_tv, mask=m_tv, other=0.0).to(tl.float32)
                b_x = b_v - b_ks
            b_vn = _mm(b_T, b_x * b_beta[:, None], DT, PREC).to(vn.dtype.element_ty)
            if TRANS:
                b_kp = _mm(b_kr, b_P, DT, PREC) * b_beta[:, None]
                if GATED:
                    b_kp = b_kp * _exp(b_G + b_Gl, EX2)[:, None]
                b_pn = (-_mm(b_T, b_kp, DT, PREC)).to(vn.dtype.element_ty)
        elif WU:   # W = T diag(β e^G) K, U = T diag(β) V, rounded as the stored ones would be
            o_tt = tl.arange(0, BT)
            b_T = tl.load(Tm + (c_start * H + i_h) * BT + o_tt[:, None] * (H * BT) + o_tt[None, :],
                          mask=m_t[:, None], other=0.0)
            b_beta = tl.load(beta + rows * H + i_h, mask=m_t, other=0.0).to(tl.float32)
            b_w = _mm(b_T, b_kr.to(tl.float32) * (b_beta * _exp(b_G + b_Gl, EX2))[:, None], DT, PREC).to(DT)
            if ZERO_U:
                b_u = tl.zeros([BT, BV], dtype=tl.float32)
            else:
                if TMA:
                    b_v = v_d.load([i_b, t0 + c * BT, i_h, i_v * BV]).reshape(BT, BV).to(tl.float32)
                else:
                    b_v = tl.load(v + r_v + o_tv, mask=m_tv, other=0.0).to(tl.float32)
                b_u = _mm(b_T, b_v * b_beta[:, None], DT, PREC).to(DT).to(tl.float32)
        else:
            b_w = tl.load(w + r_k + o_tk, mask=m_tk, other=0.0)
            if ZERO_U:
                b_u = tl.zeros([BT, BV], dtype=tl.float32)
            else:
                b_u = tl.load(u + r_v + o_tv, mask=m_tv, other=0.0).to(tl.float32)
        if not FROM_KS:
            b_vn = (b_u - _mm(b_w, b_S, DT, PREC)).to(vn.dtype.element_ty)
            if TRANS:   # Pn = 0 − W P, rounded as the transitions' own scan rounds its Vn
                b_pn = (-_mm(b_w, b_P, DT, PREC)).to(vn.dtype.element_ty)
        if STORE_H:
            tl.store(vn + r_v + o_tv, b_vn, mask=m_tv)
        if OUT:   # O = s [(Q ⊙ e^G) S + (Q Kᵀ ⊙ Γ) Vn], from the state entering the chunk
            if not MKQ:
                b_q = _q_tile(q, q_d, TMA, i_b, t0 + c * BT, i_h, r_k, o_tk, m_tk, BT, KP)
            b_A = tl.dot(b_q, tl.trans(b_kr), input_precision=PREC) * _gamma(b_G, b_Gl, BT, False, GATED, EX2)
            if MKQ:
                b_o = b_qs
            else:
                b_o = _mm(b_q, b_S, DT, PREC)
            if GATED:
                b_o = b_o * _exp(b_G + b_Gl, EX2)[:, None]
            b_o += _mm(b_A, b_vn, DT, PREC)
            store_chunk(o, o_d, (b_o * scale).to(o.dtype.element_ty), TMA, i_b, t0, c, c_start, i_h, i_v, m_t,
                        m_v, o_tv, H, V, BT, BV)
        # the state moves on with the stored (rounded) Vn: what the outputs see. Without a gate the
        # keys enter as loaded (the decay factors are all 1: no fp32 copy of the tile, no exp)
        if GATED:
            if KD16:   # the factor rounded to bf16 (fp32's exponent range), then a packed bf16 multiply
                b_kd = b_kr * _exp(_gdiff(b_L, b_Ll, b_G, b_Gl), EX2)[:, None].to(tl.bfloat16)
            else:
                b_kd = b_kr.to(tl.float32) * _exp(_gdiff(b_L, b_Ll, b_G, b_Gl), EX2)[:, None]
            b_S = b_S * _exp(b_L + b_Ll, EX2) + _mm(tl.trans(b_kd), b_vn, DT, PREC)
            if TRANS:
                b_P = b_P * _exp(b_L + b_Ll, EX2) + _mm(tl.trans(b_kd), b_pn, DT, PREC)
        else:
            b_S += _mm(tl.trans(b_kr), b_vn, DT, PREC)
            if TRANS:
                b_P += _mm(tl.trans(b_kr), b_pn, DT, PREC)
    if STORE_HT:
        tl.store(ht + i_nh.to(tl.int64) * K * V + p_state, b_S, mask=m_kv)
    if TRANS:
        tl.store(pt + i_nh.to(tl.int64) * K * K + o_k[:, None] * K + o_p[None, :], b_P,
                 mask=m_k[:, None] & (o_p < K)[None, :])


@triton.jit
def _segment_chain_kernel(P, dS, h0, S_in, ht, NSEG, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                          BR: tl.constexpr, BV: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr,
                          REVERSE: tl.constexpr = False, PREC: tl.constexpr = "ieee"):
    """The states entering a sequence's segments in order: S ← P_j S + dS_j from its initial state
    (P_j a segment's transition, dS_j its state from zero); the last one leaving it into ht. REVERSE
    (the backward): last segment first with P_jᵀ, from the final state's gradient (h0), each segment's
    outgoing-state gradient into S_in and the initial state's into ht.

    In [BR, BR] × [BR, BV] blocks through S_in itself (each state is stored there anyway): a whole
    [K, K] transition in registers spilled kilobytes (ptxas sm_90)."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    o_r = tl.arange(0, BR)
    step = -H if REVERSE else H   # from one segment's index to the next one's in the walk
    first = ((i_n * NSEG + (NSEG - 1 if REVERSE else 0)) * H + i_h).to(tl.int64)
    for r0 in range(0, K, BR):
        rows = r0 + o_r
        p = rows[:, None] * V + o_v[None, :]
        m = (rows < K)[:, None] & m_v[None, :]
        b = tl.zeros([BR, BV], dtype=tl.float32)
        if HAS_H0:
            b += tl.load(h0 + i_nh.to(tl.int64) * K * V + p, mask=m, other=0.0)
        tl.store(S_in + first * K * V + p, b, mask=m)
    tl.debug_barrier()   # the next step reads every row this one stored
    for j in range(0, NSEG):
        seg = first + j * step
        for r0 in range(0, K, BR):
            rows = r0 + o_r
            p = rows[:, None] * V + o_v[None, :]
            m = (rows < K)[:, None] & m_v[None, :]
            acc = tl.load(dS + seg * K * V + p, mask=m, other=0.0)
            for c0 in range(0, K, BR):
                cols = c0 + o_r
                if REVERSE:
                    p_P = cols[None, :] * K + rows[:, None]
                else:
                    p_P = rows[:, None] * K + cols[None, :]
                b_P = tl.load(P + seg * K * K + p_P, mask=(rows < K)[:, None] & (cols < K)[None, :], other=0.0)
                b_S = tl.load(S_in + seg * K * V + cols[:, None] * V + o_v[None, :],
                              mask=(cols < K)[:, None] & m_v[None, :], other=0.0)
                # fp32-accurate products (CHAIN_PRODUCTS): the chain multiplies every segment's transition
                acc += tl.dot(b_P, b_S, input_precision=PREC)
            tl.store(S_in + (seg + step) * K * V + p, acc, mask=m & (j + 1 < NSEG))
            if STORE_HT:
                tl.store(ht + i_nh.to(tl.int64) * K * V + p, acc, mask=m & (j + 1 == NSEG))
        tl.debug_barrier()


@triton.jit
def _output_kernel(q, k, g, h, vn, o, offsets, chunk_indices, scale,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr, GATED: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr):
    """O = s [(Q ⊙ e^G) S + (Q Kᵀ ⊙ Γ) Vn] of one chunk and value tile."""
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n = tl.load(chunk_indices + i_c * 2).to(tl.int64)
    c = tl.load(chunk_indices + i_c * 2 + 1).to(tl.int64)
    bos = tl.load(offsets + i_n).to(tl.int64)
    eos = tl.load(offsets + i_n + 1).to(tl.int64)
    rows = bos + c * BT + tl.arange(0, BT)
    m_t = rows < eos
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    b_A = tl.zeros([BT, BT], dtype=tl.float32)
    p_h = h + (i_c.to(tl.int64) * H + i_h) * K * V
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        b_q = tl.load(q + (rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.0)
        b_k = tl.load(k + (rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.0)
        b_h = tl.load(p_h + o_k[:, None] * V + o_v[None, :], mask=m_k[:, None] & m_v[None, :], other=0.0)
        b_o += _mm(b_q, b_h, DT, PREC)
        b_A += tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
    b_G, b_Gl, b_L, b_Ll = _chunk_gates(g, rows, m_t, i_h, H, GATED)
    b_A = b_A * _gamma(b_G, b_Gl, BT, False, GATED)
    p_tv = (rows[:, None] * H + i_h) * V + o_v[None, :]
    m_tv = m_t[:, None] & m_v[None, :]
    b_vn = tl.load(vn + p_tv, mask=m_tv, other=0.0)
    b_o = b_o * tl.exp(b_G + b_Gl)[:, None] + _mm(b_A, b_vn, DT, PREC)
    tl.store(o + p_tv, (b_o * scale).to(o.dtype.element_ty), mask=m_tv)


# --------------------------------------------------------------------------------------------
# backward kernels
# --------------------------------------------------------------------------------------------

@triton.jit
def _dvn_local_kernel(q, k, g, do, dvn, offsets, chunk_indices, scale,
                      H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                      BK: tl.constexpr, BV: tl.constexpr, GATED: tl.constexpr, DT: tl.constexpr,
                      PREC: tl.constexpr, HEADS_INNER: tl.constexpr = False):
    """The chunk-local part of dVn: s (Q Kᵀ ⊙ Γ)ᵀ dO (the state part is added by _dstate_kernel)."""
    i_v = tl.program_id(0)
    i_c, i_h = chunk_head(1, HEADS_INNER)
    i_n = tl.load(chunk_indices + i_c * 2).to(tl.int64)
    c = tl.load(chunk_indices + i_c * 2 + 1).to(tl.int64)
    bos = tl.load(offsets + i_n).to(tl.int64)
    eos = tl.load(offsets + i_n + 1).to(tl.int64)
    rows = bos + c * BT + tl.arange(0, BT)
    m_t = rows < eos
    o_v = i_v * BV + tl.arange(0, BV)
    m_tv = m_t[:, None] & (o_v < V)[None, :]
    b_A = tl.zeros([BT, BT], dtype=tl.float32)      # Q Kᵀ
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        b_q = tl.load(q + (rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.0)
        b_k = tl.load(k + (rows[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.0)
        b_A += tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
    b_G, b_Gl, b_L, b_Ll = _chunk_gates(g, rows, m_t, i_h, H, GATED)
    b_A = b_A * _gamma(b_G, b_Gl, BT, False, GATED) * scale
    p_tv = (rows[:, None] * H + i_h) * V + o_v[None, :]
    b_do = tl.load(do + p_tv, mask=m_tv, other=0.0)
    tl.store(dvn + p_tv, _mm(tl.trans(b_A), b_do, DT, PREC), mask=m_tv)


@triton.jit
def _dstate_kernel(q, k, w, g, do, dvn, dvno, dht, dh, dh0, offsets, chunk_offsets, MAXC, scale,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, KP: tl.constexpr,
                   BV: tl.constexpr, GATED: tl.constexpr, HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
                   DT: tl.constexpr, PREC: tl.constexpr, STORE: tl.constexpr = True):
    """Walk the chunks last to first: dh[c] = gradient of the state leaving chunk c; completes dVn
    (read from dvn, written to dvno: the same buffer unless dVn is kept in bf16). Without STORE only
    the gradient reaching the first chunk's state (into dh0: a segment's, for _dstate_segments)."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos, c0, nc = chunk_span(offsets, chunk_offsets, i_n)
    o_k = tl.arange(0, KP)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v, m_kv, p_state, b_dS = state_tile(dht, i_nh, o_k, o_v, K, V, KP, BV, HAS_DHT)
    o_tk, o_tv = tile_offsets(H, K, V, BT, o_k, o_v)
    for i in range(0, MAXC):
        c = nc - 1 - i
        ok = c >= 0
        if STORE:
            tl.store(dh + ((c0 + c) * H + i_h) * K * V + p_state, b_dS, mask=m_kv & ok)
        c_start = bos + c * BT
        rows = c_start + tl.arange(0, BT)
        m_t = (rows >= bos) & (rows < eos) & ok
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        r_k, r_v = (c_start * H + i_h) * K, (c_start * H + i_h) * V   # the chunk's first row
        b_G, b_Gl, b_L, b_Ll = _chunk_gates(g, rows, m_t, i_h, H, GATED)
        b_k = tl.load(k + r_k + o_tk, mask=m_tk, other=0.0).to(tl.float32)
        b_kd = b_k * tl.exp(_gdiff(b_L, b_Ll, b_G, b_Gl))[:, None]
        b_dvn = tl.load(dvn + r_v + o_tv, mask=m_tv, other=0.0) + _mm(b_kd, b_dS, DT, PREC)
        if STORE:
            tl.store(dvno + r_v + o_tv, b_dvn.to(dvno.dtype.element_ty), mask=m_tv)
        b_q = tl.load(q + r_k + o_tk, mask=m_tk, other=0.0).to(tl.float32) * (scale * tl.exp(b_G + b_Gl))[:, None]
        b_w = tl.load(w + r_k + o_tk, mask=m_tk, other=0.0)
        b_do = tl.load(do + r_v + o_tv, mask=m_tv, other=0.0)
        b_dS = b_dS * tl.exp(b_L + b_Ll) + _mm(tl.trans(b_q), b_do, DT, PREC) - _mm(tl.trans(b_w), b_dvn, DT, PREC)
    if STORE_DH0:
        tl.store(dh0 + i_nh.to(tl.int64) * K * V + p_state, b_dS, mask=m_kv)


@triton.jit
def _dqkw_kernel(q, k, g, h, dh, do, vn, dvn, dq, dk, dw, dgp, offsets, chunk_indices, scale, NT,
                 H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                 BV: tl.constexpr, GATED: tl.constexpr, DT: tl.constexpr, PREC: tl.constexpr,
                 HEADS_INNER: tl.constexpr = False):
    """dQ, the output and state parts of dK, dW = −dVn Sᵀ, and this key tile's share of dg.

    dg_j from the output and the state leaving the chunk: Σ_{i ≥ j} of the e^{G_i} S terms,
    the straddle sums of the intra-chunk decays, Σ_{b < j} of the e^{G_L − G_b} terms and
    ⟨dS', e^{G_L} S⟩. Each part sums only terms that hold g_j: the shortcut through
    q·dq − k·dk and one reverse cumsum is exact too, but cancels O(1) terms down to a dg that
    strong decays make ~1e-4, which costs fp32 three digits.
    """
    i_k = tl.program_id(0)
    i_c, i_h = chunk_head(1, HEADS_INNER)
    i_n = tl.load(chunk_indices + i_c * 2).to(tl.int64)
    c = tl.load(chunk_indices + i_c * 2 + 1).to(tl.int64)
    bos = tl.load(offsets + i_n).to(tl.int64)
    eos = tl.load(offsets + i_n + 1).to(tl.int64)
    t0 = bos + c * BT
    rows = t0 + tl.arange(0, BT)
    m_t = rows < eos
    o_k = i_k * BK + tl.arange(0, BK)
    m_k = o_k < K
    m_tk = m_t[:, None] & m_k[None, :]
    p_tk = (rows[:, None] * H + i_h) * K + o_k[None, :]
    p_state = (i_c.to(tl.int64) * H + i_h) * K * V
    b_dA = tl.zeros([BT, BT], dtype=tl.float32)     # dO Vnᵀ
    b_dqs = tl.zeros([BT, BK], dtype=tl.float32)    # dO Sᵀ
    b_dw = tl.zeros([BT, BK], dtype=tl.float32)     # −dVn Sᵀ
    b_dks = tl.zeros([BT, BK], dtype=tl.float32)    # Vn dS'ᵀ
    b_sl = tl.zeros([BK], dtype=tl.float32)         # Σ dS' ⊙ S over this key tile
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_tv = m_t[:, None] & m_v[None, :]
        p_tv = (rows[:, None] * H + i_h) * V + o_v[None, :]
        m_kv = m_k[:, None] & m_v[None, :]
        p_kv = p_state + o_k[:, None] * V + o_v[None, :]
        b_do = tl.load(do + p_tv, mask=m_tv, other=0.0)
        b_vn = tl.load(vn + p_tv, mask=m_tv, other=0.0)
        b_dvn = tl.load(dvn + p_tv, mask=m_tv, other=0.0)
        b_h = tl.load(h + p_kv, mask=m_kv, other=0.0)
        b_dh = tl.load(dh + p_kv, mask=m_kv, other=0.0)
        b_dA += _mm(b_do, tl.trans(b_vn), DT, PREC)
        b_dqs += _mm(b_do, tl.trans(b_h), DT, PREC)
        b_dw -= _mm(b_dvn, tl.trans(b_h), DT, PREC)
        b_dks += _mm(b_vn, tl.trans(b_dh), DT, PREC)
        b_sl += tl.sum(b_dh.to(tl.float32) * b_h.to(tl.float32), axis=1)
    b_G, b_Gl, b_L, b_Ll = _chunk_gates(g, rows, m_t, i_h, H, GATED)
    b_dA = b_dA * _gamma(b_G, b_Gl, BT, False, GATED) * scale
    b_q = tl.load(q + p_tk, mask=m_tk, other=0.0)
    b_k = tl.load(k + p_tk, mask=m_tk, other=0.0)
    b_dqs = b_dqs * (scale * tl.exp(b_G + b_Gl))[:, None]
    b_dq = b_dqs + _mm(b_dA, b_k, DT, PREC)
    b_dks = b_dks * tl.exp(_gdiff(b_L, b_Ll, b_G, b_Gl))[:, None]
    b_dk = _mm(tl.trans(b_dA), b_q, DT, PREC) + b_dks
    tl.store(dq + p_tk, b_dq, mask=m_tk)
    tl.store(dk + p_tk, b_dk, mask=m_tk)
    tl.store(dw + p_tk, b_dw.to(dw.dtype.element_ty), mask=m_tk)
    if GATED:
        b_a = tl.sum(b_q.to(tl.float32) * b_dqs, axis=1)            # e^{G_i} S terms of the output
        b_r = tl.sum(b_k.to(tl.float32) * b_dks, axis=1)            # e^{G_L − G_b} terms of S'
        b_E = b_dA * tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
        b_dg = (tl.cumsum(b_a, axis=0, reverse=True) + _excl_cumsum(b_r, BT) + _straddle(b_E, BT, PREC)
                + tl.exp(b_L + b_Ll) * tl.sum(b_sl, axis=0))
        tl.store(dgp + (i_k * NT + rows) * H + i_h, b_dg, mask=m_t)


@triton.jit
def _wy_bwd_kernel(k, v, beta, g, Tm, dvn, dw, dk, dko, dv, dbeta, dgp, dg, offsets, chunk_indices, NT,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr, NK: tl.constexpr, GATED: tl.constexpr, DT: tl.constexpr,
                   PREC: tl.constexpr, HEADS_INNER: tl.constexpr = False):
    """Through U = T βV, W = T β e^G K and T = (I + A)⁻¹: dV, dβ, the rest of dK, and dg."""
    i_c, i_h = chunk_head(0, HEADS_INNER)
    i_n = tl.load(chunk_indices + i_c * 2).to(tl.int64)
    c = tl.load(chunk_indices + i_c * 2 + 1).to(tl.int64)
    bos = tl.load(offsets + i_n).to(tl.int64)
    eos = tl.load(offsets + i_n + 1).to(tl.int64)
    rows = bos + c * BT + tl.arange(0, BT)
    m_t = rows < eos
    # only Tᵀ is used: read it transposed rather than transpose it in registers
    b_Tt = tl.load(Tm + (rows[None, :] * H + i_h) * BT + tl.arange(0, BT)[:, None], mask=m_t[None, :],
                   other=0.0).to(tl.float32)
    b_beta = tl.load(beta + rows * H + i_h, mask=m_t, other=0.0).to(tl.float32)
    b_G, b_Gl, b_L, b_Ll = _chunk_gates(g, rows, m_t, i_h, H, GATED)
    b_eG = tl.exp(b_G + b_Gl)
    b_xs = b_beta * b_eG
    b_dT = tl.zeros([BT, BT], dtype=tl.float32)
    b_KK = tl.zeros([BT, BT], dtype=tl.float32)
    b_db = tl.zeros([BT], dtype=tl.float32)
    b_dG = tl.zeros([BT], dtype=tl.float32)
    b_de = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        p_tv = (rows[:, None] * H + i_h) * V + o_v[None, :]
        b_du = tl.load(dvn + p_tv, mask=m_tv, other=0.0)
        b_v = tl.load(v + p_tv, mask=m_tv, other=0.0).to(tl.float32)
        b_dT += _mm(b_du, tl.trans(b_v * b_beta[:, None]), DT, PREC)
        b_tdu = _mm(b_Tt, b_du, DT, PREC)                         # gradient of βV
        tl.store(dv + p_tv, b_tdu * b_beta[:, None], mask=m_tv)
        b_db += tl.sum(b_tdu * b_v, axis=1)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        p_tk = (rows[:, None] * H + i_h) * K + o_k[None, :]
        b_k = tl.load(k + p_tk, mask=m_tk, other=0.0)
        b_dw = tl.load(dw + p_tk, mask=m_tk, other=0.0)
        b_dT += _mm(b_dw, tl.trans(b_k.to(tl.float32) * b_xs[:, None]), DT, PREC)
        b_KK += tl.dot(b_k, tl.trans(b_k), input_precision=PREC)
    # dA = −Tᵀ dT Tᵀ on the strict lower triangle; M = dA ⊙ Γ is the gradient of β_i k_i·k_j
    b_dA = -tl.dot(tl.dot(b_Tt, b_dT, input_precision=PREC), b_Tt, input_precision=PREC)
    b_M = b_dA * _gamma(b_G, b_Gl, BT, True, GATED)
    b_MK = b_M * b_KK
    b_db += tl.sum(b_MK, axis=1)
    if GATED:
        b_dG += _straddle(b_MK * b_beta[:, None], BT, PREC)        # from dA ⊙ A
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        m_tk = m_t[:, None] & (o_k < K)[None, :]
        p_tk = (rows[:, None] * H + i_h) * K + o_k[None, :]
        b_k = tl.load(k + p_tk, mask=m_tk, other=0.0).to(tl.float32)
        b_dw = tl.load(dw + p_tk, mask=m_tk, other=0.0)
        b_dx = _mm(b_Tt, b_dw, DT, PREC)                           # gradient of β e^G K
        b_dk = (tl.load(dk + p_tk, mask=m_tk, other=0.0) + b_dx * b_xs[:, None]
                + _mm(b_M, b_k, DT, PREC) * b_beta[:, None]
                + _mm(tl.trans(b_M), b_k * b_beta[:, None], DT, PREC))
        tl.store(dko + p_tk, b_dk.to(dko.dtype.element_ty), mask=m_tk)   # finished: the input dtype
        b_r = tl.sum(b_dx * b_k, axis=1)
        b_db += b_r * b_eG
        b_de += b_r * b_xs                                         # e^{G_i} terms of β e^G K
    tl.store(dbeta + rows * H + i_h, b_db.to(dbeta.dtype.element_ty), mask=m_t)
    if GATED:
        for i in range(0, NK):
            b_dG += tl.load(dgp + (i * NT + rows) * H + i_h, mask=m_t, other=0.0)
        tl.store(dg + rows * H + i_h, (b_dG + tl.cumsum(b_de, axis=0, reverse=True)).to(dg.dtype.element_ty),
                 mask=m_t)


# --------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------

# Operands of the products that mix an fp32 quantity (T, a state, a gradient) with the inputs, and
# the storage of W, U and Vn: True runs them in bf16 for bf16 inputs, as fla does (half the
# registers and bytes); False keeps them in fp32, multiplied in tf32 (more accurate). fp16 always
# takes fp32: its range ends at 6e-8, below which strongly decayed terms (e^G ≈ e^-20) vanish.
# fp32 inputs get fp32-accurate products (tf32 would cost ~1e-3 relative error): see _operands.
HALF_OPERANDS = True


# The gates' cumulative sums: None (default) in fp64 for fp32 inputs and in fp32 for 16-bit ones
# (GATED = 1 / 2 in the kernels; see _cum_gates); True / False force fp32 / fp64 (the tests run both).
FAST_GATES: bool | None = None


# The UT transform's 16 × 16 diagonal blocks inverted as a product of powers (_inv_unit_lower_pow,
# six tensor-core products) instead of by forward substitution (fifteen dependent row updates, each
# a reduction across threads). H200, bf16, B·T = 32K, T = 4K: the UT kernel 0.215 → 0.188 ms for
# DeltaNet, 0.250 → 0.202 for Gated DeltaNet. Tried with it and not kept: W and U made inside the UT
# kernel from T in registers (no _wu_kernel): 0.367 ms against 0.188 + 0.154 apart.
UT_POWERS = True
# The UT kernel loads each 16-row block of a chunk's keys once, whole ([16, K]), and takes the ten
# blocks of A = β K Kᵀ ⊙ Γ from those tiles, instead of loading two blocks' keys again for every one
# (40 tile loads of [16, 64] a chunk at K = 128). H200, bf16, H = 16, K = V = 128, T = 4K (`python -m
# kernels.sweep ab --ops delta,gdn --T 4096 --set kernels.delta.chunk.UT_KEYS_ONCE=True`, three
# alternating rounds, 2026-12-03): DeltaNet forward 0.484 → 0.441 ms, Gated DeltaNet 0.612 → 0.591
# (every round), fwd+bwd 2.588 → 2.545 and 3.234 → 3.202; the UT kernel (`sweep launch --ops gdn
# --kernels ut`) 0.202 → 0.174 ms at 2 warps (any stages; 4 warps 0.306). ptxas sm_90: 255 registers
# either way at 2 warps, 56 B of spills against none. GPU-checked (gpu_check.md, twenty-second
# session). None (default): 16-bit keys with K ≤ 128; True: fp32 keys up to K = 128 too (untimed:
# their tiles are twice the registers); False: never.
UT_KEYS_ONCE: bool | None = None


# Warps a program of the UT kernel where LAUNCH["ut"] does not apply, at K ≤ 128 (fp16 and fp32
# inputs, whose products run in fp32): one, as for bf16. H200, H = 16, K = V = 128, T = 4K (`python -m
# kernels.sweep ab --ops gdn --T 4096 --dtype DTYPE --set kernels.delta.chunk.UT_WARPS=4` against one,
# three alternating rounds, 2026-12-03): Gated DeltaNet forward fp16 2.518 → 2.325 ms, fp32 8.114 →
# 7.270; fwd+bwd 8.962 → 8.786 and 32.426 → 31.570. ptxas sm_90: fp32 keys spill 1300 B at one warp
# (408 at four). GPU-checked at one warp in fp16 and fp32 (gpu_check.md, twenty-seventh session).
# Head dims over 128 keep Triton's default of four (untimed at one: their key tiles are twice as wide).
UT_WARPS = 1


def _ut_warps(KP: int) -> int:
    """The UT kernel's warps where LAUNCH["ut"] does not apply: UT_WARPS up to K = 128, else four."""
    return UT_WARPS if KP <= 128 else 4


def _ut_once(dtype: torch.dtype, KP: int) -> bool:
    """Whether the UT kernel loads each row block's keys once (UT_KEYS_ONCE)."""
    if UT_KEYS_ONCE is False or KP > 128:
        return False
    return UT_KEYS_ONCE is True or dtype != torch.float32


# A forward without a backward that runs in one pass (FUSED_FORWARD) makes each chunk's W and U inside
# the scan from T, k, v and β instead of storing and reading them (_wu_kernel: 0.15 ms at T = 4K, at its
# memory bandwidth), at the price of two more products per chunk in every value-tile program (ptxas,
# bf16, K = V = 128: the scan's spills 588 → 792 B ungated, 428 → 1032 gated). H200, bf16, H = 16,
# K = V = 128, T = 4K, B = 8 (`python -m kernels.sweep profile --ops delta,gdn` with and without
# `--set kernels.delta.chunk.WU_IN_SCAN=True`, 2026-12-01): DeltaNet's forward 0.698 → 0.500 ms, Gated
# DeltaNet's 0.69 → 0.654, outputs bit-identical to the stored W, U. None (default): with bf16 operands
# (the timed case); True: any dtype; False: never. Never where the scan has fewer programs than SMs
# (its "state_few" 16-wide value tiles): every program would make the whole W for 16 columns of U, and
# there, with bf16 operands, Triton 3.6's build of the kernel came out wrong (bf16 β) or faulted (fp32 β)
# on the H200 while the 64-wide tiles were bit-exact (kernels/results/experiments_2026-12-01_wu.md).
# Nor with any value tile under 64 that splits V: 32-wide tiles with a program per SM faulted too
# (`python -m kernels.sweep launch --ops delta --kernels state_out`, 2026-12-01, every warps/stages).
# Both refusals are lifted where the scan makes no W (Vn from K S, VN_NARROW below).
WU_IN_SCAN: bool | None = None
# Where the scan makes W and U itself and needs neither for anything else (outputs and states, no
# transition), it forms Vn = U − W S = T diag(β) (V − diag(e^G) K S) instead: K S and then T times a
# [BT, BV] tile, in place of W = T diag(β e^G) K ([BT, K], made by every value-tile program), U and W S.
# A sixth fewer multiply-adds a chunk (2.6M against 3.1M at BT = 64, K = 128, BV = 64), one more
# product on each chunk's dependent chain. H200, bf16, H = 16, K = V = 128 (`python -m kernels.sweep ab
# --ops delta,gdn --T T --set kernels.delta.chunk.VN_FROM_KS=False`, three alternating rounds,
# 2026-12-03): forward at 4K DeltaNet 0.389 → 0.334 ms, Gated DeltaNet 0.525 → 0.442; at 32K (over
# segments) DeltaNet 1.030 → 0.977. GPU-checked (gpu_check.md, twenty-seventh session).
VN_FROM_KS = True
# The same in the segments' scans that make transitions (states from zero and transitions in one scan,
# or the transitions' own): Vn as above and Pn = −W P = −T diag(β e^G) K P, no W. H200, bf16, H = 16,
# K = V = 128, T = 32K, three alternating rounds (2026-12-03, `python -m kernels.sweep ab --ops delta
# --T 32768 --set kernels.delta.chunk.TRANS_FROM_KS=True`): DeltaNet forward 0.963 → 0.817 ms; Gated
# DeltaNet, with W and U in its segments' scans too (SEGMENTS_WU_IN_SCAN, which it needs): 1.124 →
# 1.029 (fwd+bwd unchanged: 3.621 / 3.620, 4.139 / 4.140).
TRANS_FROM_KS = True
# A forward without a backward that forms Vn from K S makes no W in any program, so value tiles under 64
# wide cost it no [BT, K] product per tile: where 64-wide tiles would leave SMs idle, its one pass takes
# the widest of 64, 32, 16 that gives a program per SM (_pass_tile; since 2026-12-04 one for
# PASS_SM_SHARE of them), and runs with W, U in the scan
# there too (WU_IN_SCAN refuses narrow tiles otherwise), at LAUNCH["state_narrow"]'s warps and stages.
# At the benchmark's shapes: 8K (64 sequence-heads) 32-wide tiles, 256 programs, in place of 64-wide
# ones, 128; 16K (32) one pass at 16-wide, 256 programs, in place of two passes (before PASS_SM_SHARE:
# since, 64-wide at 8K for DeltaNet and 32-wide at 16K, 128 programs each). Forwards with a
# backward keep their launch (their pass stores S and Vn per chunk; narrow tiles there were slower:
# DeltaNet fwd+bwd at 8K 2.395 → 2.585 ms). H200, bf16, H = 16, K = V = 128, three alternating rounds
# (2026-12-03, `python -m kernels.sweep ab --ops delta,gdn --T T --set kernels.delta.chunk.VN_NARROW=True`
# plus, at 8K, `--set "kernels.delta.chunk.LAUNCH[state_out]={'BV': 32, 'num_warps': 4, 'num_stages':
# 2}"`, at 16K `--set kernels.delta.chunk.FUSED_MIN_PROGRAMS=128`, before the rule): forward at 8K
# DeltaNet 0.482 → 0.449 ms, Gated DeltaNet 0.647 → 0.614; at 16K 0.864 → 0.694 and 1.083 → 1.039
# (32-wide tiles there, 128 programs: 0.728, 1.034); with three stages since, 0.399 / 0.587 at 8K and
# 0.603 / 0.933 at 16K (experiments_2026-12-03h.md §3–4). GPU-checked (gpu_check.md, twenty-eighth
# session). False: forwards without a backward launch as those with one.
VN_NARROW = True
# The operand dtypes VN_NARROW serves: bf16. fp32 operands (fp16 inputs, with W and U forced into the
# scan) faulted at narrow tiles on the H200, an illegal memory access (`python -m kernels.gpu_check
# --only fused:deltanet/wu --dtypes float16`, 2026-12-04, experiments_2026-12-04d.md §2); the tests add
# fp32 to run the path under the interpreter.
VN_NARROW_OPERANDS = (torch.bfloat16,)


# The programs VN_NARROW's value tile must give: PASS_SM_SHARE of the SMs, not all of them — a tile
# twice as wide with all but a few SMs busy (128 programs for 132 SMs) beat the narrower one with two
# programs an SM, except Gated DeltaNet's 64-wide tile (80 B of spills at 255 registers), which keeps
# the whole-SM rule. H200, bf16, H = 16, K = V = 128 (`python -m kernels.sweep launch --ops delta,gdn
# --kernels state_out --T T`, 2026-12-04): the pass at 8K, DeltaNet 64-wide 0.269 ms against 32-wide
# 0.285, Gated DeltaNet 0.479 against 0.428; at 16K 32-wide against 16-wide 0.404 / 0.475 and 0.710 /
# 0.778 (all at three stages, LONE_STAGES). The forward, `python -m kernels.sweep ab --ops delta,gdn
# --T T --set "kernels.delta.chunk.LAUNCH[state_out]={'BV': …, 'num_warps': 4, 'num_stages': 3}"`:
# DeltaNet 8K 0.369 → 0.360 ms, 16K 0.563 → 0.496, Gated DeltaNet 16K 0.892 → 0.823
# (experiments_2026-12-04e.md §4). 1.0: a program per SM.
PASS_SM_SHARE = 0.95


def _pass_tile(NH: int, V: int, widest: int, device, gated: int = 0) -> int:
    """Value tile of a forward-only one pass that forms Vn from K S (VN_NARROW): the widest of ``widest``
    and its halves down to 16 (none wider than V needs) that gives _pass_least programs, else 16."""
    least = _least(device)   # (looked up once: the launcher's host time counts at short T)
    bv = min(widest, max(16, next_pow2(V)))
    while bv > 16 and NH * cdiv(V, bv) < _pass_least(bv, least, gated):
        bv //= 2
    return bv


def _pass_least(BV: int, least: int, gated: int) -> int:
    """The programs a forward-only pass's value tile BV must give (PASS_SM_SHARE), of ``least`` (_least's
    program per SM): all but a few SMs' worth, or, for a gated 64-wide tile, a program per SM."""
    return least if gated and BV >= 64 else math.ceil(PASS_SM_SHARE * least)


# Three pipelining stages (LAUNCH["state_lone"]) for a one pass whose programs are no more than the SMs
# (one an SM: its shared memory to itself): the forward-only pass, and before a backward DeltaNet's.
# H200, bf16, H = 16, K = V = 128, T = 8K (128 programs of 64-wide tiles; `python -m kernels.sweep launch --ops delta
# --kernels state_out --T 8192`, 2026-12-04): DeltaNet's forward-only pass 0.269 ms at three stages
# against 0.338 at two; `python -m kernels.sweep ab --ops delta,gdn --T 8192 --set
# "kernels.delta.chunk.LAUNCH[state]={'BV': 64, 'num_warps': 4, 'num_stages': 3}"` (the pass before a
# backward): DeltaNet fwd+bwd 2.401 → 2.338 ms, Gated DeltaNet 3.176 → 3.257 (so not for a gate).
# False: the scan's stages.
LONE_STAGES = True


def _lone(NH: int, V: int, BV: int, device) -> bool:
    """Whether a scan over NH sequence-heads with value tile BV has at most a program per SM."""
    return NH * cdiv(V, BV) <= _least(device)


def _narrow(few: bool, BV: int, *dims: int) -> bool:
    """Whether a scan's value tiles rule out W and U in the scan (see WU_IN_SCAN): few programs, or a
    tile under 64 wide that splits one of ``dims`` (its value dim; the transitions' scan also K)."""
    return few or any(BV < min(64, max(16, next_pow2(d))) for d in dims)


def _wu_in_scan(inter: torch.dtype, narrow: bool, ks: bool = False) -> bool:
    """Whether a one-pass forward without a backward makes W and U inside the scan (see WU_IN_SCAN);
    never with few programs or narrow value tiles (``narrow``), unless the scan forms Vn from K S
    (``ks``, where nothing else needs W: VN_FROM_KS) and VN_NARROW allows it for these operands
    (VN_NARROW_OPERANDS)."""
    lifted = ks and VN_FROM_KS and VN_NARROW and inter in VN_NARROW_OPERANDS
    if WU_IN_SCAN is False or (narrow and not lifted):
        return False
    return WU_IN_SCAN is True or inter == torch.bfloat16


def _gated(g: Tensor | None, dtype: torch.dtype) -> int:
    """The kernels' GATED: 0 without a gate, 1 for exact (fp64) cumulative gates, 2 for fp32 ones."""
    if g is None:
        return 0
    fast = dtype != torch.float32 if FAST_GATES is None else FAST_GATES
    return 2 if fast else 1


def _operands(dtype: torch.dtype, K: int) -> tuple[torch.dtype, str]:
    """(operand dtype of the mixed products and of W, U, Vn; precision of fp32 products)."""
    if dtype == torch.bfloat16 and HALF_OPERANDS:
        return torch.bfloat16, "tf32"
    if dtype != torch.float32:
        return torch.float32, "tf32"
    # key dims over 128 keep exact products: the state scan's tf32x3 build at K = 256, chunk 64, reads
    # out of bounds on the H200 (Triton 3.6: an illegal memory access; chunk 32 and K <= 128 pass;
    # kernels/results/experiments_2026-12-02d.md §1)
    prec = fp32_products()
    return torch.float32, ("ieee" if prec == "tf32x3" and K > 128 else prec)


_TL = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16}


def _num_warps(BT: int, inter: torch.dtype) -> int:
    # bf16 operands: four warps time faster in every kernel at K = V = 128 on the H200, though ptxas
    # reports some spills (delta fwd+bwd 4.07 vs 5.11 ms at T = 4096 on 2026-12-01, kernel by kernel
    # in kernels/results/profile_2026-12-01.txt). fp32 operands keep eight at C = 64: their tiles are
    # twice the registers.
    return 4 if inter == torch.bfloat16 or BT < 64 else 8


def _scan_stages(inter: torch.dtype, KP: int) -> int:
    """Software-pipelining depth of the two chunk scans, whose loads of chunk c + 1 overlap chunk c.

    With fp32 operands the full-K tiles outgrow shared memory (sm_90, 227 KB): the reverse scan
    needs 254 KB at K = 128 with the default three stages, 471 KB at K = 256.
    """
    if inter == torch.float32 and KP >= 256:
        return 1
    if inter == torch.float32 and KP >= 128:
        return 2
    return 3


def _tiles(K: int, V: int) -> tuple[int, int, int, int]:
    """(KP, BK, BV, BVS): padded K for the state kernels, the key and value tiles of the per-chunk
    kernels, and the value tile of the state kernels (which hold a [KP, BVS] fp32 state)."""
    KP, VP = max(16, next_pow2(K)), max(16, next_pow2(V))
    BVS = min(VP, 64 if KP <= 64 else 32 if KP <= 128 else 16)
    return KP, min(KP, 64), min(VP, 64), BVS


def _state_launch(BVS: int, KP: int, V: int, inter: torch.dtype, nw: int, NH: int,
                  device) -> tuple[int, int]:
    """(value tile, warps) of the forward state scan, one program per sequence, head and value tile.

    With bf16 operands a [128, 64] state fits four warps and halves the programs that reload each
    chunk's keys: 0.27 vs 0.32 ms at T = 4096 (B·H = 128 sequence-heads). With few sequence-heads
    (T = 32K, B = 1: 32 programs for 132 SMs) that tile was slower (forward 2.21 vs 1.98 ms), so
    there the scan keeps BVS and the eight warps of that faster run (re-measured with this rule:
    1.96 ms). The reverse scan keeps BVS (it spills at 64)."""
    if inter != torch.bfloat16 or KP > 128:
        return BVS, nw
    wide = min(max(16, next_pow2(V)), 64)
    if not _few(NH, V, wide, device):
        return wide, 4
    return BVS, 8


# Per-kernel launch settings (tiles BK/BV, warps, pipelining stages) for bf16 operands at K, V ≤ 128,
# overriding the defaults the launchers compute: the fastest candidates of
# `python -m kernels.sweep launch --ops delta` (bf16, H = 16, K = V = 128, B·T = 32K, H200,
# 2026-12-01; T = 4096, and T = 32768 for the "_few" keys). "state_few"/"dstate_few" apply to the
# scans when their programs are fewer than the GPU's SMs (long sequences, small batch).
LAUNCH: dict[str, dict] = {
    # One warp a program since 2026-12-03 (the grid never offered fewer than two before). Why it pays is
    # our reading, not profiled: the kernel is a chain of small dependent 16 × 16 products, which one
    # warp does without splitting each across warps, and at 255 registers eight one-warp programs share
    # an SM against four two-warp ones.
    # `python -m kernels.sweep launch --ops delta,gdn --kernels ut --T 4096`: 0.086 ms (DeltaNet) and
    # 0.106 (Gated DeltaNet) at 1 warp, any stages, against 0.142 / 0.174 at 2 warps (4: 0.255 / 0.306);
    # `python -m kernels.sweep ab --ops delta,gdn --T T --set "kernels.delta.chunk.LAUNCH[ut]={'num_warps':
    # 2, 'num_stages': 1}"` (the old setting as the set side), three alternating rounds: forward at 4K
    # 0.389 against 0.444 ms (DeltaNet), 0.527 against 0.591 (Gated DeltaNet), at 32K 1.032 against
    # 1.083 and 1.127 against 1.192; fwd+bwd 2.402 / 2.455 and 3.053 / 3.118 at 4K. At one warp the
    # keys loaded once (UT_KEYS_ONCE) and the powers (UT_POWERS) still win (off: DeltaNet 0.437, 0.429),
    # and a register cap of 128 loses (0.466: spills).
    "ut": dict(num_warps=1, num_stages=1),                               # 0.42 → 0.086 ms
    "wu": dict(BK=128, BV=128, num_warps=4, num_stages=1),               # 0.17 → 0.16
    "state": dict(BV=64, num_warps=4, num_stages=2),                     # 0.27 → 0.24
    "state_few": dict(BV=16, num_warps=4, num_stages=2),                 # 1.08 → 0.82 (T = 32K)
    # the forward-only pass at tiles narrower than the scan's (VN_NARROW; the tile is _pass_tile's):
    # `python -m kernels.sweep launch --ops delta,gdn --kernels state_out --T T` (2026-12-03), fastest
    # at 8K BV = 32, 4 warps, 3 stages: 0.304 ms against 0.350 at 2 stages (Gated DeltaNet 0.465 /
    # 0.501); at 16K BV = 16, 3 stages: 0.515 / 0.610 (Gated 0.826 / 0.925)
    "state_narrow": dict(num_warps=4, num_stages=3),
    # a one pass with no more programs than SMs, each alone on its SM (LONE_STAGES)
    "state_lone": dict(num_stages=3),
    "output": dict(BK=64, BV=128, num_warps=8, num_stages=3),            # 0.26 → 0.23
    "dvn_local": dict(BK=64, BV=128, num_warps=8, num_stages=2),         # 0.22 → 0.20
    "dstate": dict(BV=64, num_warps=4, num_stages=2),                    # 0.49 → 0.36
    "dstate_few": dict(BV=32, num_warps=4, num_stages=2),                # 1.56 → 1.30 (T = 32K)
    "dqkw": dict(BK=64, BV=64, num_warps=4, num_stages=2),               # 0.83 → 0.59
    # one stage: with software pipelining (2 or 3 stages, Triton 3.6, H200) its dβ and dg came out
    # different from run to run (a few % at K = V = 128), not so with one (kernels.gpu_check repeats)
    "wy_bwd": dict(BK=64, BV=64, num_warps=4, num_stages=1),             # 0.58 → 0.51
    # the chain over segments (_segment_chain_kernel, forward and reverse launches together; T = 32K,
    # `python -m kernels.sweep launch --ops delta --kernels chain --T 32768`, 54 candidates): 16-wide
    # value blocks, twice the programs of _chain_cfg's 32 (BR = BV = 32, 4 warps, 3 stages: not among
    # the four fastest, all ≤ 0.311 ms; slowest 1.444)
    "chain": dict(BR=32, BV=16, num_warps=4, num_stages=3),             # → 0.263
}


def _cfg(name: str, inter: torch.dtype, K: int, V: int, **default) -> dict:
    """Launch keyword arguments of one kernel: ``default`` updated by ``LAUNCH[name]`` where it applies."""
    cfg = dict(default)
    if inter == torch.bfloat16 and max(K, V) <= 128:
        cfg.update(LAUNCH.get(name, {}))
        # a tile wider than the padded head dim only adds masked lanes
        for tile, dim in (("BK", K), ("BV", V)):
            if tile in cfg:
                cfg[tile] = min(cfg[tile], max(16, next_pow2(dim)))
    return cfg


# Precision of the chain's products (fp32 transitions and states, whatever the inputs' dtype): "ieee"
# (exact, on the CUDA cores) or "tf32x3" (three tensor-core products, fp32-accurate to ~1e-7). The
# chain is a walk over the segments in order, 0.15 ms of DeltaNet's 1.14 ms forward at T = 32K:
# `python -m kernels.sweep ab --ops delta,gdn --T 32768 --set "kernels.delta.chunk.CHAIN_PRODUCTS='tf32x3'"`
# times the other (not yet timed: built when no device time was left).
CHAIN_PRODUCTS = "ieee"


def _chain_cfg(inter: torch.dtype, K: int, V: int) -> dict:
    """Launch keyword arguments of _segment_chain_kernel: [BR, BR] × [BR, BV] blocks (BR never wider
    than the padded K), LAUNCH["chain"] where set, and the products' precision (CHAIN_PRODUCTS)."""
    KP = max(16, next_pow2(K))
    cfg = _cfg("chain", inter, K, V, BR=min(KP, 32), BV=min(max(16, next_pow2(V)), 32), num_warps=4)
    cfg["BR"] = min(cfg["BR"], KP)
    return cfg | {"PREC": CHAIN_PRODUCTS}


def _few(NH: int, V: int, BV: int, device) -> bool:
    """Whether a scan over NH sequence-heads with value tile BV has fewer programs than SMs."""
    return NH * cdiv(V, BV) < sm_count(device)


# The one-pass forward: the state scan also writes the outputs (no output kernel; per-chunk states
# and pseudo-values stored only for a backward), where the scan has a program per SM. FUSED_FORWARD:
# None (default) where the H200 measured it faster (`python -m kernels.bench --ops delta,gdn --impls
# ours,ours-fused`, bf16, H = 16, K = V = 128, B·T = 32K, 2026-12-01): DeltaNet's forward 0.68 vs
# 0.90 ms at T = 1K–4K, 0.81 vs 0.95 at 8K (fwd+bwd 2.87 vs 2.89); Gated DeltaNet's with fp32 gates
# (16-bit inputs) 0.77 / 0.79 vs 0.93 / 0.93 at 1K / 4K. With fp64 gates (fp32 inputs) the gated one
# pass lost (1.00 vs 0.97), so those keep two passes, as does everything off CUDA. True: wherever it
# can run (tests, the GPU check, the benchmark's ours-fused); False: never.
FUSED_FORWARD: bool | None = None
# The forward-only one pass (the scan that writes the outputs, no states kept for a backward) loads
# k, q and v and stores o through tensor descriptors of the batch, as kernels.diag.chunk.FUSED_TMA
# does for the scalar family (same rules: kernels._common.TMA_DTYPES, equal-length batches): FUSED_TMA
# on whole sequences, SEGMENTS_TMA in the pass over segments. ptxas: experiments_2026-12-02h.md §7.
# H200, bf16, H = 16, K = V = 128 (`python -m kernels.sweep ab --ops delta,gdn --T T --set
# kernels.delta.chunk.FUSED_TMA=True`, both switches at once, three alternating rounds, 2026-12-02):
# whole sequences (4K / 8K) Gated DeltaNet's forward 0.646 → 0.618 / 0.967 → 0.921 ms, DeltaNet's
# 0.497 → 0.508 (rounds 0.499–0.534) / 0.703 → 0.701; over segments (32K) DeltaNet 1.126 → 1.112 but
# Gated DeltaNet 1.235 → 1.306 (experiments_2026-12-02i.md §1). Whole sequences on since the GPU check
# held (gpu_check.md, twenty-first session) and `kernels.bench --ops delta,gdn --impls ours` (run
# 2026-12-03_0640_delta-fused-tma) gave Gated DeltaNet 0.651 → 0.636 / 0.623 / 0.914 ms at 1K / 4K / 8K,
# DeltaNet 0.508 → 0.504 / 0.493 / 0.698; segments stay on pointers.
FUSED_TMA = True
SEGMENTS_TMA = False
FUSED_MIN_PROGRAMS: int | None = None   # None: the GPU's SM count (the GPU check sets 1 to force it)


def _least(device) -> int:
    """The programs that count as a program per SM: FUSED_MIN_PROGRAMS, or the device's SM count."""
    return sm_count(device) if FUSED_MIN_PROGRAMS is None else FUSED_MIN_PROGRAMS


def _one_pass(NH: int, V: int, BV: int, KP: int, device, gated: int, narrow: bool = False) -> bool:
    """Whether the forward runs as one pass: FUSED_FORWARD (None: on CUDA, not with fp64 gates, see
    _gated), K ≤ 128, and a program per SM (``narrow``: VN_NARROW's tile, _pass_least's programs)."""
    if FUSED_FORWARD is False or KP > 128:
        return False
    if FUSED_FORWARD is None and (gated == 1 or torch.device(device).type != "cuda"):
        return False
    least = _least(device)
    return NH * cdiv(V, BV) >= (_pass_least(BV, least, gated) if narrow else least)


# The forward over segments where the scan has fewer programs than SMs (long T, small B): each segment's
# state from zero and its transition (a K × K matrix: the delta rule's state mixes rows, unlike a
# decay), a short chain over the segments, then the one pass per segment from the state entering it
# (_forward_segments). Three scans of a segment's chunks instead of one of the sequence's, in parallel.
# The backward's reverse scan likewise, with the transitions' transposes (_dstate_segments).
# None (default): on CUDA where the scan has at most a quarter as many programs as SMs. H200, bf16,
# H = 16, K = V = 128 (`python -m kernels.sweep profile --ops delta,gdn --T T --impls ours` with and
# without `--set kernels.delta.chunk.SEGMENTS=True`, 2026-12-01): T = 32K, B = 1 (32 programs),
# forward DeltaNet 1.283 → 1.202 ms, Gated DeltaNet 1.608 → 1.277; forward + backward 4.29 → 4.28 and
# 5.33 → 4.76; T = 16K, B = 2 (64 programs) slower: 0.970 → 1.153, 1.189 → 1.281 (forward; 4 per SM).
# True: wherever it applies (equal-length batches, K ≤ 128, the one pass not switched off by
# FUSED_FORWARD = False, fewer programs than SMs); False: never.
SEGMENTS: bool | None = None
# Segments = this × SMs / the scan's programs (at most one per chunk). At T = 32K, 2 / 3 / 4 / 8 (9 / 13
# / 17 / 32 segments): forward DeltaNet 1.289 / 1.202 / 1.261 / 1.356 ms, Gated DeltaNet 1.486 / 1.277
# / 1.401 / 1.408 (fwd+bwd 4.39 / 4.28 / 4.31 / 4.53 and 5.14 / 4.76 / 4.97 / 5.02). Re-timed
# 2026-12-04 (`python -m kernels.sweep ab --ops delta,gdn --T 32768 --set
# kernels.delta.chunk.SEGMENT_PROGRAMS_PER_SM=S`): 3 against 1 / 2, DeltaNet forward 0.813 against
# 0.846 / 0.932, Gated DeltaNet 1.027 against 1.136 / 1.198 (experiments_2026-12-04e.md §5).
SEGMENT_PROGRAMS_PER_SM = 3
# The one pass that forms Vn from K S (forward only, whole sequences) reads each chunk's T, β and gates
# besides its k, q, v tiles (descriptors, FUSED_TMA). Triton's pipeliner copies T and fp32 gates ahead
# (cp.async) but cannot copy bf16 β, one 2-byte value a thread (an asynchronous copy moves 4 bytes at
# least), so each chunk waited on a round trip to memory for it. PASS_AHEAD: β and the gates loaded
# one chunk ahead, into registers; PASS_T_TMA: T through a descriptor (16-bit T), as the tiles. H200,
# bf16, H = 16, K = V = 128 (`python -m kernels.sweep ab --ops delta,gdn --T T --set
# kernels.delta.chunk.PASS_T_TMA=False --set kernels.delta.chunk.PASS_AHEAD=False`, three alternating
# rounds, 2026-12-04): forward at 8K DeltaNet 0.399 → 0.373 ms, Gated DeltaNet 0.586 → 0.538; 16K 0.603
# → 0.566, 0.937 → 0.892; 4K 0.322 → 0.314, 0.437 → 0.421 (experiments_2026-12-04d.md §2, both switches
# set together). Apart, at 8K (2026-12-04, experiments_2026-12-04e.md §2): PASS_AHEAD off alone 0.370
# → 0.378 (Gated 0.534 → 0.572), PASS_T_TMA off alone 0.371 → 0.385 (0.537 → 0.559). GPU-checked.
# False: the pointer load of T / β and gates loaded in their chunk.
# (Tried and removed: this pass issuing Q S and Q Kᵀ beside K S and updating the state before the
# outputs, the same bits — Triton waits on each of the loop's warp-group products as soon as it is
# issued, so the order overlaps nothing, and at 64-wide tiles it spilled: DeltaNet 0.313 → 0.361 ms at
# 4K, Gated DeltaNet 0.417 → 0.536; experiments_2026-12-04e.md §3.)
PASS_T_TMA = True
PASS_AHEAD = True
# The forward-only pass forming Vn from K S makes K S and Q S, both products of a [64, K] tile by the
# state, as one product of the two tiles stacked ([K; Q], 128 rows): Triton waits on each product as
# soon as it is issued, so one wait a chunk fewer, for the price of the stacking and unstacking (ptxas,
# bf16, K = 128, gated 64-wide: 1376 → 1475 instructions a chunk, spills 48 → 200 B). H200, bf16,
# H = 16, K = V = 128 (`python -m kernels.sweep ab --ops delta,gdn --T T --rounds 2 --set
# kernels.delta.chunk.PASS_MERGE_KQ=True`, 2026-12-04, experiments_2026-12-04h.md §9): DeltaNet at 16K
# (32-wide tiles) 0.494 → 0.474 ms in both rounds, at 8K (64-wide) 0.358 → 0.466; Gated DeltaNet 0.442 →
# 0.444 at 8K, 0.631 → 0.635 at 16K. None (default): for the ungated pass at tiles up to 32 wide;
# True / False: wherever the pass forms Vn from K S / never.
PASS_MERGE_KQ: bool | None = None


def _merge_kq(gated: int, BV: int) -> bool:
    """Whether the forward-only pass makes K S and Q S as one product (PASS_MERGE_KQ)."""
    return (not gated and BV <= 32) if PASS_MERGE_KQ is None else PASS_MERGE_KQ


# The forward-only pass of 16-bit inputs with gates: each chunk's exps (Γ's 64², the rows' factors)
# one ex2.approx.ftz of log decays in log2 units, and for bf16 the decayed key tile a bf16 product (no
# fp32 copy). Instructions in the chunk loop (`python -m kernels.compile_check --family delta --dtype
# bf16 --K 128 --sass`, "forward, alone") 1689 → 1376, with Γ's zero lo difference gone. H200, bf16,
# H = 16, K = V = 128 (`python -m kernels.sweep ab --ops gdn --T T --set
# kernels.delta.chunk.PASS_EX2=False`): Gated DeltaNet forward 0.419 → 0.374 ms at 1K, 0.418 → 0.387
# at 4K, 0.539 → 0.457 at 8K, 0.822 → 0.651 at 16K, 1.026 → 0.974 at 32K; experiments_2026-12-04f.md §2.
PASS_EX2 = True
# ... and in the scans of a forward before a backward (their stored states then carry the bf16 decayed
# keys' rounding, which the backward reads as it reads any stored state): fwd+bwd 3.018 → 2.956 ms at
# 4K, 16K unchanged (--set kernels.delta.chunk.PASS_EX2_BACKWARD=False; §3)
PASS_EX2_BACKWARD = True


def _ex2(from_ks: bool, gated: int, inter: torch.dtype) -> dict:
    """The EX2 and KD16 arguments of a forward's scans (PASS_EX2): the one-instruction exps and, for bf16,
    the bf16 decayed keys, where the gates sum in fp32 without lo parts (16-bit inputs: their scaling
    to log2 units costs no accuracy a 16-bit input has) and the kernel is compiled — in a forward-only
    pass forming Vn from K S (``from_ks``), and with PASS_EX2_BACKWARD in any other."""
    ex2 = _common.exp_mode(PASS_EX2 and (from_ks or PASS_EX2_BACKWARD) and gated == 2)
    return dict(EX2=ex2, KD16=ex2 > 0 and inter == torch.bfloat16)

# W and U made inside the segments' three scans (states from zero, transitions, the pass) in a forward
# without a backward, as WU_IN_SCAN does for the one pass: no _wu_kernel, each scan reading T, k, v and
# β instead of W and U. H200, bf16, H = 16, K = V = 128, T = 32K (`python -m kernels.sweep ab --ops
# delta,gdn --T 32768 --set kernels.delta.chunk.SEGMENTS_WU_IN_SCAN=True`, three alternating rounds,
# 2026-12-01): DeltaNet forward 1.210 → 1.186 ms; Gated DeltaNet 1.296 → 1.693 (its scans, holding the
# gates too, spill: ptxas 200 / 80 / 900 B). None (default): for the ungated delta rule, and for the
# gated one where its transitions come from K P without W (TRANS_FROM_KS: then 1.124 → 1.029, 2026-12-03);
# True: both; False: neither. GPU-checked (`python -m kernels.gpu_check --only fused:deltanet/wu`).
SEGMENTS_WU_IN_SCAN: bool | None = None
# The segments' states from zero and their transitions in one scan (_state_kernel's TRANS: each
# program carries a [K, BV] tile of both, and loads each chunk's k, W — or makes W, with W/U in the
# scan — and gates once for the two) instead of two launches that each load them. ptxas sm_90 (`python
# -m kernels.delta.compile_check --dtype bf16 --K 128 --segments --set` it, gated) gives it 556 B of
# spill stores against 32 and 0 for the two scans, yet it wins: H200, bf16, H = 16, K = V = 128, T = 32K
# (`python -m kernels.sweep ab --ops delta,gdn --T 32768 --set
# kernels.delta.chunk.SEGMENT_TRANSITIONS_IN_SCAN=True`, three alternating rounds, 2026-12-02): DeltaNet
# forward 1.173 → 1.131 ms, fwd+bwd 3.896 → 3.820; Gated DeltaNet 1.280 → 1.235, 4.381 → 4.337.
# GPU-checked (`python -m kernels.gpu_check --only fused:deltanet/segments,fused:gated_deltanet/segments
# --set` it, bf16 and fp32). False: the two scans (kept for A/B; the tests run both).
SEGMENT_TRANSITIONS_IN_SCAN = True


def _segments(offsets: Tensor, NH: int, V: int, KP: int, device, BT: int) -> int | None:
    """Segments per sequence of the segmented forward (SEGMENTS), None where it does not run."""
    dense = getattr(offsets, "_dense", None)
    if SEGMENTS is False or FUSED_FORWARD is False or KP > 128 or dense is None:
        return None
    if SEGMENTS is None and torch.device(device).type != "cuda":
        return None
    least = _least(device)
    programs = NH * cdiv(V, 64)
    nc = cdiv(dense[1], BT)
    if programs >= least or nc < 2 or (SEGMENTS is None and 4 * programs > least):
        return None
    per = cdiv(nc, min(nc, cdiv(SEGMENT_PROGRAMS_PER_SM * least, programs)))
    nseg = cdiv(nc, per)
    return nseg if nseg > 1 else None


# The UT kernel's gates of 16-bit inputs (fp32 sums without lo parts) in log2 units, each of Γ's exps one
# ex2.approx.ftz (_exp): its instructions 3528 → 3104 (compile_check --sass, as above); Gated DeltaNet
# forward 0.645 → 0.636 ms at 16K (--set kernels.delta.chunk.UT_EX2=False; experiments_2026-12-04f.md §3).
UT_EX2 = True


def _ut_ex2(gated: int) -> int:
    """The UT kernel's EX2 argument (UT_EX2): 2 for 16-bit inputs' gates in a compiled kernel, else 0."""
    return _common.exp_mode(UT_EX2 and gated == 2)


def _wy(k, v, beta, g, offsets, chunk_indices, BT, wu):
    """T = (I + A)⁻¹ of every chunk (_ut_kernel) and, unless the scan makes them itself (``wu``), W and U
    (_wu_kernel); (made in the scan, W and U are one-element stand-ins: the scan reads neither)."""
    Tt, H, K = k.shape
    V = v.shape[-1]
    dev, NC = k.device, chunk_indices.shape[0]
    KP, BK, BV, BVS = _tiles(K, V)
    gated = _gated(g, k.dtype)
    inter, prec = _operands(k.dtype, K)
    dt, nw = _TL[inter], _num_warps(BT, inter)
    # T enters the W, U products as an operand in `inter`, and the backward's fp32 products as bf16
    # values widened: stored in `inter` (as fla stores its inverse in k's dtype)
    Tm = _empty(Tt, H, BT, dtype=inter, device=dev)
    w = stand_in(inter, dev) if wu else _empty(Tt, H, K, dtype=inter, device=dev)
    u = stand_in(inter, dev) if wu else _empty(Tt, H, V, dtype=inter, device=dev)
    if NC > 0:
        _common.products(_ut_kernel, "delta.ut")[(NC, H)](
            k, beta, g, Tm, offsets, chunk_indices, H=H, K=K, BT=BT, GATED=gated, PREC=prec, POW=UT_POWERS, KP=KP,
            ONCE=_ut_once(k.dtype, KP), EX2=_ut_ex2(gated), **_cfg("ut", inter, K, V, BK=BK, num_warps=_ut_warps(KP)))
        if not wu:
            grid, inner = chunk_grid((), NC, H)
            _wu_kernel[grid](k, v, beta, g, Tm, w, u, offsets, chunk_indices, HEADS_INNER=inner, H=H, K=K, V=V, BT=BT,
                             GATED=gated, DT=dt, PREC=prec, **_cfg("wu", inter, K, V, BK=BK, BV=BV, num_warps=nw))
    return Tm, w, u


def _forward(q, k, v, beta, g, h0, offsets, scale, BT, store_ht, keep=True):
    Tt, H, K = q.shape
    V = v.shape[-1]
    N = offsets.numel() - 1
    dev = q.device
    KP, BK, BV, BVS = _tiles(K, V)
    nseg = _segments(offsets, N * H, V, KP, dev, BT)
    if nseg is not None:
        return _forward_segments(q, k, v, beta, g, h0, offsets, scale, BT, store_ht, keep, nseg)
    chunk_offsets, chunk_indices, maxc = chunk_layout(offsets, BT)
    NC = chunk_indices.shape[0]
    gated = _gated(g, q.dtype)
    inter, prec = _operands(q.dtype, K)
    dt, nw = _TL[inter], _num_warps(BT, inter)
    BVF, nw_scan = _state_launch(BVS, KP, V, inter, nw, N * H, dev)
    few = _few(N * H, V, BVF, dev)   # fewer scan programs than SMs
    c_scan = _cfg("state_few" if few else "state", inter, K, V, BV=BVF, num_warps=nw_scan,
                  num_stages=_scan_stages(inter, KP))
    if not keep and _wu_in_scan(inter, True, ks=True):
        # a forward-only pass forming Vn from K S: tiles as narrow as a program per SM needs (VN_NARROW)
        # (fp32 operands keep the state kernels' tile BVS at most: [K, BV] fp32 operand tiles)
        widest = min(64 if inter == torch.bfloat16 else BVS, max(16, next_pow2(V)))
        BVP = _pass_tile(N * H, V, widest, dev, gated)
        fused = _one_pass(N * H, V, BVP, KP, dev, gated, narrow=True)
        if fused:
            c_scan = c_scan | {"BV": BVP}
            if BVP < widest:
                c_scan = _cfg("state_narrow", inter, K, V, **c_scan)
            if LONE_STAGES and _lone(N * H, V, BVP, dev):
                c_scan = _cfg("state_lone", inter, K, V, **c_scan)
    else:
        fused = _one_pass(N * H, V, BVF, KP, dev, gated)
        if fused and LONE_STAGES and not gated and _lone(N * H, V, c_scan["BV"], dev):   # (ungated only)
            c_scan = _cfg("state_lone", inter, K, V, **c_scan)
    if fused:
        c_scan = _cfg("state_out", inter, K, V, **c_scan)
    # W and U made inside the scan, never stored; not by value tiles narrower than 64 that split V
    # (builds with 16- and 32-wide tiles faulted on the H200, see WU_IN_SCAN) unless no W is made there
    # (VN_NARROW)
    wu = fused and not keep and _wu_in_scan(inter, _narrow(few, c_scan["BV"], V), ks=True)
    keep = keep or not fused        # the two-pass output kernel reads the stored S and Vn
    Tm, w, u = _wy(k, v, beta, g, offsets, chunk_indices, BT, wu)
    # (unkept, Vn is a one-element stand-in: the kernel reads only its dtype)
    vn = _empty(Tt, H, V, dtype=inter, device=dev) if keep else stand_in(inter, dev)
    # the states entering each chunk only ever feed products in the operand dtype: stored in it
    h = _empty(NC, H, K, V, dtype=inter, device=dev) if keep else None
    o = _empty(Tt, H, V, dtype=v.dtype, device=dev)
    ht = _empty(N, H, K, V, dtype=torch.float32, device=dev) if store_ht else None
    if N * H > 0:
        from_ks = wu and VN_FROM_KS    # the pass reads T, β (and the gates) every chunk
        ex2 = _ex2(from_ks, gated, inter)
        # (T in the operand dtype: fp32 for fp16 inputs, which descriptors do not serve, see TMA_DTYPES)
        t_tma = PASS_T_TMA and from_ks and Tm.dtype in _common.TMA_DTYPES
        desc = tensor_descriptors(FUSED_TMA and fused and not keep, offsets, BT, q=(q, KP), k=(k, KP),
                                  v=(v, c_scan["BV"]), o=(o, c_scan["BV"]), **(dict(t=(Tm, BT)) if t_tma else {}))
        _common.products(_state_kernel, "delta.pass")[(cdiv(V, c_scan["BV"]), N * H)](
            k, w, u, g, h0, h, vn, ht, offsets, chunk_offsets, maxc, H=H, K=K, V=V, BT=BT, KP=KP,
            GATED=gated, HAS_H0=h0 is not None, STORE_HT=store_ht, DT=dt, PREC=prec, q=q, o=o, scale=scale,
            OUT=fused, STORE_H=keep, v=v, beta=beta, Tm=Tm, WU=wu, KS=VN_FROM_KS, T_TMA="t_d" in desc,
            AHEAD=PASS_AHEAD and from_ks, MERGE_KQ=from_ks and fused and _merge_kq(gated, c_scan["BV"]),
            **ex2, **desc, **c_scan)
    if NC > 0 and not fused:
        c = _cfg("output", inter, K, V, BK=BK, BV=BV, num_warps=nw)
        _output_kernel[(cdiv(V, c["BV"]), NC, H)](
            q, k, g, h, vn, o, offsets, chunk_indices, scale, H=H, K=K, V=V, BT=BT, GATED=gated, DT=dt,
            PREC=prec, **c)
    return o, ht, (Tm, w, vn, h, chunk_offsets, chunk_indices, maxc, None)


def _segment_scan_cfg(inter: torch.dtype, K: int, V: int, BT: int, NSH: int, device) -> dict:
    """Launch keyword arguments of the forward state scans over NSH segment-heads (states from zero,
    transitions, the pass), the backward's transitions made again included."""
    KP, _, _, BVS = _tiles(K, V)
    BVF, nw_scan = _state_launch(BVS, KP, V, inter, _num_warps(BT, inter), NSH, device)
    return _cfg("state", inter, K, V, BV=BVF, num_warps=nw_scan, num_stages=_scan_stages(inter, KP))


def _transitions(k, w, g, s_offsets, s_chunk_offsets, per, NS, BT, c, beta=None, Tm=None) -> Tensor:
    """Every segment's transition P [NS, H, K, K] (fp32): the state scan from I with no values (ZERO_U,
    EYE), launched with the state scan's settings ``c``; the pointers it does not read get w. Given
    ``beta`` and ``Tm``, it makes W itself (WU) instead of reading the stored one."""
    Tt, H, K = k.shape
    KP = max(16, next_pow2(K))
    inter, prec = _operands(k.dtype, K)
    P = _empty(NS, H, K, K, dtype=torch.float32, device=k.device)
    wu = Tm is not None
    _state_kernel[(cdiv(K, c["BV"]), NS * H)](
        k, w, w, g, None, None, w, P, s_offsets, s_chunk_offsets, per, H=H, K=K, V=K, BT=BT, KP=KP,
        GATED=_gated(g, k.dtype), HAS_H0=False, STORE_HT=True, DT=_TL[inter], PREC=prec, q=w, o=w, scale=1.0,
        OUT=False, STORE_H=False, v=w, beta=beta if wu else w, Tm=Tm if wu else w, WU=wu, ZERO_U=True, EYE=True,
        KS=VN_FROM_KS, KS_TRANS=TRANS_FROM_KS, **c)
    return P


def _forward_segments(q, k, v, beta, g, h0, offsets, scale, BT, store_ht, keep, nseg):
    """_forward over nseg segments of each sequence (see SEGMENTS): the same outputs, final state and,
    for a backward, the same per-chunk states and Vn (segments are whole chunks in order, so a
    segment's chunk c0 + c is the batch's own)."""
    from ..diag.chunk import _segment_layout

    Tt, H, K = q.shape
    V = v.shape[-1]
    N = offsets.numel() - 1
    dev = q.device
    KP = _tiles(K, V)[0]
    chunk_offsets, chunk_indices, maxc = chunk_layout(offsets, BT)
    NC = chunk_indices.shape[0]
    gated = _gated(g, q.dtype)
    inter, prec = _operands(q.dtype, K)
    dt = _TL[inter]
    B, T = offsets._dense
    s_offsets, s_chunk_offsets, per = _segment_layout(B, T, nseg, dev, bt=BT)
    NS = B * nseg
    c = _segment_scan_cfg(inter, K, V, BT, NS * H, dev)
    # W and U made inside the three scans (SEGMENTS_WU_IN_SCAN, without a backward), on WU_IN_SCAN's
    # terms: tiles at least 64 wide or covering V (and K, the transitions' "V"), a program per SM
    wants = SEGMENTS_WU_IN_SCAN or (SEGMENTS_WU_IN_SCAN is None and (g is None or TRANS_FROM_KS))
    wu = wants and not keep and _wu_in_scan(
        inter, _narrow(_few(NS * H, V, c["BV"], dev), c["BV"], V, K))
    Tm, w, u = _wy(k, v, beta, g, offsets, chunk_indices, BT, wu)
    vn = _empty(Tt, H, V, dtype=inter, device=dev) if keep else stand_in(inter, dev)
    h = _empty(NC, H, K, V, dtype=inter, device=dev) if keep else None
    o = _empty(Tt, H, V, dtype=v.dtype, device=dev)
    ht = _empty(N, H, K, V, dtype=torch.float32, device=dev) if store_ht else None
    seg = dict(H=H, K=K, BT=BT, KP=KP, GATED=gated, DT=dt, PREC=prec, q=q, o=o, scale=scale, v=v, beta=beta,
               Tm=Tm, WU=wu, KS=VN_FROM_KS, KS_TRANS=TRANS_FROM_KS, **_ex2(wu and VN_FROM_KS, gated, inter), **c)
    grid = lambda cols: (cdiv(cols, c["BV"]), NS * H)  # noqa: E731
    # each segment's own state from zero, and its transition (in the same scan, or one of its own)
    dS = _empty(NS, H, K, V, dtype=torch.float32, device=dev)
    trans = SEGMENT_TRANSITIONS_IN_SCAN
    scan, pass_ = (_common.products(_state_kernel, n) for n in ("delta.segment_state", "delta.pass"))
    P = _empty(NS, H, K, K, dtype=torch.float32, device=dev) if trans else None
    scan[grid(max(V, K) if trans else V)](k, w, u, g, None, None, vn, dS, s_offsets, s_chunk_offsets, per,
                                          V=V, HAS_H0=False, STORE_HT=True, OUT=False, STORE_H=False,
                                          pt=P, TRANS=trans, **seg)
    if not trans:
        P = _transitions(k, w, g, s_offsets, s_chunk_offsets, per, NS, BT, c, *((beta, Tm) if wu else ()))
    # the states entering the segments, in order (and the sequences' final states)
    S_in = _empty(NS, H, K, V, dtype=torch.float32, device=dev)
    chain = _chain_cfg(inter, K, V)
    _common.products(_segment_chain_kernel, "delta.chain")[(cdiv(V, chain["BV"]), N * H)](
        P, dS, h0, S_in, ht, nseg, H=H, K=K, V=V, HAS_H0=h0 is not None, STORE_HT=store_ht, **chain)
    # the pass: each segment from the state entering it, writing the outputs (and, for a backward,
    # each chunk's entering state and Vn)
    pass_[grid(V)](k, w, u, g, S_in, h, vn, None, s_offsets, s_chunk_offsets, per, V=V, HAS_H0=True,
                   STORE_HT=False, OUT=True, STORE_H=keep,
                   **tensor_descriptors(SEGMENTS_TMA and not keep, offsets, BT, q=(q, KP), k=(k, KP),
                                        v=(v, seg["BV"]), o=(o, seg["BV"])), **seg)
    # (the transitions too, for a backward: its reverse scan over the same segments needs them)
    return o, ht, (Tm, w, vn, h, chunk_offsets, chunk_indices, maxc, P if keep else None)


def _dstate_segments(q, k, w, g, do, dvn, dvno, dht, dh, dh0, offsets, scale, BT, nseg, P=None):
    """The backward's reverse scan over nseg segments of each sequence (SEGMENTS): a segment maps the
    gradient leaving it to the one entering it by its transition's transpose Pᵀ plus what its own
    chunks add. So: each segment's gradient reaching its start from zero, the transitions P, a reverse
    chain over the segments from the final state's gradient, then the scan per segment from the
    gradient leaving it (storing dh and the finished dVn as the whole-sequence scan does). ``P``: the
    transitions a segmented forward kept, else made here."""
    from ..diag.chunk import _segment_layout

    Tt, H, K = q.shape
    V = do.shape[-1]
    N = offsets.numel() - 1
    dev = q.device
    KP, _, _, BVS = _tiles(K, V)
    inter, prec = _operands(q.dtype, K)
    dt, nw = _TL[inter], _num_warps(BT, inter)
    B, T = offsets._dense
    s_offsets, s_chunk_offsets, per = _segment_layout(B, T, nseg, dev, bt=BT)
    NS = B * nseg
    c = _cfg("dstate", inter, K, V, BV=BVS, num_warps=nw, num_stages=_scan_stages(inter, KP))
    scan = dict(H=H, K=K, V=V, BT=BT, KP=KP, GATED=_gated(g, q.dtype), DT=dt, PREC=prec, **c)
    grid = (cdiv(V, c["BV"]), NS * H)
    d0 = _empty(NS, H, K, V, dtype=torch.float32, device=dev)
    _dstate_kernel[grid](q, k, w, g, do, dvn, dvno, None, None, d0, s_offsets, s_chunk_offsets, per, scale,
                         HAS_DHT=False, STORE_DH0=True, STORE=False, **scan)
    if P is None or P.shape[0] != NS:
        P = _transitions(k, w, g, s_offsets, s_chunk_offsets, per, NS, BT,
                         _segment_scan_cfg(inter, K, V, BT, NS * H, dev))
    d_out = _empty(NS, H, K, V, dtype=torch.float32, device=dev)   # the gradient leaving each segment
    chain = _chain_cfg(inter, K, V)
    _segment_chain_kernel[(cdiv(V, chain["BV"]), N * H)](P, d0, dht, d_out, dh0, nseg, H=H, K=K, V=V,
                                                         HAS_H0=dht is not None, STORE_HT=dh0 is not None,
                                                         REVERSE=True, **chain)
    _dstate_kernel[grid](q, k, w, g, do, dvn, dvno, d_out, dh, None, s_offsets, s_chunk_offsets, per, scale,
                         HAS_DHT=True, STORE_DH0=False, **scan)


def _backward(q, k, v, beta, g, h0, offsets, scale, BT, saved, do, dht):
    Tm, w, vn, h, chunk_offsets, chunk_indices, maxc, P = saved
    Tt, H, K = q.shape
    V = v.shape[-1]
    N = offsets.numel() - 1
    NC = chunk_indices.shape[0]
    dev = q.device
    KP, BK, BV, BVS = _tiles(K, V)
    gated = _gated(g, q.dtype)
    inter, prec = _operands(q.dtype, K)
    dt, nw = _TL[inter], _num_warps(BT, inter)
    c_dqkw = _cfg("dqkw", inter, K, V, BK=BK, BV=BV, num_warps=nw)
    NK = cdiv(K, c_dqkw["BK"])    # key tiles of dQ/dK/dW, each with its share of dg
    f32 = torch.float32
    dvn = _empty(Tt, H, V, dtype=f32, device=dev)
    dh = _empty(NC, H, K, V, dtype=inter, device=dev)   # like h: read only as a product operand
    dh0 = _empty(N, H, K, V, dtype=f32, device=dev) if h0 is not None else None
    dq = _empty(Tt, H, K, dtype=q.dtype, device=dev)
    dk = _empty(Tt, H, K, dtype=f32, device=dev)
    # dW and the finished dVn only ever enter products as `inter` operands: stored in it
    dw = _empty(Tt, H, K, dtype=inter, device=dev)
    dvno = dvn if inter == f32 else _empty(Tt, H, V, dtype=inter, device=dev)
    dv = _empty(Tt, H, V, dtype=v.dtype, device=dev)
    dko = _empty(Tt, H, K, dtype=k.dtype, device=dev)
    dbeta = _empty(Tt, H, dtype=beta.dtype, device=dev)
    dgp = _empty(NK, Tt, H, dtype=f32, device=dev) if gated else None
    dg = _empty(Tt, H, dtype=g.dtype, device=dev) if gated else None
    if NC > 0:
        c = _cfg("dvn_local", inter, K, V, BK=BK, BV=BV, num_warps=nw)
        grid, inner = chunk_grid((cdiv(V, c["BV"]),), NC, H)
        _dvn_local_kernel[grid](
            q, k, g, do, dvn, offsets, chunk_indices, scale, HEADS_INNER=inner, H=H, K=K, V=V, BT=BT, GATED=gated,
            DT=dt, PREC=prec, **c)
    nseg = _segments(offsets, N * H, V, KP, dev, BT)
    if N * H > 0 and nseg is not None:
        _dstate_segments(q, k, w, g, do, dvn, dvno, dht, dh, dh0, offsets, scale, BT, nseg, P)
    elif N * H > 0:
        c = _cfg("dstate_few" if _few(N * H, V, BVS, dev) else "dstate", inter, K, V, BV=BVS, num_warps=nw,
                 num_stages=_scan_stages(inter, KP))
        _dstate_kernel[(cdiv(V, c["BV"]), N * H)](
            q, k, w, g, do, dvn, dvno, dht, dh, dh0, offsets, chunk_offsets, maxc, scale, H=H, K=K, V=V, BT=BT,
            KP=KP, GATED=gated, HAS_DHT=dht is not None, STORE_DH0=h0 is not None, DT=dt, PREC=prec, **c)
    if NC > 0:
        grid, inner = chunk_grid((NK,), NC, H)
        _dqkw_kernel[grid](
            q, k, g, h, dh, do, vn, dvno, dq, dk, dw, dgp, offsets, chunk_indices, scale, Tt, HEADS_INNER=inner, H=H,
            K=K, V=V, BT=BT, GATED=gated, DT=dt, PREC=prec, **c_dqkw)
        # 32-wide tiles by default (five C × C fp32 tiles are live; LAUNCH's measured 64 is faster for
        # bf16 operands); one pipelining stage always: see LAUNCH["wy_bwd"]
        grid, inner = chunk_grid((), NC, H)
        _wy_bwd_kernel[grid](
            k, v, beta, g, Tm, dvno, dw, dk, dko, dv, dbeta, dgp, dg, offsets, chunk_indices, Tt, HEADS_INNER=inner,
            H=H, K=K, V=V, BT=BT, NK=NK, GATED=gated, DT=dt, PREC=prec,
            **_cfg("wy_bwd", inter, K, V, BK=min(BK, 32), BV=min(BV, 32), num_warps=nw, num_stages=1))
    return dq, dko, dv, dbeta, dg, dh0


class ChunkDelta(torch.autograd.Function):
    """Autograd wrapper; tensors flattened to [T_total, H, ·], states [N, H, K, V] in fp32."""

    @staticmethod
    def forward(ctx, q, k, v, beta, g, h0, offsets, scale: float, chunk_size: int, store_ht: bool):
        o, ht, saved = _forward(q, k, v, beta, g, h0, offsets, scale, chunk_size, store_ht,
                                keep=any(ctx.needs_input_grad[:6]))
        Tm, w, vn, h, chunk_offsets, chunk_indices, maxc, P = saved
        ctx.save_for_backward(q, k, v, beta, g, h0, offsets, Tm, w, vn, h, chunk_offsets, chunk_indices, P)
        ctx.maxc, ctx.scale, ctx.chunk_size = maxc, scale, chunk_size
        return o, ht

    @staticmethod
    @once_differentiable
    def backward(ctx, do, dht):
        q, k, v, beta, g, h0, offsets, Tm, w, vn, h, chunk_offsets, chunk_indices, P = ctx.saved_tensors
        saved = (Tm, w, vn, h, chunk_offsets, chunk_indices, ctx.maxc, P)
        dq, dk, dv, dbeta, dg, dh0 = _backward(
            q, k, v, beta, g, h0, offsets, ctx.scale, ctx.chunk_size, saved, do.contiguous(),
            None if dht is None else dht.contiguous())
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dbeta.to(beta.dtype),
                None if dg is None else dg.to(g.dtype), None if dh0 is None else dh0.to(h0.dtype),
                None, None, None, None)


# bf16 q, k, v with K ≠ V came out wrong on the H200 (Triton 3.6): at T = 200 every output and
# gradient for K, V = (40, 24), (40, 32), (64, 32), (32, 16), dQ and dK for (24, 40); (40, 40),
# (128, 64), fp16 and fp32 passed, and so did bf16 with fp32 operands (HALF_OPERANDS = False), one
# pass or two, with segments or without (kernels/results/experiments_2026-12-05b.md; an audit's
# illegal access at T = 1 did not come back). The cause is not found. Those shapes now pad the
# narrower of (q, k) and v with zero channels to the wider dim (UNEQUAL_PAD), so the K = V kernels run,
# which pass at those dims in bf16: zero key channels leave a state's rows as they were (zero), zero
# value channels its columns, and both are cut off again. On the H200 the padded rows passed the GPU
# check (deltanet, gated_deltanet, longhorn, ttt_linear at (40, 24), (24, 40), (128, 64)), and at
# B·T = 32K, T = 4K, H = 16, K = 128, V = 64 DeltaNet's forward took 0.441 ms padded against 6.37 in
# fp32 (forward + backward 2.73 against 15.0; experiments_2026-12-05c.md). UNEQUAL_PAD = False falls
# back to UNEQUAL_IN_FP32 (the inputs widened to fp32 once at the entry); both False: as bf16 (wrong).
UNEQUAL_IN_FP32 = True
UNEQUAL_PAD = True


def _unequal_bf16(x: Tensor, K: int, V: int) -> str | None:
    """How chunk_delta runs bf16 inputs with K ≠ V on a GPU: "pad", "fp32" or None (as they are)."""
    if not (x.is_cuda and x.dtype == torch.bfloat16 and K != V):
        return None
    return "pad" if UNEQUAL_PAD else "fp32" if UNEQUAL_IN_FP32 else None


def _pad_last(x: Tensor | None, n: int) -> Tensor | None:
    """x with its last dim zero-padded to n (differentiable: the padding's gradient is dropped)."""
    if x is None or x.shape[-1] == n:
        return x
    return torch.nn.functional.pad(x, (0, n - x.shape[-1]))


def chunk_delta(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None = None,
                scale: float | None = None, initial_state: Tensor | None = None,
                output_final_state: bool = False, cu_seqlens: Tensor | None = None,
                chunk_size: int = 64) -> tuple[Tensor, Tensor | None]:
    """The delta rule (``g=None``: DeltaNet) or gated delta rule, chunked (WY/UT form).

    q, k [B, T, H, K] (k normally L2-normalised), v [B, T, H, V], beta and g (log decay, ≤ 0)
    [B, T, H]; q, k, v share one of fp32/fp16/bf16, accumulation and state are fp32. ``scale``
    multiplies q (default K^-0.5, as in fla; ``kernels.compile`` passes 1.0 with q already scaled).
    ``initial_state`` [N, H, K, V] with N = B, or N = len(cu_seqlens) − 1 for a packed batch (B = 1).
    ``chunk_size`` ∈ {16, 32, 64}. Returns ``o`` [B, T, H, V] in v's dtype and the fp32 final state
    [N, H, K, V] (None unless ``output_final_state``); differentiable in q, k, v, beta, g and
    initial_state. Same results as :func:`fused_recurrent_delta` up to rounding.
    """
    op = "chunk_delta"
    _need_tensor(op, "q", q, 4, "[B, T, H, K]")
    _need_tensor(op, "k", k, 4, "[B, T, H, K]")
    _need_tensor(op, "v", v, 4, "[B, T, H, V]")
    _need_tensor(op, "beta", beta, 3, "[B, T, H]")
    if g is not None:
        _need_tensor(op, "g", g, 3, "[B, T, H]")
    if initial_state is not None:
        _need_tensor(op, "initial_state", initial_state, 4, "[N, H, K, V]")
    check_device(op, q=q, k=k, v=v, beta=beta, g=g, initial_state=initial_state)
    _check_qkv_dtype(op, q, k, v)
    B, T, H, K = q.shape
    V = v.shape[-1]
    _check_same(op, "k", k, (B, T, H, K), "[B, T, H, K]")
    _check_same(op, "v", v, (B, T, H, V), "[B, T, H, V]")
    _check_same(op, "beta", beta, (B, T, H), "[B, T, H]")
    _need_float(op, "beta", beta)
    if g is not None:
        _check_same(op, "g", g, (B, T, H), "[B, T, H]")
        _need_float(op, "g", g)
    check_head_dim(op, "K", K)
    check_head_dim(op, "V", V)
    N = check_cu_seqlens(op, cu_seqlens, B, T)
    if initial_state is not None:
        _check_same(op, "initial_state", initial_state, (N, H, K, V), "[N, H, K, V]")
        _need_float(op, "initial_state", initial_state)
    chunk_size = check_chunk_size(op, chunk_size, CHUNK_SIZES)
    scale = K ** -0.5 if scale is None else check_scale(op, scale)

    if T == 0 and cu_seqlens is None:   # every sequence empty: the state passes through
        offsets = torch.zeros(B + 1, dtype=torch.int64, device=q.device)
    else:
        offsets = seq_bounds(cu_seqlens, B, T, q.device)
    flat = lambda t: None if t is None else t.reshape(B * T, *t.shape[2:]).contiguous()  # noqa: E731
    h0 = None if initial_state is None else initial_state.contiguous()
    qf, kf, vf, bf = interpreter_upcast(flat(q), flat(k), flat(v), flat(beta))
    mode = _unequal_bf16(qf, K, V)
    if mode == "fp32":
        qf, kf, vf = qf.float(), kf.float(), vf.float()   # see UNEQUAL_IN_FP32
    elif mode == "pad":   # see UNEQUAL_PAD
        P = max(K, V)
        qf, kf, vf = _pad_last(qf, P), _pad_last(kf, P), _pad_last(vf, P)
        h0 = None if h0 is None else _pad_last(_pad_last(h0, P).transpose(-1, -2), P).transpose(-1, -2).contiguous()
    o, ht = apply(ChunkDelta, qf, kf, vf, bf, flat(g), h0, offsets, scale, chunk_size, bool(output_final_state))
    if mode == "pad":
        o, ht = o[..., :V], (None if ht is None else ht[..., :K, :V].contiguous())
    return o.reshape(B, T, H, V).to(v.dtype), ht
