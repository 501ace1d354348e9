r"""Linear attention and DSF's normalised attention.

Linear attention (Katharopoulos et al. 2020) replaces exp(qᵀk) by φ(q)ᵀφ(k):

.. math:: S_t = S_{t-1} + φ(k_t) v_t^\top, \quad y_t = S_t^\top φ(q_t)\ [\,/\ z_t^\top φ(q_t)],
          \quad z_t = z_{t-1} + φ(k_t)

Λ_t = I without the normaliser; with it the DSF reads Λ_t = (η_{t-1}/η_t) I, η_t = z_tᵀφ(q_t), and
the forms carry z as one more value column of the state ([B, H, K, V+1]).

Normalised attention (Sieber et al. 2024, the DSF paper) keeps raw scores and divides by a learned
η_t = exp(n_t): y_t = Σ_{j≤t} (s q_tᵀk_j) v_j / exp(n_t), i.e. Λ_t = exp(n_{t-1} − n_t) I.
"""

from __future__ import annotations

import torch

from ..feature_maps import FEATURE_MAPS, apply_feature_map, scale_after
from ..spec import Input, Miras, MixerSpec, Transition
from ..terms import LinearTerms
from ._common import K_, Q, V_, gen, qkv, randn, scale_of

FEATURE_WEIGHT = Input("feature_weight", ("H", "K", "F"),
                       "projection of hedgehog (learned) or performer (random) features", optional=True)


def _features(q, k, feature_map, scale, feature_weight):
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"linear_attention: feature_map must be one of {FEATURE_MAPS}, got {feature_map!r}")
    if feature_weight is not None and feature_map not in ("hedgehog", "performer"):
        raise ValueError(f"linear_attention: feature_weight is used by hedgehog and performer only, "
                         f"not by feature_map={feature_map!r}")
    s = scale_of(scale, q.shape[-1])
    fq = apply_feature_map(feature_map, q, s, feature_weight) * scale_after(feature_map, s)
    return fq, apply_feature_map(feature_map, k, s, feature_weight)


def lower_linear(q, k, v, feature_weight=None, feature_map="identity", normalize=False, scale=None):
    fq, fk = _features(q, k, feature_map, scale, feature_weight)
    if not isinstance(normalize, bool):   # (a string "false" is truthy: it turned the normaliser on)
        raise TypeError(f"linear_attention: normalize must be True or False, got {normalize!r}")
    return LinearTerms(q=fq, k=fk, u=v, normalize=normalize)


def oracle_linear(q, k, v, feature_weight=None, feature_map="identity", normalize=False, scale=None):
    fq, fk = _features(q, k, feature_map, scale, feature_weight)
    S = torch.zeros(*fk.shape[:1], fk.shape[2], fk.shape[3], v.shape[3], dtype=v.dtype)
    z = torch.zeros(*S.shape[:-1], dtype=v.dtype)
    out = []
    for t in range(q.shape[1]):
        S = S + torch.einsum("bhk,bhv->bhkv", fk[:, t], v[:, t])
        z = z + fk[:, t]
        y = torch.einsum("bhk,bhkv->bhv", fq[:, t], S)
        if normalize:
            y = y / torch.einsum("bhk,bhk->bh", fq[:, t], z)[..., None]
        out.append(y)
    return torch.stack(out, 1)


def random_linear(B, T, H, K, V, dtype=torch.float64, device=None, seed=None):
    return qkv(B, T, H, K, V, gen(seed), dtype, device)


def _linear_numel(d):
    return d["K"] * d["V"]


LINEAR_ATTENTION = MixerSpec(
    name="linear_attention",
    family="linear attention",
    transition=Transition.IDENTITY,
    inputs=(Q, K_, V_, FEATURE_WEIGHT),
    lower=lower_linear,
    options=dict(feature_map="identity", normalize=False, scale=None),
    state_dims=("B", "H", "K'", "V(+1)"),
    state_size="K'·V (+K' with the normaliser; K' is φ's dim)",
    state_numel=_linear_numel,
    normaliser="optional: η_t = φ(q_t)ᵀ Σ φ(k_j), i.e. Λ_t = η_{t-1}/η_t",
    citation="Katharopoulos et al. 2020; Arora et al. 2024 (Based); Zhang et al. 2024 (Hedgehog); "
             "Choromanski et al. 2021 (Performer)",
    description="kernelised attention φ(q)ᵀφ(k) with six feature maps, with or without normaliser",
    oracle=oracle_linear,
    random_inputs=random_linear,
    miras=Miras("matrix", "dot product", "none", "GD"),
)


def lower_normalized(q, k, v, n, scale=None):
    return LinearTerms(q=q * scale_of(scale, q.shape[-1]), k=k, u=v, r=torch.exp(-n))


def oracle_normalized(q, k, v, n, scale=None):
    s = scale_of(scale, q.shape[-1])
    out = torch.zeros_like(v)
    for t in range(q.shape[1]):
        a = torch.einsum("bhk,bjhk->bhj", q[:, t] * s, k[:, :t + 1])
        out[:, t] = torch.einsum("bhj,bjhv->bhv", a, v[:, :t + 1]) / torch.exp(n[:, t])[..., None]
    return out


def random_normalized(B, T, H, K, V, dtype=torch.float64, device=None, seed=None):
    g = gen(seed)
    d = qkv(B, T, H, K, V, g, dtype, device)
    d["n"] = 0.5 * randn(B, T, H, g=g, dtype=dtype, device=device) + 1.0
    return d


NORMALIZED_ATTENTION = MixerSpec(
    name="normalized_attention",
    family="linear attention",
    transition=Transition.SCALAR,
    inputs=(Q, K_, V_, Input("n", ("B", "T", "H"), "log normaliser, η_t = exp(n_t)")),
    lower=lower_normalized,
    options=dict(scale=None),
    state_dims=("B", "H", "K", "V"),
    state_size="K·V",
    state_numel=_linear_numel,
    normaliser="learned: η_t = exp(n_t), Λ_t = η_{t-1}/η_t",
    citation="Sieber et al. 2024, Understanding the differences in foundation models (DSF)",
    description="raw qᵀk scores divided by a learned, input-dependent normaliser exp(n_t)",
    oracle=oracle_normalized,
    random_inputs=random_normalized,
)
