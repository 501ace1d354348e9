"""The memory zoo: known mixers rebuilt from their four Miras choices, the two orders of decay and
step, the papers' oracles under their options, and the closed-form inner gradients against autograd."""

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import dsf
from dsf.forms import prepare
from dsf.forms.memory import read, weight_grads
from dsf.testing import rel_err
from dsf.zoo.memory import AS_MEMORY, as_memory, build, choices, memory_spec

seeds = st.integers(0, 2 ** 16)


@pytest.mark.parametrize("name", list(AS_MEMORY))
@given(seed=seeds, T=st.integers(1, 12), chunk=st.integers(1, 5))
def test_known_mixers_are_memories(name, seed, T, chunk):
    """matrix + dot + ℓ2 + GD == mamba2 (θ = 1), matrix + ℓ2 + none + GD == deltanet (θ = β), ..."""
    d = dsf.random_inputs(name, B=2, T=T, H=2, K=3, V=4, seed=seed)
    spec, m = as_memory(name, **d)
    o, S = dsf.recurrent(name, **d)
    o_m, S_m = dsf.recurrent(spec, **m)
    assert rel_err(o_m, o) < 1e-12 and rel_err(S_m.weights[0], S) < 1e-12
    o_c, S_c = dsf.chunked(spec, chunk_size=chunk, **m)
    assert rel_err(o_c, o) < 1e-9 and rel_err(S_c.weights[0], S) < 1e-9
    assert rel_err(dsf.parallel(spec, **m), o) < 1e-9


def test_the_miras_coordinates_match_the_builds():
    """Each rebuilt mixer's table entry names the bias and retention its memory_spec uses."""
    words = {"dot": "dot product", "l2": "ℓ2", "none": "none"}
    for name, (c, _, _) in AS_MEMORY.items():
        m = dsf.zoo.get(name).miras
        assert m.memory == "matrix" and m.bias == words[c["bias"]]
        assert m.retention.startswith(words[c["retention"]])
        assert ("implicit" in m.algorithm) == (c.get("algorithm") == "implicit")


@given(seed=seeds, T=st.integers(1, 10), chunk=st.integers(1, 4))
def test_titans_order_is_gated_deltanet_on_scaled_values(seed, T, chunk):
    """The gradient at the undecayed state (grad_at="previous", Titans), S ← αS − θk(kᵀS − vᵀ), is
    Gated DeltaNet with β = θ/α run on the values αv; at the decayed state it is Gated DeltaNet."""
    prev = memory_spec("matrix", "l2", "l2", "gd")
    d = prev.random_inputs(2, T, 2, 3, 3, seed=seed)
    a = torch.exp(d["g"])
    gdn = dict(q=d["q"], k=d["k"], g=d["g"])
    o = dsf.recurrent(prev, **d)[0]
    assert rel_err(o, dsf.recurrent("gated_deltanet", v=a[..., None] * d["v"], beta=d["theta"] / a, **gdn)[0]) < 1e-12
    assert rel_err(dsf.chunked(prev, chunk_size=chunk, **d)[0], o) < 1e-9
    o_ret = dsf.recurrent(prev.with_options(grad_at="retained"), **d)[0]
    assert rel_err(o_ret, dsf.recurrent("gated_deltanet", v=d["v"], beta=d["theta"], **gdn)[0]) < 1e-12
    if T > 1:  # from a zero state the first step is the same; then the orders differ
        assert rel_err(o_ret, o) > 1e-6


def test_ttt_linear_is_deltanet_with_twice_the_step():
    d = dsf.random_inputs("ttt_linear", B=1, T=9, H=2, K=3, V=3, seed=4)
    o = dsf.chunked("ttt_linear", chunk_size=4, **d)[0]
    ref = dsf.recurrent("deltanet", q=d["q"], k=d["k"], v=d["v"], beta=2 * d["theta"], scale=1.0)[0]
    assert rel_err(o, ref) < 1e-12


@pytest.mark.parametrize("name, options", [("titans", dict(memory="linear")), ("titans", dict(scale=0.5)),
                                           ("moneta", dict(p=4.0, norm_q=3.0)), ("yaad", dict(delta=0.1)),
                                           ("memora", dict(kl_scale=2.0)), ("ttt_mlp", dict(scale=2.0))])
@given(seed=seeds, T=st.integers(1, 8))
def test_oracles_with_options(name, options, seed, T):
    """Each paper's loop (autograd for the inner gradient) == the generic recurrence, off-default."""
    spec = dsf.zoo.get(name, **options)
    d = dsf.random_inputs(name, B=2, T=T, H=2, K=3, V=3, seed=seed, **options)
    assert rel_err(spec.run_oracle(**d), dsf.recurrent(spec, **d)[0]) < 1e-9


def test_titans_linear_takes_no_mlp_weights():
    assert "w1" not in dsf.random_inputs("titans", B=1, T=2, H=1, K=2, V=2, memory="linear")
    assert dsf.zoo.get("titans").forms() == ("recurrent",)
    assert dsf.zoo.get("titans", memory="linear").forms() == ("recurrent", "parallel", "chunked")


def _inner_choices():
    """One spec per (memory, bias), plus deeper, SiLU and non-residual MLPs."""
    out = {(c["memory"], c["bias"]): build(c) for c in choices() if c["retention"] == "none"
           and c["algorithm"] == "gd"}
    out[("mlp3", "huber")] = memory_spec("mlp", "huber", "none", "gd", depth=3)
    out[("mlp", "silu")] = memory_spec("mlp", "lp", "none", "gd").with_options(activation="silu")
    out[("mlp", "no residual")] = memory_spec("mlp", "l2", "none", "gd").with_options(residual=False)
    return out


@pytest.mark.parametrize("key", list(_inner_choices()), ids=lambda k: "-".join(k))
@given(seed=seeds)
def test_closed_form_inner_gradients_are_autograds(key, seed):
    """weight_grads (hand-written backward) == torch.func.grad of the inner loss, per (b, h)."""
    spec = _inner_choices()[key]
    V = 3 if spec.options.get("residual") is False else 4
    d = spec.random_inputs(2, 1, 2, 4, V, seed=seed)
    _, terms = prepare(spec, d)
    W = tuple(torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
              for x in dsf.recurrent(spec, **d)[1].weights)
    k, v = terms.k[:, 0], terms.v[:, 0]

    def loss(W):
        e = read(terms, W, k) - v
        per = {"dot": -(read(terms, W, k) * v).sum(-1), "l2": 0.5 * (e * e).sum(-1),
               "lp": (e.abs() ** terms.p).sum(-1) / terms.p,
               "huber": torch.where(e.norm(dim=-1) <= terms.delta, 0.5 * (e * e).sum(-1),
                                    terms.delta * (e.norm(dim=-1) - 0.5 * terms.delta)),
               # piecewise: ‖e‖² near, δ‖e‖₁ beyond; its gradient is eq. 26's step on either side
               "huber_mix": torch.where(e.norm(dim=-1) <= terms.delta, (e * e).sum(-1),
                                        terms.delta * e.abs().sum(-1))}[terms.bias]
        return per.sum()  # the rows and heads are independent memories

    auto = torch.func.grad(loss)(W)
    for a, b in zip(weight_grads(terms, W, k, v), auto):
        assert rel_err(a, b) < 1e-12


def test_a_deeper_mlp_runs_every_form_it_has():
    spec = memory_spec("mlp", "l2", "l2", "momentum", depth=3)
    assert [i.name for i in spec.inputs][-3:] == ["w1", "w2", "w3"]
    d = spec.random_inputs(1, 6, 2, 2, 2, seed=0)
    assert d["w2"].shape == (2, 8, 8)
    o, S = dsf.recurrent(spec, **d)
    assert len(S.weights) == 3 and len(S.momentum) == 3
    assert rel_err(dsf.chunked(spec, chunk_size=1, approximate="minibatch", **d)[0], o) < 1e-12


def test_spec_metadata():
    for name in ("titans", "moneta", "yaad", "memora", "ttt_linear", "ttt_mlp"):
        spec = dsf.zoo.get(name)
        assert spec.transition == dsf.Transition.GRADIENT_STEP and spec.miras is not None
        assert dataclasses.replace(spec).forms() == spec.forms()
    assert memory_spec("vector", "dot", "l2").phi_layout == "channel"
