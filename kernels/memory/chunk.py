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

    _prep_kernel    T, W1, W2, U, the masks c ⊙ θ and c' ⊙ θ and the vectors a, b, a', b', θ c_L,
                    θ e^{G^η_L − G^η} (and a_L, b_L, e^{G^η_L} per chunk), every chunk at once
    _state_kernel   E = W1 S + W2 Z − U;  S ← a_L S + b_L Z − Kᵀ diag(θ c_L) E;
                    Z ← e^{G^η_L} Z − Kᵀ diag(θ e^{G^η_L − G^η}) E        (sequential over chunks)
    _output_kernel  O = diag(a) Q S_0 + diag(b) Q Z_0 − (Q Kᵀ ⊙ c ⊙ θ) E, every chunk at once

Backward: ``_dstate_kernel`` walks the chunks last to first carrying (∂L/∂S, ∂L/∂Z) through each
chunk's map (the only sequential part). Then every chunk at once, from its entering state, its
errors and the gradient of its leaving state: ``_grad_kernel`` gives dv, dq, dk (through T by
dA = −(Tᵀ dE) Eᵀ) and the gradients of the masks and coefficients, ``_dgate_kernel`` carries those
into the cumulative logs: dθ, dg, dlog_eta. Every exponent is ≤ 0 for log gates ≤ 0. Sums over V
are written per V-block and added in PyTorch. Products run in tf32 for 16-bit inputs, in 3×tf32
(fp32-accurate) for fp32 ones.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._common import cdiv, next_pow2
from .._tl import chunk_span, log_decay, state_tile
from ..diag.chunk import chunk_layout

__all__ = ["ChunkTitans", "CHUNK_SIZES"]

CHUNK_SIZES = (16, 32, 64)
# fp32 inputs sum and difference the gate logs in fp64 (``EXACT`` in the kernels): exact under resets;
# a switch so that ``python -m kernels.sweep ab --set kernels.memory.chunk.EXACT_LOGS=False`` can time it
EXACT_LOGS = True


def _empty(*shape, dtype, device) -> Tensor:
    """Every buffer the kernels write goes through here (tests poison it with NaN)."""
    return torch.empty(*shape, dtype=dtype, device=device)


def _blocks(K: int, V: int, BT: int, prec: str = "tf32") -> dict[str, int]:
    """Tile sizes (K is never split; V-blocks per kernel), warps and pipeline stages.

    Not timed on a GPU yet (``python -m kernels.memory.tune`` sweeps them); chosen from ptxas's
    register and spill counts for sm_90 at K = V = 128, C = 64, where eight warps spill 1-3 KB a
    thread instead of 3-5 KB. The sequential kernels keep S and Z ([BK, BV] each) in registers and
    load [BT, BK] fp32 tiles every chunk; one pipeline stage keeps their shared memory within an
    H100/H200 SM.
    """
    BK = max(16, next_pow2(K))
    Vp = max(16, next_pow2(V))
    big = BK * BT > 64 * 64
    w = 8 if big else 4
    # 3×tf32 products keep more operands in shared memory: half-width K-blocks in the gradient kernel
    # (254 KB of shared memory at 64, over the 227 KB of an SM)
    bk_grad = min(BK, 32 if prec == "tf32x3" else 64)
    return {"BK": BK, "BV_prep": min(Vp, 64), "BV_state": min(Vp, 32), "BV_out": min(Vp, 32),
            "BV_grad": min(Vp, 32), "BK_grad": bk_grad, "warps_state": w,
            "stages_state": 1 if big else 2, "warps_grad": w, "warps_prep": w,
            "warps_gate": 8 if BT >= 64 else 4}


def _prec(dtype: torch.dtype) -> str:
    # fp32 inputs get fp32-accurate products from three tf32 ones (tf32 alone would cost ~1e-3
    # relative error; "ieee" compiles these kernels' products to FMA code so long that ptxas spills
    # most of it: 32 registers and ~90 KB of spills a thread for the prep kernel at K=128, C=64)
    return "tf32x3" if dtype == torch.float32 else "tf32"


# --------------------------------------------------------------------------------------------
# shared pieces
# --------------------------------------------------------------------------------------------

@triton.jit
def _load_gates(g, eta, theta, t_rows, m_t, i_h, H: tl.constexpr, USE_G: tl.constexpr,
                RETAINED: tl.constexpr, EXACT: tl.constexpr):
    """θ, the cumulative logs G^α, G^η, the shifted G^ρ and the totals, for one chunk ([BT] each).

    EXACT (fp32 inputs): the logs summed and kept in fp64. Strong decays (resets, floored at −200) take
    a chunk's G to −10⁴, where fp32's spacing (~10⁻³) made every e^{G_t − G_j} between two resets off
    by as much (2e-4 in a memory with a reset every 4 tokens); the masks take differences in fp64
    (_decay_mask, _ex), and only what is left goes to fp32."""
    b_th = tl.load(theta + t_rows * H + i_h, mask=m_t, other=0.).to(tl.float32)
    b_h = log_decay(tl.load(eta + t_rows * H + i_h, mask=m_t, other=0.))
    if USE_G:
        b_g = log_decay(tl.load(g + t_rows * H + i_h, mask=m_t, other=0.))
    else:
        b_g = tl.zeros_like(b_h)
    if EXACT:
        b_g, b_h = b_g.to(tl.float64), b_h.to(tl.float64)
    b_Ga = tl.cumsum(b_g, axis=0)
    b_Ge = tl.cumsum(b_h, axis=0)
    if RETAINED:
        b_Gp = b_Ga
    else:
        b_Gp = b_Ga - b_g
    return b_th, b_Ga, b_Ge, b_Gp, tl.sum(b_g, axis=0), tl.sum(b_h, axis=0)


@triton.jit
def _decay_mask(x_row, x_col, mask):
    """exp(x_row[t] − x_col[j]) where mask, else 0, in fp32 (the difference taken in the logs' dtype)."""
    return tl.exp(tl.where(mask, (x_row[:, None] - x_col[None, :]).to(tl.float32), float("-inf")))


@triton.jit
def _ex(x):
    """exp(x) in fp32 for logs (or differences of logs) held in fp32 or fp64."""
    return tl.exp(x.to(tl.float32))


@triton.jit
def _ends(b_Ga, b_Ge, b_GaL, b_GeL, b_Le, m_t):
    """The chunk's end coefficients: b_L, c_L [BT], e^{G^η_L − G^η} [BT]."""
    b_xE = tl.where(m_t, _ex(b_GaL - b_Ga), 0.)                       # e^{G^α_L − G^α_j}, real j
    b_bE = tl.sum(b_xE * _ex(b_Ge), axis=0)
    b_cE = tl.sum(b_xE[:, None] * b_Le, axis=0)                       # Σ_j e^{G^α_L − G^α_j} L^η_ji
    b_fE = tl.where(m_t, _ex(b_GeL - b_Ge), 0.)
    return b_xE, b_bE, b_cE, b_fE


# --------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------

# per-token coefficients written by the prep kernel, [T_total, H, NCOEF]: a, b, a', b', θ c_L,
# θ e^{G^η_L − G^η}; and per chunk, [NC, H, 3]: a_L, b_L, e^{G^η_L}
NCOEF = tl.constexpr(6)


@triton.jit
def _prep_kernel(k, v, theta, g, eta, w1, w2, u, tm, cm, cpm, coef, cend, offsets, chunk_indices,
                 H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                 BV: tl.constexpr, USE_G: tl.constexpr, RETAINED: tl.constexpr, PREC: tl.constexpr,
                 EXACT: tl.constexpr):
    """T = (I + A)⁻¹, W1, W2, U, the masks c ⊙ θ, c' ⊙ θ and the coefficients of one chunk and head."""
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

    # the masks one at a time (each [BT, BT] tile dies before the next is built)
    b_th, b_Ga, b_Ge, b_Gp, b_GaL, b_GeL = _load_gates(g, eta, theta, t_rows, m_t, i_h, H, USE_G, RETAINED,
                                                       EXACT)
    b_Le = _decay_mask(b_Ge, b_Ge, low)
    b_eGe = _ex(b_Ge)
    p_co = (t_rows * H + i_h) * NCOEF
    p_tt = (t_rows[:, None] * H + i_h) * BT + o_i[None, :]
    m_tt = m_t[:, None] & (o_i < BT)[None, :]
    b_La = _decay_mask(b_Ga, b_Ga, low)
    tl.store(coef + p_co, _ex(b_Ga), mask=m_t)
    tl.store(coef + p_co + 1, tl.sum(b_La * b_eGe[None, :], axis=1), mask=m_t)
    tl.store(cm + p_tt, tl.where(low, tl.dot(b_La, b_Le, input_precision=PREC) * b_th[None, :], 0.),
             mask=m_tt)
    b_Lp = _decay_mask(b_Gp, b_Ga, strict)
    b_ap = _ex(b_Gp)
    b_bp = tl.sum(b_Lp * b_eGe[None, :], axis=1)
    tl.store(coef + p_co + 2, b_ap, mask=m_t)
    tl.store(coef + p_co + 3, b_bp, mask=m_t)
    b_cp = tl.where(strict, tl.dot(b_Lp, b_Le, input_precision=PREC) * b_th[None, :], 0.)
    tl.store(cpm + p_tt, b_cp, mask=m_tt)
    b_xE, b_bE, b_cE, b_fE = _ends(b_Ga, b_Ge, b_GaL, b_GeL, b_Le, m_t)
    tl.store(coef + p_co + 4, b_th * b_cE, mask=m_t)
    tl.store(coef + p_co + 5, b_th * b_fE, mask=m_t)
    p_ce = (i_c.to(tl.int64) * H + i_h) * 3
    tl.store(cend + p_ce, _ex(b_GaL))
    tl.store(cend + p_ce + 1, b_bE)
    tl.store(cend + p_ce + 2, _ex(b_GeL))

    # T = (I + A)⁻¹ by forward substitution: row i of T − I from the rows above it
    b_k = tl.load(k + p_tk, mask=m_tk, other=0.).to(tl.float32)
    b_T = -b_cp * tl.dot(b_k, tl.trans(b_k), input_precision=PREC)
    for i in range(1, BT):
        row = o_i == i
        b_r = tl.sum(tl.where(row[:, None], b_T, 0.), axis=0)
        b_r = b_r + tl.where(o_i < i, tl.sum(b_r[:, None] * b_T, axis=0), 0.)
        b_T = tl.where(row[:, None], b_r[None, :], b_T)
    b_T += (o_i[:, None] == o_i[None, :]).to(tl.float32)
    tl.store(tm + p_tt, b_T, mask=m_tt)
    tl.store(w1 + p_tk, tl.dot(b_T, b_k * b_ap[:, None], input_precision=PREC), mask=m_tk)
    tl.store(w2 + p_tk, tl.dot(b_T, b_k * b_bp[:, None], input_precision=PREC), mask=m_tk)
    for vb in range(0, tl.cdiv(V, BV)):
        o_v = vb * BV + tl.arange(0, BV)
        m_tv = m_t[:, None] & (o_v < V)[None, :]
        p_tv = (t_rows[:, None] * H + i_h) * V + o_v[None, :]
        b_v = tl.load(v + p_tv, mask=m_tv, other=0.).to(tl.float32)
        tl.store(u + p_tv, tl.dot(b_T, b_v, input_precision=PREC), mask=m_tv)


@triton.jit
def _state_kernel(k, w1, w2, u, coef, cend, e, s0, z0, hs, hz, st, zt, offsets, chunk_offsets, MAXC,
                  H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                  BV: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, PREC: tl.constexpr):
    """Walk one sequence's chunks: store the entering (S, Z) and the errors E of every chunk."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos, c0, nc = chunk_span(offsets, chunk_offsets, i_n)
    o_i = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v, m_kv, p_state, b_S = state_tile(s0, i_nh, o_k, o_v, K, V, BK, BV, HAS_H0)
    _, _, _, _, b_Z = state_tile(z0, i_nh, o_k, o_v, K, V, BK, BV, HAS_H0)
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
        p_co = (t_rows * H + i_h) * NCOEF
        b_kS = b_k * tl.load(coef + p_co + 4, mask=m_t, other=0.)[:, None]      # K ⊙ θ c_L
        b_kZ = b_k * tl.load(coef + p_co + 5, mask=m_t, other=0.)[:, None]      # K ⊙ θ e^{G^η_L − G^η}
        p_ce = ((c0 + c) * H + i_h) * 3
        b_aL = tl.load(cend + p_ce, mask=ok, other=1.)
        b_bL = tl.load(cend + p_ce + 1, mask=ok, other=0.)
        b_eL = tl.load(cend + p_ce + 2, mask=ok, other=1.)
        b_S = b_aL * b_S + b_bL * b_Z - tl.dot(tl.trans(b_kS), b_E, input_precision=PREC)
        b_Z = b_eL * b_Z - tl.dot(tl.trans(b_kZ), b_E, input_precision=PREC)
    if STORE_HT:
        tl.store(st + i_nh.to(tl.int64) * K * V + p_state, b_S, mask=m_kv)
        tl.store(zt + i_nh.to(tl.int64) * K * V + p_state, b_Z, mask=m_kv)


@triton.jit
def _output_kernel(q, k, coef, e, hs, hz, cm, o, offsets, chunk_indices,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr, PREC: tl.constexpr):
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
    p_co = (t_rows * H + i_h) * NCOEF
    b_a = tl.load(coef + p_co, mask=m_t, other=0.)
    b_b = tl.load(coef + p_co + 1, mask=m_t, other=0.)
    b_P = tl.dot(b_q, tl.trans(b_k), input_precision=PREC) * b_cm
    b_o = b_a[:, None] * tl.dot(b_q, b_S, input_precision=PREC) \
        + b_b[:, None] * tl.dot(b_q, b_Z, input_precision=PREC) - tl.dot(b_P, b_E, input_precision=PREC)
    tl.store(o + p_tv, b_o.to(o.dtype.element_ty), mask=m_tv)


# --------------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------------

@triton.jit
def _dstate_kernel(q, k, w1, w2, cm, coef, cend, do, dst, dzt, dhs, dhz, ds0, dz0, offsets,
                   chunk_offsets, MAXC,
                   H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr, HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr, PREC: tl.constexpr):
    """Walk the chunks backwards: store the gradient of the (S, Z) leaving every chunk."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, eos, c0, nc = chunk_span(offsets, chunk_offsets, i_n)
    o_i = tl.arange(0, BT)
    low = o_i[:, None] >= o_i[None, :]
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v, m_kv, p_state, b_dS = state_tile(dst, i_nh, o_k, o_v, K, V, BK, BV, HAS_DHT)
    _, _, _, _, b_dZ = state_tile(dzt, i_nh, o_k, o_v, K, V, BK, BV, HAS_DHT)
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
        p_co = (t_rows * H + i_h) * NCOEF
        b_a = tl.load(coef + p_co, mask=m_t, other=0.)
        b_b = tl.load(coef + p_co + 1, mask=m_t, other=0.)
        b_ce = tl.load(coef + p_co + 4, mask=m_t, other=0.)
        b_fe = tl.load(coef + p_co + 5, mask=m_t, other=0.)
        p_ce = ((c0 + c) * H + i_h) * 3
        b_aL = tl.load(cend + p_ce, mask=ok, other=1.)
        b_bL = tl.load(cend + p_ce + 1, mask=ok, other=0.)
        b_eL = tl.load(cend + p_ce + 2, mask=ok, other=1.)
        b_P = tl.dot(b_q, tl.trans(b_k), input_precision=PREC) * b_cm
        # dE = −Pᵀ dO − diag(θ c_L) K dS − diag(θ e^{G^η_L − G^η}) K dZ
        b_dE = -tl.dot(tl.trans(b_P), b_do, input_precision=PREC) \
            - b_ce[:, None] * tl.dot(b_k, b_dS, input_precision=PREC) \
            - b_fe[:, None] * tl.dot(b_k, b_dZ, input_precision=PREC)
        b_w1 = tl.load(w1 + p_tk, mask=m_tk, other=0.)
        b_w2 = tl.load(w2 + p_tk, mask=m_tk, other=0.)
        b_dSn = tl.dot(tl.trans(b_q * b_a[:, None]), b_do, input_precision=PREC) \
            + b_aL * b_dS + tl.dot(tl.trans(b_w1), b_dE, input_precision=PREC)
        b_dZ = tl.dot(tl.trans(b_q * b_b[:, None]), b_do, input_precision=PREC) + b_bL * b_dS \
            + b_eL * b_dZ + tl.dot(tl.trans(b_w2), b_dE, input_precision=PREC)
        b_dS = b_dSn
    if STORE_DH0:
        tl.store(ds0 + i_nh.to(tl.int64) * K * V + p_state, b_dS, mask=m_kv)
        tl.store(dz0 + i_nh.to(tl.int64) * K * V + p_state, b_dZ, mask=m_kv)


@triton.jit
def _grad_kernel(q, k, e, tm, cm, cpm, coef, hs, hz, dhs, dhz, do,
                 dq, dk, dv, dpqk, dakk, dvec, dend, offsets, chunk_indices, NT, NC,
                 H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                 BV: tl.constexpr, PREC: tl.constexpr):
    """dv, and per V-block: dq, dk and what the gate kernel needs, for one chunk.

    Two passes over K-blocks of BK: the first builds the products over K (Q Kᵀ, K Kᵀ, K dS, K dZ),
    the second the [BT, K] gradients from the chunk's [BT, BT] and [BT, BV] ones.
    """
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
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    m_tv = m_t[:, None] & m_v[None, :]
    p_tv = (t_rows[:, None] * H + i_h) * V + o_v[None, :]
    p_tt = (t_rows[:, None] * H + i_h) * BT + o_i[None, :]
    p_h = (i_c.to(tl.int64) * H + i_h) * K * V

    b_do = tl.load(do + p_tv, mask=m_tv, other=0.).to(tl.float32)
    b_E = tl.load(e + p_tv, mask=m_tv, other=0.)
    # pass 1: products over K
    b_QK = tl.zeros([BT, BT], dtype=tl.float32)
    b_KK = tl.zeros([BT, BT], dtype=tl.float32)
    b_X1 = tl.zeros([BT, BV], dtype=tl.float32)                      # K dS_L
    b_X2 = tl.zeros([BT, BV], dtype=tl.float32)                      # K dZ_L
    for kb in range(0, tl.cdiv(K, BK)):
        o_k = kb * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        m_kv = m_k[:, None] & m_v[None, :]
        p_tk = (t_rows[:, None] * H + i_h) * K + o_k[None, :]
        p_kv = p_h + o_k[:, None] * V + o_v[None, :]
        b_q = tl.load(q + p_tk, mask=m_tk, other=0.).to(tl.float32)
        b_k = tl.load(k + p_tk, mask=m_tk, other=0.).to(tl.float32)
        b_QK += tl.dot(b_q, tl.trans(b_k), input_precision=PREC)
        b_KK += tl.dot(b_k, tl.trans(b_k), input_precision=PREC)
        b_X1 += tl.dot(b_k, tl.load(dhs + p_kv, mask=m_kv, other=0.), input_precision=PREC)
        b_X2 += tl.dot(b_k, tl.load(dhz + p_kv, mask=m_kv, other=0.), input_precision=PREC)

    p_co = (t_rows * H + i_h) * NCOEF
    b_ce = tl.load(coef + p_co + 4, mask=m_t, other=0.)
    b_fe = tl.load(coef + p_co + 5, mask=m_t, other=0.)
    b_cm = tl.load(cm + p_tt, mask=m_t[:, None] & low, other=0.)
    b_dE = -tl.dot(tl.trans(b_QK * b_cm), b_do, input_precision=PREC) \
        - b_ce[:, None] * b_X1 - b_fe[:, None] * b_X2
    b_dR = tl.dot(tl.trans(tl.load(tm + p_tt, mask=m_t[:, None], other=0.)), b_dE,
                  input_precision=PREC)                              # through (I + A) E = R
    tl.store(dv + p_tv, (-b_dR).to(dv.dtype.element_ty), mask=m_tv)
    b_dA = tl.where(strict, -tl.dot(b_dR, tl.trans(b_E), input_precision=PREC), 0.)
    b_dP = tl.where(low, -tl.dot(b_do, tl.trans(b_E), input_precision=PREC), 0.)
    p_part = i_v * NT * H * BT + p_tt
    tl.store(dpqk + p_part, b_dP * b_QK, mask=m_t[:, None])
    tl.store(dakk + p_part, b_dA * b_KK, mask=m_t[:, None])
    b_D = b_dP * b_cm
    b_F = b_dA * tl.load(cpm + p_tt, mask=m_t[:, None] & strict, other=0.)
    b_F = b_F + tl.trans(b_F)
    p_dv = (i_v * NT * H + t_rows * H + i_h) * NCOEF
    tl.store(dvec + p_dv + 4, -tl.sum(b_X1 * b_E, axis=1), mask=m_t)      # ∂L/∂(θ c_L) / θ
    tl.store(dvec + p_dv + 5, -tl.sum(b_X2 * b_E, axis=1), mask=m_t)

    # pass 2: dq, dk per K-block, and the sums behind the gradients of a, b, a', b', a_L, b_L, η_L
    b_a = tl.load(coef + p_co, mask=m_t, other=0.)
    b_b = tl.load(coef + p_co + 1, mask=m_t, other=0.)
    b_ap = tl.load(coef + p_co + 2, mask=m_t, other=0.)
    b_bp = tl.load(coef + p_co + 3, mask=m_t, other=0.)
    b_da = tl.zeros([BT], dtype=tl.float32)
    b_db = tl.zeros([BT], dtype=tl.float32)
    b_dap = tl.zeros([BT], dtype=tl.float32)
    b_dbp = tl.zeros([BT], dtype=tl.float32)
    b_daL = tl.zeros([BK], dtype=tl.float32)                          # Σ over V of dS ⊙ S, per key
    b_dbL = tl.zeros([BK], dtype=tl.float32)
    b_deL = tl.zeros([BK], dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BK)):
        o_k = kb * BK + tl.arange(0, BK)
        m_k = o_k < K
        m_tk = m_t[:, None] & m_k[None, :]
        m_kv = m_k[:, None] & m_v[None, :]
        p_tk = (t_rows[:, None] * H + i_h) * K + o_k[None, :]
        p_kv = p_h + o_k[:, None] * V + o_v[None, :]
        b_q = tl.load(q + p_tk, mask=m_tk, other=0.).to(tl.float32)
        b_k = tl.load(k + p_tk, mask=m_tk, other=0.).to(tl.float32)
        b_S = tl.load(hs + p_kv, mask=m_kv, other=0.)
        b_Z = tl.load(hz + p_kv, mask=m_kv, other=0.)
        b_dS = tl.load(dhs + p_kv, mask=m_kv, other=0.)
        b_dZ = tl.load(dhz + p_kv, mask=m_kv, other=0.)
        b_GS = tl.dot(b_do, tl.trans(b_S), input_precision=PREC)
        b_GZ = tl.dot(b_do, tl.trans(b_Z), input_precision=PREC)
        b_HS = tl.dot(b_dR, tl.trans(b_S), input_precision=PREC)
        b_HZ = tl.dot(b_dR, tl.trans(b_Z), input_precision=PREC)
        b_dq = b_a[:, None] * b_GS + b_b[:, None] * b_GZ + tl.dot(b_D, b_k, input_precision=PREC)
        b_dk = tl.dot(tl.trans(b_D), b_q, input_precision=PREC) + tl.dot(b_F, b_k, input_precision=PREC) \
            + b_ap[:, None] * b_HS + b_bp[:, None] * b_HZ \
            - b_ce[:, None] * tl.dot(b_E, tl.trans(b_dS), input_precision=PREC) \
            - b_fe[:, None] * tl.dot(b_E, tl.trans(b_dZ), input_precision=PREC)
        tl.store(dq + i_v * NT * H * K + p_tk, b_dq, mask=m_tk)
        tl.store(dk + i_v * NT * H * K + p_tk, b_dk, mask=m_tk)
        b_da += tl.sum(b_q * b_GS, axis=1)
        b_db += tl.sum(b_q * b_GZ, axis=1)
        b_dap += tl.sum(b_k * b_HS, axis=1)
        b_dbp += tl.sum(b_k * b_HZ, axis=1)
        b_daL += tl.sum(b_dS * b_S, axis=1)
        b_dbL += tl.sum(b_dS * b_Z, axis=1)
        b_deL += tl.sum(b_dZ * b_Z, axis=1)
    tl.store(dvec + p_dv, b_da, mask=m_t)
    tl.store(dvec + p_dv + 1, b_db, mask=m_t)
    tl.store(dvec + p_dv + 2, b_dap, mask=m_t)
    tl.store(dvec + p_dv + 3, b_dbp, mask=m_t)
    p_de = ((i_v * NC + i_c) * H + i_h) * 3
    tl.store(dend + p_de, tl.sum(b_daL, axis=0))
    tl.store(dend + p_de + 1, tl.sum(b_dbL, axis=0))
    tl.store(dend + p_de + 2, tl.sum(b_deL, axis=0))


@triton.jit
def _rev_cumsum(x):
    """Σ_{s≥t} x_s along a [BT] vector."""
    return tl.sum(x, axis=0) - tl.cumsum(x, axis=0) + x


@triton.jit
def _dgate_kernel(theta, g, eta, dpqk, dakk, dvec, dend, dth, dg, deta, offsets, chunk_indices,
                  H: tl.constexpr, BT: tl.constexpr, USE_G: tl.constexpr, RETAINED: tl.constexpr,
                  PREC: tl.constexpr, EXACT: tl.constexpr):
    """dθ, dg and dlog_eta of one chunk from the gradients of its masks and coefficients."""
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
    p_tt = (t_rows[:, None] * H + i_h) * BT + o_i[None, :]

    b_th, b_Ga, b_Ge, b_Gp, b_GaL, b_GeL = _load_gates(g, eta, theta, t_rows, m_t, i_h, H, USE_G, RETAINED,
                                                       EXACT)
    b_Le = _decay_mask(b_Ge, b_Ge, low)
    b_eGe = _ex(b_Ge)
    p_dv = (t_rows * H + i_h) * NCOEF
    # Into the cumulative logs G^α (dGa), G^ρ (dGp), G^η (dGe), one mask at a time (each [BT, BT]
    # tile dies before the next is built); the end terms go to the last token.
    # 1) a, b, c = L^α L^η (the output's and the state's masks)
    b_La = _decay_mask(b_Ga, b_Ga, low)
    b_c = tl.dot(b_La, b_Le, input_precision=PREC)
    b_dPQK = tl.load(dpqk + p_tt, mask=m_t[:, None] & low, other=0.)    # ∂L/∂P ⊙ Q Kᵀ
    b_dth = tl.sum(b_dPQK * b_c, axis=0)
    b_dc = b_dPQK * b_th[None, :]
    b_dGa = tl.load(dvec + p_dv, mask=m_t, other=0.) * _ex(b_Ga)
    b_W = tl.load(dvec + p_dv + 1, mask=m_t, other=0.)[:, None] * b_La * b_eGe[None, :]
    b_dGa += tl.sum(b_W, axis=1) - tl.sum(b_W, axis=0)
    b_dGe = tl.sum(b_W, axis=0)
    b_W = b_dc * b_c
    b_dGa += tl.sum(b_W, axis=1)
    b_dGe -= tl.sum(b_W, axis=0)
    b_x = tl.sum(tl.dot(b_dc, tl.trans(b_Le), input_precision=PREC) * b_La, axis=0)
    b_dGa -= b_x
    b_dGe += b_x
    # 2) a', b', c' = L^ρ L^η (the masks of the error's system)
    b_Lp = _decay_mask(b_Gp, b_Ga, strict)
    b_cp = tl.dot(b_Lp, b_Le, input_precision=PREC)
    b_dAKK = tl.load(dakk + p_tt, mask=m_t[:, None] & strict, other=0.)  # ∂L/∂A ⊙ K Kᵀ
    b_dth += tl.sum(b_dAKK * b_cp, axis=0)
    b_dcp = b_dAKK * b_th[None, :]
    b_dGp = tl.load(dvec + p_dv + 2, mask=m_t, other=0.) * _ex(b_Gp)
    b_W = tl.load(dvec + p_dv + 3, mask=m_t, other=0.)[:, None] * b_Lp * b_eGe[None, :]
    b_dGp += tl.sum(b_W, axis=1)
    b_dGa -= tl.sum(b_W, axis=0)
    b_dGe += tl.sum(b_W, axis=0)
    b_W = b_dcp * b_cp
    b_dGp += tl.sum(b_W, axis=1)
    b_dGe -= tl.sum(b_W, axis=0)
    b_x = tl.sum(tl.dot(b_dcp, tl.trans(b_Le), input_precision=PREC) * b_Lp, axis=0)
    b_dGa -= b_x
    b_dGe += b_x
    # 3) the chunk's end: a_L, b_L, c_L, e^{G^η_L}, e^{G^η_L − G^η}
    b_xE, b_bE, b_cE, b_fE = _ends(b_Ga, b_Ge, b_GaL, b_GeL, b_Le, m_t)
    b_m1 = tl.load(dvec + p_dv + 4, mask=m_t, other=0.)
    b_m2 = tl.load(dvec + p_dv + 5, mask=m_t, other=0.)
    tl.store(dth + t_rows * H + i_h, b_dth + b_cE * b_m1 + b_fE * b_m2, mask=m_t)
    b_dcE = b_th * b_m1
    b_dfE = b_th * b_m2
    p_de = (i_c.to(tl.int64) * H + i_h) * 3
    b_dGaL = tl.load(dend + p_de) * _ex(b_GaL) + tl.sum(b_dcE * b_cE, axis=0)
    b_dGeL = tl.load(dend + p_de + 2) * _ex(b_GeL) + tl.sum(b_dfE * b_fE, axis=0)
    b_dGe -= b_dfE * b_fE + b_dcE * b_cE
    b_w = tl.load(dend + p_de + 1) * b_xE * b_eGe
    b_dGaL += tl.sum(b_w, axis=0)
    b_dGa -= b_w
    b_dGe += b_w
    b_x = b_xE * tl.sum(b_Le * b_dcE[None, :], axis=1)
    b_dGa -= b_x
    b_dGe += b_x
    last = o_i == tl.sum(m_t.to(tl.int32), axis=0) - 1
    b_dGa += tl.where(last, b_dGaL, 0.)
    b_dGe += tl.where(last, b_dGeL, 0.)
    tl.store(deta + t_rows * H + i_h, _rev_cumsum(b_dGe), mask=m_t)
    if USE_G:
        if RETAINED:
            b_dg = _rev_cumsum(b_dGa + b_dGp)
        else:
            b_dg = _rev_cumsum(b_dGa + b_dGp) - b_dGp
        tl.store(dg + t_rows * H + i_h, b_dg, mask=m_t)


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
        bl = _blocks(K, V, BT, _prec(q.dtype))
        chunk_offsets, chunk_indices, maxc = chunk_layout(offsets, BT)
        NC = chunk_indices.shape[0]
        shape = dict(H=H, K=K, V=V, BT=BT, BK=bl["BK"], PREC=_prec(q.dtype))
        w1, w2 = _empty(Tt, H, K, dtype=f32, device=dev), _empty(Tt, H, K, dtype=f32, device=dev)
        u, e = _empty(Tt, H, V, dtype=f32, device=dev), _empty(Tt, H, V, dtype=f32, device=dev)
        tm, cm, cpm = (_empty(Tt, H, BT, dtype=f32, device=dev) for _ in range(3))
        coef = _empty(Tt, H, NCOEF.value, dtype=f32, device=dev)
        cend = _empty(NC, H, 3, dtype=f32, device=dev)
        hs, hz = _empty(NC, H, K, V, dtype=f32, device=dev), _empty(NC, H, K, V, dtype=f32, device=dev)
        o = _empty(Tt, H, V, dtype=v.dtype, device=dev)
        st = _empty(N, H, K, V, dtype=f32, device=dev) if output_final_state else None
        zt = _empty(N, H, K, V, dtype=f32, device=dev) if output_final_state else None
        if NC > 0:
            _prep_kernel[(NC, H)](k, v, theta, theta if g is None else g, eta, w1, w2, u, tm, cm, cpm, coef,
                                  cend, offsets, chunk_indices, BV=bl["BV_prep"], USE_G=g is not None,
                                  RETAINED=bool(retained), EXACT=EXACT_LOGS and q.dtype == torch.float32,
                                  num_warps=bl["warps_prep"], **shape)
        BVs = bl["BV_state"]
        _state_kernel[(cdiv(V, BVs), N * H)](
            k, w1, w2, u, coef, cend, e, s0, z0, hs, hz, st, zt, offsets, chunk_offsets, maxc, BV=BVs,
            HAS_H0=s0 is not None, STORE_HT=st is not None, num_warps=bl["warps_state"],
            num_stages=bl["stages_state"], **shape)
        if NC > 0:
            BVo = bl["BV_out"]
            _output_kernel[(cdiv(V, BVo), NC, H)](q, k, coef, e, hs, hz, cm, o, offsets, chunk_indices,
                                                         BV=BVo, **shape)
        ctx.save_for_backward(q, k, theta, g, eta, w1, w2, tm, cm, cpm, coef, cend, hs, hz, e, offsets,
                              chunk_offsets, chunk_indices)
        ctx.meta = (retained, BT, maxc, s0 is not None, v.dtype)
        return o, st, zt

    @staticmethod
    def backward(ctx, do, dst, dzt):
        (q, k, theta, g, eta, w1, w2, tm, cm, cpm, coef, cend, hs, hz, e, offsets, chunk_offsets,
         chunk_indices) = ctx.saved_tensors
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
        bl = _blocks(K, V, BT, _prec(q.dtype))
        shape = dict(H=H, K=K, V=V, BT=BT, BK=bl["BK"], PREC=_prec(q.dtype))
        dhs, dhz = _empty(NC, H, K, V, dtype=f32, device=dev), _empty(NC, H, K, V, dtype=f32, device=dev)
        ds0 = _empty(N, H, K, V, dtype=f32, device=dev) if has_h0 else None
        dz0 = _empty(N, H, K, V, dtype=f32, device=dev) if has_h0 else None
        BVs = bl["BV_state"]
        _dstate_kernel[(cdiv(V, BVs), N * H)](
            q, k, w1, w2, cm, coef, cend, do, dst, dzt, dhs, dhz, ds0, dz0, offsets, chunk_offsets, maxc,
            BV=BVs, HAS_DHT=dst is not None, STORE_DH0=has_h0, num_warps=bl["warps_state"],
            num_stages=bl["stages_state"], **shape)
        BVg = bl["BV_grad"]
        NV = cdiv(V, BVg)
        dq, dk = _empty(NV, Tt, H, K, dtype=f32, device=dev), _empty(NV, Tt, H, K, dtype=f32, device=dev)
        dv = _empty(Tt, H, V, dtype=f32, device=dev)
        dpqk, dakk = (_empty(NV, Tt, H, BT, dtype=f32, device=dev) for _ in range(2))
        dvec = _empty(NV, Tt, H, NCOEF.value, dtype=f32, device=dev)
        dend = _empty(NV, NC, H, 3, dtype=f32, device=dev)
        dth, deta = _empty(Tt, H, dtype=f32, device=dev), _empty(Tt, H, dtype=f32, device=dev)
        dg = _empty(Tt, H, dtype=f32, device=dev) if g is not None else None
        if NC > 0:
            _grad_kernel[(NV, NC, H)](
                q, k, e, tm, cm, cpm, coef, hs, hz, dhs, dhz, do, dq, dk, dv, dpqk, dakk, dvec, dend,
                offsets, chunk_indices, Tt, NC, BV=BVg, num_warps=bl["warps_grad"],
                **(shape | {"BK": bl["BK_grad"]}))
            _dgate_kernel[(NC, H)](
                theta, theta if g is None else g, eta, dpqk.sum(0), dakk.sum(0), dvec.sum(0), dend.sum(0),
                dth, deta if dg is None else dg, deta, offsets, chunk_indices, H=H, BT=BT,
                USE_G=g is not None, RETAINED=bool(retained), PREC=shape["PREC"],
                EXACT=EXACT_LOGS and q.dtype == torch.float32, num_warps=bl["warps_gate"])
        return (dq.sum(0).to(q.dtype), dk.sum(0).to(k.dtype), dv.to(v_dtype), dth.to(theta.dtype),
                None if g is None else dg.to(g.dtype), deta.to(eta.dtype), ds0, dz0, None, None, None, None)
