"""The linear Titans memory kernels (kernels/memory) against the float64 dsf reference.

Runs under Triton's CPU interpreter when there is no GPU (tests/conftest.py sets TRITON_INTERPRET), in
fp32 on tiny shapes. Every buffer the kernels allocate is poisoned with NaN first, so an element a
kernel forgets to write shows up. The raw kernels take the lowered terms (q scaled, the spec's θ), so
their reference is ``dsf.recurrent`` of the memory spec with ``scale=1``; ``kernels.compile`` is
checked on the zoo's ``titans`` (``memory="linear"``) with its own lowering.
"""

from __future__ import annotations

import pytest
import torch

import dsf
import kernels
import kernels.memory.chunk as CH
from dsf.testing import rel_err
from dsf.zoo.memory import memory_spec
from kernels.memory import chunk_titans, fused_recurrent_titans

TOL = 1e-5
NAMES = ("q", "k", "v", "g", "theta", "log_eta")

# The interpreter turns the 1-element arrays it uses for scalars into loop bounds via int(array).
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")


def spec_of(retention="l2", grad_at="previous"):
    spec = memory_spec("matrix", "l2", retention, "momentum")
    opts = {"scale": 1.0} | ({"grad_at": grad_at} if retention == "l2" else {})
    return spec.with_options(**opts)


def case(spec, B, T, H, K=16, V=16, h0=True, dht=True, seed=0, N=None):
    d = spec.random_inputs(B, T, H, K, V, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    N = B if N is None else N
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    S0 = (0.3 * r(N, H, K, V), 0.1 * r(N, H, K, V)) if h0 else None
    do = r(B, T, H, V)
    dS = (r(N, H, K, V), r(N, H, K, V)) if dht else None
    return d, S0, do, dS


def reference(spec, d, S0, do, dS):
    """float64 dsf.recurrent: output, final (S, Z) and the gradients of every input and of S0."""
    x = {n: t.detach().clone().requires_grad_() for n, t in d.items()}
    s = None if S0 is None else tuple(t.clone().requires_grad_() for t in S0)
    state = None if s is None else dsf.MemoryState((s[0],), (s[1],))
    o, fin = dsf.recurrent(spec, initial_state=state, **x)
    loss = (o * do).sum()
    if dS is not None:
        loss = loss + (fin.weights[0] * dS[0]).sum() + (fin.momentum[0] * dS[1]).sum()
    leaves = list(x.values()) + (list(s) if s else [])
    grads = dict(zip(list(x) + (["S0", "Z0"] if s else []), torch.autograd.grad(loss, leaves)))
    return o, (fin.weights[0], fin.momentum[0]), grads


def run_kernel(fn, d, S0, do, dS, grad_at="previous", **kw):
    x = {n: d[n].float().requires_grad_() if n in d else None for n in NAMES}
    s = None if S0 is None else tuple(t.float().requires_grad_() for t in S0)
    o, fin = fn(x["q"], x["k"], x["v"], x["g"], x["theta"], x["log_eta"], initial_state=s,
                output_final_state=dS is not None, grad_at=grad_at, **kw)
    outs, gos = [o], [do.float()]
    if dS is not None:
        outs += list(fin)
        gos += [t.float() for t in dS]
    else:
        assert fin is None
    torch.autograd.backward(outs, gos)
    grads = {n: t.grad for n, t in x.items() if t is not None}
    if s is not None:
        grads.update(S0=s[0].grad, Z0=s[1].grad)
    return o, fin, grads


def compare(spec, fn, d, S0, do, dS, grad_at="previous", **kw):
    o, fin, grads = run_kernel(fn, d, S0, do, dS, grad_at=grad_at, **kw)
    o_r, fin_r, grads_r = reference(spec, d, S0, do, dS)
    errs = {"o": rel_err(o, o_r)}
    if dS is not None:
        errs.update(S=rel_err(fin[0], fin_r[0]), Z=rel_err(fin[1], fin_r[1]))
    assert set(grads) == set(grads_r)
    errs.update({"d" + n: rel_err(grads[n], grads_r[n]) for n in grads_r})
    bad = {n: e for n, e in errs.items() if not e < TOL}
    assert not bad, f"relative errors >= {TOL}: {bad}"


CHUNKED = [  # B, T, H, retention, grad_at, initial state, d(final state)
    (2, 33, 2, "l2", "previous", True, True),     # three chunks, the last one partial
    (1, 7, 2, "l2", "retained", True, True),      # one partial chunk, gradient at α S
    (2, 1, 1, "l2", "previous", False, False),    # T = 1, no states
    (2, 1, 1, "l2", "previous", True, True),      # T = 1 from an initial state
    (1, 20, 1, "none", "previous", True, True),   # no retention gate
]


@pytest.mark.parametrize("B,T,H,ret,grad_at,h0,dht", CHUNKED, ids=[f"B{c[0]}T{c[1]}H{c[2]}-{c[3]}-{c[4]}"
                                                                 for c in CHUNKED])
def test_chunked(B, T, H, ret, grad_at, h0, dht):
    spec = spec_of(ret, grad_at)
    compare(spec, chunk_titans, *case(spec, B, T, H, h0=h0, dht=dht, seed=T), grad_at=grad_at, chunk_size=16)


RECURRENT = [(2, 33, 2, "l2", "previous", 8), (1, 7, 1, "l2", "retained", 3), (1, 1, 2, "none", "previous", 64)]


@pytest.mark.parametrize("B,T,H,ret,grad_at,C", RECURRENT, ids=[f"B{c[0]}T{c[1]}-{c[3]}-{c[4]}-C{c[5]}"
                                                                for c in RECURRENT])
def test_recurrent(B, T, H, ret, grad_at, C):
    spec = spec_of(ret, grad_at)
    compare(spec, fused_recurrent_titans, *case(spec, B, T, H, seed=T + 1), grad_at=grad_at,
            checkpoint_interval=C)


def test_chunked_split_tiles(monkeypatch):
    """V = 32 in V-blocks of 16 in every kernel (sums over V from two partial sums), and K = 32 in
    K-blocks of 16 in the gradient kernel."""
    blocks = CH._blocks(32, 16, 16) | {"BK_grad": 16}
    monkeypatch.setattr(CH, "_blocks", lambda K, V, BT, prec: blocks)
    spec = spec_of()
    compare(spec, chunk_titans, *case(spec, 1, 18, 1, K=32, V=32, seed=4), chunk_size=16)


@pytest.mark.parametrize("cu", [[0, 5, 5, 22], [0, 5, 5, 40, 43]], ids=["5-0-17", "5-0-35-3"])
@pytest.mark.parametrize("fn", [chunk_titans, fused_recurrent_titans], ids=["chunked", "recurrent"])
def test_varlen(fn, cu):
    """Packed sequences (an empty one; one over several 16-token chunks beside shorter ones): each
    equals its own run from its own initial state — output, final S and Z, every input's gradient and
    those of S0 and Z0."""
    spec = spec_of()
    N = len(cu) - 1
    d, S0, do, dS = case(spec, 1, cu[-1], 2, seed=9, N=N)
    kw = {"chunk_size": 16} if fn is chunk_titans else {}
    o, fin, grads = run_kernel(fn, d, S0, do, dS, cu_seqlens=torch.tensor(cu), **kw)
    want = {n: torch.zeros_like(g, dtype=torch.float64) for n, g in grads.items()}
    for n in range(N):
        a, b = cu[n], cu[n + 1]
        if a == b:  # an empty sequence hands its state through
            for i, name in enumerate(("S0", "Z0")):
                assert torch.equal(fin[i][n], S0[i][n].float()) and torch.equal(grads[name][n], dS[i][n].float())
                want[name][n] = dS[i][n]
            continue
        part = {k: v[:, a:b] for k, v in d.items()}
        o_r, fin_r, g_r = reference(spec, part, tuple(x[n:n + 1] for x in S0), do[:, a:b],
                                    tuple(x[n:n + 1] for x in dS))
        assert rel_err(o[:, a:b], o_r) < TOL
        assert rel_err(fin[0][n:n + 1], fin_r[0]) < TOL and rel_err(fin[1][n:n + 1], fin_r[1]) < TOL
        for name, g in g_r.items():
            if name in ("S0", "Z0"):
                want[name][n:n + 1] = g
            else:
                want[name][:, a:b] = g
    assert set(want) == set(d) | {"S0", "Z0"}
    for name in want:
        assert rel_err(grads[name], want[name]) < TOL, name


def test_compile_titans_linear():
    """kernels.compile on the zoo's Titans: chunked, recurrent and in-place steps continue one another."""
    assert kernels.supports("titans") is None                     # the default MLP memory
    spec = dsf.zoo.get("titans", memory="linear")
    assert kernels.supports(spec) == {"family": "memory", "chunked": "chunk", "recurrent": True, "step": True}
    d, S0, do, dS = case(spec, 2, 12, 2, seed=3)
    o_r, fin_r, g_r = reference(spec, d, S0, do, dS)
    m = kernels.compile(spec)
    f = {k: v.float() for k, v in d.items()}
    x = {k: v.clone().requires_grad_() for k, v in f.items()}
    state = dsf.MemoryState((S0[0].float(),), (S0[1].float(),))
    o1, s1 = m.chunked(initial_state=state, output_final_state=True, **{k: v[:, :8] for k, v in x.items()})
    o2, s2 = m.recurrent(initial_state=s1, output_final_state=True, **{k: v[:, 8:10] for k, v in x.items()})
    ((torch.cat([o1, o2], 1) * do[:, :10].float()).sum()).backward()
    st = dsf.MemoryState((s2.weights[0].detach().clone(),), (s2.momentum[0].detach().clone(),))
    outs = []
    for t in (10, 11):
        o_t, new = m.step(st, inplace=True, **{k: v[:, t] for k, v in f.items()})
        assert new is st
        outs.append(o_t)
    assert rel_err(torch.cat([o1, o2, torch.stack(outs, 1)], 1), o_r) < TOL
    assert rel_err(st.weights[0], fin_r[0]) < TOL and rel_err(st.momentum[0], fin_r[1]) < TOL
    o0, s0 = m.step(None, inplace=True, **{k: v[:, 0] for k, v in f.items()})   # from a zero state
    o_zero, _ = dsf.recurrent(spec, **{k: v[:, :1] for k, v in d.items()})
    assert isinstance(s0, dsf.MemoryState) and rel_err(o0, o_zero[:, 0]) < TOL
    # the gradient of the first ten outputs w.r.t. θ (the user's, before the lowering's factor 2)
    th = d["theta"].clone().requires_grad_()
    o_ref, _ = dsf.recurrent(spec, initial_state=dsf.MemoryState((S0[0],), (S0[1],)), **(d | {"theta": th}))
    (g_th,) = torch.autograd.grad((o_ref[:, :10] * do[:, :10]).sum(), th)
    assert rel_err(x["theta"].grad[:, :10], g_th[:, :10]) < TOL


@pytest.mark.parametrize("value", [-150.0, -1e4])
@pytest.mark.parametrize("name", ["g", "log_eta"])
def test_chunked_under_a_very_strong_decay(name, value):
    """One step decaying by e^{−1e4} (retention or momentum) mid-chunk: the chunk's fp32 cumulative logs
    around −1e4 kept the later decays of the chunk to ~1e-3 (output 3.8e-4 off); with log decays
    floored at −200 (kernels._tl.LOG_DECAY_FLOOR, e^{−200} = 0 in fp32) it is as a −150 one, 5e-6."""
    spec = dsf.zoo.get("titans", memory="linear")
    d = spec.random_inputs(1, 64, 1, 16, 16, dtype=torch.float64, seed=1)
    d[name][:, 10] = value
    o_ref, _ = dsf.recurrent(spec, **d)
    o, _ = kernels.compile(spec).chunked(**{k: v.float() for k, v in d.items()})
    assert rel_err(o, o_ref) < TOL


@pytest.mark.parametrize("algorithm", ["momentum", "gd"])
def test_resets_every_few_tokens_keep_fp32_accuracy(algorithm):
    """A reset (log retention −300, floored at −200) every 4th token takes a chunk's cumulative log
    to −3200, where fp32's spacing put every decay between two resets ~2e-4 off (state 7e-4, dk, dθ
    ~2e-4): fp32 inputs now sum the logs in fp64. Titans, and the memory without momentum (η = 0)."""
    spec = memory_spec("matrix", "l2", "l2", algorithm)
    d = spec.random_inputs(1, 64, 1, 16, 16, dtype=torch.float64, seed=1)
    d["g"][:, ::4] = -300.0
    x = {n: t.clone().requires_grad_() for n, t in d.items()}
    o_ref, S_ref = dsf.recurrent(spec, **x)
    g_ref = torch.autograd.grad(o_ref.sum() + S_ref.weights[0].sum(), list(x.values()))
    f = {n: t.float().requires_grad_() for n, t in d.items()}
    o, S = kernels.compile(spec).chunked(output_final_state=True, **f)
    grads = torch.autograd.grad(o.sum() + S.weights[0].sum(), list(f.values()))
    assert rel_err(o, o_ref) < TOL and rel_err(S.weights[0], S_ref.weights[0]) < TOL
    for n, a, b in zip(f, grads, g_ref):
        assert rel_err(a, b) < TOL, n


def test_resets_lose_accuracy_with_fp32_logs(monkeypatch):
    """The switch the benchmark times (EXACT_LOGS=False: the logs summed in fp32) is live: under the
    same resets the state drifts well past fp32's tolerance."""
    monkeypatch.setattr(CH, "EXACT_LOGS", False)
    spec = memory_spec("matrix", "l2", "l2", "momentum")
    d = spec.random_inputs(1, 64, 1, 16, 16, dtype=torch.float64, seed=1)
    d["g"][:, ::4] = -300.0
    o_ref, S_ref = dsf.recurrent(spec, **d)
    o, S = kernels.compile(spec).chunked(output_final_state=True, **{n: t.float() for n, t in d.items()})
    assert rel_err(S.weights[0], S_ref.weights[0]) > 10 * TOL


def test_errors():
    spec = spec_of()
    d = {k: v.float() for k, v in spec.random_inputs(1, 4, 1, 16, 16, seed=0).items()}
    args = [d["q"], d["k"], d["v"], d["g"], d["theta"], d["log_eta"]]
    with pytest.raises(ValueError, match="theta must have shape"):
        chunk_titans(*args[:4], d["theta"][:, :3], args[5])
    with pytest.raises(ValueError, match=r"initial_state\[1\] \(momentum Z0\)"):
        chunk_titans(*args, initial_state=(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 8)))
    with pytest.raises(ValueError, match="chunk_size must be an int, one of"):
        chunk_titans(*args, chunk_size=48)
    with pytest.raises(ValueError, match="grad_at must be one of"):
        fused_recurrent_titans(*args, grad_at="later")
    with pytest.raises(ValueError, match="cu_seqlens must end at T=4"):
        fused_recurrent_titans(*args, cu_seqlens=torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="initial_state must be a dsf.MemoryState"):
        kernels.compile(dsf.zoo.get("titans", memory="linear")).chunked(initial_state=torch.zeros(1), **d)
    with pytest.raises(kernels.UnsupportedMixer, match=r"'titans'.*use dsf.recurrent \(exact\) or "
                                                       r"dsf.chunked\(..., approximate='minibatch'\)"):
        kernels.compile("titans")                                 # MLP memory: no kernel
