r"""The delta rule family: DeltaNet, Gated DeltaNet and Longhorn.

In fla's orientation (state S [K, V]):

.. math:: S_t = (I − β_t k_t k_t^\top)\, α_t S_{t-1} + β_t k_t v_t^\top, \qquad y_t = S_t^\top (s\, q_t)

— one gradient step of size β on ½‖Sᵀk − v‖² taken at the decayed state. Λ_t = α_t (I − β k kᵀ):
identity minus rank one, gated by α_t = exp(g_t) in Gated DeltaNet (α = 1 in DeltaNet). Longhorn takes
the implicit (proximal) step instead, whose closed form is the same update with β_t = ε_t/(1 + ε_t kᵀk):
the paper's derivation, with one ε per head. The paper's released model runs a diagonal approximation
of it, S ← S ⊙ (1 − β ⊗ k²) + (β ⊙ v) ⊗ k with β per value channel (Mamba-shaped, not a delta rule);
that is not this spec.
Φ_ij is a scalar per head, computed by the UT transform (I + strict_lower(β K Kᵀ ⊙ Γ))⁻¹.
"""

from __future__ import annotations

import torch

from ..spec import Input, Miras, MixerSpec, Transition
from ..terms import LinearTerms
from ._common import K_, Q, V_, gen, log_decay, qkv, randn, scale_of, unit

BETA = Input("beta", ("B", "T", "H"), "write strength in (0, 1)")


def lower_deltanet(q, k, v, beta, scale=None):
    return LinearTerms(q=q * scale_of(scale, q.shape[-1]), k=k, u=v, beta=beta)


def lower_gated_deltanet(q, k, v, g, beta, scale=None):
    return LinearTerms(q=q * scale_of(scale, q.shape[-1]), k=k, u=v, beta=beta, decay="scalar", g=g)


def longhorn_beta(k, eps):
    """The implicit step's closed form: β = ε / (1 + ε kᵀk)."""
    return eps / (1 + eps * (k * k).sum(-1))


def lower_longhorn(q, k, v, eps, scale=None):
    return lower_deltanet(q, k, v, longhorn_beta(k, eps), scale)


def oracle_delta(q, k, v, beta, g=None, scale=None):
    """fla's naive loop: v' = β (v − Sᵀk) at the decayed state; S += k v'ᵀ; y = Sᵀ(s q)."""
    s = scale_of(scale, q.shape[-1])
    B, T, H, K = q.shape
    S = torch.zeros(B, H, K, v.shape[-1], dtype=v.dtype)
    out = []
    for t in range(T):
        if g is not None:
            S = S * torch.exp(g[:, t])[..., None, None]
        v_new = beta[:, t, :, None] * (v[:, t] - torch.einsum("bhkv,bhk->bhv", S, k[:, t]))
        S = S + torch.einsum("bhk,bhv->bhkv", k[:, t], v_new)
        out.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t] * s))
    return torch.stack(out, 1)


def oracle_gated_deltanet(q, k, v, g, beta, scale=None):
    return oracle_delta(q, k, v, beta, g=g, scale=scale)


def oracle_longhorn(q, k, v, eps, scale=None):
    """Longhorn's step solved as an argmin: S_t = argmin ‖S − S_{t-1}‖² + ε‖Sᵀk − v‖², by linalg."""
    s = scale_of(scale, q.shape[-1])
    B, T, H, K = q.shape
    S = torch.zeros(B, H, K, v.shape[-1], dtype=v.dtype)
    eye = torch.eye(K, dtype=v.dtype)
    out = []
    for t in range(T):
        kt, e = k[:, t], eps[:, t, :, None, None]
        # normal equations: (I + ε k kᵀ) S = S_{t-1} + ε k vᵀ
        lhs = eye + e * kt[..., :, None] * kt[..., None, :]
        S = torch.linalg.solve(lhs, S + e * kt[..., :, None] * v[:, t, :, None, :])
        out.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t] * s))
    return torch.stack(out, 1)


def _beta(B, T, H, g, dtype, device):
    return torch.sigmoid(randn(B, T, H, g=g, dtype=dtype, device=device))


def random_deltanet(B, T, H, K, V, dtype=torch.float64, device=None, seed=None):
    g = gen(seed)
    d = qkv(B, T, H, K, V, g, dtype, device)
    d["k"] = unit(d["k"])
    d["beta"] = _beta(B, T, H, g, dtype, device)
    return d


def random_gated_deltanet(B, T, H, K, V, dtype=torch.float64, device=None, seed=None):
    d = random_deltanet(B, T, H, K, V, dtype, device, seed)
    g = gen(None if seed is None else seed + 1)
    d["g"] = log_decay(B, T, H, g=g, dtype=dtype, device=device)
    return d


def random_longhorn(B, T, H, K, V, dtype=torch.float64, device=None, seed=None):
    d = random_deltanet(B, T, H, K, V, dtype, device, seed)
    d["eps"] = 2.0 * d.pop("beta")
    return d


_common = dict(family="delta rule", state_dims=("B", "H", "K", "V"), state_size="K·V",
               state_numel=lambda d: d["K"] * d["V"])

DELTANET = MixerSpec(
    name="deltanet", transition=Transition.DELTA, inputs=(Q, K_, V_, BETA),
    lower=lower_deltanet, options=dict(scale=None),
    citation="Schlag et al. 2021; Yang et al. 2024, Parallelizing Linear Transformers with the Delta Rule",
    miras=Miras("matrix", "ℓ2", "none", "GD"),
    description="one online gradient step on ‖Sᵀk − v‖² per token: Λ_t = I − β_t k_t k_tᵀ",
    oracle=oracle_delta, random_inputs=random_deltanet, **_common)

GATED_DELTANET = MixerSpec(
    name="gated_deltanet", transition=Transition.GATED_DELTA,
    inputs=(Q, K_, V_, Input("g", ("B", "T", "H"), "log decay per head, <= 0", nonpositive=True), BETA),
    lower=lower_gated_deltanet, options=dict(scale=None),
    citation="Yang, Kautz & Hatamizadeh 2025, Gated Delta Networks",
    miras=Miras("matrix", "ℓ2", "ℓ2, scalar α_t", "GD at the retained state"),
    description="delta rule after a scalar decay: Λ_t = α_t (I − β_t k_t k_tᵀ)",
    oracle=oracle_gated_deltanet, random_inputs=random_gated_deltanet, **_common)

LONGHORN = MixerSpec(
    name="longhorn", transition=Transition.DELTA,
    inputs=(Q, K_, V_, Input("eps", ("B", "T", "H"), "positive step of the implicit update")),
    lower=lower_longhorn, options=dict(scale=None),
    citation="Liu et al. 2024, Longhorn: State Space Models are Amortized Online Learners",
    miras=Miras("matrix", "ℓ2", "none", "implicit GD"),
    description="implicit (proximal) online regression step: β_t = ε_t / (1 + ε_t ‖k_t‖²), exact, one ε "
                "per head (the paper's code runs a diagonal approximation with ε per value channel)",
    oracle=oracle_longhorn, random_inputs=random_longhorn, **_common)
