r"""Exact chunked kernels for the linear Titans memory (ℓ2 bias, momentum, ℓ2 retention), fwd and bwd.

Inside a chunk that starts from (S_0, Z_0), with chunk-local cumulative logs G^α_t = Σ_{s≤t} g_s,
G^η_t = Σ_{s≤t} log η_s, the masks L^α_tj = e^{G^α_t − G^α_j} (j ≤ t), L^η_ji = e^{G^η_j − G^η_i}
(i ≤ j), and θ_i k_i e_iᵀ the gradient written at step i, the two recurrences unroll to

    S_t = a_t S_0 + b_t Z_0 − Σ_{i≤t} c_ti θ_i k_i e_iᵀ,   a = e^{G^α},  b = L^α e^{G^η},  c = L^α L^η.

The error e_t = ρ_t S_{t−1}ᵀ k_t − v_t reads S one step back (ρ = 1, or α_t when the gradient is
taken at the retained state), which gives the same sums with G^α_t replaced by the shifted
G^ρ_t = G^α_t − g_t (or G^α_t) and the strict mask j < t: a', b', c'. The chunk's errors E [C, V]
then solve one unit-lower-triangular system, whose matrix does not depend on the state:

    (I + A) E = diag(a') K S_0 + diag(b') K Z_0 − V,     A_ti = c'_ti θ_i k_tᵀ k_i  (i < t)

so with T = (I + A)⁻¹ (forward substitution), W1 = T diag(a') K, W2 = T diag(b') K, U = T V:

    _prep_kernel    T, W1, W2, U and the output mask c ⊙ θ, every chunk at once
    _state_kernel   E = W1 S + W2 Z − U;  S ← a_L S + b_L Z − Kᵀ diag(θ c_L) E;
                    Z ← e^{G^η_L} Z − Kᵀ diag(θ e^{G^η_L − G^η}) E        (sequential over chunks)
    _output_kernel  O = diag(a) Q S_0 + diag(b) Q Z_0 − (Q Kᵀ ⊙ c ⊙ θ) E, every chunk at once

Backward: ``_dstate_kernel`` walks the chunks last to first carrying (∂L/∂S, ∂L/∂Z) through each
chunk's map (the only sequential part); ``_grad_kernel`` then takes every chunk at once and, from the
chunk's entering state, its errors and the gradient of its leaving state, gives dq, dk, dv, dθ, dg
and dlog_eta (through T by dA = −(Tᵀ dE) Eᵀ and through the masks a, b, c, a', b', c' into the
cumulative logs). Every exponent is ≤ 0 for log gates ≤ 0. Sums over V are written per V-block.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._common import next_pow2
from ..diag.chunk import chunk_layout

__all__ = ["ChunkTitans", "CHUNK_SIZES"]

CHUNK_SIZES = (16, 32, 64)


def _empty(*shape, dtype, device) -> Tensor:
    """Every buffer the kernels write goes through here (tests poison it with NaN)."""
    return torch.empty(*shape, dtype=dtype, device=device)


def _blocks(K: int, V: int, BT: int) -> dict[str, int]:
    """Tile sizes (K is never split; V-blocks per kernel), warps and pipeline stages.

    Not tuned on a GPU yet (``python -m kernels.memory.tune`` sweeps them). The sequential kernels
    keep S and Z ([BK, BV] each) in registers and load [BT, BK] fp32 tiles every chunk; one
    pipeline stage keeps their shared memory within an H100/H200 SM at K = 128.
    """
    BK = max(16, next_pow2(K))
    Vp = max(16, next_pow2(V))
    big = BK * BT > 64 * 64
    return {"BK": BK, "BV_prep": min(Vp, 64), "BV_state": min(Vp, 32), "BV_out": min(Vp, 64),
            "BV_grad": min(Vp, 32), "warps_state": 4, "stages_state": 1 if big else 2,
            "warps_grad": 8 if big else 4, "warps_prep": 4}


def _prec(dtype: torch.dtype) -> str:
    # fp32 inputs get exact fp32 products (tf32 would cost ~1e-3 relative error)
    return "ieee" if dtype == torch.float32 else "tf32"


# --------------------------------------------------------------------------------------------
# shared pieces
# --------------------------------------------------------------------------------------------

@triton.jit
def _load_gates(g, eta, theta, t_rows, m_t, i_h, H: tl.constexpr, USE_G: tl.constexpr,
                RETAINED: tl.constexpr):
    """θ, the cumulative logs G^α, G^η, the shifted G^ρ and the totals, for one chunk ([BT] each)."""
    b_th = tl.load(theta + t_rows * H + i_h, mask=m_t, other=0.).to(tl.float32)
    b_h = tl.load(eta + t_rows * H + i_h, mask=m_t, other=0.).to(tl.float32)
    if USE_G:
        b_g = tl.load(g + t_rows * H + i_h, mask=m_t, other=0.).to(tl.float32)
    else:
        b_g = tl.zeros_like(b_h)
    b_Ga = tl.cumsum(b_g, axis=0)
    b_Ge = tl.cumsum(b_h, axis=0)
    if RETAINED:
        b_Gp = b_Ga
    else:
        b_Gp = b_Ga - b_g
    return b_th, b_Ga, b_Ge, b_Gp, tl.sum(b_g, axis=0), tl.sum(b_h, axis=0)


@triton.jit
def _decay_mask(x_row, x_col, mask):
    """exp(x_row[t] − x_col[j]) where mask, else 0."""
    return tl.exp(tl.where(mask, x_row[:, None] - x_col[None, :], float("-inf")))


@triton.jit
def _ends(b_Ga, b_Ge, b_GaL, b_GeL, b_Le, m_t):
    """The chunk's end coefficients: b_L, c_L [BT], e^{G^η_L − G^η} [BT]."""
    b_xE = tl.where(m_t, tl.exp(b_GaL - b_Ga), 0.)                    # e^{G^α_L − G^α_j}, real j
    b_bE = tl.sum(b_xE * tl.exp(b_Ge), axis=0)
    b_cE = tl.sum(b_xE[:, None] * b_Le, axis=0)                       # Σ_j e^{G^α_L − G^α_j} L^η_ji
    b_fE = tl.where(m_t, tl.exp(b_GeL - b_Ge), 0.)
    return b_xE, b_bE, b_cE, b_fE


# --------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------

@triton.jit
def _prep_kernel(k, v, theta, g, eta, w1, w2, u, tm, cm, offsets, chunk_indices,
                 H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                 BV: tl.constexpr, USE_G: tl.constexpr, RETAINED: tl.constexpr, PREC: tl.constexpr):
    """T = (I + A)⁻¹, W1, W2, U and c ⊙ θ of one chunk and head."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    i_n = tl.load(chunk_indices + i_c * 2).to(tl.int64)
    c = tl.load(chunk_indices + i_c * 2 + 1).to(tl.int64)
    bos = tl.load(offsets + i_n).to(tl.int64)
    eos = tl.load(offsets + i_n + 1).to(tl.int64)
    t_rows = bos + c * BT + tl.arange(0, BT)
    m_t = t_rows < eos
    o_i = tl.arange(0, BT)
    low = o_i[:, None] >= o_i[None, :]
    strict = o_i[:, None] > o_i[None, :]
    o_k = tl.arange(0, BK)
    m_tk = m_t[:, None] & (o_k < K)[None, :]
    p_tk = (t_rows[:, None] * H + i_h) * K + o_k[None, :]
    b_k = tl.load(k + p_tk, mask=m_tk, other=0.).to(tl.float32)

    b_th, b_Ga, b_Ge, b_Gp, b_GaL, b_GeL = _load_gates(g, eta, theta, t_rows, m_t, i_h, H, USE_G, RETAINED)
    b_La = _decay_mask(b_Ga, b_Ga, low)
    b_Lp = _decay_mask(b_Gp, b_Ga, strict)
    b_Le = _decay_mask(b_Ge, b_Ge, low)
    b_c = tl.dot(b_La, b_Le, input_precision="ieee")
    b_cp = tl.dot(b_Lp, b_Le, input_precision="ieee")
    b_ap = tl.exp(b_Gp)
    b_bp = tl.sum(b_Lp * tl.exp(b_Ge)[None, :], axis=1)

    # T = (I + A)⁻¹ by forward substitution: row i of T − I from the rows above it
    b_KK = tl.dot(b_k, tl.trans(b_k), input_precision=PREC)
    b_T = -tl.where(strict, b_cp * b_th[None, :] * b_KK, 0.)
    for i in range(1, BT):
        row = o_i == i
        b_r = tl.sum(tl.where(row[:, None], b_T, 0.), axis=0)
        b_r = b_r + tl.where(o_i < i, tl.sum(b_r[:, None] * b_T, axis=0), 0.)
        b_T = tl.where(row[:, None], b_r[None, :], b_T)
    b_T += (o_i[:, None] == o_i[None, :]).to(tl.float32)

    p_tt = (t_rows[:, None] * H + i_h) * BT + o_i[None, :]
    m_tt = m_t[:, None] & (o_i < BT)[None, :]
    tl.store(tm + p_tt, b_T, mask=m_tt)
    tl.store(cm + p_tt, tl.where(low, b_c * b_th[None, :], 0.), mask=m_tt)
    tl.store(w1 + p_tk, tl.dot(b_T, b_k * b_ap[:, None], input_precision=PREC), mask=m_tk)
    tl.store(w2 + p_tk, tl.dot(b_T, b_k * b_bp[:, None], input_precision=PREC), mask=m_tk)
    for vb in range(0, tl.cdiv(V, BV)):
        o_v = vb * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        p_tv = (t_rows[:, None] * H + i_h) * V + o_v[None, :]
        b_v = tl.load(v + p_tv, mask=m_tv, other=0.).to(tl.float32)
        tl.store(u + p_tv, tl.dot(b_T, b_v, input_precision=PREC), mask=m_tv)


@triton.jit
def _state_kernel(k, theta, g, eta, w1, w2, u, e, s0, z0, hs, hz, st, zt, offsets, chunk_offsets, MAXC,
                  H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                  BV: tl.constexpr, USE_G: tl.constexpr, RETAINED: tl.constexpr, HAS_H0: tl.constexpr,
                  STORE_HT: tl.constexpr, PREC: tl.constexpr):
    """Walk one sequence's chunks: store the entering (S, Z) and the errors E of every chunk."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(offsets + i_n).to(tl.int64)
    eos = tl.load(offsets + i_n + 1).to(tl.int64)
    c0 = tl.load(chunk_offsets + i_n).to(tl.int64)
    nc = tl.load(chunk_offsets + i_n + 1).to(tl.int64) - c0
    o_i = tl.arange(0, BT)
    low = o_i[:, None] >= o_i[None, :]
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_state = o_k[:, None] * V + o_v[None, :]
    b_S = tl.zeros([BK, BV], dtype=tl.float32)
    b_Z = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        b_S += tl.load(s0 + i_nh.to(tl.int64) * K * V + p_state, mask=m_kv, other=0.)
        b_Z += tl.load(z0 + i_nh.to(tl.int64) * K * V + p_state, mask=m_kv, other=0.)
    # chunks past a short sequence's end are masked no-ops (loop bounds must be plain ints)
    for c in range(0, MAXC):
        ok = c < nc
        p_h = ((c0 + c) * H + i_h) * K * V + p_state
        tl.store(hs + p_h, b_S, mask=m_kv & ok)
        tl.store(hz + p_h, b_Z, mask=m_kv & ok)
        t_rows = bos + c * BT + o_i
        m_t = (t_rows < eos) & ok
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        p_tk = (t_rows[:, None] * H + i_h) * K + o_k[None, :]
        p_tv = (t_rows[:, None] * H + i_h) * V + o_v[None, :]
        b_w1 = tl.load(w1 + p_tk, mask=m_tk, other=0.)
        b_w2 = tl.load(w2 + p_tk, mask=m_tk, other=0.)
        b_E = tl.dot(b_w1, b_S, input_precision=PREC) + tl.dot(b_w2, b_Z, input_precision=PREC) \
            - tl.load(u + p_tv, mask=m_tv, other=0.)
        tl.store(e + p_tv, b_E, mask=m_tv)
        b_k = tl.load(k + p_tk, mask=m_tk, other=0.).to(tl.float32)
        b_th, b_Ga, b_Ge, b_Gp, b_GaL, b_GeL = _load_gates(g, eta, theta, t_rows, m_t, i_h, H, USE_G,
                                                           RETAINED)
        b_Le = _decay_mask(b_Ge, b_Ge, low)
        b_xE, b_bE, b_cE, b_fE = _ends(b_Ga, b_Ge, b_GaL, b_GeL, b_Le, m_t)
        b_kS = b_k * (b_th * b_cE)[:, None]
        b_kZ = b_k * (b_th * b_fE)[:, None]
        b_S = tl.exp(b_GaL) * b_S + b_bE * b_Z - tl.dot(tl.trans(b_kS), b_E, input_precision=PREC)
        b_Z = tl.exp(b_GeL) * b_Z - tl.dot(tl.trans(b_kZ), b_E, input_precision=PREC)
    if STORE_HT:
        tl.store(st + i_nh.to(tl.int64) * K * V + p_state, b_S, mask=m_kv)
        tl.store(zt + i_nh.to(tl.int64) * K * V + p_state, b_Z, mask=m_kv)


@triton.jit
def _output_kernel(q, k, theta, g, eta, e, hs, hz, cm, o, offsets, chunk_indices,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr, USE_G: tl.constexpr, RETAINED: tl.constexpr, PREC: tl.constexpr):
    """O = diag(a) Q S_0 + diag(b) Q Z_0 − (Q Kᵀ ⊙ c ⊙ θ) E for one chunk and V-block."""
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n = tl.load(chunk_indices + i_c * 2).to(tl.int64)
    c = tl.load(chunk_indices + i_c * 2 + 1).to(tl.int64)
    bos = tl.load(offsets + i_n).to(tl.int64)
    eos = tl.load(offsets + i_n + 1).to(tl.int64)
    t_rows = bos + c * BT + tl.arange(0, BT)
    m_t = t_rows < eos
    o_i = tl.arange(0, BT)
    low = o_i[:, None] >= o_i[None, :]
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_tk = m_t[:, None] & m_k[None, :]
    m_tv = m_t[:, None] & m_v[None, :]
    p_tk = (t_rows[:, None] * H + i_h) * K + o_k[None, :]
    p_tv = (t_rows[:, None] * H + i_h) * V + o_v[None, :]
    p_h = (i_c.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :]
    m_kv = m_k[:, None] & m_v[None, :]
    b_q = tl.load(q + p_tk, mask=m_tk, other=0.).to(tl.float32)
    b_k = tl.load(k + p_tk, mask=m_tk, other=0.).to(tl.float32)
    b_S = tl.load(hs + p_h, mask=m_kv, other=0.)
    b_Z = tl.load(hz + p_h, mask=m_kv, other=0.)
    b_E = tl.load(e + p_tv, mask=m_tv, other=0.)
    b_cm = tl.load(cm + (t_rows[:, None] * H + i_h) * BT + o_i[None, :], mask=m_t[:, None] & low, other=0.)
    b_th, b_Ga, b_Ge, b_Gp, b_GaL, b_GeL = _load_gates(g, eta, theta, t_rows, m_t, i_h, H, USE_G, RETAINED)
    b_b = tl.sum(_decay_mask(b_Ga, b_Ga, low) * tl.exp(b_Ge)[None, :], axis=1)
    b_P = tl.dot(b_q, tl.trans(b_k), input_precision=PREC) * b_cm
    b_o = tl.exp(b_Ga)[:, None] * tl.dot(b_q, b_S, input_precision=PREC) \
        + b_b[:, None] * tl.dot(b_q, b_Z, input_precision=PREC) - tl.dot(b_P, b_E, input_precision=PREC)
    tl.store(o + p_tv, b_o.to(o.dtype.element_ty), mask=m_tv)


# --------------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------------

@triton.jit
def _dstate_kernel(q, k, theta, g, eta, w1, w2, cm, do, dst, dzt, dhs, dhz, ds0, dz0, offsets,
                   chunk_offsets, MAXC,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr, USE_G: tl.constexpr, RETAINED: tl.constexpr, HAS_DHT: tl.constexpr,
                   STORE_DH0: tl.constexpr, PREC: tl.constexpr):
    """Walk the chunks backwards: store the gradient of the (S, Z) leaving every chunk."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(offsets + i_n).to(tl.int64)
    eos = tl.load(offsets + i_n + 1).to(tl.int64)
    c0 = tl.load(chunk_offsets + i_n).to(tl.int64)
    nc = tl.load(chunk_offsets + i_n + 1).to(tl.int64) - c0
    o_i = tl.arange(0, BT)
    low = o_i[:, None] >= o_i[None, :]
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_state = o_k[:, None] * V + o_v[None, :]
    b_dS = tl.zeros([BK, BV], dtype=tl.float32)
    b_dZ = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        b_dS += tl.load(dst + i_nh.to(tl.int64) * K * V + p_state, mask=m_kv, other=0.)
        b_dZ += tl.load(dzt + i_nh.to(tl.int64) * K * V + p_state, mask=m_kv, other=0.)
    for i in range(0, MAXC):
        c = nc - 1 - i
        ok = c >= 0
        p_h = ((c0 + c) * H + i_h) * K * V + p_state
        tl.store(dhs + p_h, b_dS, mask=m_kv & ok)
        tl.store(dhz + p_h, b_dZ, mask=m_kv & ok)
        t_rows = bos + c * BT + o_i
        m_t = (t_rows < eos) & (t_rows >= bos) & ok
        m_tk = m_t[:, None] & m_k[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        p_tk = (t_rows[:, None] * H + i_h) * K + o_k[None, :]
        b_q = tl.load(q + p_tk, mask=m_tk, other=0.).to(tl.float32)
        b_k = tl.load(k + p_tk, mask=m_tk, other=0.).to(tl.float32)
        b_do = tl.load(do + (t_rows[:, None] * H + i_h) * V + o_v[None, :], mask=m_tv, other=0.).to(tl.float32)
        b_cm = tl.load(cm + (t_rows[:, None] * H + i_h) * BT + o_i[None, :], mask=m_t[:, None] & low,
                       other=0.)
        b_th, b_Ga, b_Ge, b_Gp, b_GaL, b_GeL = _load_gates(g, eta, theta, t_rows, m_t, i_h, H, USE_G,
                                                           RETAINED)
        b_Le = _decay_mask(b_Ge, b_Ge, low)
        b_xE, b_bE, b_cE, b_fE = _ends(b_Ga, b_Ge, b_GaL, b_GeL, b_Le, m_t)
        b_b = tl.sum(_decay_mask(b_Ga, b_Ga, low) * tl.exp(b_Ge)[None, :], axis=1)
        b_P = tl.dot(b_q, tl.trans(b_k), input_precision=PREC) * b_cm
        # dE = −Pᵀ dO − diag(θ c_L) K dS − diag(θ e^{G^η_L − G^η}) K dZ
        b_dE = -tl.dot(tl.trans(b_P), b_do, input_precision=PREC) \
            - (b_th * b_cE)[:, None] * tl.dot(b_k, b_dS, input_precision=PREC) \
            - (b_th * b_fE)[:, None] * tl.dot(b_k, b_dZ, input_precision=PREC)
        b_w1 = tl.load(w1 + p_tk, mask=m_tk, other=0.)
        b_w2 = tl.load(w2 + p_tk, mask=m_tk, other=0.)
        b_dSn = tl.dot(tl.trans(b_q * tl.exp(b_Ga)[:, None]), b_do, input_precision=PREC) \
            + tl.exp(b_GaL) * b_dS + tl.dot(tl.trans(b_w1), b_dE, input_precision=PREC)
        b_dZ = tl.dot(tl.trans(b_q * b_b[:, None]), b_do, input_precision=PREC) + b_bE * b_dS \
            + tl.exp(b_GeL) * b_dZ + tl.dot(tl.trans(b_w2), b_dE, input_precision=PREC)
        b_dS = b_dSn
    if STORE_DH0:
        tl.store(ds0 + i_nh.to(tl.int64) * K * V + p_state, b_dS, mask=m_kv)
        tl.store(dz0 + i_nh.to(tl.int64) * K * V + p_state, b_dZ, mask=m_kv)


@triton.jit
def _rev_cumsum(x):
    """Σ_{s≥t} x_s along a [BT] vector."""
    return tl.sum(x, axis=0) - tl.cumsum(x, axis=0) + x


@triton.jit
def _grad_kernel(q, k, theta, g, eta, e, tm, cm, hs, hz, dhs, dhz, do,
                 dq, dk, dv, dth, dg, deta, offsets, chunk_indices, NT,
                 H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                 BV: tl.constexpr, USE_G: tl.constexpr, RETAINED: tl.constexpr, PREC: tl.constexpr):
    """Every input gradient of one chunk and V-block (sums over V are partial, per V-block)."""
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n = tl.load(chunk_indices + i_c * 2).to(tl.int64)
    c = tl.load(chunk_indices + i_c * 2 + 1).to(tl.int64)
    bos = tl.load(offsets + i_n).to(tl.int64)
    eos = tl.load(offsets + i_n + 1).to(tl.int64)
    t_rows = bos + c * BT + tl.arange(0, BT)
    m_t = t_rows < eos
    o_i = tl.arange(0, BT)
    low = o_i[:, None] >= o_i[None, :]
    strict = o_i[:, None] > o_i[None, :]
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_tk = m_t[:, None] & m_k[None, :]
    m_tv = m_t[:, None] & m_v[None, :]
    m_kv = m_k[:, None] & m_v[None, :]
    p_tk = (t_rows[:, None] * H + i_h) * K + o_k[None, :]
    p_tv = (t_rows[:, None] * H + i_h) * V + o_v[None, :]
    p_tt = (t_rows[:, None] * H + i_h) * BT + o_i[None, :]
    p_h = (i_c.to(tl.int64) * H + i_h) * K * V + o_k[:, None] * V + o_v[None, :]

    b_q = tl.load(q + p_tk, mask=m_tk, other=0.).to(tl.float32)
    b_k = tl.load(k + p_tk, mask=m_tk, other=0.).to(tl.float32)
    b_do = tl.load(do + p_tv, mask=m_tv, other=0.).to(tl.float32)
    b_E = tl.load(e + p_tv, mask=m_tv, other=0.)
    b_T = tl.load(tm + p_tt, mask=m_t[:, None], other=0.)
    b_S = tl.load(hs + p_h, mask=m_kv, other=0.)
    b_Z = tl.load(hz + p_h, mask=m_kv, other=0.)
    b_dS = tl.load(dhs + p_h, mask=m_kv, other=0.)
    b_dZ = tl.load(dhz + p_h, mask=m_kv, other=0.)

    # masks and coefficients of the chunk (see the module docstring)
    b_th, b_Ga, b_Ge, b_Gp, b_GaL, b_GeL = _load_gates(g, eta, theta, t_rows, m_t, i_h, H, USE_G, RETAINED)
    b_La = _decay_mask(b_Ga, b_Ga, low)
    b_Lp = _decay_mask(b_Gp, b_Ga, strict)
    b_Le = _decay_mask(b_Ge, b_Ge, low)
    b_eGe = tl.exp(b_Ge)
    b_Bm = b_La * b_eGe[None, :]                                        # terms of b
    b_Bp = b_Lp * b_eGe[None, :]                                        # terms of b'
    b_a, b_ap = tl.exp(b_Ga), tl.exp(b_Gp)
    b_b, b_bp = tl.sum(b_Bm, axis=1), tl.sum(b_Bp, axis=1)
    b_c = tl.dot(b_La, b_Le, input_precision="ieee")
    b_cp = tl.dot(b_Lp, b_Le, input_precision="ieee")
    b_xE, b_bE, b_cE, b_fE = _ends(b_Ga, b_Ge, b_GaL, b_GeL, b_Le, m_t)
    b_aE, b_eE = tl.exp(b_GaL), tl.exp(b_GeL)

    b_QK = tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
    b_KK = tl.dot(b_k, tl.trans(b_k), input_precision=PREC)
    b_X1 = tl.dot(b_k, b_dS, input_precision=PREC)                     # K dS_L
    b_X2 = tl.dot(b_k, b_dZ, input_precision=PREC)                     # K dZ_L
    b_P = tl.where(low, b_QK * b_c * b_th[None, :], 0.)
    b_dE = -tl.dot(tl.trans(b_P), b_do, input_precision=PREC) \
        - (b_th * b_cE)[:, None] * b_X1 - (b_th * b_fE)[:, None] * b_X2
    b_dR = tl.dot(tl.trans(b_T), b_dE, input_precision=PREC)           # through (I + A) E = R
    tl.store(dv + p_tv, (-b_dR).to(dv.dtype.element_ty), mask=m_tv)
    b_dA = tl.where(strict, -tl.dot(b_dR, tl.trans(b_E), input_precision=PREC), 0.)
    b_dP = tl.where(low, -tl.dot(b_do, tl.trans(b_E), input_precision=PREC), 0.)
    b_D = b_dP * b_c * b_th[None, :]
    b_F = b_dA * b_cp * b_th[None, :]

    # dq, dk
    b_dq = b_a[:, None] * tl.dot(b_do, tl.trans(b_S), input_precision=PREC) \
        + b_b[:, None] * tl.dot(b_do, tl.trans(b_Z), input_precision=PREC) \
        + tl.dot(b_D, b_k, input_precision=PREC)
    b_dk = tl.dot(tl.trans(b_D), b_q, input_precision=PREC) + tl.dot(b_F, b_k, input_precision=PREC) \
        + tl.dot(tl.trans(b_F), b_k, input_precision=PREC) \
        + b_ap[:, None] * tl.dot(b_dR, tl.trans(b_S), input_precision=PREC) \
        + b_bp[:, None] * tl.dot(b_dR, tl.trans(b_Z), input_precision=PREC) \
        - (b_th * b_cE)[:, None] * tl.dot(b_E, tl.trans(b_dS), input_precision=PREC) \
        - (b_th * b_fE)[:, None] * tl.dot(b_E, tl.trans(b_dZ), input_precision=PREC)
    tl.store(dq + i_v * NT * H * K + p_tk, b_dq, mask=m_tk)
    tl.store(dk + i_v * NT * H * K + p_tk, b_dk, mask=m_tk)

    # dθ and the gradients of the coefficients
    b_m1 = -tl.sum(b_X1 * b_E, axis=1)
    b_m2 = -tl.sum(b_X2 * b_E, axis=1)
    b_dth = tl.sum(b_dP * b_c * b_QK, axis=0) + tl.sum(b_dA * b_cp * b_KK, axis=0) \
        + b_cE * b_m1 + b_fE * b_m2
    tl.store(dth + i_v * NT * H + t_rows * H + i_h, b_dth, mask=m_t)
    b_dc = b_dP * b_th[None, :] * b_QK
    b_dcp = b_dA * b_th[None, :] * b_KK
    b_dcE = b_th * b_m1
    b_dfE = b_th * b_m2
    b_da = tl.sum(b_do * tl.dot(b_q, b_S, input_precision=PREC), axis=1)
    b_db = tl.sum(b_do * tl.dot(b_q, b_Z, input_precision=PREC), axis=1)
    b_dap = tl.sum(b_dR * tl.dot(b_k, b_S, input_precision=PREC), axis=1)
    b_dbp = tl.sum(b_dR * tl.dot(b_k, b_Z, input_precision=PREC), axis=1)
    b_daE = tl.sum(tl.sum(b_dS * b_S, axis=1), axis=0)
    b_dbE = tl.sum(tl.sum(b_dS * b_Z, axis=1), axis=0)
    b_deE = tl.sum(tl.sum(b_dZ * b_Z, axis=1), axis=0)

    # into the cumulative logs G^α (dGa), G^ρ (dGp), G^η (dGe); the end terms go to the last token
    b_dGa = b_da * b_a
    b_dGp = b_dap * b_ap
    b_dGe = -b_dfE * b_fE
    b_dGaL = b_daE * b_aE
    b_dGeL = b_deE * b_eE + tl.sum(b_dfE * b_fE, axis=0)
    b_W = b_db[:, None] * b_Bm
    b_dGa += tl.sum(b_W, axis=1) - tl.sum(b_W, axis=0)
    b_dGe += tl.sum(b_W, axis=0)
    b_W = b_dbp[:, None] * b_Bp
    b_dGp += tl.sum(b_W, axis=1)
    b_dGa -= tl.sum(b_W, axis=0)
    b_dGe += tl.sum(b_W, axis=0)
    b_w = b_dbE * b_xE * b_eGe
    b_dGaL += tl.sum(b_w, axis=0)
    b_dGa -= b_w
    b_dGe += b_w
    b_W = b_dc * b_c
    b_dGa += tl.sum(b_W, axis=1)
    b_dGe -= tl.sum(b_W, axis=0)
    b_x = tl.sum(tl.dot(b_dc, tl.trans(b_Le), input_precision="ieee") * b_La, axis=0)
    b_dGa -= b_x
    b_dGe += b_x
    b_W = b_dcp * b_cp
    b_dGp += tl.sum(b_W, axis=1)
    b_dGe -= tl.sum(b_W, axis=0)
    b_x = tl.sum(tl.dot(b_dcp, tl.trans(b_Le), input_precision="ieee") * b_Lp, axis=0)
    b_dGa -= b_x
    b_dGe += b_x
    b_dGaL += tl.sum(b_dcE * b_cE, axis=0)
    b_dGe -= b_dcE * b_cE
    b_x = b_xE * tl.sum(b_Le * b_dcE[None, :], axis=1)
    b_dGa -= b_x
    b_dGe += b_x
    last = o_i == tl.sum(m_t.to(tl.int32), axis=0) - 1
    b_dGa += tl.where(last, b_dGaL, 0.)
    b_dGe += tl.where(last, b_dGeL, 0.)
    if RETAINED:
        b_dg = _rev_cumsum(b_dGa + b_dGp)
    else:
        b_dg = _rev_cumsum(b_dGa + b_dGp) - b_dGp
    tl.store(deta + i_v * NT * H + t_rows * H + i_h, _rev_cumsum(b_dGe), mask=m_t)
    if USE_G:
        tl.store(dg + i_v * NT * H + t_rows * H + i_h, b_dg, mask=m_t)


# --------------------------------------------------------------------------------------------
# autograd
# --------------------------------------------------------------------------------------------

class ChunkTitans(torch.autograd.Function):
    """Tensors flattened to [T_total, H, ·]; states [N, H, K, V] fp32; both final states or neither."""

    @staticmethod
    def forward(ctx, q, k, v, theta, g, eta, s0, z0, offsets, retained, output_final_state, BT):
        Tt, H, K = q.shape
        V = v.shape[-1]
        N = offsets.numel() - 1
        dev, f32 = q.device, torch.float32
        bl = _blocks(K, V, BT)
        BK = bl["BK"]
        chunk_offsets, chunk_indices, maxc = chunk_layout(offsets, BT)
        NC = chunk_indices.shape[0]
        common = dict(H=H, K=K, V=V, BT=BT, BK=BK, USE_G=g is not None, RETAINED=bool(retained),
                      PREC=_prec(q.dtype))
        gg = theta if g is None else g   # a placeholder pointer when there is no retention
        w1 = _empty(Tt, H, K, dtype=f32, device=dev)
        w2 = _empty(Tt, H, K, dtype=f32, device=dev)
        u = _empty(Tt, H, V, dtype=f32, device=dev)
        tm = _empty(Tt, H, BT, dtype=f32, device=dev)
        cm = _empty(Tt, H, BT, dtype=f32, device=dev)
        hs = _empty(NC, H, K, V, dtype=f32, device=dev)
        hz = _empty(NC, H, K, V, dtype=f32, device=dev)
        e = _empty(Tt, H, V, dtype=f32, device=dev)
        o = _empty(Tt, H, V, dtype=v.dtype, device=dev)
        st = _empty(N, H, K, V, dtype=f32, device=dev) if output_final_state else None
        zt = _empty(N, H, K, V, dtype=f32, device=dev) if output_final_state else None
        if NC > 0:
            _prep_kernel[(NC, H)](k, v, theta, gg, eta, w1, w2, u, tm, cm, offsets, chunk_indices,
                                  BV=bl["BV_prep"], num_warps=bl["warps_prep"], **common)
        BVs = bl["BV_state"]
        _state_kernel[(triton.cdiv(V, BVs), N * H)](
            k, theta, gg, eta, w1, w2, u, e, s0, z0, hs, hz, st, zt, offsets, chunk_offsets, maxc,
            BV=BVs, HAS_H0=s0 is not None, STORE_HT=st is not None, num_warps=bl["warps_state"],
            num_stages=bl["stages_state"], **common)
        if NC > 0:
            BVo = bl["BV_out"]
            _output_kernel[(triton.cdiv(V, BVo), NC, H)](q, k, theta, gg, eta, e, hs, hz, cm, o, offsets,
                                                         chunk_indices, BV=BVo, **common)
        ctx.save_for_backward(q, k, theta, g, eta, w1, w2, tm, cm, hs, hz, e, offsets, chunk_offsets,
                              chunk_indices)
        ctx.meta = (retained, BT, maxc, s0 is not None, v.dtype)
        return o, st, zt

    @staticmethod
    def backward(ctx, do, dst, dzt):
        q, k, theta, g, eta, w1, w2, tm, cm, hs, hz, e, offsets, chunk_offsets, chunk_indices = \
            ctx.saved_tensors
        retained, BT, maxc, has_h0, v_dtype = ctx.meta
        Tt, H, K = q.shape
        V = e.shape[-1]
        N = offsets.numel() - 1
        NC = chunk_indices.shape[0]
        dev, f32 = q.device, torch.float32
        if dst is not None or dzt is not None:  # one of the two final states may be unused
            dst = torch.zeros_like(dzt) if dst is None else dst.contiguous()
            dzt = torch.zeros_like(dst) if dzt is None else dzt.contiguous()
        do = do.contiguous()
        bl = _blocks(K, V, BT)
        common = dict(H=H, K=K, V=V, BT=BT, BK=bl["BK"], USE_G=g is not None, RETAINED=bool(retained),
                      PREC=_prec(q.dtype))
        gg = theta if g is None else g
        dhs = _empty(NC, H, K, V, dtype=f32, device=dev)
        dhz = _empty(NC, H, K, V, dtype=f32, device=dev)
        ds0 = _empty(N, H, K, V, dtype=f32, device=dev) if has_h0 else None
        dz0 = _empty(N, H, K, V, dtype=f32, device=dev) if has_h0 else None
        BVs = bl["BV_state"]
        _dstate_kernel[(triton.cdiv(V, BVs), N * H)](
            q, k, theta, gg, eta, w1, w2, cm, do, dst, dzt, dhs, dhz, ds0, dz0, offsets, chunk_offsets,
            maxc, BV=BVs, HAS_DHT=dst is not None, STORE_DH0=has_h0, num_warps=bl["warps_state"],
            num_stages=bl["stages_state"], **common)
        BVg = bl["BV_grad"]
        NV = triton.cdiv(V, BVg)
        dq = _empty(NV, Tt, H, K, dtype=f32, device=dev)
        dk = _empty(NV, Tt, H, K, dtype=f32, device=dev)
        dv = _empty(Tt, H, V, dtype=f32, device=dev)
        dth = _empty(NV, Tt, H, dtype=f32, device=dev)
        dg = _empty(NV, Tt, H, dtype=f32, device=dev) if g is not None else None
        deta = _empty(NV, Tt, H, dtype=f32, device=dev)
        if NC > 0:
            _grad_kernel[(NV, NC, H)](
                q, k, theta, gg, eta, e, tm, cm, hs, hz, dhs, dhz, do, dq, dk, dv, dth,
                dth if dg is None else dg, deta, offsets, chunk_indices, Tt, BV=BVg,
                num_warps=bl["warps_grad"], **common)
        return (dq.sum(0).to(q.dtype), dk.sum(0).to(k.dtype), dv.to(v_dtype), dth.sum(0).to(theta.dtype),
                None if g is None else dg.sum(0).to(g.dtype), deta.sum(0).to(eta.dtype), ds0, dz0,
                None, None, None, None)
