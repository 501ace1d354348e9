"""Under DDP each process validates a shard: the logged metrics must still cover the whole set.

Two CPU processes (gloo, ``ddp_spawn``) must log the same validation numbers as one process.
"""

import lightning as L
import pytest
import torch

from models.data import MQARDataModule, RegressionDataModule
from models.lit import MQARModule, RegressionModule
from models.model import SequenceModel, TokenModel

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")


def _validate(module, dm, tmp_path, devices):
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    return {k: float(v) for k, v in trainer.validate(module, dm, verbose=False)[0].items()}


def test_two_processes_log_what_one_does(tmp_path):
    # ddp_spawn passes the module's tensors to its processes; the default file-descriptor sharing
    # fails where /dev/shm is small (CI containers), the file-system strategy does not.
    before = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy("file_system")
    try:
        _check_both_tasks(tmp_path)
    finally:
        torch.multiprocessing.set_sharing_strategy(before)


def _check_both_tasks(tmp_path):
    torch.manual_seed(0)
    model = SequenceModel(d_in=4, mixer="linear_attention", d_model=8, n_layers=1, mlp_ratio=0.0)
    dm = RegressionDataModule(d=3, n_points=6, batch_size=8, val_size=32, steps_per_epoch=2)
    one = _validate(RegressionModule(model), dm, tmp_path, 1)
    two = _validate(RegressionModule(model), dm, tmp_path, 2)
    assert {"val_loss", "val_err/pos_5", "val_err_least_squares/pos_5"} <= set(one)
    for key in one:
        assert two[key] == pytest.approx(one[key], rel=1e-5), key

    torch.manual_seed(0)
    tok = TokenModel(vocab_size=16, mixer="linear_attention", d_model=8, n_layers=1, mlp_ratio=0.0, max_len=16)
    mq = MQARDataModule(vocab_size=16, seq_len=16, num_kv_pairs=2, batch_size=8, val_size=32, steps_per_epoch=2)
    one = _validate(MQARModule(tok), mq, tmp_path, 1)
    two = _validate(MQARModule(tok), mq, tmp_path, 2)
    assert "val_acc" in one
    for key in one:
        assert two[key] == pytest.approx(one[key], rel=1e-5), key


class _Batches(L.Callback):
    """Writes a checksum of every training batch, by process and step, under ``out``."""

    def __init__(self, out):
        self.out = out

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with open(self.out / f"rank{trainer.global_rank}.txt", "a") as f:
            f.write(f"{trainer.global_step} {float(batch['inputs'].float().sum())}\n")


def _fit(tmp_path, devices, max_steps, out, ckpt_path=None, save=None, train_size=None):
    torch.manual_seed(0)
    tok = TokenModel(vocab_size=16, mixer="linear_attention", d_model=8, n_layers=1, mlp_ratio=0.0, max_len=16)
    dm = MQARDataModule(vocab_size=16, seq_len=16, num_kv_pairs=[1, 2], batch_size=4, val_size=4,
                        steps_per_epoch=2, train_size=train_size)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto",
                        max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        default_root_dir=tmp_path, callbacks=[_Batches(out)])
    trainer.fit(MQARModule(tok, cosine=False), dm, ckpt_path=ckpt_path)
    if save:
        trainer.save_checkpoint(save)


def _read(path):
    return [tuple(line.split()) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("train_size,stop", [(None, 2), (10, 2), (10, 7)])
def test_a_resumed_run_draws_what_the_uninterrupted_one_would(tmp_path, train_size, stop):
    """The training stream's place was not in the checkpoint: a run resumed at step 2 drew the batches
    of steps 0 and 1 again (and restarted MQAR's cycle of kv counts). A fixed training set (20 rows, 5
    batches a pass) was shuffled by the DataLoader, whose order began again on a resume, at a pass's
    boundary or inside one."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    _fit(tmp_path, 1, 9, tmp_path / "a", train_size=train_size)
    _fit(tmp_path, 1, stop, tmp_path / "b", save=tmp_path / "half.ckpt", train_size=train_size)
    _fit(tmp_path, 1, 9, tmp_path / "b", ckpt_path=tmp_path / "half.ckpt", train_size=train_size)
    a = _read(tmp_path / "a" / "rank0.txt")
    assert len(a) == 9 and _read(tmp_path / "b" / "rank0.txt") == a


def test_each_process_trains_on_its_own_batches(tmp_path):
    """Under DDP every process drew the same batches (one seed, the index ignored): two devices
    trained on one device's data, and each had half of steps_per_epoch an epoch."""
    before = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy("file_system")
    try:
        (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
        _fit(tmp_path, 1, 4, tmp_path / "one")
        _fit(tmp_path, 2, 4, tmp_path / "two")
    finally:
        torch.multiprocessing.set_sharing_strategy(before)
    one, r0, r1 = (_read(tmp_path / d / f) for d, f in (("one", "rank0.txt"), ("two", "rank0.txt"),
                                                        ("two", "rank1.txt")))
    assert r0 == one                                    # process 0 keeps the single-process stream
    assert len(r1) == 4 and all(a[1] != b[1] for a, b in zip(r0, r1))


def test_an_uneven_validation_set_is_counted_once(tmp_path):
    """5 validation batches over 2 processes: Lightning's sampler repeated one to even the shares, and
    the gathered sums counted it twice (val_err/pos_10 3.090 against 3.287 on one device)."""
    before = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy("file_system")
    try:
        torch.manual_seed(0)
        model = SequenceModel(d_in=4, mixer="linear_attention", d_model=8, n_layers=1, mlp_ratio=0.0)
        dm = RegressionDataModule(d=3, n_points=6, batch_size=8, val_size=40, steps_per_epoch=2)
        one = _validate(RegressionModule(model), dm, tmp_path, 1)
        two = _validate(RegressionModule(model), dm, tmp_path, 2)
    finally:
        torch.multiprocessing.set_sharing_strategy(before)
    for key in one:
        assert two[key] == pytest.approx(one[key], rel=1e-5), key
