"""Shared helpers for zoo specs: dims, scales, random valid inputs."""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor

from ..spec import Input

Q = Input("q", ("B", "T", "H", "K"), "queries")
K_ = Input("k", ("B", "T", "H", "K"), "keys")
V_ = Input("v", ("B", "T", "H", "V"), "values")
X = Input("x", ("B", "T", "H", "V"), "input channels, V per head")


def scale_of(scale: float | None, K: int) -> float:
    """The query scale, K ** -0.5 unless given; a given one must be a finite number."""
    if scale is None:
        return K ** -0.5
    one_number = isinstance(scale, Tensor) and scale.numel() == 1
    if isinstance(scale, bool) or not (isinstance(scale, numbers.Real) or one_number):
        raise TypeError(f"scale must be a number or None, got {scale!r}")
    if one_number and scale.requires_grad and torch.is_grad_enabled():
        # taken as a number, it would leave the graph without a word: a learned scale belongs in q
        raise TypeError("scale is a number (the forms take it as a float, without a gradient), got a tensor that "
                        "requires grad; multiply q by a learned scale instead")
    s = float(scale)
    if not math.isfinite(s):
        raise ValueError(f"scale must be a finite number or None, got {s}")
    return s


def gen(seed: int | torch.Generator | None) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(0 if seed is None else seed)


def randn(*shape: int, g: torch.Generator, dtype=torch.float64, device=None) -> Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)


def log_decay(*shape: int, g: torch.Generator, dtype=torch.float64, device=None) -> Tensor:
    """Log-space decays in (-∞, 0), mostly mild, as gates produce them."""
    return F.logsigmoid(randn(*shape, g=g, dtype=dtype, device=device) + 2.0)


def unit(x: Tensor) -> Tensor:
    """L2-normalised along the last dim (delta-rule keys)."""
    return x / x.norm(dim=-1, keepdim=True)


def qkv(B: int, T: int, H: int, K: int, V: int, g: torch.Generator, dtype, device) -> dict:
    return dict(q=randn(B, T, H, K, g=g, dtype=dtype, device=device),
                k=randn(B, T, H, K, g=g, dtype=dtype, device=device),
                v=randn(B, T, H, V, g=g, dtype=dtype, device=device))


def expand_bt(x: Tensor, B: int, T: int) -> Tensor:
    """A per-head parameter [H, ...] broadcast over batch and time: [B, T, H, ...]."""
    return x.expand(B, T, *x.shape)
