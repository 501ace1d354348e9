"""The mini-batch (chunk-start) approximation: exact for the dot-product bias, a bounded error that
shrinks with the chunk, second order in the step size unless a retention gate is skipped, and the
exact two-token gap that dsf.symbolic derives."""

import pytest
import sympy as sp
import torch
from hypothesis import given
from hypothesis import strategies as st

import dsf
import dsf.symbolic as sym
from dsf.forms.memory_table import minibatch_errors, table_specs
from dsf.testing import rel_err
from dsf.zoo.memory import memory_spec

seeds = st.integers(0, 2 ** 16)


@pytest.mark.parametrize("memory", ["vector", "matrix"])
@pytest.mark.parametrize("retention, algorithm", [("none", "gd"), ("l2", "gd"), ("l2", "momentum")])
@given(seed=seeds, T=st.integers(1, 12), chunk=st.integers(1, 12))
def test_dot_bias_minibatch_is_exact(memory, retention, algorithm, seed, T, chunk):
    """∇ of −⟨M(k), v⟩ does not depend on a linear memory: every chunk size gives the recurrence."""
    spec = memory_spec(memory, "dot", retention, algorithm)
    d = spec.random_inputs(2, T, 2, 3, 3, seed=seed)
    o, S = dsf.recurrent(spec, **d)
    o_m, S_m = dsf.chunked(spec, chunk_size=chunk, approximate="minibatch", **d)
    assert rel_err(o_m, o) < 1e-12 and rel_err(S_m.weights[0], S.weights[0]) < 1e-12


@pytest.mark.parametrize("label", [label for label, _ in table_specs()][:-1])
def test_error_is_bounded_and_shrinks_with_the_chunk(label):
    """Mean over seeds of ‖o_mb − o‖/‖o‖ at T = 16: zero at C = 1, non-decreasing in C, below 1."""
    spec = dict(table_specs())[label]
    _, _, raw = minibatch_errors([(label, spec)], chunk_sizes=(1, 2, 4, 8, 16), T=16, K=4, seeds=(0, 1, 2))
    errs = raw[label]
    assert errs[0] < 1e-12
    assert all(0 < e < 1.0 for e in errs[1:]), errs
    assert all(a <= b * 1.05 for a, b in zip(errs, errs[1:])), errs


def _gap(spec, d, S0, chunk):
    """‖S_mb − S_rec‖ of the final states, from the initial state S0."""
    _, S = dsf.recurrent(spec, initial_state=S0, **d)
    _, S_m = dsf.chunked(spec, chunk_size=chunk, approximate="minibatch", initial_state=S0, **d)
    return (S_m.weights[0] - S.weights[0]).norm().item()


@pytest.mark.parametrize("retention, grad_at, order", [("none", "previous", 2), ("l2", "previous", 1),
                                                       ("l2", "retained", 2)])
@given(seed=seeds)
def test_order_in_the_step_size(retention, grad_at, order, seed):
    """ℓ2 bias, from an O(1) state: the gap of one 4-token chunk shrinks like θ² — or like θ when
    Titans' order skips the retention at the chunk start (dsf.symbolic.minibatch_gap_l2)."""
    spec = memory_spec("matrix", "l2", retention, "gd")
    spec = spec.with_options(grad_at=grad_at) if retention != "none" else spec
    d = spec.random_inputs(1, 4, 1, 3, 2, seed=seed)
    S0 = dsf.MemoryState((torch.randn(1, 1, 3, 2, dtype=torch.float64,
                                      generator=torch.Generator().manual_seed(seed)),))
    gaps = []
    for scale in (1e-2, 1e-3):
        gaps.append(_gap(spec, {**d, "theta": d["theta"] * scale}, S0, chunk=4))
    ratio = gaps[0] / gaps[1]
    assert (50 < ratio < 200) if order == 2 else (5 < ratio < 20), ratio


@given(seed=seeds)
def test_two_token_gap_is_the_symbolic_one(seed):
    """dsf's recurrent − mini-batch after two tokens equals minibatch_gap_l2 with numbers put in
    (paper orientation M = Sᵀ, Titans' θ = θ/2 on ‖·‖², forget α = 1 − exp(g))."""
    K = 2
    spec = memory_spec("matrix", "l2", "l2", "gd")
    d = spec.random_inputs(1, 2, 1, K, 1, seed=seed)
    S0 = torch.randn(1, 1, K, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    _, S = dsf.recurrent(spec, initial_state=dsf.MemoryState((S0,)), **d)
    _, S_m = dsf.chunked(spec, chunk_size=2, approximate="minibatch", initial_state=dsf.MemoryState((S0,)), **d)
    numeric = (S.weights[0] - S_m.weights[0])[0, 0, :, 0]
    ident = sym.minibatch_gap_l2(K, retention=True)
    k, v = d["k"][0, :, 0], d["v"][0, :, 0, 0]
    th, alpha = d["theta"][0, :, 0] / 2, 1 - torch.exp(d["g"][0, :, 0])
    subs = {sp.Symbol(f"M0_0_{i}", real=True): float(S0[0, 0, i, 0]) for i in range(K)}
    for t in (0, 1):
        subs.update({sp.Symbol(f"k{t + 1}_{i}_0", real=True): float(k[t, i]) for i in range(K)})
        subs[sp.Symbol(f"v{t + 1}", real=True)] = float(v[t])
        subs[sp.Symbol(f"theta_{t + 1}", positive=True)] = float(th[t])
        subs[sp.Symbol(f"alpha_{t + 1}", positive=True)] = float(alpha[t])
    for side in (ident.lhs, ident.rhs):
        value = torch.tensor([float(x) for x in side.subs(subs)], dtype=torch.float64)
        assert rel_err(numeric, value) < 1e-10
