"""Gradient-step memories built from the four Miras choices: every exact form a spec declares
agrees with the recurrence to 1e-9 in float64, outputs, final state and gradients (initial state
included); and the mini-batch form with one-token chunks is the recurrence, for every combination."""

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import dsf
from dsf.forms import prepare
from dsf.forms.memory import minibatch_memory
from dsf.testing import flat_tensors, grads, rel_err, requires_grad
from dsf.zoo.memory import build, choices

TOL = 1e-9
ALL = choices()
EXACT = [c for c in ALL if len(build(c).forms()) > 1]
CHUNKED = [c for c in EXACT if "chunked" in build(c).forms()]


def cid(c):
    return "-".join(str(v) for v in c.values())


@st.composite
def shapes(draw):
    """(B, T, H, K, chunk, seed); K = V (vector memories need it), T not a multiple of the chunk."""
    return (draw(st.integers(1, 2)), draw(st.integers(1, 11)), draw(st.integers(1, 2)),
            draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(0, 2 ** 16)))


# Pinned on every choice: T = 1; odd T over several chunks, the last partial; T not a multiple of the
# chunk (B, T, H, K, chunk, seed)
PINNED = [(1, 1, 1, 2, 3, 0), (2, 7, 2, 2, 3, 1), (1, 11, 1, 3, 4, 2)]


def pinned(test):
    for shape in reversed(PINNED):
        test = example(shape=shape)(test)
    return test


def _inputs(spec, B, T, H, K, seed):
    return spec.random_inputs(B, T, H, K, K, dtype=torch.float64, seed=seed)


def _state(spec, B, H, K, seed):
    """A valid non-zero state: the final state after a random prefix of 3 tokens."""
    return dsf.recurrent(spec, **_inputs(spec, B, 3, H, K, seed + 7))[1]


def _close(name, out, ref):
    outs, refs = flat_tensors(out), flat_tensors(ref)
    assert len(outs) == len(refs), f"{name}: {len(outs)} tensors against {len(refs)}"   # (zip would stop early)
    for i, (a, b) in enumerate(zip(outs, refs)):
        assert rel_err(a, b) < TOL or (a - b).norm() < 1e-12, f"{name}[{i}]: {rel_err(a, b):.2e}"


def test_the_capability_flags():
    assert len(ALL) == 322 and len(CHUNKED) == 38 and len(EXACT) == 44
    assert all(c["memory"] != "mlp" and c["bias"] in ("dot", "l2") for c in EXACT)


@pytest.mark.parametrize("choice", EXACT, ids=cid)
@pinned
@given(shape=shapes())
def test_exact_forms_agree(choice, shape):
    B, T, H, K, chunk, seed = shape
    spec = build(choice)
    d = _inputs(spec, B, T, H, K, seed)
    S0 = _state(spec, B, H, K, seed)
    o, S = dsf.recurrent(spec, initial_state=S0, **d)
    if "chunked" in spec.forms():
        _close("chunked", dsf.chunked(spec, chunk_size=chunk, initial_state=S0, **d), (o, S))
    if "chunked" in spec.forms() and T >= 2:  # two pieces carrying the state equal one run
        s = T // 2
        o1, S1 = dsf.chunked(spec, chunk_size=chunk, initial_state=S0, **{n: x[:, :s] for n, x in d.items()})
        o2, S2 = dsf.chunked(spec, chunk_size=chunk, initial_state=S1, **{n: x[:, s:] for n, x in d.items()})
        _close("two pieces", (torch.cat([o1, o2], 1), S2), (o, S))
    _close("parallel", dsf.parallel(spec, **d), dsf.recurrent(spec, **d)[0])


@pytest.mark.parametrize("choice", CHUNKED, ids=cid)
@pinned
@given(shape=shapes())
def test_chunked_gradients_agree(choice, shape):
    """d(outputs, final state) / d(every input, initial state): chunked == autograd of recurrent."""
    B, T, H, K, chunk, seed = shape
    spec = build(choice)
    d = requires_grad(_inputs(spec, B, T, H, K, seed))
    S0 = requires_grad(_state(spec, B, H, K, seed))
    leaves = list(d.values()) + flat_tensors(S0)
    g_r = grads(flat_tensors(dsf.recurrent(spec, initial_state=S0, **d)), leaves, seed)
    g_c = grads(flat_tensors(dsf.chunked(spec, chunk_size=chunk, initial_state=S0, **d)), leaves, seed)
    for name, a, b in zip(list(d) + ["S0"] * 4, g_c, g_r):
        assert rel_err(a, b) < TOL or (a - b).norm() < 1e-12, f"d{name}: {rel_err(a, b):.2e}"


@pytest.mark.parametrize("choice", ALL, ids=cid)
def test_minibatch_of_one_token_is_the_recurrence(choice):
    """Chunk 1 equals the recurrence exactly; the matmul path of a chunk equals stepping through it."""
    spec = build(choice)
    d = _inputs(spec, 2, 7, 2, 2, seed=len(cid(choice)))
    o, S = dsf.recurrent(spec, **d)
    if choice["algorithm"] == "implicit":
        with pytest.raises(ValueError, match="mini-batch approximation is for explicit steps"):
            dsf.chunked(spec, chunk_size=1, approximate="minibatch", **d)
        return
    _close("chunk 1", dsf.chunked(spec, chunk_size=1, approximate="minibatch", **d), (o, S))
    _, terms = prepare(spec, d)
    _close("matmul vs stepped chunk", minibatch_memory(terms, S, 3),
           minibatch_memory(terms, S, 3, sequential=True))


@given(choice=st.sampled_from([c for c in ALL if c["algorithm"] != "implicit"]), shape=shapes())
def test_minibatch_gradients_at_chunk_one(choice, shape):
    """Gradients through the mini-batch form of one-token chunks == autograd through the recurrence."""
    B, T, H, K, _, seed = shape
    spec = build(choice)
    d = requires_grad(_inputs(spec, B, T, H, K, seed))
    S0 = requires_grad(_state(spec, B, H, K, seed))
    leaves = list(d.values()) + flat_tensors(S0)
    g_r = grads(flat_tensors(dsf.recurrent(spec, initial_state=S0, **d)), leaves, seed)
    g_m = grads(flat_tensors(dsf.chunked(spec, chunk_size=1, approximate="minibatch", initial_state=S0,
                                         **d)), leaves, seed)
    for a, b in zip(g_m, g_r):
        assert torch.isfinite(a).all() and (rel_err(a, b) < TOL or (a - b).norm() < 1e-12)


@pytest.mark.parametrize("memory", ["vector", "matrix"])
@given(shape=shapes())
def test_vector_phi_is_channelwise(memory, shape):
    """Φ's layout: [B, H, T, T] for a matrix memory, [B, H, K, T, T] (per channel) for a vector one."""
    B, T, H, K, _, seed = shape
    spec = build(dict(memory=memory, bias="l2", retention="l2", algorithm="momentum", gate="scalar",
                      grad_at="previous"))
    d = _inputs(spec, B, T, H, K, seed)
    P = dsf.phi(spec, **d)
    assert P.shape == ((B, H, K, T, T) if memory == "vector" else (B, H, T, T))
    assert bool((P.triu(1) == 0).all())
