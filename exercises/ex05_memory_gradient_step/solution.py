"""Exercise 5, a reference solution: a matrix memory trained by one gradient step per token."""

from __future__ import annotations

import torch
from torch import Tensor


def memory_recurrence(q: Tensor, k: Tensor, v: Tensor, g: Tensor, theta: Tensor,
                      scale: float | None = None) -> tuple[Tensor, Tensor]:
    r"""Every output and the final memory of a matrix memory that takes one gradient step per token.

    Math (per batch and head; S ∈ R^{K×V} read as M_S(x) = Sᵀx, S_0 = 0):
        ℓ_t(S) = ½ ‖Sᵀ k_t − v_t‖²                        (the token's loss on the memory)
        S_t = α_t S_{t−1} − θ_t ∇_S ℓ_t(S_{t−1}),  α_t = exp(g_t)
        o_t = S_tᵀ (s q_t),  s = K^{-1/2} unless ``scale`` is given

    Args:
        q: [B, T, H, K] queries.
        k: [B, T, H, K] keys.
        v: [B, T, H, V] values (the targets).
        g: [B, T, H] log retention (≤ 0).
        theta: [B, T, H] step sizes.
        scale: the query scale s, or None for K^{-1/2}.

    Returns:
        (o, S): o is [B, T, H, V], S is the memory after the last token, [B, H, K, V].
    """
    B, T, H, K = q.shape
    s = K ** -0.5 if scale is None else scale
    S = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        kt = k[:, t]
        err = torch.einsum("bhk,bhkv->bhv", kt, S) - v[:, t]          # Sᵀk − v, at the memory it had
        grad = kt[..., :, None] * err[..., None, :]                   # ∇_S ½‖Sᵀk − v‖² = k eᵀ
        S = torch.exp(g[:, t])[..., None, None] * S - theta[:, t, :, None, None] * grad
        outs.append(torch.einsum("bhk,bhkv->bhv", s * q[:, t], S))
    return torch.stack(outs, dim=1), S
