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


def test_without_a_gpu_it_says_so(capsys, monkeypatch):
    """(torch's "Torch not compiled with CUDA enabled" traceback before)"""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        gpu_check.main(["--quick"])
    assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("name,opts", [("mamba2", {}), ("gated_deltanet", {}), ("softmax_attention", {})])
def test_step_check_passes_on_the_interpreter(name, opts):
    """The decode-step section's check itself, run on the CPU: the kernels' steps pass it."""
    errs, ok = gpu_check.check_step(name, opts, torch.float32, 2, 5, 3, 2, 16, 16, device="cpu")
    assert ok and errs["o"] < 1e-5


@pytest.mark.parametrize("name", ["mamba2", "gated_deltanet", "softmax_attention"])
def test_varlen_check_passes_on_the_interpreter(name):
    """The varlen section's check itself, run on the CPU: softmax attention's packed caches came back
    as None and the check (mocked in the CLI tests) failed on them on the GPU."""
    worst, ok = gpu_check.check_varlen(name, torch.float32, 1, 16, 16, device="cpu")
    assert ok and worst < 1e-5


def test_varlen_check_catches_a_wrong_final_state(monkeypatch):
    import kernels

    real = kernels.CompiledMixer.chunked

    def off(self, **kw):   # every sequence given the first one's final state
        o, S = real(self, **kw)
        return o, S[:1].expand_as(S)
    monkeypatch.setattr(kernels.CompiledMixer, "chunked", off)
    _, ok = gpu_check.check_varlen("mamba2", torch.float32, 1, 16, 16, device="cpu")
    assert not ok


def test_step_check_catches_a_wrong_step(monkeypatch):
    import kernels.diag.recurrent as dr

    real = dr.diag_step

    def off(state, q, k, v, *a, **kw):   # a step that reads the state but forgets the token's write
        return real(state, q, k * 0, v, *a, **kw)
    monkeypatch.setattr("kernels.diag.diag_step", off)
    _, ok = gpu_check.check_step("mamba2", {}, torch.float32, 2, 5, 3, 2, 16, 16, device="cpu")
    assert not ok


def _fake_checks(monkeypatch, broken=("gla", torch.float32)):
    """Every check of the GPU script replaced by a fake (one raising for ``broken``)."""
    errs = {"o": 1e-7, "state": 2e-7, "grad": 3e-6, "worst_grad": "q"}

    def check(name, opts, dtype, form, *a, **kw):
        if (name, dtype) == broken and form == "chunked":
            raise RuntimeError("boom")
        return (dict(errs) if name != "softmax_attention" else
                {k: v for k, v in errs.items() if k != "state"}), True
    monkeypatch.setattr(gpu_check, "_poison", lambda: None)
    monkeypatch.setattr(gpu_check, "DTYPES", gpu_check.DTYPES)   # main() narrows it; restored after
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "fake GPU")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check, "check", check)
    for fn in ("check_memory", "check_key_chunk", "check_delta_chunk"):
        monkeypatch.setattr(gpu_check, fn, lambda *a, **kw: (dict(errs), True))
    monkeypatch.setattr(gpu_check, "check_repeat", lambda *a, **kw: (0, 0.0, ""))
    monkeypatch.setattr(gpu_check, "check_varlen", lambda *a, **kw: (1e-7, True))
    monkeypatch.setattr(gpu_check, "check_memory_varlen", lambda *a, **kw: (1e-7, True))
    monkeypatch.setattr(gpu_check, "check_step", lambda *a, **kw: ({"o": 1e-7, "state": 2e-7}, True))


def test_report_has_a_row_per_check_and_counts_failures(tmp_path, monkeypatch, capsys):
    """The whole script with its checks faked: every section's rows, an error row for a check that
    raises (the run goes on), the failing count and the exit status."""
    _fake_checks(monkeypatch)
    assert gpu_check.main(["--quick", "--dtypes", "float32", "--out", str(tmp_path)]) == 1
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| gla |  | chunked (chunk) | float32 | error: RuntimeError: boom" in md
    assert "| mamba2 |  | chunked (chunk) | float32 | 1.0e-07 | 2.0e-07 | 3.0e-06 | q | yes |" in md
    assert "| softmax_attention |  | chunked (flash) | float32 | 1.0e-07 | — | 3.0e-06 | q | yes |" in md
    assert "| titans | {'memory': 'linear'} | recurrent (fused) | float32 | 1.0e-07 | 2.0e-07 | 3.0e-06 | q | yes |" in md
    for section in ("chunk_diag(decay='key')", "chunk_diag(decay='scalar')", "chunk_delta B, T, H, K, V",
                    "one-pass forward", "repeated (B=",
                    "decode step (compile().step", "varlen (cu_seqlens", "K ≠ V (B=2, T=200, H=2)"):
        assert section in md
    # the raising check fails its K ≠ V row too (--quick: K, V = 40, 24 alone)
    assert "| gla |  | chunked | 40, 24 | float32 | error: RuntimeError: boom" in md
    assert "| 1, 130, 2, 32, 32 | bursts | float32 | 1.0e-07 | 2.0e-07 | 3.0e-06 | q | yes |" in md
    assert "| mamba2 | segments | float32 | 1.0e-07 | 2.0e-07 | 3.0e-06 | q | 0 differ | yes |" in md
    assert "| gla (strong) | one pass | float32 | 1.0e-07 | 2.0e-07 | 3.0e-06 | q | 0 differ | yes |" in md
    assert "| gla (bursts) | segments | float32 | 1.0e-07 | 2.0e-07 | 3.0e-06 | q | 0 differ | yes |" in md
    assert "| gated_deltanet | one pass, W/U in the scan | float32 | 1.0e-07 | 2.0e-07 | 3.0e-06 | q | 0 differ | yes |" in md
    assert md.rstrip().endswith("2 failing rows")
    assert "bfloat16" not in md.split("| ok |", 1)[1]   # --dtypes float32 narrowed every section


def test_wu_rows_run_with_the_switch_on_and_restore_it(tmp_path, monkeypatch):
    """The W/U-in-the-scan rows run the delta check with WU_IN_SCAN on (and the one pass forced), the
    second and third over segments with SEGMENTS_WU_IN_SCAN on too, TRANS_FROM_KS off then on, the fourth
    at 2 × 16 sequence-heads with VN_NARROW at the GPU's SM count; the switches are back afterwards."""
    import kernels.delta.chunk as C

    _fake_checks(monkeypatch)
    seen = []
    monkeypatch.setattr(C, "VN_NARROW", False)

    def fake_delta(*a, **kw):
        seen.append((C.WU_IN_SCAN, C.FUSED_FORWARD, C.SEGMENTS, C.FUSED_MIN_PROGRAMS, C.SEGMENTS_WU_IN_SCAN,
                     C.TRANS_FROM_KS, C.VN_NARROW, a[1:3]))
        return {"o": 1e-7, "state": 2e-7, "grad": 3e-6, "worst_grad": "q"}, True
    monkeypatch.setattr(gpu_check, "check_delta_chunk", fake_delta)
    assert gpu_check.main(["--quick", "--only", "fused:deltanet", "--dtypes", "float32", "--out", str(tmp_path)]) == 0
    assert seen == [(True, True, False, 1, None, True, False, (8, 512)),
                    (True, True, True, 10 ** 4, True, False, False, (2, 4096)),
                    (True, True, True, 10 ** 4, True, True, False, (2, 4096)),
                    (True, True, False, None, None, True, True, (2, 4096))]
    assert (C.WU_IN_SCAN, C.FUSED_FORWARD, C.SEGMENTS, C.FUSED_MIN_PROGRAMS, C.SEGMENTS_WU_IN_SCAN,
            C.TRANS_FROM_KS, C.VN_NARROW) == (None, None, None, None, None, True, False)
    assert "| deltanet | segments, W/U in the scans | float32 |" in (tmp_path / "gpu_check.md").read_text()


def test_wu_rows_with_beta_in_the_inputs_dtype(tmp_path, monkeypatch):
    """For 16-bit inputs every W/U-in-the-scan row runs twice: β in fp32, then in the inputs' dtype (as
    the benchmark passes it), each labelled; fp32 inputs once."""
    _fake_checks(monkeypatch)
    betas = []

    def fake_delta(*a, beta_dtype=torch.float32, **kw):
        betas.append((a[0], beta_dtype))
        return {"o": 1e-7, "state": 2e-7, "grad": 3e-6, "worst_grad": "q"}, True
    monkeypatch.setattr(gpu_check, "check_delta_chunk", fake_delta)
    argv = ["--quick", "--only", "fused:gated_deltanet/wu", "--dtypes", "float32,bfloat16", "--out", str(tmp_path)]
    assert gpu_check.main(argv) == 0
    fp32, bf16 = torch.float32, torch.bfloat16
    assert betas == [(fp32, fp32)] * 4 + [(bf16, fp32)] * 4 + [(bf16, bf16)] * 4
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| gated_deltanet | one pass, narrow tiles, Vn from K S, β in bfloat16 | bfloat16 |" in md
    assert "| gated_deltanet | segments, transitions from K P, β in bfloat16 | bfloat16 |" in md
    assert "β in float32" not in md and "β in bfloat16 | float32" not in md


def test_gla_rows_with_gates_in_the_inputs_dtype(tmp_path, monkeypatch):
    """For 16-bit inputs the key-wise rows (the chunked kernel and GLA's one pass) run twice: gates in
    fp32, then in the inputs' dtype (as the benchmark draws them), each labelled; fp32 inputs once."""
    _fake_checks(monkeypatch)
    seen = []

    def fake_key(dtype, *a, gate_dtype=torch.float32, **kw):
        seen.append((dtype, gate_dtype))
        return {"o": 1e-7, "state": 2e-7, "grad": 3e-6, "worst_grad": "q"}, True
    monkeypatch.setattr(gpu_check, "check_key_chunk", fake_key)
    argv = ["--quick", "--only", "chunk_key,fused:gla/pass", "--dtypes", "float32,float16", "--out", str(tmp_path)]
    assert gpu_check.main(argv) == 0
    fp32, fp16 = torch.float32, torch.float16
    # one chunk_key shape under --quick, then GLA's three regimes in one pass
    assert seen == [(fp32, fp32), (fp16, fp32), (fp16, fp16)] * 4
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| 1, 130, 2, 32, 32 | bursts, gates in float16 | float16 |" in md
    assert "| gla (strong, gates in float16) | one pass | float16 |" in md
    assert "| gla (strong) | one pass | float16 |" in md
    assert "gates in float32" not in md and "gates in float16) | one pass | float32" not in md


def test_kernel_leaves_take_each_side_inputs_dtype():
    """The checks' kernel inputs: q, k, v in the row's dtype, a named side input in its own, the rest
    fp32; fresh leaves that need gradients."""
    x = {n: torch.zeros(2, dtype=torch.float64) for n in ("q", "k", "v", "beta", "g", "S0")}
    kin = gpu_check._kernel_leaves(x, torch.bfloat16, beta=torch.float16)
    assert {n: t.dtype for n, t in kin.items()} == {
        "q": torch.bfloat16, "k": torch.bfloat16, "v": torch.bfloat16, "beta": torch.float16,
        "g": torch.float32, "S0": torch.float32}
    assert all(t.requires_grad and t.is_leaf for t in kin.values())


def test_an_error_row_stays_on_one_line():
    """A raised error becomes one table row (its message's first line, pipes escaped), not a crash."""
    lines = []

    def fail():
        raise RuntimeError("CUDA error: an illegal memory access | was encountered\nSearch for it")
    assert gpu_check._row(lines, "| deltanet | one pass | bfloat16 |", fail, 3) is False
    assert lines == ["| deltanet | one pass | bfloat16 | error: RuntimeError: CUDA error: an illegal memory "
                     "access \\| was encountered |||"]


def test_only_one_fused_mode(tmp_path, monkeypatch):
    """fused:NAME/MODE narrows the one-pass section to one mixer's rows of one mode (here the delta
    rule's segments, with SEGMENTS on while they run and back to its default after)."""
    import kernels.delta.chunk as C

    _fake_checks(monkeypatch)
    seen = []

    def check(name, opts, dtype, form, *a, **kw):
        seen.append((name, C.SEGMENTS))
        return {"o": 1e-7, "state": 2e-7, "grad": 3e-6, "worst_grad": "q"}, True
    monkeypatch.setattr(gpu_check, "check", check)
    assert gpu_check.main(["--quick", "--only", "fused:deltanet/segments,fused:gla/pass", "--dtypes", "float32",
                           "--out", str(tmp_path)]) == 0
    md = (tmp_path / "gpu_check.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| deltanet |") or line.startswith("| gla (")]
    assert [r.split(" | ")[:2] for r in rows] == [["| deltanet", "segments"]] + [
        [f"| gla ({regime})", "one pass"] for regime in ("gla", "bursts", "strong")]
    assert seen == [("deltanet", True)] and C.SEGMENTS is None


def test_an_unknown_fused_mode_is_refused(capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--only", "fused:deltanet/segment"])
    assert "pass, segments, wu, pieces; got 'segment'" in capsys.readouterr().err


@pytest.mark.parametrize("only,message", [
    ("varlens", "--only: unknown 'varlens'; choose from chunk_delta, chunk_key"),
    ("mamba2,gated_delta", "--only: unknown 'gated_delta'"),
    ("fused:mamba", "the name after 'fused:' is one of mamba2, linear_attention, deltanet, gated_deltanet, gla; "
                    "got 'mamba'"),
    ("unequal:mamba3", "the name after 'unequal:' is one of"),
])
def test_an_unknown_only_name_is_refused(only, message, capsys):
    """A name --only does not know would select no rows and report 0 failing: refused, naming the known."""
    with pytest.raises(SystemExit):
        gpu_check.main(["--only", only])
    assert message in capsys.readouterr().err


def test_only_varlen_runs_every_varlen_row_and_nothing_else(tmp_path, monkeypatch):
    _fake_checks(monkeypatch)
    assert gpu_check.main(["--quick", "--only", "varlen", "--dtypes", "float32", "--out", str(tmp_path)]) == 0
    rows = [r for r in (tmp_path / "gpu_check.md").read_text().splitlines() if r.startswith("| ") and "float32" in r]
    assert [r.split(" | ")[0][2:] for r in rows] == ["mamba2", "gla", "deltanet", "gated_deltanet",
                                                    "softmax_attention", "titans (memory='linear')"]


def test_set_switches_are_in_force_while_checking_and_named(tmp_path, monkeypatch):
    """--set: the checks run with the switch set (and the report's header names it); afterwards the
    module's value is back."""
    import kernels.diag.chunk as dc

    _fake_checks(monkeypatch)
    seen = []
    monkeypatch.setattr(gpu_check, "check_key_chunk",
                        lambda *a, **kw: seen.append(dc.SEGMENT_DECAY_IN_SCAN) or
                        ({"o": 1e-7, "state": 2e-7, "grad": 3e-6, "worst_grad": "q"}, True))
    assert gpu_check.main(["--quick", "--only", "chunk_scalar", "--dtypes", "float32", "--out", str(tmp_path),
                           "--set", "kernels.diag.chunk.SEGMENT_DECAY_IN_SCAN=False"]) == 0
    assert seen == [False] and dc.SEGMENT_DECAY_IN_SCAN is True
    assert "switches set: kernels.diag.chunk.SEGMENT_DECAY_IN_SCAN=False" in (tmp_path / "gpu_check.md").read_text()


def test_a_bad_setting_is_refused(capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--set", "kernels.diag.chunk.NO_SUCH_SWITCH=1"])
    err = capsys.readouterr().err
    assert "--set:" in err and "kernels.diag.chunk has no NO_SUCH_SWITCH" in err


def test_unequal_rows_check_every_mixer_with_k_unlike_v(tmp_path, monkeypatch):
    """--only unequal: each mixer, chunked and recurrent, at each (K, V) of UNEQUAL_DIMS and dtype, with
    those head dims passed to the check (every other row has K = V)."""
    _fake_checks(monkeypatch, broken=None)
    seen = []
    real = gpu_check.check

    def check(name, opts, dtype, form, B, T, H, K, V):
        seen.append((name, form, K, V))
        return real(name, opts, dtype, form, B, T, H, K, V)
    monkeypatch.setattr(gpu_check, "check", check)
    assert gpu_check.main(["--only", "unequal", "--dtypes", "bfloat16", "--out", str(tmp_path)]) == 0
    want = {(n, f, K, V) for n, _ in gpu_check.UNEQUAL_MIXERS for f in ("chunked", "recurrent")
            for K, V in gpu_check.UNEQUAL_DIMS}
    assert set(seen) == want and len(seen) == len(gpu_check.UNEQUAL_MIXERS) * 2 * len(gpu_check.UNEQUAL_DIMS)
    assert "titans" in {n for n, *_ in seen}
    assert any(K != V for *_, K, V in seen) and all(K != V for *_, K, V in seen)
    assert "| deltanet |  | chunked | 40, 24 | bfloat16 |" in (tmp_path / "gpu_check.md").read_text()


def test_the_unequal_check_passes_on_the_interpreter():
    """The K ≠ V rows' check itself on the CPU (fp32): the kernels pass it where K ≠ V."""
    errs, ok = gpu_check.check("deltanet", {}, torch.float32, "chunked", 1, 70, 1, 40, 24, device="cpu")
    assert ok and errs["o"] < 1e-5


def test_unequal_rows_of_named_mixers_alone(tmp_path, monkeypatch):
    """--only unequal:NAME runs that mixer's K ≠ V rows and no other row."""
    _fake_checks(monkeypatch, broken=None)
    seen = []
    monkeypatch.setattr(gpu_check, "check", lambda name, opts, dtype, form, *dims: seen.append((name, dims))
                        or ({"o": 1e-7, "state": 2e-7, "grad": 3e-6, "worst_grad": "q"}, True))
    argv = ["--only", "unequal:longhorn,unequal:ttt_linear,unequal:titans", "--dtypes", "float32",
            "--out", str(tmp_path)]
    assert gpu_check.main(argv) == 0
    assert {n for n, _ in seen} == {"longhorn", "ttt_linear", "titans"}
    assert len(seen) == 3 * 2 * len(gpu_check.UNEQUAL_DIMS) and all(d[3] != d[4] for _, d in seen)
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| ttt_linear |  | chunked | 40, 24 | float32 | 1.0e-07 |" in md and md.rstrip().endswith("0 failing rows")
