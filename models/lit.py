"""LightningModules: the training loop around an injected model.

The model is a constructor argument typed as a base class (``SequenceModel`` / ``TokenModel``), so
a YAML ``class_path`` / ``init_args`` picks the mixer and the sizes. ``TaskModule`` holds the
optimiser (AdamW, optional warmup and cosine decay); the subclasses define loss and metrics.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import icl
from .data import IGNORE_INDEX
from .model import SequenceModel, TokenModel

__all__ = ["TaskModule", "RegressionModule", "MQARModule", "BASELINES"]


def _from_cli() -> bool:
    """True while LightningCLI instantiates us: it hands over the parsed config as hyperparameters."""
    try:  # private, hence guarded: without it we only lose the model config in hparams
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:
        return False
    return _given_hyperparameters.get() is not None


class TaskModule(L.LightningModule):
    """Base: holds ``model`` and the optimiser settings.

    Args:
        model: the network.
        lr: peak learning rate of AdamW.
        weight_decay: AdamW decay, applied to the weights of linear layers and embeddings only (not to
            biases, norms or a mixer's own parameters: an SSM's A, Δ, B, C, D, a gate's Λ, ...).
        betas: AdamW betas.
        warmup_steps: linear warmup from 0.
        cosine: decay to ``min_lr_ratio · lr`` by a cosine over the run's total steps.
        min_lr_ratio: the final lr of the cosine, as a fraction of lr.
    """

    def __init__(self, model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), warmup_steps: int = 0, cosine: bool = False,
                 min_lr_ratio: float = 0.0):
        super().__init__()
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if weight_decay < 0 or warmup_steps < 0 or not 0 <= min_lr_ratio <= 1:
            raise ValueError("need weight_decay >= 0, warmup_steps >= 0 and 0 <= min_lr_ratio <= 1, got "
                             f"{weight_decay!r}, {warmup_steps!r}, {min_lr_ratio!r}")
        # Under the CLI the model's class_path/init_args are saved, so load_from_checkpoint rebuilds
        # it; a model object passed in Python is not a hyperparameter (its weights are in the state).
        self.save_hyperparameters(ignore=[] if _from_cli() else ["model"])
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        # decay the projections' and embeddings' matrices only: a mixer's own parameters (an SSM's A, Δ,
        # B, C, D, RG-LRU's Λ, Aaren's query, a memory's initial weights) are not weights to shrink,
        # whatever their number of dims (a rule by dims decayed S6's A [H, V, N] but not Mamba-2's A_log)
        matrices = {id(m.weight) for m in self.modules() if isinstance(m, (nn.Linear, nn.Embedding))}
        trained = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in trained if id(p) in matrices]
        no_decay = [p for p in trained if id(p) not in matrices]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=hp.lr, betas=tuple(hp.betas))
        if not hp.cosine and hp.warmup_steps == 0:
            return opt
        total = self.trainer.estimated_stepping_batches
        if hp.cosine and not math.isfinite(total):
            raise ValueError("cosine=True needs a finite run: set trainer.max_steps or max_epochs")

        def factor(step: int) -> float:
            if step < hp.warmup_steps:
                return (step + 1) / hp.warmup_steps
            if not hp.cosine:
                return 1.0
            t = min(1.0, (step - hp.warmup_steps) / max(1, total - hp.warmup_steps))
            return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _datamodule(self) -> Any:
        trainer = self._trainer  # None outside a Trainer
        return getattr(trainer, "datamodule", None) if trainer is not None else None

    def setup(self, stage: str) -> None:
        dm = self._datamodule()
        if dm is not None:
            self.check_data(dm)

    def check_data(self, dm: Any) -> None:
        """Raise a ValueError naming the setting if the data module ``dm`` does not fit this task and model
        (``dsf-train`` calls it before training starts, so a mismatch is a usage error)."""
        want = getattr(self, "DATA", None)
        if want is not None and not all(hasattr(dm, a) for a in want[1]):
            raise ValueError(f"{type(self).__name__} trains on {want[0]}, got data {type(dm).__name__}; "
                             f"choose --data {want[0]} (or a config of this task)")

    # validation and test share one implementation: subclasses define _eval_step / _eval_end
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def _gather(self, obj: Any) -> list:
        """``obj`` from every process (a list of one on a single device): under DDP each process
        sees a shard of the validation set, and the epoch's metrics must cover all of them."""
        if self.trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            out: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(out, obj)
            return out
        return [obj]

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")


# name -> fn(x, y, noise_var, w_scale, ridge_lambda) -> ŷ [B, n]
BASELINES = {
    "least_squares": lambda x, y, nv, ws, lam: icl.least_squares(x, y),
    "ridge": lambda x, y, nv, ws, lam: icl.ridge(x, y, lam),
    "knn3": lambda x, y, nv, ws, lam: icl.knn(x, y, k=3),
    "averaging": lambda x, y, nv, ws, lam: icl.averaging(x, y),
    "one_step_gd": lambda x, y, nv, ws, lam: icl.one_step_gd(x, y, noise_var=nv, w_scale=ws),
}


def position_metric(name: str, i: int, n: int) -> str:
    """The logged name of point i's error among n: ``name/pos_i``, i zero-padded to n − 1's digits so
    that loggers sorting names (Lightning's CSV columns, TensorBoard's tags) keep the points in order."""
    return f"{name}/pos_{i:0{len(str(n - 1))}d}"


class RegressionModule(TaskModule):
    """In-context regression: MSE of ŷ_i made at x-token 2i (Garg layout, every i) or of the
    query's ŷ at the last token (stacked layout); see ``RegressionDataModule``.

    Logs ``train_loss``, ``val_loss`` (mean over positions), ``val_err/pos_{i}`` and, computed once on
    the same validation prompts, ``val_err_{baseline}/pos_{i}`` for the baselines in ``BASELINES``
    (i zero-padded to the last point's digits: ``pos_00`` … ``pos_10`` for 11 points, ``position_metric``)
    (ridge at the Bayes λ = σ²/Var(w_k) of the data module). Errors are raw squared errors; divide
    by d for Garg et al.'s normalised plots.

    Args:
        model: continuous-token model with ``d_in = d + 1`` and ``d_out = 1``.
        baselines: log the baselines at validation end.
        **kwargs: optimiser settings (TaskModule).
    """

    def __init__(self, model: SequenceModel, baselines: bool = True, lr: float = 1e-3,
                 weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                 warmup_steps: int = 0, cosine: bool = False, min_lr_ratio: float = 0.0):
        super().__init__(model, lr, weight_decay, betas, warmup_steps, cosine, min_lr_ratio)
        self.baselines = baselines
        self._sum: dict[str, Tensor] = {}
        self._count: dict[str, int] = {}
        self._prompts: dict[str, list[tuple[Tensor, Tensor]]] = {}
        self._baseline_err: dict[str, dict[str, Tensor]] = {}
        self._pos: dict[str, slice] = {}

    DATA = ("RegressionDataModule", ("token_dim", "n_points"))   # (the data it trains on, what it reads of it)

    def check_data(self, dm: Any) -> None:
        super().check_data(dm)
        d_in = getattr(self.model, "d_in", None)
        if d_in is not None and d_in != dm.token_dim:
            raise ValueError(f"model d_in={d_in} does not match the data: tokens have d + 1 = {dm.token_dim} "
                             f"features (d={dm.d}); set model.d_in to {dm.token_dim}")
        max_len = getattr(self.model, "max_len", 0)
        if max_len:
            # checked now, as MQAR's seq_len is: it failed inside the first forward's position table
            tokens = 2 * dm.n_points if dm.layout == "interleaved" else dm.n_points
            if max_len < tokens:
                raise ValueError(f"model max_len={max_len} is shorter than the data's prompts: {tokens} tokens "
                                 f"(n_points={dm.n_points}, layout={dm.layout!r}); set model.max_len >= {tokens}")

    @staticmethod
    def positions(tokens: Tensor, n: int) -> slice:
        """Which of the n points are predicted: all (interleaved, 2n tokens) or the query (stacked)."""
        return slice(0, n) if tokens.shape[1] == 2 * n else slice(n - 1, n)

    def predict_y(self, tokens: Tensor, n: int) -> Tensor:
        """ŷ for the predicted points: the output at x-tokens 2i (interleaved) or the last token."""
        out = self.model(tokens)[..., 0]
        return out[:, 0::2] if tokens.shape[1] == 2 * n else out[:, -1:]

    def _sq_err(self, batch: dict) -> Tensor:
        y, tokens = batch["y"], batch["tokens"]
        return (self.predict_y(tokens, y.shape[1]) - y[:, self.positions(tokens, y.shape[1])]).square()

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss = self._sq_err(batch).mean()
        self.log("train_loss", loss, prog_bar=True, batch_size=batch["y"].shape[0])
        return loss

    def _eval_step(self, batch: dict, stage: str) -> None:
        err = self._sq_err(batch)
        self._pos[stage] = self.positions(batch["tokens"], batch["y"].shape[1])
        self.log(f"{stage}_loss", err.mean(), prog_bar=True, batch_size=err.shape[0], sync_dist=True)
        if self.trainer.sanity_checking:
            return  # a partial set: keep it out of the per-position curves and the baselines
        self._sum[stage] = self._sum.get(stage, 0) + err.detach().sum(0)
        self._count[stage] = self._count.get(stage, 0) + err.shape[0]
        if self.baselines and stage not in self._baseline_err:
            self._prompts.setdefault(stage, []).append((batch["x"].detach().cpu(), batch["y"].detach().cpu()))

    def _eval_end(self, stage: str) -> None:
        if stage not in self._sum:
            return
        pos = self._pos[stage]
        local_sum, n = self._sum.pop(stage).cpu(), self._count.pop(stage)
        base = {}
        if self.baselines:
            if stage not in self._baseline_err and self._prompts.get(stage):
                self._baseline_err[stage] = self._run_baselines(self._prompts.pop(stage))
            base = {k: v[pos].cpu() * n for k, v in self._baseline_err.get(stage, {}).items()}
        # Sums and counts of every process, then the means: exact under DDP's sharded validation.
        parts = self._gather((local_sum, n, base))
        total = sum(p[1] for p in parts)
        curves = {f"{stage}_err": sum(p[0] for p in parts) / total}
        curves.update({f"{stage}_err_{k}": sum(p[2][k] for p in parts) / total for k in base})
        for name, curve in curves.items():
            # (gathered from every process already, so the same on each: sync_dist only quiets Lightning's
            # warning per metric under DDP, its mean of equal values being the value)
            self.log_dict({position_metric(name, i, pos.stop): float(e)
                           for i, e in zip(range(pos.start, pos.stop), curve)}, sync_dist=True)

    def _run_baselines(self, prompts: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        x, y = torch.cat([p[0] for p in prompts]), torch.cat([p[1] for p in prompts])
        dm = self._datamodule()
        noise_std, w_scale = getattr(dm, "noise_std", 0.0), getattr(dm, "w_scale", "identity")
        lam = icl.bayes_ridge_lambda(x.shape[-1], noise_std ** 2, w_scale)
        return {name: (fn(x, y, noise_std ** 2, w_scale, lam) - y).square().mean(0)
                for name, fn in BASELINES.items()}


class MQARModule(TaskModule):
    """Multi-query associative recall: cross-entropy on the query positions (labels != -100).

    Logs ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc`` (exact match over all queries)
    and, when the data mixes several kv counts, ``val_acc/kv_{n}``.

    Args:
        model: token model whose vocab_size is the data's.
        **kwargs: optimiser settings (TaskModule); Zoology uses weight_decay 0.1 and a cosine.
    """

    def __init__(self, model: TokenModel, lr: float = 1e-3, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.999), warmup_steps: int = 0, cosine: bool = True,
                 min_lr_ratio: float = 0.0):
        super().__init__(model, lr, weight_decay, betas, warmup_steps, cosine, min_lr_ratio)
        self._hits: dict[tuple[str, int], list[int]] = {}

    DATA = ("MQARDataModule", ("vocab_size", "seq_len"))

    def check_data(self, dm: Any) -> None:
        super().check_data(dm)
        V, Ld = getattr(self.model, "vocab_size", None), dm.seq_len
        if V is not None and V < dm.vocab_size:
            raise ValueError(f"model vocab_size={V} is smaller than the data's vocab_size={dm.vocab_size}")
        max_len = getattr(self.model, "max_len", 0)
        if max_len and max_len < Ld:
            raise ValueError(f"model max_len={max_len} is shorter than the data's seq_len={Ld}")

    def _scores(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        logits = self.model(batch["inputs"])
        labels = batch["labels"]
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
        mask = labels != IGNORE_INDEX
        correct = (logits.argmax(-1) == labels) & mask
        return loss, correct, mask

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, correct, mask = self._scores(batch)
        n = batch["inputs"].shape[0]
        self.log("train_loss", loss, prog_bar=True, batch_size=n)
        self.log("train_acc", correct.sum() / mask.sum(), batch_size=n)
        return loss

    def _eval_step(self, batch: dict, stage: str) -> None:
        loss, correct, mask = self._scores(batch)
        self.log(f"{stage}_loss", loss, prog_bar=True, batch_size=batch["inputs"].shape[0], sync_dist=True)
        for kv in batch["num_kv_pairs"].unique().tolist():
            rows = batch["num_kv_pairs"] == kv
            hit = self._hits.setdefault((stage, kv), [0, 0])
            hit[0] += int(correct[rows].sum())
            hit[1] += int(mask[rows].sum())

    def _eval_end(self, stage: str) -> None:
        local = {kv: h for (s, kv), h in self._hits.items() if s == stage}
        for kv in local:
            del self._hits[(stage, kv)]
        hits: dict[int, list[int]] = {}
        for part in self._gather(local):              # every process's shard under DDP
            for kv, (c, m) in part.items():
                h = hits.setdefault(kv, [0, 0])
                h[0] += c
                h[1] += m
        if not hits:
            return
        total = [sum(h[0] for h in hits.values()), sum(h[1] for h in hits.values())]
        # (gathered, the same on every process: sync_dist as for the regression curves)
        self.log(f"{stage}_acc", total[0] / max(1, total[1]), prog_bar=True, sync_dist=True)
        if len(hits) > 1:
            self.log_dict({f"{stage}_acc/kv_{kv}": h[0] / max(1, h[1]) for kv, h in sorted(hits.items())},
                          sync_dist=True)
