"""Diagonal-decay kernels (chunked and fused recurrent) against the float64 dsf reference.

Runs under Triton's CPU interpreter in CI (fp32); the GPU script checks bf16/fp16 at scale.
"""

import pytest
import torch

import dsf
import kernels
from dsf.testing import CASES, case_id, prefix_state, random_case, rel_err, requires_grad
from dsf.forms.recurrent import recurrent_linear
from kernels._common import seq_bounds
from kernels.diag import chunk_diag, diag_step, fused_recurrent_diag

TOL = 1e-5
DIAG = [c for c in CASES if (kernels.supports(dsf.zoo.get(c[0], **c[1])) or {}).get("family") == "diag"
        and c[1].get("feature_map") != "taylor"]


def _grads(out, state, leaves, seed):
    gen = torch.Generator().manual_seed(seed)
    loss = (out * torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)).sum()
    loss = loss + (state * torch.randn(state.shape, generator=gen, dtype=torch.float64).to(state.dtype)).sum()
    gs = torch.autograd.grad(loss, leaves, allow_unused=True)  # qlstm's `a` only acts when reversed
    return [torch.zeros_like(x) if d is None else d for d, x in zip(gs, leaves)]


@pytest.mark.parametrize("form", ["chunked", "recurrent"])
@pytest.mark.parametrize("case", DIAG, ids=case_id)
def test_mixer_matches_reference(case, form):
    """Output, final state and every gradient (initial state included) for each diagonal mixer."""
    chunk = form == "chunked" and kernels.supports(dsf.zoo.get(case[0]))["chunked"] == "chunk"
    T = 67 if chunk else 9      # 67: one full chunk of 64 and a ragged one
    V = 4 if dsf.zoo.get(case[0]).phi_layout == "channel" else 16  # channels run as heads: keep few
    spec, inp = random_case(*case, B=2, T=T, H=2, K=8, V=V, seed=3)
    S0 = prefix_state(spec, inp, 3, seed=3)
    ref_leaves = requires_grad({**inp, "_S0": S0})
    S0_ref = ref_leaves.pop("_S0")
    o_ref, S_ref = dsf.recurrent(spec, initial_state=S0_ref, **ref_leaves)
    leaves = requires_grad({k: v.float() for k, v in {**inp, "_S0": S0}.items()})
    S0_k = leaves.pop("_S0")
    o, S = getattr(kernels.compile(spec), form)(initial_state=S0_k, output_final_state=True, **leaves)
    assert o.dtype == torch.float32 and rel_err(o, o_ref) < TOL and rel_err(S, S_ref) < TOL
    g_ref = _grads(o_ref, S_ref, list(ref_leaves.values()) + [S0_ref], seed=5)
    g = _grads(o, S, list(leaves.values()) + [S0_k], seed=5)
    for name, a, b in zip(list(leaves) + ["initial_state"], g, g_ref):
        assert rel_err(a, b) < TOL, f"d{name}: {rel_err(a, b):.2e}"


@pytest.mark.parametrize("T", [1, 5, 64, 129])
@pytest.mark.parametrize("decay", ["none", "scalar", "key", "value"])
def test_shapes_and_no_state(T, decay):
    """T = 1, odd T, exactly one chunk, a ragged last chunk; no initial state, no final state."""
    spec, inp = random_case("gla" if decay == "key" else "mamba2", {}, B=1, T=T, H=1, K=16, V=16, seed=T)
    q, k, v = inp["q"], inp["k"], inp["v"]
    g = {"none": None, "scalar": inp.get("g"), "key": inp.get("gk"),
         "value": torch.nn.functional.logsigmoid(torch.randn(1, T, 1, 16, dtype=torch.float64) + 2)}[decay]
    ref = recurrent_linear(dsf.LinearTerms(q=q, k=k, u=v, decay=decay, g=g))[0]
    f = lambda x: None if x is None else x.float()  # noqa: E731
    for fn in (chunk_diag, fused_recurrent_diag):
        o, S = fn(f(q), f(k), f(v), decay, f(g))
        assert S is None and rel_err(o, ref) < TOL


@pytest.mark.parametrize("decay", ["none", "scalar", "key"])
def test_varlen_matches_separate_runs(decay):
    """cu_seqlens with an empty and a one-token sequence equals running each sequence alone."""
    cu = torch.tensor([0, 5, 5, 6, 75])
    H, K, V = 2, 16, 16
    name = "gla" if decay == "key" else "mamba2"
    _, inp = random_case(name, {}, B=1, T=75, H=H, K=K, V=V, seed=11)
    g = {"none": None, "scalar": inp.get("g"), "key": inp.get("gk")}[decay]
    h0 = torch.randn(4, H, K, V, dtype=torch.float64)
    f = lambda x: None if x is None else x.float()  # noqa: E731
    for fn in (chunk_diag, fused_recurrent_diag):
        o, S = fn(f(inp["q"]), f(inp["k"]), f(inp["v"]), decay, f(g), f(h0), True, cu)
        for n in range(4):
            a, b = cu[n].item(), cu[n + 1].item()
            if b == a:
                assert torch.allclose(S[n], h0[n].float())
                continue
            sl = lambda x: None if x is None else x[:, a:b]  # noqa: E731
            terms = dsf.LinearTerms(q=sl(inp["q"]), k=sl(inp["k"]), u=sl(inp["v"]), decay=decay, g=sl(g))
            o_ref, S_ref = recurrent_linear(terms, h0[n:n + 1])
            assert rel_err(o[:, a:b], o_ref) < TOL and rel_err(S[n:n + 1], S_ref) < TOL


def test_step_decodes_like_the_recurrence():
    spec, inp = random_case("mamba2", {}, B=2, T=6, H=2, K=8, V=8, seed=1)
    m = kernels.compile("mamba2")
    o_ref, S_ref = dsf.recurrent("mamba2", **inp)
    state = torch.zeros(2, 2, 8, 8)
    outs = []
    for t in range(6):
        o, new = m.step(state, inplace=True, **{n: x[:, t].float() for n, x in inp.items()})
        assert new is state
        outs.append(o)
    assert rel_err(torch.stack(outs, 1), o_ref) < TOL and rel_err(state, S_ref) < TOL


def _qkv(B=1, T=8, H=2, K=16, V=16, dtype=torch.float32):
    return torch.randn(B, T, H, K, dtype=dtype), torch.randn(B, T, H, K, dtype=dtype), torch.randn(B, T, H, V, dtype=dtype)


def test_errors():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"head dim K=300 is not supported"):
        chunk_diag(*_qkv(K=300))
    with pytest.raises(TypeError, match="q, k, v must share a dtype"):
        chunk_diag(q, k, v.double())
    with pytest.raises(ValueError, match="is on meta but q is on cpu"):
        chunk_diag(q, k, v.to("meta"))
    with pytest.raises(ValueError, match="cu_seqlens must start at 0"):
        chunk_diag(q, k, v, cu_seqlens=torch.tensor([1, 8]))
    with pytest.raises(ValueError, match="cu_seqlens must be non-decreasing"):
        chunk_diag(q, k, v, cu_seqlens=torch.tensor([0, 6, 3, 8]))
    with pytest.raises(ValueError, match="cu_seqlens must end at T=8"):
        chunk_diag(q, k, v, cu_seqlens=torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="batch must be packed into B=1"):
        chunk_diag(*_qkv(B=2), cu_seqlens=torch.tensor([0, 8]))
    with pytest.raises(ValueError, match=r"initial_state must have shape \[N, H, K, V\]"):
        chunk_diag(q, k, v, initial_state=torch.zeros(2, 2, 16, 16))
    with pytest.raises(ValueError, match=r"decay='scalar' needs g of shape \(1, 8, 2\)"):
        chunk_diag(q, k, v, "scalar", torch.zeros(1, 8, 2, 16))
    # an integer or bool g was read as log decays of 0 and 1 (the delta and memory kernels refuse it too)
    for fn in (chunk_diag, fused_recurrent_diag):
        with pytest.raises(TypeError, match="g must be a floating-point tensor of log decays, got torch.bool"):
            fn(q, k, v, "scalar", torch.zeros(1, 8, 2) < 1)
    with pytest.raises(TypeError, match="g must be a floating-point tensor of log decays, got torch.int64"):
        diag_step(torch.zeros(1, 2, 16, 16), q[:, 0], k[:, 0], v[:, 0], "scalar", torch.zeros(1, 2, dtype=torch.long))
    # no backward: a q that wants a gradient came back without one
    with pytest.raises(RuntimeError, match="diag_step: a decoding step has no backward, and q require grad"):
        diag_step(torch.zeros(1, 2, 16, 16), q[:, 0].requires_grad_(), k[:, 0], v[:, 0])
    with torch.no_grad():
        diag_step(torch.zeros(1, 2, 16, 16), q[:, 0], k[:, 0], v[:, 0])
    with pytest.raises(ValueError, match=r"mamba2: initial_state must have shape \[B, H, K, V\] = \(1, 2, 16, 16\), "
                                         r"got \(3, 2, 16, 16\)"):
        kernels.compile("mamba2").chunked(q=q, k=k, v=v, g=torch.zeros(1, 8, 2),
                                          initial_state=torch.zeros(3, 2, 16, 16))
    # packed: a row per sequence
    with pytest.raises(ValueError, match=r"mamba2: initial_state must have shape \[N, H, K, V\] = \(2, 2, 16, 16\)"):
        kernels.compile("mamba2").chunked(q=q, k=k, v=v, g=torch.zeros(1, 8, 2), cu_seqlens=torch.tensor([0, 3, 8]),
                                          initial_state=torch.zeros(1, 2, 16, 16))


@pytest.mark.parametrize("name", ["s6", "mingru"])
@pytest.mark.parametrize("form", ["chunked", "recurrent"])
def test_float32_gates_beside_16_bit_activations(name, form):
    """Gates and projections in float32 beside a bf16 x (allowed by the spec's dtype rule) run: the
    kernels take their vectors in x's dtype and return it (a mix was an error naming the kernel's
    q, k, v); bf16-accurate against float64."""
    spec = dsf.zoo.get(name)
    inp = spec.random_inputs(1, 12, 2, 16, 16, seed=0)
    ref, _ = dsf.recurrent(spec, **inp)
    mixed = requires_grad({k: (v.bfloat16() if k == "x" else v.float()) for k, v in inp.items()})
    o, _ = getattr(kernels.compile(spec), form)(**mixed)
    assert o.dtype == torch.bfloat16 and rel_err(o.double(), ref) < 1e-2
    o.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == t.dtype for t in mixed.values())


@pytest.mark.parametrize("name,state,message", [
    ("s6", torch.zeros(3, 3), r"s6: initial_state must have shape \[B, H, N, V\] = \(1, 2, 16, 16\), got \(3, 3\)"),
    ("mingru", torch.zeros(3, 3), r"mingru: initial_state must have shape \[B, H, V\] = \(1, 2, 16\), got \(3, 3\)"),
    ("mingru", torch.zeros(1, 2, 16, dtype=torch.int64), r"mingru: initial_state must be floating-point")])
def test_state_checked_before_its_layout_changes(name, state, message):
    """A state in the wrong shape is refused by name on the families whose state the kernels re-lay
    out (S6's [B, H, N, V], minGRU's [B, H, V]): it was a bare reshape or index error."""
    spec = dsf.zoo.get(name)
    inp = {k: v.float() for k, v in spec.random_inputs(1, 6, 2, 16, 16, seed=0).items()}
    for form in ("chunked", "recurrent"):
        with pytest.raises((ValueError, TypeError), match=message):
            getattr(kernels.compile(spec), form)(initial_state=state, **inp)


@pytest.mark.parametrize("decay", ["none", "scalar", "key", "value"])
@pytest.mark.parametrize("fn", [chunk_diag, fused_recurrent_diag])
def test_float64_is_refused_by_name(fn, decay):
    """float64 runs under the interpreter but does not compile for the GPU: refused on the CPU too,
    pointing at the dsf forms, never a Triton compile error."""
    q, k, v = (t.double() for t in _qkv())
    g = {"none": None, "scalar": torch.zeros(1, 8, 2), "key": torch.zeros(1, 8, 2, 16),
         "value": torch.zeros(1, 8, 2, 16)}[decay]
    with pytest.raises(TypeError, match=r"q, k, v must be float32, float16 or bfloat16, got torch.float64 "
                                        r"\(float64: the dsf reference forms\)"):
        fn(q, k, v, decay, None if g is None else g.double())


@pytest.mark.parametrize("decay", ["none", "scalar", "key", "value"])
@pytest.mark.parametrize("K,V", [(16, 16), (8, 24)])
def test_diag_step_matches_one_recurrent_step(decay, K, V):
    """The one-launch decoding step, in place and out of place, vs one step of the float64 recurrence."""
    from kernels.diag import diag_step

    gen = torch.Generator().manual_seed(7)
    B, H = 3, 2
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    q, k, v = r(B, H, K), r(B, H, K), r(B, H, V)
    g = {"none": None, "scalar": -r(B, H).abs(), "key": -r(B, H, K).abs(), "value": -r(B, H, V).abs()}[decay]
    S0 = r(B, H, K, V)
    terms = dsf.LinearTerms(q=q[:, None].double(), k=k[:, None].double(), u=v[:, None].double(), decay=decay,
                            g=None if g is None else g[:, None].double())
    o_ref, S_ref = recurrent_linear(terms, S0.double())
    o, new = diag_step(S0, q, k, v, decay, g, inplace=False)
    assert new is not S0 and rel_err(o, o_ref[:, 0]) < TOL and rel_err(new, S_ref) < TOL
    state = S0.clone()
    o2, same = diag_step(state, q, k, v, decay, g)
    assert same is state and rel_err(o2, o_ref[:, 0]) < TOL and rel_err(state, S_ref) < TOL


def test_diag_step_errors():
    from kernels.diag import diag_step

    q, k, v, S = torch.randn(2, 2, 16), torch.randn(2, 2, 16), torch.randn(2, 2, 16), torch.zeros(2, 2, 16, 16)
    with pytest.raises(ValueError, match=r"state must have shape \[B, H, K, V\] = \(2, 2, 16, 16\), got \(2, 2, 16, 8\)"):
        diag_step(S[..., :8].contiguous(), q, k, v)
    with pytest.raises(ValueError, match=r"decay='scalar' needs g of shape \(2, 2\), got None"):
        diag_step(S, q, k, v, "scalar")
    with pytest.raises(ValueError, match="inplace=True needs a contiguous float32 state"):
        diag_step(S.double(), q, k, v)
    with pytest.raises(ValueError, match=r"q must be \[B, H, K\], got shape \(2, 1, 2, 16\)"):
        diag_step(S, q[:, None], k, v)
    with pytest.raises(TypeError, match="q, k, v must share one of"):
        diag_step(S, q, k, v.double())


STEP_CASES = [c for c in CASES if (kernels.supports(dsf.zoo.get(c[0], **c[1])) or {}).get("family") in ("diag", "delta")
              and c[1].get("feature_map") != "taylor"]


@pytest.mark.parametrize("case", STEP_CASES, ids=case_id)
def test_compiled_step_decodes_every_mixer(case):
    """compile(mixer).step token by token from a prefix state == the float64 recurrence (fast path or not)."""
    T = 3
    V = 4 if dsf.zoo.get(case[0]).phi_layout == "channel" else 8
    spec, inp = random_case(*case, B=2, T=T, H=2, K=8, V=V, seed=5)
    S0 = prefix_state(spec, inp, 2, seed=5)
    o_ref, S_ref = dsf.recurrent(spec, initial_state=S0, **inp)
    m = kernels.compile(spec)
    # a memory run by these families (TTT-linear) keeps its state as a MemoryState((S,), ())
    memory = isinstance(S0, dsf.MemoryState)
    tensor = (S0.weights[0] if memory else S0).float().contiguous()
    state = dsf.MemoryState((tensor,), ()) if memory else tensor
    outs = []
    with torch.no_grad():
        for t in range(T):
            timed = {i.name for i in spec.inputs if "T" in i.dims}
            one = {n: (x[:, t] if n in timed else x).float() for n, x in inp.items()}
            o, new = m.step(state, inplace=True, **one)
            assert new is state
            outs.append(o)
    S_ref = S_ref.weights[0] if memory else S_ref
    assert rel_err(torch.stack(outs, 1), o_ref) < TOL and rel_err(tensor, S_ref) < TOL


@pytest.fixture
def fused_forward(monkeypatch, count_launches):
    """Turns on the one-pass forward of the scalar-decay kernels and counts its launches."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(dc, "FUSED_FORWARD", True)
    return count_launches(dc, "_fused_fwd_kernel")


@pytest.mark.parametrize("T,least", [(1, None), (67, None), (130, None), (67, 1000), (130, 1000), (323, 6)])
@pytest.mark.parametrize("decay", ["none", "scalar"])
def test_fused_forward_matches_reference(fused_forward, monkeypatch, decay, T, least):
    """The one-pass forward: output and final state with and without autograd, and every gradient
    (initial state included) through the states it stores for the backward. With ``least`` set above
    the batch's B·H programs, each sequence is cut into segments (one chunk each for T = 67 and 130,
    two for T = 323) joined by the scan over segment states."""
    check_fused_forward(fused_forward, monkeypatch, decay, T, least)


@pytest.mark.parametrize("decay,T,least", [("scalar", 1, None), ("scalar", 67, None), ("none", 130, None),
                                           ("scalar", 323, 12)])   # (12: three segments of 8 programs)
def test_fused_tma(fused_forward, monkeypatch, decay, T, least):
    """FUSED_TMA: the one pass moves q, k, v and o through tensor descriptors (whole sequences, then
    over segments; T = 67 leaves a last chunk of 3 tokens whose rows past the end the descriptors
    fill with zeros and do not write; two value tiles): outputs and final state against float64; the
    pass before a backward and a packed batch keep the pointer tiles, and so does fp32 by default."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(dc, "FUSED_TMA", True)
    monkeypatch.setattr(kernels._common, "TMA_DTYPES", (torch.float32,))   # (the interpreter's dtype)
    monkeypatch.setattr(dc, "FUSED_BV", 16)   # V = 24: two value tiles, the second half past V
    check_fused_forward(fused_forward, monkeypatch, decay, T, least)
    # without autograd, then before the backward (which keeps its pointers)
    assert [kw["TMA"] for _, kw in fused_forward] == [True, False]
    fused_forward.clear()
    monkeypatch.setattr(dc, "FUSED_MIN_PROGRAMS", 1)   # (a packed batch is never cut into segments)
    x = torch.randn(1, 9, 2, 16)
    o, _ = chunk_diag(x, x, x, "scalar", torch.zeros(1, 9, 2), cu_seqlens=torch.tensor([0, 4, 9]))
    assert [kw["TMA"] for _, kw in fused_forward] == [False]
    fused_forward.clear()
    monkeypatch.setattr(kernels._common, "TMA_DTYPES", (torch.bfloat16, torch.float16))
    with torch.no_grad():
        chunk_diag(x, x, x, "scalar", torch.zeros(1, 9, 2))
    assert [kw["TMA"] for _, kw in fused_forward] == [False]


def test_tma_ready():
    """Descriptors only for an equal-length batch of 16-byte rows that start 16-byte aligned."""
    from kernels._common import seq_bounds, tma_ready

    dense, packed = seq_bounds(None, 2, 8, "cpu"), seq_bounds(torch.tensor([0, 3, 8]), 1, 8, "cpu")
    x = torch.randn(16, 2, 16)
    assert tma_ready(dense, x, x) and not tma_ready(packed, x, x)
    empty = torch.zeros(3, dtype=torch.int64)
    empty._dense = (2, 0)                                                  # as seq_bounds marks a T = 0 batch
    assert not tma_ready(empty, x[:0])
    assert not tma_ready(dense, torch.randn(16, 2, 6))                      # 24-byte rows
    assert not tma_ready(dense, torch.randn(16 * 2 * 16 + 1)[1:].view(16, 2, 16))   # 4 bytes off
    assert not tma_ready(dense, torch.randn(16, 16, 2).transpose(1, 2))      # not contiguous
    assert not tma_ready(seq_bounds(None, 2, 8, "cpu"), torch.randn(16, 0, 16))   # no heads
    no_batch = torch.zeros(1, dtype=torch.int64)
    no_batch._dense = (0, 8)
    assert not tma_ready(no_batch, x[:0])


def test_descriptor_checks_each_block_once(monkeypatch):
    """kernels._common.descriptor: Triton's TensorDescriptor with the same fields as its checked
    constructor gives; the checks run the first time a block shape is seen (a bad one raises then,
    every time), later ones are built without them. Triton's descriptor must still have exactly the
    fields the fast path sets."""
    import dataclasses

    from triton.tools.tensor_descriptor import TensorDescriptor

    import kernels._common as common

    assert [f.name for f in dataclasses.fields(TensorDescriptor)] == ["base", "shape", "strides", "block_shape",
                                                                     "padding"]
    monkeypatch.setattr(common, "_BLOCKS_SEEN", set())
    checks = []
    monkeypatch.setattr(TensorDescriptor, "__post_init__",
                        lambda self, real=TensorDescriptor.__post_init__: (checks.append(1), real(self)))
    x = torch.randn(2, 8, 3, 16)
    args = (x, [2, 8, 3, 16], [384, 48, 16, 1], [1, 8, 1, 16])
    first, second = common.descriptor(*args), common.descriptor(*args)
    assert len(checks) == 1
    want = TensorDescriptor(*args)
    for d in (first, second):
        assert type(d) is TensorDescriptor and d.base is x and d.padding == "zero"
        assert (d.shape, d.strides, d.block_shape) == (want.shape, want.strides, want.block_shape)
    for _ in range(2):
        with pytest.raises(ValueError, match="power of 2"):
            common.descriptor(x, [2, 8, 3, 16], [384, 48, 16, 1], [1, 8, 1, 12])
    assert len(checks) == 4   # one each time above, the bad block never cached


def test_apply_runs_forward_alone_without_grad(monkeypatch):
    """kernels._common.apply: through autograd where a gradient can follow; else the Function's forward
    as a plain call, on a ctx where no input needs a gradient, with the same outputs."""
    from kernels._common import apply

    seen = []

    class Twice(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, factor):
            seen.append((type(ctx).__name__, tuple(ctx.needs_input_grad)))
            ctx.save_for_backward(x)
            return x * factor

        @staticmethod
        def backward(ctx, dy):
            return dy * 2, None

    x = torch.randn(3, requires_grad=True)
    y = apply(Twice, x, 2.0)
    assert y.grad_fn is not None and seen[-1][1] == (True, False)
    y.sum().backward()
    assert torch.equal(x.grad, torch.full((3,), 2.0))
    with torch.no_grad():
        z = apply(Twice, x, 2.0)
    assert seen[-1] == ("_NoGradCtx", (False, False)) and z.grad_fn is None and torch.equal(z, y)
    w = apply(Twice, x.detach(), 2.0)   # grad mode on, but no input needs a gradient
    assert seen[-1] == ("_NoGradCtx", (False, False)) and torch.equal(w, y)
    import kernels._common as common

    monkeypatch.setattr(common, "PLAIN_FORWARD", False)   # the A/B switch: always through autograd
    with torch.no_grad():
        apply(Twice, x, 2.0)
    assert seen[-1][0] == "TwiceBackward"   # autograd's ctx



def test_dependent_launch_keywords(monkeypatch):
    """Chained launches only where the switch is on and the target is Hopper or later: the chain's
    first kernel waits on nothing launched early (no launch_pdl), the others are; on the CPU (the
    interpreter) and on an sm_80 target, plain launches."""
    import kernels._common as common

    assert common.dependent_launch(True, "cpu") == {"PDL": False}
    monkeypatch.setattr(common, "COMPILE_ARCH", 90)
    assert common.dependent_launch(True, "cpu") == {"PDL": True, "launch_pdl": True}
    assert common.dependent_launch(True, "cpu", first=True) == {"PDL": True}
    assert common.dependent_launch(False, "cpu") == {"PDL": False}
    monkeypatch.setattr(common, "COMPILE_ARCH", 80)
    assert common.dependent_launch(True, "cpu") == {"PDL": False}

@pytest.mark.parametrize("in_scan", [True, False])
@pytest.mark.parametrize("T,least", [(130, 1000), (323, 6)])
def test_segment_decays_in_scan(fused_forward, monkeypatch, count_launches, T, least, in_scan):
    """SEGMENT_DECAY_IN_SCAN: the segments' states-from-zero kernel also sums each segment's log decay
    (the default), or torch sums them: the same outputs, states and gradients."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(dc, "SEGMENT_DECAY_IN_SCAN", in_scan)
    states = count_launches(dc, "_state_kernel")
    check_fused_forward(fused_forward, monkeypatch, "scalar", T, least)
    # without autograd, then with
    assert [kw["STORE_LOGW"] for _, kw in states] == [in_scan, in_scan]


def check_segments_against_reference(T: int, B: int = 2, H: int = 2) -> None:
    """The scalar one pass over segments as set up by the caller: output without autograd and with,
    every gradient (initial state included), then output and final state with a final state asked for,
    all against float64."""
    _, inp = random_case("mamba2", {}, B=B, T=T, H=H, K=16, V=24, seed=T + 5)
    ref_in = requires_grad({"q": inp["q"], "k": inp["k"], "v": inp["v"], "g": inp["g"],
                            "h0": torch.randn(B, H, 16, 24, dtype=torch.float64)})
    terms = dsf.LinearTerms(q=ref_in["q"], k=ref_in["k"], u=ref_in["v"], decay="scalar", g=ref_in["g"])
    o_ref, S_ref = recurrent_linear(terms, ref_in["h0"])
    do = torch.randn_like(o_ref)
    g_ref = torch.autograd.grad((o_ref * do).sum(), list(ref_in.values()), retain_graph=True)
    f = {n: t.detach().float() for n, t in ref_in.items()}
    with torch.no_grad():
        o, S = chunk_diag(f["q"], f["k"], f["v"], "scalar", f["g"], f["h0"], False)
    assert S is None and rel_err(o, o_ref) < TOL
    leaves = requires_grad(f)
    o, _ = chunk_diag(leaves["q"], leaves["k"], leaves["v"], "scalar", leaves["g"], leaves["h0"], False)
    assert rel_err(o, o_ref) < TOL
    for name, a, b in zip(leaves, torch.autograd.grad((o.double() * do).sum(), list(leaves.values())), g_ref):
        assert rel_err(a, b) < TOL, f"d{name}: {rel_err(a, b):.2e}"
    with torch.no_grad():
        o, S = chunk_diag(f["q"], f["k"], f["v"], "scalar", f["g"], f["h0"], True)
    assert rel_err(o, o_ref) < TOL and rel_err(S, S_ref) < TOL


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("T,least,nseg", [(130, 1000, 3), (323, 6, 3)])
def test_segment_skip_last(fused_forward, monkeypatch, count_launches, T, least, nseg, skip):
    """SEGMENT_SKIP_LAST: with no final state asked for, the segments' states from zero run for all
    but each sequence's last segment (which only the final state needs); outputs and every gradient
    still match float64, without autograd and with; asked for, the final state too (all segments)."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(dc, "SEGMENT_SKIP_LAST", skip)
    monkeypatch.setattr(dc, "FUSED_MIN_PROGRAMS", least)
    monkeypatch.setattr(dc, "SEGMENT_PROGRAMS_PER_SM", 2)
    states = count_launches(dc, "_state_kernel")
    B, H = 2, 2
    check_segments_against_reference(T, B, H)
    assert [kw["SKIP_LAST"] for _, kw in states] == [skip, skip, False]
    assert [grid[2] for grid, _ in states] == [(B * nseg - B * skip) * H] * 2 + [B * nseg * H]


# (T, FUSED_MIN_PROGRAMS, SEGMENT_STATE_CHUNKS) → segments, pieces of each: 3 segments of 2 chunks, the
# last ragged, in pieces of 1; 2 segments of 4 and 3 chunks (the band rule) in pieces of 1 (the last
# piece empty) or of 2 (4 = 2 + 2, 3 = 2 + 1)
PIECES = [(323, 6, 1, 3, 2), (400, 5, 1, 2, 4), (400, 5, 3, 2, 2)]


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("T,least,chunks,nseg,split", PIECES)
def test_segment_state_pieces(fused_forward, monkeypatch, count_launches, T, least, chunks, nseg, split, skip):
    """SEGMENT_STATE_CHUNKS: the segments' states from zero by pieces of at most that many chunks
    (ragged and empty pieces included), joined by the scan over segments; outputs, gradients and the
    final state still match float64, with and without SEGMENT_SKIP_LAST."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(dc, "SEGMENT_STATE_CHUNKS", chunks)
    monkeypatch.setattr(dc, "SEGMENT_SKIP_LAST", skip)
    monkeypatch.setattr(dc, "FUSED_MIN_PROGRAMS", least)
    monkeypatch.setattr(dc, "SEGMENT_PROGRAMS_PER_SM", 2)
    states = count_launches(dc, "_state_kernel")
    joins = count_launches(dc, "_segment_pass_kernel")
    B, H = 2, 2
    check_segments_against_reference(T, B, H)
    assert [grid[2] for grid, _ in states] == [(B * nseg - B * skip) * split * H] * 2 + [B * nseg * split * H]
    assert [kw["NSKIP"] for _, kw in states] == [split] * 3
    assert [kw["EVERY"] for _, kw in joins] == [split] * 3   # the scan over pieces keeps every split-th


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("rows", [4, 8])
def test_segment_pass_rows(fused_forward, monkeypatch, count_launches, rows, skip):
    """SEGMENT_PASS_ROWS: the scan over segments loads that many at a time, then steps through them in
    order: 3 segments of 2 pieces (6 joined, a block of 4 and a part block, or one part block of 8), the
    last segment's pieces unmade with SEGMENT_SKIP_LAST; outputs, gradients and the final state
    against float64."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(dc, "SEGMENT_PASS_ROWS", rows)
    monkeypatch.setattr(dc, "SEGMENT_STATE_CHUNKS", 1)
    monkeypatch.setattr(dc, "SEGMENT_SKIP_LAST", skip)
    monkeypatch.setattr(dc, "FUSED_MIN_PROGRAMS", 6)
    monkeypatch.setattr(dc, "SEGMENT_PROGRAMS_PER_SM", 2)
    joins = count_launches(dc, "_segment_pass_kernel")
    check_segments_against_reference(323)
    assert [kw["U"] for _, kw in joins] == [rows] * 3 and [kw["EVERY"] for _, kw in joins] == [2] * 3


def check_fused_forward(fused_forward, monkeypatch, decay, T, least):
    """The checks of test_fused_forward_matches_reference, for tests that switch more on."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(dc, "FUSED_MIN_PROGRAMS", least)
    monkeypatch.setattr(dc, "SEGMENT_PROGRAMS_PER_SM", 2)   # T = 323: segments of two chunks, not one
    segments = dc._fused_segments(seq_bounds(None, 2, T, "cpu"), 2, 2, 24, 16, torch.device("cpu"), True)
    assert segments == ({67: 2, 130: 3, 323: 3}[T] if least else 1)
    _, inp = random_case("mamba2", {}, B=2, T=T, H=2, K=16, V=24, seed=T)
    g = inp["g"] if decay == "scalar" else None
    h0 = torch.randn(2, 2, 16, 24, dtype=torch.float64)
    terms = lambda d: dsf.LinearTerms(q=d["q"], k=d["k"], u=d["v"], decay=decay, g=d.get("g"))  # noqa: E731
    ref_in = requires_grad({"q": inp["q"], "k": inp["k"], "v": inp["v"], **({"g": g} if g is not None else {}),
                            "h0": h0})
    o_ref, S_ref = recurrent_linear(terms(ref_in), ref_in["h0"])
    f = {n: t.detach().float() for n, t in ref_in.items()}
    with torch.no_grad():
        o, S = chunk_diag(f["q"], f["k"], f["v"], decay, f.get("g"), f["h0"], True)
    assert rel_err(o, o_ref) < TOL and rel_err(S, S_ref) < TOL
    leaves = requires_grad(f)
    o, S = chunk_diag(leaves["q"], leaves["k"], leaves["v"], decay, leaves.get("g"), leaves["h0"], True)
    assert rel_err(o, o_ref) < TOL and rel_err(S, S_ref) < TOL
    for name, a, b in zip(leaves, _grads(o, S, list(leaves.values()), 4), _grads(o_ref, S_ref, list(ref_in.values()), 4)):
        assert rel_err(a, b) < TOL, f"d{name}: {rel_err(a, b):.2e}"
    assert len(fused_forward) == 2


@pytest.mark.parametrize("tiles,V,grid", [((16, 64), 24, (3, 1)), ((None, 128), 100, (1, 1)),
                                          ((None, 64), 100, (1, 2))], ids=["key-tiles", "whole-state", "value-tiles"])
@pytest.mark.parametrize("forced,least", [(False, None), (True, 1000)], ids=["two-pass", "segments"])
def test_state_kernel_key_tiles(monkeypatch, count_launches, forced, least, tiles, V, grid):
    """STATE_BK and STATE_BV tile the state kernel (K = 48: three key tiles of 16, or one of 64 with the
    last 16 masked; V = 100: one whole padded state of 64 × 128 a program, or two value tiles of 64, the
    second part masked), in the two-pass
    forward and in the segments' states from zero, and DSTATE_TILES the backward's reverse scan (16-wide tiles, the last masked): outputs, final state and
    gradients."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(dc, "STATE_BK", tiles[0])
    monkeypatch.setattr(dc, "STATE_BV", tiles[1])
    monkeypatch.setattr(dc, "DSTATE_TILES", (16, 16))
    monkeypatch.setattr(dc, "FUSED_FORWARD", forced)
    monkeypatch.setattr(dc, "FUSED_MIN_PROGRAMS", least)
    states = count_launches(dc, "_state_kernel")
    _, inp = random_case("mamba2", {}, B=2, T=150, H=1, K=48, V=V, seed=9)
    ref_in = requires_grad({"q": inp["q"], "k": inp["k"], "v": inp["v"], "g": inp["g"],
                            "h0": torch.randn(2, 1, 48, V, dtype=torch.float64)})
    o_ref, S_ref = recurrent_linear(dsf.LinearTerms(q=ref_in["q"], k=ref_in["k"], u=ref_in["v"], decay="scalar",
                                                    g=ref_in["g"]), ref_in["h0"])
    leaves = requires_grad({n: t.detach().float() for n, t in ref_in.items()})
    o, S = chunk_diag(leaves["q"], leaves["k"], leaves["v"], "scalar", leaves["g"], leaves["h0"], True)
    assert rel_err(o, o_ref) < TOL and rel_err(S, S_ref) < TOL
    for name, a, b in zip(leaves, _grads(o, S, list(leaves.values()), 4), _grads(o_ref, S_ref, list(ref_in.values()), 4)):
        assert rel_err(a, b) < TOL, f"d{name}: {rel_err(a, b):.2e}"
    assert len(states) == 1 and states[0][0][:2] == grid


@pytest.mark.parametrize("decay_v", [(), ("state", "pass", "pass_fwd")], ids=["k-scaled", "v-scaled"])
@pytest.mark.parametrize("forced,least", [(False, None), (True, 1000)], ids=["two-pass", "segments"])
def test_decay_on_the_values(monkeypatch, count_launches, forced, least, decay_v):
    """DECAY_V: the state update as Kᵀ (e^{G_L − G} ⊙ V) where the value tile is the narrower (K = 48
    in a 64-wide tile, V = 24 in a 32-wide one): the state kernel (two passes, segments' states from
    zero) and the one pass with and without a backward give the outputs, final state and gradients of
    the keys scaled, against float64; with () no kernel takes it."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(dc, "DECAY_V", decay_v)
    monkeypatch.setattr(dc, "FUSED_FORWARD", forced)
    monkeypatch.setattr(dc, "FUSED_MIN_PROGRAMS", least)
    monkeypatch.setattr(dc, "SEGMENT_PROGRAMS_PER_SM", 2)
    states, passes = count_launches(dc, "_state_kernel"), count_launches(dc, "_fused_fwd_kernel")
    _, inp = random_case("mamba2", {}, B=2, T=150, H=1, K=48, V=24, seed=11)
    ref_in = requires_grad({"q": inp["q"], "k": inp["k"], "v": inp["v"], "g": inp["g"],
                            "h0": torch.randn(2, 1, 48, 24, dtype=torch.float64)})
    o_ref, S_ref = recurrent_linear(dsf.LinearTerms(q=ref_in["q"], k=ref_in["k"], u=ref_in["v"], decay="scalar",
                                                    g=ref_in["g"]), ref_in["h0"])
    f = {n: t.detach().float() for n, t in ref_in.items()}
    with torch.no_grad():
        o, S = chunk_diag(f["q"], f["k"], f["v"], "scalar", f["g"], f["h0"], True)
    assert rel_err(o, o_ref) < TOL and rel_err(S, S_ref) < TOL
    leaves = requires_grad(f)
    o, S = chunk_diag(leaves["q"], leaves["k"], leaves["v"], "scalar", leaves["g"], leaves["h0"], True)
    assert rel_err(o, o_ref) < TOL and rel_err(S, S_ref) < TOL
    for name, a, b in zip(leaves, _grads(o, S, list(leaves.values()), 4), _grads(o_ref, S_ref, list(ref_in.values()), 4)):
        assert rel_err(a, b) < TOL, f"d{name}: {rel_err(a, b):.2e}"
    launches = states + passes   # without autograd, then with (segments: states from zero, then the pass)
    assert len(launches) == (4 if forced else 2)
    assert all(kw["DECAY_V"] == bool(decay_v) for _, kw in launches)


def test_segment_state_tiles_rule(monkeypatch):
    """The segments' states from zero take the whole padded K on CUDA where [K, 64] tiles still give
    SEGMENT_WHOLE_K_PER_SM programs per SM (B·T = 32K, H = 16, K = V = 128: 31 · 16 pieces at T = 32K,
    4 · 2 · 16 at 8K), and then the whole padded V (SEGMENT_WHOLE_STATE, up to 128), STATE_BK's tiles
    elsewhere, off CUDA and when switched off."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(dc, "sm_count", lambda device: 132)   # stands in for the H200's
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert dc.segment_state_tiles(128, 128, 31 * 16, 128, cuda) == (128, 128)
    assert dc.segment_state_tiles(128, 128, 8 * 16, 128, cuda) == (64, 64)
    assert dc.segment_state_tiles(128, 128, 31 * 16, 128, cpu) == (64, 64)
    assert dc.segment_state_tiles(128, 256, 31 * 16, 256, cuda) == (128, 64)   # (no [128, 256] state)
    monkeypatch.setattr(dc, "SEGMENT_WHOLE_STATE", False)
    assert dc.segment_state_tiles(128, 128, 31 * 16, 128, cuda) == (128, 64)
    monkeypatch.setattr(dc, "SEGMENT_WHOLE_K_PER_SM", None)
    assert dc.segment_state_tiles(128, 128, 31 * 16, 128, cuda) == (64, 64)


def test_whole_state_segments(fused_forward, monkeypatch, count_launches):
    """Segments' states from zero with a whole [128, 128] state a program (as SEGMENT_WHOLE_STATE
    gives on the GPU) run under their own launch entry and give the float64 output and final state."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(dc, "FUSED_MIN_PROGRAMS", 1000)
    monkeypatch.setattr(dc, "segment_state_tiles", lambda BK, BV, pieces, V, device: (BK, BV))
    monkeypatch.setattr(dc, "SAFE", {**dc.SAFE, "segment_state_whole": dict(num_warps=2)})
    states = count_launches(dc, "_state_kernel")
    _, inp = random_case("mamba2", {}, B=1, T=150, H=1, K=128, V=100, seed=5)
    h0 = torch.randn(1, 1, 128, 100, dtype=torch.float64)
    o_ref, S_ref = recurrent_linear(dsf.LinearTerms(q=inp["q"], k=inp["k"], u=inp["v"], decay="scalar",
                                                    g=inp["g"]), h0)
    f = {n: inp[n].float() for n in ("q", "k", "v", "g")}
    with torch.no_grad():
        o, S = chunk_diag(f["q"], f["k"], f["v"], "scalar", f["g"], h0.float(), True)
    assert rel_err(o, o_ref) < TOL and rel_err(S, S_ref) < TOL
    assert [(kw["BK"], kw["BV"], kw["num_warps"]) for _, kw in states] == [(128, 128, 2)]


def test_dstate_tiles_rule(monkeypatch):
    """The scalar family's reverse scan takes DSTATE_FEW_TILES on CUDA where its own tiles would give
    at most half as many programs as SMs (B·T = 32K, H = 16, K = V = 128: 32 programs at T = 32K, 64 at
    16K, 128 at 8K), its own elsewhere and off CUDA; DSTATE_TILES overrides both, never wider than the
    family's own."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(dc, "sm_count", lambda device: 132)   # stands in for the H200's
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert dc.dstate_tiles(128, 64, 128, 128, 16, cuda) == (32, 32)       # T = 32K, B = 1
    assert dc.dstate_tiles(128, 64, 128, 128, 32, cuda) == (32, 32)       # T = 16K: 64 programs
    assert dc.dstate_tiles(128, 64, 128, 128, 64, cuda) == (128, 64)      # T = 8K: 128 programs
    assert dc.dstate_tiles(128, 64, 128, 128, 16, cpu) == (128, 64)
    assert dc.dstate_tiles(64, 64) == (64, 64)                            # no shapes: the family's own
    monkeypatch.setattr(dc, "DSTATE_FEW_TILES", None)
    assert dc.dstate_tiles(128, 64, 128, 128, 16, cuda) == (128, 64)
    monkeypatch.setattr(dc, "DSTATE_TILES", (64, 128))
    assert dc.dstate_tiles(128, 64, 128, 128, 128, cuda) == dc.dstate_tiles(128, 64) == (64, 64)


def test_fused_forward_default_rule(monkeypatch):
    """FUSED_FORWARD = None picks the one-pass forward where the H200 measured it faster: without a
    backward where there is a program per SM (132 SMs; B·T = 32K, H = 16, V = 128: 2 value tiles),
    cut into segments where there are fewer (two within a quarter of a program per SM, forward and
    before a backward), before a backward otherwise only where at most half as many, or (16-bit inputs)
    where there is a program per SM; never off CUDA."""
    import kernels.diag.chunk as dc

    assert dc.FUSED_FORWARD is None
    monkeypatch.setattr(dc, "FUSED_MIN_PROGRAMS", 132)   # stands in for the H200's SM count
    cuda = torch.device("cuda")

    def rule(B, T, backward, device=cuda, dtype=torch.float32):
        return dc._fused_segments(seq_bounds(None, B, T, "cpu"), B, 16, 128, 128, device, backward, dtype=dtype)

    assert [rule(8, 4096, False), rule(8, 4096, True)] == [1, None]
    # 16-bit inputs take the pass before a backward too where there is a program per SM
    assert [rule(8, 4096, True, dtype=dt) for dt in (torch.bfloat16, torch.float16)] == [1, 1]
    assert rule(3, 8192, True, dtype=torch.bfloat16) is None     # fewer programs: unchanged
    monkeypatch.setattr(dc, "FUSED_BEFORE_BACKWARD", False)
    assert rule(8, 4096, True, dtype=torch.bfloat16) is None
    monkeypatch.setattr(dc, "FUSED_BEFORE_BACKWARD", True)
    assert [rule(4, 8192, False), rule(4, 8192, True)] == [2, 2]       # 128 programs: two segments
    assert [rule(3, 8192, False), rule(3, 8192, True)] == [11, None]   # 96: 8 per SM, not before a backward
    assert [rule(2, 16384, False), rule(2, 16384, True)] == [16, 16]   # 64
    assert rule(1, 32768, False) == rule(1, 32768, True) == 32   # 8 programs per SM: 16 chunks each
    assert rule(8, 4096, False, torch.device("cpu")) is None
    assert dc._fused_segments(seq_bounds(None, 8, 4096, "cpu"), 8, 16, 128, 256, cuda, False) is None  # K > 128
    monkeypatch.setattr(dc, "FUSED_FORWARD", False)
    assert rule(8, 4096, False) is None and rule(1, 32768, True) is None
    monkeypatch.setattr(dc, "FUSED_FORWARD", True)
    assert rule(8, 4096, True) == 1 and rule(2, 16384, True) == 16 and rule(4, 8192, True) == 2
    packed = seq_bounds(torch.tensor([0, 8192, 16384, 24576, 32768]), 4, 8192, "cpu")
    assert dc._fused_segments(packed, 4, 16, 128, 128, cuda, False) == 1   # packed: one pass, no segments


def test_fused_forward_varlen(fused_forward):
    """Packed sequences (an empty and a one-token one) through the one-pass forward."""
    cu = torch.tensor([0, 5, 5, 6, 75])
    _, inp = random_case("mamba2", {}, B=1, T=75, H=2, K=16, V=16, seed=12)
    h0 = torch.randn(4, 2, 16, 16, dtype=torch.float64)
    f = lambda x: x.float()  # noqa: E731
    o, S = chunk_diag(f(inp["q"]), f(inp["k"]), f(inp["v"]), "scalar", f(inp["g"]), f(h0), True, cu)
    for n in range(4):
        a, b = cu[n].item(), cu[n + 1].item()
        if b == a:
            assert torch.allclose(S[n], h0[n].float())
            continue
        sl = lambda x: x[:, a:b]  # noqa: E731
        o_ref, S_ref = recurrent_linear(dsf.LinearTerms(q=sl(inp["q"]), k=sl(inp["k"]), u=sl(inp["v"]),
                                                        decay="scalar", g=sl(inp["g"])), h0[n:n + 1])
        assert rel_err(o[:, a:b], o_ref) < TOL and rel_err(S[n:n + 1], S_ref) < TOL
    assert len(fused_forward) == 1


def test_fused_forward_keeps_two_passes_for_few_packed_sequences(fused_forward, monkeypatch):
    """A packed batch with fewer programs than wanted is not segmented: the two-pass kernels run."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(dc, "FUSED_MIN_PROGRAMS", 1000)
    cu = torch.tensor([0, 70, 75])
    _, inp = random_case("mamba2", {}, B=1, T=75, H=2, K=16, V=16, seed=13)
    f = lambda x: x.float()  # noqa: E731
    o, _ = chunk_diag(f(inp["q"]), f(inp["k"]), f(inp["v"]), "scalar", f(inp["g"]), None, False, cu)
    o_ref = torch.cat([recurrent_linear(dsf.LinearTerms(q=inp["q"][:, a:b], k=inp["k"][:, a:b], u=inp["v"][:, a:b],
                                                        decay="scalar", g=inp["g"][:, a:b]))[0]
                       for a, b in ((0, 70), (70, 75))], dim=1)
    assert rel_err(o, o_ref) < TOL and fused_forward == []


def test_state_split_rule(monkeypatch):
    """state_split: pieces of at most SEGMENT_STATE_CHUNKS chunks (two for T = 8K's 64-chunk segments,
    none for 16K's 16), none when off or when torch sums the segments' decays (per whole segment)."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(dc, "SEGMENT_STATE_CHUNKS", 32)
    assert [dc.state_split(per) for per in (1, 16, 32, 33, 64, 65)] == [1, 1, 1, 2, 2, 3]
    monkeypatch.setattr(dc, "SEGMENT_DECAY_IN_SCAN", False)
    assert dc.state_split(64) == 1
    monkeypatch.setattr(dc, "SEGMENT_DECAY_IN_SCAN", True)
    monkeypatch.setattr(dc, "SEGMENT_STATE_CHUNKS", None)
    assert dc.state_split(64) == 1


@pytest.mark.parametrize("products", ["tf32x3", "ieee"])
@pytest.mark.parametrize("name,module,kernel", [
    ("mamba2", "kernels.diag.chunk", "_dv_kernel"), ("gla", "kernels.diag.chunk_key", "_output_kernel"),
    ("gated_deltanet", "kernels.delta.chunk", "_ut_kernel")])
def test_fp32_products_switch(monkeypatch, count_launches, name, module, kernel, products):
    """kernels._common.FP32_PRODUCTS ("tf32x3" by default, or "ieee") reaches the fp32 launches of every
    chunked family (diagonal and delta rule) as their product precision; output, final state and
    gradients still match float64 (the interpreter's products; the GPU check judges the tensor cores')."""
    import importlib

    import kernels._common as kc

    assert kc.FP32_PRODUCTS == "tf32x3"
    monkeypatch.setattr(kc, "FP32_PRODUCTS", products)
    launches = count_launches(importlib.import_module(module), kernel)
    spec, inp = random_case(name, {}, B=2, T=67, H=2, K=16, V=16, seed=11)
    ref_leaves = requires_grad(dict(inp))
    o_ref, S_ref = dsf.recurrent(spec, **ref_leaves)
    leaves = requires_grad({k: v.float() for k, v in inp.items()})
    o, S = kernels.compile(spec).chunked(output_final_state=True, **leaves)
    assert rel_err(o, o_ref) < TOL and rel_err(S, S_ref) < TOL
    grads = _grads(o, S, list(leaves.values()), 5), _grads(o_ref, S_ref, list(ref_leaves.values()), 5)
    for n, a, b in zip(leaves, *grads):
        assert rel_err(a, b) < TOL, f"d{n}: {rel_err(a, b):.2e}"
    assert launches and all(kw["PREC"] == products for _, kw in launches)


def test_delta_rule_keeps_exact_fp32_products_over_128_key_dims(monkeypatch):
    """The delta rule's fp32 products: FP32_PRODUCTS up to K = 128, "ieee" above (its tf32x3 state scan
    faults on the H200 at K = 256); 16-bit inputs' mixed products stay tf32."""
    import kernels._common as kc
    import kernels.delta.chunk as dc

    assert dc._operands(torch.float32, 128) == (torch.float32, "tf32x3")
    assert dc._operands(torch.float32, 129) == (torch.float32, "ieee")
    assert dc._operands(torch.float16, 256) == (torch.float32, "tf32")
    monkeypatch.setattr(kc, "FP32_PRODUCTS", "ieee")
    assert dc._operands(torch.float32, 64) == (torch.float32, "ieee")


@pytest.mark.parametrize("T,least", [(130, 1000), (323, 6)])
def test_segment_entry_states_16bit(fused_forward, monkeypatch, T, least):
    """SEGMENT_ENTRY_16BIT: the forward-only pass over segments starts each segment from its entering
    state stored in _state_dtype (bf16 here for fp32 inputs, by a stand-in): the output within that
    rounding of float64, the final state (the scan's, fp32) as exact as without; with autograd the
    entering states stay fp32."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(dc, "SEGMENT_ENTRY_16BIT", True)
    monkeypatch.setattr(dc, "_state_dtype", lambda dtype: torch.bfloat16)
    monkeypatch.setattr(dc, "FUSED_MIN_PROGRAMS", least)
    monkeypatch.setattr(dc, "SEGMENT_PROGRAMS_PER_SM", 2)
    entering, real = [], dc.segment_states
    monkeypatch.setattr(dc, "segment_states", lambda *a, **kw: entering.append(real(*a, **kw)) or entering[-1])
    _, inp = random_case("mamba2", {}, B=2, T=T, H=2, K=16, V=24, seed=T + 7)
    ref_in = {"q": inp["q"], "k": inp["k"], "v": inp["v"], "g": inp["g"],
              "h0": torch.randn(2, 2, 16, 24, dtype=torch.float64)}
    o_ref, S_ref = recurrent_linear(dsf.LinearTerms(q=ref_in["q"], k=ref_in["k"], u=ref_in["v"], decay="scalar",
                                                    g=ref_in["g"]), ref_in["h0"])
    f = {n: t.float() for n, t in ref_in.items()}
    with torch.no_grad():
        o, S = chunk_diag(f["q"], f["k"], f["v"], "scalar", f["g"], f["h0"], True)
    assert [s.dtype for s in entering] == [torch.bfloat16]
    assert rel_err(o, o_ref) < 1e-2 and rel_err(S, S_ref) < TOL, (rel_err(o, o_ref), rel_err(S, S_ref))
    leaves = requires_grad(f)
    chunk_diag(leaves["q"], leaves["k"], leaves["v"], "scalar", leaves["g"], leaves["h0"], True)
    assert [s.dtype for s in entering] == [torch.bfloat16, torch.float32]


def test_segment_entry_dtype(monkeypatch):
    """The entering states' dtype: the per-chunk states' (bf16 for bf16, fp32 for fp16 and fp32 inputs)
    with SEGMENT_ENTRY_16BIT, fp32 without."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(dc, "SEGMENT_ENTRY_16BIT", True)
    assert [dc._entry_dtype(d) for d in (torch.bfloat16, torch.float16, torch.float32)] == [
        torch.bfloat16, torch.float32, torch.float32]
    monkeypatch.setattr(dc, "SEGMENT_ENTRY_16BIT", False)
    assert dc._entry_dtype(torch.bfloat16) == torch.float32


@pytest.mark.parametrize("K,V", [(40, 24), (24, 40)])
@pytest.mark.parametrize("path", ["two passes", "segments"])
def test_equal_tiles_for_unequal_head_dims(monkeypatch, K, V, path):
    """EQUAL_TILES (the candidate fix of 16-bit K ≠ V on the H200): key and value tiles both the wider
    padded dim, so one of them mostly masked lanes; forward, final state and every gradient against
    float64, through the two-pass kernels and the one pass over segments (forced on here in fp32)."""
    import kernels.diag.chunk as dc

    # the default rule: equal tiles for 16-bit inputs only
    assert dc.EQUAL_TILES is None and dc._tiles(K, V, torch.bfloat16) == dc._tiles(K, V, torch.float16) == (64, 64)
    assert dc._tiles(K, V, torch.float32) == (64 if K == 40 else 32, 64 if V == 40 else 32)
    monkeypatch.setattr(dc, "EQUAL_TILES", True)
    assert dc._tiles(K, V) == (64, 64) and dc._tiles(K, V, torch.float32) == (64, 64)
    monkeypatch.setattr(dc, "FUSED_FORWARD", path == "segments")
    monkeypatch.setattr(dc, "FUSED_MIN_PROGRAMS", 1000)
    gen = torch.Generator().manual_seed(K)
    B, T, H = 1, 130, 2
    x = [torch.randn(B, T, H, d, generator=gen, dtype=torch.float64) for d in (K, K, V)]
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, generator=gen, dtype=torch.float64) + 2)
    h0 = torch.randn(B, H, K, V, generator=gen, dtype=torch.float64)
    ref = list(requires_grad(tuple(x + [g, h0])))
    o_ref, S_ref = recurrent_linear(dsf.LinearTerms(q=ref[0], k=ref[1], u=ref[2], decay="scalar", g=ref[3]), ref[4])
    leaves = list(requires_grad(tuple(t.float() for t in x + [g, h0])))
    o, S = chunk_diag(*leaves[:3], "scalar", leaves[3], initial_state=leaves[4], output_final_state=True)
    assert rel_err(o, o_ref) < TOL and rel_err(S, S_ref) < TOL
    g_ref = _grads(o_ref, S_ref, ref, seed=2)
    for a, b in zip(_grads(o, S, leaves, seed=2), g_ref):
        assert rel_err(a, b) < TOL
    assert dc.EQUAL_TILES is True
