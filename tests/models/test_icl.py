"""models.icl: prompt shapes, token layouts, argument checks, baselines and their closed forms.

The Monte-Carlo checks use fixed generators, so they are deterministic; their tolerances are a few
standard errors of the estimate.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from models import icl

SIZES = dict(batch=st.integers(1, 4), n_points=st.integers(1, 9), d=st.integers(1, 6),
             w_scale=st.sampled_from(icl.W_SCALES), seed=st.integers(0, 2**16))
BASELINES = {
    "least_squares": icl.least_squares,
    "ridge": lambda x, y: icl.ridge(x, y, 0.5),
    "knn": icl.knn,
    "averaging": icl.averaging,
    "one_step_gd": icl.one_step_gd,
}


def _prompts(batch, n_points, d, seed, **kw):
    return icl.sample_regression(batch, n_points, d, generator=torch.Generator().manual_seed(seed), **kw)


def _risk(pred, y):
    """Per-position mean squared error over prompts, [n]."""
    return (pred.double() - y.double()).square().mean(0)


# --- prompts and tokens ----------------------------------------------------------------------

@given(**SIZES)
def test_sample_shapes_and_noiseless_labels(batch, n_points, d, w_scale, seed):
    x, y, w = _prompts(batch, n_points, d, seed, w_scale=w_scale)
    assert x.shape == (batch, n_points, d) and y.shape == (batch, n_points) and w.shape == (batch, d)
    assert x.dtype == y.dtype == w.dtype == torch.float32
    torch.testing.assert_close(y, torch.einsum("bnd,bd->bn", x, w))


def test_noise_changes_only_y():
    x0, y0, w0 = _prompts(3, 7, 4, seed=1)
    x1, y1, w1 = _prompts(3, 7, 4, seed=1, noise_std=0.3)
    assert torch.equal(x0, x1) and torch.equal(w0, w1)
    resid = y1 - y0
    assert 0 < resid.abs().max() < 2.0


@pytest.mark.parametrize("w_scale, var", [("identity", 1.0), ("1/d", 1 / 8)])
def test_w_scale_sets_the_variance_of_w(w_scale, var):
    _, _, w = _prompts(4000, 1, 8, seed=0, w_scale=w_scale)
    assert abs(w.var().item() / var - 1) < 0.05          # 32k draws: standard error ≈ 0.8%


@pytest.mark.parametrize("kwargs, name", [
    (dict(batch=2, n_points=3, d=0), "d"),
    (dict(batch=2, n_points=3, d=-1), "d"),
    (dict(batch=2, n_points=0, d=3), "n_points"),
    (dict(batch=0, n_points=3, d=3), "batch"),
    (dict(batch=2, n_points=3, d=3, noise_std=-0.1), "noise_std"),
    (dict(batch=2, n_points=3, d=3, noise_std=math.nan), "noise_std"),
    (dict(batch=2, n_points=3, d=3, w_scale="sqrt"), "w_scale"),
])
def test_sample_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        icl.sample_regression(**kwargs)


def test_other_validation_errors():
    x, y, _ = _prompts(2, 5, 3, seed=0)
    with pytest.raises(ValueError, match="lam"):
        icl.ridge(x, y, -1.0)
    with pytest.raises(ValueError, match="k must"):
        icl.knn(x, y, k=0)
    with pytest.raises(ValueError, match="expected x"):
        icl.least_squares(x, y[:, :-1])
    with pytest.raises(ValueError, match="w_scale"):
        icl.gd_optimal_eta(3, 5, 0.0, "bad")
    with pytest.raises(ValueError, match="noise_var"):
        icl.gd_optimal_risk(3, 5, -1.0)


@given(**SIZES)
def test_token_layouts(batch, n_points, d, w_scale, seed):
    x, y, _ = _prompts(batch, n_points, d, seed, w_scale=w_scale)
    inter = icl.interleave(x, y)
    assert inter.shape == (batch, 2 * n_points, d + 1)
    assert torch.equal(inter[:, 0::2, :d], x) and not inter[:, 0::2, d].any()      # [x_i; 0]
    assert torch.equal(inter[:, 1::2, d], y) and not inter[:, 1::2, :d].any()      # [0…0; y_i]
    stacked = icl.stack_tokens(x, y)
    assert stacked.shape == (batch, n_points, d + 1)
    assert torch.equal(stacked[..., :d], x)
    assert torch.equal(stacked[:, :-1, d], y[:, :-1]) and not stacked[:, -1, d].any()  # query [x_q; 0]


# --- baselines -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", BASELINES)
@given(**SIZES)
def test_baselines_shape_and_first_prediction(name, batch, n_points, d, w_scale, seed):
    x, y, _ = _prompts(batch, n_points, d, seed, w_scale=w_scale, noise_std=0.1)
    pred = BASELINES[name](x, y)
    assert pred.shape == (batch, n_points) and pred.dtype == x.dtype
    assert not pred[:, 0].any() and torch.isfinite(pred).all()


@given(d=st.integers(1, 6), extra=st.integers(0, 4), seed=st.integers(0, 2**16))
def test_least_squares_is_exact_once_i_reaches_d(d, extra, seed):
    x, y, _ = _prompts(3, d + extra + 1, d, seed, dtype=torch.float64)
    pred = icl.least_squares(x, y)
    torch.testing.assert_close(pred[:, d:], y[:, d:], rtol=1e-6, atol=1e-6)


@given(d=st.integers(2, 6), seed=st.integers(0, 2**16))
def test_least_squares_is_min_norm_below_d(d, seed):
    x, y, _ = _prompts(3, d, d, seed, dtype=torch.float64, noise_std=0.2)
    pred = icl.least_squares(x, y)
    for i in range(1, d):
        w = (torch.linalg.pinv(x[:, :i]) @ y[:, :i, None]).squeeze(-1)
        torch.testing.assert_close(pred[:, i], (w * x[:, i]).sum(-1))


def test_ridge_tends_to_least_squares():
    x, y, _ = _prompts(5, 9, 4, seed=3, dtype=torch.float64, noise_std=0.3)
    torch.testing.assert_close(icl.ridge(x, y, 0.0), icl.least_squares(x, y))
    torch.testing.assert_close(icl.ridge(x, y, 1e-9), icl.least_squares(x, y), rtol=1e-5, atol=1e-6)


def test_knn():
    x, y, _ = _prompts(4, 6, 3, seed=2)
    mean_before = torch.cumsum(y, 1) / torch.arange(1, 7)
    torch.testing.assert_close(icl.knn(x, y, k=10)[:, 1:], mean_before[:, :-1])     # k > i: every point
    x[:, 5] = x[:, 2]                                                             # query repeats point 2
    assert torch.equal(icl.knn(x, y, k=1)[:, 5], y[:, 2])


def test_gd_baselines_match_their_formulas():
    x, y, _ = _prompts(3, 8, 4, seed=4, dtype=torch.float64)
    for i in (1, 4, 7):
        h = (y[:, :i, None] * x[:, :i]).sum(1)                                     # Σ_{j<i} y_j x_j
        torch.testing.assert_close(icl.averaging(x, y)[:, i], (h * x[:, i]).sum(-1) / i)
        eta = icl.gd_optimal_eta(4, i, 0.25)
        torch.testing.assert_close(icl.one_step_gd(x, y, noise_var=0.25)[:, i], eta * (h * x[:, i]).sum(-1))
        torch.testing.assert_close(icl.one_step_gd(x, y, eta=0.1)[:, i], 0.1 * (h * x[:, i]).sum(-1))


# --- closed forms ----------------------------------------------------------------------------

@given(d=st.integers(1, 30), N=st.integers(0, 100), noise_var=st.floats(0, 4),
       w_scale=st.sampled_from(icl.W_SCALES))
def test_gd_closed_forms(d, N, noise_var, w_scale):
    eta = icl.gd_optimal_eta(d, N, noise_var, w_scale)
    risk = icl.gd_optimal_risk(d, N, noise_var, w_scale)
    if w_scale == "identity":     # the formulas as the notes state them
        assert math.isclose(eta, 1 / (N + d + 1 + noise_var))
        assert math.isclose(risk, d + noise_var - N * d / (N + d + 1 + noise_var), rel_tol=1e-9, abs_tol=1e-9)
    else:
        assert math.isclose(eta, 1 / (N + 1 + d * (1 + noise_var)))
        assert math.isclose(risk, 1 + noise_var - N / (N + 1 + d * (1 + noise_var)), rel_tol=1e-9, abs_tol=1e-9)
    for step in (0.5 * eta, 1.5 * eta):                                            # η* minimises the risk
        assert icl.gd_risk(d, N, step, noise_var, w_scale) >= risk - 1e-9


def test_one_step_gd_risk_matches_closed_form():
    d, N = 5, 20
    x, y, _ = _prompts(50_000, N + 1, d, seed=0)
    risk = _risk(icl.one_step_gd(x, y), y)
    for i in (5, 10, N):
        assert abs(risk[i].item() / icl.gd_optimal_risk(d, i) - 1) < 0.03, (i, risk[i].item())
    avg = _risk(icl.averaging(x, y), y)
    assert abs(avg[N].item() / icl.gd_risk(d, N, 1 / N) - 1) < 0.04


def test_one_step_gd_risk_matches_closed_form_noisy_scaled():
    d, N, s2 = 5, 20, 0.1
    x, y, _ = _prompts(50_000, N + 1, d, seed=1, noise_std=math.sqrt(s2), w_scale="1/d")
    risk = _risk(icl.one_step_gd(x, y, noise_var=s2, w_scale="1/d"), y)
    assert abs(risk[N].item() / icl.gd_optimal_risk(d, N, s2, "1/d") - 1) < 0.03


def test_least_squares_risk_matches_monte_carlo():
    d, s2 = 5, 0.25
    x, y, _ = _prompts(20_000, 13, d, seed=2, noise_std=math.sqrt(s2))
    noisy = _risk(icl.least_squares(x, y), y)
    for i in (0, 1, 2, 3, 8, 12):                                                  # finite for i ∉ [d−1, d+1]
        assert abs(noisy[i].item() / icl.least_squares_risk(d, i, s2) - 1) < 0.1, (i, noisy[i].item())
    assert math.isinf(icl.least_squares_risk(d, d, s2))
    x, y, _ = _prompts(20_000, 8, d, seed=3)
    clean = _risk(icl.least_squares(x, y), y)
    expected = torch.tensor([icl.least_squares_risk(d, i) for i in range(8)], dtype=torch.float64)
    torch.testing.assert_close(clean, expected, rtol=0.05, atol=1e-6)               # (d − i)₊


@pytest.mark.parametrize("w_scale", icl.W_SCALES)
def test_bayes_ridge_beats_least_squares_with_noise(w_scale):
    d, s2 = 5, 0.25
    x, y, _ = _prompts(4000, 12, d, seed=5, noise_std=math.sqrt(s2), w_scale=w_scale)
    r_ridge = _risk(icl.ridge(x, y, icl.bayes_ridge_lambda(d, s2, w_scale)), y)
    r_ols = _risk(icl.least_squares(x, y), y)
    assert (r_ridge <= r_ols * 1.01).all(), (r_ridge, r_ols)
    assert r_ridge[1:].sum() < 0.5 * r_ols[1:].sum()          # the OLS peak at i ≈ d dominates
