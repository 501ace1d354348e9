"""Numerical safety of the memories at their singular points, and clear errors for what is missing."""

import pytest
import torch

import dsf
from dsf.testing import flat_tensors, grads, requires_grad
from dsf.zoo.memory import memory_spec


def _all_finite(spec, d, S0=None, forms=("recurrent", "minibatch")):
    """Outputs, final state and every gradient (inputs and initial state) are finite, in each form."""
    d = requires_grad(d)
    S0 = None if S0 is None else requires_grad(S0)
    leaves = list(d.values()) + ([] if S0 is None else flat_tensors(S0))
    for form in forms:
        run = dsf.recurrent if form == "recurrent" else \
            (lambda s, **kw: dsf.chunked(s, chunk_size=2, approximate="minibatch", **kw))
        out = flat_tensors(run(spec, initial_state=S0, **d))
        assert all(torch.isfinite(x).all() for x in out), form
        for g in grads(out, leaves, seed=0):
            assert torch.isfinite(g).all(), form
    return d


@pytest.mark.parametrize("memory", ["vector", "matrix", "mlp"])
@pytest.mark.parametrize("algorithm", ["gd", "momentum"])
def test_lq_normalisation_of_a_zero_state(memory, algorithm):
    """A / (‖A‖_q^q + ε)^{(q−2)/q} at A = 0 reads as 0, with finite derivatives."""
    spec = memory_spec(memory, "lp", "lq", algorithm)
    d = spec.random_inputs(2, 5, 2, 3, 3, seed=0)
    if memory == "mlp":
        d.update(w1=torch.zeros_like(d["w1"]), w2=torch.zeros_like(d["w2"]))
    d["v"][:, 0] = 0.0  # the first step's error is then exactly zero as well
    o, S = dsf.recurrent(spec, **d)
    assert torch.isfinite(o).all()
    _all_finite(spec, d)
    zero = dsf.MemoryState(tuple(torch.zeros_like(w) for w in S.weights),
                           tuple(torch.zeros_like(z) for z in S.momentum))
    _all_finite(spec, d, zero)


@pytest.mark.parametrize("memory", ["vector", "matrix", "mlp"])
def test_huber_exactly_at_the_threshold(memory):
    """‖e‖ = δ exactly (and e = 0 exactly): ψ(e) = e there, and every derivative is finite."""
    spec = memory_spec(memory, "huber", "l2", "gd")
    d = spec.random_inputs(1, 4, 1, 2, 2, seed=1)
    delta = spec.options["delta"]
    if memory == "mlp":
        d.update(w1=torch.zeros_like(d["w1"]), w2=torch.zeros_like(d["w2"]))
        d["k"][:, 0] = 0.0   # M(k) = k + 0 = 0 at the first step: e = −v
        d["k"][:, 1] = 0.0
    d["v"][:, 0] = 0.0
    d["v"][:, 0, :, 0] = delta          # e_0 = −v_0, ‖e_0‖ = δ exactly
    d["v"][:, 1] = 0.0                  # e_1 = 0 exactly (the zero-state memory reads 0 at k = 0)
    if memory != "mlp":
        d["k"][:, 1] = 0.0
    timed = {i.name for i in spec.inputs if "T" in i.dims}
    first = {n: x[:, :1] if n in timed else x for n, x in d.items()}      # the step at ‖e‖ = δ
    o_h, _ = dsf.recurrent(spec, **first)
    o_2, _ = dsf.recurrent(memory_spec(memory, "l2", "l2", "gd"), **first)
    assert torch.allclose(o_h, o_2, rtol=0, atol=1e-15)  # at the threshold Huber is the ℓ2 step
    _all_finite(spec, d)


@pytest.mark.parametrize("memory", ["vector", "matrix", "mlp"])
def test_kl_with_zero_entries(memory):
    """log 0 is read as log 1e-30: zero weights (initial state or MLP init) stay finite."""
    spec = memory_spec(memory, "l2", "kl", "gd")
    d = spec.random_inputs(2, 5, 2, 3, 3, seed=2)
    if memory == "mlp":
        d["w1"] = d["w1"].clone()
        d["w1"][..., 0, :] = 0.0
        d["w2"] = torch.zeros_like(d["w2"])
    _all_finite(spec, d)
    S = dsf.recurrent(spec, **d)[1]
    zero = dsf.MemoryState(tuple(torch.where(torch.rand_like(w) < 0.5, torch.zeros_like(w), w)
                                 for w in S.weights))
    _all_finite(spec, d, zero)
    o, S = dsf.recurrent(spec, **d)
    sums = S.weights[0].sum(-2 if memory != "vector" else -1)
    assert torch.allclose(sums, torch.ones_like(sums))  # each column stays a distribution


def test_elastic_net_and_lp_edges():
    for bias in ("lp", "l2"):
        spec = memory_spec("matrix", bias, "elastic_net", "momentum").with_options(l1=0.5)
        d = spec.random_inputs(1, 6, 1, 2, 2, seed=3)
        d["v"][:, 0] = 0.0  # zero error on a zero state: sign(0), soft threshold at 0
        _all_finite(spec, d)
    spec = memory_spec("matrix", "lp", "none", "gd").with_options(p=1.0)
    d = spec.random_inputs(1, 4, 1, 2, 2, seed=3)
    d["v"][:, 0] = 0.0
    _all_finite(spec, d)


# ---- errors ------------------------------------------------------------------------------------


def test_missing_forms_say_what_to_do():
    d = dsf.random_inputs("titans", B=1, T=4, H=1, K=2, V=2)
    with pytest.raises(ValueError, match=r"titans: no Φ .* not linear in its state"):
        dsf.phi("titans", **d)
    with pytest.raises(ValueError, match=r"titans: no Φ"):
        dsf.parallel("titans", **d)
    with pytest.raises(ValueError, match=r"titans: no exact chunked form .* approximate='minibatch'"):
        dsf.chunked("titans", **d)
    with pytest.raises(ValueError, match=r"mamba2: approximate='minibatch' is for memories"):
        dsf.chunked("mamba2", approximate="minibatch", **dsf.random_inputs("mamba2", B=1, T=3))
    with pytest.raises(ValueError, match=r"approximate must be None \(exact\) or 'minibatch'"):
        dsf.chunked("titans", approximate="mini", **d)


def test_builder_and_input_errors():
    with pytest.raises(ValueError, match="implicit step has a closed form only"):
        memory_spec("mlp", "l2", "none", "implicit")
    with pytest.raises(ValueError, match="key-wise gate needs a vector or matrix memory"):
        memory_spec("mlp", "l2", "l2", gate="key")
    with pytest.raises(ValueError, match="bias must be one of"):
        memory_spec("matrix", "cosine")
    d = memory_spec("matrix", "l2").random_inputs(1, 2, 1, 3, 2)
    with pytest.raises(ValueError, match=r"vector memory \(M\(x\) = m ⊙ x\) needs K == V, got K=3, V=2"):
        dsf.recurrent(memory_spec("vector", "l2"), **d)
    with pytest.raises(TypeError, match="memory='linear' starts from a zero matrix memory"):
        dsf.recurrent("titans", memory="linear", **dsf.random_inputs("titans", B=1, T=2, H=1, K=2, V=2))
    spec = memory_spec("matrix", "l2", "kl")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['grad_at'\]"):
        spec.with_options(grad_at="retained")
    from dsf.terms import MemoryTerms
    x = torch.zeros(1, 2, 1, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="grad_at='retained' is defined for the l2 and elastic_net"):
        MemoryTerms(q=x, k=x, v=x, theta=x[..., 0], retention="lq", g=x[..., 0], grad_at="retained")
    with pytest.raises(ValueError, match="log_eta .* must be given exactly when algorithm='momentum'"):
        MemoryTerms(q=x, k=x, v=x, theta=x[..., 0], algorithm="momentum")


def test_initial_state_errors():
    d = dsf.random_inputs("ttt_linear", B=1, T=3, H=2, K=2, V=2)
    with pytest.raises(TypeError, match=r"initial_state must be a dsf.MemoryState\(weights, momentum\)"):
        dsf.recurrent("ttt_linear", initial_state=torch.zeros(1, 2, 2, 2), **d)
    with pytest.raises(ValueError, match=r"initial_state.weights\[0\] must have shape"):
        dsf.chunked("ttt_linear", initial_state=dsf.MemoryState((torch.zeros(1, 2, 2, 3),)), **d)
    with pytest.raises(ValueError, match=r"initial_state.momentum must hold 0 tensors, got 1"):
        dsf.recurrent("ttt_linear", initial_state=dsf.MemoryState((torch.zeros(1, 2, 2, 2),),
                                                                  (torch.zeros(1, 2, 2, 2),)), **d)
