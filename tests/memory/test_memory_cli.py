"""`dsf zoo --miras`, the memories in `dsf zoo` / `dsf check` / `dsf phi`, and the error table script."""

import pytest

import dsf
from dsf.cli import main
from dsf.forms import memory_table


def test_zoo_miras_places_every_memory(capsys):
    assert main(["zoo", "--miras"]) == 0
    out = capsys.readouterr().out
    placed = [s.name for s in dsf.zoo.specs() if s.miras is not None]
    for name in ["linear_attention", "retnet", "mamba2", "gla", "deltanet", "gated_deltanet", "longhorn",
                 "titans", "moneta", "yaad", "memora", "ttt_linear", "ttt_mlp"]:
        assert name in placed and name in out
    for words in ["attentional bias", "GD + momentum", "KL (softmax)", "ℓq (q = 4) + ℓ2", "Huber (δ)",
                  "implicit GD", "ℓ2, key-wise α_t"]:
        assert words in out
    assert "s6" not in out  # no Miras coordinates declared


def test_zoo_miras_markdown(capsys):
    assert main(["zoo", "--miras", "--markdown"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| name | memory | attentional bias |")
    assert len(lines) == 2 + sum(s.miras is not None for s in dsf.zoo.specs())


def test_memories_in_the_zoo_table_and_the_check(capsys):
    assert main(["zoo"]) == 0
    assert "recurrent, mini-batch≈" in capsys.readouterr().out
    assert main(["check", "titans", "moneta", "ttt_linear", "--T", "6"]) == 0
    out = capsys.readouterr().out
    assert "—" in out and out.strip().splitlines()[-1].startswith("OK")


def test_phi_of_a_nonlinear_memory_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["phi", "moneta", "--out", str(tmp_path / "m.png")])
    assert "moneta has no Φ" in capsys.readouterr().err
    assert main(["phi", "ttt_linear", "--out", str(tmp_path / "t.png"), "--T", "6"]) == 0


def test_error_table_script(capsys):
    assert memory_table.main(["--T", "4", "--K", "2", "--seeds", "1", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| titans | 0.0e+00 |" in out and "C=4" in out
