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
