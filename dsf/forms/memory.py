r"""Forms of a memory updated by a gradient step (Titans, Miras, TTT): see :class:`~dsf.terms.MemoryTerms`.

* ``recurrent_memory``: the reference, one token at a time, for every memory. Gradients of the inner
  loss are written in closed form (vector, matrix, and a hand-written backward pass for the MLP), so
  autograd differentiates *through* the updates for the outer gradients.
* Exact parallel and chunked forms exist where the memory is linear in its state and its values
  (vector or matrix memory, dot-product or ℓ2 bias, no or ℓ2 retention):
  ``to_linear`` lowers it to :class:`~dsf.terms.LinearTerms` (the dot-product bias is decayed linear
  attention; the ℓ2 bias is the (gated) delta rule and its WY form), ``chunked_momentum`` is the exact
  chunked form of the dot-product bias with momentum (a second-order scalar recurrence),
  ``chunked_l2_momentum`` that of the ℓ2 bias with momentum (linear Titans: one triangular solve per
  chunk), and ``phi_memory`` builds Φ for the memories without a LinearTerms lowering.
* ``minibatch_memory``: the papers' mini-batch approximation (Titans §3.2, Miras §5.4, TTT): every
  gradient in a chunk is taken at the chunk-start state. It is the only chunked option for MLP
  memories and the ℓp / Huber / ℓq / KL / elastic-net cases; a chunk of one token is the recurrence.

Shapes: q, k [B, T, H, K], v [B, T, H, V], θ, log η [B, T, H], g [B, T, H] (or [B, T, H, K]). Inside,
tokens are indexed after the head: weights are [B, H, *shape] or [B, H, C, *shape] in a chunk.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor

from ..spec import check_state
from ..terms import LinearTerms, MemoryState, MemoryTerms
from .chunked import _from_chunks, _masked_exp, _to_chunks, chunked_linear
from .parallel import phi_linear, solve_unit_lower

__all__ = ["memory_forms", "recurrent_memory", "chunked_memory", "minibatch_memory", "phi_memory",
           "to_linear", "channel_heads", "read", "weight_grads", "weights_of", "initial_state",
           "check_memory_state"]

_KL_FLOOR = 1e-30  # log of a zero weight under KL retention is read as log(1e-30): finite


def memory_forms(memory: str, bias: str, retention: str, algorithm: str, keywise: bool = False
                 ) -> tuple[str, ...]:
    """The exact forms of a memory: the capability flag of its spec (``MixerSpec.exact_forms``).

    Chunked is exact for every linear memory except a matrix memory with a key-wise gate under the
    ℓ2 bias or with momentum: there the diagonal decay does not commute with the chunk's key
    products, and no scalar mask carries it. (A vector memory's key-wise gate is a scalar gate per
    channel.)
    """
    forms = ["recurrent"]
    if memory in ("vector", "matrix") and bias in ("dot", "l2") and retention in ("none", "l2"):
        forms.append("parallel")  # linear in the state and in v: Φ exists
        scalar = not keywise or memory == "vector" or retention == "none"
        if scalar or (bias == "dot" and algorithm != "momentum"):
            forms.append("chunked")
    return tuple(forms)


def _forms_of(terms: MemoryTerms) -> tuple[str, ...]:
    keywise = terms.g is not None and terms.g.dim() == 4
    return memory_forms(terms.memory, terms.bias, terms.retention, terms.algorithm, keywise)


# ---------------------------------------------------------------------------------------------
# 1. Memory architectures: the read M_W(x) and the closed-form gradient ∇_W ℓ(W; k, v)


def _bc(x: Tensor, like: Tensor) -> Tensor:
    """A factor per (row, head[, token]) — or per key for key-wise gates — broadcast onto ``like``."""
    return x.reshape(*x.shape, *([1] * (like.dim() - x.dim())))


def _mv(x: Tensor, W: Tensor) -> Tensor:
    """x [..., in] times W [..., in, out] → [..., out], broadcasting the leading dims."""
    return (x.unsqueeze(-2) @ W).squeeze(-2)


def _outer(x: Tensor, y: Tensor) -> Tensor:
    return x[..., :, None] * y[..., None, :]


def _act(name: str, z: Tensor) -> tuple[Tensor, Tensor]:
    """σ(z) and σ'(z), both written out so that autograd can differentiate σ' too."""
    if name == "gelu":
        cdf = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
        return z * cdf, cdf + z * torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    s = torch.sigmoid(z)  # silu
    return z * s, s * (1.0 + z * (1.0 - s))


def _mlp(terms: MemoryTerms, W: tuple[Tensor, ...], x: Tensor) -> tuple[Tensor, list]:
    """M(x) = [x +] σ(… σ(x W_1) …) W_L, keeping (layer input, σ'(pre-activation)) for backward."""
    h, cache = x, []
    for layer, w in enumerate(W):
        z = _mv(h, w)
        if layer == len(W) - 1:
            cache.append((h, None))
            break
        a, da = _act(terms.activation, z)
        cache.append((h, da))
        h = a
    return (z + x if terms.residual else z), cache


def read(terms: MemoryTerms, W: tuple[Tensor, ...], x: Tensor) -> Tensor:
    """M_W(x): vector m ⊙ x, matrix Sᵀx, or the MLP."""
    if terms.memory == "vector":
        return W[0] * x
    if terms.memory == "matrix":
        return _mv(x, W[0])
    return _mlp(terms, W, x)[0]


def _psi(terms: MemoryTerms, e: Tensor, v: Tensor) -> Tensor:
    """∂ℓ/∂M(k) for the attentional bias, given the error e = M(k) − v."""
    if terms.bias == "dot":
        return -v
    if terms.bias == "l2":
        return e
    if terms.bias == "lp":
        if terms.p == 1:
            return torch.sign(e)
        return torch.sign(e) * e.abs().pow(terms.p - 1)
    n2 = (e * e).sum(-1, keepdim=True)
    if terms.bias == "huber_mix":
        # Miras eq. 26: the ℓ2 step near (∇‖e‖² = 2e), δ times the ℓ1 step beyond the threshold
        return torch.where(n2 <= terms.delta ** 2, 2 * e, terms.delta * torch.sign(e))
    # Huber on the error's norm: e if ‖e‖ <= δ, else δ e / ‖e‖. The clamp keeps both the value and
    # its derivative finite at e = 0 and exactly at the threshold.
    return e * (terms.delta / torch.sqrt(torch.clamp(n2, min=terms.delta ** 2)))


def weight_grads(terms: MemoryTerms, W: tuple[Tensor, ...], k: Tensor, v: Tensor) -> tuple[Tensor, ...]:
    """∇_W ℓ(W; k, v) per (row, head[, token]), in closed form."""
    if terms.memory == "vector":
        return (_psi(terms, W[0] * k - v, v) * k,)
    if terms.memory == "matrix":
        return (_outer(k, _psi(terms, _mv(k, W[0]) - v, v)),)
    out, cache = _mlp(terms, W, k)
    d = _psi(terms, out - v, v)                       # δ of the last layer (the residual has no weight)
    grads = []
    for layer in range(len(W) - 1, -1, -1):
        h, _ = cache[layer]
        grads.append(_outer(h, d))
        if layer:
            d = _mv(d, W[layer].transpose(-1, -2)) * cache[layer - 1][1]
    return tuple(reversed(grads))


# ---------------------------------------------------------------------------------------------
# 2. Retention: from the state to the weights, and one retained step


def _nd(terms: MemoryTerms) -> int:
    return 1 if terms.memory == "vector" else 2


def weights_of(terms: MemoryTerms, A: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """The weights the memory reads with: the state itself, or A/(‖A‖_q^q + ε)^{(q−2)/q} for ℓq."""
    if terms.retention != "lq":
        return A
    q, dims = terms.norm_q, tuple(range(-_nd(terms), 0))
    return tuple(a / (a.abs().pow(q).sum(dims, keepdim=True) + terms.eps).pow((q - 2) / q) for a in A)


def _combine(terms: MemoryTerms, A: tuple[Tensor, ...], U: tuple[Tensor, ...], a: Tensor | None,
             theta: Tensor) -> tuple[Tensor, ...]:
    """The retention gate: the new state from the old one and the update U."""
    out = []
    for x, u in zip(A, U):
        if terms.retention == "none":
            out.append(x + u)
        elif terms.retention == "kl":
            logw = torch.log(x.clamp_min(_KL_FLOOR))
            out.append(terms.kl_scale * torch.softmax(_bc(a, logw) * logw + u, dim=-_nd(terms)))
        else:  # l2, lq (the accumulator), elastic_net
            y = _bc(a, x) * x + u
            if terms.retention == "elastic_net":
                tau = _bc(terms.l1 * theta, y)
                y = torch.sign(y) * torch.relu(y.abs() - tau)
            out.append(y)
    return tuple(out)


def _point(terms: MemoryTerms, A: tuple[Tensor, ...], a: Tensor | None) -> tuple[Tensor, ...]:
    """Where the gradient is taken: W_{t−1}, or the retained α_t W_{t−1}."""
    if terms.grad_at == "retained" and a is not None:
        A = tuple(_bc(a, x) * x for x in A)
    return weights_of(terms, A)


def _implicit(terms: MemoryTerms, A, k, v, theta, a) -> tuple[Tensor, ...]:
    """argmin_W ℓ(W; k, v) + ‖W − α W_{t−1}‖²/(2θ), in closed form (Longhorn for the ℓ2 bias)."""
    W = A[0] if a is None else _bc(a, A[0]) * A[0]
    if terms.bias == "dot":  # a linear loss: the implicit step is the explicit one
        return (W + _bc(theta, W) * (k * v if terms.memory == "vector" else _outer(k, v)),)
    if terms.memory == "vector":
        return ((W + theta[..., None] * k * v) / (1 + theta[..., None] * k * k),)
    beta = theta / (1 + theta * (k * k).sum(-1))
    return (W - _bc(beta, W) * _outer(k, _mv(k, W) - v),)


def _update(terms: MemoryTerms, A, Z, G, theta, a, eta):
    """One step given the gradients G: momentum (Titans' surprise) or plain GD, then retention."""
    if terms.algorithm == "momentum":
        Z = tuple(_bc(eta, z) * z - _bc(theta, gr) * gr for z, gr in zip(Z, G))
        U = Z
    else:
        U = tuple(-_bc(theta, gr) * gr for gr in G)
    return _combine(terms, A, U, a, theta), Z


def _gates(terms: MemoryTerms, t: Any):
    """θ, α = exp(g), η = exp(log η) at token t (an int) or a slice, tokens after the head."""
    def pick(x):
        if x is None:
            return None
        x = x[:, t]
        return x if isinstance(t, int) else x.transpose(1, 2)
    a = None if terms.g is None else torch.exp(pick(terms.g))
    eta = None if terms.log_eta is None else torch.exp(pick(terms.log_eta))
    return pick(terms.theta), a, eta


# ---------------------------------------------------------------------------------------------
# 3. The recurrent form


def initial_state(terms: MemoryTerms) -> MemoryState:
    """Zeros (vector, matrix) or the MLP's initial weights; zero momentum."""
    B, T, H, K, V = terms.shape
    if terms.memory == "mlp":
        A = tuple(w.to(terms.v.dtype).expand(B, *w.shape) for w in terms.init)
    else:
        A = tuple(terms.v.new_zeros(B, H, *s) for s in terms.weight_shapes())
    Z = tuple(torch.zeros_like(x) for x in A) if terms.algorithm == "momentum" else ()
    return MemoryState(A, Z)


def check_memory_state(name: str, terms: MemoryTerms, state: Any) -> MemoryState:
    """Raise a clear error unless ``state`` is a MemoryState of the right shapes; cast it."""
    if not isinstance(state, MemoryState):
        raise TypeError(f"{name}: initial_state must be a dsf.MemoryState(weights, momentum), "
                        f"got {type(state).__name__}")
    B, T, H, K, V = terms.shape
    shapes = [(B, H, *s) for s in terms.weight_shapes()]
    n_mom = len(shapes) if terms.algorithm == "momentum" else 0
    for field, tensors, n in (("weights", state.weights, len(shapes)), ("momentum", state.momentum, n_mom)):
        if not isinstance(tensors, (tuple, list)):
            raise TypeError(f"{name}: initial_state.{field} must be a tuple of {n} tensors, got "
                            f"{type(tensors).__name__}")
        if len(tensors) != n:   # (a list is taken as the tuple it holds: it was refused as "1 tensors, got 1")
            raise ValueError(f"{name}: initial_state.{field} must hold {n} tensors, got {len(tensors)}")
        for i, (x, s) in enumerate(zip(tensors, shapes)):
            check_state(name, f"initial_state.{field}[{i}]", x, s, str(list(s)), terms.v.dtype)
    cast = lambda xs: tuple(x.to(terms.v.dtype) for x in xs)  # noqa: E731
    return MemoryState(cast(state.weights), cast(state.momentum))


def recurrent_memory(terms: MemoryTerms, state: MemoryState | None = None) -> tuple[Tensor, MemoryState]:
    """Step the memory one token at a time; read it after each update. ``(o [B, T, H, V], state)``."""
    A, Z = initial_state(terms) if state is None else state
    outs = []
    for t in range(terms.shape[1]):
        theta, a, eta = _gates(terms, t)
        if terms.algorithm == "implicit":
            A = _implicit(terms, A, terms.k[:, t], terms.v[:, t], theta, a)
        else:
            G = weight_grads(terms, _point(terms, A, a), terms.k[:, t], terms.v[:, t])
            A, Z = _update(terms, A, Z, G, theta, a, eta)
        outs.append(read(terms, weights_of(terms, A), terms.q[:, t]))
    return torch.stack(outs, dim=1), MemoryState(A, Z)


# ---------------------------------------------------------------------------------------------
# 4. Memories linear in their state: lowering to LinearTerms


def channel_heads(terms: MemoryTerms) -> MemoryTerms:
    """A vector memory as H·K matrix memories of size 1×1 (one per channel), for the exact forms."""
    B, T, H, K, V = terms.shape
    flat = lambda x: x.reshape(B, T, H * K, 1)            # noqa: E731
    rep = lambda x: None if x is None else x.repeat_interleave(K, dim=2)  # noqa: E731
    g = terms.g.reshape(B, T, H * K) if terms.g is not None and terms.g.dim() == 4 else rep(terms.g)
    return dataclasses.replace(terms, memory="matrix", q=flat(terms.q), k=flat(terms.k),
                               v=flat(terms.v), theta=rep(terms.theta), g=g, log_eta=rep(terms.log_eta))


def to_linear(terms: MemoryTerms) -> LinearTerms | None:
    """The same recurrence as LinearTerms, for a matrix memory without momentum; else None.

    dot bias:   S_t = α_t S + θ_t k vᵀ                       (decayed linear attention; implicit = GD)
    ℓ2, retained or no retention:  S_t = (I − θ k kᵀ) α S + θ k vᵀ     (gated delta rule, β = θ)
    ℓ2, implicit:  the same with β = θ/(1 + θ‖k‖²)                      (Longhorn)
    ℓ2, Titans' order:  (α I − θ k kᵀ) S + θ k vᵀ = (I − (θ/α) k kᵀ) α S + (θ/α) k (α v)ᵀ
    """
    if terms.memory != "matrix" or terms.algorithm == "momentum" or \
            terms.bias not in ("dot", "l2") or terms.retention not in ("none", "l2"):
        return None
    decay = "none" if terms.g is None else ("key" if terms.g.dim() == 4 else "scalar")
    common = dict(q=terms.q, k=terms.k, u=terms.v, decay=decay, g=terms.g)
    if terms.bias == "dot":
        return LinearTerms(**common, w=terms.theta)
    if decay == "key":
        return None
    if terms.algorithm == "implicit":
        return LinearTerms(**common, beta=terms.theta / (1 + terms.theta * (terms.k ** 2).sum(-1)))
    if decay == "none" or terms.grad_at == "retained":
        return LinearTerms(**common, beta=terms.theta)
    a = torch.exp(terms.g)  # exact while θ/α is finite: |g| < 709 in float64, < 88 in float32
    return LinearTerms(**common, beta=terms.theta / a, w=a)


def _view(terms: MemoryTerms) -> MemoryTerms:
    return channel_heads(terms) if terms.memory == "vector" else terms


def _view_state(terms: MemoryTerms, state: MemoryState | None) -> tuple[Tensor, Tensor | None]:
    """User state → the view's matrix state [B, H', K', V'] and momentum (zeros when absent)."""
    state = initial_state(terms) if state is None else state
    B, T, H, K, V = terms.shape
    fix = (lambda x: x.reshape(B, H * K, 1, 1)) if terms.memory == "vector" else (lambda x: x)
    Z = fix(state.momentum[0]) if state.momentum else None
    return fix(state.weights[0]), Z


def _user_state(terms: MemoryTerms, S: Tensor, Z: Tensor | None) -> MemoryState:
    B, T, H, K, V = terms.shape
    fix = (lambda x: x.reshape(B, H, K)) if terms.memory == "vector" else (lambda x: x)
    return MemoryState((fix(S),), () if Z is None else (fix(Z),))


def _user_out(terms: MemoryTerms, o: Tensor) -> Tensor:
    B, T, H, K, V = terms.shape
    return o.reshape(B, T, H, V)


# ---------------------------------------------------------------------------------------------
# 5. Exact chunked form of the dot-product bias with momentum


def chunked_momentum(terms: MemoryTerms, S: Tensor, Z: Tensor, C: int) -> tuple[Tensor, Tensor, Tensor]:
    r"""Z_t = η_t Z_{t−1} + θ_t k_t v_tᵀ, S_t = α_t S_{t−1} + Z_t, y_t = S_tᵀ q_t, chunk by chunk.

    Inside a chunk (local cumulative logs G^α, G^η; L^α_tj = e^{G^α_t − G^α_j}, L^η_ji likewise):

        S_t = e^{G^α_t} S_0 + d_t Z_0 + Σ_i c_ti θ_i k_i v_iᵀ,   c = L^α L^η,  d = L^α e^{G^η}

    so the intra-chunk part is attention with the mask c; only S and Z pass between chunks.
    """
    B, T, H, K, V = terms.shape
    q, k, v = (_to_chunks(x, C) for x in (terms.q, terms.k, terms.v))          # [B, H, N, C, *]
    th = _to_chunks(terms.theta, C)                                             # [B, H, N, C]
    Ga = torch.zeros_like(th) if terms.g is None else torch.cumsum(_to_chunks(terms.g, C), dim=3)
    Ge = torch.cumsum(_to_chunks(terms.log_eta, C), dim=3)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    La = _masked_exp(Ga[..., :, None] - Ga[..., None, :], causal)
    Le = _masked_exp(Ge[..., :, None] - Ge[..., None, :], causal)
    coef = La @ Le                                                              # c_ti
    # Step 1: intra-chunk outputs. Step 2: what each chunk writes into S and into Z.
    y_intra = ((q @ k.transpose(-1, -2)) * coef * th[..., None, :]) @ v
    d = (La @ torch.exp(Ge)[..., None])[..., 0]                                 # weight of Z_0 in S_t
    # A chunk ends at its last real token: in the zero padding (α = η = 1) S would keep adding Z.
    N = q.shape[2]
    end = torch.full((N,), C - 1, dtype=torch.long, device=q.device)
    end[-1] = (T - 1) % C
    pick = lambda x: x.gather(3, end.expand(*x.shape[:2], N)[..., None]).squeeze(3)  # noqa: E731
    c_end = coef.gather(3, end.expand(*coef.shape[:2], N)[..., None, None].expand(
        *coef.shape[:3], 1, C)).squeeze(3)                                       # c_{end, i}
    dS = (k * (c_end * th)[..., None]).transpose(-1, -2) @ v                     # [B, H, N, K, V]
    Ge_end, Ga_end, d_end = pick(Ge), pick(Ga), pick(d)
    dZ = (k * (torch.exp(Ge_end[..., None] - Ge) * th)[..., None]).transpose(-1, -2) @ v
    # Steps 3-4: pass (S, Z) across chunks; add what the entering state gives each row.
    ys = []
    for n in range(N):
        qn = q[:, :, n]
        ys.append(y_intra[:, :, n] + torch.exp(Ga[:, :, n])[..., None] * (qn @ S)
                  + d[:, :, n][..., None] * (qn @ Z))
        S = (torch.exp(Ga_end[:, :, n])[..., None, None] * S + d_end[:, :, n][..., None, None] * Z
             + dS[:, :, n])
        Z = torch.exp(Ge_end[:, :, n])[..., None, None] * Z + dZ[:, :, n]
    return _from_chunks(torch.stack(ys, dim=2), T), S, Z


# ---------------------------------------------------------------------------------------------
# 6. Exact chunked form of the ℓ2 bias with momentum (linear Titans)


def _shift(x: Tensor, dim: int) -> Tensor:
    """x moved one step later along ``dim`` (row t holds x_{t−1}), zeros entering at t = 0."""
    first = torch.zeros_like(x.narrow(dim, 0, 1))
    return torch.cat([first, x.narrow(dim, 0, x.shape[dim] - 1)], dim=dim)


def chunked_l2_momentum(terms: MemoryTerms, S: Tensor, Z: Tensor, C: int) -> tuple[Tensor, Tensor, Tensor]:
    r"""e_t = P_tᵀk_t − v_t, Z_t = η_t Z_{t−1} − θ_t k_t e_tᵀ, S_t = α_t S_{t−1} + Z_t, y_t = S_tᵀq_t.

    The gradient point P_t is S_{t−1} (``grad_at="previous"``, Titans) or α_t S_{t−1} ("retained").
    Inside a chunk entered with (S_0, Z_0), as for the dot-product bias (c = L^α L^η, d = L^α e^{G^η}),

        S_t = e^{G^α_t} S_0 + d_t Z_0 − Σ_{i<=t} c_ti θ_i k_i e_iᵀ
        P_t = a_t S_0 + d'_t Z_0 − Σ_{i<t} m_ti θ_i k_i e_iᵀ

    with (a, d', m) = (e^{G^α_{t−1}}, d_{t−1}, c_{t−1,i}) for "previous" and (e^{G^α_t}, α_t d_{t−1},
    α_t c_{t−1,i}) for "retained". So the chunk's errors E solve the unit lower-triangular system
    (I + strict_lower(m_ti θ_i k_tᵀk_i)) E = diag(a) K S_0 + diag(d') K Z_0 − V: one solve for all
    chunks gives E = [W_S W_Z] [S_0; Z_0] − U, and the loop over chunks carries only X = [S; Z].
    """
    B, T, H, K, V = terms.shape
    q, k, v = (_to_chunks(x, C, chunk_major=True) for x in (terms.q, terms.k, terms.v))  # [N, B, H, C, *]
    th = _to_chunks(terms.theta, C, chunk_major=True)                                    # [N, B, H, C]
    g = torch.zeros_like(th) if terms.g is None else _to_chunks(terms.g, C, chunk_major=True)
    Ga = torch.cumsum(g, dim=-1)
    Ge = torch.cumsum(_to_chunks(terms.log_eta, C, chunk_major=True), dim=-1)
    eGa, eGe = torch.exp(Ga), torch.exp(Ge)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    Le = _masked_exp(Ge[..., :, None] - Ge[..., None, :], causal)                       # η_{i+1}⋯η_t
    if terms.grad_at == "retained" and terms.g is not None:
        La_s = _masked_exp(Ga[..., :, None] - Ga[..., None, :], causal.tril(-1))     # α_{j+1}⋯α_t, j < t
        m = La_s @ Le                                                                 # α_t c_{t−1,i}
        coef = m + Le                                                                 # c_ti
        d_pt = (La_s @ eGe[..., None])[..., 0]                                        # α_t d_{t−1}
        d = d_pt + eGe
        a_pt = eGa
    else:
        La = _masked_exp(Ga[..., :, None] - Ga[..., None, :], causal)
        coef = La @ Le
        d = (La @ eGe[..., None])[..., 0]
        m, d_pt, a_pt = _shift(coef, -2), _shift(d, -1), torch.exp(_shift(Ga, -1))
    # The errors' system; the solver reads only its strict lower triangle (unit diagonal implied).
    A = (k @ k.transpose(-1, -2)) * m * th[..., None, :]
    rhs = torch.cat([a_pt[..., None] * k, d_pt[..., None] * k, v], dim=-1)
    sol = solve_unit_lower(A, rhs)
    W, U = sol[..., :2 * K].flatten(1, 2), sol[..., 2 * K:].flatten(1, 2)                # [N, BH, C, *]
    # A chunk ends at its last real token: in the zero padding (α = η = 1) S would keep adding Z.
    N = q.shape[0]
    end = torch.full((N,), C - 1, dtype=torch.long, device=q.device)
    end[-1] = (T - 1) % C
    n_idx = torch.arange(N, device=q.device)
    row = lambda x: x[n_idx, :, :, end]                                                 # noqa: E731
    # What E writes into S and into Z by the chunk's end: X_end = mix(X_0) − [k_S k_Z]ᵀ E.
    th_k = th[..., None] * k
    kSZ = torch.cat([row(coef)[..., None] * th_k, row(Le)[..., None] * th_k], dim=-1)   # [N, B, H, C, 2K]
    kSZ_T = kSZ.transpose(-1, -2).flatten(1, 2)                                          # [N, BH, 2K, C]
    a_end, d_end, e_end = (row(x).flatten(1, 2)[..., None, None] for x in (eGa, d, eGe))  # [N, BH, 1, 1]
    X = torch.cat([S, Z], dim=-2).flatten(0, 1)                                          # [BH, 2K, V]
    states, errors = [X], []
    for n in range(N):
        X = states[-1]
        errors.append(torch.baddbmm(U[n], W[n], X, beta=-1))                            # W X − U
        top = a_end[n] * X[:, :K] + d_end[n] * X[:, K:]
        mixed = torch.cat([top, e_end[n] * X[:, K:]], dim=-2)
        states.append(torch.baddbmm(mixed, kSZ_T[n], errors[-1], alpha=-1))
    X_in, E = torch.stack(states[:-1]), torch.stack(errors)                              # [N, BH, *, V]
    # Outputs, batched after the loop: y = [e^{G^α} Q | d Q] X_0 − (Q Kᵀ ⊙ c ⊙ θ) E.
    qx = torch.cat([eGa[..., None] * q, d[..., None] * q], dim=-1).flatten(1, 2)         # [N, BH, C, 2K]
    P = ((q @ k.transpose(-1, -2)) * coef * th[..., None, :]).flatten(1, 2)
    y = (qx @ X_in - P @ E).view(N, B, H, C, V)
    X = states[-1].view(B, H, 2 * K, V)
    return _from_chunks(y, T, chunk_major=True), X[:, :, :K], X[:, :, K:]


def chunked_memory(terms: MemoryTerms, state: MemoryState | None, C: int) -> tuple[Tensor, MemoryState]:
    """The exact chunked form (callers check ``"chunked" in memory_forms(...)`` first)."""
    view = _view(terms)
    S, Z = _view_state(terms, state)
    lin = to_linear(view)
    if lin is not None:
        o, S = chunked_linear(lin, S, C)
    elif view.algorithm == "momentum" and view.bias == "dot":
        o, S, Z = chunked_momentum(view, S, Z, C)
    elif view.algorithm == "momentum" and view.bias == "l2" and (view.g is None or view.g.dim() == 3):
        o, S, Z = chunked_l2_momentum(view, S, Z, C)
    else:
        raise ValueError(f"no exact chunked form for this memory ({terms.memory}, {terms.bias} bias, "
                         f"{terms.retention} retention, {terms.algorithm})")
    return _user_out(terms, o), _user_state(terms, S, Z)


# ---------------------------------------------------------------------------------------------
# 7. Φ of a memory linear in its state and its values


def phi_memory(terms: MemoryTerms) -> Tensor:
    """Φ with y = Φ v from a zero state: [B, H, T, T] (matrix) or [B, H, K, T, T] (vector).

    Without a LinearTerms lowering (ℓ2 bias with momentum, key-wise gates on the ℓ2 bias) the value
    channels still evolve independently under the same key-side transitions, so feeding the one-hot
    values v_t = e_t ∈ R^T to the recurrence reads Φ_ij off as output i, channel j.
    """
    B, T, H, K, V = terms.shape
    view = _view(terms)
    lin = to_linear(view)
    if lin is not None:
        P = phi_linear(lin)
    else:
        Hv = view.shape[2]
        eye = torch.eye(T, dtype=terms.v.dtype, device=terms.v.device)
        onehot = eye[None, :, None, :].expand(B, T, Hv, T)
        y, _ = recurrent_memory(dataclasses.replace(view, v=onehot))
        P = y.permute(0, 2, 1, 3)                                               # [B, H', i, j]
    return P.reshape(B, H, K, T, T) if terms.memory == "vector" else P


# ---------------------------------------------------------------------------------------------
# 8. The mini-batch approximation


def minibatch_memory(terms: MemoryTerms, state: MemoryState | None, C: int,
                     sequential: bool = False) -> tuple[Tensor, MemoryState]:
    r"""Every gradient of a chunk taken at the chunk-start state: the papers' training form.

    For ``grad_at="previous"`` every step of the chunk [s, e) uses ∇ℓ(W_{s−1}; k_t, v_t) (Titans
    eq. for M_t, Miras §5.4); for ``"retained"`` the chunk-start state carried by the retention alone
    to step t, ∇ℓ(α_s⋯α_t W_{s−1}). Retention, momentum and reads stay per token. With the gradients
    fixed, the none / ℓ2 / ℓq / KL retentions make the chunk a linear recurrence (KL in log space),
    computed with C×C decay matrices; elastic net and key-wise gates step through the chunk
    (``sequential=True`` forces that path). ``C = 1`` is the recurrent form.
    """
    if terms.algorithm == "implicit":
        raise ValueError("the mini-batch approximation is for explicit steps (gd, momentum); the "
                         "implicit step has exact forms")
    B, T, H, K, V = terms.shape
    A, Z = initial_state(terms) if state is None else state
    keywise = terms.g is not None and terms.g.dim() == 4
    loop = sequential or keywise or terms.retention == "elastic_net"
    outs = []
    for s in range(0, T, C):
        sl = slice(s, min(s + C, T))
        k, v, q = (x[:, sl].transpose(1, 2) for x in (terms.k, terms.v, terms.q))   # [B, H, n, *]
        theta, a, eta = _gates(terms, sl)                                           # [B, H, n(, K)]
        n = k.shape[2]
        if terms.grad_at == "retained" and a is not None:
            carried = torch.cumprod(a, dim=2)
            P = weights_of(terms, tuple(_bc(carried, x[:, :, None]) * x[:, :, None] for x in A))
        else:
            P = tuple(w[:, :, None] for w in weights_of(terms, A))
        G = weight_grads(terms, P, k, v)                                            # [B, H, n, *shape]
        if loop:
            for i in range(n):
                at = None if a is None else a[:, :, i]
                et = None if eta is None else eta[:, :, i]
                A, Z = _update(terms, A, Z, tuple(x[:, :, i] for x in G), theta[:, :, i], at, et)
                outs.append(read(terms, weights_of(terms, A), q[:, :, i]))
            continue
        logs = tuple(None if x is None else x[:, sl].transpose(1, 2) for x in (terms.g, terms.log_eta))
        W_all, A, Z = _chunk_linear_steps(terms, A, Z, G, theta, *logs)
        outs.append(read(terms, W_all, q).transpose(1, 2))
    o = torch.cat([x[:, None] if x.dim() == 3 else x for x in outs], dim=1)
    return o, MemoryState(A, Z)


def _chunk_linear_steps(terms, A, Z, G, theta, g, log_eta):
    """The chunk's states with fixed gradients, all at once: (weights per token, last A, last Z).

    g, log_eta: the chunk's log decays [B, H, n] (scalar gates only), used in log space so that a
    decay too strong for exp stays exact (every exponent below is <= 0).
    """
    n = theta.shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool, device=theta.device).tril()
    Ga = torch.zeros_like(theta) if g is None else torch.cumsum(g, dim=-1)
    La = _masked_exp(Ga[..., :, None] - Ga[..., None, :], causal)                  # [B, H, n, n]
    mix = lambda M, X: torch.einsum("bhti,bhi...->bht...", M, X)                  # noqa: E731
    tG = tuple(_bc(theta, x) * x for x in G)
    if terms.algorithm == "momentum":
        Ge = torch.cumsum(log_eta, dim=-1)
        Le = _masked_exp(Ge[..., :, None] - Ge[..., None, :], causal)
        d = (La @ torch.exp(Ge)[..., None])[..., 0]
        U_sum = tuple(_bc(d, x) * z[:, :, None] - mix(La @ Le, x) for z, x in zip(Z, tG))
        Z_all = tuple(_bc(torch.exp(Ge), x) * z[:, :, None] - mix(Le, x) for z, x in zip(Z, tG))
        Z = tuple(z[:, :, -1] for z in Z_all)
    else:
        U_sum = tuple(-mix(La, x) for x in tG)
    decay = torch.exp(Ga)
    if terms.retention == "kl":  # a linear recurrence of the logits; softmax per token
        L0 = tuple(torch.log(x.clamp_min(_KL_FLOOR)) for x in A)
        logits = tuple(_bc(decay, u) * l0[:, :, None] + u for l0, u in zip(L0, U_sum))
        A_all = tuple(terms.kl_scale * torch.softmax(l, dim=-_nd(terms)) for l in logits)
    else:
        A_all = tuple(_bc(decay, u) * x[:, :, None] + u for x, u in zip(A, U_sum))
    return weights_of(terms, A_all), tuple(x[:, :, -1] for x in A_all), Z
