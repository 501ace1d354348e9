"""models.experiments.icl_sweep: a tiny sweep writes its outputs, its baselines are models.icl's on
the same prompts (and agree with the closed forms), a run equals dsf-train's, bad input fails clearly."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from models import icl
from models.cli import cli_main
from models.experiments import icl_sweep

MIXERS = ["softmax_attention", "mamba2"]
TINY = ["--mixers", ",".join(MIXERS), "--steps", "20", "--val-size", "256", "--batch", "32"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("icl_sweep")
    sweep = icl_sweep.main([*TINY, "--out", str(out)])
    rows = list(csv.DictReader(open(out / "icl_sweep.csv")))
    return sweep, rows, out


def _curve(rows, kind, method):
    sel = sorted((r for r in rows if r["kind"] == kind and r["method"] == method), key=lambda r: int(r["position"]))
    return torch.tensor([float(r["sq_err"]) for r in sel], dtype=torch.float64)


def test_outputs(tiny):
    sweep, rows, out = tiny
    s = sweep["settings"]
    assert list(rows[0]) == icl_sweep.COLUMNS
    assert (s.d, s.n_points, s.steps) == (5, 11, 20)
    for m in MIXERS:
        mine = [r for r in rows if r["kind"] == "mixer" and r["method"] == m]
        assert [int(r["position"]) for r in mine] == list(range(s.n_points))
        assert {r["status"] for r in mine} == {"ok"} and {r["steps"] for r in mine} == {"20"}
        assert all(math.isfinite(float(r["sq_err"])) for r in mine)
        torch.testing.assert_close(_curve(rows, "mixer", m), torch.tensor(sweep["runs"][m]["curve"],
                                   dtype=torch.float64), rtol=1e-5, atol=0)
    assert {r["method"] for r in rows if r["kind"] == "baseline"} == set(icl_sweep.BASELINES)
    assert {r["method"] for r in rows if r["kind"] == "closed_form"} == {"least_squares_risk", "gd_optimal_risk"}
    for r in rows:
        assert math.isclose(float(r["sq_err_over_d"]), float(r["sq_err"]) / s.d, rel_tol=1e-4, abs_tol=1e-9)
    md = (out / "icl_sweep.md").read_text()
    assert all(f"`{m}`" in md for m in MIXERS) and "baseline: least_squares" in md
    assert (out / "icl_sweep.png").stat().st_size > 20_000


def test_baselines_are_models_icl_on_the_same_prompts(tiny):
    sweep, rows, _ = tiny
    s = sweep["settings"]
    dm = icl_sweep.datamodule(s)
    dm.setup("fit")
    x = torch.cat([b["x"] for b in dm.val_dataloader()])
    y = torch.cat([b["y"] for b in dm.val_dataloader()])
    assert x.shape == (256, 11, 5)
    per_prompt = {"least_squares": (icl.least_squares(x, y) - y).double().square(),
                  "ridge": (icl.ridge(x, y, icl.bayes_ridge_lambda(5, 0.0)) - y).double().square(),
                  "one_step_gd": (icl.one_step_gd(x, y) - y).double().square()}
    for name, sq in per_prompt.items():
        torch.testing.assert_close(_curve(rows, "baseline", name), sq.mean(0), rtol=1e-4, atol=1e-9)
    # the closed forms, written out (noiseless, w ~ N(0, I)), and the same prompts within 4 standard errors
    ls = torch.tensor([max(5 - i, 0) for i in range(11)], dtype=torch.float64)
    gd = torch.tensor([5 - i * 5 / (i + 6) for i in range(11)], dtype=torch.float64)
    torch.testing.assert_close(_curve(rows, "closed_form", "least_squares_risk"), ls, rtol=1e-5, atol=0)
    torch.testing.assert_close(_curve(rows, "closed_form", "gd_optimal_risk"), gd, rtol=1e-5, atol=0)
    for name, form in (("least_squares", ls), ("one_step_gd", gd)):
        sq = per_prompt[name]
        se = sq.std(0) / math.sqrt(len(sq))
        assert ((sq.mean(0) - form).abs() <= 4 * se + 1e-9).all(), (name, sq.mean(0), form)
    assert per_prompt["least_squares"][:, 5:].max() < 1e-6      # exact once it has d examples (fp32)


def test_a_run_is_a_dsf_train_run(monkeypatch, tmp_path):
    """The sweep's settings are the YAML's: one mixer through dsf-train gives the same validation loss."""
    monkeypatch.setattr("sys.argv", ["dsf-train"])
    s = icl_sweep.settings(mixers=["gla"], steps=3, val_size=64)
    res = icl_sweep.fit_mixer(("gla", s))
    cli = cli_main(["fit", "-c", str(icl_sweep.CONFIG), "--model.model.mixer", "gla", "--trainer.max_steps", "3",
                    "--data.steps_per_epoch", "3", "--data.val_size", "64", "--model.warmup_steps", "0",
                    "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
                    "--trainer.enable_model_summary", "false"])
    err = [float(cli.trainer.callback_metrics[f"val_err/pos_{i:02d}"]) for i in range(s.n_points)]
    assert s.task["warmup_steps"] == 0 and cli.trainer.global_step == 3
    torch.testing.assert_close(torch.tensor(res["curve"]), torch.tensor(err), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("args,message", [
    (["--mixers", "softmax_attention,transformer"], "unknown mixer 'transformer'; choose one of: softmax_attention"),
    (["--d", "0"], "d must be an int >= 1, got 0"),
    (["--d", "-3"], "d must be an int >= 1, got -3"),
    (["--n-points", "0"], "n_points must be an int >= 1, got 0"),
    (["--steps", "0"], "steps must be an int >= 1, got 0"),
    (["--workers", "0"], "workers must be an int >= 1, got 0"),
    (["--scale", "tpu"], "invalid choice: 'tpu'"),
])
def test_bad_arguments_fail_clearly(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        icl_sweep.main([*args, "--out", str(tmp_path)])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "icl_sweep.csv").exists()


def test_settings_errors_name_the_argument():
    with pytest.raises(ValueError, match="unknown mixer 'nope'"):
        icl_sweep.settings(mixers=["nope"])
    with pytest.raises(ValueError, match="n_points must be an int >= 1, got 0"):
        icl_sweep.settings(n_points=0)
    with pytest.raises(ValueError, match="scale must be one of"):
        icl_sweep.settings(scale="huge")
    with pytest.raises(ValueError, match="unknown settings"):
        icl_sweep.settings(layers=3)
    gpu = icl_sweep.settings(scale="gpu")
    assert gpu.steps > icl_sweep.settings().steps and gpu.mixers == tuple(icl_sweep.dsf.zoo.names())


def test_run_jobs_deadline_and_errors():
    def fit(job, at):
        if job == "bad":
            raise RuntimeError("boom")
        return {"job": job, "status": "ok"}
    res = icl_sweep.run_jobs(["a", "bad", "c"], fit)
    assert [r["status"] for r in res] == ["ok", "error: RuntimeError: boom", "ok"]
    late = icl_sweep.run_jobs(["a", "b"], fit, deadline=1e-9)
    assert [r["status"] for r in late] == ["not started (deadline)"] * 2


def test_run_jobs_in_worker_processes():
    """Spawned workers: results come back in job order, a failing job is reported, not raised."""
    res = icl_sweep.run_jobs([4.0, "x", 9.0], math.sqrt, workers=2)
    assert [r["job"] for r in res] == [4.0, "x", 9.0]
    assert all(r["status"].startswith("error: TypeError") for r in res)   # sqrt takes one argument


@pytest.mark.parametrize("argv", [
    [], ["--scale", "gpu", "--accelerator", "gpu"],
    ["--mixers", "gla,s6", "--steps", "9", "--d", "3", "--n-points", "7", "--batch", "16", "--val-size", "64",
     "--noise-std", "0.5", "--precision", "bf16-mixed", "--backend", "reference", "--workers", "2",
     "--threads", "2", "--deadline", "50", "--seed", "3", "--lr", "0.0021", "--d-model", "48"],
    ["--scale", "gpu", "--batch", "32", "--workers", "1", "--deadline", "600.5"]])
def test_the_recorded_command_reruns_the_same_settings(argv, command_reruns):
    command_reruns(icl_sweep, argv)
