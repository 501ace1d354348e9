"""dsf-train: every YAML runs, overrides and --print_config work, bad input fails clearly."""

from pathlib import Path

import pytest
import torch
import yaml

import dsf
from models.cli import cli_main
from models.lit import RegressionModule

CONFIGS = sorted((Path(__file__).parents[2] / "models" / "configs").rglob("*.yaml"))
LR = str(CONFIGS[0].parent / "linear_regression.yaml") if CONFIGS else ""
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    """LightningCLI warns when pytest's own argv sits beside args=[...]."""
    monkeypatch.setattr("sys.argv", ["dsf-train"])


def _run(tmp_path, *args):
    return cli_main([*args, "--trainer.default_root_dir", str(tmp_path), *QUIET])


def test_configs_exist():
    names = {f"{p.parent.name}/{p.name}" for p in CONFIGS}
    assert {"icl/linear_regression.yaml", "icl/lsa.yaml", "icl/softmax_heads.yaml", "mqar/mqar.yaml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_config_fits(config, tmp_path):
    cli = _run(tmp_path, "fit", "-c", str(config), "--trainer.fast_dev_run", "true")
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    assert torch.isfinite(cli.trainer.callback_metrics["train_loss"])


@pytest.mark.parametrize("mixer", dsf.zoo.names())
def test_every_mixer_fits_through_the_cli(mixer, tmp_path):
    cli = _run(tmp_path, "fit", "-c", LR, "--trainer.fast_dev_run", "true", "--model.model.mixer", mixer,
               "--model.model.d_model", "16", "--model.model.state_dim", "4", "--data.batch_size", "8")
    assert cli.model.model.mixer == mixer and cli.trainer.state.finished


def test_overrides_and_outputs(tmp_path, monkeypatch):
    """Dotted overrides reach model and data; CSV metrics, the config and checkpoints land in the root
    dir; the checkpoint reloads with its model config."""
    monkeypatch.chdir(tmp_path)
    cli = _run(tmp_path, "fit", "-c", LR, "--trainer.max_steps", "4", "--data.steps_per_epoch", "2",
               "--data.val_size", "16", "--trainer.log_every_n_steps", "1", "--model.model.mixer", "mamba2",
               "--model.model.n_layers", "1", "--model.lr", "0.01", "--seed_everything", "3")
    assert cli.trainer.global_step == 4 and cli.model.hparams.lr == 0.01
    assert cli.model.model.mixer == "mamba2" and len(cli.model.model.blocks) == 1
    log_dir = Path(cli.trainer.log_dir)
    assert log_dir.is_relative_to(tmp_path)
    header = (log_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train_loss", "val_loss", "val_err/pos_10", "val_err_least_squares/pos_10"} <= set(header)
    # the points' columns in their order (11 points: pos_00 … pos_10; unpadded, a sort put pos_10 third)
    points = [h for h in header if h.startswith("val_err/pos_")]
    assert points == [f"val_err/pos_{i:02d}" for i in range(11)]
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert saved["model"]["init_args"]["model"]["init_args"]["mixer"] == "mamba2"
    assert saved["seed_everything"] == 3
    last = log_dir / "checkpoints" / "last.ckpt"
    restored = RegressionModule.load_from_checkpoint(last)
    assert restored.model.mixer == "mamba2"
    p = dict(cli.model.named_parameters())
    assert all(torch.equal(v.cpu(), p[k].detach().cpu()) for k, v in restored.named_parameters())


def test_validate_and_test_subcommands(tmp_path):
    for sub in ("validate", "test"):
        cli = _run(tmp_path, sub, "-c", LR, "--data.val_size", "16", "--data.test_size", "16")
        assert f"{sub if sub == 'test' else 'val'}_loss" in cli.trainer.callback_metrics


def test_print_config(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["fit", "-c", LR, "--model.model.mixer", "gla", "--print_config"])
    assert e.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["init_args"]["model"]["init_args"]["mixer"] == "gla"
    assert cfg["data"]["init_args"]["d"] == 5 and cfg["seed_everything"] == 0


@pytest.mark.parametrize("args,message", [
    (["--model.model.mixer", "transformer"], "unknown mixer 'transformer'; choose one of: softmax_attention"),
    (["--data.d", "0"], "d must be an int >= 1, got 0"),
    (["--data.n_points", "0"], "n_points must be an int >= 1, got 0"),
    (["--data.nonsense", "1"], "'nonsense' is not accepted"),
    (["--trainer.nonsense", "1"], "unrecognized arguments: --trainer.nonsense"),
    (["--model.model.d_in", "4"], "d_in=4 does not match"),
    (["--data", "MQARDataModule"], "RegressionModule trains on RegressionDataModule, got data MQARDataModule"),
    (["--model.model.max_len", "3"], "model max_len=3 is shorter than the data's prompts"),
    (["--model.init_args.cosine", "true", "--trainer.fast_dev_run", "false", "--trainer.max_steps", "-1",
      "--trainer.max_epochs", "-1"], "model.cosine=true needs a finite run"),
    (["--optimizer", "Adam"], "unrecognized arguments: --optimizer"),
])
def test_errors_are_clear(args, message, tmp_path, capsys):
    # (model and data that do not fit together were ValueError tracebacks from inside fit, or a KeyError
    # from the first batch for the other task's data: usage errors now, before the Trainer starts)
    with pytest.raises(SystemExit):
        _run(tmp_path, "fit", "-c", LR, "--trainer.fast_dev_run", "true", *args)
    assert message in capsys.readouterr().err


def test_a_usage_error_is_its_message_without_the_usage(tmp_path, capsys):
    """Lightning's usage of a subcommand is some sixty lines, which buried the error; a mixer name the
    zoo does not have also points at --import."""
    with pytest.raises(SystemExit) as e:
        _run(tmp_path, "fit", "-c", LR, "--trainer.fast_dev_run", "true", "--model.model.mixer", "mamba")
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 2, err
    assert err[0].startswith("dsf-train fit: error: ") and "dsf-train --import MODULE" in err[0]


def test_mqar_checks_its_data_before_training(tmp_path, capsys):
    mqar = str(CONFIGS[0].parents[1] / "mqar" / "mqar.yaml")
    for args, message in [(["--model.model.vocab_size", "10"], "model vocab_size=10 is smaller than the data's"),
                          (["--data", "RegressionDataModule"], "MQARModule trains on MQARDataModule, got data "
                                                               "RegressionDataModule")]:
        with pytest.raises(SystemExit):
            _run(tmp_path, "fit", "-c", mqar, "--trainer.fast_dev_run", "true", *args)
        assert message in capsys.readouterr().err


def test_last_ckpt_is_the_last_validated_step(tmp_path):
    """Once the monitored value stops improving (here the step, monitored for its minimum: the first
    validation stays best), last.ckpt stayed the best's copy (step 2 of 6) under Lightning 2.6, and
    resuming from it went back four steps."""
    cli = _run(tmp_path, "fit", "-c", LR, "--trainer.max_steps", "6", "--data.steps_per_epoch", "2",
               "--data.val_size", "16", "--model.model.n_layers", "1", "--checkpoint.monitor", "step",
               "--checkpoint.mode", "min")
    ckpts = Path(cli.trainer.log_dir) / "checkpoints"
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 6
    best = [p for p in ckpts.glob("*.ckpt") if p.name != "last.ckpt"]
    assert len(best) == 1 and torch.load(best[0], weights_only=False)["global_step"] == 2


def test_an_unknown_mixer_option_is_a_usage_error(capsys):
    """Its TypeError came out as jsonargparse's dump of the Union subtypes and the whole namespace."""
    with pytest.raises(SystemExit):
        cli_main(["fit", "-c", LR, "--model.model.mixer", "gla", "--model.model.mixer_options", '{"foo": 1}'])
    assert "gla: unknown option(s) ['foo']; options are ['scale']" in capsys.readouterr().err


def test_a_zoo_variant_name_points_to_mixer_options(capsys):
    """`dsf zoo` lists titans(memory='linear'); as a mixer name it was refused with the names only."""
    with pytest.raises(SystemExit):
        cli_main(["fit", "-c", LR, "--model.model.mixer", "titans(memory='linear')"])
    assert """--model.model.mixer_options '{"memory": "linear"}'""" in capsys.readouterr().err


def test_import_brings_your_own_mixer(readme_mixers):
    """README's "A new mixer" module, imported by `dsf-train --import`, trains as any zoo mixer."""
    tmp_path = readme_mixers
    cli = _run(tmp_path, "--import", "my_mixers", "fit", "-c", LR, "--trainer.fast_dev_run", "true",
               "--model.model.mixer", "mamba2_floor", "--model.model.d_model", "16")
    assert cli.model.model.mixer == "mamba2_floor" and cli.trainer.state.finished


def test_help_names_the_import_option(capsys):
    """--import is read before LightningCLI parses, so its parser did not list it: the help says it."""
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    assert "--import MODULE (repeatable" in capsys.readouterr().out


def test_predict_is_not_offered(capsys):
    """LightningCLI offered `predict`, which failed: the task modules have no predict step."""
    with pytest.raises(SystemExit):
        cli_main(["predict", "-c", LR])
    assert "invalid choice: 'predict'" in capsys.readouterr().err
