"""The recurrent form: the DSF recurrence stepped one token at a time. It is the ground truth."""

from __future__ import annotations

import torch
from torch import Tensor

from ..terms import AarenState, KVCache, LinearTerms, SoftmaxTerms

__all__ = ["recurrent_linear", "recurrent_softmax", "recurrent_aaren", "decay_state"]


def decay_state(S: Tensor, terms: LinearTerms, g_t: Tensor | None) -> Tensor:
    """Apply Decay_t to S [B, H, K, V]: exp(g) as a scalar, key-wise or value-wise factor."""
    if terms.decay == "none":
        return S
    a = torch.exp(g_t)
    if terms.decay == "scalar":
        return S * a[..., None, None]
    if terms.decay == "key":
        return S * a[..., :, None]
    return S * a[..., None, :]


def recurrent_linear(terms: LinearTerms, initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """h_t = Λ_t h_{t-1} + B_t u_t, y_t = C_t h_t + D u_t, one step at a time.

    Returns the output [B, T, H, V] and the final internal state [B, H, K, V(+1)].
    """
    B, T, H, K, V = terms.shape
    key, val = terms.write_key(), terms.write_value()
    if initial_state is None:
        S = val.new_zeros(B, H, K, val.shape[-1])
    else:
        S = initial_state.to(val.dtype)
    reads = []
    for t in range(T):
        S = decay_state(S, terms, None if terms.g is None else terms.g[:, t])
        if terms.beta is not None:
            # (I − β k kᵀ) S: remove the part of S that key k_t currently reads.
            k_t = terms.k[:, t]
            kS = torch.einsum("bhk,bhkv->bhv", k_t, S)
            S = S - terms.beta[:, t, :, None, None] * k_t[..., :, None] * kS[..., None, :]
        S = S + key[:, t, :, :, None] * val[:, t, :, None, :]
        reads.append(torch.einsum("bhk,bhkv->bhv", terms.q[:, t], S))
    return terms.finish(torch.stack(reads, dim=1)), S


def _trim_cache(terms: SoftmaxTerms, k: Tensor, v: Tensor, pos: Tensor, seen: int) -> KVCache:
    """Keep only what a query at position >= seen can still attend to."""
    if terms.window is not None:
        keep = (pos < terms.sink_tokens) | (pos > seen - terms.window)
        k, v, pos = k[:, keep], v[:, keep], pos[keep]
    return KVCache(k, v, pos, seen)


def empty_cache(terms: SoftmaxTerms) -> KVCache:
    B, T, H, K, V = terms.shape
    return KVCache(terms.k.new_zeros(B, 0, H, K), terms.u.new_zeros(B, 0, H, V),
                   torch.zeros(0, dtype=torch.long, device=terms.k.device), 0)


def extend_cache(terms: SoftmaxTerms, cache: KVCache | None) -> tuple[KVCache, int]:
    """The cache with this call's keys and values appended (untrimmed), and its old length."""
    cache = empty_cache(terms) if cache is None else cache
    T = terms.k.shape[1]
    pos = torch.arange(cache.seen, cache.seen + T, device=terms.k.device)
    return KVCache(torch.cat([cache.k, terms.k], dim=1), torch.cat([cache.v, terms.u], dim=1),
                   torch.cat([cache.pos, pos]), cache.seen + T), cache.k.shape[1]


def recurrent_softmax(terms: SoftmaxTerms, initial_state: KVCache | None = None) -> tuple[Tensor, KVCache]:
    """Softmax attention as an RNN whose state is a growing (or windowed) KV cache."""
    B, T, H, K, V = terms.shape
    (k_all, v_all, pos_all, seen), L0 = extend_cache(terms, initial_state)
    new_pos = pos_all[L0:]
    q = terms.query()
    outs = []
    for t in range(T):
        n = L0 + t + 1  # the cache as it stands after appending token t
        s = torch.einsum("bhk,blhk->bhl", q[:, t], k_all[:, :n])
        vis = terms.visible(new_pos[t:t + 1], pos_all[:n])[0]
        p = torch.softmax(s.masked_fill(~vis, float("-inf")), dim=-1)
        outs.append(torch.einsum("bhl,blhv->bhv", p, v_all[:, :n]))
    return torch.stack(outs, dim=1), _trim_cache(terms, k_all, v_all, pos_all, seen)


def recurrent_aaren(terms: SoftmaxTerms, initial_state: AarenState | None = None) -> tuple[Tensor, AarenState]:
    """Aaren's many-to-one cell (one learned query): running max m, denominator c, numerator a."""
    B, T, H, K, V = terms.shape
    s = torch.einsum("hk,bthk->bth", terms.q, terms.k)
    if initial_state is None:
        m = s.new_full((B, H), float("-inf"))
        c, a = s.new_zeros(B, H), s.new_zeros(B, H, V)
    else:
        m, c, a = initial_state
    outs = []
    for t in range(T):
        m_new = torch.maximum(m, s[:, t])
        # exp(m - m_new) is 0 for the first token (m = -inf); guard the -inf - -inf case.
        old = torch.where(torch.isinf(m), torch.zeros_like(m), torch.exp(m - m_new))
        new = torch.exp(s[:, t] - m_new)
        c = c * old + new
        a = a * old[..., None] + new[..., None] * terms.u[:, t]
        m = m_new
        outs.append(a / c[..., None])
    return torch.stack(outs, dim=1), AarenState(m, c, a)
