"""The chunked key-wise decay kernel (GLA) against the float64 recurrence, under Triton's interpreter.

Decay regimes cover both paths of the intra-chunk split (sub-blocks factored into one matmul when
their decay is mild, summed element-wise when strong) and decays of −20 per step, where the usual
decay gradient Σ_{s≥t} (q_s·dq_s − k_s·dk_s) loses all relative accuracy.
"""

import pytest
import torch

import dsf
import kernels
from dsf.forms.recurrent import recurrent_linear
from dsf.testing import rel_err
from kernels.diag import chunk_diag
from kernels.diag import chunk_key

TOL = 1e-5
LIM = chunk_key._lim(torch.float32)


def _decays(regime, shape, gen):
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    if regime == "mild":       # GLA-like: logsigmoid(x) / 16
        return torch.nn.functional.logsigmoid(torch.randn(shape, generator=gen, dtype=torch.float64) + 2) / 4
    if regime == "strong":     # −20 per step, a little jitter: the decay gradient is tiny, its terms are not
        return -20 + 0.5 * u
    if regime == "bursts":     # mild, with resets of −20 at random steps: both paths in one chunk
        burst = torch.rand(shape[:-1], generator=gen, dtype=torch.float64) < 0.08
        return torch.where(burst[..., None], -20.0 + u, -0.05 * u)
    raise ValueError(regime)


def _inputs(B, T, H, K, V, regime, seed):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    return dict(q=r(B, T, H, K) * K ** -0.5, k=r(B, T, H, K), v=r(B, T, H, V),
                gk=_decays(regime, (B, T, H, K), gen), S0=r(B, H, K, V))


def _sub_block_spans(gk):
    """Decay across every 16-row sub-block of every 64-row chunk, max over key channels."""
    B, T, H, K = gk.shape
    n = -(-T // chunk_key.BC)
    pad = torch.cat([gk, gk.new_zeros(B, n * chunk_key.BC - T, H, K)], 1)
    return -pad.reshape(B, n, chunk_key.BC, H, K).sum(2).amin(-1)


def _chunk_spans(gk):
    """Decay across every 64-row chunk, max over key channels: below LIM the scores are one matmul."""
    B, T, H, K = gk.shape
    n = -(-T // chunk_key.BT)
    pad = torch.cat([gk, gk.new_zeros(B, n * chunk_key.BT - T, H, K)], 1)
    return -pad.reshape(B, n, chunk_key.BT, H, K).sum(2).amin(-1)


def _loss(o, S, seed):
    gen = torch.Generator().manual_seed(seed)
    loss = (o.double() * torch.randn(o.shape, generator=gen, dtype=torch.float64)).sum()
    if S is not None:
        loss = loss + (S.double() * torch.randn(S.shape, generator=gen, dtype=torch.float64)).sum()
    return loss


def _reference(x, with_state):
    leaves = {n: t.clone().requires_grad_() for n, t in x.items()}
    terms = dsf.LinearTerms(q=leaves["q"], k=leaves["k"], u=leaves["v"], decay="key", g=leaves["gk"])
    o, S = recurrent_linear(terms, leaves["S0"] if with_state else None)
    return o, S, leaves


def _check(x, with_state=True, cu_seqlens=None):
    """Output, final state and every gradient (initial state included) of the kernel vs float64."""
    o_ref, S_ref, ref = _reference(x, with_state)
    leaves = {n: t.float().clone().requires_grad_() for n, t in x.items()}
    o, S = chunk_diag(leaves["q"], leaves["k"], leaves["v"], "key", leaves["gk"],
                      initial_state=leaves["S0"] if with_state else None, output_final_state=with_state,
                      cu_seqlens=cu_seqlens)
    assert o.dtype == torch.float32 and rel_err(o, o_ref) < TOL, f"o: {rel_err(o, o_ref):.2e}"
    if with_state:
        assert rel_err(S, S_ref) < TOL, f"state: {rel_err(S, S_ref):.2e}"
    else:
        assert S is None
    names = [n for n in ref if with_state or n != "S0"]
    g_ref = torch.autograd.grad(_loss(o_ref, S_ref if with_state else None, 1), [ref[n] for n in names])
    g = torch.autograd.grad(_loss(o, S, 1), [leaves[n] for n in names])
    for n, a, b in zip(names, g, g_ref):
        assert rel_err(a, b) < TOL, f"d{n}: {rel_err(a, b):.2e}"


def test_allocations_are_poisoned():
    """The NaN hook of conftest (on recurrent._empty) reaches this kernel's buffers."""
    assert torch.isnan(chunk_key._alloc(4, dtype=torch.float32)).all()


@pytest.mark.parametrize("T,regime,B", [(67, "mild", 2), (67, "bursts", 1), (7, "mild", 2), (1, "strong", 2)])
def test_matches_reference(T, regime, B):
    """T = 1, a ragged single chunk, one full chunk and a ragged one; mild and mixed decays."""
    x = _inputs(B, T, 2, 16, 16, regime, seed=T)
    if regime == "bursts":
        spans = _sub_block_spans(x["gk"])
        assert (spans < LIM).any() and (spans >= LIM).any()    # both paths are exercised
    if regime == "mild":
        assert (_chunk_spans(x["gk"]) < LIM).all()              # whole chunks in one matmul
    _check(x)


def test_mild_and_strong_chunks_in_one_call():
    """Chunks of one call take different paths: whole-chunk scores, and sub-blocks (a burst)."""
    x = _inputs(2, 150, 2, 16, 16, "mild", seed=10)
    x["gk"][0, 70] = -20.0                                      # the second chunk of sequence 0
    spans = _chunk_spans(x["gk"])
    assert (spans < LIM).sum() > 0 and (spans >= LIM).sum() > 0
    _check(x)


def test_gates_in_another_dtype():
    """Key-wise gates in fp16 beside fp32 q, k, v (the kernels load them as they come): output and
    state as exact as with fp32 gates against the recurrence on the same rounded gates, and the
    gates' gradient comes back in their dtype."""
    x = _inputs(2, 67, 2, 16, 16, "bursts", seed=5)
    x["gk"] = x["gk"].half().double()
    o_ref, S_ref, ref = _reference(x, True)
    leaves = {n: t.float().clone().requires_grad_() for n, t in x.items()}
    leaves["gk"] = x["gk"].half().requires_grad_()
    o, S = chunk_diag(leaves["q"], leaves["k"], leaves["v"], "key", leaves["gk"], initial_state=leaves["S0"],
                      output_final_state=True)
    assert o.dtype == torch.float32 and rel_err(o, o_ref) < TOL and rel_err(S, S_ref) < TOL
    (dg,) = torch.autograd.grad(_loss(o, S, 1), [leaves["gk"]])
    (dg_ref,) = torch.autograd.grad(_loss(o_ref, S_ref, 1), [ref["gk"]])
    assert dg.dtype == torch.float16 and rel_err(dg, dg_ref) < 1e-3     # fp16's own rounding: 5e-4


def test_no_state():
    _check(_inputs(1, 67, 2, 16, 16, "bursts", seed=4), with_state=False)


def test_tiles_and_masks():
    """K = 80 (two key blocks, the second partly masked), V = 24 (a masked value tile)."""
    _check(_inputs(1, 67, 1, 80, 24, "bursts", seed=5))


def test_dstate_tiles(monkeypatch, count_launches):
    """The reverse state scan in the tiles of kernels.diag.chunk.DSTATE_TILES (K = 80: five key tiles of
    16, V = 24: two value tiles) gives every gradient."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(dc, "DSTATE_TILES", (16, 16))
    scans = count_launches(chunk_key, "_dstate_kernel")
    _check(_inputs(1, 67, 1, 80, 24, "bursts", seed=5))
    assert len(scans) == 1


def test_strong_decays():
    """gk ≈ −20 per step: every result to 1e-5, the decay gradient included, although it is ~e^-20
    of the q·dq terms it is usually summed from."""
    x = _inputs(1, 67, 2, 16, 16, "strong", seed=6)
    o_ref, S_ref, ref = _reference(x, True)
    dq, dk, dS = torch.autograd.grad(_loss(o_ref, S_ref, 1), [ref["q"], ref["k"], S_ref], retain_graph=True)
    dg_ref = torch.autograd.grad(_loss(o_ref, S_ref, 1), ref["gk"])[0]
    # the regime is hard: Σ_{s≥t} (q_s dq_s − k_s dk_s) from dq, dk rounded to fp32 is far off
    terms = x["q"] * dq.float().double() - x["k"] * dk.float().double()
    terms[:, -1] += (dS * S_ref.detach()).sum(-1)
    assert rel_err(terms.flip(1).cumsum(1).flip(1), dg_ref) > 1e-2
    _check(x)


def test_varlen_matches_separate_runs():
    """cu_seqlens with an empty and a one-token sequence: outputs, states and all gradients."""
    cu = torch.tensor([0, 7, 7, 8, 75])
    x = _inputs(1, 75, 2, 16, 16, "bursts", seed=8)
    x["S0"] = torch.randn(4, 2, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    leaves = {n: t.float().clone().requires_grad_() for n, t in x.items()}
    o, S = chunk_diag(leaves["q"], leaves["k"], leaves["v"], "key", leaves["gk"], initial_state=leaves["S0"],
                      output_final_state=True, cu_seqlens=cu)
    names = list(leaves)
    g = dict(zip(names, torch.autograd.grad(_loss(o, S, 3), [leaves[n] for n in names])))
    # the same loss, one sequence at a time in float64: its cotangents are the packed ones sliced
    gen = torch.Generator().manual_seed(3)
    do = torch.randn(o.shape, generator=gen, dtype=torch.float64)
    dS = torch.randn(S.shape, generator=gen, dtype=torch.float64)
    g_ref = {n: torch.zeros_like(t) for n, t in x.items()}
    o_ref = torch.zeros_like(o, dtype=torch.float64)
    for n in range(4):
        a, b = cu[n].item(), cu[n + 1].item()
        part = {m: (t[:, a:b] if m != "S0" else t[n:n + 1]) for m, t in x.items()}
        if a == b:
            assert torch.equal(S[n], leaves["S0"][n])                 # an empty sequence keeps its state
            g_ref["S0"][n] = dS[n]
            continue
        on, Sn, ref = _reference(part, True)
        assert rel_err(S[n:n + 1], Sn) < TOL
        o_ref[:, a:b] = on.detach()
        gs = torch.autograd.grad((on * do[:, a:b]).sum() + (Sn * dS[n:n + 1]).sum(), list(ref.values()))
        for m, d in zip(ref, gs):
            if m == "S0":
                g_ref[m][n:n + 1] = d
            else:
                g_ref[m][:, a:b] = d
    assert rel_err(o, o_ref) < TOL
    for n in names:
        assert rel_err(g[n], g_ref[n]) < TOL, f"d{n}: {rel_err(g[n], g_ref[n]):.2e}"


def test_compile_routes_gla_to_the_chunked_kernel(monkeypatch):
    """supports() says chunk for GLA, recurrent for S6; compile's .chunked follows it."""
    assert kernels.supports("gla")["chunked"] == "chunk"
    assert kernels.supports("s6")["chunked"] == "recurrent"
    calls = []
    real = chunk_key.ChunkKeyDecay.forward   # (a forward without autograd calls it without apply)
    monkeypatch.setattr(chunk_key.ChunkKeyDecay, "forward", staticmethod(lambda *a: calls.append(1) or real(*a)))
    for name in ("gla", "s6"):
        inp = dsf.random_inputs(name, B=1, T=5, H=1, K=16, V=16, seed=0)
        kernels.compile(name).chunked(**{n: t.float() for n, t in inp.items()})
    assert len(calls) == 1


@pytest.fixture
def one_pass(monkeypatch, count_launches):
    """The one-pass forward forced on (the scalar family's switches rule it) and its launches counted."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(dc, "FUSED_FORWARD", True)
    monkeypatch.setattr(dc, "FUSED_MIN_PROGRAMS", 1)
    return count_launches(chunk_key, "_fused_fwd_kernel")


def _forward(x, with_state=True, cu_seqlens=None):
    f = {n: t.float() for n, t in x.items()}
    with torch.no_grad():
        return chunk_diag(f["q"], f["k"], f["v"], "key", f["gk"], initial_state=f["S0"] if with_state else None,
                          output_final_state=with_state, cu_seqlens=cu_seqlens)


@pytest.mark.parametrize("B,T,K,V,regime", [(2, 67, 16, 16, "mild"), (1, 67, 16, 16, "bursts"),
                                             (2, 1, 16, 16, "strong"), (2, 150, 16, 16, "strong"),
                                             (1, 67, 80, 24, "bursts")])
def test_one_pass_forward(one_pass, B, T, K, V, regime):
    """The forward without a backward in one kernel: output and final state vs float64, in mild chunks
    (scores in one product), strong ones (by sub-blocks) and both in one call; K = 80, V = 24 masked."""
    x = _inputs(B, T, 2, K, V, regime, seed=T + K)
    o_ref, S_ref, _ = _reference(x, True)
    o, S = _forward(x)
    assert rel_err(o, o_ref) < TOL and rel_err(S, S_ref) < TOL, (rel_err(o, o_ref), rel_err(S, S_ref))
    assert len(one_pass) == 1
    if regime == "bursts":
        assert (_chunk_spans(x["gk"]) >= LIM).any()


def test_one_pass_varlen_no_state(one_pass):
    """Packed sequences (an empty and a one-token one), with and without states, match the float64 runs
    of each sequence."""
    cu = torch.tensor([0, 7, 7, 8, 75])
    x = _inputs(1, 75, 2, 16, 16, "bursts", seed=8)
    x["S0"] = torch.randn(4, 2, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    o, S = _forward(x, cu_seqlens=cu)
    o2, S2 = _forward(x, with_state=False, cu_seqlens=cu)
    assert S2 is None
    for n in range(4):
        a, b = cu[n].item(), cu[n + 1].item()
        if a == b:
            assert torch.equal(S[n], x["S0"][n].float())
            continue
        part = {m: (t[:, a:b] if m != "S0" else t[n:n + 1]) for m, t in x.items()}
        on, Sn, _ = _reference(part, True)
        assert rel_err(o[:, a:b], on) < TOL and rel_err(S[n:n + 1], Sn) < TOL
        on0, _, _ = _reference({m: t for m, t in part.items() if m != "S0"}, False)
        assert rel_err(o2[:, a:b], on0) < TOL
    assert len(one_pass) == 2


@pytest.mark.parametrize("case", ["whole", "segments", "packed"])
def test_pass_ahead(one_pass, monkeypatch, case):
    """chunk_key.PASS_AHEAD (each chunk's G_L loaded a step early, the default the tests above check
    against float64) gives the same bits as loading it at the chunk's start: whole sequences (mild and
    strong chunks), over two segments of two chunks, packed (an empty and a one-token sequence)."""
    import kernels.diag.chunk as dc

    cu = torch.tensor([0, 7, 7, 8, 75]) if case == "packed" else None
    if case == "segments":   # two segments of two chunks
        monkeypatch.setattr(dc, "FUSED_MIN_PROGRAMS", 6)
        monkeypatch.setattr(dc, "SEGMENT_PROGRAMS_PER_SM", 2)
    x = _inputs(1 if cu is not None else 2, 75 if cu is not None else 200, 2, 16, 16, "bursts", seed=3)
    if cu is not None:
        x["S0"] = torch.randn(4, 2, 16, 16, dtype=torch.float64)
    runs = []
    for ahead in (False, True):
        monkeypatch.setattr(chunk_key, "PASS_AHEAD", ahead)
        runs.append(_forward(x, cu_seqlens=cu))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert [kw["AHEAD"] for _, kw in one_pass] == [False, True]


def _same_bits_either_way(monkeypatch, switch, x, backward):
    """The forward (and with ``backward`` every gradient) with chunk_key.<switch> off, then on: the same bits.
    Returns the run with it on."""
    runs = []
    for on in (False, True):
        monkeypatch.setattr(chunk_key, switch, on)
        if backward:
            leaves = {n: t.float().clone().requires_grad_() for n, t in x.items()}
            o, S = chunk_diag(leaves["q"], leaves["k"], leaves["v"], "key", leaves["gk"],
                              initial_state=leaves["S0"], output_final_state=True)
            runs.append([o, S, *torch.autograd.grad(_loss(o, S, 1), list(leaves.values()))])
        else:
            runs.append(list(_forward(x)))
    assert all(torch.equal(a, b) for a, b in zip(*runs)), switch
    return runs[1]


@pytest.mark.parametrize("regime", ["bursts", "strong"])
def test_pass_tma(one_pass, monkeypatch, regime):
    """chunk_key.PASS_TMA (the forward-only pass's qd, kd, v and o through tensor descriptors) gives the
    same bits as pointers: whole sequences of mild and strong chunks (a partial last chunk, masked
    K = 80 and V = 24); a packed batch keeps pointers."""
    monkeypatch.setattr(kernels._common, "TMA_DTYPES", (torch.float32,))   # (the interpreter's dtype)
    x = _inputs(2, 150, 2, 80, 24, regime, seed=21)
    o, S = _same_bits_either_way(monkeypatch, "PASS_TMA", x, False)
    assert [kw["TMA"] for _, kw in one_pass] == [False, True]
    o_ref, S_ref, _ = _reference(x, True)
    assert rel_err(o, o_ref) < TOL and rel_err(S, S_ref) < TOL
    cu = torch.tensor([0, 7, 7, 8, 75])
    xp = _inputs(1, 75, 2, 16, 16, regime, seed=8)
    xp["S0"] = torch.randn(4, 2, 16, 16, dtype=torch.float64)
    _forward(xp, cu_seqlens=cu)
    assert one_pass[-1][1]["TMA"] is False


@pytest.mark.parametrize("T", [200, 259])
def test_segments_pass_tma(one_pass, monkeypatch, T):
    """chunk_key.SEGMENTS_PASS_TMA (the forward-only pass over segments through descriptors of the whole
    batch) gives the same bits as pointers: segments of whole chunks, the last one ragged (T = 259: a
    partial chunk and chunks past the sequence's end in the last segment's walk), mild and strong chunks."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(kernels._common, "TMA_DTYPES", (torch.float32,))   # (the interpreter's dtype)
    monkeypatch.setattr(dc, "FUSED_MIN_PROGRAMS", 1000)
    monkeypatch.setattr(chunk_key._scalar, "_fused_segments", lambda *a, **kw: 2)
    x = _inputs(2, T, 2, 80, 24, "bursts", seed=T)
    o, S = _same_bits_either_way(monkeypatch, "SEGMENTS_PASS_TMA", x, False)
    assert [kw["TMA"] for _, kw in one_pass] == [False, True]
    o_ref, S_ref, _ = _reference(x, True)
    assert rel_err(o, o_ref) < TOL and rel_err(S, S_ref) < TOL


@pytest.mark.parametrize("backward", [False, True])
def test_gate_heads_inner(one_pass, monkeypatch, count_launches, backward):
    """chunk_key.GATE_HEADS_INNER (the gate kernel's grid as (key blocks, heads, chunks), the default the
    tests above check against float64) gives the same bits as (key blocks, chunks, heads): the one pass
    over mild and strong chunks of two sequences (K = 80: a partial key block), then with a backward
    (one sequence of one chunk, for the interpreter's time)."""
    gates = count_launches(chunk_key, "_gate_kernel")
    B, T, H = (1, 40, 2) if backward else (2, 150, 2)   # (chunks ≠ heads: the grids differ in shape)
    nc = B * -(-T // chunk_key.BT)
    x = _inputs(B, T, H, 80, 16, "bursts", seed=12)
    _same_bits_either_way(monkeypatch, "GATE_HEADS_INNER", x, backward)
    assert [(g, kw["HEADS_INNER"]) for g, kw in gates] == [((2, nc, H), False), ((2, H, nc), True)]


def test_one_pass_rule(monkeypatch):
    """By default on CUDA the one pass, before a backward too, over segments where a batch has too few
    sequence-heads for the SMs (132 stands in for the H200's), a packed one excepted; forced, on the CPU
    as well; switched off, never."""
    import kernels.diag.chunk as dc
    from kernels._common import seq_bounds

    monkeypatch.setattr(dc, "FUSED_MIN_PROGRAMS", 132)
    cuda = torch.device("cuda")

    def rule(B, T, keep, device=cuda):
        return chunk_key._passes(seq_bounds(None, B, T, "cpu"), B, 16, 128, 128, device, keep)

    assert [rule(8, 4096, False), rule(8, 4096, True), rule(1, 32768, False), rule(1, 32768, True)] == [1, 1, 32, 32]
    assert rule(2, 16384, True) == 16   # 64 programs
    assert rule(4, 8192, True) == rule(4, 8192, False) == 2   # 128 programs: two segments (a quarter short)
    packed = chunk_key._passes(seq_bounds(torch.tensor([0, 100, 32768]), 1, 32768, "cpu"), 2, 16, 128, 128, cuda, True)
    assert packed is None
    assert rule(8, 4096, False, torch.device("cpu")) is None
    monkeypatch.setattr(dc, "FUSED_FORWARD", True)
    assert [rule(8, 4096, False), rule(8, 4096, True), rule(1, 32768, False)] == [1, 1, 32]
    monkeypatch.setattr(dc, "SEGMENT_PROGRAMS_PER_SM", 4)   # 32 programs × 17 segments of ≤ 31 chunks
    assert rule(1, 32768, False) == 17
    monkeypatch.setattr(dc, "FUSED_FORWARD", False)
    assert [rule(8, 4096, False), rule(1, 32768, False)] == [None, None]


@pytest.mark.parametrize("T,regime,least", [(67, "bursts", 1), (150, "strong", 1), (7, "mild", 1),
                                            (200, "bursts", 1000)])
def test_one_pass_before_a_backward(one_pass, monkeypatch, count_launches, T, regime, least):
    """Forced, the pass also stores the states and mild chunks' scores the backward reads: every
    gradient (decay and initial state included) vs float64, and the state, scores and output kernels
    never run; over segments too (least = 1000)."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(dc, "FUSED_MIN_PROGRAMS", least)
    others = [count_launches(chunk_key, n) for n in ("_state_kernel", "_scores_kernel", "_output_kernel")]
    x = _inputs(2, T, 2, 16, 24, regime, seed=T + 5)
    _check(x)
    _check(x, with_state=False)
    assert len(one_pass) == 2
    assert not others[1] and not others[2]
    assert len(others[0]) == (2 if least > 1 and T > chunk_key.BT else 0)   # the segments' own states


@pytest.mark.parametrize("regime,tol", [("mild", TOL), ("strong", 1e-4), ("bursts", 1e-4)])
def test_fast_gates(monkeypatch, regime, tol):
    """The chunk's reverse decay sums as G_L − G (what 16-bit inputs get, forced here in fp32), through
    the two-pass kernels with every gradient and through the one pass: exact under mild decays, within
    1e-4 of float64 where chunks decay by ~1300 nats."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(dc, "FAST_PAIRS", True)
    x = _inputs(2, 67, 2, 16, 16, regime, seed=12)
    o_ref, S_ref, ref = _reference(x, True)
    leaves = {n: t.float().clone().requires_grad_() for n, t in x.items()}
    o, S = chunk_diag(leaves["q"], leaves["k"], leaves["v"], "key", leaves["gk"], initial_state=leaves["S0"],
                      output_final_state=True)
    assert rel_err(o, o_ref) < tol and rel_err(S, S_ref) < tol
    g_ref = torch.autograd.grad(_loss(o_ref, S_ref, 1), list(ref.values()))
    g = torch.autograd.grad(_loss(o, S, 1), list(leaves.values()))
    errs = {n: rel_err(a, b) for n, a, b in zip(leaves, g, g_ref)}
    assert max(errs.values()) < tol, errs
    monkeypatch.setattr(dc, "FUSED_FORWARD", True)
    monkeypatch.setattr(dc, "FUSED_MIN_PROGRAMS", 1)
    o, S = _forward(x)
    assert rel_err(o, o_ref) < tol and rel_err(S, S_ref) < tol


def test_fast_gates_differ(monkeypatch):
    """The two ways of summing differ in a chunk decaying by ~19 nats, still scored whole (so the
    switch reaches the kernels), by rounding alone."""
    import kernels.diag.chunk as dc

    x = {n: t.float() for n, t in _inputs(1, 67, 2, 16, 16, "mild", seed=13).items()}
    x["gk"] = -0.3 + 0.01 * x["gk"]
    assert (_chunk_spans(x["gk"]) < LIM).all()
    outs = []
    for fast in (False, True):
        monkeypatch.setattr(dc, "FAST_PAIRS", fast)
        gk = x["gk"].clone().requires_grad_()
        o = chunk_diag(x["q"], x["k"], x["v"], "key", gk)[0]
        outs.append(torch.cat([o.flatten(), torch.autograd.grad(_loss(o, None, 1), gk)[0].flatten()]))
    assert 0 < rel_err(outs[1], outs[0]) < 1e-5


@pytest.mark.parametrize("T,regime", [(67, "bursts"), (200, "strong"), (323, "mild"), (1, "mild")])
def test_one_pass_over_segments(one_pass, monkeypatch, count_launches, T, regime):
    """With fewer programs than wanted, sequences are cut into segments of whole chunks that run in
    parallel from the states a scan over the segments gives them (key-wise decays per state row):
    output and final state vs float64, with and without an initial state."""
    check_one_pass_over_segments(one_pass, monkeypatch, count_launches, T, regime)


@pytest.mark.parametrize("in_scan", [True, False])
@pytest.mark.parametrize("T,regime", [(200, "strong"), (323, "mild")])
def test_segment_decays_in_scan(one_pass, monkeypatch, count_launches, T, regime, in_scan):
    """SEGMENT_DECAY_IN_SCAN: the segments' states-from-zero kernel also sums each segment's log decay
    per key (the default), or torch sums them: the same outputs and states, strong decays included."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(dc, "SEGMENT_DECAY_IN_SCAN", in_scan)
    states = count_launches(chunk_key, "_state_kernel")
    check_one_pass_over_segments(one_pass, monkeypatch, count_launches, T, regime)
    # with and without an initial state
    assert [kw["STORE_LOGW"] for _, kw in states] == [in_scan, in_scan]


@pytest.mark.parametrize("skip", [True, False])
def test_segment_skip_last(one_pass, monkeypatch, count_launches, skip):
    """SEGMENT_SKIP_LAST: with no final state asked for, the segments' states from zero run for all
    but each sequence's last segment; the output still matches float64 (and, asked for, the final
    state, every segment's state made)."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(dc, "SEGMENT_SKIP_LAST", skip)
    states = count_launches(chunk_key, "_state_kernel")
    check_one_pass_over_segments(one_pass, monkeypatch, count_launches, 323, "mild")
    assert [kw["SKIP_LAST"] for _, kw in states] == [False, skip]   # final state asked for, then not
    assert [grid[2] for grid, _ in states] == [2 * 6 * 2, (2 * 6 - 2 * skip) * 2]


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("chunks,split", [(1, 4), (3, 2)])
def test_segment_state_pieces(one_pass, monkeypatch, count_launches, chunks, split, skip):
    """SEGMENT_STATE_CHUNKS: the segments' states from zero by pieces of at most that many chunks, the
    per-key log decays summed by piece; T = 400 in two segments of 4 and 3 chunks (the band rule),
    pieces of 1 (the last empty) or 2: output and final state still match float64."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(dc, "SEGMENT_STATE_CHUNKS", chunks)
    monkeypatch.setattr(dc, "SEGMENT_SKIP_LAST", skip)
    states = count_launches(chunk_key, "_state_kernel")
    check_one_pass_over_segments(one_pass, monkeypatch, count_launches, 400, "mild", least=5, nseg=2)
    # final state asked for (every piece), then not
    assert [grid[2] for grid, _ in states] == [2 * 2 * split * 2, (2 * 2 - 2 * skip) * split * 2]
    assert [kw["NSKIP"] for _, kw in states] == [split, split]


@pytest.mark.parametrize("skip", [True, False])
def test_segment_pass_rows(one_pass, monkeypatch, count_launches, skip):
    """This family's SEGMENT_PASS_ROWS (not the scalar family's) with per-key decays: the scan over 2
    segments of 4 pieces each (8 joined, two blocks of 4) loads each block's states and per-row log
    decays at once; output and final state against float64."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(chunk_key, "SEGMENT_PASS_ROWS", 4)
    monkeypatch.setattr(dc, "SEGMENT_PASS_ROWS", 8)
    monkeypatch.setattr(dc, "SEGMENT_STATE_CHUNKS", 1)
    monkeypatch.setattr(dc, "SEGMENT_SKIP_LAST", skip)
    joins = count_launches(dc, "_segment_pass_kernel")
    check_one_pass_over_segments(one_pass, monkeypatch, count_launches, 400, "mild", least=5, nseg=2)
    assert [(kw["U"], kw["EVERY"], kw["V"]) for _, kw in joins] == [(4, 4, 24)] * 2


@pytest.mark.parametrize("tiles,grid", [((128, 128), (1, 1)), ((16, 16), (1, 2)), ((64, 16), (1, 2))])
def test_segment_state_tiles(one_pass, monkeypatch, count_launches, tiles, grid):
    """The segments' states from zero take SEGMENT_STATE_TILES, each clamped to the padded head dim,
    and their own launch settings (K = 16, V = 24: a 16-wide value tile gives two, the second masked),
    not the scalar family's STATE_BK and STATE_BV; output and final state still match float64."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(chunk_key, "SEGMENT_STATE_TILES", tiles)
    monkeypatch.setattr(dc, "STATE_BK", 16)
    monkeypatch.setattr(dc, "STATE_BV", 16)
    monkeypatch.setattr(chunk_key, "SAFE", {**chunk_key.SAFE, "segment_state": dict(num_warps=2)})
    states = count_launches(chunk_key, "_state_kernel")
    check_one_pass_over_segments(one_pass, monkeypatch, count_launches, 323, "mild")
    assert [g[:2] for g, _ in states] == [grid, grid]
    assert [kw["num_warps"] for _, kw in states] == [2, 2]   # fp32 operands: SAFE's entry


def check_one_pass_over_segments(one_pass, monkeypatch, count_launches, T, regime, least=1000, nseg=None):
    """The checks of test_one_pass_over_segments, for tests that switch more on: FUSED_MIN_PROGRAMS
    ``least`` and the ``nseg`` segments a sequence it gives (default: one a chunk)."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(dc, "FUSED_MIN_PROGRAMS", least)
    joins = count_launches(dc, "_segment_pass_kernel")
    x = _inputs(2, T, 2, 16, 24, regime, seed=T + 1)
    o_ref, S_ref, _ = _reference(x, True)
    o, S = _forward(x)
    assert rel_err(o, o_ref) < TOL and rel_err(S, S_ref) < TOL, (rel_err(o, o_ref), rel_err(S, S_ref))
    o_ref0, S_ref0, _ = _reference({n: t for n, t in x.items() if n != "S0"}, False)
    o0, _ = _forward(x, with_state=False)
    assert rel_err(o0, o_ref0) < TOL
    segments = nseg or -(-T // chunk_key.BT)
    assert len(joins) == 2 * (segments > 1) and len(one_pass) == 2
    if joins:
        assert joins[0][0][1] == 2 * 2 and one_pass[0][0][1] == 2 * 2 * segments   # (B·H) scans, B·nseg·H passes


def test_segments_only_when_forced(monkeypatch, count_launches):
    """The default rule keeps the four kernels where it would cut sequences into segments (not yet
    timed for key-wise decays); forcing it on runs them."""
    import kernels.diag.chunk as dc

    seen = count_launches(chunk_key, "_fused_fwd_kernel")
    monkeypatch.setattr(dc, "FUSED_MIN_PROGRAMS", 1000)
    monkeypatch.setattr(chunk_key._scalar, "_fused_segments", lambda *a, **kw: 2)   # 4 chunks: 2 + 2
    x = _inputs(1, 200, 2, 16, 16, "mild", seed=2)
    _forward(x)
    assert seen == []
    monkeypatch.setattr(dc, "FUSED_FORWARD", True)
    o, S = _forward(x)
    o_ref, S_ref, _ = _reference(x, True)
    assert len(seen) == 1 and rel_err(o, o_ref) < TOL and rel_err(S, S_ref) < TOL


def _strong_in_last_keys(x, first):
    """Bursts of −20 only in key channels ``first`` on (mild elsewhere): a chunk decays by LIM or more
    through those keys alone."""
    gk = x["gk"].clone()
    gk[..., :first] = -0.05 * gk[..., :first].abs()
    return {**x, "gk": gk}


@pytest.mark.parametrize("T,K,regime,cpp", [(67, 80, "bursts", 1), (67, 80, "bursts", 4), (150, 16, "strong", 4),
                                            (67, 32, "mild", 8), (1, 16, "strong", 2)])
def test_strong_chunks_scores(one_pass, monkeypatch, count_launches, T, K, regime, cpp):
    """The one pass's strong chunks' sub-block scores from a kernel of their own
    (STRONG_SCORES_CHUNKS chunks a program, the last program's partly past the last chunk; nothing done
    for a mild one) after a gate kernel a program per chunk and key block: output and final state vs
    float64, and every gradient (initial state included) through the pass before a backward. The
    bursts decay through the last key block alone (K = 80: blocks of 64 and 16), so the chunk's decay
    over all keys decides."""
    monkeypatch.setattr(chunk_key, "STRONG_SCORES_CHUNKS", cpp)
    gates, scores = count_launches(chunk_key, "_gate_kernel"), count_launches(chunk_key, "_strong_scores_kernel")
    x = _inputs(2, T, 2, K, 24, regime, seed=T + K + 3)
    if regime == "bursts":
        x = _strong_in_last_keys(x, 64)
        assert (_chunk_spans(x["gk"]) >= LIM).any() and (_chunk_spans(x["gk"][..., :64]) < LIM).all()
    o_ref, S_ref, _ = _reference(x, True)
    o, S = _forward(x)
    assert rel_err(o, o_ref) < TOL and rel_err(S, S_ref) < TOL, (rel_err(o, o_ref), rel_err(S, S_ref))
    _check(x)
    n_chunks = 2 * -(-T // chunk_key.BT)
    assert [g for g, _ in gates] == [(-(-K // 64), 2, n_chunks)] * 2   # (GATE_HEADS_INNER)
    assert [(g, kw["CPP"]) for g, kw in scores] == [((-(-n_chunks // cpp), 2), cpp)] * 2


@pytest.mark.parametrize("T,regime", [(200, "strong"), (259, "bursts")])
def test_segment_entry_states_16bit(one_pass, monkeypatch, count_launches, T, regime):
    """kernels.diag.chunk.SEGMENT_ENTRY_16BIT for this family: the forward-only pass over segments starts
    each segment from its entering state stored in the per-chunk states' dtype (bf16 here for fp32
    inputs, by a stand-in): the output within that rounding of float64, the final state (the scan's,
    fp32) as exact as without; before a backward the entering states stay fp32."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(dc, "SEGMENT_ENTRY_16BIT", True)
    monkeypatch.setattr(dc, "_state_dtype", lambda dtype: torch.bfloat16)
    monkeypatch.setattr(dc, "FUSED_MIN_PROGRAMS", 1000)
    entering, real = [], dc.segment_states
    monkeypatch.setattr(dc, "segment_states", lambda *a, **kw: entering.append(real(*a, **kw)) or entering[-1])
    x = _inputs(2, T, 2, 16, 24, regime, seed=T + 9)
    o_ref, S_ref, _ = _reference(x, True)
    o, S = _forward(x)
    assert [s.dtype for s in entering] == [torch.bfloat16]
    assert rel_err(o, o_ref) < 1e-2 and rel_err(S, S_ref) < TOL, (rel_err(o, o_ref), rel_err(S, S_ref))
    _check(x)
    assert [s.dtype for s in entering] == [torch.bfloat16, torch.float32]


@pytest.mark.parametrize("backward", [False, True])
def test_gate_loads_first(one_pass, monkeypatch, count_launches, backward):
    """chunk_key.GATE_LOADS_FIRST (the gate kernel's loads of q and k before its decay sums, the default
    the tests above check against float64) gives the same bits as loading them after: the one pass
    over mild and strong chunks of two sequences (K = 80: a partial key block), and with a backward."""
    gates = count_launches(chunk_key, "_gate_kernel")
    x = _inputs(2, 150 if not backward else 67, 2, 80 if not backward else 16, 16, "bursts", seed=4)
    _same_bits_either_way(monkeypatch, "GATE_LOADS_FIRST", x, backward)
    assert [kw["LOADS_FIRST"] for _, kw in gates] == [False, True]


def test_gate_ex2_rule(monkeypatch):
    """GATE_EX2 (_gate_ex2): the one-instruction exps (2) in the compiled gate kernel of 16-bit inputs, none
    for fp32 inputs, under the interpreter or with the switch off."""
    monkeypatch.setattr(kernels._common, "interpreting", lambda: False)
    assert [chunk_key._gate_ex2(d) for d in (torch.bfloat16, torch.float16, torch.float32)] == [2, 2, 0]
    monkeypatch.setattr(chunk_key, "GATE_EX2", False)
    assert chunk_key._gate_ex2(torch.bfloat16) == 0
    monkeypatch.setattr(chunk_key, "GATE_EX2", True)
    monkeypatch.setattr(kernels._common, "interpreting", lambda: True)
    assert chunk_key._gate_ex2(torch.bfloat16) == 0


@pytest.mark.parametrize("fast", [False, True], ids=["pairs", "fast"])
@pytest.mark.parametrize("regime", ["mild", "bursts"])
def test_gates_in_log2_units(monkeypatch, count_launches, regime, fast):
    """EX2 = 1 (the interpreter's stand-in for GATE_EX2's ex2 instruction): the gate kernel sums the log
    decays in log2 units and takes 2^x (its G_L stored in nats), with the reverse sums scanned or as
    G_L − G (FAST_PAIRS): output, final state and every gradient still within float64's tolerance
    (GLA's backward reads the gated queries and keys it writes), and the one pass too."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(chunk_key, "_gate_ex2", lambda dtype: 1)
    monkeypatch.setattr(dc, "FAST_PAIRS", fast)
    gates = count_launches(chunk_key, "_gate_kernel")
    x = _inputs(2, 67, 2, 16, 16, regime, seed=23)
    _check(x)
    monkeypatch.setattr(dc, "FUSED_FORWARD", True)
    monkeypatch.setattr(dc, "FUSED_MIN_PROGRAMS", 1)
    o_ref, S_ref, _ = _reference(x, True)
    o, S = _forward(x)
    assert rel_err(o, o_ref) < TOL and rel_err(S, S_ref) < TOL
    assert len(gates) == 2 and all(kw["EX2"] == 1 for _, kw in gates)
