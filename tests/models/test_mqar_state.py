"""models.experiments.mqar_state: a tiny sweep writes its outputs with the state sizes `dsf zoo` counts,
a run equals dsf-train's, bad input fails clearly; --render re-draws from a CSV."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import pytest

from models.cli import cli_main
from models.experiments import mqar_state

MIXERS = ["softmax_attention", "s6"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("mqar_state")
    sweep = mqar_state.main(["--mixers", ",".join(MIXERS), "--head-dims", "4,8", "--steps", "20",
                             "--val-size", "64", "--batch", "32", "--seq-len", "32", "--num-kv-pairs", "4",
                             "--out", str(out)])
    return sweep, list(csv.DictReader(open(out / "mqar_state.csv"))), out


def test_outputs(tiny):
    sweep, rows, out = tiny
    s = sweep["settings"]
    assert list(rows[0]) == mqar_state.COLUMNS
    assert [(r["mixer"], int(r["head_dim"])) for r in rows] == [(m, g) for m in MIXERS for g in (4, 8)]
    for r in rows:
        assert r["status"] == "ok" and int(r["steps"]) == 20 and int(r["d_model"]) == 64
        assert 0 <= float(r["val_acc"]) <= 1 and math.isfinite(float(r["val_loss"]))
        run = sweep["runs"][(r["mixer"], int(r["head_dim"]))]
        assert math.isclose(float(r["val_acc"]), run["val_acc"], rel_tol=1e-5)
    # softmax: its KV cache after L tokens, L·(K+V); s6: N·V with N = V = g (one head)
    sizes = {(r["mixer"], int(r["head_dim"])): (int(r["state_size"]), r["state_kind"]) for r in rows}
    assert sizes[("softmax_attention", 8)] == (s.seq_len * 16, "KV cache")
    assert sizes[("s6", 4)] == (16, "recurrent") and sizes[("s6", 8)] == (64, "recurrent")
    md = (out / "mqar_state.md").read_text()
    assert "`s6`" in md and "KV cache" in md and "g=8" in md
    assert (out / "mqar_state.png").stat().st_size > 20_000


@pytest.mark.parametrize("mixer,expected", [
    ("linear_attention", lambda g: g * g), ("normalized_attention", lambda g: g * g),
    ("mamba2", lambda g: g * g), ("deltanet", lambda g: g * g), ("gated_deltanet", lambda g: g * g),
    ("s6", lambda g: g * g), ("qlstm", lambda g: g), ("softmax_attention", lambda g: 64 * 2 * g),
])
def test_state_size_is_what_dsf_zoo_counts(mixer, expected):
    for g in (4, 16):
        size, kind = mqar_state.state_size(mixer, g, seq_len=64)
        assert size == expected(g) and kind == ("KV cache" if mixer == "softmax_attention" else "recurrent")
    assert mqar_state.state_size("mamba2", 16, n_heads=2)[0] == 2 * 16 * 16     # heads × K × V
    # the normaliser z = Σ φ(k) is one more value column
    assert mqar_state.state_size("linear_attention", 8, options={"feature_map": "elu1", "normalize": True})[0] == 72
    with pytest.raises(ValueError, match="seq_len"):
        mqar_state.state_size("softmax_attention", 8)


def test_a_run_is_a_dsf_train_run(monkeypatch, tmp_path):
    monkeypatch.setattr("sys.argv", ["dsf-train"])
    s = mqar_state.settings(mixers=["mamba2"], head_dims=[8], steps=3, val_size=32)
    res = mqar_state.fit_one(("mamba2", 8, s))
    cli = cli_main(["fit", "-c", str(mqar_state.CONFIG), "--model.model.mixer", "mamba2",
                    "--model.model.head_dim", "8", "--model.model.state_dim", "8", "--trainer.max_steps", "3",
                    "--data.steps_per_epoch", "3", "--data.val_size", "32", "--model.warmup_steps", "0",
                    "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
                    "--trainer.enable_model_summary", "false"])
    assert s.task["warmup_steps"] == 0 and cli.trainer.global_step == 3
    assert math.isclose(res["val_loss"], float(cli.trainer.callback_metrics["val_loss"]), rel_tol=1e-5)
    assert math.isclose(res["val_acc"], float(cli.trainer.callback_metrics["val_acc"]), rel_tol=1e-6)


@pytest.mark.parametrize("args,message", [
    (["--mixers", "mamba2,transformer"], "unknown mixer 'transformer'; choose one of: softmax_attention"),
    (["--head-dims", "8,0"], "head_dims entries must be an int >= 1, got 0"),
    (["--head-dims", "8,x"], "expected comma-separated ints"),
    (["--num-kv-pairs", "0"], "num_kv_pairs must be an int >= 1, got 0"),
    (["--num-kv-pairs", "40"], "num_kv_pairs=40 needs that many unique keys"),
    (["--seq-len", "12"], "needs seq_len >= 4 * num_kv_pairs = 16"),
    (["--steps", "-1"], "steps must be an int >= 1, got -1"),
])
def test_bad_arguments_fail_clearly(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        mqar_state.main([*args, "--out", str(tmp_path)])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "mqar_state.csv").exists()


def test_presets():
    cpu, gpu = mqar_state.settings(), mqar_state.settings(scale="gpu")
    assert cpu.mixers == gpu.mixers == mqar_state.MIXERS
    assert max(gpu.head_dims) > max(cpu.head_dims) and gpu.steps > cpu.steps and gpu.batch > cpu.batch
    with pytest.raises(ValueError, match="unknown settings"):
        mqar_state.settings(n_points=3)


# --render: the figure and table again from a CSV, no training
TINY_FLAGS = ["--steps", "20", "--val-size", "64", "--batch", "32", "--seq-len", "32", "--num-kv-pairs", "4"]
GPU = Path(__file__).resolve().parents[2] / "models" / "results" / "mqar_state" / "gpu" / "mqar_state.csv"


def _without_wall_time(md: str) -> str:
    return re.sub(r"\nWall time of the sweep: \d+ s\.\n$", "", md)


def test_render_redraws_from_the_csv(tiny, tmp_path, capsys):
    sweep, _, out = tiny
    again = mqar_state.main(["--render", str(out / "mqar_state.csv"), *TINY_FLAGS, "--out", str(tmp_path)])
    printed = capsys.readouterr().out.split("\nrendered ")[0]
    assert printed == _without_wall_time((out / "mqar_state.md").read_text())
    assert (tmp_path / "mqar_state.png").stat().st_size > 20_000 and not (tmp_path / "mqar_state.csv").exists()
    assert again["settings"].mixers == tuple(MIXERS) and again["settings"].head_dims == (4, 8)
    for key, run in sweep["runs"].items():
        assert math.isclose(again["runs"][key]["val_acc"], run["val_acc"], rel_tol=1e-5)
        assert again["runs"][key]["state_size"] == run["state_size"]


def test_render_finds_the_scale_of_the_committed_gpu_csv(tmp_path, capsys):
    sweep = mqar_state.main(["--render", str(GPU), "--accelerator", "gpu", "--out", str(tmp_path)])
    assert sweep["settings"].scale == "gpu" and len(sweep["runs"]) == 32
    printed = capsys.readouterr().out.split("\nrendered ")[0]
    assert printed == _without_wall_time((GPU.parent / "mqar_state.md").read_text())
    assert (tmp_path / "mqar_state.png").stat().st_size > 20_000


@pytest.mark.parametrize("args,message", [
    ([], "written with d_model [64], steps [20]; these settings give d_model 64, steps 1500"),
    (["--scale", "cpu"], "these settings give d_model 64, steps 1200 (pass the run's --scale"),
    ([*TINY_FLAGS, "--seq-len", "64"], "gives softmax_attention at head_dim 4 a state of 256 (KV cache); "
                                       "these settings give 512 (KV cache)"),
    ([*TINY_FLAGS, "--d-model", "32"], "written with d_model [64], steps [20]; these settings give d_model 32"),
])
def test_render_refuses_settings_the_csv_was_not_written_with(tiny, args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        mqar_state.main(["--render", str(tiny[2] / "mqar_state.csv"), *args, "--out", str(tmp_path)])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "mqar_state.png").exists()


def test_render_bad_files(tmp_path, capsys):
    for path, message in [(tmp_path / "none.csv", "no such file"), (tmp_path / "other.csv", "missing columns"),
                          (tmp_path / "empty.csv", "(no rows)")]:
        if path.name == "other.csv":
            path.write_text("mixer,head_dim,val_acc\nmamba2,8,0.5\n")
        elif path.name == "empty.csv":
            path.write_text(",".join(mqar_state.COLUMNS) + "\n")
        with pytest.raises(SystemExit):
            mqar_state.main(["--render", str(path), "--out", str(tmp_path)])
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    [], ["--scale", "gpu", "--accelerator", "gpu", "--mixers", "titans,moneta", "--head-dims", "8,16"],
    ["--head-dims", "4", "--steps", "9", "--vocab-size", "40", "--seq-len", "30", "--num-kv-pairs", "3",
     "--batch", "16", "--val-size", "64", "--precision", "bf16-mixed", "--backend", "reference",
     "--workers", "2", "--threads", "2", "--deadline", "50", "--seed", "3", "--lr", "0.0021", "--d-model", "48"]])
def test_the_recorded_command_reruns_the_same_settings(argv, command_reruns):
    command_reruns(mqar_state, argv)
