"""The GPU sweep tool refuses clearly where there is no GPU."""

import itertools

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


def test_sweep_rejects_unknown_impl(capsys):
    with pytest.raises(SystemExit) as e:
        sweep.main(["profile", "--impls", "ours,mamba"])
    assert e.value.code == 2
    assert "--impls: unknown ['mamba']" in capsys.readouterr().err


def test_profile_skips_the_impls_not_asked_for(monkeypatch, capsys):
    called = []
    monkeypatch.setattr(sweep.bench, "_ours", lambda kind: lambda **inp: called.append("ours"))
    monkeypatch.setattr(sweep.bench, "_fla", lambda kind: lambda **inp: called.append("fla"))
    monkeypatch.setattr(sweep.bench, "_inputs", lambda B, T, kind, dtype=None, grad=True: {})
    monkeypatch.setattr(sweep, "kernel_times", lambda fn, inp, backward: fn(**inp) or {"_k": 1.0})
    monkeypatch.setattr(sweep.bench, "_time", lambda fn, inp, backward: (1.0, None))
    sweep.profile(["scalar"], 4096, ("ours",))
    assert called == ["ours", "ours"]   # forward, forward + backward; fla never run
    assert "scalar ours fwd T=4096" in capsys.readouterr().out
    called.clear()
    sweep.profile(["scalar"], 4096, ("ours",), modes=("fwd",))
    assert called == ["ours"]
    assert "fwd+bwd" not in capsys.readouterr().out


def test_sweep_rejects_unknown_mode(capsys):
    with pytest.raises(SystemExit) as e:
        sweep.main(["profile", "--modes", "fwd,bwd"])
    assert e.value.code == 2
    assert "--modes: unknown ['bwd']" in capsys.readouterr().err


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
    monkeypatch.setattr(sweep.bench, "_inputs", lambda B, T, kind, dtype=None, grad=True: {})
    before = dict(dc.LAUNCH["fused_fwd"]), dc.FUSED_BV
    sweep.launch(["scalar"], 4096, ["fused_fwd", "state"])
    fused_runs = [s for s in seen if s[0] is True]
    assert len(fused_runs) == 3 * 3 * 4 and {s[1] for s in fused_runs} == {16, 32, 64, 128}
    assert [s for s in seen if s[0] is not True] and all(s[0] is False for s in seen if s[0] is not True)
    assert dc.FUSED_FORWARD is None and (dict(dc.LAUNCH["fused_fwd"]), dc.FUSED_BV) == before
    assert "warps 2/stages 1/BV 128" in capsys.readouterr().out   # the fastest of the fake timings


def test_key_sweep_times_its_one_pass_without_autograd(monkeypatch, capsys):
    """The key-wise one pass (no backward) is timed in a forward without autograd, with the scalar
    module's switches forced on and put back; the other key kernels with a backward: the gate kernel
    under the default rule (the pass, as it runs), the four-kernel forward's own with the pass off."""
    import kernels.diag.chunk as dc
    import kernels.diag.chunk_key as ck

    seen = []

    def fake_times(fn, inp, backward, iters):
        seen.append((backward, torch.is_grad_enabled(), dc.FUSED_FORWARD, dc.FUSED_BV,
                     ck.LAUNCH["fused_fwd"]["num_warps"]))
        return {"_fused_fwd_kernel": 1.0 + dc.FUSED_BV / 1000, "_gate_kernel": 1.0}

    monkeypatch.setattr(sweep, "kernel_times", fake_times)
    monkeypatch.setattr(sweep.bench, "_inputs", lambda B, T, kind, dtype=None, grad=True: {})
    before = dict(ck.LAUNCH["fused_fwd"]), dc.FUSED_BV
    sweep.launch(["key"], 4096, ["fused_fwd", "gate", "scores"])
    one = [s for s in seen if s[2]]
    assert len(one) == 36 and all(s[:2] == (False, False) for s in one) and {s[3] for s in one} == {16, 32, 64, 128}
    assert [s[:3] for s in seen if not s[2]] == [(True, True, None)] * 9 + [(True, True, False)] * 9
    assert dc.FUSED_FORWARD is None and (dict(ck.LAUNCH["fused_fwd"]), dc.FUSED_BV) == before
    assert "key fused_fwd" in capsys.readouterr().out


def test_key_sweep_of_the_segments_state_launch_reads_the_state_kernel(monkeypatch, capsys):
    """LAUNCH["segment_state"] has no kernel of its own name: its candidates reach that entry and are
    timed by the state kernel of a forward without autograd under the default rule."""
    import kernels.diag.chunk as dc
    import kernels.diag.chunk_key as ck

    seen = []

    def fake_times(fn, inp, backward, iters):
        seen.append((backward, dc.FUSED_FORWARD, ck.LAUNCH["segment_state"]))
        return {"_state_kernel": ck.LAUNCH["segment_state"]["num_warps"] + ck.LAUNCH["segment_state"]["num_stages"]}

    monkeypatch.setattr(sweep, "kernel_times", fake_times)
    monkeypatch.setattr(sweep.bench, "_inputs", lambda B, T, kind, dtype=None, grad=True: {})
    before = dict(ck.LAUNCH["segment_state"])
    sweep.launch(["key"], 32768, ["segment_state"])
    assert len(seen) == 9 and all(s[:2] == (False, None) for s in seen)
    assert {(s[2]["num_warps"], s[2]["num_stages"]) for s in seen} == {(w, n) for w in (2, 4, 8) for n in (1, 2, 3)}
    assert dict(ck.LAUNCH["segment_state"]) == before
    out = capsys.readouterr().out
    assert "key segment_state" in out and "warps 2/stages 1: 3.000" in out and "nan" not in out


def test_scalar_sweep_of_the_segments_state_launch_reads_the_state_kernel(monkeypatch, capsys):
    """The scalar family's LAUNCH["segment_state"] (its segments' states from zero, apart from the
    two-pass state kernel's "state") is timed, as the key-wise one's, by the state kernel of a forward
    without autograd under the default rule; "state" by the two-pass forward before a backward."""
    import kernels.diag.chunk as dc

    seen = []

    def fake_times(fn, inp, backward, iters):
        seen.append((backward, dc.FUSED_FORWARD, dict(dc.LAUNCH["segment_state"]), dict(dc.LAUNCH["state"])))
        return {"_state_kernel": 1.0}

    monkeypatch.setattr(sweep, "kernel_times", fake_times)
    monkeypatch.setattr(sweep.bench, "_inputs", lambda B, T, kind, dtype=None, grad=True: {})
    before = dict(dc.LAUNCH["segment_state"]), dict(dc.LAUNCH["state"])
    sweep.launch(["scalar"], 32768, ["segment_state", "state"])
    segs, twos = [s for s in seen if not s[0]], [s for s in seen if s[0]]
    assert len(segs) == len(twos) == 9 and all(s[:2] == (False, None) and s[3] == before[1] for s in segs)
    assert all(s[:2] == (True, False) and s[2] == before[0] for s in twos)
    assert {(s[2]["num_warps"], s[2]["num_stages"]) for s in segs} == {(w, n) for w in (2, 4, 8) for n in (1, 2, 3)}
    assert (dict(dc.LAUNCH["segment_state"]), dict(dc.LAUNCH["state"])) == before
    assert "scalar segment_state" in capsys.readouterr().out


def test_step_sweep_times_every_tile_and_restores_the_default(monkeypatch, capsys):
    """Each (BV, num_warps) of STEP_GRID reaches the step kernel's launch; the block choice is
    restored afterwards. Run on the CPU with a fake timer and small shapes."""
    import triton.testing

    import dsf
    import kernels.delta.recurrent as delta_rec
    import kernels.diag.recurrent as diag_rec

    H, D = 2, 16
    monkeypatch.setattr(sweep.bench, "H", H)
    monkeypatch.setattr(sweep.bench, "D", D)
    names = {"scalar": "mamba2", "gdn": "gated_deltanet"}
    monkeypatch.setattr(sweep.bench, "_inputs", lambda B, T, kind, grad=False: dsf.random_inputs(
        names[kind], B, T, H, D, D, dtype=torch.float32, seed=0))
    seen = []
    launches = {}
    for mod in (diag_rec, delta_rec):
        kernel = mod._fwd_kernel

        class Recorder:
            def __getitem__(self, grid, kernel=kernel, mod=mod):
                def launch(*a, **kw):
                    launches.setdefault(mod.__name__, []).append((kw["BV"], kw["num_warps"]))
                    return kernel[grid](*a, **kw)
                return launch
        monkeypatch.setattr(mod, "_fwd_kernel", Recorder())

    def fake_bench(fn):
        fn()
        seen.append(1)
        return 1.0 / (1 + len(seen))   # later configs "faster"
    monkeypatch.setattr(triton.testing, "do_bench", fake_bench)
    before = diag_rec._step_blocks, delta_rec._blocks
    sweep.step(["scalar", "gdn"], B=2, device="cpu")
    n = len(sweep.STEP_GRID["BV"]) * len(sweep.STEP_GRID["num_warps"])
    assert len(seen) == 2 * n
    for mod in (diag_rec, delta_rec):
        assert len(set(launches[mod.__name__])) == n   # every (BV, num_warps) was launched
    assert (diag_rec._step_blocks, delta_rec._blocks) == before
    out = capsys.readouterr().out
    assert "step mamba2 B=2" in out and "step gated_deltanet B=2" in out


@pytest.mark.parametrize("bad,says", [
    ("kernels.delta.chunk.UT_POWERS", "expected MODULE.NAME=VALUE"),
    ("torch.FOO=1", "expected MODULE.NAME=VALUE"),
    ("kernels.delta.chunk.NOPE=1", "kernels.delta.chunk has no NOPE"),
    ("kernels.nope.X=1", "no module kernels.nope"),
    ("kernels.delta.chunk.UT_POWERS=maybe", "is not a Python literal"),
    ("kernels.delta.chunk.UT_POWERS[x]=1", "is a bool, not a dict"),
    ("kernels.delta.chunk.LAUNCH[]=1", "expected MODULE.NAME=VALUE"),
])
def test_set_rejects_bad_switches(capsys, bad, says):
    with pytest.raises(SystemExit) as e:
        sweep.main(["profile", "--set", bad])
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_set_applies_switches_for_the_run_only(monkeypatch):
    """--set reaches the module while the command runs and is put back after (here: profile, faked)."""
    import kernels.delta.chunk as C
    import kernels.diag.chunk as dc

    seen = []
    monkeypatch.setattr(sweep.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(sweep, "profile", lambda ops, T, impls, dtype=None, modes=None:
                        seen.append((ops, T, C.UT_POWERS, dc.FAST_PAIRS)))
    assert sweep.main(["profile", "--ops", "delta", "--T", "1024", "--set", "kernels.delta.chunk.UT_POWERS=False",
                       "--set", "kernels.diag.chunk.FAST_PAIRS=True"]) == 0
    assert seen == [(["delta"], 1024, False, True)]
    assert C.UT_POWERS is True and dc.FAST_PAIRS is None


def test_profile_times_the_forward_without_autograd(monkeypatch, capsys):
    """The forward is profiled as the benchmark times it (inputs without grad, under no_grad); the
    forward + backward with grad."""
    calls = []

    def fake_inputs(B, T, kind, dtype=None, grad=True):
        return {"x": torch.ones(2, requires_grad=grad)}

    def fake_times(fn, inp, backward, iters=5):
        calls.append((backward, inp["x"].requires_grad, torch.is_grad_enabled()))
        return {"_k": 1.0}

    monkeypatch.setattr(sweep.bench, "_inputs", fake_inputs)
    monkeypatch.setattr(sweep.bench, "_ours", lambda kind: lambda x: x * 2)
    monkeypatch.setattr(sweep.bench, "_fla", lambda kind: None)
    monkeypatch.setattr(sweep, "kernel_times", fake_times)
    monkeypatch.setattr(sweep.bench, "_time", lambda fn, inp, backward: (fn(**inp), 0.5, None)[1:])
    sweep.profile(["scalar"], 4096)
    assert calls == [(False, False, False), (True, True, True)]
    assert "== scalar ours fwd T=4096: 0.500 ms wall" in capsys.readouterr().out


def test_delta_sweep_sets_each_candidate_and_restores_the_module(monkeypatch, capsys):
    """Each candidate of DELTA_GRID reaches the kernels through LAUNCH (the one-pass scan with
    FUSED_FORWARD on for "state_out" only, timed in a forward without autograd, the others with a
    backward); afterwards LAUNCH and FUSED_FORWARD are the module's again."""
    import kernels.delta.chunk as C

    seen, modes = [], []

    def fake_times(fn, inp, backward, iters):
        seen.append((dict(C.LAUNCH.get("ut", {})), dict(C.LAUNCH.get("state_out", {})), C.FUSED_FORWARD))
        modes.append((backward, torch.is_grad_enabled(), inp["grad"]))
        return {"_ut_kernel": C.LAUNCH["ut"]["num_warps"], "_state_kernel": C.LAUNCH.get("state_out", {}).get("BV", 0)}

    monkeypatch.setattr(sweep, "kernel_times", fake_times)
    monkeypatch.setattr(sweep.bench, "_inputs", lambda B, T, kind, grad: {"grad": grad})
    monkeypatch.setattr(C, "_few", lambda *a: False)
    before, before_dict = C.LAUNCH, dict(C.LAUNCH)
    sweep.launch_delta("delta", 4096, ["ut", "state_out"])
    grid = sweep.DELTA_GRID
    n_ut, n_out = (len(list(itertools.product(*grid[k].values()))) for k in ("ut", "state_out"))
    ut_runs, out_runs = seen[:n_ut], seen[n_ut:]
    assert len(out_runs) == n_out
    assert set(modes[:n_ut]) == {(True, True, True)} and set(modes[n_ut:]) == {(False, False, False)}
    assert {(u["num_warps"], u["num_stages"]) for u, _, _ in ut_runs} == set(
        itertools.product(grid["ut"]["num_warps"], grid["ut"]["num_stages"]))
    assert all(f is False for _, _, f in ut_runs) and all(f is True for _, _, f in out_runs)
    assert {o["BV"] for _, o, _ in out_runs} == set(grid["state_out"]["BV"])
    assert C.LAUNCH is before and C.LAUNCH == before_dict and C.FUSED_FORWARD is None
    assert "delta T=4096 ut" in capsys.readouterr().out


def test_delta_sweep_reads_the_chain_under_its_kernel_name(monkeypatch, capsys):
    """The chain's candidates reach _segment_chain_kernel through LAUNCH["chain"] and are ranked by
    that kernel's profiled time; the one pass (inside which the segments run) is left as it is, not
    switched off as for the separate state and output kernels; LAUNCH is back afterwards."""
    import kernels.delta.chunk as C

    before = C.LAUNCH["chain"]

    def fake_times(fn, inp, backward, iters):
        assert C.FUSED_FORWARD is None
        cfg = C.LAUNCH["chain"]
        return {"_segment_chain_kernel": cfg["BR"] + cfg["BV"] / 100 + cfg["num_warps"] / 1e4 + cfg["num_stages"] / 1e6}

    monkeypatch.setattr(sweep, "kernel_times", fake_times)
    monkeypatch.setattr(sweep.bench, "_inputs", lambda B, T, kind, dtype=None, grad=True: {})
    monkeypatch.setattr(C, "_few", lambda *a: True)
    sweep.launch_delta("delta", 32768, ["chain"])
    out = capsys.readouterr().out
    assert f"delta T=32768 chain (now {before}): 16.160 {{'BR': 16, 'BV': 16, 'num_warps': 2, 'num_stages': 1}}" in out
    assert C.LAUNCH["chain"] is before


def test_ab_alternates_the_defaults_and_the_switches_in_one_process(monkeypatch, capsys):
    """sweep ab: default then --set, round after round, each timed by the benchmark's own _time,
    after a first round whose (slow) times are dropped; the medians and their ratio printed; the
    switch back to its default afterwards."""
    import kernels.diag.chunk as dc

    seen = []

    def fake_time(fn, inp, backward):
        seen.append((dc.FUSED_MIN_PROGRAMS, backward, torch.is_grad_enabled()))
        first = len(seen) <= 2 or 6 < len(seen) <= 8   # each mode's first round
        return (0.5 if dc.FUSED_MIN_PROGRAMS is None else 0.4) + backward + 9 * first, None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(sweep.bench, "_ours", lambda kind: lambda **inp: None)
    monkeypatch.setattr(sweep.bench, "_inputs", lambda B, T, kind, dtype=None, grad=True: {})
    monkeypatch.setattr(sweep.bench, "_time", fake_time)
    assert sweep.main(["ab", "--ops", "scalar", "--T", "8192", "--rounds", "2",
                       "--set", "kernels.diag.chunk.FUSED_MIN_PROGRAMS=128"]) == 0
    assert seen == [(None, False, False), (128, False, False)] * 3 + [(None, True, True), (128, True, True)] * 3
    assert dc.FUSED_MIN_PROGRAMS is None
    out = capsys.readouterr().out
    assert "== scalar fwd T=8192: default 0.500 ms, set 0.400 ms (set/default 0.800; rounds: default 0.500 / " \
           "0.500; set 0.400 / 0.400)" in out
    assert "== scalar fwd+bwd T=8192: default 1.500 ms, set 1.400 ms" in out


def test_ab_needs_switches(capsys):
    with pytest.raises(SystemExit) as e:
        sweep.main(["ab", "--ops", "scalar"])
    assert e.value.code == 2
    assert "ab: give the switches to compare" in capsys.readouterr().err


def test_set_one_entry_of_a_dict_switch():
    """MODULE.NAME[KEY]=VALUE replaces one entry of a dict switch and keeps the others; a second entry
    of the same table builds on the first; the module's own dict is untouched."""
    import kernels.delta.chunk as C

    before = dict(C.LAUNCH)
    got = sweep.parse_settings(["kernels.delta.chunk.LAUNCH[chain]={'BR': 16, 'BV': 32}",
                                "kernels.delta.chunk.LAUNCH[ut]={'num_warps': 2}"])
    assert [(m, a) for m, a, _ in got] == [(C, "LAUNCH"), (C, "LAUNCH")]
    final = got[-1][2]
    assert final["chain"] == {"BR": 16, "BV": 32} and final["ut"] == {"num_warps": 2}
    assert {k: v for k, v in final.items() if k not in ("chain", "ut")} == {
        k: v for k, v in before.items() if k not in ("chain", "ut")}
    assert C.LAUNCH == before


def test_compile_check_takes_set_as_sweep_does(monkeypatch, capsys):
    """kernels.delta.compile_check --set: parsed as sweep parses it (a bad one refused before any
    compiling) and handed to each check."""
    import os

    import kernels.delta.chunk as C

    # its import drops TRITON_INTERPRET (it compiles for the GPU): put back for the tests after this one
    monkeypatch.setenv("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "1"))
    from kernels.delta import compile_check

    seen = []
    monkeypatch.setattr(compile_check, "check", lambda *a, settings=None, **kw: seen.append(settings) or [])
    assert compile_check.main(["--dtype", "bf16", "--K", "64",
                               "--set", "kernels.delta.chunk.SEGMENT_TRANSITIONS_IN_SCAN=True"]) == 0
    assert seen == [[(C, "SEGMENT_TRANSITIONS_IN_SCAN", True)]]
    with pytest.raises(SystemExit) as e:
        compile_check.main(["--set", "kernels.delta.chunk.NOPE=1"])
    assert e.value.code == 2 and "has no NOPE" in capsys.readouterr().err


def test_ab_and_profile_take_a_dtype(monkeypatch):
    """--dtype fp32 reaches the inputs of ab and profile (the benchmark's bf16 otherwise)."""
    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(sweep.bench, "_ours", lambda kind: lambda **inp: None)
    monkeypatch.setattr(sweep.bench, "_fla", lambda kind: None)
    monkeypatch.setattr(sweep.bench, "_inputs", lambda B, T, kind, dtype=torch.bfloat16, grad=True: seen.append(dtype) or {})
    monkeypatch.setattr(sweep.bench, "_time", lambda fn, inp, backward: (1.0, None))
    monkeypatch.setattr(sweep, "kernel_times", lambda fn, inp, backward: {"_k": 1.0})
    assert sweep.main(["ab", "--ops", "scalar", "--T", "8192", "--rounds", "1", "--dtype", "fp32",
                       "--set", "kernels.diag.chunk.FUSED_MIN_PROGRAMS=128"]) == 0
    assert sweep.main(["profile", "--ops", "key", "--impls", "ours", "--dtype", "fp32"]) == 0
    assert sweep.main(["profile", "--ops", "key", "--impls", "ours"]) == 0
    assert seen == [torch.float32] * 4 + [torch.bfloat16] * 2


@pytest.mark.parametrize("what,ops,message", [
    ("ab", "foo", "--ops: unknown ['foo'] for ab; known: scalar, key, delta, gdn, titans"),
    ("ab", "scalar,softmax", "unknown ['softmax']"), ("ab", ",", "--ops: unknown ','"),
    ("launch", "titans", "unknown ['titans'] for launch; known: scalar, key, delta, gdn"),
    ("step", "key", "unknown ['key'] for step; known: scalar, gdn")])
def test_unknown_ops_are_refused_before_the_gpu(what, ops, message, capsys):
    """--ops names the kinds to time; one it does not know, or one the subcommand has nothing to time
    for, is refused even where there is no GPU."""
    with pytest.raises(SystemExit):
        sweep.main([what, "--ops", ops, "--set", "kernels.diag.chunk.FUSED_BV=128"])
    assert message in capsys.readouterr().err


def test_scalar_sweep_of_the_forward_only_pass(monkeypatch, capsys):
    """LAUNCH["fused_fwd_only"] (the scalar one pass without a backward) is timed by the one-pass
    kernel in a forward without autograd, forced on, its candidates reaching that entry alone."""
    import kernels.diag.chunk as dc

    seen = []

    def fake_times(fn, inp, backward, iters):
        seen.append((backward, torch.is_grad_enabled(), dc.FUSED_FORWARD, dict(dc.LAUNCH["fused_fwd_only"]),
                     dict(dc.LAUNCH["fused_fwd"])))
        return {"_fused_fwd_kernel": dc.LAUNCH["fused_fwd_only"]["num_warps"] + dc.FUSED_BV / 1000}

    monkeypatch.setattr(sweep, "kernel_times", fake_times)
    monkeypatch.setattr(sweep.bench, "_inputs", lambda B, T, kind, dtype=None, grad=True: {})
    before = dict(dc.LAUNCH["fused_fwd_only"]), dict(dc.LAUNCH["fused_fwd"])
    sweep.launch(["scalar"], 4096, ["fused_fwd_only"])
    assert len(seen) == 36 and all(s[:3] == (False, False, True) for s in seen)
    assert {(s[3]["num_warps"], s[3]["num_stages"]) for s in seen} == {(w, n) for w in (2, 4, 8) for n in (1, 2, 3)}
    assert all(s[4] == before[1] for s in seen)
    assert (dict(dc.LAUNCH["fused_fwd_only"]), dict(dc.LAUNCH["fused_fwd"])) == before
    assert "scalar fused_fwd_only" in capsys.readouterr().out


def test_host_times_the_calls_while_the_gpu_is_held(monkeypatch, capsys, tmp_path):
    """sweep host: each mode's calls are timed (then timed with Triton's launch path apart, then
    profiled) after a GPU sleep is queued, so that the host never waits; the line gives host, kernel
    and wall ms, the next the launch path's share, then the profile's slowest functions, whose whole
    stats go into the dump folder; the forward runs without autograd and the forward + backward with it."""
    events = []

    def fake_inputs(B, T, kind, dtype=None, grad=True):
        return {"x": torch.ones(3, requires_grad=grad)}

    def op(x):
        events.append(("call", torch.is_grad_enabled()))
        return x * 2

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "_sleep", lambda cycles: events.append(("sleep", cycles)))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: events.append(("sync",)))
    monkeypatch.setattr(sweep.bench, "_inputs", fake_inputs)
    monkeypatch.setattr(sweep.bench, "_ours", lambda kind: op)
    monkeypatch.setattr(sweep, "kernel_times", lambda fn, inp, backward: {"_a": 0.25, "_b": 0.5})
    monkeypatch.setattr(sweep.bench, "_time", lambda fn, inp, backward: (0.8, None))
    out = sweep.host(["scalar"], 4096, calls=4, dump=str(tmp_path / "prof"))   # made if missing
    assert set(out) == {("scalar", "fwd"), ("scalar", "fwd+bwd")}
    assert all(k == 0.75 and w == 0.8 and h > 0 for h, k, w in out.values())
    want = ["call"] * 3 + (["sync", "sleep"] + ["call"] * 4) * 3 + ["sync"]
    for mode in (False, True):   # per mode: warm-up calls, then timed and profiled calls each behind a sleep
        seq, events[:] = events[:len(want)], events[len(want):]
        assert [e[0] for e in seq] == want, seq
        assert all(e[1] == mode for e in seq if e[0] == "call")
    assert not events
    text = capsys.readouterr().out
    assert "== scalar fwd T=4096: host " in text and "kernels 0.750 ms, wall 0.800 ms" in text
    assert "4x  op (test_sweep_cli.py" not in text and "1x  op (test_sweep_cli.py" in text   # per call
    assert text.count("   launches 0 a call: Triton's run 0.000 ms, of it the launcher 0.000") == 2   # none here
    assert sorted(f.name for f in (tmp_path / "prof").iterdir()) == ["host_scalar_fwd_T4096.prof",
                                                                    "host_scalar_fwd_bwd_T4096.prof"]


def test_launch_timers(monkeypatch):
    """sweep.launch_timers adds up the time in Triton's JITFunction.run and, inside it, in the compiled
    kernel's launcher, counts the launches, and puts both methods back afterwards."""
    import time

    from triton.backends.nvidia.driver import CudaLauncher
    from triton.runtime.jit import JITFunction

    monkeypatch.setattr(JITFunction, "run", lambda self: time.sleep(0.01) or CudaLauncher.__call__(None))
    monkeypatch.setattr(CudaLauncher, "__call__", lambda self: time.sleep(0.02))
    run, call = JITFunction.run, CudaLauncher.__call__
    with sweep.launch_timers() as acc:
        JITFunction.run(None)
        JITFunction.run(None)
    assert acc["launches"] == 2 and acc["run"] >= acc["launcher"] + 0.02 and acc["launcher"] >= 0.04
    assert (JITFunction.run, CudaLauncher.__call__) == (run, call)
