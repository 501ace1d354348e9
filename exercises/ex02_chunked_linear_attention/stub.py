"""Exercise 2: the chunked form of (unnormalised, identity-feature-map) linear attention.

Fill in ``chunked_linear_attention`` below, then run ``python -m exercises check 2``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def chunked_linear_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None,
                             chunk_size: int = 16,
                             initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    r"""Linear attention computed chunk by chunk: parallel inside a chunk, recurrent across chunks.

    Math (the recurrence it must reproduce):
        S_t = S_{t-1} + k_t v_tᵀ,   o_t = S_tᵀ (s q_t),   S_0 = initial_state (zeros if None)
    For a chunk c of positions [a, b), with S_prev the state before it:
        o_c = s Q_c S_prev + (s Q_c K_cᵀ ⊙ M) V_c,   M the causal mask (i >= j inside the chunk)
        S_next = S_prev + K_cᵀ V_c

    Args:
        q: [B, T, H, K] queries.
        k: [B, T, H, K] keys.
        v: [B, T, H, V] values.
        scale: the query scale s; None means K ** -0.5.
        chunk_size: tokens per chunk; the last chunk may be shorter when T % chunk_size != 0.
        initial_state: [B, H, K, V] state before the first token, or None for zeros.

    Returns:
        (o, final_state): o is [B, T, H, V], final_state is [B, H, K, V] (the state after token T).
    """
    raise NotImplementedError("exercise 2: compute o chunk by chunk and return (o, final_state)")
