"""Exercise 3: a segment of the delta rule as a linear map of the state entering it.

Fill in ``segment_transition`` below, then run ``python -m exercises check 3``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def segment_transition(k: Tensor, v: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    r"""The segment's transition P and its state from zero dS: S_out = P S_in + dS for every S_in.

    Math (the DeltaNet recurrence over the segment's tokens t = 1 … T, per batch and head):
        S_t = (I − β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ
    so S_T = P S_0 + dS with
        P  = (I − β_T k_T k_Tᵀ) ⋯ (I − β_1 k_1 k_1ᵀ)      (the recurrence from S_0 = I with v = 0)
        dS = the recurrence from S_0 = 0 with the true v

    Args:
        k: [B, T, H, K] keys.
        v: [B, T, H, V] values.
        beta: [B, T, H] write strengths.

    Returns:
        (P, dS): P is [B, H, K, K], dS is [B, H, K, V]; neither depends on any entering state.
    """
    raise NotImplementedError("exercise 3: build P and dS of the segment and return (P, dS)")
