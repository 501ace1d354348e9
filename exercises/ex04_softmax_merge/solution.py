"""Exercise 4, a reference solution: merging two softmax states."""

from __future__ import annotations

import torch
from torch import Tensor


def merge(first: tuple[Tensor, Tensor, Tensor], second: tuple[Tensor, Tensor, Tensor]
          ) -> tuple[Tensor, Tensor, Tensor]:
    r"""The softmax state (m, c, a) of two disjoint sets of tokens together, from each set's state.

    Math (a set J of tokens with logits s_j and values v_j, per batch and head):
        m = max_j s_j,   c = Σ_j exp(s_j − m),   a = Σ_j exp(s_j − m) v_j      (output a / c)
    the empty set: m = −inf, c = 0, a = 0. With m = max(m₁, m₂), each part rescaled to it:
        c = exp(m₁ − m) c₁ + exp(m₂ − m) c₂,   a = exp(m₁ − m) a₁ + exp(m₂ − m) a₂
    (an empty part has weight 0, also when both are empty).

    Args:
        first: (m [B, H], c [B, H], a [B, H, V]), the state of the earlier tokens.
        second: (m [B, H], c [B, H], a [B, H, V]), the state of the later tokens.

    Returns:
        (m, c, a) of all the tokens, same shapes and dtype.
    """
    (m1, c1, a1), (m2, c2, a2) = first, second
    m = torch.maximum(m1, m2)
    # an empty part (m_i = −inf) weighs 0; the where also keeps −inf − (−inf) = nan out of the result
    w1 = torch.where(torch.isinf(m1), torch.zeros_like(m1), torch.exp(m1 - m))
    w2 = torch.where(torch.isinf(m2), torch.zeros_like(m2), torch.exp(m2 - m))
    return m, w1 * c1 + w2 * c2, w1[..., None] * a1 + w2[..., None] * a2
