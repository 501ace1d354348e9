"""The parallel form: materialise the DSF operator Φ (``y = Φ u``) and apply it.

Φ_{ij} = C_i Λ_i ⋯ Λ_{j+1} B_j for j < i, C_i B_i + D_i on the diagonal, 0 above it. For every
mixer in the zoo the block Φ_{ij} is a multiple of the identity over value channels, or diagonal over
them, so Φ is stored as [B, H, T, T] ("head" layout) or [B, H, V, T, T] ("channel" layout).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..terms import LinearTerms, SoftmaxTerms

__all__ = ["phi_linear", "phi_softmax", "apply_phi", "segsum"]

_ROW_BLOCK = 32  # rows of a key-wise Φ built at once: bounds the [rows, T, K] temporary


def solve_unit_lower(A: Tensor, rhs: Tensor) -> Tensor:
    """X with (I + strict_lower(A)) X = rhs; A's diagonal and upper triangle are not read. torch has
    no triangular solve for 16-bit dtypes: those are solved in float32 and the result rounded back."""
    half = A.dtype in (torch.float16, torch.bfloat16)
    X = torch.linalg.solve_triangular(A.float() if half else A, rhs.float() if half else rhs, upper=False,
                                      unitriangular=True)
    return X.to(A.dtype) if half else X


def segsum(g: Tensor) -> Tensor:
    """L[..., i, j] = g_{j+1} + … + g_i for i >= j, -inf above the diagonal (g: [..., T])."""
    T = g.shape[-1]
    G = torch.cumsum(g, dim=-1)
    diff = G[..., :, None] - G[..., None, :]
    mask = torch.ones(T, T, dtype=torch.bool, device=g.device).tril()
    return diff.masked_fill(~mask, float("-inf"))


def _decayed_scores(q: Tensor, k: Tensor, decay: str, g: Tensor | None) -> Tensor:
    """Σ_k q_i[k] k_j[k] Π_{l=j+1..i} a_l[k] for i >= j; [B, H, T, T]. q, k: [B, H, T, K]."""
    T = q.shape[-2]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    if decay == "none":
        return (q @ k.transpose(-1, -2)).masked_fill(~causal, 0.0)
    if decay == "scalar":
        return (q @ k.transpose(-1, -2)) * torch.exp(segsum(g))
    # key-wise: Φ_ij needs the decay per key channel; build it a block of rows at a time.
    G = torch.cumsum(g, dim=-2)  # [B, H, T, K]
    rows = []
    for s in range(0, T, _ROW_BLOCK):
        e = min(s + _ROW_BLOCK, T)
        diff = G[..., s:e, None, :] - G[..., None, :, :]          # [B, H, r, T, K]
        vis = causal[s:e, :, None]
        E = torch.exp(diff.masked_fill(~vis, float("-inf")))
        rows.append(torch.einsum("bhik,bhjk,bhijk->bhij", q[..., s:e, :], k, E))
    return torch.cat(rows, dim=-2)


def phi_linear(terms: LinearTerms) -> Tensor:
    """Φ of a finite-state mixer in the internal layout ([B, H, T, T] or [B, H, V, T, T])."""
    B, T, H, K, V = terms.shape
    q, k = terms.q.transpose(1, 2), terms.k.transpose(1, 2)  # [B, H, T, K]
    g = None if terms.g is None else terms.g.movedim(1, 2)     # time next to the last dim
    if terms.decay == "value":
        # Φ_ij[v] = (q_i·k_j) exp(G_i[v] − G_j[v]): one [T, T] operator per value channel.
        A = (q @ k.transpose(-1, -2))[:, :, None] * torch.exp(segsum(g.movedim(-1, 2)))
    elif terms.beta is not None:
        # Delta rule: Φ = (Q Kᵀ ⊙ Γ) (I + strict_lower(β K Kᵀ ⊙ Γ))⁻¹ diag(β), Γ the decays.
        Gam = torch.exp(segsum(g)) if terms.decay == "scalar" else torch.ones(
            T, T, dtype=q.dtype, device=q.device).tril()
        beta = terms.beta.transpose(1, 2)  # [B, H, T]
        A = (beta[..., :, None] * (k @ k.transpose(-1, -2)) * Gam).tril(-1)
        X = solve_unit_lower(A, torch.diag_embed(beta))
        A = ((q @ k.transpose(-1, -2)) * Gam) @ X
    else:
        A = _decayed_scores(q, k, terms.decay, g)
    if terms.normalize:
        A = A / A.sum(dim=-1, keepdim=True)  # η_i = Σ_j of the unnormalised row
    channel = (A.dim() == 5 or (terms.w is not None and terms.w.dim() == 4) or terms.D is not None
               or (terms.r is not None and terms.r.dim() == 4))
    if channel and A.dim() == 4:
        A = A[:, :, None].expand(B, H, V, T, T)
    if terms.r is not None:  # output scale on row i
        r = terms.r.permute(0, 2, 3, 1) if terms.r.dim() == 4 else terms.r.transpose(1, 2)
        A = A * r[..., :, None]
    if terms.w is not None:  # input gate on column j: per channel, or one per head
        if terms.w.dim() == 4:
            A = A * terms.w.permute(0, 2, 3, 1)[..., None, :]
        else:
            w = terms.w.transpose(1, 2)                         # [B, H, T]
            A = A * (w[:, :, None, None, :] if A.dim() == 5 else w[:, :, None, :])
    if terms.D is not None:
        A = A + torch.diag_embed(terms.D[None, :, :, None].expand(B, H, V, T))
    return A


def phi_softmax(terms: SoftmaxTerms) -> Tensor:
    """Φ of softmax attention: masked softmax of the scores, [B, H, T, T]; rows sum to one."""
    B, T, H, K, V = terms.shape
    q = terms.query().transpose(1, 2)
    s = q @ terms.k.transpose(1, 2).transpose(-1, -2)
    pos = torch.arange(T, device=q.device)
    vis = terms.visible(pos, pos)
    return torch.softmax(s.masked_fill(~vis, float("-inf")), dim=-1)


def apply_phi(phi: Tensor, u: Tensor) -> Tensor:
    """y = Φ u for Φ in head ([B, H, T, T]) or channel ([B, H, V, T, T]) layout; u: [B, T, H, V]."""
    if phi.dim() == 4:
        return torch.einsum("bhij,bjhv->bihv", phi, u)
    return torch.einsum("bhvij,bjhv->bihv", phi, u)
