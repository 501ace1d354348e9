"""Exercise 4: merge the softmax states of two sets of tokens into the state of their union.

Fill in ``merge`` below, then run ``python -m exercises check 4``.
"""

from __future__ import annotations

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
    raise NotImplementedError("exercise 4: merge the two states and return (m, c, a)")
