"""DataModules for the synthetic tasks: fresh training data every step, fixed validation/test sets.

Training batches come from one seeded ``torch.Generator`` that lives for the whole run, so each
step sees new prompts and a rerun with the same seed sees the same ones. Under DDP every process
draws from a stream of its own (the first process's is the single-process stream) and
``steps_per_epoch`` batches an epoch; a checkpoint keeps each stream's place, so a run resumed from
it draws what the uninterrupted run would have. Validation and test sets are drawn once from their
own fixed seeds, so every epoch (and every model) is scored on the same prompts.

* ``RegressionDataModule``: in-context linear regression (Garg et al. 2022), Garg-interleaved tokens.
* ``MQARDataModule``: multi-query associative recall, following Zoology's generator
  (``zoology/data/multiquery_ar.py``, Arora et al. 2024).
"""

from __future__ import annotations

import math
from typing import Literal
import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from . import icl

__all__ = ["RegressionDataModule", "MQARDataModule", "mqar_batch", "check_mqar", "IGNORE_INDEX", "LAYOUTS"]

IGNORE_INDEX = -100
LAYOUTS = ("interleaved", "stacked")


def _stream_seed(seed: int, stream: int) -> int:
    """Separate, reproducible seeds for the train / val / test streams of one data seed."""
    return (seed * 1_000_003 + stream) % (2 ** 63)


def _positive_int(owner: str, **kw) -> None:
    for name, val in kw.items():
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"{owner}: {name} must be an int >= 1, got {val!r}")


class _Fresh(Dataset):
    """``steps`` batches per epoch and process from ``sample(generator)``; the generator carries over
    epochs.

    Map-style so Lightning knows the epoch length; the index is ignored (batches are i.i.d.). Under
    DDP (``world`` processes) the distributed sampler leaves each process ``steps`` of the
    ``steps · world`` indices, so an epoch is ``steps`` optimiser steps however many processes.
    """

    def __init__(self, sample, steps: int, seed: int, world: int = 1):
        self.sample, self.steps, self.world = sample, steps, world
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.steps * self.world

    def __getitem__(self, i: int) -> dict:
        return self.sample(self.gen)

    def state(self) -> dict:
        return {"generator": self.gen.get_state()}

    def restore(self, state: dict) -> None:
        self.gen.set_state(state["generator"])


class _Shuffled(Dataset):
    """A fixed training set as a stream of batches: each pass over it in a fresh random order, the
    order's generator and the place in it carried over epochs and saved in checkpoints, as _Fresh's
    generator is (a DataLoader's shuffle drew its order again from the start on a resume).

    Map-style with the index ignored, as _Fresh: an epoch is one pass (the last batch the remainder),
    each process of a DDP run drawing its own order.
    """

    def __init__(self, data: dict[str, Tensor], batch_size: int, seed: int, world: int = 1):
        self.data, self.batch_size, self.world = data, batch_size, world
        self.n = len(next(iter(data.values())))
        self.gen = torch.Generator().manual_seed(seed)
        self.order, self.pos = torch.empty(0, dtype=torch.int64), 0

    def __len__(self) -> int:
        return -(-self.n // self.batch_size) * self.world

    def __getitem__(self, i: int) -> dict:
        if self.pos >= len(self.order):   # a pass done (or none begun): the next one's order
            self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
        rows = self.order[self.pos:self.pos + self.batch_size]
        self.pos += len(rows)
        return {k: v[rows] for k, v in self.data.items()}

    def state(self) -> dict:
        return {"generator": self.gen.get_state(), "order": self.order.clone(), "pos": self.pos}

    def restore(self, state: dict) -> None:
        self.gen.set_state(state["generator"])
        self.order, self.pos = state["order"], state["pos"]


class _Batches(Dataset):
    """A fixed list of ready-made batches (validation and test sets)."""

    def __init__(self, batches: list[dict]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        return self.batches[i]


def _fixed(sample, size: int, batch_size: int, seed: int) -> _Batches:
    gen = torch.Generator().manual_seed(seed)
    sizes = [min(batch_size, size - s) for s in range(0, size, batch_size)]
    return _Batches([sample(gen, n) for n in sizes])


def _loader(ds) -> DataLoader:
    return DataLoader(ds, batch_size=None)  # the datasets yield whole batches


class _Shard(DistributedSampler):
    """A process's share of an evaluation set under DDP, every batch in exactly one share: Lightning's
    own DistributedSampler pads the shares to equal length by repeating batches, which the gathered
    sums then counted twice (2 processes and 5 batches: val_err/pos_10 3.090 against 3.287)."""

    def __init__(self, dataset: Dataset, rank: int, world: int):
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=False)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))


class _Streams:
    """What the two data modules share about their training stream: one per process, and its place
    saved in checkpoints (LightningDataModule's ``state_dict`` / ``load_state_dict``)."""

    def _process(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _fresh(self, sample) -> _Fresh:
        rank, world = self._process()
        # process 0 keeps the single-process stream; the others take streams of their own
        seed = _stream_seed(self.seed, 0 if rank == 0 else 1000 + rank)
        return self._resumed(_Fresh(sample, self.steps_per_epoch, seed, world))

    def _shuffled(self, data: dict[str, Tensor]) -> _Shuffled:
        rank, world = self._process()
        seed = _stream_seed(self.seed, 3 if rank == 0 else 3000 + rank)
        return self._resumed(_Shuffled(data, self.batch_size, seed, world))

    def _resumed(self, stream):
        if getattr(self, "_resume", None) is not None:   # a checkpoint loaded before setup
            self._restore(stream, self._resume)
        return stream

    def _eval_loader(self, ds: Dataset) -> DataLoader:
        rank, world = self._process()
        if world > 1 and len(ds) >= world:   # (fewer batches than processes: Lightning's padded shares)
            return DataLoader(ds, batch_size=None, sampler=_Shard(ds, rank, world))
        return _loader(ds)

    def state_dict(self) -> dict:
        """Every process's training stream: its generator state, a fixed set's order and place in it, and
        MQAR's place in its kv counts."""
        if not isinstance(getattr(self, "_train", None), (_Fresh, _Shuffled)):
            return {}
        mine = {**self._train.state(), "step": getattr(self, "_step", 0)}
        every = [mine]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            every = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(every, mine)
        return {"train_streams": every}

    def load_state_dict(self, state: dict) -> None:
        if not state.get("train_streams"):
            return
        if isinstance(getattr(self, "_train", None), (_Fresh, _Shuffled)):
            self._restore(self._train, state)
        else:
            self._resume = state

    def _restore(self, stream: _Fresh | _Shuffled, state: dict) -> None:
        rank, _ = self._process()
        streams = state["train_streams"]
        if rank < len(streams):   # (a process the saved run did not have keeps its fresh stream)
            stream.restore(streams[rank])
            if hasattr(self, "_step"):
                self._step = streams[rank]["step"]


# -- in-context linear regression ---------------------------------------------------------------------
class RegressionDataModule(_Streams, L.LightningDataModule):
    """Prompts of ``n_points`` (x, y) pairs as tokens.

    A batch is ``{"tokens": ..., "x": [B, n, d], "y": [B, n], "w": [B, d]}`` with tokens either

    * ``layout="interleaved"`` (Garg et al.): ``[B, 2n, d+1]``, x-token [x; 0] then y-token [0; y];
      the model predicts y_i at x-token 2i, for every i;
    * ``layout="stacked"`` (the linear-attention ICL papers): ``[B, n, d+1]`` = [x_i; y_i] with the last
      y set to 0; the model predicts only the query's y at the last token. One layer of attention
      needs this layout to pair x_j with y_j.

    Args:
        d: input dimension.
        n_points: (x, y) pairs per prompt (with ``stacked``, the last one is the query).
        layout: "interleaved" or "stacked".
        noise_std: σ of the label noise.
        w_scale: "identity" (w ~ N(0, I)) or "1/d" (w ~ N(0, I/d)).
        batch_size: prompts per batch.
        val_size, test_size: prompts in the fixed validation / test sets.
        seed: seeds the training stream and (separately) the validation and test sets.
        steps_per_epoch: training batches per epoch (validation runs after each epoch).
    """

    def __init__(self, d: int = 5, n_points: int = 20,
                 layout: Literal["interleaved", "stacked"] = "interleaved", noise_std: float = 0.0,
                 w_scale: str = "identity", batch_size: int = 64, val_size: int = 1280,
                 test_size: int = 1280, seed: int = 0, steps_per_epoch: int = 100):
        super().__init__()
        if isinstance(d, bool) or not isinstance(d, int) or d <= 0:
            raise ValueError(f"RegressionDataModule: d must be an int >= 1, got {d!r}")
        if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 1:
            raise ValueError(f"RegressionDataModule: n_points must be an int >= 1, got {n_points!r}")
        _positive_int("RegressionDataModule", batch_size=batch_size, val_size=val_size,
                      test_size=test_size, steps_per_epoch=steps_per_epoch)
        if not (noise_std >= 0 and math.isfinite(noise_std)):
            raise ValueError(f"RegressionDataModule: noise_std must be finite and >= 0, got {noise_std!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"RegressionDataModule: layout must be one of {LAYOUTS}, got {layout!r}")
        if layout == "stacked" and n_points < 2:
            raise ValueError("RegressionDataModule: layout='stacked' needs n_points >= 2 "
                             "(examples and a query)")
        if w_scale not in icl.W_SCALES:
            raise ValueError(f"RegressionDataModule: w_scale must be one of {icl.W_SCALES}, got {w_scale!r}")
        self.save_hyperparameters()
        self.d, self.n_points, self.layout = d, n_points, layout
        self.noise_std, self.w_scale = float(noise_std), w_scale
        self.batch_size, self.val_size, self.test_size = batch_size, val_size, test_size
        self.seed, self.steps_per_epoch = seed, steps_per_epoch
        self._train = self._val = self._test = None

    @property
    def token_dim(self) -> int:
        """d + 1: the model's d_in."""
        return self.d + 1

    @property
    def ridge_lambda(self) -> float:
        """Bayes-optimal ridge λ = σ² / Var(w_k)."""
        return icl.bayes_ridge_lambda(self.d, self.noise_std ** 2, self.w_scale)

    def sample(self, gen: torch.Generator, batch: int | None = None) -> dict[str, Tensor]:
        x, y, w = icl.sample_regression(batch or self.batch_size, self.n_points, self.d,
                                        noise_std=self.noise_std, w_scale=self.w_scale, generator=gen)
        tokens = icl.interleave(x, y) if self.layout == "interleaved" else icl.stack_tokens(x, y)
        return {"tokens": tokens, "x": x, "y": y, "w": w}

    def setup(self, stage: str | None = None) -> None:
        if self._train is None:
            self._train = self._fresh(self.sample)
            self._val = _fixed(self.sample, self.val_size, self.batch_size, _stream_seed(self.seed, 1))
            self._test = _fixed(self.sample, self.test_size, self.batch_size, _stream_seed(self.seed, 2))

    def train_dataloader(self) -> DataLoader:
        return _loader(self._train)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self._val)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self._test)


# -- multi-query associative recall -------------------------------------------------------------------
def check_mqar(vocab_size: int, seq_len: int, num_kv_pairs: int) -> None:
    """Raise a ValueError unless num_kv_pairs fits the vocab (unique keys and values) and sequence."""
    _positive_int("MQAR", vocab_size=vocab_size, seq_len=seq_len, num_kv_pairs=num_kv_pairs)
    n_keys, n_values = vocab_size // 2 - 1, vocab_size - vocab_size // 2
    if num_kv_pairs > min(n_keys, n_values):
        raise ValueError(f"MQAR: num_kv_pairs={num_kv_pairs} needs that many unique keys in "
                         f"[1, {vocab_size // 2}) and values in [{vocab_size // 2}, {vocab_size}); "
                         f"vocab_size={vocab_size} "
                         f"allows at most {min(n_keys, n_values)}")
    if seq_len < 4 * num_kv_pairs:
        raise ValueError(f"MQAR: num_kv_pairs={num_kv_pairs} needs seq_len >= 4 * num_kv_pairs = "
                         f"{4 * num_kv_pairs} (2 tokens per pair, then room for each query), got {seq_len}")


def mqar_batch(batch: int, vocab_size: int, seq_len: int, num_kv_pairs: int, *, power_a: float = 0.01,
               random_non_queries: bool = True, generator: torch.Generator | None = None
               ) -> tuple[Tensor, Tensor]:
    """Zoology's MQAR: ``(inputs [B, L], labels [B, L])`` of int64.

    The sequence opens with num_kv_pairs pairs ``k v`` (keys from [1, V/2), values from [V/2, V),
    unique within a sequence). Each key is queried once later, at slot ``2·kv + 2·gap`` with gaps
    drawn without replacement from p(gap) ∝ gap^(a−1) (a = power_a: mostly short gaps). The label at
    a query's position is its value; every other label is -100. Filler tokens are 0, or uniform random
    tokens when random_non_queries (Zoology's default).
    """
    check_mqar(vocab_size, seq_len, num_kv_pairs)
    if not power_a > 0:
        raise ValueError(f"MQAR: power_a must be > 0, got {power_a!r}")
    g, half, kv = generator, vocab_size // 2, num_kv_pairs
    keys = torch.rand(batch, half - 1, generator=g).argsort(dim=1)[:, :kv] + 1
    values = torch.rand(batch, vocab_size - half, generator=g).argsort(dim=1)[:, :kv] + half
    space = (seq_len - 2 * kv) // 2
    p = power_a * torch.arange(1, space + 1, dtype=torch.float64) ** (power_a - 1)
    gaps = torch.multinomial((p / p.sum()).expand(batch, space), kv, replacement=False, generator=g)
    inputs = torch.zeros(batch, seq_len, dtype=torch.long)
    inputs[:, 0:2 * kv:2], inputs[:, 1:2 * kv:2] = keys, values
    queries = 2 * kv + 2 * gaps
    inputs.scatter_(1, queries, keys)
    labels = torch.full((batch, seq_len), IGNORE_INDEX, dtype=torch.long)
    labels.scatter_(1, queries, values)
    if random_non_queries:
        noise = torch.randint(vocab_size, (batch, seq_len), generator=g)
        inputs = torch.where(inputs == 0, noise, inputs)
    return inputs, labels


class MQARDataModule(_Streams, L.LightningDataModule):
    """MQAR batches ``{"inputs": [B, L], "labels": [B, L], "num_kv_pairs": [B]}``.

    Args:
        vocab_size, seq_len: V and L.
        num_kv_pairs: one count, or a list: training batches cycle through them, and the validation
            and test sets hold val_size / test_size sequences of each.
        batch_size: sequences per batch.
        train_size: None draws fresh sequences every step (steps_per_epoch batches per epoch); a
            number fixes a training set of that many sequences per count (Zoology: 100k),
            reshuffled each epoch.
        val_size, test_size: sequences per count in the fixed validation / test sets.
        seed: seeds training, validation and test streams (separately).
        power_a: exponent of the query-gap power law.
        random_non_queries: fill the gaps with random tokens instead of 0.
    """

    def __init__(self, vocab_size: int = 256, seq_len: int = 64, num_kv_pairs: int | list[int] = 8,
                 batch_size: int = 64, train_size: int | None = None, steps_per_epoch: int = 100,
                 val_size: int = 512, test_size: int = 512, seed: int = 0, power_a: float = 0.01,
                 random_non_queries: bool = True):
        super().__init__()
        kvs = [num_kv_pairs] if isinstance(num_kv_pairs, int) else list(num_kv_pairs)
        if not kvs:
            raise ValueError("MQARDataModule: num_kv_pairs must not be empty")
        for kv in kvs:
            check_mqar(vocab_size, seq_len, kv)
        _positive_int("MQARDataModule", batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                      val_size=val_size, test_size=test_size)
        if train_size is not None:
            _positive_int("MQARDataModule", train_size=train_size)
        if not power_a > 0:
            raise ValueError(f"MQARDataModule: power_a must be > 0, got {power_a!r}")
        self.save_hyperparameters()
        self.vocab_size, self.seq_len, self.kvs = vocab_size, seq_len, kvs
        self.batch_size, self.train_size, self.steps_per_epoch = batch_size, train_size, steps_per_epoch
        self.val_size, self.test_size, self.seed = val_size, test_size, seed
        self.power_a, self.random_non_queries = power_a, random_non_queries
        self._train = self._val = self._test = None
        self._step = 0

    def sample(self, gen: torch.Generator, batch: int | None = None,
               kv: int | None = None) -> dict[str, Tensor]:
        if kv is None:  # cycle through the counts, one per training batch
            kv, self._step = self.kvs[self._step % len(self.kvs)], self._step + 1
        n = batch or self.batch_size
        inputs, labels = mqar_batch(n, self.vocab_size, self.seq_len, kv, power_a=self.power_a,
                                    random_non_queries=self.random_non_queries, generator=gen)
        return {"inputs": inputs, "labels": labels, "num_kv_pairs": torch.full((n,), kv)}

    def _fixed_set(self, size: int, stream: int) -> _Batches:
        batches = []
        for j, kv in enumerate(self.kvs):
            sample = lambda g, n, kv=kv: self.sample(g, n, kv)  # noqa: E731
            batches += _fixed(sample, size, self.batch_size, _stream_seed(self.seed, stream + 10 * j)).batches
        return _Batches(batches)

    def setup(self, stage: str | None = None) -> None:
        if self._val is not None:
            return
        if self.train_size is None:
            self._train = self._fresh(self.sample)
        else:
            rows = self._fixed_set(self.train_size, 0).batches
            self._train = self._shuffled({k: torch.cat([b[k] for b in rows]) for k in rows[0]})
        self._val = self._fixed_set(self.val_size, 1)
        self._test = self._fixed_set(self.test_size, 2)

    def train_dataloader(self) -> DataLoader:
        return _loader(self._train)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self._val)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self._test)

