"""Properties of particular mixers that the DSF view predicts."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import dsf
from dsf.feature_maps import apply_feature_map, performer_weight
from dsf.testing import rel_err

seeds = st.integers(0, 2 ** 16)


@given(seed=seeds, T=st.integers(1, 12), window=st.one_of(st.none(), st.integers(1, 5)),
       sinks=st.integers(0, 3))
def test_softmax_phi_rows_sum_to_one(seed, T, window, sinks):
    d = dsf.random_inputs("softmax_attention", B=2, T=T, H=2, K=4, V=3, seed=seed)
    P = dsf.phi("softmax_attention", window=window, sink_tokens=sinks, **d)
    assert torch.allclose(P.sum(-1), torch.ones(()).double(), atol=1e-12)
    assert bool((P.triu(1) == 0).all())


@given(seed=seeds, T=st.integers(2, 12), window=st.integers(1, 5), sinks=st.integers(0, 3))
def test_window_and_sinks_mask(seed, T, window, sinks):
    """Query i attends exactly to j <= i with i - j < window or j < sinks."""
    d = dsf.random_inputs("softmax_attention", B=1, T=T, H=1, K=4, V=3, seed=seed)
    P = dsf.phi("softmax_attention", window=window, sink_tokens=sinks, **d)[0, 0]
    for i in range(T):
        for j in range(T):
            visible = j <= i and (i - j < window or j < sinks)
            assert (P[i, j] > 0) == visible


@given(seed=seeds, T=st.integers(1, 12))
def test_s4d_phi_is_toeplitz(seed, T):
    P = dsf.phi("s4d", **dsf.random_inputs("s4d", B=1, T=T, H=2, K=3, V=2, seed=seed))
    for d in range(T):
        diag = torch.diagonal(P, offset=-d, dim1=-2, dim2=-1)
        assert torch.allclose(diag, diag[..., :1].expand_as(diag), rtol=1e-12, atol=1e-14)


@given(seed=seeds, T=st.integers(2, 12))
def test_s6_phi_is_not_toeplitz(seed, T):
    """The selective SSM breaks time invariance: its Φ is not a convolution."""
    P = dsf.phi("s6", **dsf.random_inputs("s6", B=1, T=T, H=1, K=3, V=2, seed=seed))
    diag = torch.diagonal(P, offset=-1, dim1=-2, dim2=-1)
    if T > 2:
        assert not torch.allclose(diag, diag[..., :1].expand_as(diag))


@given(seed=seeds, T=st.integers(1, 10), fmap=st.sampled_from(["elu1", "taylor", "hedgehog", "performer"]))
def test_normalised_linear_attention_rows_sum_to_one(seed, T, fmap):
    d = dsf.random_inputs("linear_attention", B=1, T=T, H=2, K=3, V=2, seed=seed)
    P = dsf.phi("linear_attention", feature_map=fmap, normalize=True, **d)
    assert torch.allclose(P.sum(-1), torch.ones(()).double(), atol=1e-12)


def test_normalised_state_carries_the_normaliser():
    d = dsf.random_inputs("linear_attention", B=1, T=6, H=2, K=3, V=2, seed=1)
    _, S = dsf.recurrent("linear_attention", feature_map="elu1", normalize=True, **d)
    z = (torch.nn.functional.elu(d["k"]) + 1).sum(1)               # Σ φ(k_j): [B, H, K]
    assert S.shape == (1, 2, 3, 3) and torch.allclose(S[..., -1], z)


def test_taylor_features_match_the_expansion():
    q, k = torch.randn(1, 1, 1, 5, dtype=torch.float64), torch.randn(1, 1, 1, 5, dtype=torch.float64)
    s = 5 ** -0.5
    dot = (apply_feature_map("taylor", q, s) * apply_feature_map("taylor", k, s)).sum()
    x = s * (q * k).sum()
    assert math.isclose(dot.item(), (1 + x + x * x / 2).item(), rel_tol=1e-12)


def test_performer_approximates_exp():
    torch.manual_seed(0)
    q, k = 0.3 * torch.randn(1, 1, 1, 4, dtype=torch.float64), 0.3 * torch.randn(1, 1, 1, 4, dtype=torch.float64)
    W = performer_weight(1, 4, 200_000)
    est = (apply_feature_map("performer", q, 1.0, W) * apply_feature_map("performer", k, 1.0, W)).sum()
    assert abs(est.item() / torch.exp((q * k).sum()).item() - 1) < 0.02


def test_retnet_decays():
    d = dsf.random_inputs("retnet", B=1, T=4, H=3, K=2, V=2, seed=0)
    P = dsf.phi("retnet", **d)
    # Φ_{1,0} / (s q_1·k_0) is γ_h = 1 − 2^{−5−h}
    qk = (d["q"][0, 1] * d["k"][0, 0]).sum(-1) * 2 ** -0.5
    assert torch.allclose(P[0, :, 1, 0] / qk, 1 - 2.0 ** (-5 - torch.arange(3.0)).double())


@pytest.mark.parametrize("H,layer_idx,num_layers,schedule,expected", [
    # TransNormerLLM's / Lightning Attention-2's code: ALiBi slopes 2^(−8(h+1)/H) times (1 − l/(L−1) + 1e-5)
    (8, 0, 2, "paper", [2.0 ** (-8 * (h + 1) / 8) * (1 + 1e-5) for h in range(8)]),
    (4, 1, 3, "paper", [2.0 ** (-8 * (h + 1) / 4) * (0.5 + 1e-5) for h in range(4)]),
    (4, 2, 3, "paper", [2.0 ** (-8 * (h + 1) / 4) * 1e-5 for h in range(4)]),
    # H = 6: the four slopes of H = 4, then every other one of H = 8's
    (6, 0, 1, "paper", [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]),
    # fla's chunk_lightning_attn: −(8/H)(1 − l/L)·h, no decay on head 0
    (4, 1, 2, "fla", [0.0, 1.0, 2.0, 3.0])])
def test_lightning_decays(H, layer_idx, num_layers, schedule, expected):
    d = dsf.random_inputs("lightning_attention", B=1, T=4, H=H, K=2, V=2, seed=0)
    opts = dict(layer_idx=layer_idx, num_layers=num_layers, schedule=schedule)
    P = dsf.phi("lightning_attention", **d, **opts)
    qk = (d["q"][0, 1] * d["k"][0, 0]).sum(-1) * 2 ** -0.5
    rates = torch.tensor(expected, dtype=torch.float64) * (1 + 1e-5 if H == 6 else 1)
    assert torch.allclose(P[0, :, 1, 0] / qk, torch.exp(-rates), rtol=1e-12, atol=0)


def test_lightning_rejects_unknown_schedule():
    d = dsf.random_inputs("lightning_attention", B=1, T=2, H=2, K=2, V=2, seed=0)
    with pytest.raises(ValueError, match=r"lightning_attention: schedule must be one of \('paper', 'fla'\)"):
        dsf.recurrent("lightning_attention", **d, schedule="alibi")


def test_longhorn_is_deltanet_with_implicit_step():
    d = dsf.random_inputs("longhorn", B=1, T=7, H=2, K=3, V=2, seed=3)
    o, _ = dsf.recurrent("longhorn", **d)
    beta = d["eps"] / (1 + d["eps"] * (d["k"] ** 2).sum(-1))
    o2, _ = dsf.recurrent("deltanet", q=d["q"], k=d["k"], v=d["v"], beta=beta)
    assert rel_err(o, o2) < 1e-12


def test_gated_deltanet_with_no_decay_is_deltanet():
    d = dsf.random_inputs("gated_deltanet", B=1, T=7, H=2, K=3, V=2, seed=3)
    o, _ = dsf.chunked("gated_deltanet", chunk_size=3, **{**d, "g": torch.zeros_like(d["g"])})
    d.pop("g")
    assert rel_err(o, dsf.recurrent("deltanet", **d)[0]) < 1e-12


def test_strong_decay_stays_finite():
    """Chunked key-wise decay with log-decays of −50 per step: no overflow, no NaN."""
    d = dsf.random_inputs("gla", B=1, T=40, H=1, K=3, V=2, seed=0)
    d["gk"] = torch.full_like(d["gk"], -50.0)
    o_c, _ = dsf.chunked("gla", chunk_size=32, **d)
    o_r, _ = dsf.recurrent("gla", **d)
    assert torch.isfinite(o_c).all() and rel_err(o_c, o_r) < 1e-12


@pytest.mark.parametrize("name", dsf.zoo.names())
def test_every_spec_is_documented(name):
    spec = dsf.zoo.get(name)
    assert spec.citation and spec.description and spec.state_size and spec.oracle and spec.random_inputs


@pytest.mark.parametrize("name, gate", [("gla", "gk"), ("qlstm", "f"), ("mamba2", "g"),
                                        ("gated_deltanet", "g")])
def test_strong_and_mild_decays_take_both_paths(name, gate):
    """Chunks factor mild decays about the chunk start; strong ones are split into sub-blocks
    (key-/value-wise) or formed with non-positive exponents (scalar, gated delta rule). Both paths
    agree with the recurrence, with and without overflow-level decays."""
    d = dsf.random_inputs(name, B=1, T=70, H=2, K=3, V=4, seed=2)
    for scale in (1.0, 60.0):
        x = dict(d)
        x[gate] = d[gate] - scale if name == "qlstm" else d[gate] * scale  # qlstm: log σ(f − 60) ≈ −60
        o_c, S_c = dsf.chunked(name, chunk_size=32, **x)
        o_r, S_r = dsf.recurrent(name, **x)
        assert torch.isfinite(o_c).all() and rel_err(o_c, o_r) < 1e-12 and rel_err(S_c, S_r) < 1e-12


@pytest.mark.parametrize("name", ["mamba2", "gla", "qlstm", "linear_attention"])
def test_many_chunks_pass_state(name):
    """Many short chunks (35 of 2): the state passes through every one of them."""
    d = dsf.random_inputs(name, B=1, T=70, H=2, K=3, V=2, seed=5)
    o_c, S_c = dsf.chunked(name, chunk_size=2, **d)
    o_r, S_r = dsf.recurrent(name, **d)
    assert rel_err(o_c, o_r) < 1e-12 and rel_err(S_c, S_r) < 1e-12
