"""compile(mixer).step as one launch for the mixers whose lowering only scales q."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import dsf
import kernels
import kernels.delta.recurrent as delta_rec
import kernels.diag.recurrent as diag_rec
from dsf.testing import rel_err

TOL = 1e-5
DIRECT = {"mamba2": diag_rec, "gla": diag_rec, "deltanet": delta_rec, "gated_deltanet": delta_rec}


def _token(name, B=2, H=2, K=16, V=8, seed=3, scale=None):
    """One token of inputs ([B, H, ·]), a prefix state and the float64 reference step."""
    x = dsf.random_inputs(name, B, 1, H, K, V, dtype=torch.float64, seed=seed)
    S0 = torch.randn(B, H, K, V, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    extra = {} if scale is None else {"scale": scale}
    o_ref, S_ref = dsf.recurrent(name, initial_state=S0, **x, **extra)
    one = {n: t[:, 0].float() for n, t in x.items()}
    return one, S0.float().contiguous(), o_ref[:, 0], S_ref, extra


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("scale", [None, 0.3])
@pytest.mark.parametrize("name", list(DIRECT))
def test_direct_step_skips_the_lowering(name, scale, monkeypatch, count_launches):
    one, state, o_ref, S_ref, extra = _token(name, scale=scale)
    m = kernels.compile(name)
    # no lowering on this path: prepare() may not be called
    monkeypatch.setattr(kernels, "prepare", lambda *a, **k: pytest.fail("the step lowered its inputs"))
    launches = count_launches(DIRECT[name], "_fwd_kernel")
    with torch.no_grad():
        o, new = m.step(state, inplace=True, **one, **extra)
    assert new is state and len(launches) == 1
    assert rel_err(o, o_ref) < TOL and rel_err(state, S_ref) < TOL


@pytest.mark.parametrize("name", list(DIRECT))
def test_direct_step_runs_no_torch_op_but_allocation(name, monkeypatch):
    """Besides its one kernel, the step only allocates its output: no scaling, arange or copy op."""
    one, state, *_ = _token(name)
    m = kernels.compile(name)
    with torch.no_grad():
        m.step(state, inplace=True, **one)          # warm: the step's offsets are made once

    class Skip:
        def __getitem__(self, grid):
            return lambda *a, **k: None
    monkeypatch.setattr(DIRECT[name], "_fwd_kernel", Skip())
    # the suite's NaN poisoning fills every buffer (a fill_ of its own): plain allocation here
    monkeypatch.setattr(DIRECT[name], "_empty", lambda *shape, **kw: torch.empty(*shape, **kw))
    with torch.no_grad(), _Ops() as seen:
        m.step(state, inplace=True, **one)
    assert set(seen.ops) <= {"empty", "empty_strided"}, seen.ops


def test_general_path_still_words_the_errors():
    """Inputs the single launch cannot take go through the lowering, whose errors name the mixer."""
    one, state, *_ = _token("gated_deltanet")
    m = kernels.compile("gated_deltanet")
    with pytest.raises(ValueError, match="gated_deltanet"):
        m.step(state, inplace=True, **{**one, "k": one["k"][..., :8]})
    with pytest.raises(TypeError, match="gated_deltanet: v has dtype torch.float64"):
        m.step(state, inplace=True, **{**one, "v": one["v"].double()})


def test_direct_step_out_of_place_and_with_autograd():
    one, state, o_ref, S_ref, _ = _token("mamba2")
    m = kernels.compile("mamba2")
    before = state.clone()
    with torch.no_grad():
        o, new = m.step(state, **one)
    assert new is not state and torch.equal(state, before)
    assert rel_err(o, o_ref) < TOL and rel_err(new, S_ref) < TOL
    # a query that needs a gradient takes the differentiable path
    q = one["q"].clone().requires_grad_()
    o2, _ = m.step(state, **{**one, "q": q})
    o2.sum().backward()
    assert q.grad is not None and rel_err(o2.detach(), o_ref) < TOL


def test_step_kernels_check_the_scale():
    from kernels.diag import diag_step

    q = torch.randn(1, 1, 16)
    with pytest.raises(ValueError, match="diag_step: scale must be a finite number, got nan"):
        diag_step(torch.zeros(1, 1, 16, 16), q, q, q, scale=float("nan"))


@pytest.mark.parametrize("name", list(DIRECT))
def test_direct_chunked_skips_the_lowering(name, monkeypatch):
    """compile().chunked of these mixers hands the scale to the kernels instead of scaling q first:
    outputs, final state and every gradient (initial state included) as the float64 recurrence."""
    x = dsf.random_inputs(name, 2, 19, 2, 16, 8, dtype=torch.float64, seed=4)
    S0 = torch.randn(2, 2, 16, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ref = {n: t.clone().requires_grad_() for n, t in {**x, "S0": S0}.items()}
    S0_ref = ref.pop("S0")
    o_ref, S_ref = dsf.recurrent(name, initial_state=S0_ref, scale=0.3, **ref)
    monkeypatch.setattr(kernels, "prepare", lambda *a, **k: pytest.fail("the inputs were lowered"))
    ours = {n: t.detach().float().requires_grad_() for n, t in {**x, "S0": S0}.items()}
    S0f = ours.pop("S0")
    o, S = kernels.compile(name).chunked(initial_state=S0f, output_final_state=True, scale=0.3, **ours)
    assert rel_err(o, o_ref) < TOL and rel_err(S, S_ref) < TOL
    w = torch.randn(o.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    ((o_ref * w).sum() + S_ref.square().sum()).backward()
    ((o.double() * w).sum() + S.double().square().sum()).backward()
    for n in ours:
        assert rel_err(ours[n].grad, ref[n].grad) < TOL, n
    assert rel_err(S0f.grad, S0_ref.grad) < TOL


@pytest.mark.parametrize("name", list(DIRECT))
@pytest.mark.parametrize("form", ["chunked", "recurrent", "step"])
def test_a_scale_that_is_not_finite_is_refused_by_the_mixers_name(name, form):
    """The direct chunked path handed a NaN or infinite scale to chunk_diag / chunk_delta, whose error
    named them, not the mixer the user called; every form now words it as the dsf forms do."""
    x = dsf.random_inputs(name, 1, 5, 1, 16, 16, dtype=torch.float32, seed=0)
    m = kernels.compile(name)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=rf"^{name}: scale must be a finite number or None, got {bad}"):
            if form == "step":
                m.step(torch.zeros(1, 1, 16, 16), scale=bad, **{n: t[:, 0] for n, t in x.items()})
            else:
                getattr(m, form)(scale=bad, **x)


@pytest.mark.parametrize("name", ["mamba2", "deltanet", "retnet", "ttt_linear"])
def test_an_expanded_state_is_refused_in_place_and_taken_out_of_place(name):
    """An expanded view shares one memory location between rows: updating it in place failed with
    torch's bare overlap error after the kernel ran. Refused by name; out of place it is an input."""
    B, H, K, V = 2, 2, 16, 8
    x = dsf.random_inputs(name, B, 1, H, K, V, dtype=torch.float64, seed=3)
    S0 = torch.randn(1, H, K, V, generator=torch.Generator().manual_seed(3)).expand(B, H, K, V)   # float32
    wrap = (lambda S: dsf.MemoryState((S,), ())) if name == "ttt_linear" else (lambda S: S)  # noqa: E731
    arg = "state.weights\\[0\\]" if name == "ttt_linear" else "state"
    one = {n: t[:, 0].float() for n, t in x.items()}
    with pytest.raises(ValueError, match=f"{name}.step: inplace=True needs a {arg} whose elements each have their"):
        kernels.compile(name).step(wrap(S0), inplace=True, **one)
    o, _ = kernels.compile(name).step(wrap(S0), inplace=False, **one)
    o_ref, _ = dsf.recurrent(name, initial_state=wrap(S0.double()), **x)
    assert rel_err(o, o_ref[:, 0]) < TOL
