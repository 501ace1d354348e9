"""The diagonal-decay family: linear attention, RetNet, Lightning, Mamba-2, GLA, gated RNNs, SSMs."""

from __future__ import annotations

import torch
from torch import Tensor

from .._common import (DTYPES, apply, check_cu_seqlens, check_device, check_head_dim, check_scale,
                       interpreter_upcast, seq_bounds)
from .chunk import ChunkScalarDecay
from .chunk_key import ChunkKeyDecay
from .recurrent import FusedRecurrentDiag, diag_step

__all__ = ["fused_recurrent_diag", "chunk_diag", "diag_step"]

DECAYS = ("none", "scalar", "key", "value")


def _check_state(op, state, N, H, K, V):
    if state is None:
        return None
    if tuple(state.shape) != (N, H, K, V):
        raise ValueError(f"{op}: initial_state must have shape [N, H, K, V] = {(N, H, K, V)}, "
                         f"got {tuple(state.shape)}")
    if not state.is_floating_point():
        raise TypeError(f"{op}: initial_state must be a floating-point tensor, got {state.dtype}")
    return state.float().contiguous()


def prepare(op: str, q: Tensor, k: Tensor, v: Tensor, decay: str, g: Tensor | None,
            initial_state: Tensor | None, cu_seqlens: Tensor | None):
    """Validate and flatten inputs to [B*T, H, ·]; return them with the sequence offsets."""
    check_device(op, q=q, k=k, v=v, g=g, initial_state=initial_state)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{op}: {name} must be [B, T, H, D], got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be floating-point, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{op}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    # (float64 ran under the interpreter but does not compile for the GPU; the dsf forms take it)
    if q.dtype not in DTYPES.values():
        raise TypeError(f"{op}: q, k, v must be float32, float16 or bfloat16, got {q.dtype} "
                        "(float64: the dsf reference forms)")
    if q.shape != k.shape:
        raise ValueError(f"{op}: k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}")
    B, T, H, K = q.shape
    if v.shape[:3] != (B, T, H):
        raise ValueError(f"{op}: v must be [B, T, H, V] with B, T, H = {(B, T, H)}, got {tuple(v.shape)}")
    V = v.shape[-1]
    check_head_dim(op, "K", K)
    check_head_dim(op, "V", V)
    if decay not in DECAYS:
        raise ValueError(f"{op}: decay must be one of {DECAYS}, got {decay!r}")
    want = {"none": None, "scalar": (B, T, H), "key": (B, T, H, K), "value": (B, T, H, V)}[decay]
    if (want is None) != (g is None) or (g is not None and tuple(g.shape) != want):
        raise ValueError(f"{op}: decay={decay!r} needs g of shape {want}, got "
                         f"{None if g is None else tuple(g.shape)}")
    if g is not None and not g.is_floating_point():   # (an int or bool g was cast to log decays of 0/1)
        raise TypeError(f"{op}: g must be a floating-point tensor of log decays, got {g.dtype}")
    N = check_cu_seqlens(op, cu_seqlens, B, T)
    offsets = seq_bounds(cu_seqlens, B, T, q.device)
    flat = lambda t: None if t is None else t.reshape(B * T, *t.shape[2:]).contiguous()  # noqa: E731
    h0 = _check_state(op, initial_state, N, H, K, V)
    return flat(q), flat(k), flat(v), flat(g), h0, offsets, (B, T, H, K, V)


def fused_recurrent_diag(q: Tensor, k: Tensor, v: Tensor, decay: str = "none", g: Tensor | None = None,
                         initial_state: Tensor | None = None, output_final_state: bool = False,
                         cu_seqlens: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """S_t = exp(g_t) ⊙ S_{t-1} + k_t v_tᵀ, o_t = S_tᵀ q_t, step by step in one kernel.

    Args:
        q, k: [B, T, H, K] (q already scaled); v: [B, T, H, V].
        decay: "none" | "scalar" (g [B, T, H]) | "key" (g [B, T, H, K]) | "value" (g [B, T, H, V]).
        initial_state: [N, H, K, V], N = B or len(cu_seqlens) − 1.
        cu_seqlens: [N + 1] offsets of sequences packed into B = 1.
    Returns:
        o [B, T, H, V] and the final state [N, H, K, V] in fp32 (None unless output_final_state).
    """
    op = "fused_recurrent_diag"
    qf, kf, vf, gf, h0, offsets, (B, T, H, K, V) = prepare(op, q, k, v, decay, g, initial_state,
                                                           cu_seqlens)
    o, ht = apply(FusedRecurrentDiag, qf, kf, vf, gf, h0, offsets, decay, bool(output_final_state))
    return o.reshape(B, T, H, V), ht


def chunk_diag(q: Tensor, k: Tensor, v: Tensor, decay: str = "none", g: Tensor | None = None,
               initial_state: Tensor | None = None, output_final_state: bool = False,
               cu_seqlens: Tensor | None = None, scale: float = 1.0) -> tuple[Tensor, Tensor | None]:
    """Chunked training kernel: same arguments and results as :func:`fused_recurrent_diag`.

    The queries are taken times ``scale`` (applied as the kernels store the output, so no pass of
    its own over q). No, scalar and key-wise decays run chunked (key-wise: ``chunk_key.py``, exact
    under strong decays); value-wise decays fall back to the fused recurrent kernel (no chunked
    kernel yet).
    """
    op = "chunk_diag"
    scale = check_scale(op, scale)
    if decay == "value":
        return fused_recurrent_diag(q if scale == 1.0 else q * scale, k, v, decay, g, initial_state,
                                    output_final_state, cu_seqlens)
    qf, kf, vf, gf, h0, offsets, (B, T, H, K, V) = prepare(op, q, k, v, decay, g, initial_state,
                                                           cu_seqlens)
    qf, kf, vf, gf = interpreter_upcast(qf, kf, vf, gf)
    fn = ChunkKeyDecay if decay == "key" else ChunkScalarDecay
    o, ht = apply(fn, qf, kf, vf, gf, h0, offsets, bool(output_final_state), scale)
    return o.reshape(B, T, H, V).to(v.dtype), ht
