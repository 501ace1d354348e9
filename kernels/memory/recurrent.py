r"""Fused recurrent (token-by-token) kernels for the linear Titans memory, forward and backward.

Per head, with the memory S and the momentum (surprise) Z, both [K, V] in fp32, α_t = exp(g_t)
(1 without retention), η_t = exp(log_eta_t) and ρ_t = 1 (gradient at S_{t−1}, Titans) or α_t
(gradient at the retained α_t S_{t−1}, ``grad_at="retained"``)::

    e_t = ρ_t S_{t−1}ᵀ k_t − v_t          (the error of the memory on (k_t, v_t))
    Z_t = η_t Z_{t−1} − θ_t k_t e_tᵀ      (momentum of the ℓ2 gradient k eᵀ)
    S_t = α_t S_{t−1} + Z_t
    o_t = S_tᵀ q_t                        (q arrives already scaled)

Every column of (S, Z) evolves on its own given (k, θ, α, η), so one program owns one (sequence,
head, V-block) and keeps its [K_pad, BV] slices of S and Z in registers; K is never split.

Backward, one step in reverse (dS = ∂L/∂S_t, dZ = ∂L/∂Z_t from the future, u = S_{t−1}ᵀ k)::

    dq = S_t do            dS += q doᵀ             dZ' = dZ + dS         w = dZ'ᵀ k
    de = −θ w              dθ = −wᵀ e              dv = −de              dρ = uᵀ de
    dk = −θ dZ' e + ρ S_{t−1} de                   dα = ⟨dS, S_{t−1}⟩    dη = ⟨dZ', Z_{t−1}⟩
    ∂L/∂S_{t−1} = α dS + ρ k deᵀ                   ∂L/∂Z_{t−1} = η dZ'
    dg = α dα (+ ρ dρ when ρ = α),  dlog_eta = η dη

As in :mod:`kernels.delta.recurrent`, the forward checkpoints (S, Z) every ``checkpoint_interval``
steps; the backward goes over the segments last to first, recomputes a segment's pre-step states
into a per-program scratch and walks it backwards. Gradients that sum over V (q, k, θ, g, log_eta)
are written per V-block and summed in PyTorch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._common import cdiv, next_pow2

__all__ = ["FusedRecurrentTitans", "CHECKPOINT_INTERVAL"]

CHECKPOINT_INTERVAL = 64


def _empty(*shape, dtype, device) -> Tensor:
    """Every buffer the kernels write goes through here (tests poison it with NaN)."""
    return torch.empty(*shape, dtype=dtype, device=device)


def _blocks(K: int, V: int, kind: str) -> tuple[int, int, int]:
    """(BK, BV, num_warps). Two state tiles live in registers, so BV is half the delta kernel's.

    Not tuned on a GPU yet: the forward is latency-bound per step (small tiles, one warp), the
    backward keeps six [BK, BV] tiles live.
    """
    BK = max(16, next_pow2(K))
    Vp = max(8, next_pow2(V))
    if kind == "fwd":
        return BK, min(Vp, 8), 1
    BV = min(Vp, max(8, 2048 // BK))
    return BK, BV, 4 if BK >= 256 else 2


@triton.jit
def _fwd_kernel(q, k, v, theta, g, eta, o, s0, z0, st, zt, ckpt, bounds, ck_off, C,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                USE_G: tl.constexpr, RETAINED: tl.constexpr, USE_H0: tl.constexpr,
                STORE_HT: tl.constexpr, SAVE_CKPT: tl.constexpr):
    i_nh = tl.program_id(0).to(tl.int64)
    i_v = tl.program_id(1).to(tl.int64)
    i_n = i_nh // H
    i_h = i_nh % H
    bos = tl.load(bounds + i_n).to(tl.int64)
    eos = tl.load(bounds + i_n + 1).to(tl.int64)
    L = eos - bos

    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]

    b_S = tl.zeros([BK, BV], dtype=tl.float32)
    b_Z = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_S += tl.load(s0 + i_nh * K * V + o_kv, mask=m_kv, other=0.).to(tl.float32)
        b_Z += tl.load(z0 + i_nh * K * V + o_kv, mask=m_kv, other=0.).to(tl.float32)
    if SAVE_CKPT:
        # checkpoint rows hold (S, Z): [n_ck, 2, H, K, V]
        p_c = ckpt + (tl.load(ck_off + i_n).to(tl.int64) * 2 * H + i_h) * K * V + o_kv

    for i in range(0, L):
        if SAVE_CKPT:
            if i % C == 0:  # the states before steps 0, C, 2C, ... of this sequence
                tl.store(p_c, b_S, mask=m_kv)
                tl.store(p_c + H * K * V, b_Z, mask=m_kv)
                p_c += 2 * H * K * V
        r = (bos + i) * H + i_h
        b_q = tl.load(q + r * K + o_k, mask=m_k, other=0.).to(tl.float32)
        b_k = tl.load(k + r * K + o_k, mask=m_k, other=0.).to(tl.float32)
        b_v = tl.load(v + r * V + o_v, mask=m_v, other=0.).to(tl.float32)
        b_th = tl.load(theta + r).to(tl.float32)
        b_eta = tl.exp(tl.load(eta + r).to(tl.float32))
        b_e = tl.sum(b_S * b_k[:, None], 0)
        if USE_G:
            b_a = tl.exp(tl.load(g + r).to(tl.float32))
            if RETAINED:
                b_e = b_e * b_a
        b_e = b_e - b_v
        b_Z = b_eta * b_Z - b_th * b_k[:, None] * b_e[None, :]
        if USE_G:
            b_S = b_a * b_S + b_Z
        else:
            b_S = b_S + b_Z
        b_o = tl.sum(b_S * b_q[:, None], 0)
        tl.store(o + r * V + o_v, b_o.to(o.dtype.element_ty), mask=m_v)
    if STORE_HT:
        tl.store(st + i_nh * K * V + o_kv, b_S, mask=m_kv)
        tl.store(zt + i_nh * K * V + o_kv, b_Z, mask=m_kv)


@triton.jit
def _bwd_kernel(q, k, v, theta, g, eta, do, dst, dzt, ckpt, scratch, bounds, ck_off, C, NT,
                dq, dk, dv, dtheta, dg, deta, ds0, dz0,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                NV: tl.constexpr, USE_G: tl.constexpr, RETAINED: tl.constexpr, USE_DHT: tl.constexpr,
                STORE_DH0: tl.constexpr):
    i_nh = tl.program_id(0).to(tl.int64)
    i_v = tl.program_id(1).to(tl.int64)
    i_n = i_nh // H
    i_h = i_nh % H
    bos = tl.load(bounds + i_n).to(tl.int64)
    eos = tl.load(bounds + i_n + 1).to(tl.int64)
    L = eos - bos

    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k = o_k < K
    m_v = o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_kv = o_k[:, None] * V + o_v[None, :]
    # this program's private scratch: (S, Z) before each step of one segment, [C, 2, BK, BV]
    p_scr = scratch + (i_nh * NV + i_v) * C * 2 * BK * BV + o_k[:, None] * BV + tl.arange(0, BV)[None, :]
    # partial sums over V-blocks: dq/dk [NV, NT, H, K], dθ/dg/dη [NV, NT, H]
    dq_v = dq + i_v * NT * H * K
    dk_v = dk + i_v * NT * H * K
    dth_v = dtheta + i_v * NT * H
    dg_v = dg + i_v * NT * H
    de_v = deta + i_v * NT * H

    b_dS = tl.zeros([BK, BV], dtype=tl.float32)
    b_dZ = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        b_dS += tl.load(dst + i_nh * K * V + o_kv, mask=m_kv, other=0.).to(tl.float32)
        b_dZ += tl.load(dzt + i_nh * K * V + o_kv, mask=m_kv, other=0.).to(tl.float32)
    p_c0 = ckpt + (tl.load(ck_off + i_n).to(tl.int64) * 2 * H + i_h) * K * V + o_kv

    NS = (L + C - 1) // C
    for jj in range(0, NS):
        j = NS - 1 - jj
        t0 = bos + j * C
        n_steps = tl.minimum(L - j * C, C)
        # 1) recompute the segment's pre-step states from its checkpoint
        b_S = tl.load(p_c0 + j * 2 * H * K * V, mask=m_kv, other=0.)
        b_Z = tl.load(p_c0 + j * 2 * H * K * V + H * K * V, mask=m_kv, other=0.)
        for i in range(0, n_steps):
            tl.store(p_scr + i * 2 * BK * BV, b_S)
            tl.store(p_scr + i * 2 * BK * BV + BK * BV, b_Z)
            r = (t0 + i) * H + i_h
            b_k = tl.load(k + r * K + o_k, mask=m_k, other=0.).to(tl.float32)
            b_v = tl.load(v + r * V + o_v, mask=m_v, other=0.).to(tl.float32)
            b_th = tl.load(theta + r).to(tl.float32)
            b_eta = tl.exp(tl.load(eta + r).to(tl.float32))
            b_e = tl.sum(b_S * b_k[:, None], 0)
            if USE_G:
                b_a = tl.exp(tl.load(g + r).to(tl.float32))
                if RETAINED:
                    b_e = b_e * b_a
            b_e = b_e - b_v
            b_Z = b_eta * b_Z - b_th * b_k[:, None] * b_e[None, :]
            if USE_G:
                b_S = b_a * b_S + b_Z
            else:
                b_S = b_S + b_Z
        tl.debug_barrier()
        # 2) walk the segment backwards
        for ii in range(0, n_steps):
            i = n_steps - 1 - ii
            r = (t0 + i) * H + i_h
            b_Sp = tl.load(p_scr + i * 2 * BK * BV)
            b_Zp = tl.load(p_scr + i * 2 * BK * BV + BK * BV)
            b_q = tl.load(q + r * K + o_k, mask=m_k, other=0.).to(tl.float32)
            b_k = tl.load(k + r * K + o_k, mask=m_k, other=0.).to(tl.float32)
            b_v = tl.load(v + r * V + o_v, mask=m_v, other=0.).to(tl.float32)
            b_do = tl.load(do + r * V + o_v, mask=m_v, other=0.).to(tl.float32)
            b_th = tl.load(theta + r).to(tl.float32)
            b_eta = tl.exp(tl.load(eta + r).to(tl.float32))
            b_a = 1.0
            if USE_G:
                b_a = tl.exp(tl.load(g + r).to(tl.float32))
            b_rho = 1.0
            if RETAINED:
                b_rho = b_a
            b_u = tl.sum(b_Sp * b_k[:, None], 0)                      # S_{t−1}ᵀ k
            b_e = b_rho * b_u - b_v
            b_Zt = b_eta * b_Zp - b_th * b_k[:, None] * b_e[None, :]
            b_St = b_a * b_Sp + b_Zt
            # o_t = S_tᵀ q
            b_dq = tl.sum(b_St * b_do[None, :], 1)
            b_dS += b_q[:, None] * b_do[None, :]
            # S_t = α S_{t−1} + Z_t
            b_da = tl.sum(tl.sum(b_dS * b_Sp, 1), 0)
            b_dZ += b_dS
            # Z_t = η Z_{t−1} − θ k eᵀ
            b_deta = tl.sum(tl.sum(b_dZ * b_Zp, 1), 0)
            b_w = tl.sum(b_dZ * b_k[:, None], 0)                      # dZ'ᵀ k
            b_dth = -tl.sum(b_w * b_e, 0)
            b_de = -b_th * b_w
            b_dk = -b_th * tl.sum(b_dZ * b_e[None, :], 1)
            # e = ρ S_{t−1}ᵀ k − v
            b_dk += b_rho * tl.sum(b_Sp * b_de[None, :], 1)
            b_drho = tl.sum(b_u * b_de, 0)
            b_dS = b_a * b_dS + b_rho * b_k[:, None] * b_de[None, :]
            b_dZ = b_eta * b_dZ
            tl.store(dq_v + r * K + o_k, b_dq, mask=m_k)
            tl.store(dk_v + r * K + o_k, b_dk, mask=m_k)
            tl.store(dv + r * V + o_v, (-b_de).to(dv.dtype.element_ty), mask=m_v)
            tl.store(dth_v + r, b_dth)
            tl.store(de_v + r, b_eta * b_deta)
            if USE_G:
                b_dg = b_a * b_da
                if RETAINED:
                    b_dg += b_rho * b_drho
                tl.store(dg_v + r, b_dg)
        tl.debug_barrier()
    if STORE_DH0:
        tl.store(ds0 + i_nh * K * V + o_kv, b_dS, mask=m_kv)
        tl.store(dz0 + i_nh * K * V + o_kv, b_dZ, mask=m_kv)


def _ck_offsets(bounds: Tensor, C: int) -> tuple[Tensor, int]:
    """Checkpoint row of each sequence's first segment ([N+1], int64) and the total count."""
    segs = (bounds[1:] - bounds[:-1] + C - 1) // C
    off = torch.zeros(bounds.numel(), dtype=torch.int64, device=bounds.device)
    torch.cumsum(segs, 0, out=off[1:])
    return off, int(off[-1].item())


def recurrent_fwd(q, k, v, theta, g, eta, s0, z0, bounds, N, retained, output_final_state,
                  save_ckpt, C):
    """Launch the forward; tensors [B, T, H, ·] (or flattened time), states [N, H, K, V] fp32."""
    K, V, H = q.shape[-1], v.shape[-1], q.shape[-2]
    BK, BV, num_warps = _blocks(K, V, "fwd")
    NV = cdiv(V, BV)
    o = _empty(*v.shape, dtype=v.dtype, device=v.device)
    st = zt = None
    if output_final_state:
        st = _empty(N, H, K, V, dtype=torch.float32, device=v.device)
        zt = _empty(N, H, K, V, dtype=torch.float32, device=v.device)
    ckpt, ck_off = None, None
    if save_ckpt:
        ck_off, n_ck = _ck_offsets(bounds, C)
        ckpt = _empty(n_ck, 2, H, K, V, dtype=torch.float32, device=v.device)
    if N * H > 0:
        _fwd_kernel[(N * H, NV)](
            q, k, v, theta, q if g is None else g, eta, o, q if s0 is None else s0,
            q if z0 is None else z0, q if st is None else st, q if zt is None else zt,
            q if ckpt is None else ckpt, bounds, bounds if ck_off is None else ck_off, C,
            H=H, K=K, V=V, BK=BK, BV=BV, USE_G=g is not None, RETAINED=bool(retained),
            USE_H0=s0 is not None, STORE_HT=st is not None, SAVE_CKPT=save_ckpt, num_warps=num_warps)
    return o, st, zt, ckpt, ck_off


def recurrent_bwd(q, k, v, theta, g, eta, has_h0, do, dst, dzt, ckpt, ck_off, bounds, N, retained, C):
    K, V, H = q.shape[-1], v.shape[-1], q.shape[-2]
    NT = q.numel() // (H * K)
    dev = q.device
    BK, BV, num_warps = _blocks(K, V, "bwd")
    NV = cdiv(V, BV)
    # Scratch depth: C, or the longest sequence when that is shorter (then every sequence is one
    # segment under either interval, so the shorter one can stand in for C in the kernel).
    lens = bounds[1:] - bounds[:-1]
    C = max(1, min(C, int(lens.max().item()) if lens.numel() else 1))
    scratch = _empty(N * H * NV * C * 2, BK, BV, dtype=torch.float32, device=dev)
    dq = _empty(NV, *q.shape, dtype=torch.float32, device=dev)
    dk = _empty(NV, *k.shape, dtype=torch.float32, device=dev)
    dv = _empty(*v.shape, dtype=v.dtype, device=dev)
    dth = _empty(NV, *theta.shape, dtype=torch.float32, device=dev)
    dg = _empty(NV, *theta.shape, dtype=torch.float32, device=dev) if g is not None else None
    deta = _empty(NV, *theta.shape, dtype=torch.float32, device=dev)
    ds0 = _empty(N, H, K, V, dtype=torch.float32, device=dev) if has_h0 else None
    dz0 = _empty(N, H, K, V, dtype=torch.float32, device=dev) if has_h0 else None
    if N * H > 0:
        _bwd_kernel[(N * H, NV)](
            q, k, v, theta, q if g is None else g, eta, do, do if dst is None else dst,
            do if dzt is None else dzt, ckpt, scratch, bounds, ck_off, C, NT,
            dq, dk, dv, dth, dq if dg is None else dg, deta, dq if ds0 is None else ds0,
            dq if dz0 is None else dz0,
            H=H, K=K, V=V, BK=BK, BV=BV, NV=NV, USE_G=g is not None, RETAINED=bool(retained),
            USE_DHT=dst is not None, STORE_DH0=has_h0, num_warps=num_warps)
    return (dq.sum(0), dk.sum(0), dv, dth.sum(0), None if dg is None else dg.sum(0), deta.sum(0),
            ds0, dz0)


class FusedRecurrentTitans(torch.autograd.Function):
    """Autograd wrapper; states are fp32 [N, H, K, V]; both final states or neither."""

    @staticmethod
    def forward(ctx, q, k, v, theta, g, eta, s0, z0, bounds, N, retained, output_final_state, C):
        # checkpoints of the state only for a backward to come
        o, st, zt, ckpt, ck_off = recurrent_fwd(q, k, v, theta, g, eta, s0, z0, bounds, N, retained,
                                                output_final_state, any(ctx.needs_input_grad[:8]), C)
        ctx.save_for_backward(q, k, v, theta, g, eta, ckpt, ck_off, bounds)
        ctx.N, ctx.C, ctx.retained, ctx.has_h0 = N, C, retained, s0 is not None
        ctx.dtypes = (q.dtype, k.dtype, theta.dtype, None if g is None else g.dtype, eta.dtype)
        return o, st, zt

    @staticmethod
    @once_differentiable
    def backward(ctx, do, dst, dzt):
        q, k, v, theta, g, eta, ckpt, ck_off, bounds = ctx.saved_tensors
        if dst is not None or dzt is not None:  # one of the two may be unused
            dst = torch.zeros_like(dzt) if dst is None else dst.contiguous()
            dzt = torch.zeros_like(dst) if dzt is None else dzt.contiguous()
        dq, dk, dv, dth, dg, deta, ds0, dz0 = recurrent_bwd(
            q, k, v, theta, g, eta, ctx.has_h0, do.contiguous(), dst, dzt, ckpt, ck_off, bounds, ctx.N,
            ctx.retained, ctx.C)
        tq, tk, tth, tg, te = ctx.dtypes
        return (dq.to(tq), dk.to(tk), dv, dth.to(tth), None if dg is None else dg.to(tg), deta.to(te),
                ds0, dz0, None, None, None, None, None)
