"""Feature maps φ of linear attention: f(q, k) = φ(q)ᵀ φ(k) replaces exp(qᵀk · scale).

``identity``, ``elu1`` (elu + 1, Katharopoulos et al. 2020), ``relu``, ``taylor`` (Based's
second-order Taylor expansion of exp, Arora et al. 2024), ``hedgehog`` (learnable softmax-mimicking
map, Zhang et al. 2024) and ``performer`` (positive random features, Choromanski et al. 2021).
``taylor`` and ``performer`` approximate exp(scale · qᵀk) and take the scale inside; the others,
hedgehog included, are scaled after.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FEATURE_MAPS", "apply_feature_map", "feature_dim", "performer_weight"]

FEATURE_MAPS = ("identity", "elu1", "relu", "taylor", "hedgehog", "performer")
_SCALE_INSIDE = ("taylor", "performer")


def performer_weight(H: int, K: int, M: int | None = None, *, dtype=torch.float64,
                     device=None, seed: int = 0) -> Tensor:
    """Gaussian projections ω [H, K, M] from a fixed seed, so every form sees the same features."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(H, K, M or K, generator=gen, dtype=torch.float64)
    return w.to(dtype=dtype, device=device)


def feature_dim(name: str, K: int, weight: Tensor | None = None) -> int:
    """Length of φ(x) for a head dim K."""
    if name == "taylor":
        return 1 + K + K * K
    if name == "hedgehog":
        return 2 * (K if weight is None else weight.shape[-1])
    if name == "performer":
        return K if weight is None else weight.shape[-1]
    return K


def apply_feature_map(name: str, x: Tensor, scale: float, weight: Tensor | None = None) -> Tensor:
    """φ(x) for x [B, T, H, K]; ``weight`` [H, K, F] for hedgehog and performer."""
    if name not in FEATURE_MAPS:
        raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {name!r}")
    if name in _SCALE_INSIDE:
        x = x * math.sqrt(scale)
    if name == "identity":
        return x
    if name == "elu1":
        return F.elu(x) + 1
    if name == "relu":
        return F.relu(x)
    if name == "taylor":
        # φ(q)ᵀφ(k) = 1 + qᵀk + (qᵀk)²/2
        outer = (x[..., :, None] * x[..., None, :]).flatten(-2) / math.sqrt(2)
        return torch.cat([torch.ones_like(x[..., :1]), x, outer], dim=-1)
    H, K = x.shape[-2:]
    if name == "hedgehog":
        if weight is None:
            weight = torch.eye(K, dtype=x.dtype, device=x.device).expand(H, K, K)
        z = torch.einsum("bthk,hkf->bthf", x, weight)
        return torch.cat([torch.softmax(z, dim=-1), torch.softmax(-z, dim=-1)], dim=-1)
    # performer: E_ω[φ(q)ᵀφ(k)] = exp(qᵀk) with φ(x) = exp(ωᵀx − |x|²/2) / √M
    if weight is None:
        weight = performer_weight(H, K, dtype=x.dtype, device=x.device)
    M = weight.shape[-1]
    z = torch.einsum("bthk,hkm->bthm", x, weight)
    return torch.exp(z - 0.5 * (x * x).sum(-1, keepdim=True)) / math.sqrt(M)


def scale_after(name: str, scale: float) -> float:
    """The factor left to apply to φ(q) after the map."""
    return 1.0 if name in _SCALE_INSIDE else scale
