"""The forms benchmark's smoke run writes its report files."""

import csv
import sys

import torch
from pathlib import Path

# benchmarks/ is not an installed package: import it from the checkout, however pytest was started.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.forms import CHUNKS, SCALING_MIXERS, SPEEDUP_MIXERS, fit_exponent, main


def test_quick_run_writes_reports(tmp_path, capsys):
    # One thread: on a loaded 2-core machine torch's second thread can stall each of the recurrent
    # loop's tiny ops, which makes the smoke run 10x slower without changing what it checks.
    threads = torch.get_num_threads()
    # --malloc glibc: the allocator of the pytest process stays as it was
    assert main(["--quick", "--threads", "1", "--malloc", "glibc", "--out", str(tmp_path)]) == 0
    assert torch.get_num_threads() == threads
    md = (tmp_path / "forms_cpu.md").read_text()
    rows = list(csv.DictReader(open(tmp_path / "forms_cpu.csv")))
    assert "python -m benchmarks.forms --quick" in md
    assert "torch" in md and "speedup" in md and "Fitted exponent" in md
    assert "page faults a call" in md and "glibc malloc with its defaults" in md
    assert all(r["page_faults"] != "" for r in rows if r["section"] == "speedup")
    # one round (--quick) in each block: before, between and after the scaling sweeps
    assert {int(r["samples"]) for r in rows if r["section"] == "speedup"} == {len(SCALING_MIXERS) + 1}
    assert "Speedup (median over rounds) by chunk size" in md and "best chunk size" in md
    for name in SPEEDUP_MIXERS:
        assert f"`{name}`" in md
        # every chunk size was timed in the same rounds as the recurrent form
        sizes = {r["chunk_size"] for r in rows if r["section"] == "speedup" and r["mixer"] == name
                 and r["form"] == "chunked" and float(r["seconds"]) > 0}
        assert sizes == {str(C) for C in CHUNKS}
    timed = {(r["mixer"], r["form"]) for r in rows if float(r["seconds"]) > 0}
    for name in SCALING_MIXERS:
        assert {(name, "recurrent"), (name, "chunked"), (name, "parallel")} <= timed


def test_fit_exponent():
    Ts = [256, 512, 1024, 2048]
    assert abs(fit_exponent(Ts, [1e-6 * T ** 2 for T in Ts]) - 2.0) < 1e-9
    assert fit_exponent([256], [1.0]) != fit_exponent([256], [1.0])  # NaN for one point
