"""Canonical terms of a DSF recurrence: what a spec's ``lower`` returns and every form consumes.

Two kinds cover the zoo today:

* :class:`LinearTerms`, a finite matrix state per head ``S ∈ R^{K×V}`` (fla's orientation)::

      S_t = (I − β_t k_t k_tᵀ) · decay_t(S_{t-1}) + k̂_t (w_t ⊙ u_t)ᵀ       k̂ = β k if β else k
      y_t = r_t ⊙ (S_tᵀ q_t) [/ (z_tᵀ q_t) if normalised] + D ⊙ u_t

  ``decay_t`` multiplies S by exp(g): a scalar per head, a key-wise or a value-wise vector. In DSF
  notation Λ_t = (I − β k kᵀ)·Decay_t, B_t u_t = k̂ (w ⊙ u)ᵀ, C_t = r ⊙ q_tᵀ(·), D_t = diag(D).
  With ``normalize`` the state carries one more value column z (the running sum of keys), which is
  the DSF's η_t: dividing by it is the transition Λ_t = η_{t-1}/η_t of normalised attention.

* :class:`SoftmaxTerms`, the normalised exponential kernel: the state is infinite (a KV cache).

A new family (e.g. memories updated by a gradient step) adds a terms class and registers its forms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

__all__ = ["LinearTerms", "SoftmaxTerms", "KVCache", "AarenState"]

DECAYS = ("none", "scalar", "key", "value")


@dataclass
class LinearTerms:
    """Terms of a finite-state linear recurrence (see the module docstring)."""

    q: Tensor                     # [B, T, H, K] read vector, scale and feature map applied
    k: Tensor                     # [B, T, H, K] write key
    u: Tensor                     # [B, T, H, V] driving input: the mixer is linear in it
    decay: str = "none"           # one of DECAYS
    g: Optional[Tensor] = None    # log decay: [B, T, H] | [B, T, H, K] | [B, T, H, V]
    beta: Optional[Tensor] = None  # [B, T, H] delta-rule strength
    w: Optional[Tensor] = None    # [B, T, H, V] elementwise input gate
    r: Optional[Tensor] = None    # [B, T, H] or [B, T, H, V] elementwise output scale
    D: Optional[Tensor] = None    # [H, V] skip
    normalize: bool = False
    # The user's state layout may differ from the internal [B, H, K, V(+1)] one (e.g. S6 runs its
    # channels as heads); these map between them.
    state_in: Optional[Callable[[Tensor], Tensor]] = None
    state_out: Optional[Callable[[Tensor], Tensor]] = None
    # Φ from the internal [B, H', T, T] layout to the user's (e.g. [B, H, V, T, T] for channels).
    phi_out: Optional[Callable[[Tensor], Tensor]] = None
    out: Optional[Callable[[Tensor], Tensor]] = None  # output from internal to user layout

    def __post_init__(self) -> None:
        if self.decay not in DECAYS:
            raise ValueError(f"decay must be one of {DECAYS}, got {self.decay!r}")
        if (self.decay == "none") != (self.g is None):
            raise ValueError("g must be given exactly when decay is not 'none'")
        if self.normalize and (self.beta is not None or self.decay == "value" or self.w is not None):
            raise ValueError("the normaliser is defined for decays shared by all value channels only")

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """(B, T, H, K, V) of the internal layout."""
        B, T, H, K = self.q.shape
        return B, T, H, K, self.u.shape[-1]

    @property
    def state_shape(self) -> tuple[int, int, int, int]:
        B, T, H, K, V = self.shape
        return (B, H, K, V + int(self.normalize))

    def write_value(self) -> Tensor:
        """w ⊙ u, with a column of ones appended for the normaliser."""
        x = self.u if self.w is None else self.w * self.u
        if self.normalize:
            x = torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)
        return x

    def write_key(self) -> Tensor:
        return self.k if self.beta is None else self.beta[..., None] * self.k

    def finish(self, y: Tensor) -> Tensor:
        """From the raw read Sᵀq ([B, T, H, V(+1)]) to the output in the user's layout."""
        if self.normalize:
            y = y[..., :-1] / y[..., -1:]
        if self.r is not None:
            y = y * (self.r if self.r.dim() == 4 else self.r[..., None])
        if self.D is not None:
            y = y + self.D * self.u
        return y if self.out is None else self.out(y)

    def to_internal_state(self, state: Tensor) -> Tensor:
        return state if self.state_in is None else self.state_in(state)

    def to_user_state(self, state: Tensor) -> Tensor:
        return state if self.state_out is None else self.state_out(state)


class KVCache(NamedTuple):
    """State of softmax attention: the keys and values a future query may still attend to.

    ``pos`` holds each cached token's absolute position; ``seen`` the number of tokens consumed.
    """

    k: Tensor      # [B, L, H, K]
    v: Tensor      # [B, L, H, V]
    pos: Tensor    # [L] int64
    seen: int


class AarenState(NamedTuple):
    """Aaren's finite state: running max m, denominator c and numerator a (Feng et al. 2024)."""

    m: Tensor      # [B, H]
    c: Tensor      # [B, H]
    a: Tensor      # [B, H, V]


@dataclass
class SoftmaxTerms:
    """Causal softmax attention ``y_i = Σ_j softmax_j(s_ij) v_j`` over the visible positions.

    ``window``: a query attends to the last ``window`` tokens, itself included (None: all).
    ``sink_tokens``: the first positions of the sequence stay visible to every query.
    ``shared_query``: one learned query per head (Aaren); the state is then finite.
    """

    q: Tensor                     # [B, T, H, K] (scale applied) or [H, K] when shared_query
    k: Tensor                     # [B, T, H, K]
    u: Tensor                     # [B, T, H, V]
    window: Optional[int] = None
    sink_tokens: int = 0
    shared_query: bool = False

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        B, T, H, K = self.k.shape
        return B, T, H, K, self.u.shape[-1]

    def query(self) -> Tensor:
        """Queries as [B, T, H, K], broadcasting a shared query over batch and time."""
        if self.shared_query:
            return self.q.expand(self.k.shape)
        return self.q

    def visible(self, qpos: Tensor, kpos: Tensor) -> Tensor:
        """Mask [Tq, Tk]: may the query at absolute position qpos see the key at kpos?"""
        qp, kp = qpos[:, None], kpos[None, :]
        ok = kp <= qp
        if self.window is not None:
            ok = ok & ((qp - kp < self.window) | (kp < self.sink_tokens))
        return ok
