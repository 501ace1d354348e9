"""Exact (sympy) checks: Φ from the recurrence vs its closed form, the zoo's identities, and Φ's
symbols substituted with numbers vs the numeric ``dsf.phi``."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import dsf
import dsf.symbolic as sym
from dsf.symbolic import Identity

NAMES = ["normalized_linear_attention", "reversed_sigmoid_is_s6",
         "chunked_equals_recurrent_diagonal", "titans_linear_is_gated_delta", "ttt_linear_is_deltanet",
         "softmax_states_merge"]


@pytest.fixture(scope="module")
def all_identities():
    return sym.identities()


def test_identities_are_listed_in_order(all_identities):
    assert [i.name for i in all_identities] == NAMES
    for i in all_identities:
        assert isinstance(i, Identity) and i.statement and "\n" not in i.statement


@pytest.mark.parametrize("index", range(len(NAMES)), ids=NAMES)
def test_identity_holds(all_identities, index):
    ident = all_identities[index]
    assert ident.holds(), f"{ident.name}: lhs − rhs = {ident.difference()}"


@pytest.mark.parametrize("structure", sym.STRUCTURES)
@pytest.mark.parametrize("T", [1, 3, 4])
def test_phi_recurrence_equals_closed_form(structure, T):
    stepped, closed = sym.phi_entries(structure, T), sym.phi_closed_form(structure, T)
    assert stepped.shape == (T, T)
    assert Identity(f"phi_{structure}", "stepped Φ == closed form", stepped, closed).holds()
    assert all(stepped[i, j] == 0 for i in range(T) for j in range(i + 1, T))  # causal


def test_phi_scalar_matches_numeric_mamba2():
    T, K = 3, 2
    inp = dsf.random_inputs("mamba2", B=1, T=T, H=1, K=K, V=1, seed=3)
    numeric = dsf.phi("mamba2", **inp)[0, 0].numpy()
    s = sym.phi_symbols("scalar", T, K)
    q = inp["q"][0, :, 0].numpy() * K ** -0.5  # the zoo scales q by K^-1/2
    k, g = inp["k"][0, :, 0].numpy(), inp["g"][0, :, 0].numpy()
    subs = {s.a[t, 0]: float(np.exp(g[t])) for t in range(T)}
    subs.update({s.q[t, c]: float(q[t, c]) for t in range(T) for c in range(K)})
    subs.update({s.k[t, c]: float(k[t, c]) for t in range(T) for c in range(K)})
    symbolic = np.array(sym.phi_entries("scalar", T, K).subs(subs).evalf(), dtype=np.float64)
    np.testing.assert_allclose(symbolic, numeric, rtol=1e-12, atol=1e-12)


def test_phi_delta_matches_numeric_gated_deltanet():
    """The stepped delta-rule Φ also agrees with dsf's numeric one (scalar decay a = exp(g))."""
    T, K = 3, 2
    inp = dsf.random_inputs("gated_deltanet", B=1, T=T, H=1, K=K, V=1, seed=5)
    spec, terms = dsf.forms.prepare("gated_deltanet", inp)
    numeric = dsf.phi("gated_deltanet", **inp)[0, 0].numpy()
    s = sym.phi_symbols("delta", T, K)
    q, k = terms.q[0, :, 0].numpy(), terms.k[0, :, 0].numpy()
    g, beta = terms.g[0, :, 0].numpy(), terms.beta[0, :, 0].numpy()
    subs = {s.a[t, 0]: float(np.exp(g[t])) for t in range(T)}
    subs.update({s.beta[t]: float(beta[t]) for t in range(T)})
    subs.update({s.q[t, c]: float(q[t, c]) for t in range(T) for c in range(K)})
    subs.update({s.k[t, c]: float(k[t, c]) for t in range(T) for c in range(K)})
    symbolic = np.array(sym.phi_entries("delta", T, K).subs(subs).evalf(), dtype=np.float64)
    np.testing.assert_allclose(symbolic, numeric, rtol=1e-12, atol=1e-12)


# ---- negative tests: a wrong claim must not hold, so the checks above can fail -------------


def test_swapped_decay_order_does_not_hold():
    """Φ_ij with the decays of steps j..i-1 (write-side, off by one) instead of j+1..i."""
    T = 3
    s = sym.phi_symbols("scalar", T)
    wrong = sp.Matrix(T, T, lambda i, j: (s.q.row(i) * s.k.row(j).T)[0]
                      * sp.Mul(*[s.a[l, 0] for l in range(j, i)]) if j <= i else 0)
    ident = Identity("wrong_decay_order", "Φ_ij = q_i·k_j Π_{l=j..i-1} a_l", sym.phi_entries("scalar", T),
                     wrong)
    assert not ident.holds()
    assert not sym.is_zero(ident.difference())


def test_delta_rule_without_diag_beta_does_not_hold():
    """Dropping diag(β) (reading β only inside the inverse) is not the delta rule's Φ."""
    T = 3
    closed = sym.phi_closed_form("delta", T)
    s = sym.phi_symbols("delta", T)
    assert not Identity("no_beta", "", closed, closed * sp.diag(*s.beta).inv()).holds()


def test_same_query_normaliser_does_not_hold():
    # η_{t-1} read with the current query φ(q_t) is not the denominator of step t-1.
    assert not sym.normalized_linear_attention(lagged_query=False).holds()


def test_gated_deltanet_with_unscaled_value_is_not_titans():
    K = 2
    M = sp.Matrix(K, K, lambda i, j: sp.Symbol(f"M_{i}_{j}", real=True))
    k = sp.Matrix(K, 1, lambda i, _: sp.Symbol(f"k_{i}_0", real=True))
    v = sp.Matrix(K, 1, lambda i, _: sp.Symbol(f"v_{i}_0", real=True))
    alpha, theta = sp.symbols("alpha theta", positive=True)
    titans = sym.titans_update(M, k, v, alpha, theta)
    gdn = sym.gated_deltanet_update(M, k, v, 1 - alpha, 2 * theta / (1 - alpha))
    ident = Identity("titans_vs_gdn", "", titans, gdn)
    assert not ident.holds()
    # The gap is exactly α β' v kᵀ, as the identity's statement says.
    gap = alpha * 2 * theta / (1 - alpha) * v * k.T
    assert Identity("gap", "", gdn - titans, gap).holds()


def test_the_merge_without_rescaling_and_the_step_with_the_wrong_sign_do_not_hold():
    """The two new identities can fail: the softmax merge without e^{m_i − m}, and a gradient step
    taken uphill (θ → −θ) against the delta rule."""
    good = sym.softmax_states_merge(1, 1, 1)
    m1, m2 = sp.symbols("m_1 m_2", real=True)
    s0, s1 = sp.symbols("s_0:2", real=True)
    v = [sp.Symbol("v_0_0", real=True), sp.Symbol("v_1_0", real=True)]
    no_rescale = sp.Matrix([[sp.exp(s0 - m1) + sp.exp(s1 - m2),
                             sp.exp(s0 - m1) * v[0] + sp.exp(s1 - m2) * v[1]]])
    assert not Identity("no_rescale", "", no_rescale, good.rhs).holds()
    ttt = sym.ttt_linear_is_deltanet(2, 1)
    theta = sp.Symbol("theta", positive=True)
    assert not Identity("uphill", "", ttt.lhs.subs(theta, -theta), ttt.rhs).holds()


def test_wrong_reversed_sigmoid_does_not_hold():
    x, A = sp.symbols("x A", positive=True)
    assert not Identity("wrong", "", (1 / (1 + sp.exp(-x))) ** A,
                        sp.exp(-A * sp.log(1 + sp.exp(x)))).holds()


def test_identity_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        Identity("bad", "", sp.zeros(2, 2), sp.zeros(3, 2)).difference()
    with pytest.raises(ValueError):
        sym.phi_entries("value", 2)


@pytest.mark.parametrize("call,match", [
    (lambda: sym.chunked_equals_recurrent_diagonal(T=0), r"chunked_equals_recurrent_diagonal: T must be"),
    (lambda: sym.chunked_equals_recurrent_diagonal(chunk_size=0), r"chunk_size must be a positive int, got 0"),
    (lambda: sym.normalized_linear_attention(F=2.5), r"normalized_linear_attention: F must be"),
    (lambda: sym.titans_linear_is_gated_delta(K=-1), r"titans_linear_is_gated_delta: K must be")])
def test_identity_sizes_are_checked(call, match):
    """A size of 0 was a sympy ShapeError, a chunk of 0 a bare range() error."""
    with pytest.raises(ValueError, match=match):
        call()
