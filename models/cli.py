"""``dsf-train``: LightningCLI over the task modules and data modules.

    dsf-train fit -c models/configs/icl/linear_regression.yaml --trainer.max_steps 20
    dsf-train fit -c models/configs/mqar/mqar.yaml --model.model.mixer gla
    dsf-train validate -c models/configs/icl/lsa.yaml --ckpt_path results/.../last.ckpt
    dsf-train fit -c models/configs/icl/lsa.yaml --print_config

Model and data are chosen by ``class_path`` in the YAML (subclass mode). By default a CSVLogger
writes under ``trainer.default_root_dir`` (``--tensorboard true`` adds TensorBoard when it is
installed; an explicit ``--trainer.logger`` wins), and a ModelCheckpoint (``--checkpoint.*``) keeps
the best ``val_loss`` and the last step. ``seed_everything`` is read from the YAML.
"""

from __future__ import annotations

import importlib.util
import sys

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

import dsf
from dsf.cli import import_modules

from . import data as _data  # noqa: F401  (registers the data modules for short class names)
from .lit import TaskModule

__all__ = ["BestAndLastCheckpoint", "DSFTrainCLI", "cli_main", "main"]

DEFAULT_ROOT = "results/dsf_train"


class BestAndLastCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose ``last.ckpt`` is the last validated step whatever the monitor did: Lightning
    2.6 rewrites it only in a step that also saved a best, so once ``val_loss`` stopped improving
    "last" was a copy of the best and resuming from it went back to that step."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def _save_last_if_missed(self, trainer: L.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer) \
                and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class DSFTrainCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # no `predict`: the task modules score prompts against targets, they have no predict step
        return {k: v for k, v in LightningCLI.subcommands().items() if k != "predict"}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(BestAndLastCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.monitor": "val_loss", "checkpoint.mode": "min",
                             "checkpoint.save_last": True, "checkpoint.save_top_k": 1})
        parser.add_argument("--tensorboard", type=bool, default=False,
                            help="Also log to TensorBoard (needs the tensorboard package).")

    def _usage_error(self, message: str) -> None:
        """A usage error as argparse words it, without the usage: for a subcommand with Lightning's
        options that is some sixty lines, and the one that matters came last."""
        print(f"dsf-train {self.subcommand}: error: {message}\n(dsf-train {self.subcommand} --help lists the "
              "options)", file=sys.stderr)
        sys.exit(2)

    def before_instantiate_classes(self) -> None:
        # Check every `mixer` value now, so a typo fails before anything is built, listing the zoo.
        config = self.config.get(str(self.subcommand), self.config)
        for key, value in config.items():
            if key.rsplit(".", 1)[-1] == "mixer" and isinstance(value, str) and value not in dsf.zoo.names():
                hint = ""
                if "(" in value:   # a variant as `dsf zoo` lists it, e.g. titans(memory='linear')
                    hint = (f"; a mixer's options go in {key}_options as JSON, e.g. --model.model.mixer titans "
                            """--model.model.mixer_options '{"memory": "linear"}'""")
                else:
                    hint = (f"; a mixer of your own module: dsf-train --import MODULE {self.subcommand} ... "
                            "registers it first")
                self._usage_error(
                    f"{key}: unknown mixer {value!r}; choose one of: {', '.join(dsf.zoo.names())}{hint}")
        if self._get(self.config, "tensorboard") and importlib.util.find_spec("tensorboard") is None \
                and importlib.util.find_spec("tensorboardX") is None:
            self._usage_error("--tensorboard true needs `pip install tensorboard`")

    def instantiate_classes(self) -> None:
        # A constructor's ValueError (d <= 0, kv pairs that do not fit, ...) is a config error: report
        # its own message as a usage error instead of jsonargparse's Union-of-subtypes traceback
        # (JSONARGPARSE_DEBUG=true raises it instead).
        try:
            super().instantiate_classes()
        except ValueError as err:
            root = err
            while isinstance(root.__cause__, (ValueError, TypeError)):
                root = root.__cause__
            self._usage_error(str(root))
        # what only the built objects together can tell (a model too small for the data, a task given the
        # other task's data, a cosine over an endless run) is a usage error too, before the Trainer starts:
        # inside fit they were tracebacks (or, for the pairing, a KeyError from the first batch)
        try:
            if hasattr(self.model, "check_data") and self.datamodule is not None:
                self.model.check_data(self.datamodule)
            hp = getattr(self.model, "hparams", {})
            if self.subcommand == "fit" and hp.get("cosine") and self.trainer.max_steps == -1 \
                    and self.trainer.max_epochs == -1:
                raise ValueError("model.cosine=true needs a finite run: set trainer.max_steps or trainer.max_epochs")
        except ValueError as err:
            self._usage_error(str(err))

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        if "logger" not in kwargs and trainer_cfg.get("logger") in (None, True):
            root = trainer_cfg.get("default_root_dir") or DEFAULT_ROOT
            csv = CSVLogger(root, name="lightning_logs")
            loggers = [csv]
            if self._get(self.config_init, "tensorboard"):
                loggers.append(TensorBoardLogger(root, name="lightning_logs", version=csv.version))
            kwargs["logger"] = loggers
        return super().instantiate_trainer(**kwargs)


def _imports(args: list[str]) -> list[str]:
    """Import the modules named by ``--import MODULE`` (``dsf.cli.import_modules``, as ``dsf --import``);
    the rest of ``args`` for LightningCLI."""
    rest, modules, i = [], [], 0
    while i < len(args):
        if args[i] == "--import":
            if i + 1 == len(args):
                raise SystemExit("dsf-train: --import needs a module name")
            modules.append(args[i + 1])
            i += 2
        elif args[i].startswith("--import="):
            modules.append(args[i].split("=", 1)[1])
            i += 1
        else:
            rest.append(args[i])
            i += 1
    try:
        import_modules(modules)
    except ImportError as e:
        raise SystemExit(f"dsf-train: {e}") from None
    return rest


def cli_main(args: list[str] | None = None, **kwargs) -> DSFTrainCLI:
    """Build and run the CLI (``args`` as on the command line; None reads sys.argv). ``--import
    MODULE`` (repeatable) imports a module first, e.g. one that registers your own mixers."""
    if args is not None:
        args = _imports(list(args))
    elif any(a == "--import" or a.startswith("--import=") for a in sys.argv[1:]):
        sys.argv[1:] = _imports(sys.argv[1:])   # (LightningCLI reads sys.argv itself: args and argv both warn)
    # --import is read above, before LightningCLI parses: its help says so here
    kwargs.setdefault("parser_kwargs", {"epilog": "--import MODULE (repeatable, anywhere on the line) imports "
                                        "a module first, e.g. one that registers your own mixers."})
    return DSFTrainCLI(
        TaskModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
        trainer_defaults={"default_root_dir": DEFAULT_ROOT}, save_config_kwargs={"overwrite": True},
        # the task modules' own optimiser (weight decay on matrices only, warmup, cosine): LightningCLI's
        # --optimizer / --lr_scheduler would replace it whole, with only a warning
        auto_configure_optimizers=False, args=args, **kwargs)


def main(args: list[str] | None = None) -> None:
    """Console entry point ``dsf-train``."""
    cli_main(args)


if __name__ == "__main__":
    main()
