"""Every compiled zoo mixer against the float64 recurrence on shapes hypothesis draws.

The family tests fix their shapes; here, for each compiled mixer (with the option sets of
``dsf.testing.CASES``), hypothesis draws the form, B, T (1 to 80: one token, odd lengths, past one
chunk of 64), H, head dims that are not powers of two and K ≠ V, and whether to start from a state.
Outputs, final state and the gradient of every input and of the initial state are held to fp32's
1e-5 relative error against ``dsf.recurrent`` in float64 (where the float64 gradient is zero to its
round-off, to 1e-6 absolute; that of a time-invariant parameter, a sum over every token, to 1e-4).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import dsf
import kernels
from dsf.testing import CASES, case_id, flat_tensors, grads, prefix_state, random_case, rel_err, requires_grad

TOL = 1e-5
# a gradient that is exactly zero (normalised attention's dq at T = 1: float64 round-off, ~1e-17, in the
# reference) comes out as fp32 round-off
ATOL = 1e-6
# the gradient of an input without a time dim (qLSTM's a, Aaren's q: a parameter) sums T·B terms, and
# its fp32 error grows with them (1.6e-5 for qLSTM's a at T = 74): gpu_check's fp32 gradient tolerance
PARAM_TOL = 1e-4
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")

# (the Taylor feature map makes K into 1 + K + K², past the kernels' head dims at these K)
KERNEL_CASES = [c for c in CASES if kernels.supports(dsf.zoo.get(c[0], **c[1])) is not None
                and c[1].get("feature_map") != "taylor"]


def _state_leaves(state):
    """The tensors of a state the kernels differentiate (a KV cache is not one of their inputs)."""
    return [] if isinstance(state, dsf.KVCache) else flat_tensors(state)


def _cast(state, dtype):
    if state is None or isinstance(state, dsf.KVCache):
        return state
    if isinstance(state, torch.Tensor):
        return state.to(dtype)
    if isinstance(state, dsf.MemoryState):
        return dsf.MemoryState(tuple(t.to(dtype) for t in state.weights), tuple(t.to(dtype) for t in state.momentum))
    return type(state)(*(t.to(dtype) for t in state))


# Each compiled mixer gets its own draws (a mixer drawn from all of them left the delta rule, Titans
# and Mamba-2 out of CI's fixed eight): an eighth of the profile's examples a mixer, at least one.
PER_CASE = settings(deadline=None, max_examples=max(1, settings.default.max_examples // 8))


@pytest.mark.parametrize("case", KERNEL_CASES, ids=case_id)
@PER_CASE
@given(form=st.sampled_from(["chunked", "recurrent"]), B=st.integers(1, 2),
       T=st.integers(1, 80), H=st.integers(1, 2), K=st.sampled_from([16, 24, 40]), V=st.sampled_from([16, 20, 32]),
       with_state=st.booleans(), seed=st.integers(0, 2 ** 16))
# (hypothesis's first draw is its simplest, T = 1 without a state: these two are every mixer's too)
@example(form="chunked", B=2, T=67, H=2, K=24, V=20, with_state=True, seed=1)
@example(form="recurrent", B=1, T=9, H=1, K=40, V=16, with_state=True, seed=2)
def test_compiled_mixers_on_random_shapes(case, form, B, T, H, K, V, with_state, seed):
    if dsf.zoo.get(case[0]).phi_layout == "channel":
        V = 4   # each value channel is a head of its own (S6, qLSTM, ...): the interpreter runs each
    spec, inp = random_case(*case, B, T, H, K, V, seed)
    S0 = prefix_state(spec, inp, 3, seed) if with_state else None
    x64, s64 = requires_grad(inp), requires_grad(S0)
    o_ref, S_ref = dsf.recurrent(spec, initial_state=s64, **x64)
    leaves64 = list(x64.values()) + _state_leaves(s64)
    g_ref = grads([o_ref, *flat_tensors(S_ref)], leaves64, seed)

    x32 = requires_grad({n: t.float() for n, t in inp.items()})
    s32 = requires_grad(_cast(S0, torch.float32))
    o, S = getattr(kernels.compile(spec), form)(initial_state=s32, output_final_state=True, **x32)
    label = f"{case_id(case)} {form} B={B} T={T} H={H} K={K} V={V} state={with_state}"
    assert rel_err(o, o_ref) < TOL, f"{label}: output {rel_err(o, o_ref):.1e}"
    finals, finals_ref = flat_tensors(S), flat_tensors(S_ref)
    assert len(finals) == len(finals_ref), label
    for a, b in zip(finals, finals_ref):
        assert rel_err(a, b) < TOL, f"{label}: final state {rel_err(a, b):.1e}"
    leaves32 = list(x32.values()) + _state_leaves(s32)
    g = grads([o, *finals], leaves32, seed)
    names = list(x32) + [f"initial_state[{i}]" for i in range(len(leaves32) - len(x32))]
    untimed = {i.name for i in spec.inputs if "T" not in i.dims}
    for n, a, b in zip(names, g, g_ref):
        tol = PARAM_TOL if n in untimed else TOL
        # (the absolute bound only where the float64 gradient is zero but for its own round-off)
        exact_zero = b.abs().max() < 1e-12
        assert rel_err(a, b) < tol or (exact_zero and a.abs().max() < ATOL), f"{label}: d{n} {rel_err(a, b):.1e}"


@pytest.mark.parametrize("case", KERNEL_CASES, ids=case_id)
@PER_CASE
@given(B=st.integers(1, 2), T=st.integers(2, 70), H=st.integers(1, 2),
       K=st.sampled_from([16, 24, 40]), V=st.sampled_from([16, 20, 32]), inplace=st.booleans(),
       seed=st.integers(0, 2 ** 16))
@example(B=2, T=66, H=2, K=24, V=20, inplace=True, seed=1)
def test_a_decoding_step_continues_a_prefill_on_random_shapes(case, B, T, H, K, V, inplace, seed):
    """chunked over T − 1 tokens, then ``step`` on the last (in place or not, no autograd: the one-launch
    paths): the last output and the state as the float64 recurrence's."""
    if dsf.zoo.get(case[0]).phi_layout == "channel":
        V = 4
    spec, inp = random_case(*case, B, T, H, K, V, seed)
    o_ref, S_ref = dsf.recurrent(spec, **inp)
    timed = {i.name for i in spec.inputs if "T" in i.dims}
    x = {n: t.float() for n, t in inp.items()}
    m = kernels.compile(spec)
    with torch.no_grad():
        _, state = m.chunked(output_final_state=True, **{n: (t[:, :-1] if n in timed else t) for n, t in x.items()})
        o, new = m.step(state, inplace=inplace, **{n: (t[:, -1] if n in timed else t) for n, t in x.items()})
    label = f"{case_id(case)} B={B} T={T} H={H} K={K} V={V} inplace={inplace}"
    assert rel_err(o, o_ref[:, -1]) < TOL, f"{label}: output {rel_err(o, o_ref[:, -1]):.1e}"
    if inplace and isinstance(state, (torch.Tensor, dsf.MemoryState)):
        assert new is state, label
    assert len(flat_tensors(new)) == len(flat_tensors(S_ref)), label
    for a, b in zip(flat_tensors(new), flat_tensors(S_ref)):
        assert a.shape == b.shape and rel_err(a, b) < TOL, f"{label}: state {rel_err(a, b):.1e}"
