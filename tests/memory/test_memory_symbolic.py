"""dsf.symbolic.memory: the mini-batch identities hold exactly, the gaps have the stated order in the
step size, and wrong claims do not hold (so the checks can fail)."""

import pytest
import sympy as sp

import dsf.symbolic as sym
from dsf.symbolic import Identity

NAMES = ["minibatch_equals_recurrent_dot", "minibatch_closed_form", "minibatch_gap_l2_previous",
         "minibatch_gap_l2_previous_retention", "minibatch_gap_l2_retained"]


@pytest.fixture(scope="module")
def identities():
    return sym.memory_identities()


def test_listed_in_order(identities):
    assert [i.name for i in identities] == NAMES
    assert all(i.statement and "\n" not in i.statement for i in identities)


@pytest.mark.parametrize("index", range(len(NAMES)), ids=NAMES)
def test_holds(identities, index):
    ident = identities[index]
    assert ident.holds(), f"{ident.name}: {ident.difference()}"


@pytest.mark.parametrize("kwargs, order", [({}, 2), (dict(retention=True), 1), (dict(grad_at="retained"), 2)])
def test_leading_order_in_the_step(kwargs, order):
    gap = sym.minibatch_gap_l2(**kwargs).lhs
    found, coeff = sym.leading_order(gap, sp.symbols("theta_1 theta_2", positive=True))
    assert found == order
    if order == 1:  # Titans' forget gate: 2 α₁ θ₂ M₀ k₂ k₂ᵀ, from the undecayed chunk start
        K = 2
        M0 = sp.Matrix(1, K, lambda i, j: sp.Symbol(f"M0_{i}_{j}", real=True))
        k2 = sp.Matrix(K, 1, lambda i, j: sp.Symbol(f"k2_{i}_{j}", real=True))
        a1, th2 = sp.Symbol("alpha_1", positive=True), sp.Symbol("theta_2", positive=True)
        assert Identity("first order", "", coeff, 2 * a1 * th2 * M0 * k2 * k2.T).holds()


def test_wrong_claims_do_not_hold():
    gap = sym.minibatch_gap_l2()
    assert not Identity("no gap", "", gap.lhs, sp.zeros(*gap.lhs.shape)).holds()
    assert not Identity("half the gap", "", gap.lhs, gap.rhs / 2).holds()
    # without the first-order term, Titans' order with a forget gate is not matched
    with_gate = sym.minibatch_gap_l2(retention=True)
    assert not Identity("second order only", "", with_gate.lhs, gap.rhs).holds()
