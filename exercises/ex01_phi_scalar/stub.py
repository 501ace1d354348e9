"""Exercise 1: the DSF operator Φ of a scalar-decay mixer (Mamba-2 / SSD).

Fill in ``phi_scalar_decay`` below, then run ``python -m exercises check 1``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def phi_scalar_decay(q: Tensor, k: Tensor, g: Tensor, scale: float | None = None) -> Tensor:
    r"""Φ of the recurrence S_t = exp(g_t) S_{t-1} + k_t v_tᵀ,  y_t = S_tᵀ (s q_t), so that y = Φ v.

    Math:  Φ[i, j] = s · (q_i · k_j) · exp(G_i − G_j)  for i >= j,   0 for i < j,
           where G_t = g_1 + … + g_t (cumulative sum over time) and s = scale or K ** -0.5.

    Args:
        q: [B, T, H, K] queries (C_t in SSM notation).
        k: [B, T, H, K] keys (B_t in SSM notation).
        g: [B, T, H] log decays, g <= 0 (−Δ_t·A with A > 0 in SSM notation, Λ_t = exp(g_t)).
        scale: the query scale s; None means K ** -0.5.

    Returns:
        Φ: [B, H, T, T], same dtype as q; Φ[b, h, i, j] weighs input j in output i.
    """
    raise NotImplementedError("exercise 1: write Φ[b, h, i, j] = s q_i·k_j exp(G_i − G_j) for i >= j")
