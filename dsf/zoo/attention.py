r"""Softmax attention and Aaren: the normalised exponential kernel.

Softmax attention (Vaswani et al. 2017), causal, optionally with a sliding window and sink tokens
(StreamingLLM, Xiao et al. 2024):

.. math:: y_i = \sum_{j \le i,\ \mathrm{visible}} \frac{\exp(s\, q_i^\top k_j)}{\eta_i} v_j,
          \qquad \eta_i = \sum_{l \le i,\ \mathrm{visible}} \exp(s\, q_i^\top k_l)

As a DSF its state is infinite (exp has an infinite feature map); the forms keep a KV cache
(recurrent), tiles with a running max (chunked) or the row-normalised Φ (parallel).

Aaren (Feng et al. 2024) uses one learned query per head, so the many-to-many outputs are prefixes of
one softmax: a finite state (running max m, denominator c, numerator a) that a prefix scan computes.
"""

from __future__ import annotations

import numbers

import torch

from ..spec import Input, Miras, MixerSpec, Transition
from ..terms import SoftmaxTerms
from ._common import K_, Q, V_, gen, qkv, randn, scale_of


def lower_softmax(q, k, v, scale=None, window=None, sink_tokens=0):
    # (any integer type, a NumPy one from a config array included, taken as the int it holds)
    if window is not None and (isinstance(window, bool) or not isinstance(window, numbers.Integral) or window < 1):
        raise ValueError(f"softmax_attention: window must be a positive int or None, got {window!r}")
    if isinstance(sink_tokens, bool) or not isinstance(sink_tokens, numbers.Integral) or sink_tokens < 0:
        raise ValueError(f"softmax_attention: sink_tokens must be an int >= 0, got {sink_tokens!r}")
    return SoftmaxTerms(q * scale_of(scale, q.shape[-1]), k, v, window=None if window is None else int(window),
                        sink_tokens=int(sink_tokens))


def oracle_softmax(q, k, v, scale=None, window=None, sink_tokens=0):
    """Each query's softmax over the positions it may see, written out one row at a time."""
    s = scale_of(scale, q.shape[-1])
    out = torch.zeros_like(v)
    for t in range(q.shape[1]):
        js = [j for j in range(t + 1) if window is None or t - j < window or j < sink_tokens]
        scores = torch.einsum("bhk,bjhk->bhj", q[:, t] * s, k[:, js])
        out[:, t] = torch.einsum("bhj,bjhv->bhv", torch.softmax(scores, -1), v[:, js])
    return out


def random_softmax(B, T, H, K, V, dtype=torch.float64, device=None, seed=None):
    return qkv(B, T, H, K, V, gen(seed), dtype, device)


SOFTMAX_ATTENTION = MixerSpec(
    name="softmax_attention",
    family="attention",
    transition=Transition.SOFTMAX,
    inputs=(Q, K_, V_),
    lower=lower_softmax,
    options=dict(scale=None, window=None, sink_tokens=0),
    state_dims=("B", "L", "H", "K+V"),
    state_size="T·(K+V), grows (∞ as a DSF)",
    state_numel=lambda d: float("inf"),
    normaliser="softmax (η_i = Σ exp scores)",
    citation="Vaswani et al. 2017, Attention Is All You Need; Xiao et al. 2024 (sinks)",
    miras=Miras("non-parametric", "ℓ2 (kernel regression)", "none", "non-parametric"),
    description="causal softmax attention, optional sliding window and sink tokens",
    oracle=oracle_softmax,
    random_inputs=random_softmax,
)


def lower_aaren(q, k, v, scale=None):
    return SoftmaxTerms(q * scale_of(scale, q.shape[-1]), k, v, shared_query=True)


def oracle_aaren(q, k, v, scale=None):
    """Softmax of one learned query over every prefix."""
    s = torch.einsum("hk,bthk->bth", q * scale_of(scale, q.shape[-1]), k)
    out = torch.zeros_like(v)
    for t in range(k.shape[1]):
        p = torch.softmax(s[:, :t + 1], dim=1)
        out[:, t] = torch.einsum("bjh,bjhv->bhv", p, v[:, :t + 1])
    return out


def random_aaren(B, T, H, K, V, dtype=torch.float64, device=None, seed=None):
    g = gen(seed)
    d = qkv(B, T, H, K, V, g, dtype, device)
    d["q"] = randn(H, K, g=g, dtype=dtype, device=device)
    return d


AAREN = MixerSpec(
    name="aaren",
    family="attention",
    transition=Transition.SOFTMAX,
    inputs=(Input("q", ("H", "K"), "one learned query per head"), K_, V_),
    lower=lower_aaren,
    options=dict(scale=None),
    state_dims=("B", "H", "V+2"),
    state_size="V+2 (running max, denominator, numerator)",
    state_numel=lambda d: d["V"] + 2,
    normaliser="softmax with a running max",
    citation="Feng et al. 2024, Attention as an RNN",
    description="softmax attention with a learned query: a prefix scan with finite state",
    oracle=oracle_aaren,
    random_inputs=random_aaren,
)
