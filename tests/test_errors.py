"""Bad input gets a clear error naming the argument, the expected and the given shape or dtype."""

import dataclasses

import numpy as np
import pytest
import torch

import dsf


def _inp(name="gated_deltanet", **kw):
    return dsf.random_inputs(name, B=2, T=5, H=3, K=4, V=6, **kw)


FORMS = [
    lambda n, **d: dsf.recurrent(n, **d),
    lambda n, **d: dsf.chunked(n, chunk_size=2, **d),
    lambda n, **d: dsf.parallel(n, **d),
    lambda n, **d: dsf.phi(n, **d),
]


@pytest.mark.parametrize("form", FORMS, ids=["recurrent", "chunked", "parallel", "phi"])
def test_wrong_rank(form):
    d = _inp()
    d["q"] = d["q"][0]
    with pytest.raises(ValueError, match=r"q must have 4 dims \[B, T, H, K\], got 3 dims with shape \(5, 3, 4\)"):
        form("gated_deltanet", **d)


@pytest.mark.parametrize("dim, axis", [("B", 0), ("T", 1), ("H", 2)])
def test_mismatched_batch_time_heads(dim, axis):
    d = _inp()
    d["v"] = torch.cat([d["v"], d["v"]], dim=axis)
    with pytest.raises(ValueError, match=rf"v has {dim}=\d+ .* but q has {dim}=\d+"):
        dsf.recurrent("gated_deltanet", **d)


def test_gate_shape_mismatch():
    d = _inp()
    d["g"] = d["g"][:, :4]
    with pytest.raises(ValueError, match=r"g has T=4 .* but q has T=5"):
        dsf.chunked("gated_deltanet", **d)


def test_key_dim_mismatch():
    d = _inp()
    d["k"] = d["k"][..., :3]
    with pytest.raises(ValueError, match=r"k has K=3 .* but q has K=4"):
        dsf.recurrent("gated_deltanet", **d)


@pytest.mark.parametrize("name", ["gated_deltanet", "s6", "qlstm"])
def test_state_of_wrong_shape(name):
    d = _inp(name)
    _, S = dsf.recurrent(name, **d)
    bad = S[..., :-1]
    with pytest.raises(ValueError, match=r"initial_state must have shape \[.*\] = \(.*\), got \(.*\)"):
        dsf.chunked(name, initial_state=bad, **d)


def test_softmax_state_must_be_a_cache():
    d = _inp("softmax_attention")
    with pytest.raises(TypeError, match="initial_state must be a dsf.KVCache"):
        dsf.recurrent("softmax_attention", initial_state=torch.zeros(2, 3, 4, 6), **d)


@pytest.mark.parametrize("form", ["recurrent", "chunked", "kernels"])
@pytest.mark.parametrize("change", ["negative c", "c = 0 with m finite", "c > 0 with m = -inf", "nan m"])
def test_an_aaren_state_that_is_no_softmax_state_is_refused(form, change):
    """The kernels read c <= 0 as the empty state, the forms used it as given: 1.0 apart, silently."""
    d = _inp("aaren")
    _, A = dsf.recurrent("aaren", **d)
    b, h = 1, 2
    m, c = A.m.clone(), A.c.clone()
    if change == "negative c":
        c[b, h] = -c[b, h]
    elif change == "c = 0 with m finite":
        c[b, h] = 0.0
    elif change == "c > 0 with m = -inf":
        m[b, h] = float("-inf")
    else:
        m[b, h] = float("nan")
    bad = dsf.AarenState(m, c, A.a)
    with pytest.raises(ValueError, match=r"aaren: initial_state is not a softmax state at \[b, h\] = \[1, 2\]"):
        if form == "kernels":
            kernels = pytest.importorskip("kernels")
            kernels.compile("aaren").chunked(initial_state=dsf.AarenState(*(t.float() for t in bad)),
                                             **{n: t.float() for n, t in d.items()})
        else:
            getattr(dsf, form)("aaren", initial_state=bad, **d)


def test_the_empty_aaren_state_is_taken():
    d = _inp("aaren")
    empty = dsf.AarenState(torch.full((2, 3), float("-inf"), dtype=torch.float64),
                           torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 3, 6, dtype=torch.float64))
    torch.testing.assert_close(dsf.recurrent("aaren", initial_state=empty, **d)[0], dsf.recurrent("aaren", **d)[0])


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, True])
def test_chunk_size(chunk_size):
    with pytest.raises(ValueError, match=r"chunk_size must be a positive int, got"):
        dsf.chunked("mamba2", chunk_size=chunk_size, **_inp("mamba2"))


def test_unknown_mixer_lists_the_names():
    with pytest.raises(KeyError, match=r"unknown mixer 'mamba3'; the zoo has: softmax_attention, .*gated_deltanet"):
        dsf.recurrent("mamba3", **_inp())
    with pytest.raises(KeyError, match="unknown mixer"):
        dsf.zoo.get("nope")


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_non_floating(dtype):
    d = _inp()
    d["k"] = d["k"].to(dtype)
    with pytest.raises(TypeError, match=rf"k must be a floating-point tensor, got dtype {dtype}"):
        dsf.recurrent("gated_deltanet", **d)


def test_mixed_dtypes():
    d = _inp()
    d["v"] = d["v"].float()
    with pytest.raises(TypeError, match="v has dtype torch.float32 but q has torch.float64"):
        dsf.parallel("gated_deltanet", **d)


@pytest.mark.parametrize("form", FORMS, ids=["recurrent", "chunked", "parallel", "phi"])
def test_inputs_on_two_devices(form):
    d = _inp("mamba2")
    d["v"] = d["v"].to("meta")   # another device, without a GPU
    with pytest.raises(ValueError, match="mamba2: v is on meta but q is on cpu"):
        form("mamba2", **d)


def test_missing_and_unexpected_arguments():
    d = _inp()
    beta = d.pop("beta")
    with pytest.raises(TypeError, match=r"missing input 'beta' of shape \[B, T, H\]"):
        dsf.recurrent("gated_deltanet", **d)
    with pytest.raises(TypeError, match=r"unexpected argument 'gk'"):
        dsf.recurrent("gated_deltanet", beta=beta, gk=d["q"], **d)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['windw'\]"):
        dsf.zoo.get("softmax_attention", windw=3)


def test_bad_options():
    d = _inp("softmax_attention")
    with pytest.raises(ValueError, match="window must be a positive int"):
        dsf.recurrent("softmax_attention", window=0, **d)
    with pytest.raises(ValueError, match="feature_map must be one of"):
        dsf.recurrent("linear_attention", feature_map="cosine", **_inp("linear_attention"))
    with pytest.raises(ValueError, match="dt must be positive"):
        dsf.recurrent("s4d", **{**_inp("s4d"), "dt": -_inp("s4d")["dt"]})
    # a zero rate made the zero-order hold 0 / 0: NaN everywhere, silently
    with pytest.raises(ValueError, match=r"s4d: A must be positive everywhere \(got min 0\)"):
        dsf.recurrent("s4d", **{**_inp("s4d"), "A": torch.zeros_like(_inp("s4d")["A"])})


def test_non_tensor_input():
    d = _inp()
    d["q"] = d["q"].tolist()
    with pytest.raises(TypeError, match="q must be a torch.Tensor, got list"):
        dsf.recurrent("gated_deltanet", **d)


@pytest.mark.parametrize("name", ["mamba2", "gated_deltanet", "softmax_attention", "retnet", "titans"])
@pytest.mark.parametrize("scale,error", [(float("nan"), ValueError), (float("inf"), ValueError),
                                         ("0.5", TypeError), (True, TypeError)])
def test_scale_must_be_a_finite_number(name, scale, error):
    """A NaN or infinite scale would turn every output into NaN: refused by every form, as a
    non-number is, by the mixer's name (the Miras memories took any scale; the others' message
    did not say whose it was)."""
    d = dsf.random_inputs(name, B=1, T=3, H=2, K=4, V=4)
    for form in (dsf.recurrent, dsf.chunked):
        with pytest.raises(error, match=rf"^{name}: scale must be a (finite )?number"):
            form(name, scale=scale, **d)


@pytest.mark.parametrize("name", ["mamba2", "titans"])
def test_a_scale_that_wants_a_gradient_is_refused(name):
    """A one-element tensor scale is taken as a float: one that requires grad lost its gradient silently."""
    d = dsf.random_inputs(name, B=1, T=3, H=2, K=4, V=4)
    with pytest.raises(TypeError, match=rf"^{name}: scale is a number .*got a tensor that requires grad"):
        dsf.recurrent(name, scale=torch.tensor(0.5, dtype=torch.float64, requires_grad=True), **d)
    dsf.recurrent(name, scale=torch.tensor(0.5, dtype=torch.float64), **d)   # a plain one-element tensor is a number


def test_the_miras_memories_take_scale_none_as_their_default():
    d = dsf.random_inputs("titans", B=1, T=3, H=2, K=4, V=4)
    assert torch.equal(dsf.recurrent("titans", scale=None, **d)[0], dsf.recurrent("titans", **d)[0])


@pytest.mark.parametrize("name,gate", [("mamba2", "g"), ("gla", "gk"), ("gated_deltanet", "g")])
def test_a_log_decay_of_minus_inf_is_refused_where_it_has_no_form(name, gate):
    """A gate of exactly 0 (log decay −inf): the recurrent form resets the state; the chunked and
    parallel forms, which take G_i − G_j, returned NaN from there on."""
    d = dsf.random_inputs(name, B=1, T=8, H=2, K=4, V=4)
    d[gate][:, 4] = float("-inf")
    assert torch.isfinite(dsf.recurrent(name, **d)[0]).all()
    for form in (dsf.parallel, lambda n, **x: dsf.chunked(n, chunk_size=4, **x)):
        with pytest.raises(ValueError, match=rf"^{name}: a log decay of -inf \(a gate of exactly 0\) has no"):
            form(name, **d)


@pytest.mark.parametrize("name,gate", [("mamba2", "g"), ("gla", "gk"), ("gated_deltanet", "g"), ("titans", "g"),
                                       ("titans", "log_eta"), ("yaad", "g")])
def test_a_positive_log_decay_is_refused_by_the_forms(name, gate):
    """The usual slip, the decay instead of its log (σ(x) for log σ(x)): Λ = e^g > 1, and mamba2's output
    reached 1e43 at T = 200 with no word. Every form refuses it by name; zero (no decay) is taken."""
    d = dsf.random_inputs(name, B=1, T=6, H=2, K=4, V=4)
    d[gate] = d[gate].exp()
    for form in (dsf.recurrent, lambda n, **x: dsf.chunked(n, chunk_size=4, **x)):
        with pytest.raises(ValueError, match=rf"^{name}: {gate} is a log decay \(.*<= 0.*\) but has values up to"):
            form(name, **d)
    d[gate] = torch.zeros_like(d[gate])
    assert torch.isfinite(dsf.recurrent(name, **d)[0]).all()


@pytest.mark.parametrize("options,gate,form", [
    ({"memory": "linear"}, "g", "chunked"), ({"memory": "linear"}, "log_eta", "chunked"),
    ({}, "g", "minibatch"), ({}, "log_eta", "minibatch"), ({"memory": "linear"}, "g", "parallel")])
def test_a_memorys_gate_of_minus_inf_is_refused_where_it_has_no_form(options, gate, form):
    """Titans' g = log(1 − α) is −inf for a full forget gate: the memories' chunked, parallel and
    mini-batch forms (the latter documented exact at chunk_size=1) returned NaN, silently."""
    spec = dsf.zoo.get("titans", **options)
    d = spec.draw_inputs(1, 6, 1, 2, 2, dtype=torch.float64, seed=0)
    d[gate][:, 3] = float("-inf")
    assert torch.isfinite(dsf.recurrent(spec, **d)[0]).all()
    run = {"chunked": lambda: dsf.chunked(spec, chunk_size=2, **d),
           "minibatch": lambda: dsf.chunked(spec, chunk_size=1, approximate="minibatch", **d),
           "parallel": lambda: dsf.parallel(spec, **d)}[form]
    with pytest.raises(ValueError, match=r"^titans: a log (retention g|momentum decay log_eta) of -inf \(a gate of "
                                         r"exactly 0\) has no (chunked|mini-batch|parallel) form"):
        run()


def test_an_empty_dim_is_refused_by_name():
    """B = 0 or H = 0 came back empty from two forms and failed inside torch in the chunked one."""
    for B, H, K in ((0, 2, 4), (1, 0, 4), (1, 2, 0)):
        d = dsf.random_inputs("mamba2", B=B, T=4, H=H, K=K, V=4)
        with pytest.raises(ValueError, match=r"^mamba2: q has [BHK]=0 .* every dim must be >= 1"):
            dsf.chunked("mamba2", **d)


def test_chunk_size_may_be_any_integer_type():
    d = dsf.random_inputs("mamba2", B=1, T=7, H=2, K=4, V=4)
    o, _ = dsf.chunked("mamba2", chunk_size=np.int64(3), **d)
    assert torch.equal(o, dsf.chunked("mamba2", chunk_size=3, **d)[0])


def test_a_lowering_that_returns_no_terms_is_named():
    spec = dataclasses.replace(dsf.zoo.get("mamba2"), name="mine", lower=lambda **kw: {"q": kw["q"]})
    with pytest.raises(TypeError, match=r"^mine: lower\(\) must return dsf.LinearTerms, dsf.SoftmaxTerms or "
                                        r"dsf.MemoryTerms, got dict"):
        dsf.recurrent(spec, **dsf.random_inputs("mamba2", B=1, T=3, H=2, K=4, V=4))


def test_an_oracle_takes_no_initial_state():
    """The oracles run from a zero state: they took initial_state and ignored it (2.09 off a state's run)."""
    d = dsf.random_inputs("mamba2", B=1, T=4, H=1, K=2, V=2, seed=0)
    _, S0 = dsf.recurrent("mamba2", **dsf.random_inputs("mamba2", B=1, T=3, H=1, K=2, V=2, seed=1))
    with pytest.raises(TypeError, match="initial_state"):
        dsf.zoo.get("mamba2").oracle(**d, initial_state=S0)


@pytest.mark.parametrize("bad,message", [
    (lambda q, k, v, g: dict(q=q, k=k, u=v, decay="key", g=g),
     r"g must have shape \[B, T, H, K\] = \(2, 5, 2, 4\) for decay='key' .*got \(2, 5, 2\)"),
    (lambda q, k, v, g: dict(q=q, k=k, u=v, decay="scalar", g=g, D=torch.ones(v.shape[-1], dtype=v.dtype)),
     r"D must have shape \[H, V\] = \(2, 6\) .*got \(6,\)"),
    (lambda q, k, v, g: dict(q=q, k=k[..., :3], u=v, decay="scalar", g=g),
     r"k must have shape \[B, T, H, K\] = \(2, 5, 2, 4\) .*got \(2, 5, 2, 3\)"),
    (lambda q, k, v, g: dict(q=q, k=k, u=v, decay="scalar", g=g.transpose(1, 2)),
     r"g must have shape \[B, T, H\] = \(2, 5, 2\) for decay='scalar' .*got \(2, 2, 5\)"),
    (lambda q, k, v, g: dict(q=q, k=k, u=v.transpose(1, 2), decay="none"), r"u must have shape"),
])
def test_a_lowering_with_a_term_of_the_wrong_shape_is_named(bad, message):
    """A user's lower() handing a mis-shaped term: the recurrent form broadcast it into a silently wrong
    output (0.41 off for a per-head g given as key-wise), the others failed inside torch."""
    spec = dataclasses.replace(dsf.zoo.get("mamba2"), name="mine", oracle=None,
                               lower=lambda q, k, v, g, scale=None: dsf.LinearTerms(**bad(q, k, v, g)))
    d = dsf.random_inputs("mamba2", B=2, T=5, H=2, K=4, V=6, seed=0)
    for form in (dsf.recurrent, dsf.chunked, dsf.parallel, dsf.phi):
        with pytest.raises(ValueError, match=r"^mine: LinearTerms: " + message):
            form(spec, **d)


@pytest.mark.parametrize("name", ["mamba2", "gated_deltanet", "qlstm", "gla", "s6", "titans", "normalized_attention"])
def test_float32_gates_beside_16_bit_activations_run_every_form_in_float32(name):
    """The spec allows float32 gates and parameters beside bf16 activations (what a layer under autocast
    makes); the forms failed with bare dtype errors or returned bf16 from one form and float32 from
    another. They widen the activations now: every form computes in float32 and returns it."""
    d = dsf.random_inputs(name, B=1, T=5, H=1, K=4, V=4, dtype=torch.float32, seed=0)
    d = {n: t.bfloat16() if n in ("q", "k", "v", "x") else t for n, t in d.items()}
    ref = dsf.recurrent(name, **{n: t.float() for n, t in d.items()})[0]
    exact = dsf.zoo.get(name).forms()
    forms = [dsf.recurrent] + [f for f, has in ((lambda mixer, **x: dsf.chunked(mixer, chunk_size=2, **x), "chunked"),
                                                (dsf.parallel, "parallel")) if has in exact]
    for form in forms:
        out = form(name, **d)
        o = out[0] if isinstance(out, tuple) else out
        assert o.dtype == torch.float32
        torch.testing.assert_close(o, ref, rtol=1e-5, atol=1e-6)


def test_small_mistakes_in_states_and_options_are_named():
    """A list where a tuple of tensors goes is taken; a KV cache's positions as a list, a name given to
    register and a NumPy window: each was an AttributeError, a riddle ("1 tensors, got 1") or refused."""
    d = dsf.random_inputs("ttt_linear", B=1, T=4, H=1, K=2, V=2)
    _, S = dsf.recurrent("ttt_linear", **d)
    o_list, _ = dsf.recurrent("ttt_linear", initial_state=dsf.MemoryState(list(S.weights), []), **d)
    torch.testing.assert_close(o_list, dsf.recurrent("ttt_linear", initial_state=S, **d)[0])
    with pytest.raises(ValueError, match=r"ttt_linear: initial_state.weights must hold 1 tensors, got 2"):
        dsf.recurrent("ttt_linear", initial_state=dsf.MemoryState([S.weights[0]] * 2, []), **d)
    s = _inp("softmax_attention")
    _, cache = dsf.recurrent("softmax_attention", **s)
    with pytest.raises(TypeError, match=r"softmax_attention: initial_state.pos must be an int64 tensor \[L\]"):
        dsf.recurrent("softmax_attention", initial_state=cache._replace(pos=cache.pos.tolist()), **s)
    with pytest.raises(TypeError, match="register takes a dsf.MixerSpec, got str 'x'"):
        dsf.zoo.register("x")
    torch.testing.assert_close(dsf.recurrent("softmax_attention", window=np.int64(2), **s)[0],
                               dsf.recurrent("softmax_attention", window=2, **s)[0])


def test_qlstms_exponent_is_refused_without_the_reversed_gate():
    """qLSTM's ``a`` shapes the reversed forget gate only: given with reversed=False it was ignored (the
    output the same with a × 100), so a learned ``a`` never trained."""
    d = dsf.random_inputs("qlstm", B=1, T=4, H=1, K=2, V=2)
    assert "a" not in d and "a" in dsf.random_inputs("qlstm", B=1, T=4, H=1, K=2, V=2, reversed=True)
    with pytest.raises(ValueError, match="qlstm: a is the reversed forget gate's exponent, unused with reversed=False"):
        dsf.recurrent("qlstm", a=torch.ones(1, 2, dtype=torch.float64), **d)
