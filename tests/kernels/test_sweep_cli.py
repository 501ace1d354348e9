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


def test_scalar_sweep_times_the_one_pass_forward_forced_on_and_restores_the_rule(monkeypatch, capsys):
    """The one-pass kernel is timed with FUSED_FORWARD forced on (under each value tile), every other
    kernel with it off; afterwards the default rule (None) and the settings are back."""
    import kernels.diag.chunk as dc

    seen = []

    def fake_times(fn, inp, backward, iters):
        seen.append((dc.FUSED_FORWARD, dc.FUSED_BV, dict(dc.LAUNCH["fused_fwd"])))
        return {"_fused_fwd_kernel": 1.0 / dc.FUSED_BV + dc.LAUNCH["fused_fwd"]["num_warps"],
                "_state_kernel": 1.0}

    monkeypatch.setattr(sweep, "kernel_times", fake_times)
    monkeypatch.setattr(sweep.bench, "_inputs", lambda B, T, kind: {})
    before = dict(dc.LAUNCH["fused_fwd"]), dc.FUSED_BV
    sweep.launch(["scalar"], 4096, ["fused_fwd", "state"])
    fused_runs = [s for s in seen if s[0] is True]
    assert len(fused_runs) == 3 * 3 * 4 and {s[1] for s in fused_runs} == {16, 32, 64, 128}
    assert [s for s in seen if s[0] is not True] and all(s[0] is False for s in seen if s[0] is not True)
    assert dc.FUSED_FORWARD is None and (dict(dc.LAUNCH["fused_fwd"]), dc.FUSED_BV) == before
    assert "warps 2/stages 1/BV 128" in capsys.readouterr().out   # the fastest of the fake timings
