"""MixerLayer: every zoo mixer builds and trains on the CPU; the Triton path matches the reference."""

import math
import types
import warnings

import pytest
import torch

import dsf
import kernels
from models.layers import MixerLayer, check_mixer, default_chunk_size


def _fwd_bwd(layer, B=2, T=11, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(B, T, layer.d_model, requires_grad=True)
    y = layer(x)
    y.square().mean().backward()
    return x, y


@pytest.mark.parametrize("mixer", dsf.zoo.names())
def test_every_mixer_forward_backward(mixer):
    """Output [B, T, d_model], finite, and a finite gradient for x and every parameter."""
    torch.manual_seed(0)
    layer = MixerLayer(mixer, d_model=16, n_heads=2, state_dim=4, backend="reference")
    x, y = _fwd_bwd(layer)
    assert y.shape == (2, 11, 16) and torch.isfinite(y).all()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in layer.named_parameters():
        assert p.grad is not None, f"{mixer}: no gradient reaches {name}"
        assert torch.isfinite(p.grad).all(), f"{mixer}: non-finite gradient in {name}"


def test_inputs_follow_the_spec_dims():
    """[B,T,H,K] → Linear(d, H·K); [B,T,H] → Linear(d, H); [H, ...] → a Parameter of that shape."""
    layer = MixerLayer("mamba2", d_model=24, n_heads=3, head_dim=4)
    assert layer.proj["q"].out_features == 12 and layer.proj["v"].out_features == 12
    assert layer.proj["g"].out_features == 3
    s6 = MixerLayer("s6", d_model=24, n_heads=3, head_dim=4, state_dim=5)
    assert tuple(s6.params["A"].shape) == (3, 4, 5) and tuple(s6.params["D"].shape) == (3, 4)
    assert s6.proj["B"].out_features == 15 and s6.proj["x"].out_features == 12
    aaren = MixerLayer("aaren", d_model=24, n_heads=3, head_dim=4)
    assert tuple(aaren.params["q"].shape) == (3, 4) and "q" not in aaren.proj


def test_gates_are_in_range():
    """Decays are log-space (<= 0), β in (0, 1), Δ > 0, keys unit-norm for the delta rule."""
    torch.manual_seed(0)
    x = torch.randn(2, 7, 16)
    inp = MixerLayer("gated_deltanet", 16, 2).mixer_inputs(x)
    assert (inp["g"] <= 0).all() and ((inp["beta"] > 0) & (inp["beta"] < 1)).all()
    assert torch.allclose(inp["k"].norm(dim=-1), torch.ones(2, 7, 2), atol=1e-5)
    assert (MixerLayer("gla", 16, 2).mixer_inputs(x)["gk"] <= 0).all()
    s6 = MixerLayer("s6", 16, 2, state_dim=4).mixer_inputs(x)
    assert (s6["dt"] > 0).all() and (s6["A"] > 0).all()
    a = torch.sigmoid(MixerLayer("rg_lru", 64, 2).mixer_inputs(x.repeat(1, 1, 4))["Lam"])
    assert ((a > 0.9 - 1e-6) & (a < 0.999 + 1e-6)).all()   # recurrentgemma's init: σ(Λ) ∈ [0.9, 0.999]
    assert a.min() < 0.95                                   # (not σ(Λ)^8 there, which put σ(Λ) > 0.986)
    eps = MixerLayer("longhorn", 16, 2).mixer_inputs(x)["eps"]
    assert ((eps > 0) & (eps < 1)).all()                    # Longhorn's code: ε = σ(·)


@pytest.mark.parametrize("name", ["longhorn", "longhorn_diag"])
def test_longhorns_step_bias_starts_at_zero(name):
    """The released Longhorn zeroes its ε head's bias (_init_weights spares only biases marked
    _no_reinit, which Mamba's Δ bias is and Longhorn's is not): ε = σ(W x) is 0.5 for x = 0."""
    layer = MixerLayer(name, 32, 2, **({"state_dim": 4} if name == "longhorn_diag" else {}))
    head = layer.proj["eps"]
    head = head[-1] if isinstance(head, torch.nn.Sequential) else head
    assert torch.equal(head.bias, torch.zeros_like(head.bias))
    eps = layer.mixer_inputs(torch.zeros(1, 3, 32))["eps"]
    assert torch.allclose(eps, torch.full_like(eps, 0.5))


def test_memoras_memory_starts_on_the_simplex():
    """KL retention keeps each column of W a distribution; the layer's learned initial weights are one
    too (raw N(0, 1/fan_in) weights had half their entries <= 0, taken as log 1e-30)."""
    inp = MixerLayer("memora", 16, 2).mixer_inputs(torch.randn(1, 3, 16))
    for w in (inp["w1"], inp["w2"]):
        assert (w > 0).all() and torch.allclose(w.sum(-2), torch.ones(()))


def test_mamba2_init_matches_the_paper():
    """softplus(dt_bias) in [1e-3, 0.1] and A = exp(A_log) in [1, 16]."""
    layer = MixerLayer("mamba2", 32, 4)
    dt = torch.nn.functional.softplus(layer.proj["g"].bias)
    assert ((dt > 1e-3 - 1e-6) & (dt < 0.1 + 1e-6)).all()
    A = layer.A_log.exp()
    assert ((A >= 1) & (A <= 16)).all()


@pytest.mark.parametrize("mixer,options,param", [
    ("linear_attention", {"feature_map": "hedgehog"}, "feature_weight"),
    ("qlstm", {"reversed": True}, "a"),
])
def test_options_that_add_parameters(mixer, options, param):
    layer = MixerLayer(mixer, 16, 2, **options)
    assert param in layer.params
    _fwd_bwd(layer)
    assert layer.params[param].grad is not None
    assert param not in MixerLayer(mixer, 16, 2).params


def test_options_pass_through_to_the_spec():
    layer = MixerLayer("softmax_attention", 16, 2, window=3)
    assert layer.spec.options["window"] == 3
    with pytest.raises(TypeError, match="unknown option"):
        MixerLayer("softmax_attention", 16, 2, bogus=1)


def test_input_dtype_errors():
    """Integer x, or x in another dtype than the layer's weights, is refused by the layer (both were
    torch's bare 'mat1 and mat2 must have the same dtype'); under autocast the projections cast it."""
    layer = MixerLayer("mamba2", 16, 2)
    with pytest.raises(TypeError, match=r"MixerLayer: x must be a floating-point tensor, got dtype torch.int64"):
        layer(torch.ones(2, 5, 16, dtype=torch.long))
    with pytest.raises(TypeError, match=r"MixerLayer: x has dtype torch.float64 but the layer's weights are "
                                        r"torch.float32; cast one to the other \(layer.to\(torch.float64\)\)"):
        layer(torch.randn(2, 5, 16, dtype=torch.float64))


@pytest.mark.parametrize("mixer", ["mamba2", "softmax_attention", "titans"])
def test_no_tokens_is_refused_by_the_layer(mixer):
    """T = 0 reached the forms as chunk_size = min(chunk_size, T) = 0: an error about chunk_size."""
    with pytest.raises(ValueError, match=r"MixerLayer: x must hold at least one token \(T >= 1\), got shape "
                                         r"\(2, 0, 16\)"):
        MixerLayer(mixer, 16, 2)(torch.randn(2, 0, 16))


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("name", ["mamba2", "deltanet", "s6"])
def test_autocast_bf16(backend, name):
    """Under bf16 autocast (Lightning's "bf16-mixed") the layer runs and stays within bf16 rounding
    of its float32 self: the reference forms failed on the projections' bf16 beside float32
    parameters (an in-place product of mixed dtypes), the kernels on the interpreter's bf16 products."""
    torch.manual_seed(0)
    layer = MixerLayer(name, 32, 2, backend=backend)
    x = torch.randn(2, 9, 32)
    ref = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16 and (y.float() - ref).norm() / ref.norm() < 2e-2
    y.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["aaren", "deltanet", "mamba2"])
def test_autocast_activations_share_a_dtype_for_the_kernels(monkeypatch, name):
    """The kernels take q, k, v in one dtype; autocast can hand them several. On the H200 (CUDA
    autocast runs F.normalize, exp and softplus in float32) mamba2, deltanet, gated_deltanet, longhorn
    and aaren failed with 'k has dtype float32 but q has bfloat16'; aaren's learned query fails so on
    the CPU too. CUDA's float32 norm and softplus are mimicked here; the layer casts the activations
    to autocast's dtype and stays within bf16 rounding of its float32 self."""
    import models.layers as layers

    for op in ("normalize", "softplus"):
        f = getattr(layers.F, op)
        monkeypatch.setattr(layers.F, op, lambda t, *a, _f=f, **kw: _f(t.float(), *a, **kw))
    torch.manual_seed(0)
    layer = MixerLayer(name, 32, 2, backend="triton")
    x = torch.randn(2, 9, 32)
    ref = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16 and (y.float() - ref).norm() / ref.norm() < 2e-2


@pytest.mark.parametrize("name", ["deltanet", "ttt_linear"])
def test_a_bf16_layer_runs_the_reference_forms(name):
    """A layer cast to bf16 (no autocast) runs the dsf forms in bf16; their triangular solves failed
    there ('"triangular_solve_cpu" not implemented for BFloat16') and now solve in float32."""
    torch.manual_seed(0)
    layer = MixerLayer(name, 32, 2, backend="reference")
    x = torch.randn(2, 9, 32)
    ref = layer(x)
    y = layer.to(torch.bfloat16)(x.bfloat16())
    assert y.dtype == torch.bfloat16 and (y.float() - ref).norm() / ref.norm() < 5e-2
    y.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)


def test_unknown_mixer_lists_the_zoo():
    with pytest.raises(ValueError, match="unknown mixer 'transformer'.*softmax_attention.*gated_deltanet"):
        MixerLayer("transformer", 16, 2)
    assert check_mixer("gla") == "gla"


@pytest.mark.parametrize("kwargs,match", [
    (dict(d_model=0), "d_model"),
    (dict(d_model=10, n_heads=3), "not divisible"),
    (dict(backend="cuda"), "backend"),
    (dict(chunk_size=0), "chunk_size"),
])
def test_bad_arguments(kwargs, match):
    args = {"mixer": "gla", "d_model": 16, "n_heads": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        MixerLayer(**args)


def test_triton_refused_without_a_kernel():
    without = [n for n in dsf.zoo.names() if kernels.supports(dsf.zoo.get(n)) is None]
    if not without:
        pytest.skip("every zoo mixer has a kernel")
    with pytest.raises(ValueError, match=f"no Triton kernel for '{without[0]}'"):
        MixerLayer(without[0], 16, 2, backend="triton")


MEMORIES = [n for n in dsf.zoo.names() if dsf.zoo.get(n).transition == dsf.Transition.GRADIENT_STEP]


@pytest.mark.skipif(not MEMORIES, reason="no test-time memory in the zoo")
def test_memories_run_exact_or_minibatch():
    """A memory without an exact chunked form runs dsf.recurrent; approximate='minibatch' opts in to
    the papers' chunked approximation, which equals the exact form at T <= 1 chunk of size 1."""
    for name in MEMORIES:
        spec = dsf.zoo.get(name)
        layer = MixerLayer(name, 16, 2, state_dim=4)
        assert layer.form == ("chunked" if "chunked" in spec.forms() else "recurrent")
        approx = MixerLayer(name, 16, 2, state_dim=4, approximate="minibatch", chunk_size=1)
        approx.load_state_dict(layer.state_dict())
        x = torch.randn(2, 9, 16)
        assert torch.allclose(layer(x), approx(x), atol=1e-5), name
    with pytest.raises(ValueError, match="approximate='minibatch' is for test-time memories"):
        MixerLayer("gla", 16, 2, approximate="minibatch")
    with pytest.raises(ValueError, match="approximate='minibatch' runs in PyTorch"):
        MixerLayer("titans", 16, 2, memory="linear", approximate="minibatch", backend="triton")
    # auto never sends the approximation to the (exact) kernels, even where they exist
    layer = MixerLayer("titans", 16, 2, memory="linear", approximate="minibatch")
    cuda_like = types.SimpleNamespace(is_cuda=True, dtype=torch.float32)  # what _use_kernels reads of its input
    assert not layer._use_kernels(cuda_like)
    assert MixerLayer("titans", 16, 2, memory="linear")._use_kernels(cuda_like)
    # nor a float64 model's input, which the kernels refuse
    assert not MixerLayer("mamba2", 16, 2)._use_kernels(types.SimpleNamespace(is_cuda=True, dtype=torch.float64))


def test_auto_uses_the_reference_on_cpu():
    layer = MixerLayer("mamba2", 16, 2)
    assert not layer._use_kernels(torch.zeros(1, 1, 16))


def test_auto_falls_back_where_the_kernels_refuse_the_head_dims(monkeypatch):
    """Head dims over the kernels' 256: "auto" runs the dsf forms instead (saying so once), where
    "triton" raises the kernels' error naming the head dim."""
    torch.manual_seed(0)
    ref = MixerLayer("mamba2", 300, 1, backend="reference")
    auto = MixerLayer("mamba2", 300, 1)
    auto.load_state_dict(ref.state_dict())
    cuda_like = types.SimpleNamespace(is_cuda=True, dtype=torch.float32)
    assert auto._use_kernels(cuda_like)
    # on the CPU "auto" never tries the kernels: take its CUDA decision for the CPU input
    monkeypatch.setattr(auto, "_use_kernels", lambda x: MixerLayer._use_kernels(auto, cuda_like))
    x = torch.randn(1, 5, 300)
    with pytest.warns(UserWarning, match="head dim K=300 is not supported.*dsf reference forms"):
        out = auto(x)
    assert torch.equal(out, ref(x))
    assert not MixerLayer._use_kernels(auto, cuda_like)   # not tried again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(auto(x), out)
    with pytest.raises(kernels.UnsupportedHeadDim, match="mamba2: head dim K=300 is not supported"):
        MixerLayer("mamba2", 300, 1, backend="triton")(x)


def test_default_chunk_size():
    """Vector decays get short chunks (the CPU form's stable path is slow for long ones)."""
    assert default_chunk_size(dsf.zoo.get("s6")) == 8 and default_chunk_size(dsf.zoo.get("mamba2")) == 64
    assert MixerLayer("mingru", 16, 2).chunk_size == 8


@pytest.mark.skipif(not torch.cuda.is_available() and __import__("os").environ.get("TRITON_INTERPRET") != "1",
                    reason="needs CUDA or Triton's interpreter")
@pytest.mark.parametrize("mixer", ["mamba2", "gated_deltanet"])
def test_triton_matches_reference(mixer):
    """Same weights, same input: the kernel path gives the reference's output and input gradient."""
    torch.manual_seed(0)
    ref = MixerLayer(mixer, 32, 2, backend="reference")
    tri = MixerLayer(mixer, 32, 2, backend="triton")
    tri.load_state_dict(ref.state_dict())
    x = torch.randn(2, 19, 32, requires_grad=True)
    a, b = ref(x), tri(x)
    ga, = torch.autograd.grad(a.square().sum(), x)
    gb, = torch.autograd.grad(b.square().sum(), x)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert torch.allclose(ga, gb, atol=1e-5, rtol=1e-4)
    assert math.isfinite(float(gb.abs().max()))


def test_pickles_and_copies():
    """torch.save of a whole model works although the zoo's specs hold lambdas (rebuilt on load)."""
    import copy
    import io

    layer = MixerLayer("lightning_attention", 16, 2, layer_idx=1, num_layers=2)
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    x = torch.randn(1, 6, 16)
    assert loaded.spec.options["layer_idx"] == 1
    assert torch.allclose(loaded(x), layer(x)) and torch.allclose(copy.deepcopy(layer)(x), layer(x))


@pytest.mark.parametrize("mixer,options,error,match", [
    ("linear_attention", {"feature_map": "bogus"}, ValueError, r"linear_attention: feature_map must be one of"),
    ("softmax_attention", {"window": 0}, ValueError, r"softmax_attention: window must be a positive int"),
    ("linear_attention", {"feature_map": "elu1", "normalize": "false"}, TypeError,
     r"linear_attention: normalize must be True or False, got 'false'"),
    ("gla", {"head_dim": 0}, ValueError, r"MixerLayer: head_dim must be a positive int, got 0")])
def test_options_are_checked_when_the_layer_is_built(mixer, options, error, match):
    """A bad option value passed construction and failed at the first forward (inside a training run's
    sanity check); normalize="false", a truthy string, turned the normaliser on."""
    with pytest.raises(error, match=match):
        MixerLayer(mixer, 16, 2, **options)


@pytest.mark.parametrize("name,unit", [("deltanet", True), ("titans", True), ("longhorn", False)])
def test_which_layers_normalise_queries_and_keys(name, unit):
    """Delta rules and memories take unit q and k (their steps contract only for ‖k‖ <= 1); Longhorn's
    implicit step contracts at any ‖k‖, and on unit keys its β = ε/(1 + ε) would make it DeltaNet."""
    torch.manual_seed(0)
    inputs = MixerLayer(name, 16, 2).mixer_inputs(torch.randn(2, 5, 16))
    for x in (inputs["q"], inputs["k"]):
        assert torch.allclose(x.norm(dim=-1), torch.ones(()), atol=1e-6) == unit
