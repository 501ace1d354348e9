r"""The mini-batch (chunk-start) approximation of gradient-step memories, checked exactly by sympy.

Paper orientation (M ∈ R^{V×K}, M(k) = M k). The steps reuse :func:`~dsf.symbolic.identities.titans_update`
(Titans without momentum: the gradient of ‖Mk − v‖² at the undecayed memory) and
:func:`~dsf.symbolic.identities.gated_deltanet_update` (the step at the decayed memory).

* The dot-product bias: the gradient −v kᵀ does not depend on the memory, so taking every gradient
  of a chunk at the chunk-start memory is exact, with retention and momentum.
* The ℓ2 bias, two tokens in one chunk: the mini-batch form differs from the recurrence by exactly
  −2θ₂ (M₁ − M₀) k₂k₂ᵀ. Without retention that is 4θ₁θ₂ (k₁ᵀk₂) e₁ k₂ᵀ, e₁ = M₀k₁ − v₁: second
  order in the step size. Titans' forget gate α adds the first-order term 2α₁θ₂ M₀ k₂k₂ᵀ, because
  the chunk-start memory is not decayed; taking the gradient at the decayed chunk-start memory (the
  Gated DeltaNet order, ``grad_at="retained"``) keeps the gap second order: α₂β₁β₂ (k₁ᵀk₂) e₁' k₂ᵀ.
"""

from __future__ import annotations

import sympy as sp

from .identities import _mat, gated_deltanet_update, titans_update
from .identity import Identity

__all__ = ["minibatch_equals_recurrent_dot", "minibatch_closed_form", "minibatch_gap_l2",
           "leading_order", "memory_identities"]


def _grad(loss, M: sp.Matrix, at: sp.Matrix) -> sp.Matrix:
    """∇_M loss(M) evaluated at the memory ``at``, by symbolic differentiation."""
    L = loss(M)
    G = sp.Matrix(M.shape[0], M.shape[1], lambda i, j: sp.diff(L, M[i, j]))
    return G.subs(dict(zip(M, at)), simultaneous=True)


def minibatch_equals_recurrent_dot(T: int = 3, K: int = 2, V: int = 1) -> Identity:
    """Dot-product bias with forget gate and momentum: chunk-start gradients = the recurrence."""
    M0, Z0 = _mat("M0", V, K, real=True), _mat("Z0", V, K, real=True)
    X = _mat("X", V, K, real=True)                                   # the variable of ∇
    k, v = _mat("k", T, K, real=True), _mat("v", T, V, real=True)
    a = [sp.Symbol(f"alpha_{t}", positive=True) for t in range(T)]  # forget: M ← (1 − α) M + Z
    eta = [sp.Symbol(f"eta_{t}", positive=True) for t in range(T)]
    th = [sp.Symbol(f"theta_{t}", positive=True) for t in range(T)]

    def run(point):
        M, Z, outs = M0, Z0, []
        for t in range(T):
            loss = lambda W: -(W * k.row(t).T).dot(v.row(t).T)    # noqa: E731,B023 ℓ = −⟨Mk, v⟩
            Z = eta[t] * Z - th[t] * _grad(loss, X, point(M))
            M = (1 - a[t]) * M + Z
            outs.append(M)
        return sp.Matrix.vstack(*outs)

    return Identity(
        "minibatch_equals_recurrent_dot",
        f"For the dot-product bias ℓ = −⟨Mk, v⟩ with forget gate and momentum (Z_t = η_t Z_(t-1) − "
        f"θ_t ∇ℓ, M_t = (1 − α_t) M_(t-1) + Z_t), taking every gradient of a chunk at the chunk-start "
        f"memory M_0 gives the same memories M_1..M_{T} as the recurrence, since ∇ℓ = −v kᵀ does not "
        f"depend on M (T={T}, M ∈ R^{{{V}×{K}}})",
        run(lambda M: M), run(lambda M: M0))


def minibatch_closed_form(T: int = 3, K: int = 2) -> Identity:
    """Titans §3.2: stepping with gradients fixed at M₀ is M_t = β_t M₀ − Σ θ_i (β_t/β_i) ∇ℓ(M₀; x_i)."""
    M0 = _mat("M0", 1, K, real=True)
    k, v = _mat("k", T, K, real=True), _mat("v", T, 1, real=True)
    a = [sp.Symbol(f"alpha_{t}", positive=True) for t in range(T)]
    th = [sp.Symbol(f"theta_{t}", positive=True) for t in range(T)]
    grads = [titans_update(M0, k.row(t).T, v.row(t).T, 0, 1) - M0 for t in range(T)]  # −∇ℓ(M₀; x_t)
    M, stepped = M0, []
    for t in range(T):
        M = (1 - a[t]) * M + th[t] * grads[t]
        stepped.append(M)
    beta = [sp.Mul(*[(1 - a[j]) for j in range(t + 1)]) for t in range(T)]
    closed = [beta[t] * M0 + sum((th[i] * beta[t] / beta[i] * grads[i] for i in range(t + 1)),
                                 sp.zeros(1, K)) for t in range(T)]
    return Identity(
        "minibatch_closed_form",
        f"Stepping M_t = (1 − α_t) M_(t-1) − θ_t ∇ℓ(M_0; x_t) through one chunk equals Titans' closed "
        f"form M_t = β_t M_0 − Σ_(i≤t) θ_i (β_t/β_i) ∇ℓ(M_0; x_i), β_t = Π_(j≤t)(1 − α_j) (ℓ = "
        f"‖Mk − v‖², T={T}, K={K})",
        sp.Matrix.vstack(*stepped), sp.Matrix.vstack(*closed))


def minibatch_gap_l2(K: int = 2, *, retention: bool = False, grad_at: str = "previous") -> Identity:
    """The exact gap recurrent − mini-batch after two tokens in one chunk, for the ℓ2 bias.

    ``grad_at="previous"``: Titans' step (1 − α)M − θ∇‖Mk − v‖², gradient at the chunk-start M₀
    (α = 0 without retention). ``"retained"``: Gated DeltaNet's α S (I − β kkᵀ) + β v kᵀ, gradient at
    the decayed chunk-start α₁α₂ S₀.
    """
    M0 = _mat("M0", 1, K, real=True)
    k1, k2 = _mat("k1", K, 1, real=True), _mat("k2", K, 1, real=True)
    v1, v2 = sp.Matrix([[sp.Symbol("v1", real=True)]]), sp.Matrix([[sp.Symbol("v2", real=True)]])
    th1, th2 = sp.symbols("theta_1 theta_2", positive=True)
    kk = (k1.T * k2)[0]
    if grad_at == "previous":
        a1, a2 = sp.symbols("alpha_1 alpha_2", positive=True) if retention else (0, 0)
        M1 = titans_update(M0, k1, v1, a1, th1)
        rec = titans_update(M1, k2, v2, a2, th2)
        mb = (1 - a2) * M1 + (titans_update(M0, k2, v2, 0, th2) - M0)      # ∇ at M₀, not M₁
        e1 = M0 * k1 - v1
        gap = 4 * th1 * th2 * kk * e1 * k2.T + 2 * a1 * th2 * M0 * k2 * k2.T
        what = ("Titans' order, forget gate α" if retention else "no retention") + \
            f": recurrent − mini-batch = 4θ₁θ₂(k₁ᵀk₂) e₁k₂ᵀ{' + 2α₁θ₂ M₀k₂k₂ᵀ' if retention else ''}"
    else:
        a1, a2 = sp.symbols("alpha_1 alpha_2", positive=True)
        M1 = gated_deltanet_update(M0, k1, v1, a1, th1)
        rec = gated_deltanet_update(M1, k2, v2, a2, th2)
        # α₂M₁ − θ₂ ∇½‖Sk₂ − v₂‖² at the decayed chunk start α₁α₂M₀
        mb = a2 * M1 - th2 * (a1 * a2 * M0 * k2 - v2) * k2.T
        e1 = a1 * M0 * k1 - v1
        gap = a2 * th1 * th2 * kk * e1 * k2.T
        what = "Gated DeltaNet's order (gradient at the decayed chunk start): recurrent − mini-batch " \
               "= α₂θ₁θ₂(k₁ᵀk₂) e₁'k₂ᵀ, e₁' = α₁M₀k₁ − v₁"
    return Identity(
        f"minibatch_gap_l2_{grad_at}" + ("_retention" if retention and grad_at == "previous" else ""),
        f"ℓ2 bias, two tokens in one chunk (M ∈ R^{{1×{K}}}), {what}",
        rec - mb, gap)


def leading_order(expr: sp.MatrixBase, steps: tuple[sp.Symbol, ...]) -> tuple[int, sp.MatrixBase]:
    """Scale every step size θ_i → ε θ_i; return the lowest power of ε and its coefficient."""
    eps = sp.Symbol("epsilon", positive=True)
    scaled = sp.expand(expr.subs({s: eps * s for s in steps}, simultaneous=True))
    for order in range(0, 8):
        coeff = scaled.applyfunc(lambda e: sp.expand(e).coeff(eps, order))
        if any(c != 0 for c in coeff):
            return order, coeff
    raise ValueError("no nonzero term up to ε^7")


def memory_identities() -> list[Identity]:
    """The mini-batch identities: dot exact, the closed form, and the three ℓ2 gaps."""
    return [minibatch_equals_recurrent_dot(), minibatch_closed_form(), minibatch_gap_l2(),
            minibatch_gap_l2(retention=True), minibatch_gap_l2(grad_at="retained")]
