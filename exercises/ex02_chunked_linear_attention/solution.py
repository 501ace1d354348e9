"""Exercise 2, reference solution: chunked linear attention with an initial state."""

from __future__ import annotations

import torch
from torch import Tensor


def chunked_linear_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None,
                             chunk_size: int = 16,
                             initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """o_c = s Q_c S_prev + (s Q_c K_cᵀ ⊙ M) V_c and S_next = S_prev + K_cᵀ V_c, chunk by chunk."""
    B, T, H, K = q.shape
    s = K ** -0.5 if scale is None else scale
    if initial_state is None:
        S = q.new_zeros(B, H, K, v.shape[-1])
    else:
        S = initial_state.clone()        # never modify the caller's tensor
    outputs = []
    for a in range(0, T, chunk_size):
        b = min(a + chunk_size, T)       # the last chunk may be shorter
        qc = q[:, a:b].transpose(1, 2) * s                     # [B, H, C, K]
        kc, vc = k[:, a:b].transpose(1, 2), v[:, a:b].transpose(1, 2)
        # 1. from the past: every query of the chunk reads the state left by earlier chunks
        inter = qc @ S                                          # [B, H, C, V]
        # 2. inside the chunk: causal linear attention, a small [C, C] matrix
        scores = (qc @ kc.transpose(-1, -2)).tril()
        intra = scores @ vc
        outputs.append((inter + intra).transpose(1, 2))
        # 3. pass the state on: add this chunk's writes
        S = S + kc.transpose(-1, -2) @ vc
    return torch.cat(outputs, dim=1), S
