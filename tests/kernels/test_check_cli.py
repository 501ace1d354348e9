"""``python -m kernels.check``: any mixer's kernels against its float64 forms, here on the interpreter."""

from __future__ import annotations

import pytest

from kernels import check, gpu_check

SMALL = ["--T", "9", "--K", "16", "--V", "16", "--B", "1", "--H", "1"]


def test_checks_the_named_mixers_forms_and_step(capsys):
    assert check.main(["mamba2", "ttt_linear", *SMALL]) == 0
    out = capsys.readouterr().out
    for name in ("mamba2", "ttt_linear"):
        for form in ("chunked", "recurrent", "step (3 after a chunked prefill)"):
            assert f"| {name} | {form} | float32 |" in out
    assert out.count("| yes |") == 6 and "every row within tolerance" in out


def test_aarens_state_is_compared_and_a_kv_cache_is_marked_not_compared(capsys):
    """Aaren's state (m, c, a) is finite: compared and differentiated like any other (it was skipped as
    softmax attention's KV cache is, whose cell read "nan" for "not compared")."""
    assert check.main(["aaren", "softmax_attention", *SMALL]) == 0
    lines = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    rows = {cells[0] + cells[1]: cells for cells in lines}
    assert float(rows["| aarenchunked"][4]) < 1e-5 and rows["| softmax_attentionchunked"][4] == "—"
    assert "nan" not in str(rows)


def test_your_own_mixer_after_import(readme_mixers, capsys):
    """README's "A new mixer" module: its kernels checked as a zoo mixer's are."""
    assert check.main(["mamba2_floor", "--import", "my_mixers", *SMALL]) == 0
    assert "| mamba2_floor | chunked | float32 |" in capsys.readouterr().out


def test_options_reach_a_variant_with_momentum(capsys):
    """titans with memory="linear" (a MemoryState of memory and momentum: both checked, both
    differentiated; the check once dropped the momentum and failed every row)."""
    assert check.main(["titans", "--options", '{"memory": "linear"}', *SMALL]) == 0
    out = capsys.readouterr().out
    assert "| titans(memory='linear') | chunked | float32 |" in out and out.count("| yes |") == 3


def test_a_missed_tolerance_fails_the_row_and_the_run(monkeypatch, capsys):
    monkeypatch.setitem(gpu_check.TOL, gpu_check.torch.float32, 1e-12)
    assert check.main(["retnet", *SMALL]) == 1
    out = capsys.readouterr().out
    assert "| retnet | chunked | float32 |" in out and "**NO**" in out and "failing rows" in out


@pytest.mark.parametrize("argv, message", [
    (["titans"], "no kernel family compiles titans"),
    (["mamba3"], "unknown mixer 'mamba3'; the zoo has: softmax_attention"),
    pytest.param(["mamba2", "--dtypes", "bfloat16"], "the interpreter runs the kernels in fp32 only",
                 marks=pytest.mark.skipif(gpu_check.torch.cuda.is_available(), reason="a GPU runs bf16")),
    (["mamba2", "--dtypes", "float64"], "--dtypes: unknown float64"),
    (["mamba2", "--T", "0"], "--T must be at least 1, got 0"),
    (["mamba2", "--import", "no_such_module_here"], "--import no_such_module_here"),
    (["--options", '{"memory": "linear"}'], "--options binds options of the mixers named"),
    (["titans", "--options", "{memory: linear}"], "--options: not JSON"),
    (["titans", "--options", '{"memory": "vector"}'], "--options: titans"),
])
def test_bad_arguments_are_refused_by_name(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        check.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
