r"""Fused recurrent (token-by-token) kernels for the delta-rule family: DeltaNet and Gated DeltaNet.

Per head, with the state S [K, V] in fp32 and α_t = exp(g_t) (α_t = 1 without g)::

    S_a = α_t S_{t-1}
    v'  = β_t (v_t − S_aᵀ k_t)
    S_t = S_a + k_t v'ᵀ            (= (I − β_t k_t k_tᵀ) α_t S_{t-1} + β_t k_t v_tᵀ)
    o_t = S_tᵀ q_t                 (q multiplied by the call's scale inside the kernels)

Layout as in flash-linear-attention: q, k [B, T, H, K], v [B, T, H, V], g, beta [B, T, H],
state [N, H, K, V] (fp32), output [B, T, H, V]. Packed variable-length batches use ``cu_seqlens``
(B = 1, N = len(cu_seqlens) − 1 sequences); a fixed-length batch is the packed case with N = B.

Every column of S evolves on its own given (k, β, g), so a program owns one (sequence, head,
V-block): the state block [K_pad, BV] lives in registers, V is split, K is not.

Backward (reverse mode of one step, G = ∂L/∂S_t coming from the future)::

    dq_t  = S_t do_t                       G  += q_t do_tᵀ
    dk_t  = G v' + S_a du                  dv' = Gᵀ k_t
    dv_t  = β dv'                          dβ_t = dv'ᵀ (v_t − S_aᵀ k_t)
    du    = −β dv'                         dS_a = G + k_t duᵀ
    dg_t  = Σ dS_a ⊙ S_a                   ∂L/∂S_{t-1} = α_t dS_a

Inverting (I − β k kᵀ) to walk the states backwards is unstable, and keeping every S_t costs
T·K·V per head, so the forward checkpoints the state every ``checkpoint_interval`` (C) steps into
[Σ_n ⌈T_n/C⌉, H, K, V] fp32; the backward, one program per (sequence, head, V-block), goes over
the segments last to first, recomputes the segment's C pre-step states from its checkpoint into a
per-program scratch [C, K_pad, BV] and walks them backwards. Gradients that sum over V (q, k, β, g)
are written as per-V-block partial sums [NV, ...] and summed in PyTorch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._common import (apply, cdiv, check_cu_seqlens, check_device, check_head_dim, check_no_grad, check_scale,
                       next_pow2, seq_bounds, step_bounds)

__all__ = ["fused_recurrent_delta", "delta_step", "CHECKPOINT_INTERVAL"]

CHECKPOINT_INTERVAL = 64
_QKV_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _empty(*shape, dtype, device) -> Tensor:
    """Every buffer the kernels write goes through here (tests poison it with NaN)."""
    return torch.empty(*shape, dtype=dtype, device=device)


def _blocks(K: int, V: int, kind: str) -> tuple[int, int, int]:
    """(BK, BV, num_warps) for kind "fwd", "bwd" or "step". K is never split, V is.

    Measured on an H200 (B=8, T=4096, H=16, K=V=128, bf16): the forward is latency-bound per step
    and fastest with fla's small tiles (BV=8, one warp: 5.3 ms vs 11.7 ms at BV=16, two warps);
    the backward (four live [BK, BV] tiles) with BV=32 and two warps (37 ms vs 39-62 ms with more
    warps); the one-token step is bandwidth-bound and wants big tiles (BV=64, 4 warps: 45 us for
    B=64, H=16 vs ~70 us with BV=16).
    """
    BK = max(16, next_pow2(K))
    Vp = max(8, next_pow2(V))
    if kind == "fwd":
        return BK, 8, 1
    if kind == "bwd":
        BV = min(Vp, max(8, 4096 // BK))
        return BK, BV, 4 if BK >= 256 else 2
    BV = min(Vp, max(8, 8192 // BK))
    return BK, BV, max(1, min(4, BK * BV // 2048))


# --------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------

@triton.jit
def _fwd_kernel(q, k, v, beta, g, o, h0, ht, ckpt, bounds, ck_off, C, scale,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                BK: tl.constexpr, BV: tl.constexpr,
                USE_G: tl.constexpr, USE_H0: tl.constexpr, STORE_HT: tl.constexpr,
                SAVE_CKPT: tl.constexpr):
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

    p_q = q + (bos * H + i_h) * K + o_k
    p_k = k + (bos * H + i_h) * K + o_k
    p_v = v + (bos * H + i_h) * V + o_v
    p_o = o + (bos * H + i_h) * V + o_v
    p_b = beta + bos * H + i_h
    p_g = g + bos * H + i_h

    b_S = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_S += tl.load(h0 + i_nh * K * V + o_kv, mask=m_kv, other=0.).to(tl.float32)
    if SAVE_CKPT:
        p_c = ckpt + (tl.load(ck_off + i_n).to(tl.int64) * H + i_h) * K * V + o_kv

    for i in range(0, L):
        if SAVE_CKPT:
            if i % C == 0:  # the state before steps 0, C, 2C, ... of this sequence
                tl.store(p_c, b_S, mask=m_kv)
                p_c += H * K * V
        b_q = tl.load(p_q, mask=m_k, other=0.).to(tl.float32) * scale
        b_k = tl.load(p_k, mask=m_k, other=0.).to(tl.float32)
        b_v = tl.load(p_v, mask=m_v, other=0.).to(tl.float32)
        b_beta = tl.load(p_b).to(tl.float32)
        if USE_G:
            b_S = b_S * tl.exp(tl.load(p_g).to(tl.float32))
        b_u = tl.sum(b_S * b_k[:, None], 0)
        b_vn = b_beta * (b_v - b_u)
        b_S = b_S + b_k[:, None] * b_vn[None, :]
        b_o = tl.sum(b_S * b_q[:, None], 0)
        tl.store(p_o, b_o.to(p_o.dtype.element_ty), mask=m_v)
        p_q += H * K
        p_k += H * K
        p_v += H * V
        p_o += H * V
        p_b += H
        p_g += H
    if STORE_HT:
        tl.store(ht + i_nh * K * V + o_kv, b_S, mask=m_kv)


@triton.jit
def _bwd_kernel(q, k, v, beta, g, do, dht, ckpt, scratch, bounds, ck_off, C, NT,
                dq, dk, dv, dbeta, dg, dh0, scale,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                BK: tl.constexpr, BV: tl.constexpr, NV: tl.constexpr,
                USE_G: tl.constexpr, USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr):
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
    # this program's private scratch: C pre-step states of one segment, [C, BK, BV]
    p_scr = scratch + (i_nh * NV + i_v) * C * BK * BV + o_k[:, None] * BV + tl.arange(0, BV)[None, :]
    # partial sums over V-blocks: dq/dk [NV, B*T, H, K], dbeta/dg [NV, B*T, H]
    dq_v = dq + i_v * NT * H * K
    dk_v = dk + i_v * NT * H * K
    db_v = dbeta + i_v * NT * H
    dg_v = dg + i_v * NT * H

    b_dS = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        b_dS += tl.load(dht + i_nh * K * V + o_kv, mask=m_kv, other=0.).to(tl.float32)
    p_c0 = ckpt + (tl.load(ck_off + i_n).to(tl.int64) * H + i_h) * K * V + o_kv

    NS = (L + C - 1) // C
    for jj in range(0, NS):
        j = NS - 1 - jj
        t0 = bos + j * C
        n_steps = tl.minimum(L - j * C, C)
        # 1) recompute the segment's pre-step states from its checkpoint
        b_S = tl.load(p_c0 + j * H * K * V, mask=m_kv, other=0.)
        for i in range(0, n_steps):
            tl.store(p_scr + i * BK * BV, b_S)
            r = (t0 + i) * H + i_h
            b_k = tl.load(k + r * K + o_k, mask=m_k, other=0.).to(tl.float32)
            b_v = tl.load(v + r * V + o_v, mask=m_v, other=0.).to(tl.float32)
            b_beta = tl.load(beta + r).to(tl.float32)
            if USE_G:
                b_S = b_S * tl.exp(tl.load(g + r).to(tl.float32))
            b_u = tl.sum(b_S * b_k[:, None], 0)
            b_S = b_S + b_k[:, None] * (b_beta * (b_v - b_u))[None, :]
        tl.debug_barrier()
        # 2) walk the segment backwards
        for ii in range(0, n_steps):
            i = n_steps - 1 - ii
            r = (t0 + i) * H + i_h
            b_Sa = tl.load(p_scr + i * BK * BV)
            b_q = tl.load(q + r * K + o_k, mask=m_k, other=0.).to(tl.float32) * scale
            b_k = tl.load(k + r * K + o_k, mask=m_k, other=0.).to(tl.float32)
            b_v = tl.load(v + r * V + o_v, mask=m_v, other=0.).to(tl.float32)
            b_do = tl.load(do + r * V + o_v, mask=m_v, other=0.).to(tl.float32)
            b_beta = tl.load(beta + r).to(tl.float32)
            if USE_G:
                b_a = tl.exp(tl.load(g + r).to(tl.float32))
                b_Sa = b_Sa * b_a
            b_vm = b_v - tl.sum(b_Sa * b_k[:, None], 0)          # v − S_aᵀk
            b_vn = b_beta * b_vm                                  # v'
            # o_t = S_tᵀ q
            b_dq = tl.sum((b_Sa + b_k[:, None] * b_vn[None, :]) * b_do[None, :], 1)
            b_dS += b_q[:, None] * b_do[None, :]
            # S_t = S_a + k v'ᵀ
            b_dk = tl.sum(b_dS * b_vn[None, :], 1)
            b_dvn = tl.sum(b_dS * b_k[:, None], 0)
            b_dbeta = tl.sum(b_dvn * b_vm, 0)
            b_du = -b_beta * b_dvn
            # v' = β (v − S_aᵀ k)
            b_dk += tl.sum(b_Sa * b_du[None, :], 1)
            b_dS += b_k[:, None] * b_du[None, :]
            tl.store(dq_v + r * K + o_k, b_dq * scale, mask=m_k)
            tl.store(dk_v + r * K + o_k, b_dk, mask=m_k)
            tl.store(dv + r * V + o_v, (b_beta * b_dvn).to(dv.dtype.element_ty), mask=m_v)
            tl.store(db_v + r, b_dbeta)
            if USE_G:
                tl.store(dg_v + r, tl.sum(tl.sum(b_dS * b_Sa, 1), 0))
                b_dS = b_dS * b_a
        tl.debug_barrier()
    if STORE_DH0:
        tl.store(dh0 + i_nh * K * V + o_kv, b_dS, mask=m_kv)


# --------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------

def _ck_offsets(bounds: Tensor, C: int) -> tuple[Tensor, int]:
    """Checkpoint row of each sequence's first segment ([N+1], int64) and the total count."""
    segs = (bounds[1:] - bounds[:-1] + C - 1) // C
    off = torch.zeros(bounds.numel(), dtype=torch.int64, device=bounds.device)
    torch.cumsum(segs, 0, out=off[1:])
    return off, int(off[-1].item())


def _fwd(q, k, v, beta, g, h0, bounds, N, output_final_state, save_ckpt, C, scale):
    B, T, H, K = q.shape
    V = v.shape[-1]
    BK, BV, num_warps = _blocks(K, V, "fwd")
    NV = cdiv(V, BV)
    o = _empty(B, T, H, V, dtype=v.dtype, device=v.device)
    ht = _empty(N, H, K, V, dtype=torch.float32, device=v.device) if output_final_state else None
    ckpt, ck_off = None, None
    if save_ckpt:
        ck_off, n_ck = _ck_offsets(bounds, C)
        ckpt = _empty(n_ck, H, K, V, dtype=torch.float32, device=v.device)
    if N * H > 0:
        _fwd_kernel[(N * H, NV)](
            q, k, v, beta, q if g is None else g, o, q if h0 is None else h0,
            q if ht is None else ht, q if ckpt is None else ckpt, bounds,
            bounds if ck_off is None else ck_off, C, scale,
            H=H, K=K, V=V, BK=BK, BV=BV, USE_G=g is not None, USE_H0=h0 is not None,
            STORE_HT=ht is not None, SAVE_CKPT=save_ckpt, num_warps=num_warps)
    return o, ht, ckpt, ck_off


def _bwd(q, k, v, beta, g, h0, do, dht, ckpt, ck_off, bounds, N, C, scale):
    B, T, H, K = q.shape
    V = v.shape[-1]
    dev = q.device
    BK, BV, num_warps = _blocks(K, V, "bwd")
    NV = cdiv(V, BV)
    # Scratch depth: C, or the longest sequence when that is shorter. Then every sequence is one
    # segment under either interval, so the shorter one can stand in for C in the kernel.
    lens = bounds[1:] - bounds[:-1]
    C = max(1, min(C, int(lens.max().item()) if lens.numel() else 1))
    scratch = _empty(N * H * NV * C, BK, BV, dtype=torch.float32, device=dev)
    dq = _empty(NV, B, T, H, K, dtype=torch.float32, device=dev)
    dk = _empty(NV, B, T, H, K, dtype=torch.float32, device=dev)
    dv = _empty(B, T, H, V, dtype=v.dtype, device=dev)
    dbeta = _empty(NV, B, T, H, dtype=torch.float32, device=dev)
    dg = _empty(NV, B, T, H, dtype=torch.float32, device=dev) if g is not None else None
    dh0 = _empty(N, H, K, V, dtype=torch.float32, device=dev) if h0 is not None else None
    if N * H > 0:
        _bwd_kernel[(N * H, NV)](
            q, k, v, beta, q if g is None else g, do, do if dht is None else dht, ckpt, scratch,
            bounds, ck_off, C, B * T, dq, dk, dv, dbeta, dq if dg is None else dg,
            dq if dh0 is None else dh0, scale,
            H=H, K=K, V=V, BK=BK, BV=BV, NV=NV, USE_G=g is not None, USE_DHT=dht is not None,
            STORE_DH0=dh0 is not None, num_warps=num_warps)
    dq = dq.sum(0).to(q.dtype)
    dk = dk.sum(0).to(k.dtype)
    dbeta = dbeta.sum(0).to(beta.dtype)
    dg = None if dg is None else dg.sum(0).to(g.dtype)
    dh0 = None if dh0 is None else dh0.to(h0.dtype)
    return dq, dk, dv, dbeta, dg, dh0


class _FusedRecurrentDelta(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, beta, g, h0, bounds, N, output_final_state, C, scale):
        # checkpoints of the state only for a backward to come
        o, ht, ckpt, ck_off = _fwd(q, k, v, beta, g, h0, bounds, N, output_final_state,
                                   any(ctx.needs_input_grad[:6]), C, scale)
        ctx.save_for_backward(q, k, v, beta, g, h0, ckpt, ck_off, bounds)
        ctx.N, ctx.C, ctx.scale = N, C, scale
        return o, ht

    @staticmethod
    @once_differentiable
    def backward(ctx, do, dht):
        q, k, v, beta, g, h0, ckpt, ck_off, bounds = ctx.saved_tensors
        do = do.contiguous()
        dht = None if dht is None else dht.contiguous()
        dq, dk, dv, dbeta, dg, dh0 = _bwd(q, k, v, beta, g, h0, do, dht, ckpt, ck_off, bounds,
                                          ctx.N, ctx.C, ctx.scale)
        return dq, dk, dv, dbeta, dg, dh0, None, None, None, None, None


# --------------------------------------------------------------------------------------------
# checks and public functions
# --------------------------------------------------------------------------------------------

def _need_tensor(op, name, t, dim, dims):
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != dim:
        raise ValueError(f"{op}: {name} must be {dim}-D {dims}, got shape {tuple(t.shape)}")


def _need_float(op, name, t):
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")


def _check_qkv_dtype(op, q, k, v):
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{op}: q, k and v must share one dtype, got q={q.dtype}, k={k.dtype}, "
                        f"v={v.dtype}")
    if q.dtype not in _QKV_DTYPES:
        raise TypeError(f"{op}: q, k, v must be float32, float16 or bfloat16, got {q.dtype}")


def _check_same(op, name, t, shape, dims):
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {dims} = {tuple(shape)}, got "
                         f"{tuple(t.shape)}")


def fused_recurrent_delta(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None = None,
                          scale: float | None = None, initial_state: Tensor | None = None,
                          output_final_state: bool = False, cu_seqlens: Tensor | None = None,
                          checkpoint_interval: int = CHECKPOINT_INTERVAL) -> tuple[Tensor, Tensor | None]:
    """The delta rule (``g=None``: DeltaNet) or gated delta rule, stepped token by token.

    q, k [B, T, H, K] (k normally L2-normalised), v [B, T, H, V], beta and g (log decay) [B, T, H];
    q, k, v share one of fp32/fp16/bf16, accumulation and state are fp32. ``scale`` multiplies q
    (default K^-0.5, as in :func:`chunk_delta` and fla; 1.0 for a q already scaled).
    ``initial_state`` [N, H, K, V] with N = B, or N = len(cu_seqlens) − 1 for a packed batch (B = 1).
    Returns ``o`` [B, T, H, V] in v's dtype and the fp32 final state [N, H, K, V] (None unless
    ``output_final_state``). Differentiable in q, k, v, beta, g and initial_state; the backward
    recomputes from states checkpointed every ``checkpoint_interval`` steps.
    """
    op = "fused_recurrent_delta"
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
    if isinstance(checkpoint_interval, bool) or not isinstance(checkpoint_interval, int) \
            or checkpoint_interval < 1:
        raise ValueError(f"{op}: checkpoint_interval must be a positive int, got {checkpoint_interval!r}")

    scale = K ** -0.5 if scale is None else check_scale(op, scale)
    bounds = seq_bounds(cu_seqlens, B, T, q.device)
    q, k, v, beta = (t.contiguous() for t in (q, k, v, beta))
    g = None if g is None else g.contiguous()
    h0 = None if initial_state is None else initial_state.contiguous()
    return apply(_FusedRecurrentDelta, q, k, v, beta, g, h0, bounds, N, bool(output_final_state),
                 checkpoint_interval, scale)


def delta_step(state: Tensor, q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None = None,
               inplace: bool = True, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """One decoding token per sequence in one launch (inference only, no autograd).

    state [B, H, K, V], q, k [B, H, K] (q multiplied by ``scale`` in the kernel), v [B, H, V], beta,
    g [B, H]. Returns ``(o [B, H, V], state)``: with ``inplace`` the fp32 contiguous ``state`` is
    updated and returned, otherwise a new fp32 state is returned and ``state`` (any float dtype) is
    left alone.
    """
    op = "delta_step"
    _need_tensor(op, "state", state, 4, "[B, H, K, V]")
    _need_tensor(op, "q", q, 3, "[B, H, K]")
    _need_tensor(op, "k", k, 3, "[B, H, K]")
    _need_tensor(op, "v", v, 3, "[B, H, V]")
    _need_tensor(op, "beta", beta, 2, "[B, H]")
    if g is not None:
        _need_tensor(op, "g", g, 2, "[B, H]")
    check_device(op, state=state, q=q, k=k, v=v, beta=beta, g=g)
    _check_qkv_dtype(op, q, k, v)
    B, H, K = q.shape
    V = v.shape[-1]
    _check_same(op, "k", k, (B, H, K), "[B, H, K]")
    _check_same(op, "v", v, (B, H, V), "[B, H, V]")
    _check_same(op, "beta", beta, (B, H), "[B, H]")
    _need_float(op, "beta", beta)
    if g is not None:
        _check_same(op, "g", g, (B, H), "[B, H]")
        _need_float(op, "g", g)
    check_head_dim(op, "K", K)
    check_head_dim(op, "V", V)
    scale = check_scale(op, scale)
    check_no_grad(op, state=state, q=q, k=k, v=v, beta=beta, g=g)
    _check_same(op, "state", state, (B, H, K, V), "[B, H, K, V]")
    _need_float(op, "state", state)
    if inplace and (state.dtype != torch.float32 or not state.is_contiguous()):
        raise ValueError(f"{op}: inplace=True needs a contiguous float32 state, got {state.dtype}"
                         f"{'' if state.is_contiguous() else ' (non-contiguous)'}")
    q, k, v, beta = (t.contiguous() for t in (q, k, v, beta))
    g = None if g is None else g.contiguous()
    h0 = state if inplace else state.contiguous()
    ht = state if inplace else _empty(B, H, K, V, dtype=torch.float32, device=state.device)
    o = _empty(B, H, V, dtype=v.dtype, device=v.device)
    BK, BV, num_warps = _blocks(K, V, "step")
    if B * H > 0:
        bounds = step_bounds(B, q.device)
        with torch.no_grad():
            _fwd_kernel[(B * H, cdiv(V, BV))](
                q, k, v, beta, q if g is None else g, o, h0, ht, q, bounds, bounds, 1, scale,
                H=H, K=K, V=V, BK=BK, BV=BV, USE_G=g is not None, USE_H0=True, STORE_HT=True,
                SAVE_CKPT=False, num_warps=num_warps)
    return o, ht
