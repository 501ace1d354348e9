"""Where the GPU time goes: per-kernel profiles beside fla, and sweeps of launch settings (needs CUDA).

    python -m kernels.sweep profile [--ops scalar,key,delta] [--T 4096] [--impls ours,fla]
    python -m kernels.sweep launch  [--ops scalar,key,delta,gdn] [--T 4096] [--kernels dqkw,...]
    python -m kernels.sweep step    [--ops scalar,gdn]
    python -m kernels.sweep profile --ops delta --set kernels.delta.chunk.UT_POWERS=False   (an A/B run)
    python -m kernels.sweep ab      --ops scalar --T 8192 --set kernels.diag.chunk.FUSED_MIN_PROGRAMS=128
    python -m kernels.sweep host    --ops scalar --T 32768
    python -m kernels.sweep ab      --ops titans --dtype fp32 --set kernels.memory.chunk.EXACT_LOGS=False

``profile`` prints, for our chunked kernels and fla-core's, the wall time of forward and
forward + backward (``triton.testing.do_bench``) and each CUDA kernel's time from torch.profiler.
``launch`` times every kernel of the scalar (``kernels/diag/chunk.py``) and key-wise
(``kernels/diag/chunk_key.py``) chunked families under warps {2, 4, 8} x stages {1, 2, 3}, one
kernel at a time, and prints the fastest settings beside the ones in ``LAUNCH``; with ``--ops delta``
(or ``gdn``) it times the delta-rule kernels (``kernels/delta/chunk.py``) under the tiles, warps and
stages of ``DELTA_GRID`` (``--kernels`` picks some). ``step`` times the one-token decoding step
(``compile(...).step`` of Mamba-2 or Gated DeltaNet at the decode benchmark's B=64, state in place)
under every value tile and warp count of ``STEP_GRID``. ``--set MODULE.NAME=VALUE`` (repeatable)
sets one of the kernels' module switches (``UT_POWERS``, ``FAST_PAIRS``, ``FUSED_FORWARD``, …) for the
run, to time both sides of a choice. ``ab`` is the A/B that decides one: the defaults against the
``--set`` switches, alternating in one process for ``--rounds`` rounds (after one dropped), each timed
as the benchmark times it (``bench._time``) — kernel times and separate processes can disagree with
it where a path does more host work (kernels/results/experiments_2026-12-01_long.md §4). ``host``
measures that host work: ms of Python and launches a call with the GPU held busy, beside the kernels'
time and the wall time, Triton's launch path apart (``launch_timers``), and cProfile's slowest
functions (``--dump DIR`` keeps each case's whole stats). Shapes are the benchmark's: bf16, H=16,
K=V=128, B·T=32768; forwards run without autograd, as the benchmark's.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import itertools
import os
import time

import torch

from . import bench
from ._common import DTYPES


def one_call(fn, inp: dict, backward: bool):
    """A call as the benchmark times it: ``fn(**inp)`` and, with ``backward``, its backward, the inputs'
    gradients cleared first (as bench._time: no adds into .grad from the previous call)."""
    def run():
        for t in inp.values():
            t.grad = None
        o = fn(**inp)
        if backward:
            o.backward(torch.ones_like(o))
    return run


def our_cases(kinds: list[str], T: int, dtype: torch.dtype):
    """(kind, our op, backward, mode, the benchmark's inputs at T) for each kind's forward and forward +
    backward, the inputs made as each case is reached."""
    for kind in kinds:
        fn = bench._ours(kind)
        for backward in (False, True):
            yield kind, fn, backward, "fwd+bwd" if backward else "fwd", \
                bench._inputs(bench.TOKENS // T, T, kind, dtype, grad=backward)


def kernel_times(fn, inp: dict, backward: bool, iters: int = 5) -> dict[str, float]:
    """ms per call of each CUDA kernel that ``fn(**inp)`` (and its backward) launches."""
    run = one_call(fn, inp, backward)

    for _ in range(2):
        run()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            run()
        torch.cuda.synchronize()
    for t in inp.values():
        t.grad = None
    return {e.key: e.device_time_total / iters / 1e3 for e in prof.key_averages() if e.device_time_total > 0}


def profile(kinds: list[str], T: int, impls: tuple[str, ...] = ("ours", "fla"),
            dtype: torch.dtype = torch.bfloat16, modes: tuple[str, ...] = ("fwd", "fwd+bwd")) -> None:
    for kind in kinds:
        for impl, fn in (("ours", bench._ours(kind)), ("fla", bench._fla(kind))):
            if impl not in impls or fn is None:
                continue
            for mode in modes:
                backward = mode == "fwd+bwd"
                # the forward alone as the benchmark times it: no autograd (nothing kept for a backward)
                inp = bench._inputs(bench.TOKENS // T, T, kind, dtype, grad=backward)
                try:
                    with torch.set_grad_enabled(backward):
                        times = kernel_times(fn, inp, backward)
                        ms, _ = bench._time(fn, inp, backward)   # the call as the benchmark times it
                except Exception as e:  # noqa: BLE001 - a refused op is a line of the report
                    ms = f"{type(e).__name__}: {str(e)[:100]}"
                if isinstance(ms, str):
                    print(f"== {kind} {impl} {mode}: failed {ms}", flush=True)
                    continue
                total = sum(times.values())
                print(f"== {kind} {impl} {mode} T={T}: {ms:.3f} ms wall, kernels {total:.3f} ms", flush=True)
                for name, t in sorted(times.items(), key=lambda kv: -kv[1])[:12]:
                    print(f"   {t:8.3f} ms  {name[:90]}", flush=True)


KINDS = ("scalar", "key", "delta", "gdn", "titans")   # what --ops takes: bench's kinds of chunked mixer
ONLY = {"launch": ("scalar", "key", "delta", "gdn"), "step": ("scalar", "gdn")}   # the rest take every kind


def ab(kinds: list[str], T: int, switches: list, rounds: int = 3, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Our forward and forward + backward with the defaults ("default") and with ``switches``
    ("set"), alternating for ``rounds`` rounds in this process after one round whose times are
    dropped, each timed by the benchmark's own ``bench._time``; prints every kept round and the
    medians. Returns {(kind, mode): {side: [ms, ...]}}."""
    import statistics

    out = {}
    for kind, fn, backward, mode, inp in our_cases(kinds, T, dtype):
        times = out[kind, mode] = {"default": [], "set": []}
        # the first round of a process has read 10-30% slow on the H200 (clocks coming up from
        # idle: 0.490 then 0.441, 0.570 then 0.464 ms in experiments_2026-12-02c.md §5): dropped
        for r in range(rounds + 1):
            for side in times:
                with bench.switches(switches if side == "set" else []), \
                        torch.set_grad_enabled(backward):
                    ms, _ = bench._time(fn, inp, backward)
                if r:
                    times[side].append(ms if isinstance(ms, float) else float("nan"))
                if not isinstance(ms, float):
                    print(f"== {kind} {mode} T={T} {side}: {ms}", flush=True)
        med = {side: statistics.median(v) for side, v in times.items()}
        rounds_text = "; ".join(f"{side} " + " / ".join(f"{t:.3f}" for t in v) for side, v in times.items())
        print(f"== {kind} {mode} T={T}: default {med['default']:.3f} ms, set {med['set']:.3f} ms "
              f"(set/default {med['set'] / med['default']:.3f}; rounds: {rounds_text})", flush=True)
    return out


@contextlib.contextmanager
def launch_timers():
    """Seconds spent in Triton's launch path while active: ``run`` (all of JITFunction.run: binding
    the arguments, the cache lookup, the launch) and ``launcher`` (the compiled kernel's launcher
    alone), and the count of ``launches``."""
    from triton.backends.nvidia.driver import CudaLauncher
    from triton.runtime.jit import JITFunction

    acc = {"run": 0.0, "launcher": 0.0, "launches": 0}
    run0, call0 = JITFunction.run, CudaLauncher.__call__

    def timed(method, key: str, launches: int):
        def wrapper(self, *args, **kw):
            t0 = time.perf_counter()
            try:
                return method(self, *args, **kw)
            finally:
                acc[key] += time.perf_counter() - t0
                acc["launches"] += launches
        return wrapper

    JITFunction.run, CudaLauncher.__call__ = timed(run0, "run", 0), timed(call0, "launcher", 1)
    try:
        yield acc
    finally:
        JITFunction.run, CudaLauncher.__call__ = run0, call0


def host(kinds: list[str], T: int, dtype: torch.dtype = torch.bfloat16, calls: int = 20, top: int = 14,
         dump: str | None = None) -> dict:
    """Host time of our forward and forward + backward: ms of Python and launches per call, measured
    while the GPU is held busy (``torch.cuda._sleep``) so that the host never waits on it, beside the
    kernels' own time (torch.profiler) and the benchmark's wall time. Where the host time comes near
    the kernels' time the GPU idles between launches and the wall time is the host's. Prints cProfile's
    slowest functions of those calls too (the whole profiles into ``dump``, a folder, if given). Returns
    {(kind, mode): (host ms, kernels ms, wall ms)}."""
    import cProfile
    import pstats

    out = {}
    for kind, fn, backward, mode, inp in our_cases(kinds, T, dtype):
        run = one_call(fn, inp, backward)
        with torch.set_grad_enabled(backward):
            for _ in range(3):
                run()
            kernels_ms = sum(kernel_times(fn, inp, backward).values())
            wall, _ = bench._time(fn, inp, backward)
            torch.cuda.synchronize()
            # ~1 s of GPU sleep ahead of the calls: the launch queue never fills, the host never waits
            torch.cuda._sleep(2_000_000_000)
            t0 = time.perf_counter()
            for _ in range(calls):
                run()
            host_ms = (time.perf_counter() - t0) * 1e3 / calls
            torch.cuda.synchronize()
            torch.cuda._sleep(2_000_000_000)
            with launch_timers() as acc:
                for _ in range(calls):
                    run()
            torch.cuda.synchronize()
            torch.cuda._sleep(2_000_000_000)
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(calls):
                run()
            prof.disable()
            torch.cuda.synchronize()
        out[kind, mode] = (host_ms, kernels_ms, wall)
        print(f"== {kind} {mode} T={T}: host {host_ms:.3f} ms a call, kernels {kernels_ms:.3f} ms, "
              f"wall {wall if isinstance(wall, str) else f'{wall:.3f}'} ms", flush=True)
        n = acc["launches"] / calls
        print(f"   launches {n:.0f} a call: Triton's run {acc['run'] * 1e3 / calls:.3f} ms, of it the "
              f"launcher {acc['launcher'] * 1e3 / calls:.3f}; outside run {host_ms - acc['run'] * 1e3 / calls:.3f} "
              "(timers on: a little slower than the host figure)", flush=True)
        if dump:   # the whole profile, for pstats elsewhere
            os.makedirs(dump, exist_ok=True)
            prof.dump_stats(f"{dump}/host_{kind}_{mode.replace('+', '_')}_T{T}.prof")
        stats = pstats.Stats(prof)
        rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]   # by own time
        for (file, line, name), (_, calls_n, own, cum, _) in rows:
            print(f"   own {own * 1e3 / calls:7.4f} ms  cum {cum * 1e3 / calls:7.4f} ms  "
                  f"{calls_n // calls:4d}x  {name} ({file.rsplit('/', 2)[-1]}:{line})", flush=True)
    return out


def add_set_option(ap: argparse.ArgumentParser, what: str, example: str) -> None:
    """The ``--set MODULE.NAME=VALUE`` option (repeatable) that sweep, gpu_check and compile_check
    share; ``what`` says what the switches are set for, ``example`` shows one."""
    ap.add_argument("--set", action="append", default=[], metavar="MODULE.NAME=VALUE",
                    help=f"{what} with a kernels module switch set, e.g. {example}, or one entry of a dict "
                    "switch, e.g. \"kernels.delta.chunk.LAUNCH[chain]={'BV': 32}\" (repeatable)")


def settings_of(ap: argparse.ArgumentParser, args) -> list[tuple[object, str, object]]:
    """``args.set`` parsed (parse_settings), or the parser's usage error naming what is wrong."""
    try:
        return parse_settings(args.set)
    except ValueError as e:
        ap.error(f"--set: {e}")


def parse_settings(pairs: list[str]) -> list[tuple[object, str, object]]:
    """``MODULE.NAME=VALUE`` strings as (module, name, value): a module of ``kernels``, one of its
    existing UPPER_CASE switches, a Python literal. ``MODULE.NAME[KEY]=VALUE`` sets one entry of a
    dict switch (e.g. one kernel's launch settings in LAUNCH), the rest as they are. ValueError says
    what is wrong."""
    out = []
    for pair in pairs:
        name, eq, text = pair.partition("=")
        key = None
        if name.endswith("]") and "[" in name:
            name, _, key = name[:-1].partition("[")
        modname, _, attr = name.rpartition(".")
        if not eq or not modname.startswith("kernels.") or not attr.isupper() or key == "":
            raise ValueError(f"{pair!r}: expected MODULE.NAME=VALUE (or MODULE.NAME[KEY]=VALUE) with a kernels "
                             "module and an UPPER_CASE name")
        try:
            mod = importlib.import_module(modname)
        except ImportError as e:
            raise ValueError(f"{pair!r}: no module {modname} ({e})") from None
        if not hasattr(mod, attr):
            raise ValueError(f"{pair!r}: {modname} has no {attr}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"{pair!r}: {text!r} is not a Python literal (True, 2, None, ...)") from None
        if key is not None:
            table = getattr(mod, attr)
            if not isinstance(table, dict):
                raise ValueError(f"{pair!r}: {modname}.{attr} is a {type(table).__name__}, not a dict")
            # later entries of the same table build on earlier ones of this command line
            table = next((v for m, a, v in reversed(out) if m is mod and a == attr), table)
            value = {**table, key: value}
        out.append((mod, attr, value))
    return out


# The key-wise kernels that run only in the four-kernel forward (the one pass replaces them)
FOUR_KERNEL_FORWARD = ("state", "scores", "output")


def launch(kinds: list[str], T: int, names: list[str] | None = None) -> None:
    """Times each scalar/key kernel under every warps × stages setting (one kernel varied at a time;
    the one-pass forwards also under each value tile FUSED_BV). The one-pass forwards are forced on
    while they are timed (both families follow the scalar module's FUSED_FORWARD), the key-wise one in
    a forward without autograd. The scalar family's other kernels run with the one pass off (its
    default before a backward); the key-wise gate and backward kernels under the default rule, as
    they run (the pass, after the gate kernel and the strong chunks' scores), and only its
    four-kernel forward's own kernels (state, scores, output) with the pass off."""
    import kernels.diag.chunk as scalar_mod
    import kernels.diag.chunk_key as key_mod

    for kind, mod in (("scalar", scalar_mod), ("key", key_mod)):
        if kind not in kinds:
            continue
        base = mod.LAUNCH
        inputs = {}   # with and without gradients, each made once
        for name in base:
            if names and name not in names:
                continue
            one_pass = name in ("fused_fwd", "fused_fwd_only")
            # either family's segments' states from zero: the state kernel of a forward under the
            # default rule (at a T long enough for segments, the only state kernel it launches)
            segments = name in ("segment_state", "segment_state_whole")
            kernel = "state" if segments else "fused_fwd" if one_pass else name
            # (the scalar one pass before a backward, "fused_fwd", and without one, "fused_fwd_only")
            backward = not ((one_pass and kind == "key") or segments or name == "fused_fwd_only")
            rule = True if one_pass else None if segments or (kind == "key" and name not in FOUR_KERNEL_FORWARD) \
                else False
            if backward not in inputs:
                inputs[backward] = bench._inputs(bench.TOKENS // T, T, kind, grad=backward)
            res = []
            for nw, ns, bv in itertools.product((2, 4, 8), (1, 2, 3), (16, 32, 64, 128) if one_pass else (None,)):
                # a candidate's settings in a LAUNCH of their own, the module's put back afterwards
                with bench.switches([(mod, "LAUNCH", {**base, name: dict(num_warps=nw, num_stages=ns)}),
                                     (scalar_mod, "FUSED_FORWARD", rule),
                                     (scalar_mod, "FUSED_BV", bv or scalar_mod.FUSED_BV)]), \
                        torch.set_grad_enabled(backward):
                    try:
                        t = kernel_times(bench._ours(kind), inputs[backward], backward=backward, iters=3)
                        res.append((t.get(f"_{kernel}_kernel", float("nan")), nw, ns, bv))
                    except Exception:  # noqa: BLE001 - out of resources: not a candidate
                        res.append((float("inf"), nw, ns, bv))
            res.sort(key=lambda r: r[0])
            best = " ".join(f"warps {nw}/stages {ns}" + (f"/BV {bv}" if bv else "") + f": {t:.3f}"
                            for t, nw, ns, bv in res[:4])
            print(f"{kind} {name} (now {base[name]}): {best}; slowest {res[-1][0]:.3f} ms", flush=True)


# Candidate launch settings of the delta-rule kernels (kernels/delta/chunk.py), per LAUNCH key.
DELTA_GRID = {
    "dqkw": dict(BK=(64, 128), BV=(32, 64, 128), num_warps=(4, 8), num_stages=(1, 2, 3)),
    "wy_bwd": dict(BK=(32, 64), BV=(32, 64), num_warps=(4, 8), num_stages=(1, 2, 3)),
    "dvn_local": dict(BK=(64, 128), BV=(32, 64, 128), num_warps=(4, 8), num_stages=(1, 2)),
    "dstate": dict(BV=(16, 32, 64), num_warps=(4, 8), num_stages=(1, 2, 3)),
    "state": dict(BV=(16, 32, 64), num_warps=(4, 8), num_stages=(2, 3)),
    "output": dict(BK=(64, 128), BV=(64, 128), num_warps=(4, 8), num_stages=(1, 2, 3)),
    "wu": dict(BK=(64, 128), BV=(64, 128), num_warps=(4, 8), num_stages=(1, 2, 3)),
    "ut": dict(num_warps=(1, 2, 4), num_stages=(1, 2, 3)),
    # the state scan that also writes the outputs (FUSED_FORWARD, switched on while it is timed), in a
    # forward without autograd as the default forward runs it: W and U made in it (WU_IN_SCAN), at
    # tiles under 64 wide too since it forms Vn from K S there (VN_NARROW; with W, 16- and 32-wide
    # builds faulted)
    "state_out": dict(BV=(16, 32, 64), num_warps=(4, 8), num_stages=(1, 2, 3)),
    # the chain over segments (forward and reverse: both launches, one name), where segments run (T = 32K
    # with the benchmark's batch); BR = 64 holds a [64, 64] fp32 block of P and spills
    "chain": dict(BR=(16, 32), BV=(16, 32, 64), num_warps=(2, 4, 8), num_stages=(1, 2, 3)),
}
# the profiler's name of each DELTA_GRID kernel, where it is not _NAME_kernel
DELTA_KERNEL = {"state_out": "_state_kernel", "chain": "_segment_chain_kernel"}


def launch_delta(kind: str, T: int, names: list[str] | None) -> None:
    """Times each delta kernel under every setting of DELTA_GRID (one kernel varied at a time) in a
    forward and backward, the one-pass scan ("state_out") in a forward without autograd; the scans
    use their "_few" keys where their programs are fewer than the SMs (as the launcher does)."""
    import kernels.delta.chunk as mod

    inputs = {}   # with and without gradients, each made once
    few = mod._few(bench.TOKENS // T * bench.H, bench.D, mod._tiles(bench.D, bench.D)[3], torch.device("cuda"))
    base = mod.LAUNCH
    for name in [n for n in names or DELTA_GRID if n in DELTA_GRID]:
        grid = DELTA_GRID[name]
        key = f"{name}_few" if few and name in ("state", "dstate") else name
        backward = name != "state_out"
        if backward not in inputs:
            inputs[backward] = bench._inputs(bench.TOKENS // T, T, kind, grad=backward)
        res = []
        for values in itertools.product(*grid.values()):
            cfg = dict(zip(grid, values))
            # a candidate's settings in a LAUNCH of their own, the module's put back afterwards; the
            # one pass on for its scan, left as it is for the chain (the segments run inside it), off
            # for the rest (they are the separate state and output kernels)
            fused = mod.FUSED_FORWARD if name == "chain" else name == "state_out"
            with bench.switches([(mod, "LAUNCH", {**base, key: cfg}), (mod, "FUSED_FORWARD", fused)]), \
                    torch.set_grad_enabled(backward):
                try:
                    t = kernel_times(bench._ours(kind), inputs[backward], backward=backward, iters=3)
                    res.append((t.get(DELTA_KERNEL.get(name, f"_{name}_kernel"), float("nan")), cfg))
                except Exception as e:  # noqa: BLE001 - out of resources: not a candidate
                    res.append((float("inf"), cfg))
                    print(f"   {key} {cfg}: {type(e).__name__}: {str(e)[:160]}", flush=True)
        if all(t != t for t, _ in res):   # every time NaN: the profiler never saw the kernel
            print(f"{kind} T={T} {key}: {DELTA_KERNEL.get(name, f'_{name}_kernel')} did not run at this "
                  "shape and these switches", flush=True)
            continue
        res.sort(key=lambda r: r[0])
        best = "; ".join(f"{t:.3f} {c}" for t, c in res[:4])
        print(f"{kind} T={T} {key} (now {base.get(key, 'defaults')}): {best}; slowest {res[-1][0]:.3f}",
              flush=True)


STEP_GRID = {"BV": (16, 32, 64, 128), "num_warps": (1, 2, 4, 8)}


def step(kinds: list[str], B: int = 64, device: str = "cuda") -> None:
    """Times compile().step under each (BV, num_warps) of STEP_GRID by swapping the step's block
    choice; prints the fastest beside the default."""
    from triton.testing import do_bench

    import kernels.delta.recurrent as delta_rec
    import kernels.diag.recurrent as diag_rec

    for kind in kinds:
        name, m, state, one = bench.decode_case(kind, B, device)
        if kind == "gdn":
            mod, attr, real = delta_rec, "_blocks", delta_rec._blocks
            default = real(bench.D, bench.D, "step")
            pick = lambda cfg: (lambda K, V, k: (real(K, V, k)[0], cfg["BV"], cfg["num_warps"])  # noqa: E731
                                if k == "step" else real(K, V, k))
        else:
            mod, attr, real = diag_rec, "_step_blocks", diag_rec._step_blocks
            default = real(bench.D, bench.D)
            pick = lambda cfg: (lambda K, V: (real(K, V)[0], cfg["BV"], cfg["num_warps"]))  # noqa: E731
        res = []
        for values in itertools.product(*STEP_GRID.values()):
            cfg = dict(zip(STEP_GRID, values))
            with bench.switches([(mod, attr, pick(cfg))]), torch.no_grad():
                try:
                    res.append((do_bench(lambda: m.step(state, inplace=True, **one)), cfg))
                except Exception as e:  # noqa: BLE001 - out of resources: not a candidate
                    print(f"   {name} {cfg}: {type(e).__name__}: {str(e)[:160]}", flush=True)
        res.sort(key=lambda r: r[0])
        best = "; ".join(f"{t:.4f} {c}" for t, c in res[:4])
        print(f"step {name} B={B} (now BV={default[1]}, num_warps={default[2]}): {best}; slowest "
              f"{res[-1][0]:.4f}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kernels.sweep", description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("profile", "launch", "step", "ab", "host"))
    ap.add_argument("--ops", default="scalar,key,delta",
                    help=f"comma-separated kinds, of {', '.join(KINDS)} (launch: not titans; step: scalar, gdn)")
    ap.add_argument("--T", type=int, default=4096, help="sequence length (B = 32768 / T)")
    # an A/B of our switches need not wait for fla's autotuning each time
    ap.add_argument("--impls", default="ours,fla", help="profile: comma-separated, of ours and fla")
    ap.add_argument("--kernels", default=None,
                    help=f"launch: comma-separated kernels, delta/gdn of {sorted(DELTA_GRID)}, scalar/key of "
                    "their LAUNCH tables (e.g. fused_fwd); default all")
    add_set_option(ap, "run", "kernels.delta.chunk.UT_POWERS=False")
    ap.add_argument("--dump", default=None, metavar="DIR",
                    help="host: write each case's cProfile stats into DIR (for pstats)")
    ap.add_argument("--rounds", type=int, default=3, help="ab: rounds of default then --set (default 3)")
    ap.add_argument("--modes", default="fwd,fwd+bwd", help="profile: comma-separated, of fwd and fwd+bwd")
    ap.add_argument("--dtype", default="bf16", choices=tuple(DTYPES),
                    help="profile and ab: dtype of q, k, v (default bf16, the benchmark's)")
    args = ap.parse_args(argv)
    switches = settings_of(ap, args)
    names = None if args.kernels is None else args.kernels.split(",")
    impls = tuple(args.impls.split(","))
    if set(impls) - {"ours", "fla"}:
        ap.error(f"--impls: unknown {sorted(set(impls) - {'ours', 'fla'})}; known: ['fla', 'ours']")
    if names is not None:
        import kernels.diag.chunk as scalar_mod
        import kernels.diag.chunk_key as key_mod

        known = set(DELTA_GRID) | set(scalar_mod.LAUNCH) | set(key_mod.LAUNCH)
        if set(names) - known:
            ap.error(f"--kernels: unknown {sorted(set(names) - known)}; known: {sorted(known)}")
    if args.what == "ab" and not switches:
        ap.error("ab: give the switches to compare with the defaults, e.g. --set "
                 "kernels.diag.chunk.FUSED_MIN_PROGRAMS=128")
    modes = tuple(m for m in args.modes.split(",") if m)
    if not modes or set(modes) - {"fwd", "fwd+bwd"}:
        ap.error(f"--modes: unknown {sorted(set(modes) - {'fwd', 'fwd+bwd'}) or args.modes!r}; "
                 "known: fwd, fwd+bwd")
    if args.rounds < 1:
        ap.error(f"--rounds: at least 1, got {args.rounds}")
    ops = [o for o in args.ops.split(",") if o]
    known = ONLY.get(args.what, KINDS)
    if not ops or set(ops) - set(known):
        ap.error(f"--ops: unknown {sorted(set(ops) - set(known)) or args.ops!r} for {args.what}; "
                 f"known: {', '.join(known)}")
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU (the kernels are timed there)")
    if args.what == "ab":
        ab(ops, args.T, switches, args.rounds, DTYPES[args.dtype])
        return 0
    with bench.switches(switches):
        if args.what == "host":
            host(ops, args.T, DTYPES[args.dtype], dump=args.dump)
        elif args.what == "profile":
            profile(ops, args.T, impls, DTYPES[args.dtype], modes)
        elif args.what == "step":
            step(ops)
        else:
            launch([o for o in ops if o in ("scalar", "key")], args.T, names)
            for kind in (o for o in ops if o in ("delta", "gdn")):
                launch_delta(kind, args.T, names)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
