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

* :class:`MemoryTerms`, a memory whose state update is a retained, gated gradient step on an inner
  loss (Titans, Miras, TTT); its forms live in :mod:`dsf.forms.memory`, and those memories that are
  linear in their state lower to :class:`LinearTerms` for the exact parallel and chunked forms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

__all__ = ["LinearTerms", "SoftmaxTerms", "MemoryTerms", "KVCache", "AarenState", "MemoryState"]

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
    w: Optional[Tensor] = None    # [B, T, H, V] elementwise input gate, or [B, T, H] per head
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
        self._check_shapes()

    def _check_shapes(self) -> None:
        # A lowering (a user's spec above all) that hands a term of the wrong shape got a silently wrong
        # recurrent form (broadcast across batch, heads or keys) and bare torch errors from the others
        for name in ("q", "k", "u"):
            t = getattr(self, name)
            if not isinstance(t, Tensor) or t.dim() != 4:
                got = f"shape {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"LinearTerms: {name} must be a 4-D tensor [B, T, H, {'V' if name == 'u' else 'K'}], "
                                 f"got {got}")
        B, T, H, K = self.q.shape
        V = self.u.shape[-1]
        want = {"k": ((B, T, H, K),), "u": ((B, T, H, V),), "beta": ((B, T, H),),
                "w": ((B, T, H, V), (B, T, H)), "r": ((B, T, H), (B, T, H, V)), "D": ((H, V),),
                "g": ({"scalar": (B, T, H), "key": (B, T, H, K), "value": (B, T, H, V)}.get(self.decay, ()),)}
        dims = {"k": "[B, T, H, K]", "u": "[B, T, H, V]", "beta": "[B, T, H]", "w": "[B, T, H, V] or [B, T, H]",
                "r": "[B, T, H] or [B, T, H, V]", "D": "[H, V]",
                "g": {"scalar": "[B, T, H]", "key": "[B, T, H, K]", "value": "[B, T, H, V]"}.get(self.decay, "")}
        for name, shapes in want.items():
            t = getattr(self, name)
            if t is None:
                continue
            if not isinstance(t, Tensor):
                raise TypeError(f"LinearTerms: {name} must be a tensor, got {type(t).__name__}")
            if tuple(t.shape) not in shapes:
                extra = f" for decay={self.decay!r}" if name == "g" else ""
                raise ValueError(f"LinearTerms: {name} must have shape {dims[name]} = "
                                 f"{' or '.join(map(str, shapes))}{extra} (B, T, H, K from q, V from u), "
                                 f"got {tuple(t.shape)}")

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """(B, T, H, K, V) of the internal layout."""
        B, T, H, K = self.q.shape
        return B, T, H, K, self.u.shape[-1]

    @property
    def state_shape(self) -> tuple[int, int, int, int]:
        """(B, H, K, V) of the internal state, V + 1 with the normaliser's column."""
        B, T, H, K, V = self.shape
        return (B, H, K, V + int(self.normalize))

    def write_value(self) -> Tensor:
        """w ⊙ u, with a column of ones appended for the normaliser."""
        if self.w is None:
            x = self.u
        else:
            x = (self.w if self.w.dim() == self.u.dim() else self.w[..., None]) * self.u
        if self.normalize:
            x = torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)
        return x

    def write_key(self) -> Tensor:
        """The key the state is written with: k, or β k for the delta rule."""
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
        """A state in the user's layout (the spec's state_dims) in the forms' [B, H, K, V]."""
        return state if self.state_in is None else self.state_in(state)

    def to_user_state(self, state: Tensor) -> Tensor:
        """A state in the forms' [B, H, K, V] back in the user's layout."""
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
        """(B, T, H, K, V)."""
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


# --------------------------------------------------------------------------------------------
# Memories updated by a gradient step (Titans, Miras, TTT)

MEMORIES = ("vector", "matrix", "mlp")
BIASES = ("dot", "l2", "lp", "huber", "huber_mix")
RETENTIONS = ("none", "l2", "lq", "kl", "elastic_net")
ALGORITHMS = ("gd", "momentum", "implicit")
ACTIVATIONS = ("gelu", "silu")


class MemoryState(NamedTuple):
    """State of a gradient-step memory, per batch row and head.

    ``weights``: the memory's parameters, ``[B, H, K, V]`` for a matrix memory, ``[B, H, K]`` for a
    vector memory, ``[B, H, in, out]`` per layer of an MLP memory (with ℓq retention, the
    un-normalised accumulator A from which the weights A/‖A‖_q^{q−2} are read). ``momentum``: the
    surprise Z of the same shapes with ``algorithm="momentum"``, else empty.
    """

    weights: tuple[Tensor, ...]
    momentum: tuple[Tensor, ...] = ()


@dataclass
class MemoryTerms:
    r"""A memory M_W: R^K → R^V whose weights take one retained, gated gradient step per token.

    With e_t = M_{W}(k_t) − v_t and U_t the update (fla's orientation: a matrix memory is S ∈ R^{K×V},
    M_S(x) = Sᵀx)::

        gd:        U_t = −θ_t ∇_W ℓ(P_t; k_t, v_t)
        momentum:  Z_t = η_t Z_{t−1} − θ_t ∇_W ℓ(P_t; k_t, v_t),   U_t = Z_t      (Titans' surprise)
        implicit:  W_t = argmin_W ℓ(W; k_t, v_t) + ‖W − α_t W_{t−1}‖² / (2θ_t)  (closed forms only)

    and the retention combines U_t with the state (α_t = exp(g_t))::

        none: W_t = W_{t−1} + U_t            l2:  W_t = α_t W_{t−1} + U_t
        lq:   A_t = α_t A_{t−1} + U_t,  W_t = A_t / (‖A_t‖_q^q + ε)^{(q−2)/q}       (Moneta)
        kl:   W_t = c · softmax(α_t log W_{t−1} + U_t)  over each column's inputs   (Memora)
        elastic_net: W_t = soft_threshold(α_t W_{t−1} + U_t, λ₁ θ_t)

    The gradient point P_t is W_{t−1} (``grad_at="previous"``: Titans, Miras) or the retained
    α_t W_{t−1} (``"retained"``: Gated DeltaNet); they differ only for the ℓ2 and elastic-net
    retentions. The read is y_t = M_{W_t}(q_t), after the update. Biases, on e = M(k) − v::

        dot: ℓ = −⟨M(k), v⟩     l2: ½‖e‖²     lp: (1/p) Σ|e_i|^p     huber: ½‖e‖² if ‖e‖ ≤ δ, else δ‖e‖ − ½δ²
        huber_mix: the step of Miras eq. 26 (Yaad) on the paper's losses, ∇‖e‖² if ‖e‖ ≤ δ, else
                   δ ∇‖e‖₁ — ψ(e) = 2e or δ sign(e); a step rule, not the gradient of one smooth loss
    """

    q: Tensor                        # [B, T, H, K] read key, scale applied
    k: Tensor                        # [B, T, H, K] write key
    v: Tensor                        # [B, T, H, V] target value
    theta: Tensor                    # [B, T, H] step size θ_t > 0
    memory: str = "matrix"           # one of MEMORIES
    bias: str = "l2"                 # one of BIASES
    retention: str = "none"          # one of RETENTIONS
    algorithm: str = "gd"            # one of ALGORITHMS
    g: Optional[Tensor] = None       # log retention α_t = exp(g_t) <= 1: [B, T, H], or [B, T, H, K]
    log_eta: Optional[Tensor] = None  # [B, T, H] log momentum decay, η_t = exp(log_eta_t)
    init: tuple = ()                 # MLP memory: initial weights [H, in, out], one per layer
    grad_at: str = "previous"        # "previous" | "retained"
    p: float = 3.0                   # ℓp bias
    delta: float = 1.0               # Huber threshold
    norm_q: float = 4.0              # ℓq retention
    eps: float = 1e-6                # keeps the ℓq normalisation of a zero state finite
    l1: float = 0.0                  # elastic net: soft threshold λ₁ θ_t
    kl_scale: float = 1.0            # KL retention: each column of W sums to c
    activation: str = "gelu"         # MLP memory: σ between layers
    residual: bool = True            # MLP memory: M(x) = x + MLP(x) (needs K == V)

    def __post_init__(self) -> None:
        for arg, value, allowed in (("memory", self.memory, MEMORIES), ("bias", self.bias, BIASES),
                                    ("retention", self.retention, RETENTIONS),
                                    ("algorithm", self.algorithm, ALGORITHMS),
                                    ("grad_at", self.grad_at, ("previous", "retained")),
                                    ("activation", self.activation, ACTIVATIONS)):
            if value not in allowed:
                raise ValueError(f"memory: {arg} must be one of {allowed}, got {value!r}")
        B, T, H, K, V = self.shape
        if (self.retention == "none") != (self.g is None):
            raise ValueError("memory: the log retention g must be given exactly when retention is "
                             f"not 'none' (retention={self.retention!r})")
        if (self.algorithm == "momentum") != (self.log_eta is not None):
            raise ValueError("memory: log_eta (log momentum decay) must be given exactly when "
                             "algorithm='momentum'")
        if self.g is not None and self.g.dim() == 4 and self.memory == "mlp":
            raise ValueError("memory: a key-wise retention gate g [B, T, H, K] needs a vector or "
                             "matrix memory; an MLP memory takes g of shape [B, T, H]")
        if self.memory == "mlp":
            if len(self.init) < 2:
                raise ValueError("memory: an MLP memory needs its initial weights, at least two "
                                 f"layers [H, in, out]; got {len(self.init)}")
            if self.init[0].shape[-2] != K or self.init[-1].shape[-1] != V:
                raise ValueError(f"memory: the MLP's first layer must take K={K} inputs and its last "
                                 f"give V={V} outputs; got {[tuple(w.shape) for w in self.init]}")
        elif self.init:
            raise ValueError(f"memory: initial weights are for an MLP memory, not {self.memory!r}")
        if (self.memory == "vector" or (self.memory == "mlp" and self.residual)) and K != V:
            what = "a vector memory (M(x) = m ⊙ x)" if self.memory == "vector" else \
                "a residual MLP memory (M(x) = x + MLP(x))"
            raise ValueError(f"memory: {what} needs K == V, got K={K}, V={V}")
        if self.algorithm == "implicit" and not (self.memory in ("vector", "matrix")
                                                 and self.bias in ("dot", "l2")
                                                 and self.retention in ("none", "l2")):
            raise ValueError("memory: the implicit (proximal) step has a closed form only for a "
                             "vector or matrix memory with the dot or l2 bias and no or l2 retention; "
                             f"got memory={self.memory!r}, bias={self.bias!r}, "
                             f"retention={self.retention!r}")
        if self.grad_at == "retained" and self.retention in ("lq", "kl"):
            raise ValueError(f"memory: grad_at='retained' is defined for the l2 and elastic_net "
                             f"retentions, not {self.retention!r} (its gradient is taken at W_(t-1))")
        if self.p < 1:
            raise ValueError(f"memory: the lp bias needs p >= 1, got p={self.p}")
        if not self.delta > 0:
            raise ValueError(f"memory: the Huber threshold delta must be positive, got {self.delta}")
        if self.norm_q < 2:
            raise ValueError(f"memory: the lq retention needs q >= 2, got q={self.norm_q}")
        if self.l1 < 0 or not self.kl_scale > 0 or not self.eps > 0:
            raise ValueError("memory: need l1 >= 0, kl_scale > 0 and eps > 0")

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """(B, T, H, K, V)."""
        B, T, H, K = self.k.shape
        return B, T, H, K, self.v.shape[-1]

    def weight_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of the state's weights for one (batch row, head)."""
        B, T, H, K, V = self.shape
        if self.memory == "matrix":
            return [(K, V)]
        if self.memory == "vector":
            return [(K,)]
        return [tuple(w.shape[1:]) for w in self.init]
