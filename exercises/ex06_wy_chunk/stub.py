"""Exercise 6: the WY/UT form of one DeltaNet chunk.

Fill in ``wy_chunk`` below, then run ``python -m exercises check 6``.
"""

from __future__ import annotations

from torch import Tensor


def wy_chunk(k: Tensor, v: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    r"""W and U of a DeltaNet chunk: its corrected values are V' = U − W S_0 for any entering state S_0.

    Math (per batch row and head; K, V the chunk's keys and values as [C, K] and [C, V] matrices):
        A = strict_lower(diag(β) K Kᵀ),   T = (I + A)⁻¹
        W = T diag(β) K,                   U = T diag(β) V
    so that S_C = S_0 + Kᵀ (U − W S_0) is the state after the chunk.

    Args:
        k: [B, C, H, K] the chunk's keys.
        v: [B, C, H, V] its values.
        beta: [B, C, H] its write strengths.

    Returns:
        (W, U): W is [B, C, H, K], U is [B, C, H, V].
    """
    raise NotImplementedError("exercise 6: solve the chunk's triangular system and return (W, U)")
