"""Fused recurrent kernels for the diagonal-decay family, forward and backward.

    S_t = Decay_t ⊙ S_{t-1} + k_t v_tᵀ,     o_t = S_tᵀ q_t

with Decay_t = exp(g_t) a scalar per head, exp(gk_t) per key channel, exp(gv_t) per value channel, or
none. One program owns one (sequence, head, value block) and keeps its [K, BV] slice of the state in
fp32 registers for the whole sequence: each token costs one read of q, k, v and one write of o, which
makes this the decoding kernel too.

Decay gradient. dg_t = ⟨e^{g_t} S_{t−1}, dS_t⟩ (summed over V for key-wise decays, over K for
value-wise ones, over both for a scalar) is the sum of the pairs (source j < t: a key or the initial
state; sink s ≥ t: a query or the final state) that straddle t. With r_s the pairs of query s with its
earlier sources, read off e^{g_s} S_{s−1} in the forward sweep, and c_j those of key j with its later
sinks, read off e^{g_{j+1}} dS_{j+1} in the backward sweep,

    dg_t = ⟨dS_T, e^{g_T} S_{T−1}⟩ + Σ_{s≥t} (r_s − c_s)     (the first term: the final state's pairs),

accumulated in the backward sweep (pairs with both ends ≥ t cancel). The usual route,
Σ_{s≥t} (q_s ⊙ dq_s − k_s ⊙ dk_s), also carries the diagonal pairs q_s k_s (do_s·v_s) on both sides:
under a decay of −20 per step they are e^{20} times dg, and their rounding is all that is left of it.
r and c hold none of them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._common import cdiv, check_scale, next_pow2, step_bounds

# decay kinds, as constexpr codes
NONE, SCALAR, KEY, VALUE = 0, 1, 2, 3
_CODES = {"none": NONE, "scalar": SCALAR, "key": KEY, "value": VALUE}


def _empty(*shape, **kw) -> Tensor:
    """Allocation hook: the tests patch it to fill buffers with NaN."""
    return torch.empty(*shape, **kw)


@triton.jit
def _decay(b_h, g, base, o_k, o_v, mk, mv, ok, K: tl.constexpr, V: tl.constexpr, DECAY: tl.constexpr):
    """Multiply the state tile by exp(g) of this step (a no-op on masked steps: exp(0) = 1)."""
    if DECAY == 1:
        b_h = b_h * tl.exp(tl.load(g + base, mask=ok, other=0.0).to(tl.float32))
    if DECAY == 2:
        b_h = b_h * tl.exp(tl.load(g + base * K + o_k, mask=mk, other=0.0).to(tl.float32))[:, None]
    if DECAY == 3:
        b_h = b_h * tl.exp(tl.load(g + base * V + o_v, mask=mv, other=0.0).to(tl.float32))[None, :]
    return b_h


@triton.jit
def _fwd_kernel(q, k, v, g, h0, o, ht, offsets, T, MAXLEN, scale,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                DECAY: tl.constexpr, HAS_H0: tl.constexpr, STORE_HT: tl.constexpr):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(offsets + i_n).to(tl.int64)
    eos = tl.load(offsets + i_n + 1).to(tl.int64)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    p_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    if HAS_H0:
        b_h += tl.load(h0 + p_state, mask=m_kv, other=0.0).to(tl.float32)
    # Loop to the longest sequence with masked steps (zeros write nothing, exp(0) keeps the
    # state): bounds loaded from memory cannot drive a loop under the interpreter.
    for i in range(0, MAXLEN):
        ok = i < eos - bos
        base = (bos + i) * H + i_h
        mk, mv = m_k & ok, m_v & ok
        b_q = tl.load(q + base * K + o_k, mask=mk, other=0.0).to(tl.float32) * scale
        b_k = tl.load(k + base * K + o_k, mask=mk, other=0.0).to(tl.float32)
        b_v = tl.load(v + base * V + o_v, mask=mv, other=0.0).to(tl.float32)
        b_h = _decay(b_h, g, base, o_k, o_v, mk, mv, ok, K, V, DECAY)
        b_h += b_k[:, None] * b_v[None, :]
        b_o = tl.sum(b_h * b_q[:, None], axis=0)
        tl.store(o + base * V + o_v, b_o.to(o.dtype.element_ty), mask=mv)
    if STORE_HT:
        tl.store(ht + p_state, b_h, mask=m_kv)


@triton.jit
def _bwd_kernel(q, k, v, g, h0, do, dht, dq, dk, dv, dg, rs, hl, dh0, offsets, T, MAXLEN,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                DECAY: tl.constexpr, HAS_H0: tl.constexpr, HAS_DHT: tl.constexpr, DG: tl.constexpr):
    """dq and the row sums r_t by a forward sweep (they need S_t); dk, dv, dh0 and, from r_t − c_t,
    the decay gradient by a backward sweep of dS (see the module docstring)."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(offsets + i_n).to(tl.int64)
    eos = tl.load(offsets + i_n + 1).to(tl.int64)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    # dq, dk (and dg unless value-wise) sum over V: each value block writes its partial sum to its own slice.
    NT = T * H
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        b_h += tl.load(h0 + p_state, mask=m_kv, other=0.0).to(tl.float32)
    for i in range(0, MAXLEN):
        ok = i < eos - bos
        base = (bos + i) * H + i_h
        mk, mv = m_k & ok, m_v & ok
        b_k = tl.load(k + base * K + o_k, mask=mk, other=0.0).to(tl.float32)
        b_v = tl.load(v + base * V + o_v, mask=mv, other=0.0).to(tl.float32)
        b_do = tl.load(do + base * V + o_v, mask=mv, other=0.0).to(tl.float32)
        b_h = _decay(b_h, g, base, o_k, o_v, mk, mv, ok, K, V, DECAY)
        b_hdo = tl.sum(b_h * b_do[None, :], axis=1)        # e^{g_t} S_{t−1} do_t
        if DG:
            # r_t: query t with the keys before it and the initial state
            b_q = tl.load(q + base * K + o_k, mask=mk, other=0.0).to(tl.float32)
            if DECAY == 1:
                b_r = tl.sum(b_q * b_hdo, axis=0)
            elif DECAY == 2:
                b_r = b_q * b_hdo
            else:
                b_r = b_do * tl.sum(b_h * b_q[:, None], axis=0)
            if HAS_DHT:
                if i == eos - bos - 1:
                    # e^{g_T} S_{T−1}, for the final state's pairs after the sweep (no second
                    # register tile inside the loop)
                    tl.store(hl + p_state, b_h, mask=m_kv)
            if DECAY == 1:
                tl.store(rs + i_v * NT + base, b_r, mask=ok)
            elif DECAY == 2:
                tl.store(rs + (i_v * NT + base) * K + o_k, b_r, mask=mk)
            else:
                tl.store(rs + base * V + o_v, b_r, mask=mv)
        # dq_t = S_t do_t, with S_t = e^{g_t} S_{t−1} + k_t v_tᵀ
        b_dq = b_hdo + b_k * tl.sum(b_v * b_do, axis=0)
        b_h += b_k[:, None] * b_v[None, :]
        tl.store(dq + (i_v * NT + base) * K + o_k, b_dq, mask=mk)
    if DG:
        tl.debug_barrier()      # the backward sweep reads r_t (and hl) back, possibly in other threads
    # (r_t and dg_t live in separate buffers: warps that drift apart never read a dg_t for an r_t)
    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        b_dh += tl.load(dht + p_state, mask=m_kv, other=0.0).to(tl.float32)
    if DECAY == 1:
        b_dg = tl.sum(tl.zeros([BK], dtype=tl.float32), axis=0)
    elif DECAY == 2:
        b_dg = tl.zeros([BK], dtype=tl.float32)
    else:
        b_dg = tl.zeros([BV], dtype=tl.float32)
    if DG:
        if HAS_DHT:
            # the final state's pairs ⟨dS_T, e^{g_T} S_{T−1}⟩ are part of every dg_t of the sequence
            b_fin = b_dh * tl.load(hl + p_state, mask=m_kv & (eos > bos), other=0.0)
            if DECAY == 1:
                b_dg += tl.sum(tl.sum(b_fin, axis=1), axis=0)
            elif DECAY == 2:
                b_dg += tl.sum(b_fin, axis=1)
            else:
                b_dg += tl.sum(b_fin, axis=0)
    for i in range(0, MAXLEN):
        # walk backwards: the first MAXLEN − n steps fall before the sequence and are masked
        j = MAXLEN - 1 - i
        ok = j < eos - bos
        base = (bos + j) * H + i_h
        mk, mv = m_k & ok, m_v & ok
        b_q = tl.load(q + base * K + o_k, mask=mk, other=0.0).to(tl.float32)
        b_k = tl.load(k + base * K + o_k, mask=mk, other=0.0).to(tl.float32)
        b_v = tl.load(v + base * V + o_v, mask=mv, other=0.0).to(tl.float32)
        b_do = tl.load(do + base * V + o_v, mask=mv, other=0.0).to(tl.float32)
        # b_dh is e^{g_{j+1}} dS_{j+1} here (dS_T at the last step); dS_j adds q_j do_jᵀ
        if DG:
            # c_j: key j with the later queries and the final state, read off b_dh before q_j do_jᵀ
            # joins it (none at the last step: its pair with the final state is diagonal)
            last = j == eos - bos - 1
            if DECAY == 3:
                b_dhk = tl.sum(b_dh * b_k[:, None], axis=0)
                b_dg += tl.load(rs + base * V + o_v, mask=mv, other=0.0) - tl.where(last, 0.0, b_v * b_dhk)
                tl.store(dg + base * V + o_v, b_dg, mask=mv)
                b_dh += b_q[:, None] * b_do[None, :]
                b_dk = tl.sum(b_dh * b_v[None, :], axis=1)
                b_dv = b_dhk + b_do * tl.sum(b_q * b_k, axis=0)
            else:
                b_dhv = tl.sum(b_dh * b_v[None, :], axis=1)
                if DECAY == 1:
                    b_dg += tl.load(rs + i_v * NT + base, mask=ok, other=0.0) \
                        - tl.where(last, 0.0, tl.sum(b_k * b_dhv, axis=0))
                    tl.store(dg + i_v * NT + base, b_dg, mask=ok)
                else:
                    b_dg += tl.load(rs + (i_v * NT + base) * K + o_k, mask=mk, other=0.0) \
                        - tl.where(last, 0.0, b_k * b_dhv)
                    tl.store(dg + (i_v * NT + base) * K + o_k, b_dg, mask=mk)
                b_dh += b_q[:, None] * b_do[None, :]
                b_dk = b_dhv + b_q * tl.sum(b_do * b_v, axis=0)
                b_dv = tl.sum(b_dh * b_k[:, None], axis=0)
        else:
            b_dh += b_q[:, None] * b_do[None, :]
            b_dk = tl.sum(b_dh * b_v[None, :], axis=1)
            b_dv = tl.sum(b_dh * b_k[:, None], axis=0)
        tl.store(dk + (i_v * NT + base) * K + o_k, b_dk, mask=mk)
        tl.store(dv + base * V + o_v, b_dv.to(dv.dtype.element_ty), mask=mv)
        b_dh = _decay(b_dh, g, base, o_k, o_v, mk, mv, ok, K, V, DECAY)
    if HAS_H0:
        tl.store(dh0 + p_state, b_dh, mask=m_kv)


def _maxlen(offsets: Tensor) -> int:
    dense = getattr(offsets, "_dense", None)   # equal lengths: known without a read-back
    if dense is not None:
        return dense[1]
    return int((offsets[1:] - offsets[:-1]).max().item()) if offsets.numel() > 1 else 0


def _blocks(K: int, V: int) -> tuple[int, int]:
    BK = max(next_pow2(K), 1)
    # keep the register tile [BK, BV] bounded: big K means a narrower value block
    BV = min(max(next_pow2(V), 1), max(8, 8192 // BK), 64)
    return BK, BV


class FusedRecurrentDiag(torch.autograd.Function):
    """Autograd wrapper; all tensors flattened to [T_total, H, ·], state [N, H, K, V] fp32."""

    @staticmethod
    def forward(ctx, q, k, v, g, h0, offsets, decay: str, store_ht: bool):
        Tt, H, K = q.shape
        V = v.shape[-1]
        N = offsets.numel() - 1
        BK, BV = _blocks(K, V)
        o = _empty(Tt, H, V, dtype=v.dtype, device=v.device)
        ht = _empty(N, H, K, V, dtype=torch.float32, device=v.device) if store_ht else None
        grid = (cdiv(V, BV), N * H)
        _fwd_kernel[grid](q, k, v, g, h0, o, ht, offsets, Tt, _maxlen(offsets), 1.0, H=H, K=K, V=V, BK=BK, BV=BV,
                          DECAY=_CODES[decay], HAS_H0=h0 is not None, STORE_HT=store_ht)
        ctx.save_for_backward(q, k, v, g, h0, offsets)
        ctx.decay = decay
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h0, offsets = ctx.saved_tensors
        decay = ctx.decay
        Tt, H, K = q.shape
        V = v.shape[-1]
        N = offsets.numel() - 1
        BK, BV = _blocks(K, V)
        NV = cdiv(V, BV)
        do = do.contiguous()
        dev = q.device
        dq = _empty(NV, Tt, H, K, dtype=torch.float32, device=dev)
        dk = _empty(NV, Tt, H, K, dtype=torch.float32, device=dev)
        dv = _empty(Tt, H, V, dtype=torch.float32, device=dev)
        dh0 = _empty(N, H, K, V, dtype=torch.float32, device=dev) if h0 is not None else None
        want_dg = decay != "none" and ctx.needs_input_grad[3]
        # key-wise and scalar shares are per value block (summed below); value-wise ones are whole
        dg_shape = {"scalar": (NV, Tt, H), "key": (NV, Tt, H, K), "value": (Tt, H, V)}
        dg = _empty(*dg_shape[decay], dtype=torch.float32, device=dev) if want_dg else None
        rs = _empty(*dg_shape[decay], dtype=torch.float32, device=dev) if want_dg else None
        has_dht = dht is not None
        hl = _empty(N, H, K, V, dtype=torch.float32, device=dev) if want_dg and has_dht else None
        # 8 warps on big tiles: with 4, ptxas (sm_90) spills 0.3–2.9 kB a thread at K = V = 64–128
        _bwd_kernel[(NV, N * H)](q, k, v, g, h0, do, dht.contiguous() if has_dht else None, dq, dk, dv, dg,
                                  rs, hl, dh0, offsets, Tt, _maxlen(offsets), H=H, K=K, V=V, BK=BK, BV=BV,
                                  DECAY=_CODES[decay], HAS_H0=h0 is not None, HAS_DHT=has_dht, DG=want_dg,
                                  num_warps=8 if BK * BV >= 4096 else 4)
        dq, dk = dq.sum(0), dk.sum(0)
        if want_dg:
            dg = (dg if decay == "value" else dg.sum(0)).to(g.dtype)
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dg, dh0, None, None, None)


_STEP_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _step_blocks(K: int, V: int) -> tuple[int, int, int]:
    """(BK, BV, num_warps) for one token: bandwidth-bound, so big tiles (the state is read once)."""
    BK = max(next_pow2(K), 1)
    BV = min(max(next_pow2(V), 1), max(8, 8192 // BK))
    return BK, BV, max(1, min(4, BK * BV // 2048))


def diag_step(state: Tensor, q: Tensor, k: Tensor, v: Tensor, decay: str = "none", g: Tensor | None = None,
              inplace: bool = True, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """One decoding token per sequence in one launch (inference only, no autograd).

    state [B, H, K, V]; q, k [B, H, K] (q multiplied by ``scale`` in the kernel); v [B, H, V]; g
    [B, H] (scalar decay), [B, H, K] (key-wise) or [B, H, V] (value-wise). Returns
    ``(o [B, H, V], state)``: with ``inplace`` the contiguous float32 ``state`` is updated and
    returned; otherwise a new float32 state is returned and ``state`` is left alone.
    """
    op = "diag_step"
    for name, t, dims in (("state", state, "[B, H, K, V]"), ("q", q, "[B, H, K]"), ("k", k, "[B, H, K]"),
                          ("v", v, "[B, H, V]")):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != len(dims.split(",")):
            raise ValueError(f"{op}: {name} must be {dims}, got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be floating-point, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in _STEP_DTYPES:
        raise TypeError(f"{op}: q, k, v must share one of float32/float16/bfloat16, got "
                        f"{q.dtype}, {k.dtype}, {v.dtype}")
    B, H, K = q.shape
    V = v.shape[-1]
    if k.shape != q.shape:
        raise ValueError(f"{op}: k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape[:2] != (B, H):
        raise ValueError(f"{op}: v must be [B, H, V] with B, H = {(B, H)}, got {tuple(v.shape)}")
    if tuple(state.shape) != (B, H, K, V):
        raise ValueError(f"{op}: state must have shape [B, H, K, V] = {(B, H, K, V)}, got {tuple(state.shape)}")
    if decay not in _CODES:
        raise ValueError(f"{op}: decay must be one of {tuple(_CODES)}, got {decay!r}")
    scale = check_scale(op, scale)
    if g is not None and not (isinstance(g, Tensor) and g.is_floating_point()):
        raise TypeError(f"{op}: g must be a floating-point tensor of log decays, got "
                        f"{g.dtype if isinstance(g, Tensor) else type(g).__name__}")
    want = {"none": None, "scalar": (B, H), "key": (B, H, K), "value": (B, H, V)}[decay]
    if (want is None) != (g is None) or (g is not None and tuple(g.shape) != want):
        raise ValueError(f"{op}: decay={decay!r} needs g of shape {want}, got "
                         f"{None if g is None else tuple(g.shape)}")
    from .._common import check_device, check_head_dim, check_no_grad

    check_device(op, state=state, q=q, k=k, v=v, g=g)
    check_head_dim(op, "K", K)
    check_head_dim(op, "V", V)
    check_no_grad(op, state=state, q=q, k=k, v=v, g=g)
    if inplace and (state.dtype != torch.float32 or not state.is_contiguous()):
        raise ValueError(f"{op}: inplace=True needs a contiguous float32 state, got {state.dtype}"
                         f"{'' if state.is_contiguous() else ' (non-contiguous)'}")
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    g = None if g is None else g.contiguous()
    h0 = state if inplace else state.float().contiguous()
    ht = state if inplace else _empty(B, H, K, V, dtype=torch.float32, device=state.device)
    o = _empty(B, H, V, dtype=v.dtype, device=v.device)
    BK, BV, num_warps = _step_blocks(K, V)
    if B * H > 0:
        # Every (sequence, head) is one token long: offsets 0..B, one loop step, no host sync.
        # Each program reads its own [K, BV] slice of h0 before writing the same slice of ht,
        # so updating in place is safe.
        with torch.no_grad():
            _fwd_kernel[(cdiv(V, BV), B * H)](
                q, k, v, g, h0, o, ht, step_bounds(B, q.device), B, 1, scale, H=H, K=K, V=V, BK=BK, BV=BV,
                DECAY=_CODES[decay], HAS_H0=True, STORE_HT=True, num_warps=num_warps)
    return o, ht
