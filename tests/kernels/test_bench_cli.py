"""The GPU benchmark's command line: argument checks, and --render, which needs no GPU."""

import csv

import pytest
import torch

from kernels import bench

FIELDS = ["op", "impl", "mode", "T", "B", "ms", "peak_GiB", "floor_ms"]


def _write(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        w.writerows(rows)
    return str(path)


@pytest.mark.parametrize("flag,value", [("--impls", "ours,flash"), ("--ops", "gla"), ("--modes", "fwd,bwd")])
def test_unknown_names_are_refused(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main([flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"{flag}: unknown {value.split(',')[-1]}" in err and "choose from" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_timing_without_cuda_says_why(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--ops", "key", "--impls", "ours"])
    assert e.value.code == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_render_merges_runs_later_cells_win(tmp_path):
    """A later run's cell replaces an earlier one's; cells it does not have stay; errors become notes."""
    a = _write(tmp_path / "a.csv", [["GLA", "ours", "fwd", 4096, 8, "2.9", 1.7, 0.13],
                                    ["GLA", "fla", "fwd", 4096, 8, "1.4", 1.6, 0.13],
                                    ["GLA", "fla", "fwd+bwd", 1024, 32, "error: refused", "", 0.13]])
    b = _write(tmp_path / "b.csv", [["GLA", "ours", "fwd", 4096, 8, "1.1", 1.7, 0.13],
                                    ["GLA", "ours", "fwd", 1024, 32, "1.0", 1.7, 0.13]])
    assert bench.main(["--render", f"{a},{b}", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "kernel_bench.md").read_text()
    assert "| ours | fwd | 1.0 | 1.1 |" in md            # b's cells, T sorted
    assert "| fla | fwd | — | 1.4 |" in md               # a's cell kept, a gap where none ran
    assert "failed [e1]" in md and "[e1] error: refused" in md
    merged = list(csv.DictReader(open(tmp_path / "kernel_bench.csv")))
    assert {(r["impl"], r["mode"], r["T"], r["ms"]) for r in merged} == {
        ("ours", "fwd", "4096", "1.1"), ("fla", "fwd", "4096", "1.4"),
        ("fla", "fwd+bwd", "1024", "error: refused"), ("ours", "fwd", "1024", "1.0")}


def test_render_marks_fwd_bwd_timed_before_grads_were_cleared(tmp_path):
    """A fwd+bwd cell from a run named before GRADS_CLEARED_SINCE is marked † with a note; the same
    cell re-timed by a later run is not, nor a forward or a failed cell of the old run."""
    a = _write(tmp_path / "2026-12-01_1200_old.csv", [["DeltaNet", "fla", "fwd+bwd", 1024, 32, "2.9", 2.9, 0.13],
                                                      ["DeltaNet", "fla", "fwd+bwd", 4096, 8, "3.0", 2.9, 0.13],
                                                      ["DeltaNet", "fla", "fwd", 4096, 8, "1.0", 1.4, 0.13],
                                                      ["DeltaNet", "ours", "fwd+bwd", 1024, 32, "error: x", "", 0.13]])
    b = _write(tmp_path / "2026-12-02_0215_new.csv", [["DeltaNet", "fla", "fwd+bwd", 4096, 8, "2.7", 2.9, 0.13]])
    assert bench.main(["--render", f"{a},{b}", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "kernel_bench.md").read_text()
    assert "| fla | fwd+bwd | 2.9† | 2.7 |" in md
    assert "| fla | fwd | — | 1.0 |" in md and "| ours | fwd+bwd | failed [e1] | — |" in md
    assert f"† a run before {bench.GRADS_CLEARED_SINCE}" in md
    md_new = bench.render([str(b)], [])
    assert "†" not in md_new
    merged = {(r["T"], r["mode"], r["impl"]): r["run"] for r in csv.DictReader(open(tmp_path / "kernel_bench.csv"))}
    assert merged[("1024", "fwd+bwd", "fla")] == "2026-12-01_1200_old"
    assert merged[("4096", "fwd+bwd", "fla")] == "2026-12-02_0215_new"


def test_render_puts_graph_forwards_between_fwd_and_fwd_bwd(tmp_path):
    """The CUDA-graph forward ("fwd graph") of each implementation gets its own row, after its plain
    forward and before its forward + backward; a run without it shows none."""
    a = _write(tmp_path / "a.csv", [["DeltaNet", "ours", "fwd+bwd", 1024, 32, "2.4", 3.2, 0.13],
                                    ["DeltaNet", "ours", "fwd graph", 1024, 32, "0.31", "None", 0.13],
                                    ["DeltaNet", "ours", "fwd", 1024, 32, "0.49", 0.9, 0.13],
                                    ["DeltaNet", "fla", "fwd", 1024, 32, "1.0", 1.4, 0.13]])
    assert bench.main(["--render", a, "--out", str(tmp_path)]) == 0
    md = (tmp_path / "kernel_bench.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ours |") or line.startswith("| fla |")]
    assert rows == ["| ours | fwd | 0.49 | 0.9 |", "| ours | fwd graph | 0.31 |  |", "| ours | fwd+bwd | 2.4 | 3.2 |",
                    "| fla | fwd | 1.0 | 1.4 |"]
    assert "fwd graph: of the forward's replays from a CUDA graph" in md


def _render_decode_runs(tmp_path, runs: dict) -> str:
    """kernel_bench.md rendered from decode CSVs, one per run: {name: (header, row)}."""
    for name, (header, row) in runs.items():
        with open(tmp_path / f"{name}.csv", "w", newline="") as f:
            csv.writer(f).writerows([header, row])
    paths = ",".join(str(tmp_path / f"{name}.csv") for name in runs)
    assert bench.main(["--render", paths, "--out", str(tmp_path)]) == 0
    return (tmp_path / "kernel_bench.md").read_text()


def test_render_lists_every_decode_run_by_name(tmp_path):
    """Decode rows are not merged: each run's rows stay, under the name of the CSV they came from."""
    header = ["op", "ours step (compile)", "state floor"]
    md = _render_decode_runs(tmp_path, {name: (header, ["decode step B=64 (mamba2)", ms, "0.0316"])
                                        for name, ms in (("1310_decode", "0.039"), ("1815_decode", "0.102"))})
    assert "| run | op | ours step (compile) | state floor |" in md
    assert "| 1310_decode | decode step B=64 (mamba2) | 0.0390 | 0.0316 |" in md
    assert "| 1815_decode | decode step B=64 (mamba2) | 0.1020 | 0.0316 |" in md


def test_render_takes_every_decode_runs_columns(tmp_path):
    """A later run with more columns (the CUDA-graph timings) keeps them; an earlier run's rows show
    "—" under columns it did not have."""
    md = _render_decode_runs(tmp_path, {
        "1915_decode": (["op", "ours step (compile)", "state floor"], ["decode step B=64 (mamba2)", "0.04", "0.0318"]),
        "2200_decode": (["op", "ours step (compile)", "ours raw kernel (CUDA graph)", "state floor"],
                        ["decode step B=64 (mamba2)", "0.07", "0.035", "0.0318"])})
    assert "| run | op | ours step (compile) | state floor | ours raw kernel (CUDA graph) |" in md
    assert "| 1915_decode | decode step B=64 (mamba2) | 0.0400 | 0.0318 | — |" in md
    assert "| 2200_decode | decode step B=64 (mamba2) | 0.0700 | 0.0318 | 0.0350 |" in md


def test_ours_fused_turns_the_one_pass_forward_on_for_its_call(count_launches):
    import kernels.diag.chunk as dc

    launches = count_launches(dc, "_fused_fwd_kernel")
    assert bench._ours_fused("softmax") is None
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 70, 2, 16, generator=gen) for _ in range(3))
    g = -torch.nn.functional.softplus(torch.randn(1, 70, 2, generator=gen))
    fused = bench._ours_fused("scalar")(q=q, k=k, v=v, g=g)
    assert len(launches) == 1 and dc.FUSED_FORWARD is None   # back to the default rule
    two_pass = bench._ours("scalar")(q=q, k=k, v=v, g=g)
    assert len(launches) == 1
    assert ((fused - two_pass).norm() / two_pass.norm()).item() < 1e-5


def test_ours_fused_key_runs_the_key_wise_one_pass(count_launches):
    """GLA's one pass follows the scalar module's switch (forward without autograd, as benchmarked)."""
    import kernels.diag.chunk as dc
    import kernels.diag.chunk_key as ck

    launches = count_launches(ck, "_fused_fwd_kernel")
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 70, 2, 16, generator=gen) for _ in range(3))
    gk = torch.nn.functional.logsigmoid(torch.randn(1, 70, 2, 16, generator=gen)) / 16
    with torch.no_grad():
        fused = bench._ours_fused("key")(q=q, k=k, v=v, gk=gk)
        assert len(launches) == 1 and dc.FUSED_FORWARD is None
        two_pass = bench._ours("key")(q=q, k=k, v=v, gk=gk)
    assert len(launches) == 1
    assert ((fused - two_pass).norm() / two_pass.norm()).item() < 1e-5


@pytest.mark.parametrize("ops,decode,chunked", [("decode", True, False), ("scalar", False, True),
                                                ("scalar,decode", True, True)])
def test_decode_is_a_kind_of_its_own(tmp_path, monkeypatch, ops, decode, chunked):
    """--ops decode times the decoding step alone (a run cut short by a budget no longer has to get
    through every chunked kind first); without it no decode runs. GPU calls faked on the CPU."""
    calls = []
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench.torch.cuda, "get_device_name", lambda *a: "fake GPU")
    monkeypatch.setattr(bench, "copy_bandwidth", lambda: 4e12)
    monkeypatch.setattr(bench, "_inputs", lambda B, T, kind, grad=True: {})
    monkeypatch.setattr(bench, "_time", lambda fn, inp, backward: (calls.append("time") or 1.0, 0.5))
    monkeypatch.setattr(bench, "decode_bench", lambda rows, bw: calls.append("decode") or rows.append(
        {"op": "decode step B=64 (mamba2)", "ours step (compile)": 0.04, "state floor": 0.03}))
    assert bench.main(["--ops", ops, "--impls", "ours", "--Ts", "1024", "--out", str(tmp_path)]) == 0
    assert ("decode" in calls) == decode and ("time" in calls) == chunked
    md = (tmp_path / "kernel_bench.md").read_text()
    assert ("## Decode step" in md) == decode and ("## mamba2" in md) == chunked
    assert (tmp_path / "decode.csv").exists() == decode and (tmp_path / "kernel_bench.csv").exists() == chunked


def test_switches_put_module_attributes_back_even_on_error():
    import kernels.delta.chunk as C

    with pytest.raises(RuntimeError):
        with bench.switches([(C, "UT_POWERS", False), (C, "FUSED_FORWARD", True)]):
            assert C.UT_POWERS is False and C.FUSED_FORWARD is True
            raise RuntimeError("mid-run")
    assert C.UT_POWERS is True and C.FUSED_FORWARD is None


def test_ours_fused_delta_takes_segments_where_the_scan_has_few_programs(monkeypatch, count_launches):
    """The delta rule's forced one pass runs over segments where its scan has too few programs (here
    1000 SMs stood in), and the switches are the module's again afterwards."""
    import kernels.delta.chunk as C

    monkeypatch.setattr(C, "FUSED_MIN_PROGRAMS", 1000)
    chains = count_launches(C, "_segment_chain_kernel")
    gen = torch.Generator().manual_seed(2)
    q, v = (torch.randn(1, 200, 2, 16, generator=gen) for _ in range(2))
    k = torch.nn.functional.normalize(torch.randn(1, 200, 2, 16, generator=gen), dim=-1)
    beta = torch.rand(1, 200, 2, generator=gen)
    with torch.no_grad():
        seg = bench._ours_fused("delta")(q=q, k=k, v=v, beta=beta)
        assert len(chains) == 1 and C.SEGMENTS is None and C.FUSED_FORWARD is None
        two_pass = bench._ours("delta")(q=q, k=k, v=v, beta=beta)
    assert len(chains) == 1
    assert ((seg - two_pass).norm() / two_pass.norm()).item() < 1e-5


@pytest.mark.parametrize("backward", [True, False])
def test_time_resets_gradients_between_calls(monkeypatch, backward):
    """fwd+bwd is timed with every input's gradient set to None before each call (no adds into .grad
    from the call before, as after a training step's zero_grad); the forward alone resets nothing."""
    import triton.testing

    seen = {}

    def fake_bench(run, warmup, rep, grad_to_none=None):
        seen["grad_to_none"] = grad_to_none
        run()
        return 1.0
    monkeypatch.setattr(triton.testing, "do_bench", fake_bench)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: None)
    inp = {"q": torch.randn(2, 3, requires_grad=backward), "k": torch.randn(2, 3, requires_grad=backward)}
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 48)   # the two inputs' 48 bytes
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 48)
    assert bench._time(lambda q, k: q * k, inp, backward) == (1.0, 48 / 2 ** 30)
    if backward:
        assert [t is inp[n] for n, t in zip(inp, seen["grad_to_none"])] == [True, True]
    else:
        assert seen["grad_to_none"] is None


def test_peak_memory_leaves_out_what_was_held_before(monkeypatch):
    """The peak column counts the inputs and what the call allocates, not tensors an earlier row left
    allocated (e.g. an error's frames)."""
    import triton.testing

    held, call = 3 * 2 ** 30, 2 ** 30    # 3 GiB left from before; the call itself peaks 1 GiB above
    inp = {"q": torch.randn(4, 8)}        # 128 bytes
    monkeypatch.setattr(triton.testing, "do_bench", lambda run, warmup, rep, grad_to_none=None: 2.0)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: held + 128)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: held + 128 + call)
    ms, peak = bench._time(lambda q: q, inp, False)
    assert ms == 2.0 and peak == (128 + call) / 2 ** 30
