"""Fused recurrent kernels for the diagonal-decay family, forward and backward.

    S_t = Decay_t ⊙ S_{t-1} + k_t v_tᵀ,     o_t = S_tᵀ q_t

with Decay_t = exp(g_t) a scalar per head, exp(gk_t) per key channel, exp(gv_t) per value channel, or
none. One program owns one (sequence, head, value block) and keeps its [K, BV] slice of the state in
fp32 registers for the whole sequence: each token costs one read of q, k, v and one write of o, which
makes this the decoding kernel too. The decay gradients come from the identity

    ∂L/∂G_t = q_t ⊙ dq_t − k_t ⊙ dk_t   (key side)     dg_t = Σ_{s≥t} ∂L/∂G_s

(value side: o_t ⊙ do_t − v_t ⊙ dv_t), applied in PyTorch after the kernels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._common import next_pow2

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
def _fwd_kernel(q, k, v, g, h0, o, ht, offsets, T, MAXLEN,
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
        b_q = tl.load(q + base * K + o_k, mask=mk, other=0.0).to(tl.float32)
        b_k = tl.load(k + base * K + o_k, mask=mk, other=0.0).to(tl.float32)
        b_v = tl.load(v + base * V + o_v, mask=mv, other=0.0).to(tl.float32)
        b_h = _decay(b_h, g, base, o_k, o_v, mk, mv, ok, K, V, DECAY)
        b_h += b_k[:, None] * b_v[None, :]
        b_o = tl.sum(b_h * b_q[:, None], axis=0)
        tl.store(o + base * V + o_v, b_o.to(o.dtype.element_ty), mask=mv)
    if STORE_HT:
        tl.store(ht + p_state, b_h, mask=m_kv)


@triton.jit
def _bwd_kernel(q, k, v, g, h0, do, dht, dq, dk, dv, dh0, offsets, T, MAXLEN,
                H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                DECAY: tl.constexpr, HAS_H0: tl.constexpr, HAS_DHT: tl.constexpr):
    """dq by a forward sweep (it needs S_t); dk, dv, dh0 by a backward sweep of dS."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(offsets + i_n).to(tl.int64)
    eos = tl.load(offsets + i_n + 1).to(tl.int64)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    p_state = i_nh.to(tl.int64) * K * V + o_k[:, None] * V + o_v[None, :]
    # dq and dk sum over V: each value block writes its partial sum to its own slice.
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
        b_h += b_k[:, None] * b_v[None, :]
        b_dq = tl.sum(b_h * b_do[None, :], axis=1)
        tl.store(dq + (i_v * NT + base) * K + o_k, b_dq, mask=mk)
    b_dh = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        b_dh += tl.load(dht + p_state, mask=m_kv, other=0.0).to(tl.float32)
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
        b_dh += b_q[:, None] * b_do[None, :]
        b_dk = tl.sum(b_dh * b_v[None, :], axis=1)
        b_dv = tl.sum(b_dh * b_k[:, None], axis=0)
        tl.store(dk + (i_v * NT + base) * K + o_k, b_dk, mask=mk)
        tl.store(dv + base * V + o_v, b_dv.to(dv.dtype.element_ty), mask=mv)
        b_dh = _decay(b_dh, g, base, o_k, o_v, mk, mv, ok, K, V, DECAY)
    if HAS_H0:
        tl.store(dh0 + p_state, b_dh, mask=m_kv)


def _maxlen(offsets: Tensor) -> int:
    return int((offsets[1:] - offsets[:-1]).max().item()) if offsets.numel() > 1 else 0


def _blocks(K: int, V: int) -> tuple[int, int]:
    BK = max(next_pow2(K), 1)
    # keep the register tile [BK, BV] bounded: big K means a narrower value block
    BV = min(max(next_pow2(V), 1), max(8, 8192 // BK), 64)
    return BK, BV


def _segment_reverse_cumsum(x: Tensor, offsets: Tensor) -> Tensor:
    """Σ_{s>=t} x_s within each sequence; x: [T_total, ...] flattened time first."""
    # scan along the contiguous last dim: a scan over the outer dim was 5.8 ms of a 10 ms
    # backward on the H200 (B·T = 32768, H = 16)
    xt = x.movedim(0, -1).contiguous()
    total = xt.flip(-1).cumsum(-1).flip(-1).movedim(-1, 0)  # Σ_{s>=t} over the whole axis
    # subtract what lies beyond each sequence's end
    ends = offsets[1:]
    after = torch.cat([total, torch.zeros_like(total[:1])], 0)[ends]   # Σ_{s>=end} per sequence
    seq = torch.bucketize(torch.arange(x.shape[0], device=x.device), ends, right=True)
    return total - after[seq]


class FusedRecurrentDiag(torch.autograd.Function):
    """Autograd wrapper; all tensors flattened to [T_total, H, ·], state [N, H, K, V] fp32."""

    @staticmethod
    def forward(ctx, q, k, v, g, h0, offsets, decay: str, store_ht: bool):
        Tt, H, K = q.shape
        V = v.shape[-1]
        N = offsets.numel() - 1
        BK, BV = _blocks(K, V)
        # value-wise decays take their gradient from o ⊙ do: keep o in fp32 for it
        o = _empty(Tt, H, V, dtype=torch.float32 if decay == "value" else v.dtype, device=v.device)
        ht = _empty(N, H, K, V, dtype=torch.float32, device=v.device) if store_ht else None
        grid = (triton.cdiv(V, BV), N * H)
        _fwd_kernel[grid](q, k, v, g, h0, o, ht, offsets, Tt, _maxlen(offsets), H=H, K=K, V=V, BK=BK, BV=BV,
                          DECAY=_CODES[decay], HAS_H0=h0 is not None, STORE_HT=store_ht)
        ctx.save_for_backward(q, k, v, g, h0, offsets, o, ht)
        ctx.decay = decay
        return o.to(v.dtype), ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h0, offsets, o, ht = ctx.saved_tensors
        decay = ctx.decay
        Tt, H, K = q.shape
        V = v.shape[-1]
        N = offsets.numel() - 1
        BK, BV = _blocks(K, V)
        NV = triton.cdiv(V, BV)
        do = do.contiguous()
        dq = _empty(NV, Tt, H, K, dtype=torch.float32, device=q.device)
        dk = _empty(NV, Tt, H, K, dtype=torch.float32, device=q.device)
        dv = _empty(Tt, H, V, dtype=torch.float32, device=q.device)
        dh0 = _empty(N, H, K, V, dtype=torch.float32, device=q.device) if h0 is not None else None
        has_dht = dht is not None
        _bwd_kernel[(NV, N * H)](q, k, v, g, h0, do, dht.contiguous() if has_dht else None, dq, dk, dv,
                                  dh0, offsets, Tt, _maxlen(offsets), H=H, K=K, V=V, BK=BK, BV=BV, DECAY=_CODES[decay],
                                  HAS_H0=h0 is not None, HAS_DHT=has_dht)
        dq, dk = dq.sum(0), dk.sum(0)
        dg = None
        if decay != "none":
            if decay == "value":
                dG = o.float() * do.float() - v.float() * dv
            else:
                dG = q.float() * dq - k.float() * dk
            if decay == "scalar":
                dG = dG.sum(-1)
            # the reverse cumsum adds T terms that largely cancel: do it in float64
            dG = dG.double()
            dg = _segment_reverse_cumsum(dG, offsets)
            if has_dht and ht is not None:
                # the final state depends on every decay of its sequence: add ⟨dS_T, S_T⟩ at the last step
                fin = dht.double() * ht
                fin = {"scalar": fin.sum((-1, -2)), "key": fin.sum(-1), "value": fin.sum(-2)}[decay]
                last = offsets[1:] - 1
                has = offsets[1:] > offsets[:-1]
                add = torch.zeros_like(dG)
                add.index_add_(0, last[has], fin[has])
                dg = dg + _segment_reverse_cumsum(add, offsets)
            dg = dg.to(g.dtype)
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dg, dh0, None, None, None)


_STEP_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _step_blocks(K: int, V: int) -> tuple[int, int, int]:
    """(BK, BV, num_warps) for one token: bandwidth-bound, so big tiles (the state is read once)."""
    BK = max(next_pow2(K), 1)
    BV = min(max(next_pow2(V), 1), max(8, 8192 // BK))
    return BK, BV, max(1, min(4, BK * BV // 2048))


def diag_step(state: Tensor, q: Tensor, k: Tensor, v: Tensor, decay: str = "none", g: Tensor | None = None,
              inplace: bool = True) -> tuple[Tensor, Tensor]:
    """One decoding token per sequence in one launch (inference only, no autograd).

    state [B, H, K, V]; q, k [B, H, K] (q already scaled); v [B, H, V]; g [B, H] (scalar decay),
    [B, H, K] (key-wise) or [B, H, V] (value-wise). Returns ``(o [B, H, V], state)``: with
    ``inplace`` the contiguous float32 ``state`` is updated and returned; otherwise a new float32
    state is returned and ``state`` is left alone.
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
    want = {"none": None, "scalar": (B, H), "key": (B, H, K), "value": (B, H, V)}[decay]
    if (want is None) != (g is None) or (g is not None and tuple(g.shape) != want):
        raise ValueError(f"{op}: decay={decay!r} needs g of shape {want}, got "
                         f"{None if g is None else tuple(g.shape)}")
    from .._common import check_device, check_head_dim

    check_device(op, state=state, q=q, k=k, v=v, g=g)
    check_head_dim(op, "K", K)
    check_head_dim(op, "V", V)
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
        bounds = torch.arange(B + 1, dtype=torch.int64, device=q.device)
        with torch.no_grad():
            _fwd_kernel[(triton.cdiv(V, BV), B * H)](
                q, k, v, g, h0, o, ht, bounds, B, 1, H=H, K=K, V=V, BK=BK, BV=BV,
                DECAY=_CODES[decay], HAS_H0=True, STORE_HT=True, num_warps=num_warps)
    return o, ht
