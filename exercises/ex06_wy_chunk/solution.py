"""Exercise 6, a reference solution: the WY/UT form of one DeltaNet chunk."""

from __future__ import annotations

import torch
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
    kh, vh, bh = k.transpose(1, 2), v.transpose(1, 2), beta.transpose(1, 2)[..., None]   # heads first
    C = k.shape[1]
    A = torch.tril(bh * kh @ kh.transpose(-1, -2), diagonal=-1)
    eye = torch.eye(C, dtype=k.dtype, device=k.device)
    # T R = (I + A)⁻¹ R by forward substitution on the unit lower-triangular I + A
    W = torch.linalg.solve_triangular(eye + A, bh * kh, upper=False, unitriangular=True)
    U = torch.linalg.solve_triangular(eye + A, bh * vh, upper=False, unitriangular=True)
    return W.transpose(1, 2), U.transpose(1, 2)
