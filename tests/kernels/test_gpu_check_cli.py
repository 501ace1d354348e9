"""The GPU check's command line (the checks themselves need CUDA and run on the GPU machine)."""

import pytest
import torch

from kernels import gpu_check


def test_dtypes_narrow_every_section(monkeypatch):
    monkeypatch.setattr(gpu_check, "DTYPES", {torch.float16})
    assert gpu_check._pick(torch.float32, torch.bfloat16, torch.float16) == (torch.float16,)
    assert gpu_check._pick(torch.float32, torch.bfloat16) == ()


@pytest.mark.parametrize("given", ["float8", "int32"])
def test_unknown_dtype_is_refused(given, capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--dtypes", given])
    assert "--dtypes" in capsys.readouterr().err
