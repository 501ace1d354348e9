"""The chunked form: exact, parallel inside a chunk, recurrent across chunks.

For the diagonal family it runs SSD's four steps, all chunks at once except step 3:

1. intra-chunk outputs: a masked, decayed attention inside each chunk;
2. chunk states: what each chunk writes, from a zero start;
3. state passing: S ← Decay(chunk) S + ΔS, a loop over chunks (the only sequential part);
4. state-to-output: what the state entering a chunk contributes to each of its rows.

The delta family uses the WY/UT form: inside a chunk, (I + strict_lower(β K Kᵀ ⊙ Γ)) is inverted
once, turning the chunk's product of (I − β k kᵀ) factors into two matrices W and U.

Every decay factor used is exp of a non-positive number (a partial product of decays), so nothing
overflows however strong the decay: key- and value-wise decays are split into sub-blocks whose
reference point lies between query and key. When a chunk's total decay is mild (the common case),
those decays are instead factored about the chunk start, which is exact and one matmul.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..terms import AarenState, KVCache, LinearTerms, SoftmaxTerms
from .recurrent import _trim_cache, extend_cache

__all__ = ["chunked_linear", "chunked_softmax", "chunked_aaren"]

_SUB = 16  # sub-block size for key-/value-wise decays inside a chunk


def _to_chunks(x: Tensor, C: int) -> Tensor:
    """[B, T, H, *rest] → [B, H, N, C, *rest], zero-padded at the end of time."""
    B, T = x.shape[:2]
    n = math.ceil(T / C)
    pad = n * C - T
    if pad:
        x = torch.cat([x, x.new_zeros(B, pad, *x.shape[2:])], dim=1)
    x = x.reshape(B, n, C, *x.shape[2:])
    return x.movedim(3, 1)


def _from_chunks(x: Tensor, T: int) -> Tensor:
    """[B, H, N, C, *rest] → [B, T, H, *rest]."""
    B, H, n, C = x.shape[:4]
    return x.movedim(1, 3).reshape(B, n * C, H, *x.shape[4:])[:, :T]


def _masked_exp(diff: Tensor, mask: Tensor) -> Tensor:
    return torch.exp(diff.masked_fill(~mask, float("-inf")))


# Below this total log decay inside a chunk, exp(−G) stays under e^20 ≈ 5e8: factoring the decay
# relative to the chunk start is then safe in float32 and turns the scores into one matmul.
_SAFE_SPAN = 20.0


def _keywise_scores(q: Tensor, k: Tensor, G: Tensor, eG: Tensor) -> Tensor:
    """A_ij = Σ_k q_i[k] k_j[k] exp(G_i[k] − G_j[k]) for i >= j, else 0. q, k, G: [..., C, K]."""
    C = q.shape[-2]
    if G.numel() == 0 or -float(G.detach().amin()) < _SAFE_SPAN:
        causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        return ((q * eG) @ (k / eG).transpose(-1, -2)).masked_fill(~causal, 0.0)
    rows = []
    for s in range(0, C, _SUB):
        e = min(s + _SUB, C)
        mask = torch.ones(e - s, e - s, dtype=torch.bool, device=q.device).tril()
        E = _masked_exp(G[..., s:e, None, :] - G[..., None, s:e, :], mask[..., None])
        diag = torch.einsum("...ik,...jk,...ijk->...ij", q[..., s:e, :], k[..., s:e, :], E)
        parts = []
        if s > 0:
            ref = G[..., s - 1:s, :]  # decays up to the end of the previous sub-block
            parts.append((q[..., s:e, :] * torch.exp(G[..., s:e, :] - ref))
                         @ (k[..., :s, :] * torch.exp(ref - G[..., :s, :])).transpose(-1, -2))
        parts.append(diag)
        if e < C:
            parts.append(diag.new_zeros(*diag.shape[:-1], C - e))
        rows.append(torch.cat(parts, dim=-1))
    return torch.cat(rows, dim=-2)


def _valuewise_intra(QK: Tensor, x: Tensor, G: Tensor, eG: Tensor) -> Tensor:
    """o_i[v] = Σ_{j<=i} QK_ij exp(G_i[v] − G_j[v]) x_j[v]. QK: [..., C, C]; x, G: [..., C, V]."""
    C = x.shape[-2]
    if G.numel() == 0 or -float(G.detach().amin()) < _SAFE_SPAN:
        return eG * (QK @ (x / eG))
    rows = []
    for s in range(0, C, _SUB):
        e = min(s + _SUB, C)
        mask = torch.ones(e - s, e - s, dtype=torch.bool, device=x.device).tril()
        E = _masked_exp(G[..., s:e, None, :] - G[..., None, s:e, :], mask[..., None])
        o = torch.einsum("...ij,...ijv,...jv->...iv", QK[..., s:e, s:e], E, x[..., s:e, :])
        if s > 0:
            ref = G[..., s - 1:s, :]
            o = o + torch.exp(G[..., s:e, :] - ref) * (
                QK[..., s:e, :s] @ (x[..., :s, :] * torch.exp(ref - G[..., :s, :])))
        rows.append(o)
    return torch.cat(rows, dim=-2)


_GROUP = 16  # chunks whose states are passed by one batched contraction


def _pass_group(decay: str, logtot: Tensor, dS: Tensor, S: Tensor) -> tuple[Tensor, Tensor]:
    """States entering each of n chunks, and the state after them, from the state S before them."""
    n = logtot.shape[2]
    P = torch.cat([torch.zeros_like(logtot[:, :, :1]), torch.cumsum(logtot, dim=2)], dim=2)
    later = torch.ones(n + 1, n, dtype=torch.bool, device=S.device).tril(-1)
    diff = P[:, :, :, None] - P[:, :, None, 1:]                       # P_n − P_{m+1}
    if decay == "key":
        W = _masked_exp(diff.movedim(-1, 2), later)                   # [B, H, K, n+1, n]
        S_all = (W @ dS.movedim(3, 2)).movedim(2, 3)                  # batched over key channels
        init = torch.exp(P)[..., :, None]
    elif decay == "value":
        W = _masked_exp(diff.movedim(-1, 2), later)                   # [B, H, V, n+1, n]
        S_all = (W @ dS.movedim(4, 2)).movedim(2, 4)                  # batched over value channels
        init = torch.exp(P)[..., None, :]
    else:
        # a plain matmul over flattened states: no copy of the (strided) slice of ΔS
        W = _masked_exp(diff, later)                                  # [B, H, n+1, n]
        S_all = (W @ dS.flatten(-2)).unflatten(-1, dS.shape[-2:])
        init = torch.exp(P)[..., None, None]
    S_all = S_all + init * S[:, :, None]
    return S_all[:, :, :-1], S_all[:, :, -1]


def chunked_linear(terms: LinearTerms, initial_state: Tensor | None = None,
                   chunk_size: int = 64) -> tuple[Tensor, Tensor]:
    """Chunked form of a finite-state mixer; same results as :func:`recurrent_linear`."""
    B, T, H, K, V = terms.shape
    C = chunk_size
    q, k = _to_chunks(terms.q, C), _to_chunks(terms.k, C)           # [B, H, N, C, K]
    x = _to_chunks(terms.write_value(), C)                           # [B, H, N, C, V']
    Vp = x.shape[-1]
    # Padding is harmless: zero keys write nothing, zero log-decay keeps the state.
    if terms.decay == "none":
        G = q.new_zeros(q.shape[:-1])
    else:
        G = torch.cumsum(_to_chunks(terms.g, C), dim=3)               # local cumulative log decay
    S = q.new_zeros(B, H, K, Vp) if initial_state is None else initial_state.to(q.dtype)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()

    if terms.beta is not None:
        return _chunked_delta(terms, q, k, x, G, S, causal, T)

    eG = torch.exp(G)                                                 # decay from the chunk start
    # Step 1: intra-chunk outputs.
    if terms.decay in ("none", "scalar"):
        A = (q @ k.transpose(-1, -2)) * _masked_exp(G[..., :, None] - G[..., None, :], causal)
        y = A @ x
    elif terms.decay == "key":
        y = _keywise_scores(q, k, G, eG) @ x
    else:
        y = _valuewise_intra((q @ k.transpose(-1, -2)).masked_fill(~causal, 0.0), x, G, eG)

    # Step 2: what each chunk writes, seen from its end; and the chunk's total decay.
    last = G[:, :, :, -1:]
    to_end = torch.exp(last - G)
    if terms.decay == "value":
        dS = k.transpose(-1, -2) @ (x * to_end)
    else:
        kk = k * (to_end[..., None] if to_end.dim() == k.dim() - 1 else to_end)
        dS = kk.transpose(-1, -2) @ x
    total = torch.exp(last.squeeze(3))                                # [B, H, N(, K|V)]

    # Step 3: pass the state across chunks (SSD's step 3). Unrolled over a group of chunks,
    #   S_n = e^{P_n} S_0 + Σ_{m<n} e^{P_n − P_{m+1}} ΔS_m,   P_n = Σ_{l<n} (log decay of chunk l),
    # one batched contraction per group; groups of _GROUP chunks keep the cost linear in T.
    logtot = last.squeeze(3)                                          # [B, H, N(, K|V)]
    entering = []
    for a in range(0, logtot.shape[2], _GROUP):
        b = min(a + _GROUP, logtot.shape[2])
        S_grp, S = _pass_group(terms.decay, logtot[:, :, a:b], dS[:, :, a:b], S)
        entering.append(S_grp)
    S_in = torch.cat(entering, dim=2)                                 # [B, H, N, K, V']

    # Step 4: state-to-output, with the decay from the chunk start to each row.
    from_start = eG
    if terms.decay == "value":
        y = y + (q @ S_in) * from_start
    elif terms.decay == "key":
        y = y + (q * from_start) @ S_in
    else:
        y = y + (q * from_start[..., None]) @ S_in
    return terms.finish(_from_chunks(y, T)), S


def _chunked_delta(terms, q, k, x, G, S, causal, T):
    """WY/UT chunked delta rule with an optional scalar gate."""
    C = q.shape[3]
    beta = _to_chunks(terms.beta, C)                                  # [B, H, N, C]
    Gam = _masked_exp(G[..., :, None] - G[..., None, :], causal)      # Γ_ij, i >= j
    A = (beta[..., :, None] * (k @ k.transpose(-1, -2)) * Gam).tril(-1)
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    rhs = torch.cat([beta[..., None] * k * torch.exp(G)[..., None], beta[..., None] * x], dim=-1)
    WU = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True)
    W, U = WU[..., :k.shape[-1]], WU[..., k.shape[-1]:]
    to_end = torch.exp(G[..., -1:] - G)
    kd = (k * to_end[..., None]).transpose(-1, -2)                     # [B, H, N, K, C]
    decay = torch.exp(G[..., -1])                                     # [B, H, N]
    # Only the state and the pseudo-values are sequential; outputs are batched after the loop.
    entering, pseudo = [], []
    for n in range(q.shape[2]):
        v_new = U[:, :, n] - W[:, :, n] @ S                            # pseudo-values of the chunk
        entering.append(S)
        pseudo.append(v_new)
        S = decay[:, :, n, None, None] * S + kd[:, :, n] @ v_new
    S_in, v_new = torch.stack(entering, dim=2), torch.stack(pseudo, dim=2)
    y = (q * torch.exp(G)[..., None]) @ S_in + ((q @ k.transpose(-1, -2)) * Gam) @ v_new
    return terms.finish(_from_chunks(y, T)), S


def chunked_softmax(terms: SoftmaxTerms, initial_state: KVCache | None = None,
                    chunk_size: int = 64) -> tuple[Tensor, KVCache]:
    """Tiled softmax attention with a running max (flash-style online softmax), exact."""
    B, T, H, K, V = terms.shape
    q = terms.query()
    (k_all, v_all, pos_all, seen), L0 = extend_cache(terms, initial_state)
    outs = []
    for s in range(0, T, chunk_size):
        e = min(s + chunk_size, T)
        qpos = pos_all[L0 + s:L0 + e]
        qc = q[:, s:e].transpose(1, 2)                                 # [B, H, c, K]
        m = qc.new_full(qc.shape[:-1], float("-inf"))
        l = qc.new_zeros(qc.shape[:-1])
        acc = qc.new_zeros(*qc.shape[:-1], V)
        # Key tiles: the cache as one tile, then each chunk up to this one.
        tiles = [(0, L0)] if L0 else []
        tiles += [(L0 + a, L0 + min(a + chunk_size, e)) for a in range(0, e, chunk_size)]
        for a, b in tiles:
            vis = terms.visible(qpos, pos_all[a:b])
            if not bool(vis.any()):
                continue  # outside the window: skip the tile
            sc = qc @ k_all[:, a:b].transpose(1, 2).transpose(-1, -2)
            sc = sc.masked_fill(~vis, float("-inf"))
            m_new = torch.maximum(m, sc.amax(dim=-1))
            shift = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
            p = torch.exp(sc - shift[..., None])
            fade = torch.exp(m - shift)                                # 0 while m = -inf
            l = l * fade + p.sum(dim=-1)
            acc = acc * fade[..., None] + p @ v_all[:, a:b].transpose(1, 2)
            m = m_new
        outs.append((acc / l[..., None]).transpose(1, 2))
    return torch.cat(outs, dim=1), _trim_cache(terms, k_all, v_all, pos_all, seen)


def chunked_aaren(terms: SoftmaxTerms, initial_state: AarenState | None = None,
                  chunk_size: int = 64) -> tuple[Tensor, AarenState]:
    """Aaren by chunks: a masked softmax inside each chunk merged with the carried (m, c, a)."""
    B, T, H, K, V = terms.shape
    s_all = torch.einsum("hk,bthk->bht", terms.q, terms.k)
    if initial_state is None:
        m = s_all.new_full((B, H), float("-inf"))
        c, a = s_all.new_zeros(B, H), s_all.new_zeros(B, H, V)
    else:
        m, c, a = initial_state
    outs = []
    for s in range(0, T, chunk_size):
        e = min(s + chunk_size, T)
        sc, vc = s_all[:, :, s:e], terms.u[:, s:e].transpose(1, 2)   # [B, H, c], [B, H, c, V]
        prefix_max = torch.cummax(sc, dim=-1).values
        M = torch.maximum(m[..., None], prefix_max)                    # running max per row
        causal = torch.ones(e - s, e - s, dtype=torch.bool, device=sc.device).tril()
        P = _masked_exp(sc[..., None, :] - M[..., :, None], causal)    # [B, H, c, c]
        carried = torch.where(torch.isinf(m)[..., None], torch.zeros_like(M),
                              torch.exp(m[..., None] - M))              # weight of the old state
        num = carried[..., None] * a[..., None, :] + P @ vc
        den = carried * c[..., None] + P.sum(dim=-1)
        outs.append((num / den[..., None]).transpose(1, 2))
        m, c, a = M[..., -1], den[..., -1], num[..., -1, :]
    return torch.cat(outs, dim=1), AarenState(m, c, a)
