"""Chunked (WY/UT) delta-rule kernels against the float64 dsf reference.

Runs under Triton's CPU interpreter when there is no GPU (tests/conftest.py sets TRITON_INTERPRET),
so shapes stay small. Every buffer the kernels allocate is poisoned with NaN, so an element a kernel
forgets to write shows up as a NaN in the comparison. Chunk sizes 16, 32 and 64 take the three
paths of the blockwise UT inverse (one, two and four 16 × 16 diagonal blocks).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dsf
import kernels
import kernels.delta.chunk as C
from kernels.delta import chunk_delta, fused_recurrent_delta

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 1e-5  # relative error of fp32 kernels against the float64 reference
ERRORS: dict[str, float] = {}  # worst relative error seen per quantity (printed with -s)

# The interpreter turns the 1-element arrays it uses for scalars into loop bounds via int(array).
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    if ERRORS:
        print("\nworst relative errors: " + ", ".join(f"{k}={v:.2e}" for k, v in sorted(ERRORS.items())))


def rel(out, ref):
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.isfinite(out).all(), "non-finite values (unwritten output?)"
    den = ref.norm()
    return ((out - ref).norm() / den).item() if den > 0 else (out - ref).norm().item()


def check(name, out, ref, tol=TOL):
    assert out.shape == ref.shape, (name, out.shape, ref.shape)
    e = rel(out, ref)
    ERRORS[name] = max(ERRORS.get(name, 0.0), e)
    assert e < tol, f"{name}: relative error {e:.3e} >= {tol:.1e}"


def inputs(mixer, B, T, H, K, V, seed=0):
    d = dsf.random_inputs(mixer, B=B, T=T, H=H, K=K, V=V, seed=seed)
    d.setdefault("g", None)
    return d


def cotangents(B, T, H, K, V, N, h0, dht, seed=1):
    gen = torch.Generator().manual_seed(seed)
    S0 = torch.randn(N, H, K, V, generator=gen, dtype=torch.float64) if h0 else None
    do = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64)
    dS = torch.randn(N, H, K, V, generator=gen, dtype=torch.float64) if dht else None
    return S0, do, dS


def reference(mixer, d, S0, do, dht, scale):
    """float64 dsf recurrence and its autograd gradients (loss = ⟨o, do⟩ + ⟨S_T, dht⟩)."""
    leaves = {n: t.detach().double().cpu().requires_grad_() for n, t in d.items() if t is not None}
    h0 = None if S0 is None else S0.detach().double().cpu().requires_grad_()
    o, S = dsf.recurrent(mixer, **leaves, initial_state=h0, scale=scale)
    loss = (o * do).sum() + (0 if dht is None else (S * dht).sum())
    wrt = list(leaves.values()) + ([h0] if h0 is not None else [])
    names = list(leaves) + (["h0"] if h0 is not None else [])
    return o, S, dict(zip(names, torch.autograd.grad(loss, wrt)))


def run_kernel(d, S0, do, dht, dtype=torch.float32, **kw):
    x = {n: None if t is None else t.to(DEV, dtype if n in "qkv" else torch.float32).requires_grad_()
         for n, t in d.items()}
    h0 = None if S0 is None else S0.to(DEV, torch.float32).requires_grad_()
    o, S = chunk_delta(x["q"], x["k"], x["v"], x["beta"], x["g"], initial_state=h0,
                       output_final_state=dht is not None, **kw)
    outs, gos = [o], [do.to(DEV, o.dtype)]
    if dht is not None:
        outs.append(S)
        gos.append(dht.to(DEV, torch.float32))
    torch.autograd.backward(outs, gos)
    grads = {n: t.grad for n, t in x.items() if t is not None}
    if h0 is not None:
        grads["h0"] = h0.grad
    return o, S, grads


def compare(mixer, d, S0, do, dht, scale=None, tol=TOL, dtype=torch.float32, **kw):
    o, S, grads = run_kernel(d, S0, do, dht, dtype=dtype, scale=scale, **kw)
    o_r, S_r, grads_r = reference(mixer, d, S0, do, dht, scale)
    tag = "" if dtype == torch.float32 else str(dtype).replace("torch.", "") + ":"
    assert o.dtype == dtype
    check(tag + "o", o, o_r, tol)
    if dht is not None:
        assert S.dtype == torch.float32
        check(tag + "final_state", S, S_r, tol)
    else:
        assert S is None
    assert set(grads) == set(grads_r)
    for n in grads_r:
        assert grads[n].dtype == (dtype if n in "qkv" else torch.float32), n
        check(tag + "d" + n, grads[n], grads_r[n], tol)


def compare_no_grad(tag, mixer, d, S0, do, scale, cs):
    """Output and final state of a forward without autograd (fp32) against float64."""
    x = {n: None if t is None else t.float().to(DEV) for n, t in d.items()}
    with torch.no_grad():
        o, S = chunk_delta(x["q"], x["k"], x["v"], x["beta"], x["g"], scale=scale, chunk_size=cs,
                           initial_state=None if S0 is None else S0.float().to(DEV), output_final_state=True)
    o_r, S_r, _ = reference(mixer, d, S0, do, None, scale)
    check(tag + ":o", o, o_r)
    check(tag + ":final_state", S, S_r)


# B, T, H, K, V, chunk size, scale, with initial state, with d(final state)
CASES = [
    (2, 1, 2, 16, 16, 16, None, False, False),   # T = 1, no states, default scale K^-0.5
    (2, 1, 1, 16, 16, 16, None, True, True),     # T = 1 from an initial state
    (1, 7, 2, 16, 16, 16, 0.5, True, True),      # shorter than one chunk
    (2, 33, 1, 16, 16, 16, None, True, True),    # three chunks, the last one ragged
    (1, 40, 1, 16, 16, 32, 1.0, True, False),    # two 16-blocks in the UT inverse, no dht
    (1, 70, 1, 16, 16, 64, None, True, True),    # four 16-blocks, a full and a ragged chunk
    (1, 9, 1, 24, 20, 16, None, True, True),     # head dims that are not powers of two
]


@pytest.mark.parametrize("mixer", ["deltanet", "gated_deltanet"])
@pytest.mark.parametrize("B,T,H,K,V,cs,scale,h0,dht", CASES,
                         ids=[f"B{c[0]}T{c[1]}H{c[2]}K{c[3]}V{c[4]}C{c[5]}" for c in CASES])
def test_forward_backward(mixer, B, T, H, K, V, cs, scale, h0, dht):
    d = inputs(mixer, B, T, H, K, V, seed=T + K)
    S0, do, dS = cotangents(B, T, H, K, V, B, h0, dht)
    compare(mixer, d, S0, do, dS, scale=scale, chunk_size=cs)


@pytest.mark.parametrize("mixer", ["deltanet", "gated_deltanet"])
def test_tiled_head_dims(monkeypatch, mixer):
    """Force 16-wide key and value tiles: K = 40 takes three key tiles, V = 48 three value tiles."""
    monkeypatch.setattr(C, "_tiles", lambda K, V: (C.next_pow2(K), 16, 16, 16))
    B, T, H, K, V = 1, 20, 2, 40, 48
    d = inputs(mixer, B, T, H, K, V, seed=3)
    S0, do, dS = cotangents(B, T, H, K, V, B, True, True, seed=2)
    compare(mixer, d, S0, do, dS, chunk_size=16)


@pytest.mark.parametrize("cs", [16, 64])
def test_strong_decays(cs):
    """log decays of −5 … −20 every step: G reaches −1000 inside a chunk and dg is ~1e-4 per token.

    Exercises the (hi, lo) cumulative gates and the terms-that-hold-g_j form of dg: a plain fp32
    cumsum costs the state ~3e-5 (T = 100 leaves 36 tokens in the last chunk of 64, whose G then
    reaches about −450) and the q·dq − k·dk shortcut costs dg ~1e-3.
    """
    B, T, H, K, V = 1, 100, 1, 32, 16
    d = inputs("gated_deltanet", B, T, H, K, V, seed=11)
    d["g"] = -5 - 15 * torch.rand(B, T, H, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    S0, do, dS = cotangents(B, T, H, K, V, B, True, True, seed=5)
    compare("gated_deltanet", d, S0, do, dS, chunk_size=cs)


@pytest.mark.parametrize("case", [c for c in CASES if c[1] > 1], ids=lambda c: f"T{c[1]}C{c[5]}")
def test_ut_by_substitution(monkeypatch, case):
    """The diagonal blocks of T by forward substitution (UT_POWERS = False) instead of the default
    product of powers: chunk sizes 16, 32 and 64, the gated rule."""
    assert C.UT_POWERS
    monkeypatch.setattr(C, "UT_POWERS", False)
    B, T, H, K, V, cs, scale, h0, dht = case
    d = inputs("gated_deltanet", B, T, H, K, V, seed=T + K)
    S0, do, dS = cotangents(B, T, H, K, V, B, h0, dht)
    compare("gated_deltanet", d, S0, do, dS, scale=scale, chunk_size=cs)


@pytest.mark.parametrize("mixer", ["deltanet", "gated_deltanet"])
@pytest.mark.parametrize("case", [c for c in CASES if c[1] > 1] + [(1, 70, 1, 100, 16, 64, None, True, True)],
                         ids=lambda c: f"T{c[1]}K{c[3]}C{c[5]}")
def test_ut_keys_once(monkeypatch, count_launches, mixer, case):
    """The UT kernel's blocks of A from each row block's keys loaded once (UT_KEYS_ONCE, forced on for
    fp32 here): chunk sizes 16, 32 and 64, ragged chunks, K = 24 and 100 (padded to 32 and 128),
    forward and every gradient vs float64; and off where K pads past 128."""
    monkeypatch.setattr(C, "UT_KEYS_ONCE", True)
    seen = count_launches(C, "_ut_kernel")
    B, T, H, K, V, cs, scale, h0, dht = case
    d = inputs(mixer, B, T, H, K, V, seed=T + K)
    S0, do, dS = cotangents(B, T, H, K, V, B, h0, dht)
    compare(mixer, d, S0, do, dS, scale=scale, chunk_size=cs)
    assert {kw["ONCE"] for _, kw in seen} == {True} and seen[0][1]["KP"] == C.next_pow2(max(16, K))
    assert C._ut_once(torch.float32, 256) is False and C._ut_once(torch.bfloat16, 128) is True
    monkeypatch.setattr(C, "UT_KEYS_ONCE", None)
    assert C._ut_once(torch.float32, 128) is False and C._ut_once(torch.bfloat16, 128) is True


def test_ut_launch_warps(monkeypatch, count_launches):
    """The UT kernel's warps: LAUNCH["ut"] (one) for bf16 up to K = V = 128, UT_WARPS (one) for fp16 /
    fp32 up to K = 128 (the fp32 launch here, fp16 by the rule), four over K = 128."""
    assert C.LAUNCH["ut"]["num_warps"] == 1 and C.UT_WARPS == 1
    monkeypatch.setattr(C, "UT_WARPS", 2)
    seen = count_launches(C, "_ut_kernel")
    d = inputs("deltanet", 1, 20, 1, 16, 16)
    chunk_delta(*(d[n].float().to(DEV) for n in ("q", "k", "v", "beta")), chunk_size=16)
    assert [kw["num_warps"] for _, kw in seen] == [2]
    bf16, fp16 = torch.bfloat16, torch.float16

    def warps(dtype, K):
        KP = C._tiles(K, K)[0]
        return C._cfg("ut", C._operands(dtype, K)[0], K, K, num_warps=C._ut_warps(KP))["num_warps"]

    assert [warps(bf16, 128), warps(bf16, 256), warps(fp16, 128), warps(torch.float32, 64),
            warps(torch.float32, 256)] == [1, 4, 2, 2, 4]


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("strong,tol", [(False, TOL), (True, 2e-4)])
def test_fast_gates(monkeypatch, strong, tol, fused):
    """fp32 cumulative gates (what 16-bit inputs get, forced here in fp32), two-pass and one-pass
    forward: exact to fp32 under the usual gates; with G reaching −1000 inside a chunk, within 2e-4
    (measured: 6e-5; bf16 is held to 1e-2) for every output and gradient, where the fp64 gates are
    within 1e-5."""
    monkeypatch.setattr(C, "FAST_GATES", True)
    monkeypatch.setattr(C, "FUSED_FORWARD", fused)
    monkeypatch.setattr(C, "FUSED_MIN_PROGRAMS", 1)
    B, T, H, K, V = 1, 100, 1, 32, 16
    d = inputs("gated_deltanet", B, T, H, K, V, seed=11)
    if strong:
        d["g"] = -5 - 15 * torch.rand(B, T, H, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    S0, do, dS = cotangents(B, T, H, K, V, B, True, True, seed=5)
    compare("gated_deltanet", d, S0, do, dS, chunk_size=64, tol=tol)


def test_fast_gates_rule_and_effect(monkeypatch):
    """16-bit inputs take fp32 gates, fp32 inputs fp64 ones, no gate none; under strong decays the
    two differ (the fp64 gates are what keeps fp32 exact there)."""
    assert [C._gated(None, torch.bfloat16), C._gated(torch.ones(1), torch.float32),
            C._gated(torch.ones(1), torch.bfloat16), C._gated(torch.ones(1), torch.float16)] == [0, 1, 2, 2]
    B, T, H, K, V = 1, 100, 1, 32, 16
    d = inputs("gated_deltanet", B, T, H, K, V, seed=11)
    d["g"] = -5 - 15 * torch.rand(B, T, H, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    S0, do, dS = cotangents(B, T, H, K, V, B, True, True, seed=5)
    runs = []
    for fast in (False, True):
        monkeypatch.setattr(C, "FAST_GATES", fast)
        runs.append(run_kernel(d, S0, do, dS, chunk_size=64))
    assert 1e-7 < rel(runs[1][1], runs[0][1]) < 1e-3 and 1e-7 < rel(runs[1][2]["g"], runs[0][2]["g"]) < 1e-3


@pytest.mark.parametrize("mixer", ["deltanet", "gated_deltanet"])
def test_varlen(mixer):
    """Packed sequences of lengths 5, 0, 12, 23: each its own dsf run from its own initial state."""
    cu = [0, 5, 5, 17, 40]
    T, H, K, V, N = cu[-1], 2, 16, 16, len(cu) - 1
    d = inputs(mixer, 1, T, H, K, V, seed=5)
    S0, do, dht = cotangents(1, T, H, K, V, N, True, True, seed=3)
    cu_t = torch.tensor(cu, dtype=torch.int32, device=DEV)
    o, S, grads = run_kernel(d, S0, do, dht, cu_seqlens=cu_t, chunk_size=16, scale=1.0)

    leaves = {n: t.detach().clone().requires_grad_() for n, t in d.items() if t is not None}
    h0 = S0.clone().requires_grad_()
    outs, states = [], []
    for n, (a, b) in enumerate(zip(cu, cu[1:])):
        if a == b:
            states.append(h0[n:n + 1])
            continue
        o_n, S_n = dsf.recurrent(mixer, **{k: t[:, a:b] for k, t in leaves.items()},
                                 initial_state=h0[n:n + 1], scale=1.0)
        outs.append(o_n)
        states.append(S_n)
    o_r, S_r = torch.cat(outs, 1), torch.cat(states, 0)
    loss = (o_r * do).sum() + (S_r * dht).sum()
    grads_r = dict(zip(list(leaves) + ["h0"], torch.autograd.grad(loss, list(leaves.values()) + [h0])))
    check("o", o, o_r)
    check("final_state", S, S_r)
    for n, gr in grads_r.items():
        check("d" + n, grads[n], gr)
    # the empty sequence passes its state (and the state's gradient) straight through
    torch.testing.assert_close(S[1].double().cpu(), S0[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(grads["h0"][1].double().cpu(), dht[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("mixer", ["deltanet", "gated_deltanet", "longhorn"])
def test_compile_chunked_runs_this_kernel(monkeypatch, mixer):
    """kernels.compile(...).chunked goes through chunk_delta; Longhorn lowers to the same terms."""
    assert kernels.supports(mixer)["chunked"] == "chunk"
    calls = []
    real = C.ChunkDelta.apply
    monkeypatch.setattr(C.ChunkDelta, "apply", lambda *a: calls.append(1) or real(*a))
    spec = dsf.zoo.get(mixer)
    inp = spec.random_inputs(2, 19, 2, 16, 16, seed=4)
    S0 = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    ref_leaves = {n: t.clone().requires_grad_() for n, t in inp.items()}
    h0_ref = S0.clone().requires_grad_()
    o_ref, S_ref = dsf.recurrent(spec, initial_state=h0_ref, **ref_leaves)
    leaves = {n: t.float().to(DEV).requires_grad_() for n, t in inp.items()}
    h0 = S0.float().to(DEV).requires_grad_()
    o, S = kernels.compile(spec).chunked(initial_state=h0, output_final_state=True, **leaves)
    assert calls, "the chunked kernel did not run"
    check("compile:o", o, o_ref)
    check("compile:final_state", S, S_ref)
    gen = torch.Generator().manual_seed(7)
    w_o = torch.randn(o_ref.shape, generator=gen, dtype=torch.float64)
    w_s = torch.randn(S_ref.shape, generator=gen, dtype=torch.float64)
    g_ref = torch.autograd.grad((o_ref * w_o).sum() + (S_ref * w_s).sum(), list(ref_leaves.values()) + [h0_ref])
    g = torch.autograd.grad((o * w_o.float().to(DEV)).sum() + (S * w_s.float().to(DEV)).sum(),
                            list(leaves.values()) + [h0])
    for name, a, b in zip(list(leaves) + ["initial_state"], g, g_ref):
        check("compile:d" + name, a, b)


def test_no_grad_path_and_fused_kernel_agree():
    d = inputs("gated_deltanet", 2, 21, 1, 16, 16, seed=9)
    x = {n: t.float().to(DEV) for n, t in d.items()}
    args = (x["q"], x["k"], x["v"], x["beta"], x["g"])
    with torch.no_grad():
        o1, S1 = chunk_delta(*args, chunk_size=16)
        o2, S2 = chunk_delta(*args, chunk_size=16, output_final_state=True)
        o_f, S_f = fused_recurrent_delta(*args, output_final_state=True)   # both default to K^-0.5
    assert S1 is None and S2.dtype == torch.float32 and S2.shape == (2, 1, 16, 16)
    q = x["q"].clone().requires_grad_()
    o3, S3 = chunk_delta(q, *args[1:], chunk_size=16, output_final_state=True)
    assert o3.requires_grad and S3.requires_grad
    torch.testing.assert_close(o3.detach(), o1, rtol=0, atol=0)
    torch.testing.assert_close(S3.detach(), S2, rtol=0, atol=0)
    check("vs_fused:o", o1, o_f.double())
    check("vs_fused:final_state", S2, S_f.double())


def test_no_tokens_passes_the_state_through():
    h0 = torch.randn(2, 2, 16, 16, device=DEV, requires_grad=True)
    z = lambda *s: torch.zeros(*s, device=DEV)  # noqa: E731
    o, S = chunk_delta(z(2, 0, 2, 16), z(2, 0, 2, 16), z(2, 0, 2, 16), z(2, 0, 2), z(2, 0, 2),
                       initial_state=h0, output_final_state=True)
    assert o.shape == (2, 0, 2, 16) and torch.equal(S, h0)
    S.sum().backward()
    assert torch.equal(h0.grad, torch.ones_like(h0))


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3)])
def test_half_precision(dtype, tol):
    """fp16 inputs (the interpreter has no bf16 dot); the reference sees the same rounded inputs."""
    mixer, B, T, H, K, V = "gated_deltanet", 1, 20, 1, 16, 16
    d = inputs(mixer, B, T, H, K, V, seed=7)
    for n in "qkv":
        d[n] = d[n].to(dtype).double()
    S0, do, dS = cotangents(B, T, H, K, V, B, True, True, seed=4)
    compare(mixer, d, S0, do.to(dtype).double(), dS, tol=tol, dtype=dtype, chunk_size=16)


# ---------------------------------------------------------------------------------------------
# errors: clear messages from the checks, never a Triton compile error or a bad memory access
# ---------------------------------------------------------------------------------------------

def r(*shape, dtype=torch.float32, device=DEV):
    return torch.randn(*shape, dtype=dtype, device=device)


def z(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype, device=DEV)


def _x(B=1, T=4, H=2, K=16, V=16):
    return dict(q=r(B, T, H, K), k=r(B, T, H, K), v=r(B, T, H, V), beta=r(B, T, H).sigmoid(),
                g=-r(B, T, H).abs())


@pytest.mark.parametrize("over,exc,match", [
    (dict(q=r(1, 4, 2, 16, device="meta")), ValueError, "is on meta"),
    (dict(k=r(1, 4, 2, 16, dtype=torch.float16)), TypeError, "share one dtype"),
    (dict(q=r(1, 4, 2, 16, dtype=torch.float64), k=r(1, 4, 2, 16, dtype=torch.float64),
          v=r(1, 4, 2, 16, dtype=torch.float64)), TypeError, "float32, float16 or bfloat16"),
    (dict(q=r(4, 2, 16)), ValueError, "q must be 4-D"),
    (dict(beta=r(1, 4, 2, 1)), ValueError, "beta must be 3-D"),
    (dict(g=r(1, 4, 3)), ValueError, "g must have shape"),
    (dict(v=r(1, 5, 2, 16)), ValueError, "v must have shape"),
    (dict(beta=z(1, 4, 2, dtype=torch.int64)), TypeError, "floating-point"),
    (dict(q=r(1, 4, 2, 257), k=r(1, 4, 2, 257)), ValueError, "head dim K=257"),
    (dict(v=r(1, 4, 2, 300)), ValueError, "head dim V=300"),
    (dict(initial_state=z(2, 2, 16, 16)), ValueError, "initial_state must have shape"),
    (dict(cu_seqlens=torch.tensor([0.0, 4.0])), TypeError, "int32/int64"),
    (dict(cu_seqlens=torch.tensor([0, 3])), ValueError, "end at T=4"),
    (dict(cu_seqlens=torch.tensor([0, 3, 2, 4])), ValueError, "non-decreasing"),
    (dict(cu_seqlens=torch.tensor([0, 2, 4]), initial_state=z(1, 2, 16, 16)),
     ValueError, "initial_state must have shape"),
    (dict(chunk_size=48), ValueError, "chunk_size must be an int, one of"),
    (dict(chunk_size=True), ValueError, "chunk_size must be an int, one of"),
    (dict(chunk_size=32.0), ValueError, r"chunk_size must be an int, one of \(16, 32, 64\), got 32.0"),
])
def test_errors(over, exc, match):
    kw = _x()
    kw.update(over)
    with pytest.raises(exc, match=match):
        chunk_delta(**kw)


def test_error_packed_batch_needs_b1():
    with pytest.raises(ValueError, match="B=1"):
        chunk_delta(**_x(B=2), cu_seqlens=torch.tensor([0, 2, 4]))


def test_error_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    kw = {n: t.cpu() for n, t in _x().items()}
    with pytest.raises(RuntimeError, match="CUDA"):
        chunk_delta(**kw)


def test_launch_overrides_apply_to_bf16_operands_only():
    """LAUNCH's measured settings reach bf16-operand launches at K, V ≤ 128, clamped to the padded
    head dims; fp32 operands and larger heads keep the defaults the launchers compute."""
    bf16, f32 = torch.bfloat16, torch.float32
    assert C._cfg("dqkw", bf16, 128, 128, BK=64, BV=64, num_warps=4) == {**dict(BK=64, BV=64, num_warps=4),
                                                                       **C.LAUNCH.get("dqkw", {})}
    assert C._cfg("dqkw", f32, 128, 128, BK=64, BV=64, num_warps=8) == dict(BK=64, BV=64, num_warps=8)
    assert C._cfg("dqkw", bf16, 256, 256, BK=64, BV=64, num_warps=8) == dict(BK=64, BV=64, num_warps=8)
    small = C._cfg("wu", bf16, 32, 16, BK=32, BV=16)
    assert small["BK"] <= 32 and small["BV"] <= 16


def test_wy_backward_launches_with_one_stage(count_launches):
    """Guard for a race seen on the H200 (Triton 3.6): with software pipelining the WY backward's dβ
    and dg changed from run to run. Its launches ask for one stage, and LAUNCH does not undo that."""
    seen = count_launches(C, "_wy_bwd_kernel")
    d = {n: (None if t is None else t.float().to(DEV).requires_grad_(True))
         for n, t in inputs("gated_deltanet", 1, 20, 1, 16, 16).items()}
    o, _ = chunk_delta(d["q"], d["k"], d["v"], d["beta"], d["g"])
    o.sum().backward()
    assert [kw.get("num_stages") for _, kw in seen] == [1]
    assert C.LAUNCH.get("wy_bwd", {}).get("num_stages", 1) == 1


@pytest.fixture
def one_pass(monkeypatch, count_launches):
    """Turns on the delta rule's one-pass forward; records whether the output kernel still ran."""
    monkeypatch.setattr(C, "FUSED_FORWARD", True)
    return count_launches(C, "_output_kernel")


@pytest.mark.parametrize("mixer", ["deltanet", "gated_deltanet"])
@pytest.mark.parametrize("B,T,H,K,V,cs,scale,h0,dht", CASES,
                         ids=[f"B{c[0]}T{c[1]}H{c[2]}K{c[3]}V{c[4]}C{c[5]}" for c in CASES])
def test_one_pass_forward(one_pass, mixer, B, T, H, K, V, cs, scale, h0, dht):
    """The scan writes the outputs itself (FUSED_FORWARD): forward and every gradient as before, and
    without autograd (then nothing per chunk is stored) the same output and final state."""
    d = inputs(mixer, B, T, H, K, V, seed=T + K)
    S0, do, dS = cotangents(B, T, H, K, V, B, h0, dht)
    compare(mixer, d, S0, do, dS, scale=scale, chunk_size=cs)
    compare_no_grad("one_pass_no_grad", mixer, d, S0, do, scale, cs)
    assert one_pass == []


def test_one_pass_default_rule(monkeypatch):
    """FUSED_FORWARD = None runs the one-pass forward where the H200 measured it faster: ungated or
    with fp32 gates (16-bit inputs), on CUDA, with a program per SM (132 stood in for the H200's SMs)."""
    assert C.FUSED_FORWARD is None
    monkeypatch.setattr(C, "FUSED_MIN_PROGRAMS", 132)
    cuda = torch.device("cuda")
    assert C._one_pass(128, 128, 64, 128, cuda, gated=False)
    assert C._one_pass(128, 128, 64, 128, cuda, gated=C._gated(torch.ones(1), torch.bfloat16))
    assert not C._one_pass(128, 128, 64, 128, cuda, gated=C._gated(torch.ones(1), torch.float32))
    assert not C._one_pass(32, 128, 64, 128, cuda, gated=False)      # 64 programs
    assert not C._one_pass(128, 128, 64, 128, torch.device("cpu"), gated=False)
    assert not C._one_pass(128, 256, 64, 256, cuda, gated=False)     # K > 128
    monkeypatch.setattr(C, "FUSED_FORWARD", True)
    assert C._one_pass(128, 128, 64, 128, cuda, gated=True)
    monkeypatch.setattr(C, "FUSED_FORWARD", False)
    assert not C._one_pass(128, 128, 64, 128, cuda, gated=False)


@pytest.mark.parametrize("mixer", ["deltanet", "gated_deltanet"])
def test_one_pass_forward_varlen(one_pass, mixer):
    test_varlen(mixer)
    assert one_pass == []


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(B=st.integers(1, 2), T=st.integers(1, 90), K=st.sampled_from([16, 24, 32]), V=st.sampled_from([16, 20, 32]),
       cs=st.sampled_from(C.CHUNK_SIZES), gated=st.booleans(), h0=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_vn_from_ks_random_shapes(monkeypatch, count_launches, B, T, K, V, cs, gated, h0, seed):
    """VN_FROM_KS on random shapes (T = 1, odd, not a multiple of the chunk; head dims that are not
    powers of two): the forward-only one pass forming Vn = T diag(β) (V − diag(e^G) K S) gives the
    float64 recurrence's output and final state, from a given initial state or none."""
    monkeypatch.setattr(C, "FUSED_FORWARD", True)
    monkeypatch.setattr(C, "VN_NARROW_OPERANDS", (torch.bfloat16, torch.float32))   # (the interpreter's)
    monkeypatch.setattr(C, "FUSED_MIN_PROGRAMS", 1)
    monkeypatch.setattr(C, "WU_IN_SCAN", True)              # any dtype (the interpreter runs fp32)
    monkeypatch.setattr(C, "VN_FROM_KS", True)
    scans = count_launches(C, "_state_kernel")
    mixer = "gated_deltanet" if gated else "deltanet"
    d = inputs(mixer, B, T, 1, K, V, seed=seed)
    S0 = torch.randn(B, 1, K, V, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) if h0 else None
    x = {n: None if t is None else t.float().to(DEV) for n, t in d.items()}
    with torch.no_grad():
        o, S = chunk_delta(x["q"], x["k"], x["v"], x["beta"], x["g"], chunk_size=cs, output_final_state=True,
                           initial_state=None if S0 is None else S0.float().to(DEV))
    assert [(kw["WU"], kw["KS"], kw["OUT"]) for _, kw in scans] == [(True, True, True)]
    o_r, S_r = dsf.recurrent(mixer, initial_state=S0, **{n: t for n, t in d.items() if t is not None})
    check("vn_from_ks:o", o, o_r)
    check("vn_from_ks:final_state", S, S_r)


def test_wu_in_scan_rule(monkeypatch):
    """W and U in the scan: by default with bf16 operands only; forced, any dtype; never where the scan
    has fewer programs than SMs (its 16-wide value tiles); switched off, never."""
    bf, f32 = torch.bfloat16, torch.float32
    assert [C._wu_in_scan(bf, False), C._wu_in_scan(f32, False), C._wu_in_scan(bf, True)] == [True, False, False]
    monkeypatch.setattr(C, "WU_IN_SCAN", True)
    assert [C._wu_in_scan(f32, False), C._wu_in_scan(bf, True)] == [True, False]
    # narrow tiles that form Vn from K S (VN_NARROW): the operands of VN_NARROW_OPERANDS (bf16) only
    assert [C._wu_in_scan(bf, True, ks=True), C._wu_in_scan(f32, True, ks=True)] == [True, False]
    monkeypatch.setattr(C, "WU_IN_SCAN", False)
    assert C._wu_in_scan(bf, False) is False


@pytest.mark.parametrize("mixer", ["deltanet", "gated_deltanet"])
@pytest.mark.parametrize("ks,narrow", [(True, True), (True, False), (False, True)])
def test_wu_in_scan_with_narrow_tiles(monkeypatch, count_launches, mixer, ks, narrow):
    """A scan whose value tiles split V into 32-wide pieces keeps the stored W, U even where WU_IN_SCAN
    is forced (builds of such tiles faulted on the H200), unless it forms Vn from K S (VN_FROM_KS) with
    VN_NARROW on: then no _wu_kernel. Either way it matches float64."""
    monkeypatch.setattr(C, "FUSED_FORWARD", True)
    monkeypatch.setattr(C, "VN_NARROW_OPERANDS", (torch.bfloat16, torch.float32))   # (the interpreter's)
    monkeypatch.setattr(C, "FUSED_MIN_PROGRAMS", 1)
    monkeypatch.setattr(C, "WU_IN_SCAN", True)
    monkeypatch.setattr(C, "VN_FROM_KS", ks)
    monkeypatch.setattr(C, "VN_NARROW", narrow)
    monkeypatch.setattr(C, "_state_launch", lambda BVS, KP, V, inter, nw, NH, device: (32, nw))
    monkeypatch.setattr(C, "_pass_tile", lambda NH, V, widest, device, gated=0: 32)
    assert C._wu_in_scan(torch.bfloat16, True, ks=True) == (ks and narrow)
    wu = count_launches(C, "_wu_kernel")
    scans = count_launches(C, "_state_kernel")
    d = inputs(mixer, 1, 20, 1, 16, 64, seed=5)
    x = {n: None if t is None else t.float().to(DEV) for n, t in d.items()}
    with torch.no_grad():
        o, S = chunk_delta(x["q"], x["k"], x["v"], x["beta"], x["g"], chunk_size=16, output_final_state=True)
    assert len(wu) == (0 if ks and narrow else 1)
    assert scans[0][1]["BV"] == 32 and scans[0][1]["WU"] == (ks and narrow)
    o_r, S_r = dsf.recurrent(mixer, **{n: t.double() for n, t in d.items() if t is not None})
    check("narrow:o", o, o_r)
    check("narrow:final_state", S, S_r)


def test_pass_tile_rule(monkeypatch):
    """VN_NARROW's value tile: the widest of 64, 32, 16 (at most ``widest``, no wider than V needs) that
    gives a program to 95% of the SMs (PASS_SM_SHARE; 132 stood in for the H200's), to every SM for a
    gated 64-wide tile: the benchmark's 4K / 8K / 16K at 64 / 64 / 32 for DeltaNet, 64 / 32 / 32 for
    Gated DeltaNet, and 16 where none does; the one pass runs at that tile. And _lone, where LONE_STAGES
    applies (test_lone_stages checks the launches that take it)."""
    monkeypatch.setattr(C, "FUSED_MIN_PROGRAMS", 132)
    cuda = torch.device("cuda")
    gated = C._gated(torch.ones(1), torch.bfloat16)
    assert [C._pass_tile(nh, 128, 64, cuda) for nh in (128, 64, 32, 16, 8)] == [64, 64, 32, 16, 16]
    assert [C._pass_tile(nh, 128, 64, cuda, gated) for nh in (128, 64, 32, 16, 8)] == [64, 32, 32, 16, 16]
    assert C._pass_tile(128, 128, 32, cuda) == 32          # fp32 operands: the state tile at most
    assert C._pass_tile(300, 20, 64, cuda) == 32           # V = 20: a 32-wide tile covers it
    assert C._pass_tile(100, 20, 64, cuda) == 16
    # the one pass at such a tile: 128 programs for 132 SMs (64 sequence-heads, 64-wide), not 120
    assert C._one_pass(64, 128, 64, 128, cuda, 0, narrow=True) and not C._one_pass(64, 128, 64, 128, cuda, 0)
    assert not C._one_pass(60, 128, 64, 128, cuda, 0, narrow=True)
    assert not C._one_pass(64, 128, 64, 128, cuda, gated, narrow=True)
    assert [C._lone(nh, 128, 64, cuda) for nh in (64, 66, 67)] == [True, True, False]
    monkeypatch.setattr(C, "PASS_SM_SHARE", 1.0)           # the old rule: a program per SM
    assert [C._pass_tile(nh, 128, 64, cuda) for nh in (128, 64, 32, 16)] == [64, 32, 16, 16]


@pytest.mark.parametrize("mixer", ["deltanet", "gated_deltanet"])
def test_narrow_pass_only_without_backward(monkeypatch, count_launches, mixer):
    """With few sequence-heads (one; 4 stood in for the SMs) a forward without autograd runs one pass
    at 16-wide tiles forming Vn from K S (VN_NARROW), where 64-wide ones would leave SMs idle; with
    autograd it keeps two passes (the output kernel). Both match float64."""
    monkeypatch.setattr(C, "FUSED_FORWARD", True)
    monkeypatch.setattr(C, "VN_NARROW_OPERANDS", (torch.bfloat16, torch.float32))   # (the interpreter's)
    monkeypatch.setattr(C, "FUSED_MIN_PROGRAMS", 4)
    monkeypatch.setattr(C, "WU_IN_SCAN", True)              # any dtype (the interpreter runs fp32)
    out = count_launches(C, "_output_kernel")
    scans = count_launches(C, "_state_kernel")
    wu = count_launches(C, "_wu_kernel")
    d = inputs(mixer, 1, 70, 1, 16, 64, seed=8)
    S0, do, dS = cotangents(1, 70, 1, 16, 64, 1, True, True)
    compare_no_grad("narrow_pass", mixer, d, S0, do, None, 16)
    assert [(kw["OUT"], kw["BV"], kw["WU"], kw["KS"]) for _, kw in scans] == [(True, 16, True, True)]
    assert out == [] and wu == []
    compare(mixer, d, S0, do, dS, chunk_size=16)
    assert len(out) == 1 and not scans[1][1]["OUT"]
    monkeypatch.setattr(C, "VN_NARROW", False)              # switched off: two passes without autograd too
    compare_no_grad("narrow_pass_off", mixer, d, S0, do, None, 16)
    assert len(out) == 2


def test_narrow_pass_on_most_sms(monkeypatch, count_launches):
    """The forward-only pass at VN_NARROW's tile runs as one pass where its programs cover 95% of the SMs
    (PASS_SM_SHARE; 42 stood in for the SMs: ten sequence-heads at 16-wide tiles, 40 programs), where
    a program per SM would have sent it to two passes; it matches float64 either way."""
    monkeypatch.setattr(C, "FUSED_FORWARD", True)
    monkeypatch.setattr(C, "VN_NARROW_OPERANDS", (torch.bfloat16, torch.float32))   # (the interpreter's)
    monkeypatch.setattr(C, "FUSED_MIN_PROGRAMS", 42)
    monkeypatch.setattr(C, "WU_IN_SCAN", True)
    out = count_launches(C, "_output_kernel")
    scans = count_launches(C, "_state_kernel")
    d = inputs("deltanet", 5, 20, 2, 16, 64, seed=6)
    S0, do, _ = cotangents(5, 20, 2, 16, 64, 5, True, False)
    compare_no_grad("most_sms", "deltanet", d, S0, do, None, 16)
    assert len(out) == 0 and [(kw["OUT"], kw["BV"]) for _, kw in scans] == [(True, 16)]
    monkeypatch.setattr(C, "PASS_SM_SHARE", 1.0)
    compare_no_grad("most_sms_off", "deltanet", d, S0, do, None, 16)
    assert len(out) == 1


@pytest.mark.parametrize("mixer", ["deltanet", "gated_deltanet"])
def test_lone_stages(monkeypatch, mixer):
    """LONE_STAGES: a one pass with no more programs than SMs (2 stood in: one sequence, two heads, one
    value tile each) takes LAUNCH["state_lone"] — without a backward for both rules, before one for
    DeltaNet only; with it off, never. Forward and gradients match float64 either way."""
    monkeypatch.setattr(C, "FUSED_FORWARD", True)
    monkeypatch.setattr(C, "VN_NARROW_OPERANDS", (torch.bfloat16, torch.float32))   # (the interpreter's)
    monkeypatch.setattr(C, "FUSED_MIN_PROGRAMS", 2)
    monkeypatch.setattr(C, "WU_IN_SCAN", True)
    asked, real = [], C._cfg
    monkeypatch.setattr(C, "_cfg", lambda name, *a, **kw: asked.append(name) or real(name, *a, **kw))
    d = inputs(mixer, 1, 20, 2, 16, 64, seed=7)
    S0, do, dS = cotangents(1, 20, 2, 16, 64, 1, True, True)
    lone = []
    for on in (True, False):
        monkeypatch.setattr(C, "LONE_STAGES", on)
        for grad in (False, True):
            asked.clear()
            if grad:
                compare(mixer, d, S0, do, dS, chunk_size=16)
            else:
                compare_no_grad("lone", mixer, d, S0, do, None, 16)
            lone.append("state_lone" in asked)
    assert lone == [True, mixer == "deltanet", False, False]


def test_forward_only_pass_allocates_no_stand_ins(monkeypatch):
    """A forward-only one pass making W and U in its scan allocates T, the output and the final state
    only: W, U and Vn, which it never reads, are kernels._common.stand_in's shared one-element tensor
    (one per dtype and device); the output still matches float64."""
    from kernels._common import stand_in

    monkeypatch.setattr(C, "FUSED_FORWARD", True)
    monkeypatch.setattr(C, "FUSED_MIN_PROGRAMS", 1)
    monkeypatch.setattr(C, "WU_IN_SCAN", True)              # any dtype (the interpreter runs fp32)
    made, poisoned = [], C._empty
    monkeypatch.setattr(C, "_empty", lambda *shape, **kw: made.append(shape) or poisoned(*shape, **kw))
    d = inputs("gated_deltanet", 2, 37, 2, 16, 24, seed=5)
    S0, do, _ = cotangents(2, 37, 2, 16, 24, 2, True, False)
    compare_no_grad("stand_ins", "gated_deltanet", d, S0, do, None, 16)
    assert made == [(74, 2, 16), (74, 2, 24), (2, 2, 16, 24)]
    one = stand_in(torch.float32, torch.device(DEV))
    assert one.numel() == 1 and one is stand_in(torch.float32, torch.device(DEV))
    assert stand_in(torch.float64, torch.device(DEV)).dtype == torch.float64


@pytest.mark.parametrize("ks", [True, False], ids=["vn-from-ks", "w-and-u"])
@pytest.mark.parametrize("mixer", ["deltanet", "gated_deltanet"])
@pytest.mark.parametrize("B,T,H,K,V,cs,scale,h0,dht", [CASES[i] for i in (0, 2, 4, 5)],
                         ids=[f"B{c[0]}T{c[1]}K{c[3]}V{c[4]}C{c[5]}" for c in (CASES[i] for i in (0, 2, 4, 5))])
def test_wu_in_scan(monkeypatch, count_launches, mixer, B, T, H, K, V, cs, scale, h0, dht, ks):
    """WU_IN_SCAN: the one-pass forward without autograd makes W and U inside the scan (no _wu_kernel),
    or with VN_FROM_KS Vn = T diag(β) (V − diag(e^G) K S) without them: output and final state vs
    float64 and vs the stored W, U (the same up to rounding); with autograd the backward's W is
    stored as before."""
    monkeypatch.setattr(C, "FUSED_FORWARD", True)
    monkeypatch.setattr(C, "FUSED_MIN_PROGRAMS", 1)
    monkeypatch.setattr(C, "VN_FROM_KS", ks)
    wu = count_launches(C, "_wu_kernel")
    scans = count_launches(C, "_state_kernel")
    d = inputs(mixer, B, T, H, K, V, seed=T + 3)
    S0, do, dS = cotangents(B, T, H, K, V, B, h0, dht)
    x = {n: None if t is None else t.float().to(DEV) for n, t in d.items()}

    def forward():
        with torch.no_grad():
            return chunk_delta(x["q"], x["k"], x["v"], x["beta"], x["g"], scale=scale, chunk_size=cs,
                               initial_state=None if S0 is None else S0.float().to(DEV), output_final_state=True)
    o_stored, S_stored = forward()
    assert len(wu) == 1
    monkeypatch.setattr(C, "WU_IN_SCAN", True)
    o, S = forward()
    assert len(wu) == 1                                   # not launched this time
    assert scans[-1][1]["WU"] and scans[-1][1]["KS"] == ks
    o_r, S_r, _ = reference(mixer, d, S0, do, None, scale)
    check("wu_in_scan:o", o, o_r)
    check("wu_in_scan:final_state", S, S_r)
    check("wu_in_scan:o_vs_stored", o, o_stored, tol=1e-6)
    compare(mixer, d, S0, do, dS, scale=scale, chunk_size=cs)   # with autograd: W, U stored
    assert len(wu) == 2


TMA_CASES = [   # B, T, H, K, V, chunk size, W/U made in the scan, segments (SMs stood in)
    (2, 33, 1, 16, 16, 16, False, None),    # three chunks, the last one ragged
    (1, 70, 1, 24, 20, 64, True, None),     # head dims that are not powers of two, a ragged chunk of 64
    (1, 150, 2, 32, 24, 16, True, 6),       # over segments
    (2, 100, 1, 24, 20, 32, False, 1000),   # over segments, a chunk each
]


@pytest.mark.parametrize("mixer", ["deltanet", "gated_deltanet"])
@pytest.mark.parametrize("B,T,H,K,V,cs,wu,least", TMA_CASES, ids=[f"T{c[1]}K{c[3]}V{c[4]}C{c[5]}" for c in TMA_CASES])
def test_delta_fused_tma(monkeypatch, count_launches, mixer, B, T, H, K, V, cs, wu, least):
    """FUSED_TMA, SEGMENTS_TMA: the forward-only one pass (whole sequences, over segments) loads k, q and v and
    stores o through tensor descriptors: output and final state vs float64; its launches take them,
    the other scans (states from zero, transitions) and the pass before a backward keep pointers."""
    import kernels._common

    monkeypatch.setattr(C, "FUSED_TMA", True)
    monkeypatch.setattr(C, "SEGMENTS_TMA", True)
    monkeypatch.setattr(kernels._common, "TMA_DTYPES", (torch.float32,))   # (the interpreter's dtype)
    monkeypatch.setattr(C, "FUSED_FORWARD", True)
    monkeypatch.setattr(C, "WU_IN_SCAN", wu)
    monkeypatch.setattr(C, "SEGMENTS_WU_IN_SCAN", wu)
    monkeypatch.setattr(C, "SEGMENTS", least is not None)
    monkeypatch.setattr(C, "FUSED_MIN_PROGRAMS", least or 1)
    scans = count_launches(C, "_state_kernel")
    d = inputs(mixer, B, T, H, K, V, seed=T + 11)
    S0, do, dS = cotangents(B, T, H, K, V, B, True, False)
    x = {n: None if t is None else t.float().to(DEV) for n, t in d.items()}
    with torch.no_grad():
        o, S = chunk_delta(x["q"], x["k"], x["v"], x["beta"], x["g"], chunk_size=cs,
                           initial_state=S0.float().to(DEV), output_final_state=True)
    o_r, S_r, _ = reference(mixer, d, S0, do, None, None)
    check("tma:o", o, o_r)
    check("tma:final_state", S, S_r)
    assert [kw.get("TMA", False) for _, kw in scans if kw["OUT"]] == [True]
    assert not any(kw.get("TMA", False) for _, kw in scans if not kw["OUT"])
    compare(mixer, d, S0, do, dS, chunk_size=cs)   # with autograd: pointers
    assert [kw.get("TMA", False) for _, kw in scans if kw["OUT"]] == [True, False]


def test_delta_fused_tma_value_tiles(monkeypatch, count_launches):
    """The same with the scan's values in 16-wide tiles (V = 24: two, the second half past V)."""
    import kernels._common

    monkeypatch.setattr(C, "FUSED_TMA", True)
    monkeypatch.setattr(kernels._common, "TMA_DTYPES", (torch.float32,))
    monkeypatch.setattr(C, "FUSED_FORWARD", True)
    monkeypatch.setattr(C, "FUSED_MIN_PROGRAMS", 1)
    monkeypatch.setattr(C, "_state_launch", lambda BVS, KP, V, inter, nw, NH, device: (16, nw))
    scans = count_launches(C, "_state_kernel")
    d = inputs("gated_deltanet", 2, 37, 1, 16, 24, seed=4)
    x = {n: None if t is None else t.float().to(DEV) for n, t in d.items()}
    with torch.no_grad():
        o, _ = chunk_delta(x["q"], x["k"], x["v"], x["beta"], x["g"], chunk_size=16)
    o_r, _ = dsf.recurrent("gated_deltanet", **{n: t.double() for n, t in d.items() if t is not None})
    check("tma_tiles:o", o, o_r)
    assert [(kw["TMA"], kw["BV"]) for _, kw in scans] == [(True, 16)]



def _pass_both_ways(monkeypatch, count_launches, mixer, tma, seed, *switches):
    """The forward-only one pass that forms Vn from K S (W and U in the scan, a program per SM forced):
    its launches, and forward(on) running it with each of ``switches`` (kernels.delta.chunk names) set
    to ``on`` over an equal-length batch [2, 75] (five chunks of 16 a sequence, the last ragged;
    K = 24, V = 20: both masked) and over the same tokens as one packed batch of three sequences
    (lengths 75, 40, 35), returning ((o, S), (o_packed, S_packed)); with the inputs and initial state."""
    import kernels._common

    monkeypatch.setattr(kernels._common, "TMA_DTYPES", (torch.float32,))   # (the interpreter's dtype)
    monkeypatch.setattr(C, "FUSED_TMA", tma)
    monkeypatch.setattr(C, "FUSED_FORWARD", True)
    monkeypatch.setattr(C, "FUSED_MIN_PROGRAMS", 1)
    monkeypatch.setattr(C, "WU_IN_SCAN", True)
    scans = count_launches(C, "_state_kernel")
    B, T, H, K, V, cs = 2, 75, 2, 24, 20, 16
    d = inputs(mixer, B, T, H, K, V, seed=seed)
    S0 = cotangents(B, T, H, K, V, B, True, False)[0]
    x = {n: None if t is None else t.float().to(DEV) for n, t in d.items()}
    cu = torch.tensor([0, 75, 115, 150], device=DEV)
    S0p = torch.cat([S0, S0[:1]]).float().to(DEV)

    def forward(on):
        for name in switches:
            monkeypatch.setattr(C, name, on)
        flat = {n: None if t is None else t.reshape(1, B * T, *t.shape[2:]) for n, t in x.items()}
        with torch.no_grad():
            dense = chunk_delta(x["q"], x["k"], x["v"], x["beta"], x["g"], chunk_size=cs,
                                initial_state=S0.float().to(DEV), output_final_state=True)
            packed = chunk_delta(flat["q"], flat["k"], flat["v"], flat["beta"], flat["g"], chunk_size=cs,
                                 initial_state=S0p, output_final_state=True, cu_seqlens=cu)
        return dense, packed

    return scans, forward, d, S0


@pytest.mark.parametrize("mixer", ["deltanet", "gated_deltanet"])
@pytest.mark.parametrize("tma", [True, False], ids=["descriptors", "pointers"])
def test_pass_reads_t_and_gates_ahead(monkeypatch, count_launches, mixer, tma):
    """PASS_T_TMA, PASS_AHEAD: the forward-only one pass that forms Vn from K S reads T through a descriptor
    (with the tiles') and each chunk's β and gates a chunk ahead — the same bits as without, vs float64
    too; for a packed batch (pointers only) the chunks ahead stop at each sequence's end."""
    scans, forward, d, S0 = _pass_both_ways(monkeypatch, count_launches, mixer, tma, 9, "PASS_T_TMA", "PASS_AHEAD")
    (o, S), (op, Sp) = forward(True)
    assert [(kw["T_TMA"], kw["AHEAD"]) for _, kw in scans] == [(tma, True), (False, True)]
    (o0, S0_), (op0, Sp0) = forward(False)
    assert [(kw["T_TMA"], kw["AHEAD"]) for _, kw in scans[2:]] == [(False, False)] * 2
    for a, b in ((o, o0), (S, S0_), (op, op0), (Sp, Sp0)):
        assert torch.equal(a, b)
    o_r, S_r, _ = reference(mixer, d, S0, torch.zeros(d["v"].shape), None, None)
    check("ahead:o", o, o_r)
    check("ahead:final_state", S, S_r)


SEGMENT_CASES = [   # B, T, H, K, V, chunk size, scale, h0, dht, SMs stood in (least), segments expected
    (2, 33, 1, 16, 16, 16, None, True, True, 1000, 3),     # a chunk a segment, the last ragged
    (1, 70, 1, 16, 16, 64, None, True, True, 1000, 2),     # the benchmark's chunk length
    (1, 150, 2, 32, 24, 16, 0.5, True, False, 6, 5),      # two chunks a segment (2 programs, 6 "SMs")
    (2, 100, 1, 24, 20, 32, None, False, True, 1000, 4),   # head dims that are not powers of two
]


@pytest.mark.parametrize("mixer", ["deltanet", "gated_deltanet"])
@pytest.mark.parametrize("B,T,H,K,V,cs,scale,h0,dht,least,nseg", SEGMENT_CASES,
                         ids=[f"B{c[0]}T{c[1]}H{c[2]}K{c[3]}V{c[4]}C{c[5]}S{c[10]}" for c in SEGMENT_CASES])
def test_segments(monkeypatch, count_launches, mixer, B, T, H, K, V, cs, scale, h0, dht, least, nseg):
    """SEGMENTS: the forward over segments (states from zero, transitions, the chain, the pass) gives
    the outputs and final state, and the backward's reverse scan over segments (gradients from zero,
    the transitions' transposes, the reverse chain, the scan) every gradient; without autograd the
    same output and final state. States from zero and transitions by two scans here (the one scan
    of SEGMENT_TRANSITIONS_IN_SCAN, the default, is test_segments_one_scan's)."""
    monkeypatch.setattr(C, "SEGMENTS", True)
    monkeypatch.setattr(C, "FUSED_MIN_PROGRAMS", least)
    monkeypatch.setattr(C, "SEGMENT_TRANSITIONS_IN_SCAN", False)
    offsets = C.seq_bounds(None, B, T, DEV)
    assert C._segments(offsets, B * H, V, max(16, C.next_pow2(K)), DEV, cs) == nseg
    chains = count_launches(C, "_segment_chain_kernel")
    scans = count_launches(C, "_state_kernel")
    d = inputs(mixer, B, T, H, K, V, seed=T + V)
    S0, do, dS = cotangents(B, T, H, K, V, B, h0, dht)
    compare(mixer, d, S0, do, dS, scale=scale, chunk_size=cs)
    compare_no_grad("segments_no_grad", mixer, d, S0, do, scale, cs)
    assert [kw.get("REVERSE", False) for _, kw in chains] == [False, True, False]   # forward, backward, forward
    assert sum(kw.get("EYE", False) for _, kw in scans) == 2   # the backward reuses the forward's transitions


ONE_SCAN_CASES = [   # (B, T, H, K, V, chunk size, SMs stood in), W/U made in the scans
    ((1, 150, 2, 32, 24, 16, 6), False),     # K > V: the transition's tiles outnumber the state's
    ((2, 100, 1, 24, 20, 32, 1000), False),  # head dims that are not powers of two
    ((1, 150, 2, 32, 32, 16, 6), True),
]


@pytest.mark.parametrize("mixer", ["deltanet", "gated_deltanet"])
@pytest.mark.parametrize("case,wu", ONE_SCAN_CASES, ids=["K>V", "odd-dims", "wu"])
def test_segments_one_scan(monkeypatch, count_launches, mixer, case, wu):
    """SEGMENT_TRANSITIONS_IN_SCAN: the segments' states from zero and their transitions from one scan
    (TRANS; no scan from I of its own), with and without W/U made in it: outputs, final state and
    every gradient (the backward's reverse scan uses those transitions) still match float64."""
    B, T, H, K, V, cs, least = case
    monkeypatch.setattr(C, "SEGMENTS", True)
    monkeypatch.setattr(C, "FUSED_MIN_PROGRAMS", least)
    monkeypatch.setattr(C, "SEGMENT_TRANSITIONS_IN_SCAN", True)
    monkeypatch.setattr(C, "WU_IN_SCAN", True if wu else None)   # any dtype (the interpreter runs fp32)
    monkeypatch.setattr(C, "SEGMENTS_WU_IN_SCAN", wu)
    scans = count_launches(C, "_state_kernel")
    d = inputs(mixer, B, T, H, K, V, seed=T + K)
    S0, do, dS = cotangents(B, T, H, K, V, B, True, True)
    compare(mixer, d, S0, do, dS, chunk_size=cs)
    compare_no_grad("segments_one_scan", mixer, d, S0, do, None, cs)
    # with autograd, then without: the scan making both, then the pass; no scan from I
    assert [kw.get("TRANS", False) for _, kw in scans] == [True, False, True, False]
    assert not any(kw.get("EYE", False) for _, kw in scans)
    assert [kw["WU"] for _, kw in scans] == [False, False, wu, wu]
    assert [grid[0] for grid, _ in scans[:1]] == [-(-max(K, V) // scans[0][1]["BV"])]


@pytest.mark.parametrize("one_scan", [True, False], ids=["one-scan", "own-scan"])
@pytest.mark.parametrize("mixer", ["deltanet", "gated_deltanet"])
@pytest.mark.parametrize("B,T,H,K,V,cs,least", [(1, 150, 2, 32, 24, 16, 6), (2, 100, 1, 24, 20, 32, 1000)],
                         ids=["K>V", "odd-dims"])
def test_transitions_from_ks(monkeypatch, count_launches, mixer, one_scan, B, T, H, K, V, cs, least):
    """TRANS_FROM_KS: the segments' scans that make transitions (with the states from zero, or their own
    scan from I) form Vn and Pn = −T diag(β e^G) K P without W: output and final state of a forward
    without autograd still match float64, and every scan got the switch."""
    monkeypatch.setattr(C, "SEGMENTS", True)
    monkeypatch.setattr(C, "FUSED_MIN_PROGRAMS", least)
    monkeypatch.setattr(C, "SEGMENT_TRANSITIONS_IN_SCAN", one_scan)
    monkeypatch.setattr(C, "WU_IN_SCAN", True)            # any dtype (the interpreter runs fp32)
    monkeypatch.setattr(C, "SEGMENTS_WU_IN_SCAN", True)
    monkeypatch.setattr(C, "TRANS_FROM_KS", True)
    wu = count_launches(C, "_wu_kernel")
    scans = count_launches(C, "_state_kernel")
    d = inputs(mixer, B, T, H, K, V, seed=T + K + 1)
    S0, do, _ = cotangents(B, T, H, K, V, B, True, False)
    compare_no_grad("transitions_from_ks", mixer, d, S0, do, None, cs)
    assert wu == [] and [kw["WU"] and kw["KS"] and kw["KS_TRANS"] for _, kw in scans] == [True] * len(scans)
    assert [kw.get("TRANS", False) or kw.get("ZERO_U", False) for _, kw in scans] == (
        [True, False] if one_scan else [False, True, False])


@pytest.mark.parametrize("setting,trans", [(True, False), (None, False), (None, True)],
                         ids=["on", "default-w", "default-from-kp"])
@pytest.mark.parametrize("mixer", ["deltanet", "gated_deltanet"])
def test_segments_wu_in_scan(monkeypatch, count_launches, mixer, setting, trans):
    """SEGMENTS_WU_IN_SCAN: a forward without autograd over segments makes W and U inside its three
    scans (states from zero, transitions, the pass; no _wu_kernel) and matches float64 — switched on,
    for both mixers, by default for the ungated rule, and for the gated one where its transitions come
    from K P (TRANS_FROM_KS); with autograd W and U are stored as before, every gradient matching too.
    The three scans of SEGMENT_TRANSITIONS_IN_SCAN off (on, W/U in its one scan is
    test_segments_one_scan's "wu" case)."""
    monkeypatch.setattr(C, "SEGMENTS", True)
    monkeypatch.setattr(C, "FUSED_MIN_PROGRAMS", 6)
    monkeypatch.setattr(C, "SEGMENT_TRANSITIONS_IN_SCAN", False)
    monkeypatch.setattr(C, "WU_IN_SCAN", True)            # any dtype (the interpreter runs fp32)
    monkeypatch.setattr(C, "SEGMENTS_WU_IN_SCAN", setting)
    monkeypatch.setattr(C, "TRANS_FROM_KS", trans)
    in_scan = setting or mixer == "deltanet" or trans
    wu = count_launches(C, "_wu_kernel")
    scans = count_launches(C, "_state_kernel")
    d = inputs(mixer, 1, 150, 2, 32, 32, seed=13)
    S0, do, dS = cotangents(1, 150, 2, 32, 32, 1, True, True)
    compare_no_grad("segments_wu", mixer, d, S0, do, None, 16)
    assert len(wu) == (0 if in_scan else 1) and [kw["WU"] for _, kw in scans] == [in_scan] * 3
    assert [kw.get("ZERO_U", False) for _, kw in scans] == [False, True, False]
    compare(mixer, d, S0, do, dS, chunk_size=16)
    assert len(wu) == (1 if in_scan else 2) and not any(kw["WU"] for _, kw in scans[3:])


def test_segments_rule(monkeypatch):
    """By default (SEGMENTS = None) segments on CUDA for equal-length batches whose scan has at most a
    quarter as many programs as SMs and at least two chunks, K ≤ 128; switched on, wherever there are
    fewer programs than SMs; SEGMENT_PROGRAMS_PER_SM × SMs programs' worth, at most one per chunk."""
    cuda = torch.device("cuda")
    dense = C.seq_bounds(None, 1, 32768, "cpu")
    two = C.seq_bounds(None, 2, 16384, "cpu")
    monkeypatch.setattr(C, "FUSED_MIN_PROGRAMS", 132)
    assert C.SEGMENTS is None and C.SEGMENT_PROGRAMS_PER_SM == 3
    assert C._segments(dense, 16, 128, 128, cuda, 64) == 13            # 32 programs: 13 segments of 40 chunks
    assert C._segments(two, 32, 128, 128, cuda, 64) is None            # 64 programs: more than a quarter
    assert C._segments(dense, 16, 128, 128, torch.device("cpu"), 64) is None   # not off CUDA
    assert C._segments(dense, 16, 256, 256, cuda, 64) is None          # K > 128
    packed = C.seq_bounds(torch.tensor([0, 100, 32768]), 1, 32768, "cpu")
    assert C._segments(packed, 32, 128, 128, cuda, 64) is None
    assert C._segments(C.seq_bounds(None, 1, 64, "cpu"), 16, 128, 128, cuda, 64) is None     # one chunk
    monkeypatch.setattr(C, "SEGMENTS", True)
    assert C._segments(two, 32, 128, 128, cuda, 64) == 7               # 64 programs: 7 segments of 37 chunks
    assert C._segments(dense, 16, 128, 128, torch.device("cpu"), 64) == 13
    assert C._segments(C.seq_bounds(None, 8, 4096, "cpu"), 128, 128, 128, cuda, 64) is None   # 256 programs
    monkeypatch.setattr(C, "SEGMENTS", False)
    assert C._segments(dense, 16, 128, 128, cuda, 64) is None
    monkeypatch.setattr(C, "SEGMENTS", None)
    monkeypatch.setattr(C, "FUSED_FORWARD", False)
    assert C._segments(dense, 16, 128, 128, cuda, 64) is None          # no one pass at all


def test_chain_blocks(monkeypatch, count_launches):
    """The chain over segments in blocks smaller than K and V (BR = BV = 16 at K = 48, V = 40: three
    row blocks, a masked value block), forward and reverse: every output, state and gradient still
    matches float64. LAUNCH["chain"] reaches the launch for bf16 operands, BR never wider than the
    padded K."""
    monkeypatch.setattr(C, "SEGMENTS", True)
    monkeypatch.setattr(C, "FUSED_MIN_PROGRAMS", 1000)
    monkeypatch.setattr(C, "_chain_cfg", lambda inter, K, V: dict(BR=16, BV=16, num_warps=2))
    chains = count_launches(C, "_segment_chain_kernel")
    d = inputs("gated_deltanet", 1, 100, 2, 48, 40, seed=21)
    S0, do, dS = cotangents(1, 100, 2, 48, 40, 1, True, True)
    compare("gated_deltanet", d, S0, do, dS, chunk_size=32)
    assert [(grid, kw["BR"], kw["BV"]) for grid, kw in chains] == [((3, 2), 16, 16)] * 2
    monkeypatch.undo()
    monkeypatch.setattr(C, "LAUNCH", {**C.LAUNCH, "chain": dict(BR=64, BV=64, num_warps=8, num_stages=2)})
    assert C._chain_cfg(torch.bfloat16, 32, 128) == dict(BR=32, BV=64, num_warps=8, num_stages=2, PREC="ieee")
    # fp32: the defaults
    assert C._chain_cfg(torch.float32, 128, 128) == dict(BR=32, BV=32, num_warps=4, PREC="ieee")


def test_chain_products_switch(monkeypatch, count_launches):
    """CHAIN_PRODUCTS = "tf32x3" reaches both chain launches (forward and reverse) as their precision,
    and every output, state and gradient over segments still matches float64."""
    monkeypatch.setattr(C, "SEGMENTS", True)
    monkeypatch.setattr(C, "FUSED_MIN_PROGRAMS", 1000)
    monkeypatch.setattr(C, "CHAIN_PRODUCTS", "tf32x3")
    chains = count_launches(C, "_segment_chain_kernel")
    d = inputs("gated_deltanet", 1, 100, 2, 32, 24, seed=22)
    S0, do, dS = cotangents(1, 100, 2, 32, 24, 1, True, True)
    compare("gated_deltanet", d, S0, do, dS, chunk_size=32)
    assert [kw["PREC"] for _, kw in chains] == ["tf32x3"] * 2


def test_segmented_backward_makes_its_own_transitions(monkeypatch, count_launches):
    """A backward over segments after a forward that ran whole (SEGMENTS switched on in between) makes
    the transitions itself, and every gradient still matches float64."""
    d = inputs("gated_deltanet", 1, 70, 2, 16, 16, seed=11)
    S0, do, dS = cotangents(1, 70, 2, 16, 16, 1, True, True)
    monkeypatch.setattr(C, "FUSED_MIN_PROGRAMS", 1000)
    scans = count_launches(C, "_state_kernel")
    x = {n: None if t is None else t.float().to(DEV).requires_grad_() for n, t in d.items()}
    h0 = S0.float().to(DEV).requires_grad_()
    o, S = chunk_delta(x["q"], x["k"], x["v"], x["beta"], x["g"], initial_state=h0, output_final_state=True,
                       chunk_size=16)
    monkeypatch.setattr(C, "SEGMENTS", True)
    torch.autograd.backward([o, S], [do.float(), dS.float()])
    assert [kw.get("EYE", False) for _, kw in scans] == [False, True]   # the whole forward's scan, then P
    _, _, grads_r = reference("gated_deltanet", d, S0, do, dS, None)
    for n, t in list(x.items()) + [("h0", h0)]:
        if t is not None:
            check("segmented_backward:d" + n, t.grad, grads_r[n])


def test_ex2_rule(monkeypatch):
    """PASS_EX2 (_ex2): the one-instruction exps (EX2 = 2) in a compiled forward-only pass forming Vn from
    K S whose gates sum in fp32 without lo parts (16-bit inputs), the bf16 decayed keys for bf16 operands
    only (fp16 inputs' are fp32); never for fp32 inputs' gate pairs, other passes, under the interpreter,
    or with the switch off; in other forward scans (before a backward) with PASS_EX2_BACKWARD. UT_EX2
    (_ut_ex2): the UT kernel's, on the same gates."""
    monkeypatch.setattr(C._common, "interpreting", lambda: False)
    assert C._ex2(True, 2, torch.bfloat16) == dict(EX2=2, KD16=True)
    assert C._ex2(True, 2, torch.float32) == dict(EX2=2, KD16=False)
    off = dict(EX2=0, KD16=False)
    assert C._ex2(True, 1, torch.float32) == off and C._ex2(True, 0, torch.bfloat16) == off
    assert C._ex2(False, 2, torch.bfloat16) == dict(EX2=2, KD16=True)    # before a backward too
    monkeypatch.setattr(C, "PASS_EX2_BACKWARD", False)
    assert C._ex2(False, 2, torch.bfloat16) == off and C._ex2(True, 2, torch.bfloat16)["EX2"] == 2
    monkeypatch.setattr(C, "PASS_EX2", False)
    assert C._ex2(True, 2, torch.bfloat16) == off
    assert C._ut_ex2(2) == 2 and C._ut_ex2(1) == 0 and C._ut_ex2(0) == 0
    monkeypatch.setattr(C, "UT_EX2", False)
    assert C._ut_ex2(2) == 0
    monkeypatch.setattr(C, "PASS_EX2", True)
    monkeypatch.setattr(C, "UT_EX2", True)
    monkeypatch.setattr(C._common, "interpreting", lambda: True)
    assert C._ex2(True, 2, torch.bfloat16) == off and C._ut_ex2(2) == 0


@pytest.mark.parametrize("fused", [True, False], ids=["one-pass", "two-passes"])
def test_ut_in_log2_units(monkeypatch, count_launches, fused):
    """EX2 = 1 (the interpreter's stand-in for UT_EX2's and PASS_EX2_BACKWARD's ex2 instruction) in the UT
    kernel and in the forward's scans before a backward (the one pass, or the state scan of two passes):
    Gated DeltaNet's T and states from log decays summed in log2 units, the exps as 2^x, give outputs,
    final state and every gradient (initial state's included) within float64's tolerance; every UT
    launch and forward scan got it."""
    monkeypatch.setattr(C, "_ut_ex2", lambda gated: 1 if gated else 0)
    monkeypatch.setattr(C, "_ex2", lambda from_ks, gated, inter: dict(EX2=1 if gated else 0, KD16=False))
    monkeypatch.setattr(C, "FUSED_FORWARD", fused)
    ut = count_launches(C, "_ut_kernel")
    scans = count_launches(C, "_state_kernel")
    d = inputs("gated_deltanet", 2, 70, 2, 16, 24, seed=22)
    S0, do, dS = cotangents(2, 70, 2, 16, 24, 2, True, True)
    compare("gated_deltanet", d, S0, do, dS, chunk_size=64)
    assert ut and all(kw["EX2"] == 1 for _, kw in ut)
    assert scans[0][1]["OUT"] == fused and scans[0][1]["EX2"] == 1


@pytest.mark.parametrize("segments", [False, True], ids=["one-pass", "segments"])
def test_pass_in_log2_units(monkeypatch, count_launches, segments):
    """EX2 = 1 (the interpreter's stand-in for PASS_EX2's ex2 instruction): the forward-only pass of
    Gated DeltaNet, whole sequences or over segments (its three scans), with every exp taken as 2^x of
    log decays scaled to log2 units, still matches float64 (fp32 here, the gate pairs' lo parts scaled
    too); every scan forming Vn from K S got it."""
    monkeypatch.setattr(C, "_ex2", lambda from_ks, gated, inter: dict(EX2=1 if from_ks and gated else 0,
                                                                      KD16=False))
    monkeypatch.setattr(C, "FUSED_FORWARD", True)
    monkeypatch.setattr(C, "WU_IN_SCAN", True)              # any dtype (the interpreter runs fp32)
    monkeypatch.setattr(C, "SEGMENTS", segments)
    monkeypatch.setattr(C, "SEGMENTS_WU_IN_SCAN", True)
    monkeypatch.setattr(C, "FUSED_MIN_PROGRAMS", 6 if segments else 1)
    scans = count_launches(C, "_state_kernel")
    d = inputs("gated_deltanet", 1, 150, 2, 32, 24, seed=21)
    S0, do, _ = cotangents(1, 150, 2, 32, 24, 1, True, False)
    compare_no_grad("log2_units", "gated_deltanet", d, S0, do, None, 16)
    assert [kw["EX2"] for _, kw in scans] == [1] * (2 if segments else 1)


@pytest.mark.parametrize("mixer", ["deltanet", "gated_deltanet"])
@pytest.mark.parametrize("tma", [True, False], ids=["descriptors", "pointers"])
def test_pass_merges_ks_and_qs(monkeypatch, count_launches, mixer, tma):
    """PASS_MERGE_KQ: the forward-only pass that forms Vn from K S makes K S and Q S as one product of the
    stacked [K; Q] tile — the outputs and final states of the two products apart, vs float64 too, for
    an equal-length batch and a packed one (K = 24 and V = 20 masked, a ragged last chunk); the default
    rule stacks for the ungated pass at tiles up to 32 wide only."""
    scans, forward, d, S0 = _pass_both_ways(monkeypatch, count_launches, mixer, tma, 13, "PASS_MERGE_KQ")
    (o, S), (op, Sp) = forward(True)
    (o0, S0_), (op0, Sp0) = forward(False)
    assert [kw["MERGE_KQ"] for _, kw in scans] == [True, True, False, False]
    for a, b in ((o, o0), (S, S0_), (op, op0), (Sp, Sp0)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    o_r, S_r, _ = reference(mixer, d, S0, torch.zeros(d["v"].shape), None, None)
    check("merge_kq:o", o, o_r)
    check("merge_kq:final_state", S, S_r)
    # the default rule
    monkeypatch.setattr(C, "PASS_MERGE_KQ", None)
    assert C._merge_kq(0, 32) and C._merge_kq(0, 16) and not C._merge_kq(0, 64)
    assert not C._merge_kq(2, 32) and not C._merge_kq(1, 16)


@pytest.mark.parametrize("mixer", ["deltanet", "gated_deltanet"])
@pytest.mark.parametrize("K,V", [(40, 24), (24, 40)])
def test_k_unlike_v_padded_to_the_wider_dim(monkeypatch, mixer, K, V):
    """UNEQUAL_PAD (how bf16 K ≠ V runs on a GPU, the default since the H200's check; forced here in fp32):
    q, k, v and the initial state zero-padded to max(K, V), run as K = V, cut back — outputs, final state and every
    gradient, the initial state's included, as the float64 recurrence."""
    monkeypatch.setattr(C, "_unequal_bf16", lambda x, K_, V_: "pad" if K_ != V_ else None)
    seen = []
    real = C.ChunkDelta.apply
    monkeypatch.setattr(C.ChunkDelta, "apply", lambda *a: seen.append((a[0].shape[-1], a[2].shape[-1])) or real(*a))
    d = inputs(mixer, 2, 70, 2, K, V, seed=3)
    S0, do, dS = cotangents(2, 70, 2, K, V, 2, True, True)
    compare(mixer, d, S0, do, dS)
    assert seen and all(s == (max(K, V), max(K, V)) for s in seen)


def test_bf16_k_unlike_v_on_a_gpu_is_padded_by_default(monkeypatch):
    """The mode chunk_delta picks for bf16 K ≠ V on CUDA: the padding (0.44 ms against 6.4 for the fp32
    fallback on the H200), the fallback only with UNEQUAL_PAD off, nothing for K = V or off the GPU."""
    x = torch.empty(1, dtype=torch.bfloat16, device="meta")
    monkeypatch.setattr(type(x), "is_cuda", property(lambda t: True))
    assert C._unequal_bf16(x, 128, 64) == "pad" and C._unequal_bf16(x, 64, 64) is None
    monkeypatch.setattr(C, "UNEQUAL_PAD", False)
    assert C._unequal_bf16(x, 128, 64) == "fp32"
    monkeypatch.setattr(C, "UNEQUAL_IN_FP32", False)
    assert C._unequal_bf16(x, 128, 64) is None
    assert C._unequal_bf16(torch.empty(1, dtype=torch.float16, device="meta"), 128, 64) is None


def test_numpy_integer_chunk_size_is_taken_as_an_int():
    """A NumPy integer (a chunk size read from a config array) runs like the int it holds (it was an
    interpreter TypeError inside the kernel)."""
    np = pytest.importorskip("numpy")
    x = {n: t.float().to(DEV) for n, t in inputs("deltanet", 1, 20, 1, 16, 16, seed=3).items() if t is not None}
    args = (x["q"], x["k"], x["v"], x["beta"])
    o_np, _ = chunk_delta(*args, chunk_size=np.int64(16))
    o_int, _ = chunk_delta(*args, chunk_size=16)
    torch.testing.assert_close(o_np, o_int, rtol=0, atol=0)
