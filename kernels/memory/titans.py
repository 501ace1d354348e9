r"""Public entry points of the linear-memory kernels: argument checks, layout, autograd dispatch.

The memory (Titans with ``memory="linear"``; any matrix memory with the ℓ2 attentional bias, ℓ2 or no
retention and momentum) keeps two states per head, the memory S and the momentum Z, each [K, V]::

    e_t = ρ_t S_{t−1}ᵀ k_t − v_t,   Z_t = η_t Z_{t−1} − θ_t k_t e_tᵀ,   S_t = α_t S_{t−1} + Z_t,   o_t = S_tᵀ q_t

with α_t = exp(g_t), η_t = exp(log_eta_t), ρ_t = 1 (``grad_at="previous"``) or α_t (``"retained"``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._common import apply, check_chunk_size, check_cu_seqlens, check_device, check_head_dim, seq_bounds

__all__ = ["fused_recurrent_titans", "chunk_titans"]

_QKV_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
GRAD_AT = ("previous", "retained")


def _prepare(op, q, k, v, g, theta, log_eta, initial_state, cu_seqlens, grad_at):
    """Check every argument; return (q, k, v, g, θ, log η, S0, Z0, bounds, N) contiguous."""
    for name, t, dims in (("q", q, "[B, T, H, K]"), ("k", k, "[B, T, H, K]"), ("v", v, "[B, T, H, V]"),
                          ("theta", theta, "[B, T, H]"), ("log_eta", log_eta, "[B, T, H]"),
                          ("g", g, "[B, T, H]")):
        if t is None and name == "g":
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor {dims}, got {type(t).__name__}")
        if t.dim() != dims.count(",") + 1:
            raise ValueError(f"{op}: {name} must be {dims}, got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in _QKV_DTYPES:
        raise TypeError(f"{op}: q, k, v must share one dtype of float32/float16/bfloat16, got "
                        f"q={q.dtype}, k={k.dtype}, v={v.dtype}")
    B, T, H, K = q.shape
    V = v.shape[-1]
    if tuple(k.shape) != (B, T, H, K):
        raise ValueError(f"{op}: k must have the shape of q [B, T, H, K] = {(B, T, H, K)}, got "
                         f"{tuple(k.shape)}")
    if tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(f"{op}: v must be [B, T, H, V] with B, T, H = {(B, T, H)}, got {tuple(v.shape)}")
    for name, t in (("theta", theta), ("log_eta", log_eta), ("g", g)):
        if t is not None and tuple(t.shape) != (B, T, H):
            raise ValueError(f"{op}: {name} must have shape [B, T, H] = {(B, T, H)}, got "
                             f"{tuple(t.shape)}")
    if grad_at not in GRAD_AT:
        raise ValueError(f"{op}: grad_at must be one of {GRAD_AT}, got {grad_at!r}")
    check_head_dim(op, "K", K)
    check_head_dim(op, "V", V)
    N = check_cu_seqlens(op, cu_seqlens, B, T)
    s0 = z0 = None
    if initial_state is not None:
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
            raise TypeError(f"{op}: initial_state must be a pair (S0, Z0) of [N, H, K, V] tensors (memory, "
                            f"momentum), got {type(initial_state).__name__}")
        s0, z0 = initial_state
        for name, t in (("initial_state[0] (memory S0)", s0), ("initial_state[1] (momentum Z0)", z0)):
            if not isinstance(t, Tensor) or tuple(t.shape) != (N, H, K, V) or not t.is_floating_point():
                got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"{op}: {name} must be a float tensor [N, H, K, V] = {(N, H, K, V)}, "
                                 f"got {got}")
        s0, z0 = s0.float().contiguous(), z0.float().contiguous()
    check_device(op, q=q, k=k, v=v, g=g, theta=theta, log_eta=log_eta, S0=s0, Z0=z0)
    bounds = seq_bounds(cu_seqlens, B, T, q.device)
    q, k, v, theta, log_eta = (t.contiguous() for t in (q, k, v, theta, log_eta))
    g = None if g is None else g.contiguous()
    return q, k, v, g, theta, log_eta, s0, z0, bounds, N


def fused_recurrent_titans(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, theta: Tensor,
                           log_eta: Tensor, initial_state: tuple[Tensor, Tensor] | None = None,
                           output_final_state: bool = False, cu_seqlens: Tensor | None = None,
                           grad_at: str = "previous", checkpoint_interval: int | None = None,
                           ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """The linear Titans memory stepped token by token in one kernel (also the decoding kernel).

    Args:
        q, k: [B, T, H, K] (q already scaled); v: [B, T, H, V]; one of fp32/fp16/bf16.
        g: [B, T, H] log retention (α = exp g), or None for no retention; theta: [B, T, H] step size;
            log_eta: [B, T, H] log momentum decay.
        initial_state: (S0, Z0), each [N, H, K, V], N = B or len(cu_seqlens) − 1.
        cu_seqlens: [N + 1] offsets of sequences packed into B = 1.
        grad_at: "previous" (Titans: the gradient at S_{t−1}) or "retained" (at α_t S_{t−1}).
        checkpoint_interval: steps between the states the backward recomputes from (default 64).
    Returns:
        o [B, T, H, V] in v's dtype and (S_T, Z_T) in fp32 (None unless ``output_final_state``).
    """
    from .recurrent import CHECKPOINT_INTERVAL, FusedRecurrentTitans

    op = "fused_recurrent_titans"
    C = CHECKPOINT_INTERVAL if checkpoint_interval is None else checkpoint_interval
    if isinstance(C, bool) or not isinstance(C, int) or C < 1:
        raise ValueError(f"{op}: checkpoint_interval must be a positive int, got {C!r}")
    q, k, v, g, theta, log_eta, s0, z0, bounds, N = _prepare(op, q, k, v, g, theta, log_eta,
                                                             initial_state, cu_seqlens, grad_at)
    retained = grad_at == "retained"
    o, st, zt = apply(FusedRecurrentTitans, q, k, v, theta, g, log_eta, s0, z0, bounds, N, retained,
                      bool(output_final_state), C)
    return o, ((st, zt) if output_final_state else None)


def chunk_titans(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None, theta: Tensor, log_eta: Tensor,
                 initial_state: tuple[Tensor, Tensor] | None = None, output_final_state: bool = False,
                 cu_seqlens: Tensor | None = None, grad_at: str = "previous",
                 chunk_size: int = 64) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """The exact chunked training kernel: same arguments and results as :func:`fused_recurrent_titans`.

    ``chunk_size`` (16, 32 or 64) is the length of the chunks solved in parallel.
    """
    from .chunk import CHUNK_SIZES, ChunkTitans

    op = "chunk_titans"
    chunk_size = check_chunk_size(op, chunk_size, CHUNK_SIZES)
    q, k, v, g, theta, log_eta, s0, z0, bounds, N = _prepare(op, q, k, v, g, theta, log_eta,
                                                             initial_state, cu_seqlens, grad_at)
    B, T, H, K = q.shape
    V = v.shape[-1]
    flat = lambda t: None if t is None else t.reshape(B * T, *t.shape[2:])  # noqa: E731
    o, st, zt = apply(ChunkTitans, flat(q), flat(k), flat(v), flat(theta), flat(g), flat(log_eta), s0, z0,
                      bounds, grad_at == "retained", bool(output_final_state), chunk_size)
    return o.reshape(B, T, H, V), ((st, zt) if output_final_state else None)
