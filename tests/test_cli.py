"""The ``dsf`` command line: zoo table, Φ heatmaps, the all-forms check, and its errors."""

import dataclasses
import sys

import pytest
import torch

import dsf
from dsf.cli import ZOO_VARIANTS, main


def test_zoo_lists_every_mixer(capsys):
    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    for name in dsf.zoo.names():
        assert name in out
    assert "∞" in out  # softmax attention's state
    assert "identity minus rank one" in out
    assert "recurrent, parallel, chunked" in out


def test_zoo_without_kernels_package(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "kernels", None)  # makes `import kernels` raise ImportError
    assert main(["zoo", "--markdown"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[2:]
    assert all(row.endswith("| — |") for row in rows)


def test_zoo_markdown(capsys):
    assert main(["zoo", "--markdown"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| name |")
    assert set(lines[1].replace(" ", "")) <= set("|-")
    assert len(lines) == 2 + len(dsf.zoo.names()) + len(ZOO_VARIANTS)
    assert all(line.startswith("| ") and line.endswith(" |") for line in lines)


def test_phi_one_mixer(tmp_path, capsys):
    path = tmp_path / "sub" / "gla.png"
    assert main(["phi", "gla", "--out", str(path), "--T", "12"]) == 0
    assert path.stat().st_size > 0
    assert str(path) in capsys.readouterr().out


def test_phi_channel_layout_into_directory(tmp_path):
    assert main(["phi", "s6", "--out", str(tmp_path), "--T", "8"]) == 0
    assert (tmp_path / "s6.png").stat().st_size > 0


def test_phi_out_a_new_directory_or_a_file_that_is_no_image(tmp_path):
    """--out newdir/ wrote newdir.png; --out x.txt ended in matplotlib's traceback after the drawing."""
    assert main(["phi", "gla", "--out", str(tmp_path / "newdir") + "/", "--T", "8"]) == 0
    assert (tmp_path / "newdir" / "gla.png").stat().st_size > 0
    with pytest.raises(SystemExit, match=r"dsf phi: --out must name an image \(.png, .pdf"):
        main(["phi", "gla", "--out", str(tmp_path / "x.txt"), "--T", "8"])


def test_a_zoo_variant_by_the_tables_spelling(tmp_path, capsys):
    """`dsf zoo` lists titans(memory='linear'); check and phi take that spelling, and the whole zoo's
    check includes it (make demo's "every form checked" skipped the one memory with Φ and a chunked form)."""
    assert main(["check", "titans(memory='linear')", "--T", "6"]) == 0
    assert "titans(memory='linear')" in capsys.readouterr().out
    assert main(["phi", "titans(memory='linear')", "--out", str(tmp_path / "t.png"), "--T", "6"]) == 0
    assert (tmp_path / "t.png").stat().st_size > 0
    from dsf.cli import check_names

    names = check_names()
    assert names[names.index("titans") + 1] == "titans(memory='linear')"
    for bad, said in (("titans(memory=linear)", "each value a Python literal"),
                      ("titans(memroy='linear')", "unknown option"), ("titanz(memory='linear')", "unknown mixer"),
                      ("titans(memory='lin')", "memory must be 'mlp' or 'linear'")):
        with pytest.raises(SystemExit):
            main(["check", bad])
        assert said in capsys.readouterr().err, bad


def test_phi_all_out_an_image_name_is_refused(tmp_path):
    """(it made a directory named x.png)"""
    with pytest.raises(SystemExit, match=r"dsf phi all: --out is the directory"):
        main(["phi", "all", "--out", str(tmp_path / "x.png"), "--T", "8"])
    assert not (tmp_path / "x.png").exists()


def test_check_of_mixers_without_an_oracle_has_no_largest_oracle_error(monkeypatch, capsys):
    """The "largest" row read 0.0e+00 under "oracle vs rec" where no mixer had an oracle."""
    mine = dataclasses.replace(dsf.zoo.get("mamba2"), name="no_oracle", oracle=None)
    monkeypatch.setattr(dsf.zoo, "_REGISTRY", {**dsf.zoo._REGISTRY, "no_oracle": mine})
    assert main(["check", "no_oracle", "--T", "5"]) == 0
    largest = [line for line in capsys.readouterr().out.splitlines() if line.startswith("largest")][0]
    assert largest.split()[3] == "—", largest


def test_phi_all_leaves_out_a_spec_that_cannot_draw_inputs(tmp_path, monkeypatch):
    mine = dataclasses.replace(dsf.zoo.get("mamba2"), name="no_inputs", random_inputs=None, oracle=None)
    monkeypatch.setattr(dsf.zoo, "_REGISTRY", {**dsf.zoo._REGISTRY, "no_inputs": mine})
    from dsf.cli import phi_names

    assert "no_inputs" not in phi_names() and "mamba2" in phi_names()


def test_phi_all(tmp_path, capsys):
    """Every mixer that has Φ (``"parallel" in spec.forms()``, the capability flag) gets a panel."""
    with_phi = [s.name for s in dsf.zoo.specs() if "parallel" in s.forms()]
    assert set(dsf.zoo.names()) - set(with_phi) == {"titans", "moneta", "yaad", "memora", "ttt_mlp"}
    assert main(["phi", "all", "--out", str(tmp_path), "--T", "8"]) == 0
    for name in [*with_phi, "all"]:
        assert (tmp_path / f"{name}.png").stat().st_size > 0, name
    assert len(capsys.readouterr().out.strip().splitlines()) == len(with_phi) + 1


def test_check_passes(capsys):
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("OK")
    for name in dsf.zoo.names():
        assert name in out


def test_check_some_mixers(capsys):
    assert main(["check", "mamba2", "aaren", "--T", "7", "--chunk", "3"]) == 0
    out = capsys.readouterr().out
    assert "mamba2" in out and "aaren" in out and "gla" not in out


def test_check_fails_on_a_wrong_oracle(monkeypatch, capsys):
    spec = dsf.zoo.get("mamba2")
    bad = dataclasses.replace(spec, name="bad_mamba2", oracle=lambda **kw: 2 * spec.oracle(**kw))
    monkeypatch.setitem(dsf.zoo._REGISTRY, bad.name, bad)
    assert main(["check", "bad_mamba2", "mamba2"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: 1 of 2 mixers" in out and out.strip().endswith("bad_mamba2")


@pytest.mark.parametrize("argv", [["phi", "no_such_mixer", "--out", "x.png"],
                                  ["check", "no_such_mixer"]])
def test_unknown_mixer_lists_the_zoo(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code != 0
    err = capsys.readouterr().err
    assert "unknown mixer 'no_such_mixer'" in err
    for name in dsf.zoo.names():
        assert name in err


def test_no_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code != 0


def test_the_readmes_new_mixer_recipe_reaches_the_command_line(readme_mixers, capsys):
    """README's "A new mixer" module, imported by `dsf --import` from the current directory: the zoo
    lists it, check runs every form on it; a spec without random_inputs is named, not a crash."""
    from dsf import zoo

    assert main(["--import", "my_mixers", "check", "mamba2_floor"]) == 0
    assert "OK: all 1 mixers agree" in capsys.readouterr().out
    # a mixer of its own: the floor acts on the random inputs the checks draw (a floor of -1 never did)
    x = dsf.random_inputs("mamba2_floor", B=1, T=13, H=2, K=4, V=4, seed=0)
    assert not torch.allclose(dsf.recurrent("mamba2_floor", **x)[0], dsf.recurrent("mamba2", **x)[0])
    zoo.register(dataclasses.replace(zoo.get("mamba2_floor"), name="bare", random_inputs=None))
    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    assert "mamba2_floor" in out and "? (no random_inputs)" in out
    with pytest.raises(TypeError, match=r"^bare: the spec has no random_inputs"):
        dsf.random_inputs("bare")
    # dsf check: named, a usage error (it was a FAIL row of inf); over the whole zoo, left out and said so
    with pytest.raises(SystemExit, match=r"^dsf check: bare has no random_inputs"):
        main(["check", "bare"])
    assert main(["check", "--T", "5"]) == 0
    out = capsys.readouterr().out
    assert "left out (no random_inputs): bare" in out and "\nbare " not in out


def test_an_import_that_fails_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        main(["--import", "no_such_module_here", "zoo"])
    assert "--import no_such_module_here: No module named" in capsys.readouterr().err
