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

import dataclasses
import math

import torch
from torch import Tensor

from ..terms import AarenState, KVCache, LinearTerms, SoftmaxTerms
from .parallel import solve_unit_lower
from .recurrent import _trim_cache, extend_cache

__all__ = ["chunked_linear", "chunked_softmax", "chunked_aaren"]

_SUB = 16  # sub-block size for key-/value-wise decays inside a chunk


def _chunk_view(x: Tensor, C: int, chunk_major: bool = False) -> Tensor:
    """[B, T, H, *rest] → a view [B, H, N, C, *rest] (or [N, B, H, C, *rest]), zero-padded at the end
    of time (the padding is the only copy)."""
    B, T = x.shape[:2]
    n = math.ceil(T / C)
    pad = n * C - T
    if pad:
        x = torch.cat([x, x.new_zeros(B, pad, *x.shape[2:])], dim=1)
    x = x.reshape(B, n, C, *x.shape[2:])
    return x.permute(1, 0, 3, 2, *range(4, x.dim())) if chunk_major else x.movedim(3, 1)


def _to_chunks(x: Tensor, C: int, chunk_major: bool = False, scale: Tensor | None = None,
               divide: bool = False) -> Tensor:
    """:func:`_chunk_view` copied into contiguous memory, times ``scale`` (broadcast in the chunked
    layout) if given, or divided by it with ``divide``."""
    x = _chunk_view(x, C, chunk_major)
    # One copy into head-major order, so every batched matmul below reads contiguous matrices; a
    # scale is applied in that same pass.
    if scale is None:
        return x.contiguous()
    op = torch.div if divide else torch.mul
    if torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad):
        return op(x, scale).contiguous()
    out = torch.empty(torch.broadcast_shapes(x.shape, scale.shape), dtype=x.dtype, device=x.device)
    return op(x, scale, out=out)


def _from_chunks(x: Tensor, T: int, chunk_major: bool = False) -> Tensor:
    """[B, H, N, C, *rest] (or [N, B, H, C, *rest]) → [B, T, H, *rest]."""
    if chunk_major:
        n, B, H, C = x.shape[:4]
        x = x.permute(1, 0, 3, 2, *range(4, x.dim()))
    else:
        B, H, n, C = x.shape[:4]
        x = x.movedim(1, 3)
    return x.reshape(B, n * C, H, *x.shape[4:])[:, :T]


def _masked_exp(diff: Tensor, mask: Tensor) -> Tensor:
    return torch.exp(diff.masked_fill(~mask, float("-inf")))


# Below this total log decay inside a chunk, exp(−G) stays under e^20 ≈ 5e8: factoring the decay
# relative to the chunk start is then safe in float32 and turns the scores into one matmul.
_SAFE_SPAN = 20.0


def _keywise_scores(q: Tensor, k: Tensor, G: Tensor) -> Tensor:
    """A_ij = Σ_k q_i[k] k_j[k] exp(G_i[k] − G_j[k]) for i >= j, else 0. q, k, G: [..., C, K].

    For strong decays: sub-blocks keep every exponent non-positive (mild ones never get here).
    """
    C = q.shape[-2]
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


# Tokens per segment: long inputs are cut into segments run one after the other with the state
# carried (exact, like any two pieces). B·H·L ≤ _SEGMENT_ROWS keeps each [.., C, C] intermediate
# near 2 MB at C = 64, so it stays in cache; at least _MIN_SEGMENT_CHUNKS chunks per segment keep
# the Python overhead per segment small.
_SEGMENT_ROWS = 4096
_MIN_SEGMENT_CHUNKS = 16


def _segment_length(B: int, H: int, C: int) -> int:
    return C * max(_MIN_SEGMENT_CHUNKS, _SEGMENT_ROWS // max(1, B * H * C))


def chunked_linear(terms: LinearTerms, initial_state: Tensor | None = None,
                   chunk_size: int = 64) -> tuple[Tensor, Tensor]:
    """Chunked form of a finite-state mixer; same results as :func:`recurrent_linear`."""
    B, T, H, K, V = terms.shape
    C = chunk_size
    x = terms.write_value()
    S = x.new_zeros(B, H, K, x.shape[-1]) if initial_state is None else initial_state.to(terms.q.dtype)
    # The recurrence proper: the value gate and the normaliser column are folded into u, and the
    # read-out (normalise, output gate, skip, layout) is applied once at the end.
    core = dataclasses.replace(terms, u=x, w=None, normalize=False, r=None, D=None, out=None,
                               state_in=None, state_out=None, phi_out=None)
    L = _segment_length(B, H, C)
    # Every segment's chunk-major outputs are laid out straight into one buffer (padded to whole
    # chunks): one copy, not one per segment and another to join them.
    Vp = x.shape[-1]
    out = x.new_empty(B, math.ceil(T / C) * C, H, Vp)
    for a in range(0, T, L):
        seg = core if L >= T else _time_slice(core, a, min(a + L, T))
        y, S = _chunked_core(seg, S, C)                               # [N, B, H, C, V']
        n = y.shape[0]
        out[:, a:a + n * C].view(B, n, C, H, Vp).copy_(y.permute(1, 0, 3, 2, 4))
    return terms.finish(out if out.shape[1] == T else out[:, :T]), S


def _time_slice(terms: LinearTerms, a: int, b: int) -> LinearTerms:
    cut = lambda t: None if t is None else t[:, a:b]  # noqa: E731
    return dataclasses.replace(terms, q=cut(terms.q), k=cut(terms.k), u=cut(terms.u), g=cut(terms.g),
                               beta=cut(terms.beta))


def _chunked_core(terms: LinearTerms, S: Tensor, C: int) -> tuple[Tensor, Tensor]:
    """The chunked recurrence of read-out-free terms: raw reads Sᵀq [N, B, H, C, V'] and the state.

    Chunked tensors are chunk-major ([N, B, H, C, *]): each chunk's state is then one contiguous
    block, which keeps the sequential state passing cheap.
    """
    T = terms.shape[1]
    if terms.beta is not None:
        return _chunked_delta(terms, S, C, T)
    x = _to_chunks(terms.u, C, chunk_major=True)                     # [N, B, H, C, V']
    # Padding is harmless: zero keys write nothing, zero log-decay keeps the state.
    if terms.decay == "none":
        q, k = (_to_chunks(t, C, chunk_major=True) for t in (terms.q, terms.k))
        return _chunked_factored("none", q, k, x, None, S, T)
    # Local cumulative log decay, summed straight from the strided view (cumsum writes a new tensor).
    G = torch.cumsum(_chunk_view(terms.g, C, chunk_major=True), dim=3)
    if terms.decay in ("scalar", "key") and -float(G.detach().amin()) < _SAFE_SPAN:
        # Mild decays factor about the chunk start: e^{G_i − G_j} = e^{G_i} e^{−G_j} (≤ e^20, safe
        # in float32), applied to queries and keys in the pass that lays them out in chunks.
        eG = torch.exp(G[..., None] if terms.decay == "scalar" else G)
        qs = _to_chunks(terms.q, C, chunk_major=True, scale=eG)
        ks = _to_chunks(terms.k, C, chunk_major=True, scale=eG, divide=True)   # no 1/e^G pass
        return _chunked_factored(terms.decay, qs, ks, x, G[:, :, :, -1], S, T)
    q, k = (_to_chunks(t, C, chunk_major=True) for t in (terms.q, terms.k))   # [N, B, H, C, K]
    if terms.decay == "scalar":
        return _chunked_scalar_strong(G, q, k, x, S, T)
    # Key- or value-wise decays with some chunk's total decay strong.
    eG = torch.exp(G)                                                 # decay from the chunk start
    # Step 1: intra-chunk outputs.
    if terms.decay == "key":
        y = _keywise_scores(q, k, G) @ x
    else:
        y = _valuewise_intra((q @ k.transpose(-1, -2)).tril_(), x, G, eG)

    # Step 2: what each chunk writes, seen from its end; and the chunk's total decay.
    last = G[:, :, :, -1:]
    to_end = torch.exp(last - G)
    if terms.decay == "value":
        dS = k.transpose(-1, -2) @ (x * to_end)
    else:
        dS = (k * to_end).transpose(-1, -2) @ x

    # Step 3: pass the state across chunks.
    S_in, S = _pass_all(terms.decay, last.squeeze(3), dS, S)

    # Step 4: state-to-output, with the decay from the chunk start to each row.
    if terms.decay == "value":
        y = y + (q @ S_in) * eG
    else:
        y = y + (q * eG) @ S_in
    return y, S


def _pass_all(decay: str, logtot: Tensor | None, dS: Tensor, S: Tensor, from_start: bool = False
              ) -> tuple[Tensor, Tensor]:
    """SSD's step 3: the states entering each of the N chunks, and the state after them.

    S_{m+1} = w_m S_m + ΔS_m with w_m = e^{log tot_m}, or w_m (S_m + ΔS_m) when ΔS_m is seen from
    the chunk's start (``from_start``; then all the w_m ΔS_m are formed at once first). Chunk-major:
    ΔS [N, B, H, K, V], log tot [N, B, H] (scalar) or [N, B, H, K|V], S [B, H, K, V]. A loop of one
    fused multiply-add per chunk on a contiguous state: on the CPU this beats any contraction over
    chunks, whose weights (one per channel for key- and value-wise decays) cost more to build.
    """
    n = dS.shape[0]
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (logtot, dS, S))
    w = None
    if decay != "none":
        w = torch.exp(logtot)
        w = {"scalar": w[..., None, None], "key": w[..., None], "value": w[..., None, :]}[decay]
        if from_start:
            dS = dS * w if grad else dS.mul_(w)
    if grad:
        states = [S]
        for m in range(n):
            states.append(states[-1] + dS[m] if w is None else torch.addcmul(dS[m], w[m], states[-1]))
        return torch.stack(states[:-1]), states[-1]
    # Without autograd: written in place into one buffer.
    S_all = dS.new_empty(n + 1, *dS.shape[1:])
    S_all[0] = S
    for m in range(n):
        if w is None:
            torch.add(S_all[m], dS[m], out=S_all[m + 1])
        else:
            torch.addcmul(dS[m], w[m], S_all[m], out=S_all[m + 1])
    return S_all[:-1], S_all[-1]


def _chunked_factored(decay: str, qs: Tensor, ks: Tensor, x: Tensor, logtot: Tensor | None, S: Tensor,
                      T: int) -> tuple[Tensor, Tensor]:
    """SSD's four steps when the decay inside a chunk is factored into its queries and keys.

    qs = q e^{G}, ks = k e^{−G} (or q, k without decay), chunk-major [N, B, H, C, K]: each chunk is
    then linear attention, with scores qs ksᵀ, a write ksᵀ x seen from the chunk start (its own decay
    e^{log tot} moves into the state passing) and a read qs S. Serves no decay, mild scalar decays
    and mild key-wise decays.
    """
    n, B, H, C, K = qs.shape
    Vp = x.shape[-1]
    qf, kf, xf = qs.flatten(0, 2), ks.flatten(0, 2), x.flatten(0, 2)   # [N·B·H, C, *]
    y = torch.bmm(torch.bmm(qf, kf.mT).tril_(), xf)                    # step 1: inside the chunk
    dS = torch.bmm(kf.mT, xf).view(n, B, H, K, Vp)                     # step 2: what the chunk writes
    S_in, S = _pass_all(decay, logtot, dS, S, from_start=True)         # step 3: across chunks
    y.baddbmm_(qf, S_in.flatten(0, 2))                                 # step 4: the entering state
    return y.view(n, B, H, C, Vp), S


def _chunked_scalar_strong(G: Tensor, q: Tensor, k: Tensor, x: Tensor, S: Tensor, T: int
                           ) -> tuple[Tensor, Tensor]:
    """SSD's four steps for a scalar decay strong inside some chunk: every factor e^{G_i − G_j} is
    formed with a non-positive exponent, and the chunk's write is seen from its end. Chunk-major."""
    C = q.shape[3]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    A = (q @ k.transpose(-1, -2)) * _masked_exp(G[..., :, None] - G[..., None, :], causal)
    y = A @ x                                                         # step 1
    dS = (k * torch.exp(G[..., -1:] - G)[..., None]).transpose(-1, -2) @ x   # step 2
    S_in, S = _pass_all("scalar", G[..., -1], dS, S)                  # step 3
    qs = q * torch.exp(G)[..., None]
    y.flatten(0, 2).baddbmm_(qs.flatten(0, 2), S_in.flatten(0, 2))   # step 4, in place
    return y, S


def _delta_scan(S: Tensor, W: Tensor, U: Tensor, kT: Tensor, d: Tensor | None,
                decay_after: bool = False) -> tuple[Tensor, Tensor]:
    """The sequential part of the chunked delta rule, over chunk-major blocks (autograd-safe).

    For each chunk: the pseudo-values V_i = U_i − W_i S_i, then S_{i+1} = d_i S_i + K̃_iᵀ V_i, or
    d_i (S_i + K̃_iᵀ V_i) with ``decay_after`` (keys given as seen from the chunk start).
    S: [BH, K, V], W: [N, BH, C, K], U: [N, BH, C, V], kT = K̃ᵀ: [N, BH, K, C], d: [N, BH, 1, 1].
    Returns the states entering each chunk plus the final one ([N+1, BH, K, V]) and the pseudo-values
    ([N, BH, C, V]).
    """
    states, pseudo = [S], []
    for i in range(W.shape[0]):
        pseudo.append(torch.baddbmm(U[i], W[i], states[-1], alpha=-1))
        if decay_after:
            states.append(torch.baddbmm(states[-1], kT[i], pseudo[-1]) * d[i])
            continue
        prev = states[-1] if d is None else states[-1] * d[i]
        states.append(torch.baddbmm(prev, kT[i], pseudo[-1]))
    return torch.stack(states), torch.stack(pseudo)


def _delta_scan_inplace(S: Tensor, Tinv: Tensor, kw: Tensor, xb: Tensor, kT: Tensor, d: Tensor | None,
                        decay_after: bool = False) -> tuple[Tensor, Tensor]:
    """:func:`_delta_scan` without autograd, with W = T (β K Γ₀) and U = T (β X) left unformed.

    The pseudo-values are V_i = T_i (β X_i − β K_i Γ₀ S_i): one more small matmul a chunk, but two
    batched C × C × K products fewer before the loop, which costs less on the CPU. Tinv [N, BH, C, C],
    kw = β K Γ₀ [N, BH, C, K], xb = β X [N, BH, C, V] (overwritten). Same returns.
    """
    n = Tinv.shape[0]
    states = S.new_empty(n + 1, *S.shape)
    states[0] = S
    pseudo = torch.empty_like(xb)
    # Views made once: indexing inside the loop costs as much as the small matmuls' own overhead.
    Si, Ti, kwi, xi, kTi, Vi = (t.unbind(0) for t in (states, Tinv, kw, xb, kT, pseudo))
    di = d.unbind(0) if d is not None else None
    for i in range(n):
        v = torch.bmm(Ti[i], xi[i].baddbmm_(kwi[i], Si[i], alpha=-1), out=Vi[i])
        if d is None or decay_after:
            torch.baddbmm(Si[i], kTi[i], v, out=Si[i + 1])
            if decay_after:
                Si[i + 1].mul_(di[i])
        else:
            torch.mul(Si[i], di[i], out=Si[i + 1]).baddbmm_(kTi[i], v)
    return states, pseudo


def _unit_lower_inverse(A: Tensor, base: int = 16) -> Tensor:
    """(I + strict_lower(A))⁻¹ for a batch [M, n, n], by halves: the diagonal blocks of every matrix
    are inverted together (one batched call per level) and the block below is −D⁻¹ C A⁻¹. LAPACK's
    triangular solve is slow on many small matrices (~16 µs per 64 × 64 on our CPUs); this is ~20%
    faster at n = 64. Without autograd (it writes in place)."""
    n = A.shape[-1]
    if n <= base:
        # Forward substitution a column at a time, with the batch as the last (contiguous) axis: each
        # step is one elementwise update of all M matrices, 3x faster than LAPACK's per-matrix
        # solve for 1024 matrices of 16 × 16.
        At = A.permute(1, 2, 0).contiguous()                           # [n, n, M]
        X = torch.zeros_like(At)
        X.diagonal(0, 0, 1).fill_(1)
        for j in range(n - 1):
            X[j + 1:, :j + 1].addcmul_(At[j + 1:, j:j + 1], X[j:j + 1, :j + 1], value=-1)
        return X.permute(2, 0, 1).contiguous()
    h, m = n // 2, A.shape[0]
    if n % 2 == 0:
        inv = _unit_lower_inverse(torch.cat([A[:, :h, :h], A[:, h:, h:]]), base)
        upper, lower = inv[:m], inv[m:]
    else:   # blocks of h and h + 1 rows: two calls
        upper, lower = _unit_lower_inverse(A[:, :h, :h], base), _unit_lower_inverse(A[:, h:, h:], base)
    X = A.new_zeros(A.shape)
    X[:, :h, :h] = upper
    X[:, h:, h:] = lower
    X[:, h:, :h] = torch.bmm(torch.bmm(lower, A[:, h:, :h]), upper).neg_()
    return X


def _chunked_delta(terms: LinearTerms, S: Tensor, C: int, T: int) -> tuple[Tensor, Tensor]:
    """WY/UT chunked delta rule with an optional scalar gate.

    Inside a chunk the UT transform gives W = T β K Γ₀ and U = T β X with
    T = (I + strict_lower(β K Kᵀ ⊙ Γ))⁻¹ (inverted for all chunks at once). Only the pseudo-values
    U − W S and the next state d S + K̃ᵀ(U − W S) need the entering state, so the loop over chunks
    is two or three small matmuls (``_delta_scan``, ``_delta_scan_inplace``); the outputs
    Q Γ₀ S + (Q Kᵀ ⊙ Γ)(U − W S) are batched after it. Tensors are chunk-major ([N, B, H, C, *]),
    flattened to [N·B·H, C, *] for the batched matmuls.
    """
    q, k, x = (_to_chunks(t, C, chunk_major=True) for t in (terms.q, terms.k, terms.u))
    n, B, H = q.shape[:3]
    K, Vp = k.shape[-1], x.shape[-1]
    q, k, x = q.flatten(0, 2), k.flatten(0, 2), x.flatten(0, 2)       # [N·B·H, C, *]
    beta = _to_chunks(terms.beta, C, chunk_major=True).flatten(0, 2)[..., None]   # [NBH, C, 1]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    gated = terms.decay != "none"
    inplace = not (torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, x, beta, S, terms.g)))
    if gated:
        G = torch.cumsum(_to_chunks(terms.g, C, chunk_major=True).flatten(0, 2), dim=-1)  # [NBH, C]
        eG = torch.exp(G)[..., None]
        d = torch.exp(G[:, -1]).view(n, B * H, 1)                      # each chunk's total decay
        qs = q * eG                                                   # Q Γ₀
        kw = beta * eG * k                                            # β K Γ₀
        mild = -float(G.detach().amin()) < _SAFE_SPAN
        if mild:
            # Γ_ij = e^{G_i} e^{−G_j} (≤ e^20, safe): β K Kᵀ ⊙ Γ and Q Kᵀ ⊙ Γ are plain matmuls, and
            # the keys seen from the chunk start also write the state (its decay applied after).
            k_end = k / eG
            km = k_end.transpose(-1, -2)
            KK, P = torch.bmm(kw, km), torch.bmm(qs, km)
        else:
            k_end = k * torch.exp(G[:, -1:] - G)[..., None]            # keys decayed to the chunk end
            Gam = _masked_exp(G[..., :, None] - G[..., None, :], causal)  # Γ_ij, i >= j
            KK = torch.bmm(beta * k, k.transpose(-1, -2)) * Gam
            P = torch.bmm(q, k.transpose(-1, -2)) * Gam
    else:
        qs, k_end, mild = q, k, False
        kw = beta * k
        KK, P = torch.bmm(kw, k.transpose(-1, -2)), torch.bmm(q, k.transpose(-1, -2))
    P = P.tril_()
    kT = k_end.transpose(-1, -2).view(n, B * H, K, C)
    d = d.view(n, B * H, 1, 1) if gated else None
    chunks = lambda t: t.view(n, B * H, *t.shape[1:])  # noqa: E731 - [NBH, ...] → [N, BH, ...]
    # Both inverses read only the strict lower triangle of KK (the unit diagonal is implied).
    if inplace:
        states, v_new = _delta_scan_inplace(S.flatten(0, 1), chunks(_unit_lower_inverse(KK)), chunks(kw),
                                            chunks(beta * x), kT, d, decay_after=gated and mild)
    else:
        WU = solve_unit_lower(KK, torch.cat([kw, beta * x], dim=-1))
        states, v_new = _delta_scan(S.flatten(0, 1), chunks(WU[..., :K]), chunks(WU[..., K:]), kT, d,
                                    decay_after=gated and mild)
    S_in = states[:-1].flatten(0, 1)                                   # entering each chunk
    v_new = v_new.flatten(0, 1)
    y = torch.bmm(P, v_new).baddbmm_(qs, S_in).view(n, B, H, C, Vp)
    return y, states[-1].view(B, H, K, Vp)


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
