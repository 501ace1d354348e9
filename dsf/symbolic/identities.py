"""Identities behind the DSF zoo, each built symbolically and checked exactly by sympy.

Each function returns an :class:`~dsf.symbolic.identity.Identity`; its ``statement`` says exactly
what the lhs/rhs pair proves (for the sizes used), and ``.holds()`` runs the check.
"""

from __future__ import annotations

import sympy as sp

from .identity import Identity
from .phi import step_diagonal

__all__ = ["normalized_linear_attention", "reversed_sigmoid_is_s6",
           "chunked_equals_recurrent_diagonal", "titans_linear_is_gated_delta", "ttt_linear_is_deltanet",
           "softmax_states_merge", "identities", "titans_update", "gated_deltanet_update"]


def _positive(fn: str, **sizes: object) -> None:
    """Sizes of a symbolic identity: positive ints, or a clear error naming the one that is not."""
    for name, n in sizes.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{fn}: {name} must be a positive int, got {n!r}")


def _mat(name: str, rows: int, cols: int, **assumptions) -> sp.Matrix:
    return sp.Matrix(rows, cols, lambda i, j: sp.Symbol(f"{name}_{i}_{j}", **assumptions))


# --------------------------------------------------------------------------------------------
# (a) normalised linear attention as a DSF with Λ_t = η_{t-1}/η_t


def normalized_linear_attention(T: int = 3, F: int = 2, V: int = 2, *,
                                lagged_query: bool = True) -> Identity:
    """Normalised linear attention equals the DSF with the normaliser folded into Λ_t.

    Features φ(q_t), φ(k_t) ∈ R^F are positive symbols (so η_t > 0), values v_t ∈ R^V.
    ``lagged_query=False`` builds the tempting but *wrong* reading η_{t-1} := φ(q_t)ᵀ z_{t-1} (the
    current query against the previous key sum); it does not hold when the query varies with t.
    """
    _positive("normalized_linear_attention", T=T, F=F, V=V)
    fq, fk = _mat("phiq", T, F, positive=True), _mat("phik", T, F, positive=True)
    v = _mat("v", T, V, real=True)
    z = [sum((fk.row(j) for j in range(t + 1)), sp.zeros(1, F)).T for t in range(T)]
    S = [sum((fk.row(j).T * v.row(j) for j in range(t + 1)), sp.zeros(F, V)) for t in range(T)]
    eta = [(fq.row(t) * z[t])[0] for t in range(T)]                 # denominator used at step t
    lhs = sp.Matrix([list(fq.row(t) * S[t] / eta[t]) for t in range(T)])

    h, rows = sp.zeros(F, V), []
    for t in range(T):
        write = fk.row(t).T * v.row(t) / eta[t]
        if t == 0:  # h_{-1} = 0, so Λ_0 never acts
            h = write
        else:
            prev = eta[t - 1] if lagged_query else (fq.row(t) * z[t - 1])[0]
            h = (prev / eta[t]) * h + write
        rows.append(list(fq.row(t) * h))
    rhs = sp.Matrix(rows)
    if lagged_query:
        statement = (
            f"With z_t = Σ_{{j≤t}} φ(k_j), S_t = Σ_{{j≤t}} φ(k_j)v_jᵀ and η_t = φ(q_t)ᵀz_t the "
            f"denominator used at step t (so η_{{t-1}} = φ(q_{{t-1}})ᵀz_{{t-1}}, the previous "
            f"step's query), the DSF h_t = (η_{{t-1}}/η_t) h_{{t-1}} + φ(k_t)v_tᵀ/η_t, "
            f"h_{{-1}} = 0, y_t = φ(q_t)ᵀh_t equals φ(q_t)ᵀS_t/φ(q_t)ᵀz_t at every t, because "
            f"η_t h_t = S_t telescopes for any nonzero η (T={T}, F={F} positive symbolic "
            f"features, V={V})")
    else:
        statement = (
            f"(false in general) the DSF with Λ_t = φ(q_t)ᵀz_{{t-1}}/η_t, i.e. the current "
            f"query against the previous key sum, equals normalised linear attention "
            f"(T={T}, F={F}, V={V})")
    return Identity("normalized_linear_attention", statement, lhs, rhs)


# --------------------------------------------------------------------------------------------
# (b) qLSTM's reversed sigmoid is S6's transition


def reversed_sigmoid_is_s6() -> Identity:
    """σ(−x)^A = exp(−A·softplus(x)) for positive x, A."""
    x, A = sp.symbols("x A", positive=True)
    sigmoid = lambda z: 1 / (1 + sp.exp(-z))  # noqa: E731
    softplus = sp.log(1 + sp.exp(x))
    return Identity(
        "reversed_sigmoid_is_s6",
        "σ(−x)^A = exp(−A·softplus(x)) for x, A > 0: qLSTM's reversed-sigmoid forget gate is S6's "
        "transition exp(−Δ·A) with Δ = softplus(x)",
        sigmoid(-x) ** A, sp.exp(-A * softplus))


# --------------------------------------------------------------------------------------------
# (c) chunked = recurrent for the diagonal family


def _chunked_diagonal(q, k, v, a, S0, C):
    """SSD-style chunked form: intra-chunk masked decayed attention + inter-chunk state passing.

    Inside a chunk, Γ_i[c] = Π_{l=start..i} a_l[c] is the local cumulative decay (dsf's exp(G_i)),
    and the intra-chunk decay between j <= i is the ratio Γ_i/Γ_j, as the fast path computes it.
    """
    T, K = q.shape
    S, ys = S0, []
    for start in range(0, T, C):
        idx = range(start, min(start + C, T))
        Gam, run = {}, [sp.S.One] * K
        for i in idx:
            run = [run[c] * a[i, c] for c in range(K)]
            Gam[i] = run
        for i in idx:
            zero = sp.zeros(1, S.shape[1])
            inter = sum((q[i, c] * Gam[i][c] * S.row(c) for c in range(K)), zero)
            intra = sum((q[i, c] * k[j, c] * Gam[i][c] / Gam[j][c] * v.row(j)
                         for j in idx if j <= i for c in range(K)), zero)
            ys.append(list(inter + intra))
        end = idx[-1]
        S = sp.diag(*Gam[end]) * S + sum(
            (sp.diag(*[Gam[end][c] / Gam[j][c] for c in range(K)]) * k.row(j).T * v.row(j)
             for j in idx), sp.zeros(*S.shape))
    return sp.Matrix(ys), S


def chunked_equals_recurrent_diagonal(T: int = 4, K: int = 2, chunk_size: int = 2) -> Identity:
    """Chunked form == recurrent form, outputs and final state, for scalar and key-wise decays."""
    _positive("chunked_equals_recurrent_diagonal", T=T, K=K, chunk_size=chunk_size)
    q, k, v = _mat("q", T, K, real=True), _mat("k", T, K, real=True), _mat("v", T, 1, real=True)
    S0 = _mat("S0", K, 1, real=True)
    scalar = sp.Matrix(T, K, lambda t, c: sp.Symbol(f"a_{t}", positive=True))
    keywise = _mat("a", T, K, positive=True)
    lhs, rhs = [], []
    for a in (scalar, keywise):
        yc, Sc = _chunked_diagonal(q, k, v, a, S0, chunk_size)
        yr, Sr = step_diagonal(q, k, v, a, S0)
        lhs += [yc, Sc]
        rhs += [yr, Sr]
    return Identity(
        "chunked_equals_recurrent_diagonal",
        f"For Λ_t = a_t I (scalar) and Λ_t = diag(a_t) (key-wise, K={K}) with an initial state S0, "
        f"the chunked form (chunk size {chunk_size}: intra-chunk masked decayed attention with "
        f"decay Γ_i/Γ_j + inter-chunk state passing) gives the same outputs y_0..y_{T - 1} and final "
        f"state as stepping S_t = Λ_t S_{{t-1}} + k_t v_t, y_t = q_tᵀS_t (T={T})",
        sp.Matrix.vstack(*lhs), sp.Matrix.vstack(*rhs))


# --------------------------------------------------------------------------------------------
# (d) Titans' linear memory (no momentum) is a gated delta rule


def titans_update(M: sp.Matrix, k: sp.Matrix, v: sp.Matrix, alpha, theta) -> sp.Matrix:
    """Titans without momentum: M − α M − θ ∇ℓ(M), ℓ = ‖M k − v‖², ∇ = 2(Mk − v)kᵀ (M: dv×dk)."""
    return (1 - alpha) * M - theta * 2 * (M * k - v) * k.T


def gated_deltanet_update(S: sp.Matrix, k: sp.Matrix, v: sp.Matrix, alpha, beta) -> sp.Matrix:
    """Gated DeltaNet (paper orientation, S: dv×dk): α S (I − β k kᵀ) + β v kᵀ."""
    return alpha * S * (sp.eye(k.shape[0]) - beta * k * k.T) + beta * v * k.T


def titans_linear_is_gated_delta(K: int = 2) -> Identity:
    """Titans' linear memory step, in gated-delta form and as a reparameterised Gated DeltaNet.

    lhs stacks Titans' update twice side by side; rhs stacks (1) M[(1−α)I − 2θkkᵀ] + 2θvkᵀ and
    (2) Gated DeltaNet with α' = 1−α, β' = 2θ/(1−α) applied to the scaled value α'v.
    """
    _positive("titans_linear_is_gated_delta", K=K)
    M = _mat("M", K, K, real=True)
    k, v = _mat("k", K, 1, real=True), _mat("v", K, 1, real=True)
    alpha = sp.Symbol("alpha", positive=True)  # 0 < α < 1 so that α' = 1 − α ≠ 0
    theta = sp.Symbol("theta", positive=True)
    titans = titans_update(M, k, v, alpha, theta)
    gated_delta = M * ((1 - alpha) * sp.eye(K) - 2 * theta * k * k.T) + 2 * theta * v * k.T
    a1, b1 = 1 - alpha, 2 * theta / (1 - alpha)
    reparam = gated_deltanet_update(M, k, a1 * v, a1, b1)  # = α'M(I − β'kkᵀ) + α'β' v kᵀ
    return Identity(
        "titans_linear_is_gated_delta",
        f"For M ∈ R^{{{K}×{K}}}, Titans without momentum, M_t = (1−α)M − θ·2(Mk − v)kᵀ, equals "
        f"M[(1−α)I − 2θkkᵀ] + 2θvkᵀ (the GD step is taken at the undecayed M) and equals "
        f"α'M(I − β'kkᵀ) + α'β'vkᵀ with α' = 1−α, β' = 2θ/(1−α), i.e. Gated DeltaNet "
        f"α'S(I − β'kkᵀ) + β'v'kᵀ run on the scaled value v' = α'v; with the unscaled v (write "
        f"β'vkᵀ) the two differ by αβ'vkᵀ, so they coincide only when α = 0",
        sp.Matrix.hstack(titans, titans), sp.Matrix.hstack(gated_delta, reparam))


# --------------------------------------------------------------------------------------------
# (e) TTT-linear's gradient step, differentiated by sympy, is the delta rule


def ttt_linear_is_deltanet(K: int = 2, V: int = 2) -> Identity:
    """One gradient step on ½‖Sᵀk − v‖² (the gradient taken by sympy, not written by hand) against
    the DeltaNet step with β = θ (fla's orientation, S: K×V)."""
    _positive("ttt_linear_is_deltanet", K=K, V=V)
    S = _mat("S", K, V, real=True)
    k, v = _mat("k", K, 1, real=True), _mat("v", V, 1, real=True)
    theta = sp.Symbol("theta", positive=True)
    loss = sp.Rational(1, 2) * sum(e ** 2 for e in S.T * k - v)
    grad = sp.Matrix(K, V, lambda i, j: sp.diff(loss, S[i, j]))
    delta = (sp.eye(K) - theta * k * k.T) * S + theta * k * v.T
    return Identity(
        "ttt_linear_is_deltanet",
        f"For S ∈ R^{{{K}×{V}}}, one gradient step of the squared error, S − θ ∇_S ½‖Sᵀk − v‖² (the "
        f"gradient differentiated by sympy), is the DeltaNet step (I − θkkᵀ)S + θkvᵀ: TTT-linear is the "
        f"delta rule with β = θ",
        S - theta * grad, delta)


# --------------------------------------------------------------------------------------------
# (f) softmax states merge exactly, whatever their reference points


def softmax_states_merge(T1: int = 2, T2: int = 2, V: int = 2) -> Identity:
    """The state (c, a) = (Σ e^{s_j − m}, Σ e^{s_j − m} v_j) of two token sets, each taken about its
    own reference point m₁, m₂ and rescaled by e^{m_i − m}, against the state of their union about m."""
    _positive("softmax_states_merge", T1=T1, T2=T2, V=V)
    T = T1 + T2
    s = sp.symbols(f"s_0:{T}", real=True)
    vals = _mat("v", T, V, real=True)
    m1, m2, m = sp.symbols("m_1 m_2 m", real=True)

    def state(js, ref):
        c = sum(sp.exp(s[j] - ref) for j in js)
        return sp.Matrix([[c, *(sum(sp.exp(s[j] - ref) * vals[j, i] for j in js) for i in range(V))]])

    merged = sp.exp(m1 - m) * state(range(T1), m1) + sp.exp(m2 - m) * state(range(T1, T), m2)
    return Identity(
        "softmax_states_merge",
        f"Softmax states (c, a) = (Σ_j e^(s_j − m), Σ_j e^(s_j − m) v_j) of {T1} and {T2} tokens, each "
        f"about its own reference point m_i and rescaled by e^(m_i − m), add up to the state of all "
        f"{T} about m, for any m_1, m_2, m: the running maximum only keeps the exponents ≤ 0 (flash "
        f"attention's tiles, Aaren's state)",
        merged, state(range(T), m))


def identities() -> list[Identity]:
    """All identities, in order: normalised attention, reversed sigmoid, chunked, Titans, TTT-linear,
    softmax states."""
    return [normalized_linear_attention(), reversed_sigmoid_is_s6(),
            chunked_equals_recurrent_diagonal(), titans_linear_is_gated_delta(), ttt_linear_is_deltanet(),
            softmax_states_merge()]
