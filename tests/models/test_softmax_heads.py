"""models.experiments.softmax_heads: the folded circuits, the pattern statistics, a tiny run, bad arguments."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from models import icl
from models.experiments import softmax_heads as sh
from models.model import SequenceModel


def _model(H=3, d_model=6, mixer="softmax_attention", seed=0, **kw):
    torch.manual_seed(seed)
    m = SequenceModel(**{"d_in": 6, "mixer": mixer, "d_model": d_model, "n_layers": 1, "n_heads": H,
                         "head_dim": 6, "mlp_ratio": 0.0, "norm": "none", "backend": "reference", **kw}).double()
    with torch.no_grad():
        for p in m.parameters():     # large random weights: far from any pattern, softmax far from uniform
            p.normal_(0.0, 0.5)
    return m


@pytest.mark.parametrize("H, T, d_model", [(1, 1, 6), (3, 9, 6), (2, 41, 8)])
def test_folded_circuits_reproduce_the_model(H, T, d_model):
    m = _model(H, d_model)
    x, y, _ = icl.sample_regression(5, T, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    tokens = icl.stack_tokens(x, y)
    eff = sh.effective_matrices(m)
    assert eff["kq"].shape == (H, 6, 6) and eff["ov"].shape == (H, 6) and eff["readout"].shape == (6,)
    assert eff["scale"].item() == pytest.approx(6 ** -0.5)
    with torch.no_grad():
        ref = m(tokens)[:, -1, 0]
    torch.testing.assert_close(sh.predict_effective(eff, tokens), ref, rtol=0, atol=1e-10)


def test_effective_matrices_rejects_other_architectures():
    with pytest.raises(ValueError, match="n_layers=2"):
        sh.effective_matrices(_model(n_layers=2))
    with pytest.raises(ValueError, match="norm"):
        sh.effective_matrices(_model(norm="rmsnorm"))
    with pytest.raises(ValueError, match="SequenceModel"):
        sh.effective_matrices(torch.nn.Linear(2, 2))


def test_token_init_makes_the_circuits_two_factor_products():
    m = _model(H=2)
    sh.token_init(m)
    eff = sh.effective_matrices(m)
    layer = m.blocks[0].mixer
    Wq, Wk = (layer.proj[n].weight.detach().view(2, 6, 6) for n in ("q", "k"))
    torch.testing.assert_close(eff["kq"], Wk.transpose(1, 2) @ Wq)            # (W_K I)ᵀ (W_Q I)
    torch.testing.assert_close(eff["readout"], torch.eye(6, dtype=torch.float64)[5])   # ρ = e_y
    with pytest.raises(ValueError, match="d_model >= d_in"):
        sh.token_init(_model(d_model=4, H=1))


def _pad(block: torch.Tensor, last_col: torch.Tensor | None = None) -> torch.Tensor:
    """A [6, 6] KQ with the given x-block, a zero key-y row and (not identified) last column."""
    m = torch.zeros(6, 6, dtype=torch.float64)
    m[:5, :5] = block
    if last_col is not None:
        m[:, 5] = last_col
    return m


def test_kq_stats_tell_diagonal_homogeneous_from_dense():
    g = torch.Generator().manual_seed(0)
    diag = sh.kq_stats(_pad(-0.7 * torch.eye(5, dtype=torch.float64), torch.randn(6, generator=g).double()))
    assert diag["kq_offdiag_ratio"] == 0 and diag["kq_diag_cv"] == pytest.approx(0, abs=1e-15)
    assert diag["kq_diag_mean"] == pytest.approx(-0.7)
    uneven = sh.kq_stats(_pad(torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64))))
    assert uneven["kq_offdiag_ratio"] == 0 and uneven["kq_diag_cv"] > sh.KQ_CV_MAX   # diagonal, not homogeneous
    for seed in range(5):
        dense = sh.kq_stats(torch.randn(6, 6, generator=torch.Generator().manual_seed(seed)))
        assert dense["kq_offdiag_ratio"] > 1.0                       # ≈ √5 for i.i.d. entries
    leak = _pad(torch.eye(5, dtype=torch.float64))
    leak[5, :5] = 1.0                                                # y_key · x_query enters the score
    assert sh.kq_stats(leak)["kq_offdiag_ratio"] == pytest.approx(1.0)


def test_ov_stats_last_entry_and_zero_sum():
    ov = torch.zeros(2, 6, dtype=torch.float64)
    ov[:, 5] = torch.tensor([0.8, -0.8], dtype=torch.float64)
    s = sh.ov_stats(ov)
    assert s["ov_y_share"] == [1.0, 1.0] and s["ov_zero_sum"] == 0 and s["ov_y"] == [0.8, -0.8]
    assert sh.ov_stats(ov.abs())["ov_zero_sum"] == 1.0               # same signs: nothing cancels
    assert sh.ov_stats(ov[:1])["ov_zero_sum"] == 1.0                 # one head cannot cancel its mean term
    dense = sh.ov_stats(torch.randn(4, 6, generator=torch.Generator().manual_seed(0)))
    assert max(dense["ov_y_share"]) < sh.OV_Y_SHARE_MIN


def _eff(kqs, ovs, readout=None):
    return {"kq": torch.stack(kqs), "ov": torch.stack(ovs), "key_bias": torch.zeros(len(kqs), 6, dtype=torch.float64),
            "readout": torch.zeros(6, dtype=torch.float64) if readout is None else readout,
            "offset": torch.tensor(0.0, dtype=torch.float64), "scale": torch.tensor(6 ** -0.5, dtype=torch.float64)}


def _ey(mu):
    v = torch.zeros(6, dtype=torch.float64)
    v[5] = mu
    return v


def test_pattern_summary_on_the_papers_circuits():
    eye = torch.eye(5, dtype=torch.float64)
    # the paper's two-head solution, plus a dummy head with tiny weights
    paper = _eff([_pad(0.3 * eye), _pad(-0.3 * eye), _pad(1e-3 * eye)], [_ey(2.0), _ey(-2.0), _ey(1e-3)])
    p = sh.pattern_summary(paper)
    assert p["kq_diagonal"] and p["ov_last_entry"] and p["zero_sum"] and p["paired_signs"]
    assert p["active_heads"] == pytest.approx(2.0, abs=1e-4)
    assert p["kq_signs"] == "+-+" and p["ov_signs"] == "+-+"
    assert p["step_expansion"] == pytest.approx(6 ** -0.5 * (0.6 + 0.6 + 1e-6))
    rows = sh.head_stats(paper)
    assert [r["active"] for r in rows] == [True, True, False]

    g = torch.Generator().manual_seed(3)
    dense = _eff([torch.randn(6, 6, generator=g).double() for _ in range(2)],
                 [torch.randn(6, generator=g).double() for _ in range(2)])
    q = sh.pattern_summary(dense)
    assert not (q["kq_diagonal"] or q["ov_last_entry"])
    one_sign = sh.pattern_summary(_eff([_pad(0.3 * eye), _pad(0.3 * eye)], [_ey(1.0), _ey(1.0)]))
    assert not one_sign["zero_sum"] and not one_sign["paired_signs"]


def _fake_result(risk_h, pats_ok=True, lin=(0.25, 3.0)):
    """A result dict with given test risks per H (GD 0.24) for the findings logic."""
    risk = [{"model": "softmax_attention", "heads": h, "test_risk": r, "gd_risk": 0.24, "steps": 100,
             "paper_mean": sh.PAPER_VAL[h] and sum(sh.PAPER_VAL[h]) / 10} for h, r in risk_h.items()]
    risk.append({"model": "linear_attention", "heads": 1, "test_risk": lin[0], "gd_risk": 0.24, "steps": 50})
    pat = {"kq_offdiag_ratio": 0.05, "kq_diag_cv": 0.02, "ov_y_share": 0.99, "ov_zero_sum": 0.01,
           "active_heads": 2.0, "kq_signs": "+-", "ov_signs": "+-", "kq_diagonal": pats_ok,
           "ov_last_entry": pats_ok, "zero_sum": pats_ok, "paired_signs": pats_ok}
    length = [{"predictor": "softmax_attention", "heads": h, "n_context": c, "risk": r} for h, r in risk_h.items()
              for c in (40, 160)]
    length += [{"predictor": "linear_attention", "heads": 1, "n_context": 40, "risk": lin[0]},
               {"predictor": "linear_attention", "heads": 1, "n_context": 160, "risk": lin[1]}]
    return {"risk": risk, "patterns": {h: pat for h in risk_h}, "length": length, "settings": {"steps": 100}}


def test_findings_follow_the_numbers():
    good = {f["finding"]: f["reproduced"] for f in sh.findings(_fake_result({1: 0.41, 2: 0.25, 4: 0.245}))}
    assert all(good.values()), good
    bad = sh.findings(_fake_result({1: 0.41, 2: 0.25, 4: 0.245}, pats_ok=False))
    assert [f["reproduced"] for f in bad if "KQ" in f["finding"] or "OV" in f["finding"]] == [False] * 3
    assert "outside the threshold" in next(f["why"] for f in bad if "KQ" in f["finding"])
    plateau = sh.findings(_fake_result({1: 0.42, 2: 0.42}))
    assert plateau[0]["reproduced"] is False and "not within 15%" in plateau[0]["why"]
    assert all(f["reproduced"] is None for f in plateau[1:])        # patterns of an unconverged model: untested
    partial = sh.findings(_fake_result({1: 0.41, 2: 0.30, 4: 0.245}))
    assert partial[0]["reproduced"] is False and "H=2: 0.300" in partial[0]["why"]
    assert all(f["reproduced"] for f in partial[1:]) and "judged on H = 4" in partial[2]["why"]
    lin_slow = sh.findings(_fake_result({2: 0.25}, lin=(0.5, 3.0)))
    assert lin_slow[-1]["reproduced"] is None and "linear model did not converge" in lin_slow[-1]["why"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("softmax_heads")
    r = sh.run([1, 2], steps=6, val_every=3, val_size=64, batch=16, test_prompts=256, out=out)
    return r, out


def test_tiny_run_writes_tables_and_figures(tiny):
    r, out = tiny
    for name in ("risk.csv", "heads.csv", "length.csv", "curves.csv", "summary.md", "result.json"):
        assert (out / name).stat().st_size > 0, name
    for name in ("matrices.png", "length.png", "curves.png"):
        assert (out / name).stat().st_size > 10_000, name
    rows = list(csv.DictReader(open(out / "risk.csv")))
    assert [(row["model"], row["heads"]) for row in rows] == [
        ("softmax_attention", "1"), ("softmax_attention", "2"), ("linear_attention", "1")]
    assert {"steps", "test_risk", "gd_risk", "debiased_gd_risk", "ridge_risk", "paper_mean", "kq_offdiag_ratio",
            "kq_diag_cv", "ov_y_share", "ov_zero_sum", "active_heads"} <= rows[0].keys()
    assert int(rows[0]["steps"]) == 6 and int(rows[2]["steps"]) == 6          # linear_fraction 1 (cpu)
    # the baselines are the closed forms' values up to Monte-Carlo error, and ordered as theory says
    row = r["risk"][0]
    assert row["gd_risk"] == pytest.approx(icl.gd_optimal_risk(5, 40, 0.1, "1/d"), rel=0.25)
    assert row["ridge_risk"] < row["gd_risk"] < row["zero_risk"]
    lengths = list(csv.DictReader(open(out / "length.csv")))
    assert {int(x["n_context"]) for x in lengths} == {40, 80, 160}
    assert {x["predictor"] for x in lengths} >= {"gd", "ridge", "softmax_attention", "linear_attention"}
    heads = list(csv.DictReader(open(out / "heads.csv")))
    assert [(x["heads"], x["head"]) for x in heads] == [("1", "0"), ("2", "0"), ("2", "1")]
    assert math.isfinite(float(heads[0]["kq_offdiag_ratio"]))
    assert "| published finding |" in (out / "summary.md").read_text()
    saved = sh.load_result(out)
    assert saved["risk"] == r["risk"] and sorted(saved["patterns"]) == [1, 2]
    assert sh.findings(saved) == r["findings"]


def test_bad_arguments_are_named():
    for kw, match in [({"heads": [0]}, "heads"), ({"heads": [2, 2]}, "heads"), ({"scale": "tpu"}, "scale"),
                      ({"steps": 0}, "steps"), ({"batch": -1}, "batch"), ({"wrong": 1}, "unknown preset"),
                      ({"accelerator": "tpu"}, "accelerator"), ({"init": "xavier"}, "init"),
                      ({"seed": "a"}, "seed")]:
        with pytest.raises(ValueError, match=match):
            sh.run(**kw)
    with pytest.raises(SystemExit):
        sh.main(["--scale", "tpu"])


def test_load_config_checks_the_class_paths(tmp_path):
    cfg = sh.load_config()
    assert cfg["model"]["d_model"] == 6 and cfg["data"]["n_points"] == 41 and cfg["seed"] == 1029
    bad = tmp_path / "bad.yaml"
    bad.write_text(sh.CONFIG.read_text().replace("models.lit.RegressionModule", "models.lit.MQARModule"))
    with pytest.raises(ValueError, match="class paths"):
        sh.load_config(bad)


@pytest.mark.parametrize("argv,message", [(["--steps", "0"], "--steps must be a positive int, got 0"),
                                          (["--heads", "2", "2"], "--heads must be distinct positive ints")])
def test_bad_sizes_are_usage_errors(argv, message, capsys):
    """They were tracebacks from run()'s checks (icl_sweep and mqar_state already said them as usage)."""
    with pytest.raises(SystemExit):
        sh.main(argv)
    assert message in capsys.readouterr().err
