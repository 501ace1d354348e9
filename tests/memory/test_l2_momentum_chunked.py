"""The exact chunked form of the ℓ2 bias with momentum (linear Titans): outputs, final weights and
momentum, and every gradient (initial state included) equal the recurrence to 1e-9 in float64, on
random shapes, chunk sizes, carried states, and decays too strong for exp of a positive number."""

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import dsf
from dsf.forms.memory import memory_forms
from dsf.testing import flat_tensors, grads, rel_err, requires_grad
from dsf.zoo.memory import build, choices

TOL = 1e-9
L2_MOMENTUM = [c for c in choices() if c["bias"] == "l2" and c["algorithm"] == "momentum"
               and c["memory"] != "mlp" and c["retention"] in ("none", "l2")]
CASES = [("-".join(str(v) for v in c.values()), build(c)) for c in L2_MOMENTUM
         if not (c["memory"] == "matrix" and c["gate"] == "key")]
CASES.append(("titans-linear", dsf.zoo.get("titans", memory="linear")))
IDS = [name for name, _ in CASES]


@st.composite
def shapes(draw):
    """(B, T, H, K, V, chunk, seed): T from 1, chunks from 1 to beyond T, V free for matrices."""
    return (draw(st.integers(1, 2)), draw(st.integers(1, 13)), draw(st.integers(1, 2)),
            draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 9)),
            draw(st.integers(0, 2 ** 16)))


def _inputs(spec, B, T, H, K, V, seed, dtype=torch.float64):
    return spec.random_inputs(B, T, H, K, V, dtype=dtype, seed=seed)


def _state(spec, B, H, K, V, seed):
    """A non-zero (weights, momentum): the final state after a random prefix of 4 tokens."""
    S = dsf.recurrent(spec, **_inputs(spec, B, 4, H, K, V, seed + 11))[1]
    assert len(S.momentum) == 1 and S.momentum[0].abs().sum() > 0
    return S


def _close(what, out, ref):
    for i, (a, b) in enumerate(zip(flat_tensors(out), flat_tensors(ref), strict=True)):
        err = rel_err(a, b)
        assert err < TOL or (a - b).norm() < 1e-12, f"{what}[{i}]: {err:.2e}"


def test_the_capability_flag():
    """Chunked is declared for every linear memory with the ℓ2 bias and momentum, except key-wise gates
    on a matrix memory (a vector memory's key-wise gate is a scalar gate per channel)."""
    for c in L2_MOMENTUM:
        has = "chunked" in memory_forms(c["memory"], "l2", c["retention"], "momentum", c["gate"] == "key")
        assert has == (not (c["memory"] == "matrix" and c["gate"] == "key")), c
    assert len(CASES) == 9 and all("chunked" in spec.forms() for _, spec in CASES)
    assert "chunked" not in dsf.zoo.get("titans").forms()   # the MLP memory: mini-batch only


@pytest.mark.parametrize("name, spec", CASES, ids=IDS)
@given(shape=shapes())
@example(shape=(1, 1, 1, 2, 3, 4, 0))     # T = 1, chunk > T
@example(shape=(2, 7, 2, 3, 2, 1, 1))     # chunk 1
@example(shape=(1, 11, 1, 3, 3, 4, 2))    # T not a multiple of the chunk
def test_chunked_is_the_recurrence(name, spec, shape):
    """Outputs and final (S, Z) from a non-zero state; and two pieces carrying (S, Z) equal one run."""
    B, T, H, K, V, chunk, seed = shape
    d = _inputs(spec, B, T, H, K, V, seed)
    K, V = d["k"].shape[-1], d["v"].shape[-1]   # a vector memory takes V = K
    S0 = _state(spec, B, H, K, V, seed)
    ref = dsf.recurrent(spec, initial_state=S0, **d)
    _close("chunked", dsf.chunked(spec, chunk_size=chunk, initial_state=S0, **d), ref)
    _close("from zero", dsf.chunked(spec, chunk_size=chunk, **d), dsf.recurrent(spec, **d))
    if T >= 2:
        s = 1 + seed % (T - 1)
        o1, S1 = dsf.chunked(spec, chunk_size=chunk, initial_state=S0, **{n: x[:, :s] for n, x in d.items()})
        o2, S2 = dsf.chunked(spec, chunk_size=chunk, initial_state=S1, **{n: x[:, s:] for n, x in d.items()})
        _close("two pieces", (torch.cat([o1, o2], 1), S2), ref)


@pytest.mark.parametrize("name, spec", CASES, ids=IDS)
@given(shape=shapes())
@example(shape=(1, 1, 1, 2, 2, 3, 0))
@example(shape=(2, 9, 1, 3, 2, 4, 5))
def test_gradients_agree(name, spec, shape):
    """d(outputs, S, Z) / d(q, k, v, g, θ, log η, S_0, Z_0): chunked == autograd through the recurrence."""
    B, T, H, K, V, chunk, seed = shape
    d = requires_grad(_inputs(spec, B, T, H, K, V, seed))
    K, V = d["k"].shape[-1], d["v"].shape[-1]
    S0 = requires_grad(_state(spec, B, H, K, V, seed))
    leaves = list(d.values()) + flat_tensors(S0)
    names = list(d) + ["S_0", "Z_0"]
    g_r = grads(flat_tensors(dsf.recurrent(spec, initial_state=S0, **d)), leaves, seed)
    g_c = grads(flat_tensors(dsf.chunked(spec, chunk_size=chunk, initial_state=S0, **d)), leaves, seed)
    for n, a, b in zip(names, g_c, g_r, strict=True):
        assert b.abs().sum() > 0, f"d{n} is zero: the test would not see a wrong one"
        assert rel_err(a, b) < TOL or (a - b).norm() < 1e-12, f"{name}: d{n}: {rel_err(a, b):.2e}"


@pytest.mark.parametrize("name, spec", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_strong_decays_stay_finite(name, spec, dtype):
    """log α and log η of −1e3 (some tokens) and −30 (the rest): every exp argument is <= 0, so the
    outputs, states and gradients stay finite and equal the recurrence (float64 to 1e-9)."""
    B, T, H, K, V, chunk = 2, 21, 2, 3, 3, 8
    d = _inputs(spec, B, T, H, K, V, seed=3, dtype=dtype)
    K, V = d["k"].shape[-1], d["v"].shape[-1]
    strong = torch.where(torch.rand(d["theta"].shape, generator=torch.Generator().manual_seed(0)) < 0.3,
                         -1e3, -30.0).to(dtype)
    d["log_eta"] = strong.clone()
    if "g" in d:
        d["g"] = (strong if d["g"].dim() == 3 else strong[..., None].expand_as(d["g"])).flip(1).clone()
    S0 = _state(spec, B, H, K, V, seed=3)
    d, S0 = requires_grad(d), requires_grad(type(S0)(*(tuple(x.to(dtype) for x in f) for f in S0)))
    out = dsf.chunked(spec, chunk_size=chunk, initial_state=S0, **d)
    leaves = list(d.values()) + flat_tensors(S0)
    assert all(torch.isfinite(x).all() for x in flat_tensors(out))
    assert all(torch.isfinite(g).all() for g in grads(flat_tensors(out), leaves, seed=0))
    if dtype == torch.float64:
        _close("strong decays", out, dsf.recurrent(spec, initial_state=S0, **d))


@pytest.mark.parametrize("chunk", [16, 64])
def test_float32_against_float64(chunk):
    """The float32 chunked form of linear Titans stays within 1e-5 of the float64 recurrence (T = 200)."""
    spec = dsf.zoo.get("titans", memory="linear")
    d = _inputs(spec, 1, 200, 2, 16, 16, seed=5)
    o_ref, S_ref = dsf.recurrent(spec, **d)
    o, S = dsf.chunked(spec, chunk_size=chunk, **{n: x.float() for n, x in d.items()})
    assert o.dtype == torch.float32
    assert rel_err(o, o_ref) < 1e-5 and rel_err(S.weights[0], S_ref.weights[0]) < 1e-5
    assert rel_err(S.momentum[0], S_ref.momentum[0]) < 1e-5
