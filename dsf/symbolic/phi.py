r"""The DSF operator Φ built symbolically, two ways: by stepping the recurrence, and in closed form.

One head, one value channel (v_t is a scalar per step), keys of dimension K, state h ∈ R^{K×1}
(dsf's [K, V] orientation with V = 1)::

    h_t = Λ_t h_{t-1} + B_t v_t,     y_t = q_tᵀ h_t,     y_i = Σ_j Φ_ij v_j

============  ====================================  =====================
structure     Λ_t                                   B_t
============  ====================================  =====================
``scalar``    a_t I                                 k_t
``key``       diag(a_t[0], …, a_t[K-1])             k_t
``delta``     (I − β_t k_t k_tᵀ) · a_t I            β_t k_t
============  ====================================  =====================

The decays a are positive symbols (a = exp(g) with g the log decay dsf takes as input).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import sympy as sp

__all__ = ["STRUCTURES", "PhiSymbols", "phi_symbols", "phi_entries", "phi_closed_form",
           "decay_product", "step_diagonal"]

STRUCTURES = ("scalar", "key", "delta")


@dataclass(eq=False)
class PhiSymbols:
    """The symbols a Φ is written in (substitute them to get numbers)."""

    q: sp.Matrix                # T×K read vectors
    k: sp.Matrix                # T×K write keys
    v: sp.Matrix                # T×1 values (Φ is the Jacobian of y with respect to them)
    a: sp.Matrix                # T×K decay of each key channel at each step (equal columns unless "key")
    beta: Optional[sp.Matrix]   # T×1 delta-rule strengths, "delta" only


def _check(structure: str, T: int, K: int) -> None:
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
    if not (isinstance(T, int) and T >= 1 and isinstance(K, int) and K >= 1):
        raise ValueError(f"T and K must be positive ints, got T={T!r}, K={K!r}")


def phi_symbols(structure: str, T: int, K: int = 2) -> PhiSymbols:
    """The symbols of ``structure`` for T steps and K key channels (same names on every call)."""
    _check(structure, T, K)
    q = sp.Matrix(T, K, lambda t, c: sp.Symbol(f"q_{t}_{c}", real=True))
    k = sp.Matrix(T, K, lambda t, c: sp.Symbol(f"k_{t}_{c}", real=True))
    v = sp.Matrix(T, 1, lambda t, _: sp.Symbol(f"v_{t}", real=True))
    if structure == "key":
        a = sp.Matrix(T, K, lambda t, c: sp.Symbol(f"a_{t}_{c}", positive=True))
    else:  # one decay per step shared by all channels: a_t I
        a = sp.Matrix(T, K, lambda t, c: sp.Symbol(f"a_{t}", positive=True))
    beta = sp.Matrix(T, 1, lambda t, _: sp.Symbol(f"beta_{t}", positive=True)) \
        if structure == "delta" else None
    return PhiSymbols(q, k, v, a, beta)


def decay_product(a: sp.Matrix, i: int, j: int, c: int = 0) -> sp.Expr:
    """Π_{l=j+1..i} a[l, c]: the decay a write at step j has suffered when read at step i >= j."""
    return sp.Mul(*[a[l, c] for l in range(j + 1, i + 1)])


def step_diagonal(q: sp.Matrix, k: sp.Matrix, v: sp.Matrix, a: sp.Matrix,
                  S0: Optional[sp.Matrix] = None) -> tuple[sp.Matrix, sp.Matrix]:
    """Step h_t = diag(a_t) h_{t-1} + k_t v_t, y_t = q_tᵀ h_t; return (y as T×1, final h).

    ``v`` may have several columns (values of dimension V); h is then K×V.
    """
    T, K = q.shape
    h = sp.zeros(K, v.shape[1]) if S0 is None else S0
    ys = []
    for t in range(T):
        h = (sp.diag(*a.row(t)) * h + k.row(t).T * v.row(t)).applyfunc(sp.expand)
        ys.append(list(q.row(t) * h))
    return sp.Matrix(ys), h


def phi_entries(structure: str, T: int, K: int = 2) -> sp.Matrix:
    """Φ (T×T) derived by stepping the recurrence with a symbolic state.

    Φ_ij is read off as ∂y_i/∂v_j: y_i is linear in the values, so this is exactly the coefficient
    of v_j in y_i.
    """
    s = phi_symbols(structure, T, K)
    h = sp.zeros(K, 1)
    rows = []
    for t in range(T):
        kt = s.k.row(t).T
        Lam = sp.diag(*s.a.row(t))
        write = kt * s.v[t]
        if structure == "delta":
            # dsf's order: decay first, then remove what k_t reads (I − β k kᵀ); write β k v.
            Lam = (sp.eye(K) - s.beta[t] * kt * kt.T) * Lam
            write = s.beta[t] * write
        h = (Lam * h + write).applyfunc(sp.expand)
        y = sp.expand((s.q.row(t) * h)[0])
        rows.append([sp.expand(sp.diff(y, s.v[j])) for j in range(T)])
    return sp.Matrix(rows)


def _decayed_scores(s: PhiSymbols, T: int, K: int) -> sp.Matrix:
    """Σ_c q_i[c] k_j[c] Π_{l=j+1..i} a_l[c] for i >= j, 0 above the diagonal."""
    return sp.Matrix(T, T, lambda i, j: sp.Add(*[
        s.q[i, c] * s.k[j, c] * decay_product(s.a, i, j, c) for c in range(K)]) if j <= i else 0)


def phi_closed_form(structure: str, T: int, K: int = 2) -> sp.Matrix:
    """Φ (T×T) from the closed form of each structure, in the symbols of :func:`phi_symbols`.

    * ``scalar``: Φ_ij = (q_i·k_j) Π_{l=j+1..i} a_l (the 1-semiseparable matrix L ∘ QKᵀ);
    * ``key``:    Φ_ij = Σ_c q_i[c] k_j[c] Π_{l=j+1..i} a_l[c];
    * ``delta``:  Φ = (QKᵀ ⊙ Γ)(I + strict_lower(diag(β) KKᵀ ⊙ Γ))⁻¹ diag(β), Γ_ij = Π a_l.
    """
    s = phi_symbols(structure, T, K)
    if structure != "delta":
        return _decayed_scores(s, T, K)
    Gam = sp.Matrix(T, T, lambda i, j: decay_product(s.a, i, j) if j <= i else 0)
    QK = (s.q * s.k.T).multiply_elementwise(Gam)
    A = sp.Matrix(T, T, lambda i, j: s.beta[i] * (s.k.row(i) * s.k.row(j).T)[0] * Gam[i, j]
                  if j < i else 0)
    # (I + A) is unit lower triangular: forward substitution, no division, so Φ stays polynomial.
    X = (sp.eye(T) + A).lower_triangular_solve(sp.diag(*s.beta))
    return (QK * X).applyfunc(sp.expand)
