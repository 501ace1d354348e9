"""Fused recurrent delta-rule kernels against the float64 dsf reference.

Runs under Triton's CPU interpreter when there is no GPU (tests/conftest.py sets TRITON_INTERPRET),
so shapes stay small. Every buffer the kernels allocate is poisoned with NaN, so an element a kernel
forgets to write shows up as a NaN in the comparison.
"""

from __future__ import annotations

import pytest
import torch

import dsf
import kernels.delta.recurrent as R
from kernels.delta import delta_step, fused_recurrent_delta

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 1e-5  # relative error of fp32 kernels against the float64 reference
ERRORS: dict[str, float] = {}  # worst relative error seen per quantity (printed with -s)

# The interpreter turns the 1-element arrays it uses for scalars into loop bounds via int(array).
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    def nan_empty(*shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    monkeypatch.setattr(R, "_empty", nan_empty)


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
    if mixer == "deltanet":
        d["g"] = None
    return d


def reference(mixer, d, S0, do, dht):
    """float64 dsf run (scale 1: the kernel takes q already scaled) and its autograd gradients."""
    leaves = {n: t.detach().double().cpu().requires_grad_() for n, t in d.items() if t is not None}
    h0 = None if S0 is None else S0.detach().double().cpu().requires_grad_()
    o, S = dsf.recurrent(mixer, **leaves, initial_state=h0, scale=1.0)
    loss = (o * do.double().cpu()).sum()
    if dht is not None:
        loss = loss + (S * dht.double().cpu()).sum()
    wrt = list(leaves.values()) + ([h0] if h0 is not None else [])
    grads = torch.autograd.grad(loss, wrt)
    names = list(leaves) + (["h0"] if h0 is not None else [])
    return o, S, dict(zip(names, grads))


def run_kernel(d, S0, do, dht, dtype=torch.float32, **kw):
    x = {n: None if t is None else t.to(DEV, dtype if n in "qkv" else torch.float32).requires_grad_()
         for n, t in d.items()}
    h0 = None if S0 is None else S0.to(DEV, torch.float32).requires_grad_()
    o, S = fused_recurrent_delta(x["q"], x["k"], x["v"], x["beta"], x["g"], scale=1.0, initial_state=h0,
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


def compare(mixer, d, S0, do, dht, tol=TOL, dtype=torch.float32, **kw):
    o, S, grads = run_kernel(d, S0, do, dht, dtype=dtype, **kw)
    o_r, S_r, grads_r = reference(mixer, d, S0, do, dht)
    tag = "" if dtype == torch.float32 else str(dtype).replace("torch.", "") + ":"
    check(tag + "o", o, o_r, tol)
    if dht is not None:
        check(tag + "final_state", S, S_r, tol)
    else:
        assert S is None
    assert set(grads) == set(grads_r)
    for n in grads_r:
        assert grads[n].dtype == (dtype if n in "qkv" else torch.float32), n
        check(tag + "d" + n, grads[n], grads_r[n], tol)


# B, T, H, K, V, checkpoint interval, with initial state, with d(final state)
CASES = [
    (1, 1, 2, 16, 16, 64, False, False),   # T = 1, no states
    (2, 1, 1, 32, 16, 64, True, True),     # T = 1 with states
    (2, 17, 1, 32, 16, 64, True, True),    # odd T, one segment
    (1, 37, 2, 16, 32, 8, True, True),     # T not a multiple of the interval
    (1, 20, 1, 24, 24, 6, True, False),    # non-power-of-two head dims, no dht
    (1, 7, 1, 16, 16, 1, True, True),      # a checkpoint at every step
    (1, 5, 1, 8, 4, 2, True, True),        # head dims below the 16-wide tile
]


@pytest.mark.parametrize("mixer", ["deltanet", "gated_deltanet"])
@pytest.mark.parametrize("B,T,H,K,V,C,h0,dht", CASES, ids=[f"B{c[0]}T{c[1]}H{c[2]}K{c[3]}V{c[4]}C{c[5]}"
                                                          for c in CASES])
def test_forward_backward(mixer, B, T, H, K, V, C, h0, dht):
    d = inputs(mixer, B, T, H, K, V, seed=T + K)
    gen = torch.Generator().manual_seed(1)
    S0 = torch.randn(B, H, K, V, generator=gen, dtype=torch.float64) if h0 else None
    do = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64)
    dS = torch.randn(B, H, K, V, generator=gen, dtype=torch.float64) if dht else None
    compare(mixer, d, S0, do, dS, checkpoint_interval=C)


@pytest.mark.parametrize("mixer", ["deltanet", "gated_deltanet"])
def test_v_split(monkeypatch, mixer):
    """Force BV = 8 so V = 24 takes three V-blocks (the last one masked)."""
    monkeypatch.setattr(R, "_blocks", lambda K, V, kind: (max(16, R.next_pow2(K)), 8, 1))
    B, T, H, K, V = 1, 11, 2, 16, 24
    d = inputs(mixer, B, T, H, K, V, seed=3)
    gen = torch.Generator().manual_seed(2)
    S0 = torch.randn(B, H, K, V, generator=gen, dtype=torch.float64)
    do = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64)
    dS = torch.randn(B, H, K, V, generator=gen, dtype=torch.float64)
    compare(mixer, d, S0, do, dS, checkpoint_interval=4)


@pytest.mark.parametrize("mixer", ["deltanet", "gated_deltanet"])
def test_varlen(mixer):
    """Packed sequences of lengths 5, 0, 12: each its own dsf run from its own initial state."""
    cu = [0, 5, 5, 17]
    T, H, K, V, N = cu[-1], 2, 16, 24, len(cu) - 1
    d = inputs(mixer, 1, T, H, K, V, seed=5)
    gen = torch.Generator().manual_seed(3)
    S0 = torch.randn(N, H, K, V, generator=gen, dtype=torch.float64)
    do = torch.randn(1, T, H, V, generator=gen, dtype=torch.float64)
    dht = torch.randn(N, H, K, V, generator=gen, dtype=torch.float64)
    cu_t = torch.tensor(cu, dtype=torch.int32, device=DEV)
    o, S, grads = run_kernel(d, S0, do, dht, cu_seqlens=cu_t, checkpoint_interval=4)

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


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-3), (torch.bfloat16, 1e-2)])
def test_half_precision(dtype, tol):
    mixer, B, T, H, K, V = "gated_deltanet", 1, 9, 1, 32, 16
    d = inputs(mixer, B, T, H, K, V, seed=7)
    for n in "qkv":  # reference on the rounded inputs: only the kernel's own rounding is measured
        d[n] = d[n].to(dtype).double()
    gen = torch.Generator().manual_seed(4)
    S0 = torch.randn(B, H, K, V, generator=gen, dtype=torch.float64)
    do = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64).to(dtype).double()
    dht = torch.randn(B, H, K, V, generator=gen, dtype=torch.float64)
    compare(mixer, d, S0, do, dht, tol=tol, dtype=dtype, checkpoint_interval=4)


def test_no_grad_path_matches_training_path():
    d = inputs("gated_deltanet", 2, 6, 1, 16, 16, seed=9)
    x = {n: t.float().to(DEV) for n, t in d.items()}
    with torch.no_grad():
        o1, S1 = fused_recurrent_delta(x["q"], x["k"], x["v"], x["beta"], x["g"])
        o2, S2 = fused_recurrent_delta(x["q"], x["k"], x["v"], x["beta"], x["g"], output_final_state=True)
    assert S1 is None and S2.dtype == torch.float32 and S2.shape == (2, 1, 16, 16)
    q = x["q"].clone().requires_grad_()
    o3, S3 = fused_recurrent_delta(q, x["k"], x["v"], x["beta"], x["g"], output_final_state=True,
                                   checkpoint_interval=4)
    assert o3.requires_grad and S3.requires_grad
    torch.testing.assert_close(o3.detach(), o1, rtol=0, atol=0)
    torch.testing.assert_close(S3.detach(), S2, rtol=0, atol=0)
    # without a scale the kernel multiplies q by K^-0.5, as chunk_delta and fla do
    o_r, S_r = dsf.recurrent("gated_deltanet", **d, scale=16 ** -0.5)
    check("o", o1, o_r)
    check("final_state", S2, S_r)


@pytest.mark.parametrize("mixer", ["deltanet", "gated_deltanet"])
@pytest.mark.parametrize("K,V", [(16, 16), (24, 32)])
def test_step(mixer, K, V):
    B, H = 3, 2
    d = inputs(mixer, B, 1, H, K, V, seed=11)
    S0 = torch.randn(B, H, K, V, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    o_r, S_r = dsf.recurrent(mixer, **{n: t for n, t in d.items() if t is not None},
                             initial_state=S0, scale=1.0)
    x = {n: None if t is None else t[:, 0].float().to(DEV) for n, t in d.items()}
    args = (x["q"], x["k"], x["v"], x["beta"], x["g"])
    # out of place: the given state is left alone, a new fp32 state comes back
    state = S0.float().to(DEV)
    before = state.clone()
    o, new = delta_step(state, *args, inplace=False)
    assert new is not state and torch.equal(state, before)
    check("step_o", o, o_r[:, 0])
    check("step_state", new, S_r)
    # in place
    o2, same = delta_step(state, *args)
    assert same is state and o2.shape == (B, H, V) and o2.dtype == torch.float32
    check("step_o", o2, o_r[:, 0])
    check("step_state", state, S_r)


def test_a_step_refuses_inputs_that_want_a_gradient():
    x = {n: t.float().to(DEV) for n, t in inputs("deltanet", 1, 1, 2, 16, 16, seed=1).items() if t is not None}
    one = [x[n][:, 0] for n in ("q", "k", "v", "beta")]
    state = torch.zeros(1, 2, 16, 16, device=DEV, requires_grad=True)
    with pytest.raises(RuntimeError, match="delta_step: a decoding step has no backward, and state require grad"):
        delta_step(state, *one, inplace=False)
    with torch.no_grad():
        delta_step(state, *one, inplace=False)


def test_steps_match_fused():
    mixer, B, T, H, K, V = "gated_deltanet", 2, 5, 2, 16, 16
    d = inputs(mixer, B, T, H, K, V, seed=13)
    x = {n: t.float().to(DEV) for n, t in d.items()}
    state = torch.zeros(B, H, K, V, device=DEV)
    outs = [delta_step(state, *(x[n][:, t] for n in ("q", "k", "v", "beta", "g")))[0] for t in range(T)]
    o, S = fused_recurrent_delta(x["q"], x["k"], x["v"], x["beta"], x["g"], scale=1.0, output_final_state=True)
    torch.testing.assert_close(torch.stack(outs, 1), o, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(state, S, rtol=1e-6, atol=1e-6)


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


def _call(**over):
    kw = _x()
    kw.update(over)
    return fused_recurrent_delta(**kw)


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
    (dict(initial_state=z(2, 16, 16)), ValueError, "initial_state must be 4-D"),
    (dict(cu_seqlens=torch.tensor([0.0, 4.0])), TypeError, "int32/int64"),
    (dict(cu_seqlens=torch.tensor([0, 3])), ValueError, "end at T=4"),
    (dict(cu_seqlens=torch.tensor([0, 3, 2, 4])), ValueError, "non-decreasing"),
    (dict(cu_seqlens=torch.tensor([1, 4])), ValueError, "start at 0"),
    (dict(cu_seqlens=torch.tensor([0, 2, 4]), initial_state=z(1, 2, 16, 16)),
     ValueError, "initial_state must have shape"),
    (dict(checkpoint_interval=0), ValueError, "checkpoint_interval"),
    (dict(scale=float("nan")), ValueError, "scale must be a finite number"),
    (dict(q="nope"), TypeError, "q must be a torch.Tensor"),
])
def test_errors(over, exc, match):
    with pytest.raises(exc, match=match):
        _call(**over)


def test_error_packed_batch_needs_b1():
    with pytest.raises(ValueError, match="B=1"):
        fused_recurrent_delta(**_x(B=2), cu_seqlens=torch.tensor([0, 2, 4]))


def test_error_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    kw = {n: t.cpu() for n, t in _x().items()}
    with pytest.raises(RuntimeError, match="CUDA"):
        fused_recurrent_delta(**kw)


@pytest.mark.parametrize("over,exc,match", [
    (dict(state=z(2, 2, 16, 16, dtype=torch.float16)), ValueError, "contiguous float32"),
    (dict(state=z(2, 2, 16, 16).transpose(-1, -2)), ValueError, "contiguous float32"),
    (dict(state=z(2, 2, 16, 8)), ValueError, "state must have shape"),
    (dict(q=r(2, 1, 2, 16)), ValueError, "q must be 3-D"),
    (dict(beta=r(2, 2, 1)), ValueError, "beta must be 2-D"),
    (dict(k=r(2, 2, 16, dtype=torch.bfloat16)), TypeError, "share one dtype"),
    (dict(v=r(2, 2, 16, device="meta")), ValueError, "is on meta"),
    (dict(q=r(2, 2, 512), k=r(2, 2, 512), state=z(2, 2, 512, 16)), ValueError, "head dim K=512"),
])
def test_step_errors(over, exc, match):
    kw = dict(state=z(2, 2, 16, 16), q=r(2, 2, 16), k=r(2, 2, 16), v=r(2, 2, 16),
              beta=r(2, 2).sigmoid(), g=-r(2, 2).abs())
    kw.update(over)
    with pytest.raises(exc, match=match):
        delta_step(**kw)


def test_step_out_of_place_accepts_other_state_dtypes():
    state = torch.zeros(2, 2, 16, 16, dtype=torch.float16, device=DEV)
    o, new = delta_step(state, torch.randn(2, 2, 16, device=DEV), torch.randn(2, 2, 16, device=DEV),
                        torch.randn(2, 2, 16, device=DEV), torch.rand(2, 2, device=DEV), inplace=False)
    assert new.dtype == torch.float32 and state.dtype == torch.float16 and torch.isfinite(o).all()
