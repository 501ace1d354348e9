"""Data modules: fresh training batches, fixed validation sets, the MQAR generator's structure."""

import pytest
import torch

from models import icl
from models.data import IGNORE_INDEX, MQARDataModule, RegressionDataModule, mqar_batch


def _batches(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_regression_batches_are_garg_tokens():
    dm = RegressionDataModule(d=3, n_points=7, batch_size=4, val_size=10, test_size=6, steps_per_epoch=5)
    dm.setup("fit")
    b = _batches(dm.train_dataloader(), 1)[0]
    assert b["tokens"].shape == (4, 14, 4) and b["x"].shape == (4, 7, 3) and b["y"].shape == (4, 7)
    assert torch.equal(b["tokens"], icl.interleave(b["x"], b["y"]))
    assert torch.allclose(b["y"], torch.einsum("bnd,bd->bn", b["x"], b["w"]), atol=1e-5)  # noiseless
    assert len(dm.train_dataloader()) == 5
    assert [v["y"].shape[0] for v in dm.val_dataloader()] == [4, 4, 2]     # val_size 10, last batch short
    assert sum(v["y"].shape[0] for v in dm.test_dataloader()) == 6
    assert dm.token_dim == 4


def test_regression_fresh_train_fixed_val():
    """Every step and every epoch draws new prompts; validation is the same set every time."""
    dm = RegressionDataModule(d=2, n_points=3, batch_size=2, val_size=4, steps_per_epoch=2, seed=7)
    dm.setup("fit")
    epoch1 = _batches(dm.train_dataloader(), 2)
    epoch2 = _batches(dm.train_dataloader(), 2)
    ys = [b["y"] for b in epoch1 + epoch2]
    assert all(not torch.equal(a, b) for i, a in enumerate(ys) for b in ys[i + 1:])
    v1 = [b["y"] for b in dm.val_dataloader()]
    v2 = [b["y"] for b in dm.val_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(v1, v2))
    # the same seed reproduces the same stream and validation set
    dm2 = RegressionDataModule(d=2, n_points=3, batch_size=2, val_size=4, steps_per_epoch=2, seed=7)
    dm2.setup("fit")
    assert torch.equal(_batches(dm2.train_dataloader(), 1)[0]["y"], epoch1[0]["y"])
    assert torch.equal(next(iter(dm2.val_dataloader()))["y"], v1[0])
    assert not torch.equal(v1[0], epoch1[0]["y"])


def test_regression_stacked_layout():
    dm = RegressionDataModule(d=3, n_points=5, layout="stacked", batch_size=4, val_size=4)
    dm.setup("fit")
    b = next(iter(dm.val_dataloader()))
    assert b["tokens"].shape == (4, 5, 4) and torch.equal(b["tokens"], icl.stack_tokens(b["x"], b["y"]))
    assert (b["tokens"][:, -1, -1] == 0).all() and (b["tokens"][:, :-1, -1] == b["y"][:, :-1]).all()


def test_regression_noise_and_ridge_lambda():
    dm = RegressionDataModule(d=5, n_points=4, noise_std=0.5, w_scale="1/d")
    assert dm.ridge_lambda == pytest.approx(0.25 * 5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(d=0), "d must be an int >= 1, got 0"),
    (dict(d=-3), "d must be"),
    (dict(n_points=0), "n_points must be an int >= 1, got 0"),
    (dict(noise_std=-1.0), "noise_std"),
    (dict(w_scale="2/d"), "w_scale"),
    (dict(layout="paired"), "layout must be one of"),
    (dict(layout="stacked", n_points=1), "needs n_points >= 2"),
    (dict(batch_size=0), "batch_size"),
])
def test_regression_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RegressionDataModule(**kwargs)


def test_mqar_structure():
    """Keys in [1, V/2) and values in [V/2, V) at the front, unique; each key queried once later,
    with its value as the label at the query position and -100 everywhere else."""
    V, L, kv, B = 64, 40, 6, 50
    gen = torch.Generator().manual_seed(0)
    inputs, labels = mqar_batch(B, V, L, kv, random_non_queries=False, generator=gen)
    assert inputs.shape == labels.shape == (B, L) and inputs.dtype == labels.dtype == torch.long
    keys, values = inputs[:, 0:2 * kv:2], inputs[:, 1:2 * kv:2]
    assert ((keys >= 1) & (keys < V // 2)).all() and ((values >= V // 2) & (values < V)).all()
    for b in range(B):
        assert len(set(keys[b].tolist())) == kv and len(set(values[b].tolist())) == kv
        q = (labels[b] != IGNORE_INDEX).nonzero().flatten()
        assert len(q) == kv and (q >= 2 * kv).all() and ((q - 2 * kv) % 2 == 0).all()
        assert sorted(inputs[b, q].tolist()) == sorted(keys[b].tolist())          # each key once
        answer = dict(zip(keys[b].tolist(), values[b].tolist()))
        assert [answer[k] for k in inputs[b, q].tolist()] == labels[b, q].tolist()
        rest = torch.ones(L, dtype=torch.bool)
        rest[:2 * kv] = False
        rest[q] = False
        assert (inputs[b, rest] == 0).all() and (labels[b, :2 * kv] == IGNORE_INDEX).all()


def test_mqar_gaps_are_mostly_short_and_fillers_random():
    V, L, kv = 64, 128, 4
    inputs, labels = mqar_batch(400, V, L, kv, generator=torch.Generator().manual_seed(1))
    slots = ((labels != IGNORE_INDEX).nonzero()[:, 1] - 2 * kv) // 2
    space = (L - 2 * kv) // 2
    assert slots.float().median() < space / 4                    # power law: short gaps dominate
    filler = labels == IGNORE_INDEX
    filler[:, :2 * kv] = False
    assert (inputs[filler] != 0).float().mean() > 0.9            # zoology's random_non_queries
    again, _ = mqar_batch(400, V, L, kv, generator=torch.Generator().manual_seed(1))
    assert torch.equal(inputs, again)


@pytest.mark.parametrize("args,match", [
    ((64, 20, 6), "seq_len >= 4 \\* num_kv_pairs = 24"),
    ((10, 64, 5), "vocab_size=10 allows at most 4"),
    ((64, 32, 0), "num_kv_pairs must be an int >= 1"),
])
def test_mqar_errors(args, match):
    with pytest.raises(ValueError, match=match):
        mqar_batch(2, *args)
    with pytest.raises(ValueError, match=match):
        MQARDataModule(vocab_size=args[0], seq_len=args[1], num_kv_pairs=args[2])


def test_mqar_module_mixes_counts_and_fixed_train_set():
    dm = MQARDataModule(vocab_size=32, seq_len=24, num_kv_pairs=[2, 4], batch_size=8, val_size=8,
                        steps_per_epoch=4)
    dm.setup("fit")
    counts = [int(b["num_kv_pairs"][0]) for b in _batches(dm.train_dataloader(), 4)]
    assert counts == [2, 4, 2, 4]
    val = list(dm.val_dataloader())
    assert [int(b["num_kv_pairs"][0]) for b in val] == [2, 4]
    assert all(int((b["labels"] != IGNORE_INDEX).sum(1)[0]) == int(b["num_kv_pairs"][0]) for b in val)
    fixed = MQARDataModule(vocab_size=32, seq_len=24, num_kv_pairs=3, batch_size=8, train_size=20, val_size=8)
    fixed.setup("fit")
    loader = fixed.train_dataloader()
    assert len(loader) == 3 and next(iter(loader))["inputs"].shape == (8, 24)
