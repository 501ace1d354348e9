"""The three exact forms agree for every mixer in the zoo, in float64, on random shapes.

Each mixer is held to the forms its spec declares exact (``MixerSpec.exact_forms``, read through
``dsf.testing.has_form``): every mixer has the recurrent form; a memory trained by a gradient step on
a nonlinear loss (titans, moneta, ...) has no exact parallel or chunked form, so only its recurrent
form (against its oracle) runs here. Mixers declaring all three forms are tested exactly as before.
"""

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import dsf
from dsf.testing import (CASES, case_id, flat_tensors, grads, has_form, prefix_state, random_case, rel_err,
                         requires_grad)

TOL = 1e-9
ATOL = 1e-12  # a gradient that is exactly zero comes out as round-off on one side


def _ok(a, b):
    return rel_err(a, b) < TOL or (a - b).norm().item() < ATOL


@st.composite
def shapes(draw):
    """(B, T, H, K, V, chunk, seed) with T = 1, odd T and T not a multiple of the chunk."""
    T = draw(st.one_of(st.just(1), st.integers(2, 13)))
    chunk = draw(st.integers(1, 8))
    return (draw(st.integers(1, 2)), T, draw(st.integers(1, 2)), draw(st.integers(1, 4)),
            draw(st.integers(1, 3)), chunk, draw(st.integers(0, 2 ** 16)))


# Pinned on every case, whatever hypothesis draws: T = 1; odd T over several chunks, the last one
# partial; T not a multiple of the chunk (B, T, H, K, V, chunk, seed)
PINNED = [(1, 1, 1, 2, 2, 3, 0), (2, 7, 2, 3, 2, 3, 1), (1, 12, 1, 2, 3, 5, 2)]


def pinned(**extra):
    """@example rows of PINNED (with ``extra`` for the test's other arguments)."""
    def wrap(test):
        for shape in reversed(PINNED):
            test = example(shape=shape, **extra)(test)
        return test
    return wrap


def _check(name, out, ref):
    outs, refs = flat_tensors(out), flat_tensors(ref)
    assert len(outs) == len(refs), f"{name}: {len(outs)} tensors against {len(refs)}"   # (zip would stop early)
    for i, (a, b) in enumerate(zip(outs, refs)):
        err = rel_err(a, b)
        assert err < TOL, f"{name}[{i}]: relative error {err:.2e}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pinned()
@given(shape=shapes())
def test_forms_agree(case, shape):
    B, T, H, K, V, chunk, seed = shape
    spec, inp = random_case(*case, B, T, H, K, V, seed)
    o_rec, S_rec = dsf.recurrent(spec, **inp)
    if has_form(case, "chunked"):
        o_chk, S_chk = dsf.chunked(spec, chunk_size=chunk, **inp)
        _check("chunked", o_chk, o_rec)
        _check("final state", S_chk, S_rec)
    if has_form(case, "parallel"):
        _check("parallel", dsf.parallel(spec, **inp), o_rec)
    _check("oracle", spec.run_oracle(**inp), o_rec)
    assert o_rec.shape == inp.get("v", inp.get("x")).shape


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pinned(split=4)
@given(shape=shapes(), split=st.integers(1, 12))
def test_two_pieces_equal_one_run(case, shape, split):
    """Running [0, s) then [s, T) carrying the state equals one run, for both stateful forms."""
    B, T, H, K, V, chunk, seed = shape
    T = max(T, 2)
    s = 1 + split % (T - 1)
    spec, inp = random_case(*case, B, T, H, K, V, seed)
    cut = {n: (x[:, :s] if "T" in _dims(spec, n) else x) for n, x in inp.items()}
    rest = {n: (x[:, s:] if "T" in _dims(spec, n) else x) for n, x in inp.items()}
    S0 = prefix_state(spec, inp, 3, seed)
    o_full, S_full = dsf.recurrent(spec, initial_state=S0, **inp)
    for form in [f for f in ("recurrent", "chunked") if has_form(case, f)]:
        kw = {} if form == "recurrent" else {"chunk_size": chunk}
        fn = getattr(dsf, form)
        o1, S1 = fn(spec, initial_state=S0, **cut, **kw)
        o2, S2 = fn(spec, initial_state=S1, **rest, **kw)
        _check(f"{form} output", torch.cat([o1, o2], dim=1), o_full)
        _check(f"{form} state", S2, S_full)


def _dims(spec, name):
    return next(i.dims for i in spec.inputs if i.name == name)


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pinned(j=3)
@given(shape=shapes(), j=st.integers(0, 12))
def test_causal(case, shape, j):
    """Changing the inputs at time j never changes outputs before j, in any form."""
    B, T, H, K, V, chunk, seed = shape
    j = j % T
    spec, inp = random_case(*case, B, T, H, K, V, seed)
    _, other = random_case(*case, B, T, H, K, V, seed + 1)
    changed = dict(inp)
    for n, x in inp.items():
        if "T" in _dims(spec, n):
            y = x.clone()
            y[:, j:] = other[n][:, j:]
            changed[n] = y
    forms = {"recurrent": lambda d: dsf.recurrent(spec, **d)[0], "parallel": lambda d: dsf.parallel(spec, **d),
             "chunked": lambda d: dsf.chunked(spec, chunk_size=chunk, **d)[0]}
    for run in [fn for form, fn in forms.items() if has_form(case, form)]:
        a, b = run(inp), run(changed)
        assert torch.equal(a[:, :j], b[:, :j]) or rel_err(a[:, :j], b[:, :j]) < 1e-13
        # the test must be able to fail: the change does reach the outputs from j on (unless a
        # relu feature map zeroes them all)
        if a[:, j:].abs().sum() + b[:, j:].abs().sum() > 0:
            assert not torch.allclose(a[:, j:], b[:, j:]), "changing inputs changed nothing at all"


# A mixer with the recurrent form only has nothing to compare its gradients with here.
GRAD_CASES = [c for c in CASES if has_form(c, "chunked") or has_form(c, "parallel")]


@pytest.mark.parametrize("case", GRAD_CASES, ids=case_id)
@pinned()
@given(shape=shapes())
def test_gradients_agree(case, shape):
    """Gradients of every input and of the initial state agree across the three forms."""
    B, T, H, K, V, chunk, seed = shape
    spec, inp = random_case(*case, B, T, H, K, V, seed)
    S0 = requires_grad(prefix_state(spec, inp, 2, seed))
    inp = requires_grad(inp)
    leaves = list(inp.values()) + flat_tensors(S0)
    if has_form(case, "chunked"):
        o_r, S_r = dsf.recurrent(spec, initial_state=S0, **inp)
        o_c, S_c = dsf.chunked(spec, chunk_size=chunk, initial_state=S0, **inp)
        g_r = grads([o_r, *flat_tensors(S_r)], leaves, seed)
        g_c = grads([o_c, *flat_tensors(S_c)], leaves, seed)
        names = list(inp) + [f"initial_state[{i}]" for i in range(len(flat_tensors(S0)))]
        for n, a, b in zip(names, g_c, g_r):
            assert _ok(a, b), f"chunked d{n}: {rel_err(a, b):.2e}"
    if not has_form(case, "parallel"):
        return
    # parallel starts from zero: compare against recurrent from zero
    leaves = list(inp.values())
    g_r0 = grads([dsf.recurrent(spec, **inp)[0]], leaves, seed)
    g_p = grads([dsf.parallel(spec, **inp)], leaves, seed)
    for n, a, b in zip(inp, g_p, g_r0):
        assert _ok(a, b), f"parallel d{n}: {rel_err(a, b):.2e}"


@pytest.mark.parametrize("case", [c for c in CASES if has_form(c, "chunked")], ids=case_id)
def test_chunked_in_segments(case, monkeypatch):
    """Long inputs run as segments with the state carried: cut after every chunk, nothing changes."""
    import importlib

    chunked_mod = importlib.import_module("dsf.forms.chunked")  # dsf.forms.chunked is also a function

    B, T, H, K, V, chunk, seed = 2, 11, 2, 3, 2, 3, 5
    spec, inp = random_case(*case, B, T, H, K, V, seed)
    S0 = requires_grad(prefix_state(spec, inp, 2, seed))
    inp = requires_grad(inp)
    leaves = list(inp.values()) + flat_tensors(S0)
    o_r, S_r = dsf.recurrent(spec, initial_state=S0, **inp)
    monkeypatch.setattr(chunked_mod, "_SEGMENT_ROWS", 1)
    monkeypatch.setattr(chunked_mod, "_MIN_SEGMENT_CHUNKS", 1)
    assert chunked_mod._segment_length(B, H, chunk) == chunk
    o_c, S_c = dsf.chunked(spec, chunk_size=chunk, initial_state=S0, **inp)
    _check("chunked", o_c, o_r)
    _check("final state", S_c, S_r)
    for n, a, b in zip(list(inp) + ["initial_state"], grads([o_c, *flat_tensors(S_c)], leaves, seed),
                       grads([o_r, *flat_tensors(S_r)], leaves, seed)):
        assert _ok(a, b), f"chunked d{n}: {rel_err(a, b):.2e}"


@pytest.mark.parametrize("n", [1, 2, 16, 17, 33, 64, 100])
def test_unit_lower_inverse(n):
    """The blocked inverse of the delta rule's I + strict_lower(A) equals the dense inverse, at sizes
    that do and do not halve evenly down to its base case."""
    import importlib

    chunked_mod = importlib.import_module("dsf.forms.chunked")
    A = torch.randn(3, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n)) / n ** 0.5
    ref = torch.linalg.inv(torch.eye(n, dtype=torch.float64) + A.tril(-1))
    assert rel_err(chunked_mod._unit_lower_inverse(A), ref) < TOL


@pytest.mark.parametrize("name", ["deltanet", "gated_deltanet"])
@pytest.mark.parametrize("chunk,T", [(17, 40), (40, 97), (64, 130)])
def test_delta_chunked_with_large_chunks(name, chunk, T):
    """Chunks above the blocked inverse's 16-row base case (the hypothesis shapes stay below it)."""
    spec, inp = random_case(name, {}, 1, T, 2, 5, 3, 7)
    o_r, S_r = dsf.recurrent(spec, **inp)
    o_c, S_c = dsf.chunked(spec, chunk_size=chunk, **inp)
    _check("chunked", o_c, o_r)
    _check("final state", S_c, S_r)


@pytest.mark.parametrize("name", ["deltanet", "gated_deltanet", "longhorn", "ttt_linear"])
def test_16_bit_forms_with_a_triangular_solve(name):
    """The forms that solve a unit-lower system (the delta rule's WY/UT chunks and Φ, the linear
    memory's chunks) take bf16 and fp16 inputs — torch has no 16-bit triangular solve, so they solve in
    float32 — with gradients, within 16-bit rounding of float64 (a bf16 MixerLayer of deltanet failed
    with '"triangular_solve_cpu" not implemented for BFloat16')."""
    x64 = dsf.random_inputs(name, B=1, T=13, H=2, K=4, V=3, seed=1)
    ref = dsf.recurrent(name, **x64)[0]
    forms = [("chunked", dict(chunk_size=4))] + ([("parallel", {})] if has_form((name, {}), "parallel")
                                                 else [])
    for dtype in (torch.bfloat16, torch.float16):
        for form, kw in forms:
            x = requires_grad({n: t.to(dtype) for n, t in x64.items()})
            o = dsf.parallel(name, **x) if form == "parallel" else dsf.chunked(name, **kw, **x)[0]
            assert o.dtype == dtype and rel_err(o.double(), ref) < 3e-2, (form, dtype, rel_err(o.double(), ref))
            o.float().square().sum().backward()
            assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in x.values())
