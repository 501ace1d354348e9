"""Exercise 3, reference solution: a delta-rule segment's transition and its state from zero."""

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
    B, T, H, K = k.shape
    V = v.shape[-1]
    P = torch.eye(K, dtype=k.dtype).expand(B, H, K, K).clone()
    dS = torch.zeros(B, H, K, V, dtype=k.dtype)
    for t in range(T):
        kt, vt, bt = k[:, t], v[:, t], beta[:, t, :, None, None]      # [B, H, K], [B, H, V], [B, H, 1, 1]
        # (I − β k kᵀ) X = X − β k (kᵀ X): the same step for P and dS, without forming I − β k kᵀ
        P = P - bt * kt[..., :, None] * (kt[..., None, :] @ P)
        dS = dS - bt * kt[..., :, None] * (kt[..., None, :] @ dS) + bt * kt[..., :, None] * vt[..., None, :]
    return P, dS
