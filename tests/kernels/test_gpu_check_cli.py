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


@pytest.mark.parametrize("name,opts", [("mamba2", {}), ("gated_deltanet", {}), ("softmax_attention", {})])
def test_step_check_passes_on_the_interpreter(name, opts):
    """The decode-step section's check itself, run on the CPU: the kernels' steps pass it."""
    errs, ok = gpu_check.check_step(name, opts, torch.float32, 2, 5, 3, 2, 16, 16, device="cpu")
    assert ok and errs["o"] < 1e-5


def test_step_check_catches_a_wrong_step(monkeypatch):
    import kernels.diag.recurrent as dr

    real = dr.diag_step

    def off(state, q, k, v, *a, **kw):   # a step that reads the state but forgets the token's write
        return real(state, q, k * 0, v, *a, **kw)
    monkeypatch.setattr("kernels.diag.diag_step", off)
    _, ok = gpu_check.check_step("mamba2", {}, torch.float32, 2, 5, 3, 2, 16, 16, device="cpu")
    assert not ok
