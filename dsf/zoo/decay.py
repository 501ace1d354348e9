r"""Decayed linear attention: RetNet, Lightning Attention, Mamba-2 (SSD) and GLA.

.. math:: S_t = \mathrm{Decay}_t \odot S_{t-1} + k_t v_t^\top, \qquad y_t = S_t^\top (s\, q_t)

=================  ===============================  ==========================
mixer              decay (log space)                 Λ structure
=================  ===============================  ==========================
retnet             γ_h = 1 − 2^{−5−h}, fixed         constant scalar per head
lightning          −s_h (1 − l/(L−1)), ALiBi s_h     constant scalar per head
mamba2             g_t [B, T, H] (Δ_t A_h)           data-dependent scalar
gla                gk_t [B, T, H, K]                 key-wise diagonal
=================  ===============================  ==========================

All have the state [B, H, K, V] and the scalar Φ_ij = s q_iᵀ diag(Π a) k_j.
"""

from __future__ import annotations

import math

import torch

from ..spec import Input, Miras, MixerSpec, Transition
from ..terms import LinearTerms
from ._common import K_, Q, V_, expand_bt, gen, log_decay, qkv, scale_of

G = Input("g", ("B", "T", "H"), "log decay per head, <= 0", nonpositive=True)
GK = Input("gk", ("B", "T", "H", "K"), "key-wise log decay, <= 0", nonpositive=True)
G_GAMMA = Input("g_gamma", ("H",), "constant log decay per head", optional=True)


def retnet_gamma(H: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """RetNet's fixed per-head log decay log(1 − 2^{−5−h})."""
    h = torch.arange(H, dtype=torch.float64)
    return torch.log1p(-torch.pow(2.0, -5.0 - h)).to(dtype=dtype, device=device)


def alibi_slopes(H: int) -> list[float]:
    """ALiBi's per-head slopes 2^{−8(h+1)/H} (Press et al. 2022); for H not a power of two, those of the
    power of two below and every other one of the power above, as ALiBi and TransNormerLLM build them."""
    p = 2 ** math.floor(math.log2(H))
    slopes = [2.0 ** (-8.0 * (h + 1) / p) for h in range(p)]
    return slopes if p == H else slopes + alibi_slopes(2 * p)[0::2][:H - p]


LIGHTNING_SCHEDULES = ("paper", "fla")


def lightning_gamma(H: int, layer_idx: int = 0, num_layers: int = 1, schedule: str = "paper",
                    dtype=torch.float64, device=None) -> torch.Tensor:
    """Lightning Attention's fixed per-head log decay.

    ``"paper"``: −s_h (1 − l/(L−1) + 1e-5) with ALiBi's slopes s_h, as TransNormerLLM's and Lightning
    Attention-2's code build it (one layer: −s_h (1 + 1e-5)). ``"fla"``: −(8/H)(1 − l/L)·h, as fla's
    ``chunk_lightning_attn`` does (head 0 never decays there).
    """
    if not 0 <= layer_idx < num_layers:
        raise ValueError(f"lightning_attention: need 0 <= layer_idx < num_layers, "
                         f"got layer_idx={layer_idx}, num_layers={num_layers}")
    if schedule == "paper":
        depth = 1.0 - layer_idx / (num_layers - 1) if num_layers > 1 else 1.0
        gam = -torch.tensor(alibi_slopes(H), dtype=torch.float64) * (depth + 1e-5)
    elif schedule == "fla":
        gam = -(8.0 / H) * (1.0 - layer_idx / num_layers) * torch.arange(H, dtype=torch.float64)
    else:
        raise ValueError(f"lightning_attention: schedule must be one of {LIGHTNING_SCHEDULES}, got {schedule!r}")
    return gam.to(dtype=dtype, device=device)


def _scalar_terms(q, k, v, g, scale):
    return LinearTerms(q=q * scale_of(scale, q.shape[-1]), k=k, u=v, decay="scalar", g=g)


def lower_retnet(q, k, v, g_gamma=None, scale=None):
    B, T, H, _ = q.shape
    gam = retnet_gamma(H, q.dtype, q.device) if g_gamma is None else g_gamma
    return _scalar_terms(q, k, v, expand_bt(gam, B, T), scale)


def lower_lightning(q, k, v, layer_idx=0, num_layers=1, schedule="paper", scale=None):
    B, T, H, _ = q.shape
    gam = lightning_gamma(H, layer_idx, num_layers, schedule, q.dtype, q.device)
    return _scalar_terms(q, k, v, expand_bt(gam, B, T), scale)


def lower_mamba2(q, k, v, g, scale=None):
    return _scalar_terms(q, k, v, g, scale)


def lower_gla(q, k, v, gk, scale=None):
    return LinearTerms(q=q * scale_of(scale, q.shape[-1]), k=k, u=v, decay="key", g=gk)


def _oracle(q, k, v, scale, decay_of_t):
    """S_t = a_t ⊙ S_{t-1} + k_t v_tᵀ; y_t = S_tᵀ(s q_t), with a_t [B, H, K] from decay_of_t."""
    s = scale_of(scale, q.shape[-1])
    B, T, H, K = q.shape
    S = torch.zeros(B, H, K, v.shape[-1], dtype=v.dtype)
    out = []
    for t in range(T):
        S = decay_of_t(t)[..., None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * s, S))
    return torch.stack(out, 1)


def oracle_retnet(q, k, v, g_gamma=None, scale=None):
    B, T, H, K = q.shape
    gam = torch.exp(retnet_gamma(H, q.dtype) if g_gamma is None else g_gamma)
    return _oracle(q, k, v, scale, lambda t: gam[None, :, None].expand(B, H, K))


def oracle_lightning(q, k, v, layer_idx=0, num_layers=1, schedule="paper", scale=None):
    """λ_h = exp(−slope_h · (1 − l/(L−1) + 1e-5)), the slopes written out here, not from lightning_gamma."""
    B, T, H, K = q.shape
    if schedule == "paper":
        start = 2.0 ** (-8.0 / H)   # H a power of two here; alibi_slopes covers the others
        slopes = torch.tensor([start ** (h + 1) for h in range(H)], dtype=q.dtype) if H & (H - 1) == 0 \
            else torch.tensor(alibi_slopes(H), dtype=q.dtype)
        depth = 1.0 - layer_idx / (num_layers - 1) if num_layers > 1 else 1.0
        lam = torch.exp(-slopes * (depth + 1e-5))
    else:
        lam = torch.exp(lightning_gamma(H, layer_idx, num_layers, schedule, q.dtype))
    return _oracle(q, k, v, scale, lambda t: lam[None, :, None].expand(B, H, K))


def oracle_mamba2(q, k, v, g, scale=None):
    K = q.shape[-1]
    return _oracle(q, k, v, scale, lambda t: torch.exp(g[:, t])[..., None].expand(-1, -1, K))


def oracle_gla(q, k, v, gk, scale=None):
    return _oracle(q, k, v, scale, lambda t: torch.exp(gk[:, t]))


def random_qkv(B, T, H, K, V, dtype=torch.float64, device=None, seed=None):
    return qkv(B, T, H, K, V, gen(seed), dtype, device)


def random_mamba2(B, T, H, K, V, dtype=torch.float64, device=None, seed=None):
    g = gen(seed)
    d = qkv(B, T, H, K, V, g, dtype, device)
    d["g"] = log_decay(B, T, H, g=g, dtype=dtype, device=device)
    return d


def random_gla(B, T, H, K, V, dtype=torch.float64, device=None, seed=None):
    g = gen(seed)
    d = qkv(B, T, H, K, V, g, dtype, device)
    d["gk"] = log_decay(B, T, H, K, g=g, dtype=dtype, device=device)
    return d


def _kv(d):
    return d["K"] * d["V"]


_common = dict(state_dims=("B", "H", "K", "V"), state_size="K·V", state_numel=_kv)

RETNET = MixerSpec(
    name="retnet", family="decayed linear attention", transition=Transition.CONST_SCALAR,
    inputs=(Q, K_, V_, G_GAMMA), lower=lower_retnet, options=dict(scale=None),
    citation="Sun et al. 2023, Retentive Network",
    miras=Miras("matrix", "dot product", "ℓ2, constant α per head", "GD"),
    description="linear attention with a fixed decay γ_h = 1 − 2^(−5−h) per head",
    oracle=oracle_retnet, random_inputs=random_qkv, **_common)

LIGHTNING_ATTENTION = MixerSpec(
    name="lightning_attention", family="decayed linear attention", transition=Transition.CONST_SCALAR,
    inputs=(Q, K_, V_), lower=lower_lightning,
    options=dict(layer_idx=0, num_layers=1, schedule="paper", scale=None),
    citation="Qin et al. 2024, Lightning Attention-2",
    miras=Miras("matrix", "dot product", "ℓ2, constant α per head", "GD"),
    description="linear attention with a fixed per-head decay exp(−s_h(1 − l/(L−1))), ALiBi's slopes s_h, "
                "weakening with depth; schedule='fla' for fla's −(8/H)(1 − l/L)·h",
    oracle=oracle_lightning, random_inputs=random_qkv, **_common)

MAMBA2 = MixerSpec(
    name="mamba2", family="decayed linear attention", transition=Transition.SCALAR,
    inputs=(Q, K_, V_, G), lower=lower_mamba2, options=dict(scale=None),
    citation="Dao & Gu 2024, Transformers are SSMs (Mamba-2 / SSD)",
    miras=Miras("matrix", "dot product", "ℓ2, scalar α_t", "GD"),
    description="SSD: a data-dependent scalar decay per head (q=C, k=Δ·B, v=x, g=Δ·A); scale=1 for "
                "SSD's y = Cᵀh (the default K^-1/2 is fla's simple GLA), no D term (the layer's skip)",
    oracle=oracle_mamba2, random_inputs=random_mamba2, **_common)

GLA = MixerSpec(
    name="gla", family="decayed linear attention", transition=Transition.KEY_DIAG,
    inputs=(Q, K_, V_, GK), lower=lower_gla, options=dict(scale=None),
    citation="Yang et al. 2024, Gated Linear Attention Transformers",
    miras=Miras("matrix", "dot product", "ℓ2, key-wise α_t", "GD"),
    description="linear attention with a data-dependent decay per key channel",
    oracle=oracle_gla, random_inputs=random_gla, **_common)

