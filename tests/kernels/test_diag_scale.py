"""chunk_diag's ``scale``: the same outputs, final state and gradients as scaling q beforehand."""

import pytest
import torch

from dsf.testing import rel_err
from kernels.diag import chunk_diag

TOL = 1e-5


@pytest.mark.parametrize("decay", ["none", "scalar", "key", "value"])
@pytest.mark.parametrize("T,varlen", [(37, False), (70, True)])
def test_scale_matches_prescaled_queries(decay, T, varlen):
    _compare(decay, T, varlen)


@pytest.mark.parametrize("decay", ["scalar", "key"])
def test_scale_on_do_in_the_backward_kernels(decay, monkeypatch, count_launches):
    """DO_SCALE_IN_KERNELS (each family its own): the backward kernels scale each dO tile as they
    load it (no torch do * scale); the same gradients, initial state's included, as pre-scaled
    queries. The other family's switch, set the other way, does not reach them."""
    import kernels.diag.chunk as dc
    import kernels.diag.chunk_key as ck

    mod, other, names = (dc, ck, ("_dstate_kernel", "_dqdk_kernel", "_dv_kernel")) if decay == "scalar" else (
        ck, dc, ("_dstate_kernel", "_dv_kernel", "_dqk_inter_kernel"))
    monkeypatch.setattr(mod, "DO_SCALE_IN_KERNELS", True)
    monkeypatch.setattr(other, "DO_SCALE_IN_KERNELS", False)
    seen = [count_launches(mod, n) for n in names]
    _compare(decay, 70, True)
    # the run with scale = 0.37 sets it, the pre-scaled run (scale 1) does not
    assert [[kw["SCALE_DO"] for _, kw in s] for s in seen] == [[True, False]] * 3
    monkeypatch.setattr(mod, "DO_SCALE_IN_KERNELS", False)
    monkeypatch.setattr(other, "DO_SCALE_IN_KERNELS", True)
    seen = [count_launches(mod, n) for n in names]
    _compare(decay, 70, True)
    assert [[kw["SCALE_DO"] for _, kw in s] for s in seen] == [[False, False]] * 3


@pytest.mark.parametrize("least", [None, 1000])
def test_scale_in_the_one_pass_forward(least, monkeypatch, count_launches):
    """The same with the scalar family's one-pass forward forced on, whole and cut into segments."""
    import kernels.diag.chunk as dc

    monkeypatch.setattr(dc, "FUSED_FORWARD", True)
    monkeypatch.setattr(dc, "FUSED_MIN_PROGRAMS", least)
    launches = count_launches(dc, "_fused_fwd_kernel")
    _compare("scalar", 130, False)
    assert len(launches) == 2


def _compare(decay, T, varlen):
    gen = torch.Generator().manual_seed(3)
    B, H, K, V, s = (1, 2, 16, 16, 0.37)
    r = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    q, k, v = r(B, T, H, K), r(B, T, H, K) * 0.5, r(B, T, H, V)
    g = {"none": None, "scalar": -r(B, T, H).abs() * 0.1, "key": -r(B, T, H, K).abs() * 0.1,
         "value": -r(B, T, H, V).abs() * 0.1}[decay]
    h0 = r(1 if varlen else B, H, K, V)
    cu = torch.tensor([0, 5, 41, T]) if varlen else None
    if varlen:
        h0 = r(3, H, K, V)
    leaves = [t.float().requires_grad_() for t in (q, k, v, h0)] + (
        [g.float().requires_grad_()] if g is not None else [])
    runs = []
    for scaled_in_kernel in (True, False):
        xs = [t.detach().clone().requires_grad_() for t in leaves]
        qx, kx, vx, hx = xs[:4]
        gx = xs[4] if g is not None else None
        o, S = chunk_diag(qx if scaled_in_kernel else qx * s, kx, vx, decay, gx, initial_state=hx,
                          output_final_state=True, cu_seqlens=cu,
                          **({"scale": s} if scaled_in_kernel else {}))
        w = torch.randn(o.shape, generator=torch.Generator().manual_seed(1))
        ((o * w).sum() + S.square().sum()).backward()
        runs.append((o.detach(), S.detach(), [x.grad for x in xs]))
    (o1, S1, g1), (o2, S2, g2) = runs
    assert rel_err(o1, o2) < TOL and rel_err(S1, S2) < TOL
    for a, b in zip(g1, g2):
        assert rel_err(a, b) < TOL


def test_scale_must_be_a_number():
    q = torch.randn(1, 4, 1, 16)
    with pytest.raises(TypeError, match="chunk_diag: scale must be a finite number"):
        chunk_diag(q, q, q, scale=torch.tensor(0.5))
