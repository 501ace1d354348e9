"""kernels.compile: the softmax family (cache, step) and Aaren vs dsf float64; what every family accepts."""

import pytest
import torch

import dsf
import kernels
from dsf.testing import rel_err, requires_grad

TOL = 1e-5


def _f32(d):
    return {k: v.float() for k, v in d.items()}


def _split(d, s):
    head = {k: (v[:, :s] if v.dim() == 4 else v) for k, v in d.items()}
    tail = {k: (v[:, s:] if v.dim() == 4 else v) for k, v in d.items()}
    return head, tail


@pytest.mark.parametrize("opts", [{}, {"window": 5, "sink_tokens": 2}])
def test_softmax_chunked_and_state(opts):
    spec = dsf.zoo.get("softmax_attention", **opts)
    inp = spec.random_inputs(2, 21, 2, 16, 16, seed=1)
    o_ref, S_ref = dsf.recurrent(spec, **inp)
    o, S = kernels.compile(spec).chunked(output_final_state=True, **_f32(inp))
    assert rel_err(o, o_ref) < TOL
    assert torch.equal(S.pos, S_ref.pos) and S.seen == S_ref.seen and rel_err(S.k, S_ref.k) < TOL


def test_softmax_continues_from_a_full_cache_and_steps():
    spec = dsf.zoo.get("softmax_attention")
    inp = _f32(spec.random_inputs(2, 20, 2, 16, 16, seed=2))
    o_ref, _ = dsf.recurrent(spec, **{k: v.double() for k, v in inp.items()})
    m = kernels.compile(spec)
    a, b = _split(inp, 12)
    o1, c1 = m.chunked(output_final_state=True, **a)
    o2, _ = m.chunked(initial_state=c1, **b)
    assert rel_err(torch.cat([o1, o2], 1), o_ref) < TOL
    state, outs = c1, []
    for t in range(12, 20):
        o_t, state = m.step(state, **{k: v[:, t] for k, v in inp.items()})
        outs.append(o_t)
    assert rel_err(torch.stack(outs, 1), o_ref[:, 12:]) < TOL


@pytest.mark.parametrize("form", ["chunked", "recurrent"])
def test_one_token_after_a_cache_has_gradients(form):
    """One new token after a KV cache took the decode kernel, which has no backward: its output came
    back without a graph (dq off by 100 %). With a gradient needed it takes the differentiable path."""
    spec = dsf.zoo.get("softmax_attention")
    inp = spec.random_inputs(1, 9, 2, 16, 16, seed=3)
    head, tail = _split(inp, 8)
    _, cache = dsf.recurrent(spec, **head)
    tail = requires_grad(tail)
    o_ref, _ = dsf.recurrent(spec, initial_state=cache, **tail)
    ref = torch.autograd.grad(o_ref.sum(), list(tail.values()))
    leaves = requires_grad(_f32(tail))
    o, _ = getattr(kernels.compile(spec), form)(initial_state=cache, **leaves)
    assert rel_err(o, o_ref) < TOL and o.requires_grad
    for a, b in zip(torch.autograd.grad(o.sum(), list(leaves.values())), ref):
        assert rel_err(a, b) < TOL


def test_a_kv_cache_on_another_device_is_refused_by_name():
    spec = dsf.zoo.get("softmax_attention")
    inp = _f32(spec.random_inputs(1, 6, 2, 16, 16, seed=3))
    head, tail = _split(inp, 4)
    _, cache = kernels.compile(spec).chunked(output_final_state=True, **head)
    cache = cache._replace(k=cache.k.to("meta"), v=cache.v.to("meta"))
    for run in (lambda: kernels.compile(spec).chunked(initial_state=cache, **tail),
                lambda: kernels.compile(spec).step(cache, **{n: x[:, 0] for n, x in tail.items()})):
        with pytest.raises(ValueError, match=r"softmax_attention: (initial_state|state)\.k is on meta but q is on cpu"):
            run()


@pytest.mark.parametrize("window,sinks,T0", [(3, 0, 8), (4, 2, 9), (5, 1, 3), (6, 0, 6), (4, 3, 12)])
def test_a_windowed_cache_trimmed_by_the_kernels_carries_on(window, sinks, T0):
    """The cache a windowed mixer returns holds its sinks and the last window − 1 tokens, with gaps in
    its positions: the kernels continue from it (chunked, and token by token with step, the cache
    trimmed again each time, past window + sinks tokens) as the float64 recurrence over the whole
    sequence, the cache they return the recurrence's."""
    spec = dsf.zoo.get("softmax_attention", window=window, sink_tokens=sinks)
    inp = spec.random_inputs(1, T0 + 9, 2, 16, 16, seed=window + T0)
    o_ref, C_ref = dsf.recurrent(spec, **inp)
    m = kernels.compile(spec)
    a, rest = _split(_f32(inp), T0)
    b, c = _split(rest, 4)
    o1, C = m.chunked(output_final_state=True, **a)
    o2, C = m.chunked(initial_state=C, output_final_state=True, **b)
    outs = [o1, o2]
    for t in range(c["q"].shape[1]):
        o, C = m.step(C, **{n: x[:, t] for n, x in c.items()})
        outs.append(o[:, None])
    assert rel_err(torch.cat(outs, 1), o_ref) < 1e-5
    assert C.seen == C_ref.seen and torch.equal(C.pos, C_ref.pos) and rel_err(C.k, C_ref.k) < 1e-6


def test_a_cache_the_kernels_would_misplace_is_refused():
    """The kernels place cached tokens at 0 … L − 1 without reading pos: a trimmed cache that lost a
    token its window still shows, or a window-less cache with a gap, is refused by name."""
    spec = dsf.zoo.get("softmax_attention", window=4, sink_tokens=1)
    inp = _f32(spec.random_inputs(1, 12, 1, 16, 16, seed=3))
    a, b = _split(inp, 8)
    m = kernels.compile(spec)
    _, C = m.chunked(output_final_state=True, **a)
    assert C.pos.tolist() == [0, 5, 6, 7] and C.seen == 8
    short = type(C)(C.k[:, [0, 2, 3]], C.v[:, [0, 2, 3]], C.pos[[0, 2, 3]], C.seen)
    with pytest.raises(ValueError, match=r"softmax_attention: initial_state must be a full KV cache .*the 1 "
                                         r"sink\(s\) 0 … 0, then the last ≥ 3 tokens .* got positions \[0, 6, 7\]"):
        m.chunked(initial_state=short, **b)
    # window 1 keeps the sinks alone: a cache with fewer of them than the mixer's sink_tokens would
    # put this call's first token at a sink's place (1.1 off the forms before it was refused)
    one = dsf.zoo.get("softmax_attention", window=1, sink_tokens=3)
    few = type(C)(C.k[:, :2], C.v[:, :2], torch.tensor([0, 1]), 5)
    with pytest.raises(ValueError, match=r"softmax_attention: initial_state must be a full KV cache .*the 3 sink"):
        kernels.compile(one).chunked(initial_state=few, **b)
    full = dsf.zoo.get("softmax_attention")
    _, F = kernels.compile(full).chunked(output_final_state=True, **a)
    gap = type(F)(F.k[:, 1:], F.v[:, 1:], F.pos[1:], F.seen)
    with pytest.raises(ValueError, match=r"initial_state.pos must be a full cache's positions 0 … 6 with seen = 7, "
                                         r"got \[1, 2, 3, 4, 5, 6, 7\] \(seen = 8\)"):
        kernels.compile(full).chunked(initial_state=gap, **b)


def test_a_16bit_aaren_state_is_combined_in_fp32():
    """A bf16 Aaren state beside fp32 tokens: its token (m + log c, a / c) is formed in fp32 from the
    state's values, as the float64 recurrence from the same bf16 state (in bf16 it was 1.5e-3 off)."""
    spec = dsf.zoo.get("aaren")
    inp = spec.random_inputs(2, 20, 2, 16, 16, seed=4)
    a, b = _split(_f32(inp), 12)
    m = kernels.compile(spec)
    _, S = m.chunked(output_final_state=True, **a)
    S16 = type(S)(*(x.bfloat16() for x in S))
    o, _ = m.chunked(initial_state=S16, **b)
    o_ref, _ = dsf.recurrent(spec, initial_state=type(S)(*(x.double() for x in S16)),
                             **{n: x.double() for n, x in b.items()})
    assert rel_err(o, o_ref) < TOL


@pytest.mark.parametrize("K", [16, 256])
def test_aaren_runs_on_the_flash_kernel_with_its_state(K):
    """Outputs, states and gradients (through the carried state too) against float64. K = 256 with a
    state was refused as K = 257: the state entered as one more key dimension."""
    spec = dsf.zoo.get("aaren")
    inp = spec.random_inputs(2, 20, 2, K, 16, seed=0)
    o_ref, S_ref = dsf.recurrent(spec, **inp)
    m = kernels.compile(spec)
    a, b = _split(_f32(inp), 12)
    o1, s1 = m.chunked(output_final_state=True, **a)
    s1 = requires_grad(s1)
    leaves = requires_grad(b)
    o2, s2 = m.chunked(initial_state=s1, output_final_state=True, **leaves)
    assert rel_err(torch.cat([o1, o2], 1), o_ref) < TOL
    for x, y in zip(s2, S_ref):
        assert rel_err(x, y) < TOL
    # gradients through the carried state and the inputs, against float64 autograd
    ref_leaves = requires_grad({k: v.double() for k, v in b.items()})
    s1_ref = requires_grad(type(s1)(*(x.detach().double() for x in s1)))
    o2_ref, _ = dsf.recurrent(spec, initial_state=s1_ref, **ref_leaves)
    w = torch.randn(o2_ref.shape, dtype=torch.float64)
    g = torch.autograd.grad((o2 * w.float()).sum(), list(leaves.values()) + [s1.c, s1.a])
    g_ref = torch.autograd.grad((o2_ref * w).sum(), list(ref_leaves.values()) + [s1_ref.c, s1_ref.a])
    for x, y in zip(g, g_ref):
        assert rel_err(x, y) < TOL


@pytest.mark.parametrize("name,opts", [("softmax_attention", {}), ("softmax_attention", {"window": 5, "sink_tokens": 2}),
                                       ("aaren", {})])
def test_packed_batch_gives_each_sequences_state(name, opts):
    """cu_seqlens with output_final_state: each sequence's state as if run alone (an empty sequence's
    is empty) — a list of KV caches for softmax attention, Aaren's state as a batch of N. The caches
    came back as None."""
    spec = dsf.zoo.get(name, **opts)
    cu = [0, 1, 1, 13, 30]
    inp = spec.random_inputs(1, 30, 2, 16, 16, seed=4)
    o, S = kernels.compile(spec).chunked(cu_seqlens=torch.tensor(cu), output_final_state=True, **_f32(inp))
    for n, (a, b) in enumerate(zip(cu[:-1], cu[1:])):
        part = {k: (v[:, a:b] if v.dim() == 4 else v) for k, v in inp.items()}
        if a == b:
            if name == "aaren":
                assert torch.isinf(S.m[n]).all() and not S.c[n].any() and not S.a[n].any()
            else:
                assert S[n].k.shape == (1, 0, 2, 16) and S[n].seen == 0
            continue
        o_ref, S_ref = dsf.recurrent(spec, **part)
        assert rel_err(o[:, a:b], o_ref) < TOL
        if name == "aaren":
            for x, y in zip(S, S_ref):
                assert rel_err(x[n:n + 1], y) < TOL
        else:
            assert torch.equal(S[n].pos, S_ref.pos) and S[n].seen == S_ref.seen == b - a
            assert rel_err(S[n].k, S_ref.k) < TOL and rel_err(S[n].v, S_ref.v) < TOL


@pytest.mark.parametrize("name,opts", [("mamba2", {}), ("deltanet", {}), ("softmax_attention", {}), ("aaren", {}),
                                       ("titans", {"memory": "linear"})])
def test_cu_seqlens_errors_name_the_mixer(name, opts):
    """Bad cu_seqlens are refused by the mixer's name on every family (softmax and Titans named the
    kernel they lower to: flash_attention, chunk_titans)."""
    spec = dsf.zoo.get(name, **opts)
    inp = _f32(spec.random_inputs(1, 10, 2, 16, 16, seed=0))
    m = kernels.compile(spec)
    with pytest.raises(ValueError, match=rf"^{name}: cu_seqlens must start at 0, got 1"):
        m.chunked(cu_seqlens=torch.tensor([1, 10]), **inp)
    with pytest.raises(TypeError, match=rf"^{name}: cu_seqlens must be an int32/int64 tensor"):
        m.recurrent(cu_seqlens=torch.tensor([0.0, 10.0]), **inp)


@pytest.mark.parametrize("name,opts", [("mamba2", {}), ("gla", {}), ("s6", {}), ("deltanet", {}),
                                       ("softmax_attention", {}), ("titans", {"memory": "linear"})])
@pytest.mark.parametrize("form", ["chunked", "recurrent"])
def test_strided_cu_seqlens_reads_as_its_values(name, opts, form):
    """An int64 cu_seqlens that is a strided view: read as its values, not as the memory under it (the
    kernels indexed it as a dense array: garbage, or a heap corrupted by the chunk layout's writes)."""
    spec = dsf.zoo.get(name, **opts)
    inp = _f32(spec.random_inputs(1, 7, 2, 16, 16, seed=0))
    strided = torch.tensor([0, 9, 3, 9, 7])[::2]
    assert not strided.is_contiguous()
    m = kernels.compile(spec)
    o, _ = getattr(m, form)(cu_seqlens=strided, **inp)
    o_ref, _ = getattr(m, form)(cu_seqlens=strided.contiguous(), **inp)
    assert torch.equal(o, o_ref)


@pytest.mark.parametrize("name,opts,K,V,message", [
    ("mamba2", {}, 300, 16, r"mamba2: head dim K=300 is not supported; need 1 <= K <= 256"),
    ("softmax_attention", {}, 16, 300, r"softmax_attention: head dim V=300 is not supported; need 1 <= V <= 256"),
    ("titans", {"memory": "linear"}, 300, 16, r"titans: head dim K=300"),
    ("linear_attention", {"feature_map": "elu1", "normalize": True}, 16, 256,
     r"linear_attention: head dim V=256 .* need 1 <= V <= 255 \(normalize=True adds a column for the normaliser\)")])
@pytest.mark.parametrize("form", ["chunked", "recurrent", "step"])
def test_head_dims_are_refused_by_the_mixers_name(name, opts, K, V, message, form):
    """Head dims outside the kernels' 1 … 256, refused for the mixer on every form (the errors named
    the kernel a family lowers to, and a normalised V = 256 was reported as V = 257)."""
    spec = dsf.zoo.get(name, **opts)
    inp = _f32(spec.random_inputs(1, 3, 1, K, V, seed=0))
    m = kernels.compile(spec)
    with pytest.raises(ValueError, match=message):
        if form == "step":
            m.step(None, **{k: (v[:, -1] if v.dim() >= 3 else v) for k, v in inp.items()})
        else:
            getattr(m, form)(**inp)


@pytest.mark.parametrize("name", ["mamba2", "gla", "deltanet", "gated_deltanet", "softmax_attention"])
def test_bf16_on_the_interpreter(name):
    """bf16 inputs on the CPU interpreter: bf16-accurate outputs and gradients. Triton 3.6's interpreter
    multiplies bf16 tl.dot operands' raw bits, so the chunked diagonal and delta kernels returned
    outputs ~1e9 off there (the GPU was right); under the interpreter they now run bf16 in fp32."""
    spec = dsf.zoo.get(name)
    inp = spec.random_inputs(1, 37, 2, 16, 16, seed=5)
    ref_in = requires_grad(dict(inp))
    o_ref, _ = dsf.recurrent(spec, **ref_in)
    leaves = requires_grad({k: v.detach().bfloat16() for k, v in inp.items()})
    o, _ = kernels.compile(spec).chunked(**leaves)
    assert o.dtype == torch.bfloat16 and rel_err(o.double(), o_ref) < 1e-2
    w = torch.randn(o_ref.shape, dtype=torch.float64)
    g = torch.autograd.grad((o.double() * w).sum(), list(leaves.values()))
    g_ref = torch.autograd.grad((o_ref * w).sum(), list(ref_in.values()))
    for n, a, b in zip(leaves, g, g_ref):
        assert a.dtype == torch.bfloat16 and rel_err(a.double(), b) < 3e-2, n


def test_every_recurrence_family_compiles():
    """Every mixer whose Λ_t is a decay, a delta rule or the softmax kernel has kernels, and so has
    every memory linear in its state (TTT-linear is the delta rule); the MLP memories have none."""
    mlp = {"titans", "moneta", "yaad", "memora", "ttt_mlp"}
    for spec in [*dsf.zoo.specs(), dsf.zoo.get("titans", memory="linear")]:
        if spec.name in mlp and spec.options.get("memory", "mlp") == "mlp":
            assert kernels.supports(spec) is None, spec.name
            continue
        assert kernels.supports(spec) is not None, spec.name
        kernels.compile(spec)


@pytest.mark.parametrize("name,opts", [("mamba2", {}), ("gla", {}), ("s6", {}), ("deltanet", {}),
                                       ("softmax_attention", {}), ("titans", {"memory": "linear"})])
@pytest.mark.parametrize("form", ["chunked", "recurrent"])
def test_float64_is_refused_naming_the_argument(name, opts, form):
    """float64 inputs: refused by the mixer's own argument names (not the lowered kernel's) and
    pointed to the dsf forms, on every family's both forms; the diagonal kernels once compiled it
    under the interpreter and failed to compile it for the GPU."""
    spec = dsf.zoo.get(name, **opts)
    inp = spec.random_inputs(1, 5, 2, 16, 16, dtype=torch.float64)
    first = next(n for n in spec.input_names if n in inp)
    with pytest.raises(TypeError, match=rf"{name}: {first} has dtype torch.float64; the kernels take float32, "
                                        r"bfloat16 or float16 inputs \(float64 runs in the dsf forms"):
        getattr(kernels.compile(spec), form)(**inp)


def test_aaren_state_is_checked_like_the_dsf_forms():
    """A state of the wrong kind or shape is refused by name; a wrong-shaped m once broadcast over the
    batch into a silently wrong output."""
    spec = dsf.zoo.get("aaren")
    inp = _f32(spec.random_inputs(2, 3, 2, 16, 16))
    m = kernels.compile(spec)
    _, S = m.chunked(output_final_state=True, **inp)
    with pytest.raises(TypeError, match=r"aaren: initial_state must be a dsf.AarenState\(m, c, a\), got tuple"):
        m.chunked(initial_state=tuple(S), **inp)
    with pytest.raises(ValueError, match=r"aaren: initial_state.m must have shape \[B, H\] = \(2, 2\), got \(1, 2\)"):
        m.chunked(initial_state=type(S)(S.m[:1], S.c, S.a), **inp)
    with pytest.raises(TypeError, match=r"aaren: state must be a dsf.AarenState"):   # the step's name for it
        m.step(tuple(S), **{k: (v[:, 0] if v.dim() == 4 else v) for k, v in inp.items()})


@pytest.mark.parametrize("name", ["mamba2", "gated_deltanet", "softmax_attention"])
def test_step_errors_speak_of_one_token_and_the_state(name):
    """step takes inputs without the time dim and calls its state `state`: its errors say so."""
    spec = dsf.zoo.get(name)
    inp = _f32(spec.random_inputs(2, 1, 2, 16, 16))
    m = kernels.compile(spec)
    _, S = m.chunked(output_final_state=True, **inp)
    one = {k: (v[:, 0] if v.dim() == 4 or (v.dim() == 3 and v.shape[1] == 1) else v) for k, v in inp.items()}
    with pytest.raises(ValueError, match=rf"{name}.step: q must have 3 dims \[B, H, K\] \(one token, no time "
                                         r"dim\), got shape \(2, 1, 2, 16\)"):
        m.step(S, **{**one, "q": inp["q"]})
    if isinstance(S, torch.Tensor):
        with pytest.raises(ValueError, match=rf"{name}: state must have shape \[B, H, K, V\]"):
            m.step(S[:, :, :8], **one)


def test_a_kv_cache_of_the_wrong_size_is_refused_by_name():
    spec = dsf.zoo.get("softmax_attention")
    inp = _f32(spec.random_inputs(2, 3, 2, 16, 16))
    m = kernels.compile(spec)
    _, C = m.chunked(output_final_state=True, **inp)
    with pytest.raises(ValueError, match=r"softmax_attention: initial_state.k must have shape \[B, L, H, K\] = "
                                         r"\(2, 3, 2, 16\), got \(1, 3, 2, 16\)"):
        m.chunked(initial_state=type(C)(C.k[:1], C.v[:1], C.pos, C.seen), **inp)
    with pytest.raises(ValueError, match=r"initial_state.v must have shape \[B, L, H, V\]"):
        m.chunked(initial_state=type(C)(C.k, C.v[..., :8], C.pos, C.seen), **inp)
    with pytest.raises(ValueError, match=r"initial_state.pos must have shape \[L\] = \(3,\), got \(2,\)"):
        m.chunked(initial_state=type(C)(C.k, C.v, C.pos[:2], C.seen), **inp)


def test_a_kv_cache_whose_positions_the_kernels_would_not_honour_is_refused():
    """The kernels place a full cache's tokens at 0 … L − 1 without reading pos: a cache whose pos
    says otherwise ran as if it did not (0.72 off the dsf forms, which read it, with a window)."""
    spec = dsf.zoo.get("softmax_attention", window=4, sink_tokens=2)
    inp = _f32(spec.random_inputs(1, 9, 1, 16, 16, seed=0))
    a, b = _split(inp, 3)
    m = kernels.compile(spec)
    _, C = m.chunked(output_final_state=True, **a)
    with pytest.raises(ValueError, match=r"softmax_attention: initial_state must be a full KV cache .* got "
                                         r"positions \[5, 6, 7\] \(seen = 3\)"):
        m.chunked(initial_state=type(C)(C.k, C.v, C.pos + 5, C.seen), **b)
    with pytest.raises(TypeError, match=r"softmax_attention: state.pos must be an int32/int64 tensor"):
        m.step(type(C)(C.k, C.v, C.pos.float(), C.seen), **{k: v[:, 0] for k, v in b.items()})


def test_a_kv_cache_in_another_dtype_joins_the_tokens_in_theirs():
    """An fp32 cache with bf16 tokens (a prefill in fp32, decoding in bf16) was refused by the flash
    kernels' dtype check, naming the cache's keys as if they were the call's k."""
    spec = dsf.zoo.get("softmax_attention")
    inp = spec.random_inputs(2, 10, 2, 16, 16, seed=1)
    o_ref, _ = dsf.recurrent(spec, **inp)
    a, b = _split(_f32(inp), 6)
    m = kernels.compile(spec)
    _, C = m.chunked(output_final_state=True, **a)
    half = {k: v.bfloat16() for k, v in b.items()}
    o, C2 = m.chunked(initial_state=C, output_final_state=True, **half)
    o_conv, _ = m.chunked(initial_state=type(C)(C.k.bfloat16(), C.v.bfloat16(), C.pos, C.seen), **half)
    assert o.dtype == C2.k.dtype == torch.bfloat16 and torch.equal(o, o_conv)
    assert rel_err(o.double(), o_ref[:, 6:]) < 1e-2
    o_t, _ = m.step(C, **{k: v[:, 0] for k, v in half.items()})
    assert rel_err(o_t.double(), o_ref[:, 6]) < 1e-2


@pytest.mark.parametrize("name,arg,act,dtype,match", [
    ("mamba2", "g", torch.float32, torch.int64, r"mamba2: g must be a floating-point tensor, got dtype torch.int64"),
    ("mamba2", "g", torch.float32, torch.float64, r"mamba2: g has dtype torch.float64"),
    ("gla", "gk", torch.float16, torch.bfloat16, r"gla: gk has dtype torch.bfloat16 but q has torch.float16"),
    ("deltanet", "beta", torch.float32, torch.float64, r"deltanet: beta has dtype torch.float64")])
def test_step_refuses_the_dtypes_chunked_refuses(name, arg, act, dtype, match):
    """The one-launch step took an int, float64 or mismatched gate (or β) that chunked refuses."""
    spec = dsf.zoo.get(name)
    one = {k: v[:, 0].to(act) for k, v in spec.random_inputs(2, 1, 2, 16, 16, seed=0).items()}
    m = kernels.compile(spec)
    with pytest.raises(TypeError, match=match):
        m.chunked(**{k: v[:, None] for k, v in {**one, arg: one[arg].to(dtype)}.items()})
    with pytest.raises(TypeError, match=match):
        m.step(torch.zeros(2, 2, 16, 16), **{**one, arg: one[arg].to(dtype)})


@pytest.mark.parametrize("name", ["mamba2", "gla", "deltanet", "s6"])
def test_an_integer_state_or_a_list_input_is_refused_by_name(name):
    """mamba2's and gla's chunked took an integer initial state as floats; a list on step was a bare
    AttributeError."""
    spec = dsf.zoo.get(name)
    inp = _f32(spec.random_inputs(2, 3, 2, 16, 16, seed=0))
    m = kernels.compile(spec)
    _, S = m.chunked(output_final_state=True, **inp)
    with pytest.raises(TypeError, match=rf"^{name}: initial_state must be floating-point, got dtype torch.int64"):
        m.chunked(initial_state=S.long(), **inp)
    timed = {i.name for i in spec.inputs if "T" in i.dims}
    one = {k: (v[:, 0] if k in timed else v) for k, v in inp.items()}
    with pytest.raises(TypeError, match=rf"^{name}: state must be floating-point, got dtype torch.int64"):
        m.step(S.long(), **one)
    first = spec.input_names[0]
    with pytest.raises(TypeError, match=rf"^{name}.step: {first} must be a torch.Tensor, got list"):
        m.step(S, **{**one, first: one[first].tolist()})


@pytest.mark.parametrize("name,gate", [("mingru", "z"), ("qlstm", "f"), ("rg_lru", "r"), ("normalized_attention", "n")])
def test_a_16_bit_gate_beside_fp32_activations_is_widened(name, gate):
    """A bf16 gate beside fp32 activations: fp32-accurate against float64 on the same rounded values
    (the lowering took its logs and products in bf16: 4e-4 to 2e-3 off), kernels and dsf forms alike."""
    spec = dsf.zoo.get(name)
    inp = _f32(spec.random_inputs(2, 9, 2, 16, 16, seed=0))
    inp[gate] = inp[gate].bfloat16()
    o_ref, _ = dsf.recurrent(spec, **{k: v.double() for k, v in inp.items()})
    o, _ = kernels.compile(spec).chunked(**inp)
    assert o.dtype == torch.float32 and rel_err(o, o_ref) < TOL
    assert rel_err(dsf.recurrent(spec, **inp)[0], o_ref) < TOL


def test_a_bad_option_is_reported_not_taken_for_a_missing_kernel():
    """kernels.compile("titans", memory="linear", scale="x") said no kernel family compiles titans."""
    with pytest.raises(TypeError, match=r"^titans: scale must be a number or None, got 'x'"):
        kernels.compile("titans", memory="linear", scale="x")
    spec = dsf.zoo.get("titans", memory="linear")
    inp = _f32(spec.random_inputs(1, 3, 1, 16, 16, seed=0))
    o, _ = kernels.compile("titans", memory="linear", scale=None).chunked(**inp)
    assert rel_err(o, dsf.recurrent(spec, **{k: v.double() for k, v in inp.items()})[0]) < TOL


@pytest.mark.parametrize("name,options,error,message", [
    ("mamba2", {"scale": "x"}, TypeError, r"^mamba2: scale must be a number or None, got 'x'"),
    ("linear_attention", {"feature_map": "bad"}, ValueError, r"feature_map must be one of"),
    ("softmax_attention", {"window": 0}, ValueError, r"window must be a positive int or None, got 0")])
def test_an_options_value_is_checked_at_compile(name, options, error, message):
    """compile() took a bad value and the first call refused it; it is refused at compile now."""
    with pytest.raises(error, match=message):
        kernels.compile(name, **options)


def test_a_head_dim_a_feature_map_made_too_wide_says_so():
    spec = dsf.zoo.get("linear_attention", feature_map="taylor")
    inp = _f32(spec.random_inputs(1, 3, 1, 16, 16, seed=0))
    with pytest.raises(ValueError, match=r"linear_attention: head dim K=273 is not supported; need 1 <= K <= 256 "
                                         r"\(the feature map turns the queries' K=16 into 273\)"):
        kernels.compile(spec).chunked(**inp)


@pytest.mark.parametrize("form", ["chunked", "step"])
def test_a_titans_state_is_checked_by_the_mixers_name(form):
    """Titans' memory state was checked by chunk_titans (fused_recurrent_titans for step, calling it
    initial_state), and an integer one raised ValueError where the others raise TypeError."""
    from dsf.terms import MemoryState

    spec = dsf.zoo.get("titans", memory="linear")
    inp = _f32(spec.random_inputs(2, 3, 2, 16, 16, seed=0))
    m = kernels.compile(spec)
    _, S = m.chunked(output_final_state=True, **inp)
    arg = "state" if form == "step" else "initial_state"
    run = (lambda st: m.step(st, **{k: v[:, 0] for k, v in inp.items()})) if form == "step" else \
        (lambda st: m.chunked(initial_state=st, **inp))
    with pytest.raises(ValueError, match=rf"^titans: {arg}.weights\[0\] \(the memory S\) must have shape "
                                         r"\[B, H, K, V\] = \(2, 2, 16, 16\), got \(1, 2, 16, 16\)"):
        run(MemoryState((S.weights[0][:1],), S.momentum))
    with pytest.raises(TypeError, match=rf"^titans: {arg}.momentum\[0\] \(the momentum Z\) must be floating-point"):
        run(MemoryState(S.weights, (S.momentum[0].long(),)))


@pytest.mark.parametrize("name,path", [(n, p) for n in ("mamba2", "gla", "deltanet", "gated_deltanet")
                                       for p in ("default", "one-pass", "segments", "recurrent")] + [("s6", "default")])
def test_only_the_initial_state_needs_a_gradient(monkeypatch, name, path):
    """A state carried in from a frozen prefix: only initial_state requires grad. Each forward decides
    from needs_input_grad whether to store what a backward reads; leaving the state out of that test
    crashed the one-pass backward and gave a silently wrong dh0 in the delta rule's (found by hand
    mutation). Every forward path, with the final state in the loss too."""
    import kernels.delta.chunk as delta_chunk
    import kernels.diag.chunk as diag_chunk

    if path in ("one-pass", "segments"):
        for mod in (diag_chunk, delta_chunk):
            monkeypatch.setattr(mod, "FUSED_FORWARD", True)
            monkeypatch.setattr(mod, "FUSED_MIN_PROGRAMS", 1 if path == "one-pass" else 1000)
        monkeypatch.setattr(delta_chunk, "SEGMENTS", path == "segments")
    spec = dsf.zoo.get(name)
    inp = spec.random_inputs(1, 70, 2, 16, 16, seed=5)
    h0 = torch.randn_like(dsf.recurrent(spec, **inp)[1]).requires_grad_()
    o_ref, S_ref = dsf.recurrent(spec, **inp, initial_state=h0)
    R, R2 = torch.randn_like(o_ref), torch.randn_like(S_ref)
    (ref,) = torch.autograd.grad((o_ref * R).sum() + (S_ref * R2).sum(), h0)
    h0 = h0.detach().float().requires_grad_()
    c = kernels.compile(spec)
    o, S = (c.recurrent if path == "recurrent" else c.chunked)(**_f32(inp), initial_state=h0, output_final_state=True)
    assert rel_err(o, o_ref) < TOL and rel_err(S, S_ref) < TOL
    (got,) = torch.autograd.grad((o * R.float()).sum() + (S * R2.float()).sum(), h0)
    assert rel_err(got, ref) < TOL
