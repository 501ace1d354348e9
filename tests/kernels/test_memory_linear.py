"""Gradient-step memories linear in their state, compiled by the diagonal, delta and memory families.

A matrix memory without momentum is decayed linear attention (dot-product bias, write gate θ), the delta
rule (ℓ2 bias, β = θ; gated where the gradient is taken at the retained state) or, for the ℓ2 bias under
ℓ2 retention in Titans' order, the momentum kernels with η = 0. Each is checked against the float64
``dsf.recurrent`` of its own spec: outputs, final state, the gradient of every input and of the
initial state, packed sequences and decoding steps. Buffers the kernels allocate are poisoned with NaN.
"""

from __future__ import annotations

import re

import pytest
import torch

import dsf
import kernels
from dsf.testing import rel_err
from dsf.zoo.memory import memory_spec

TOL = 1e-5
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")


# (spec, family it compiles to)
SPECS = {
    "ttt_linear": (lambda: dsf.zoo.get("ttt_linear"), "delta"),
    "dot-l2-key-gd": (lambda: memory_spec("matrix", "dot", "l2", "gd", gate="key"), "diag"),
    "dot-none-implicit": (lambda: memory_spec("matrix", "dot", "none", "implicit"), "diag"),
    "l2-l2-implicit": (lambda: memory_spec("matrix", "l2", "l2", "implicit"), "delta"),
    "l2-l2-gd": (lambda: memory_spec("matrix", "l2", "l2", "gd"), "memory"),
}


def _inputs(spec, B, T, H, seed, K=16, V=16):
    return spec.random_inputs(B, T, H, K, V, dtype=torch.float64, seed=seed)


def _reference(spec, d, S0, do, dS):
    x = {n: t.clone().requires_grad_() for n, t in d.items()}
    s0 = S0.clone().requires_grad_()
    o, fin = dsf.recurrent(spec, initial_state=dsf.MemoryState((s0,), ()), **x)
    grads = torch.autograd.grad((o * do).sum() + (fin.weights[0] * dS).sum(), [*x.values(), s0])
    return o, fin.weights[0], dict(zip([*x, "S0"], grads))


@pytest.mark.parametrize("name", list(SPECS))
def test_supports_names_the_family(name):
    make, family = SPECS[name]
    assert kernels.supports(make()) == {"family": family, "chunked": "chunk", "recurrent": True, "step": True}


@pytest.mark.parametrize("form", ["chunked", "recurrent"])
@pytest.mark.parametrize("name,T,opts", [
    ("ttt_linear", 1, {}), ("ttt_linear", 21, {}), ("dot-l2-key-gd", 19, {}), ("dot-none-implicit", 13, {}),
    ("l2-l2-implicit", 17, {}), ("l2-l2-gd", 23, {}), ("l2-l2-gd", 9, {"grad_at": "retained"}),
    # past one chunk of the compiled mixer's 64 tokens
    ("ttt_linear", 70, {}), ("dot-l2-key-gd", 67, {}), ("l2-l2-gd", 66, {})])
def test_forward_state_and_gradients_match_the_float64_recurrence(name, T, opts, form):
    spec = SPECS[name][0]().with_options(**opts)
    d = _inputs(spec, 2, T, 2, seed=T)
    gen = torch.Generator().manual_seed(T)
    S0 = 0.3 * torch.randn(2, 2, 16, 16, generator=gen, dtype=torch.float64)
    do = torch.randn(2, T, 2, 16, generator=gen, dtype=torch.float64)
    dS = torch.randn(2, 2, 16, 16, generator=gen, dtype=torch.float64)
    o_ref, S_ref, g_ref = _reference(spec, d, S0, do, dS)
    x = {n: t.float().requires_grad_() for n, t in d.items()}
    s0 = S0.float().requires_grad_()
    o, fin = getattr(kernels.compile(spec), form)(initial_state=dsf.MemoryState((s0,), ()),
                                                  output_final_state=True, **x)
    assert isinstance(fin, dsf.MemoryState) and fin.momentum == ()
    assert rel_err(o, o_ref) < TOL and rel_err(fin.weights[0], S_ref) < TOL
    grads = torch.autograd.grad((o * do.float()).sum() + (fin.weights[0] * dS.float()).sum(), [*x.values(), s0])
    for n, g in zip([*x, "S0"], grads):
        assert rel_err(g, g_ref[n]) < TOL, n


@pytest.mark.parametrize("name", ["ttt_linear", "dot-l2-key-gd", "l2-l2-gd"])
def test_packed_sequences_and_steps_continue_the_recurrence(name):
    """cu_seqlens gives each sequence's state; steps (in place too) carry on from a chunked prefill."""
    spec = SPECS[name][0]()
    d = _inputs(spec, 1, 14, 2, seed=5)
    f = {n: t.float() for n, t in d.items()}
    m = kernels.compile(spec)
    o, fin = m.chunked(cu_seqlens=torch.tensor([0, 5, 14]), output_final_state=True, **f)
    for i, (a, b) in enumerate([(0, 5), (5, 14)]):
        o_r, S_r = dsf.recurrent(spec, **{n: t[:, a:b] for n, t in d.items()})
        assert rel_err(o[:, a:b], o_r) < TOL and rel_err(fin.weights[0][i:i + 1], S_r.weights[0]) < TOL
    o_ref, S_ref = dsf.recurrent(spec, **d)
    _, state = m.chunked(output_final_state=True, **{n: t[:, :10] for n, t in f.items()})
    outs = []
    for t in range(10, 14):
        o_t, new = m.step(state, inplace=t % 2 == 0, **{n: x[:, t] for n, x in f.items()})
        assert (new is state) == (t % 2 == 0)
        state, outs = new, outs + [o_t]
    assert rel_err(torch.stack(outs, 1), o_ref[:, 10:]) < TOL
    assert rel_err(state.weights[0], S_ref.weights[0]) < TOL


@pytest.mark.parametrize("name", ["ttt_linear", "l2-l2-gd"])
def test_a_memory_state_of_the_wrong_kind_is_refused_by_name(name):
    spec = SPECS[name][0]()
    f = {n: t.float() for n, t in _inputs(spec, 1, 3, 2, seed=0).items()}
    m, S, who = kernels.compile(spec), torch.zeros(1, 2, 16, 16), re.escape(spec.name)
    with pytest.raises(TypeError, match=rf"{who}: initial_state must be a dsf.MemoryState\(\(S,\), \(\)\)"):
        m.chunked(initial_state=S, **f)
    with pytest.raises(TypeError, match=rf"{who}: state must be a dsf.MemoryState.*1 weights and 1 momenta"):
        m.step(dsf.MemoryState((S,), (S,)), **{n: x[:, 0] for n, x in f.items()})
    with pytest.raises(ValueError, match=rf"{who}: initial_state.weights\[0\].* must have shape "
                                         r"\[B, H, K, V\] = \(1, 2, 16, 16\), got \(1, 2, 16, 8\)"):
        m.recurrent(initial_state=dsf.MemoryState((S[..., :8],), ()), **f)


def test_memories_without_a_kernel_stay_refused():
    """MLP memories, key-wise gates on the ℓ2 bias and vector memories have no kernel family."""
    for spec in (dsf.zoo.get("ttt_mlp"), memory_spec("matrix", "l2", "l2", "gd", gate="key"),
                 memory_spec("vector", "dot", "l2", "gd")):
        assert kernels.supports(spec) is None, spec.name
        with pytest.raises(kernels.UnsupportedMixer):
            kernels.compile(spec)


@pytest.mark.parametrize("name,module", [("ttt_linear", "kernels.delta.recurrent"),
                                         ("dot-l2-key-gd", "kernels.diag.recurrent")])
@pytest.mark.parametrize("inplace", [True, False])
def test_a_decoding_step_of_a_memory_is_one_launch(name, module, inplace, count_launches, monkeypatch):
    """Without autograd a step of a memory run by the diagonal or delta family launches that family's
    step kernel once (its MemoryState's tensor is the state it reads and writes), as the mixer's would,
    not the general path (the fused recurrent kernel on a one-token sequence, then a copy)."""
    import importlib

    spec = SPECS[name][0]()
    d = _inputs(spec, 2, 4, 2, seed=9)
    o_ref, S_ref = dsf.recurrent(spec, **d)
    m = kernels.compile(spec)
    with torch.no_grad():
        _, state = m.chunked(output_final_state=True, **{n: t[:, :3].float() for n, t in d.items()})
    launches = count_launches(importlib.import_module(module), "_fwd_kernel")
    monkeypatch.setattr(kernels.CompiledMixer, "_run", lambda *a, **k: pytest.fail("the general path"))
    with torch.no_grad():
        o, new = m.step(state, inplace=inplace, **{n: t[:, 3].float() for n, t in d.items()})
    assert len(launches) == 1 and (new is state) == inplace and isinstance(new, dsf.MemoryState)
    assert rel_err(o, o_ref[:, 3]) < TOL and rel_err(new.weights[0], S_ref.weights[0]) < TOL


def test_a_grad_at_given_with_the_call_runs_the_recurrence_it_names():
    """Compiled with grad_at="retained" (the gated delta rule), called with "previous" (Titans' order):
    the memory kernels run that call (it was a bare AssertionError), in every form and step."""
    spec = memory_spec("matrix", "l2", "l2", "gd").with_options(grad_at="retained")
    assert kernels.supports(spec)["family"] == "delta"
    d = _inputs(spec, 1, 9, 2, seed=4)
    o_ref, S_ref = dsf.recurrent(spec, grad_at="previous", **d)
    f = {n: t.float() for n, t in d.items()}
    m = kernels.compile(spec)
    for form in ("chunked", "recurrent"):
        o, S = getattr(m, form)(grad_at="previous", output_final_state=True, **f)
        assert rel_err(o, o_ref) < TOL and rel_err(S.weights[0], S_ref.weights[0]) < TOL, form
    _, state = m.chunked(grad_at="previous", output_final_state=True, **{n: t[:, :7] for n, t in f.items()})
    with torch.no_grad():
        for t in (7, 8):
            o_t, state = m.step(state, grad_at="previous", **{n: x[:, t] for n, x in f.items()})
            assert rel_err(o_t, o_ref[:, t]) < TOL
    assert rel_err(state.weights[0], S_ref.weights[0]) < TOL


@pytest.mark.parametrize("name", ["dot-l2-key-gd", "ttt_linear"])
def test_a_float32_step_size_beside_16bit_inputs_decodes(name):
    """θ in float32 beside bf16 q, k, v (as the spec allows): the one-launch step took θ v in float32
    and the kernel refused it by its own name; now it runs as chunked does."""
    spec = SPECS[name][0]()
    d = _inputs(spec, 2, 5, 2, seed=6)
    o_ref, _ = dsf.recurrent(spec, **d)
    x = {n: (t.bfloat16() if n in ("q", "k", "v") else t.float()) for n, t in d.items()}
    m = kernels.compile(spec)
    with torch.no_grad():
        _, state = m.chunked(output_final_state=True, **{n: t[:, :3] for n, t in x.items()})
        for t in (3, 4):
            o_t, state = m.step(state, **{n: v[:, t] for n, v in x.items()})
            assert o_t.dtype == torch.bfloat16 and rel_err(o_t.double(), o_ref[:, t]) < 2e-2


def test_a_step_from_a_bare_tensor_or_list_fields_is_handled():
    """A bare tensor where the memory's state goes is refused by name (it reached the fast step's
    lowering and failed there with an AttributeError); a MemoryState of lists steps in place."""
    spec = SPECS["ttt_linear"][0]()
    d = _inputs(spec, 1, 2, 2, seed=7)
    f = {n: t[:, 0].float() for n, t in d.items()}
    m, S = kernels.compile(spec), torch.zeros(1, 2, 16, 16)
    with torch.no_grad():
        with pytest.raises(TypeError, match=r"ttt_linear: state must be a dsf.MemoryState\(\(S,\), \(\)\)"):
            m.step(S, **f)
        listed = dsf.MemoryState((S.clone(),), [])   # a tuple and a list: concatenating them failed
        o, new = m.step(listed, inplace=True, **f)
    o_ref, S_ref = dsf.recurrent(spec, **{n: t[:, :1] for n, t in d.items()})
    assert new is listed and rel_err(o, o_ref[:, 0]) < TOL and rel_err(listed.weights[0], S_ref.weights[0]) < TOL
