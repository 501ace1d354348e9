"""The GPU sweep tool refuses clearly where there is no GPU."""

import pytest
import torch

from kernels import sweep


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_sweep_without_cuda_says_why(capsys):
    with pytest.raises(SystemExit) as e:
        sweep.main(["launch"])
    assert e.value.code == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_sweep_rejects_unknown_command():
    with pytest.raises(SystemExit):
        sweep.main(["tune"])


def test_sweep_rejects_unknown_kernel(capsys):
    with pytest.raises(SystemExit) as e:
        sweep.main(["launch", "--ops", "delta", "--kernels", "dqkw,nope"])
    assert e.value.code == 2
    assert "--kernels: unknown ['nope']" in capsys.readouterr().err
