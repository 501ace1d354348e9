"""Exercise 1, reference solution: Φ of a scalar-decay mixer (Mamba-2 / SSD)."""

from __future__ import annotations

import torch
from torch import Tensor


def phi_scalar_decay(q: Tensor, k: Tensor, g: Tensor, scale: float | None = None) -> Tensor:
    r"""Φ[b, h, i, j] = s (q_i · k_j) exp(G_i − G_j) for i >= j, 0 above the diagonal; [B, H, T, T]."""
    s = q.shape[-1] ** -0.5 if scale is None else scale
    T = q.shape[1]
    scores = torch.einsum("bihk,bjhk->bhij", q, k) * s        # s q_i·k_j for every pair
    G = torch.cumsum(g, dim=1).transpose(1, 2)                # [B, H, T]
    diff = G[..., :, None] - G[..., None, :]                  # G_i − G_j
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    # Mask *before* exp: above the diagonal G_i − G_j > 0 can overflow to inf, and inf · 0 = nan.
    decay = torch.exp(diff.masked_fill(~causal, float("-inf")))
    return scores * decay
