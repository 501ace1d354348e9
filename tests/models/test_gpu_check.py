"""models.gpu_check: the layer check runs on the CPU (TRITON_INTERPRET=1) as it does on the H200."""

import pytest

import models.layers as layers
from models import gpu_check


def _run(tmp_path, mixers, dtype="bf16"):
    rc = gpu_check.main(["--device", "cpu", "--mixers", mixers, "--T", "9", "--d-model", "32",
                         "--out", str(tmp_path), "--dtype", dtype])
    name = "layer_check.md" if dtype == "bf16" else "layer_check_fp16.md"
    rows = [line for line in (tmp_path / name).read_text().splitlines()
            if line.startswith(("| reference |", "| triton |"))]
    return rc, rows


def test_layer_check_passes_and_writes_its_table(tmp_path):
    """Both backends (titans has no kernel: its triton row is skipped), every row bf16, finite, ok."""
    rc, rows = _run(tmp_path, "mamba2,aaren,titans")
    assert rc == 0 and len(rows) == 5
    assert all(r.endswith("| yes |") and "| bfloat16 |" in r for r in rows)


def test_layer_check_in_fp16(tmp_path):
    """--dtype fp16 (Lightning's "16-mixed"): the rows come back in float16, in a table of their own."""
    rc, rows = _run(tmp_path, "deltanet", "fp16")
    assert rc == 0 and len(rows) == 2 and all("| float16 |" in r and r.endswith("| yes |") for r in rows)


def test_layer_check_reports_a_failing_layer(tmp_path, monkeypatch):
    """Without the activations cast to autocast's dtype, aaren's kernel refuses its float32 learned
    query beside bf16 keys: the row fails with the message and main returns 1."""
    monkeypatch.setattr(layers, "_one_activation_dtype", lambda inputs, x: inputs)
    rc, rows = _run(tmp_path, "aaren")
    assert rc == 1
    assert rows[0].endswith("| yes |") and "TypeError: aaren: k has dtype" in rows[1] and rows[1].endswith("**no** |")


@pytest.mark.parametrize("args,message", [
    (["--backends", "cuda"], "--backends: 'cuda' is not one of reference, triton"),
    (["--mixers", "mamba"], "--mixers: 'mamba' is not a zoo mixer"),
    (["--dtype", "fp8"], "argument --dtype: invalid choice: 'fp8'"),
])
def test_bad_arguments_are_refused(capsys, args, message):
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--device", "cpu", *args])
    assert e.value.code == 2 and message in capsys.readouterr().err
