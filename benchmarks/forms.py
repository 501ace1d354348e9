"""CPU timings of the forms: recurrent vs chunked at T=4096, and how chunked and parallel scale in T.

    python -m benchmarks.forms [--quick] [--out benchmarks/results] [--malloc keep|glibc]

Writes ``forms_cpu.md`` (tables, command, machine) and ``forms_cpu.csv`` (one row per timing).
"""

from __future__ import annotations

import argparse
import ctypes
import csv
import datetime
import math
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

import dsf

B, H, K, V = 1, 4, 64, 64
CHUNK = 64          # dsf.chunked's default
# Section 1 also times these chunk sizes in the same rounds: on the CPU the delta rule's C × C work per
# token (its chunk's triangular inverse and products) makes a smaller chunk cheaper than the default.
CHUNKS = (16, 32, 64, 128)
DTYPE = torch.float32
SPEEDUP_MIXERS = ("mamba2", "gla", "retnet", "deltanet", "gated_deltanet")
SCALING_MIXERS = ("mamba2", "deltanet")
REQUIRED_SPEEDUP = 20.0
MEMORY_LIMIT = 8e9  # bytes: parallel points that would need more are skipped
# Peak resident memory of dsf.parallel in units of one [B, H, T, T] float32 tensor, measured with
# ru_maxrss at T = 1024 and 2048 (mamba2 ≈ 3.4–3.6, deltanet ≈ 4.7–6.6) and rounded up.
PARALLEL_COPIES = {"mamba2": 4, "deltanet": 7}
DEFAULT_COPIES = 8
# A warm-up slower than this counts as a sample and one more run follows: one-off costs are
# negligible at that size, and repeating a 100 s call (deltanet's Φ at T=8192) is not worth it.
SLOW_S = 10.0
# glibc malloc, kept (--malloc keep): memory the forms free stays in the process. With glibc's own
# dynamic thresholds, whether a call's large temporaries come back as fresh pages (a page fault per
# 4 KB: up to ~4,000 a call, ~30% of a chunked DeltaNet call) depends on the heap's history, so the
# same call ran 15 or 21 ms from one process to the next. Both forms run under the same setting.
MALLOC_KEEP = {"M_TRIM_THRESHOLD": (-1, 1 << 30), "M_MMAP_THRESHOLD": (-3, 32 << 20)}


def keep_freed_memory() -> str:
    """Sets glibc's trim and mmap thresholds (MALLOC_KEEP); returns what was done, for the report."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = all(libc.mallopt(code, value) == 1 for code, value in MALLOC_KEEP.values())
    except (OSError, AttributeError):
        ok = False
    if not ok:
        return "glibc malloc not found: the allocator's defaults"
    return ("glibc malloc with freed memory kept in the process (trim threshold 1 GiB, mmap threshold "
            "32 MiB; `--malloc glibc` keeps glibc's dynamic defaults)")


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

FULL = dict(T_speedup=4096, Ts=(256, 512, 1024, 2048, 4096, 8192), T_recurrent_max=4096, repeats=5)
QUICK = dict(T_speedup=128, Ts=(32, 64, 128), T_recurrent_max=128, repeats=1)


def time_call(fn: Callable[[], object], repeats: int) -> tuple[float, float, int]:
    """Median and min wall time of ``fn`` over ``repeats`` runs after a warm-up: (med, min, n)."""
    def once() -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    warm = once()
    samples = [warm, once()] if warm > SLOW_S else [once() for _ in range(repeats)]
    return statistics.median(samples), min(samples), len(samples)


def parallel_bytes(name: str, T: int) -> float:
    """Estimated peak memory of the parallel form (Φ is [B, H, T, T] per head)."""
    return PARALLEL_COPIES.get(name, DEFAULT_COPIES) * B * H * T * T * torch.finfo(DTYPE).bits / 8


class Bench:
    """Runs and caches timings keyed by (mixer, form, T)."""

    def __init__(self, repeats: int, log=print):
        self.repeats, self.log = repeats, log
        self.rows: dict[tuple[str, str, int], dict] = {}
        self.ratios: dict[str, dict[int, list[float]]] = {}   # mixer → chunk size → pair ratios
        self.sizes: dict[tuple[str, int], dict] = {}         # chunked rows at the other sizes
        self._samples: dict[str, dict] = {}                  # mixer → form → seconds, every round
        self._faults: dict[str, dict] = {}

    def paired(self, name: str, T: int) -> float:
        """Recurrent and chunked (at every size in CHUNKS) timed alternately, ``repeats`` rounds after
        a warm-up of each: all see the same machine state, so the ratio of a pair is immune to load
        that comes and goes between them (on a shared VM two timings can otherwise be minutes apart).
        A later call adds its rounds to the earlier ones. Stores the rows and returns the median of
        the per-round ratios at the default chunk size."""
        x = dsf.random_inputs(name, B, T, H, K, V, dtype=DTYPE, seed=0)
        calls = {"recurrent": lambda: dsf.recurrent(name, **x)}
        for C in CHUNKS:
            calls[C] = lambda C=C: dsf.chunked(name, chunk_size=C, **x)
        # Rounds accumulate over the calls (one per block): the rows describe all of them.
        samples = self._samples.setdefault(name, {f: [] for f in calls})
        faults = self._faults.setdefault(name, {f: [] for f in calls})
        with torch.no_grad():
            for fn in calls.values():
                fn()
            for _ in range(self.repeats):
                for form, fn in calls.items():
                    f0, t0 = _faults(), time.perf_counter()
                    fn()
                    samples[form].append(time.perf_counter() - t0)
                    faults[form].append(_faults() - f0)
        for form, ts in samples.items():
            row = dict(mixer=name, form="recurrent" if form == "recurrent" else "chunked", T=T,
                       chunk_size="" if form == "recurrent" else form, seconds=statistics.median(ts),
                       min_seconds=min(ts), samples=len(ts), note="paired",
                       page_faults=statistics.median(faults[form]))
            if form == "recurrent" or form == CHUNK:
                self.rows[(name, row["form"], T)] = row
            else:
                self.sizes[(name, form)] = row
        self.ratios[name] = {C: [r / c for r, c in zip(samples["recurrent"], samples[C])] for C in CHUNKS}
        ratio = statistics.median(self.ratios[name][CHUNK])
        self.log(f"  {name:15s} T={T:5d}  recurrent {statistics.median(samples['recurrent']):.4f} s, "
                 f"chunked {statistics.median(samples[CHUNK]):.4f} s, paired ratio {ratio:.1f}x; by "
                 "chunk size " + ", ".join(f"{C}: {statistics.median(r):.1f}x"
                                           for C, r in self.ratios[name].items()))
        return ratio

    def run(self, name: str, form: str, T: int) -> dict:
        key = (name, form, T)
        if key in self.rows:
            return self.rows[key]
        row = dict(mixer=name, form=form, T=T, chunk_size=CHUNK if form == "chunked" else "",
                   seconds=math.nan, min_seconds=math.nan, samples=0, note="")
        if form == "parallel" and parallel_bytes(name, T) > MEMORY_LIMIT:
            row["note"] = f"skipped: needs ~{parallel_bytes(name, T) / 1e9:.1f} GB > 8 GB"
        else:
            x = dsf.random_inputs(name, B, T, H, K, V, dtype=DTYPE, seed=0)
            call = {"recurrent": lambda: dsf.recurrent(name, **x),
                    "parallel": lambda: dsf.parallel(name, **x),
                    "chunked": lambda: dsf.chunked(name, chunk_size=CHUNK, **x)}[form]
            with torch.no_grad():
                row["seconds"], row["min_seconds"], row["samples"] = time_call(call, self.repeats)
        self.rows[key] = row
        self.log(f"  {name:15s} {form:9s} T={T:5d}  "
                 + (f"{row['seconds']:.4f} s (n={row['samples']})" if row["samples"] else row["note"]))
        return row


def fit_exponent(Ts, secs) -> float:
    """Slope of log(time) against log(T), least squares; NaN with fewer than two points."""
    pts = [(math.log(t), math.log(s)) for t, s in zip(Ts, secs) if s == s and s > 0]
    if len(pts) < 2:
        return math.nan
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    return (sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _secs(row: dict, both: bool = False) -> str:
    if not row["samples"]:
        return row["note"]
    return f"{row['seconds']:.4f} / {row['min_seconds']:.4f}" if both else f"{row['seconds']:.4f}"


def _table(header, rows) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def report(bench: Bench, cfg: dict, command: str, load: tuple) -> tuple[str, list[dict]]:
    """The markdown report and the CSV rows."""
    T0 = cfg["T_speedup"]
    lines = ["# Forms on CPU: recurrent vs chunked vs parallel", "",
             f"float32, B={B}, H={H}, K=V={K}, torch.no_grad; median of {cfg['repeats']} run(s) after "
             f"one warm-up (a warm-up over {SLOW_S:g} s counts as a run and one more follows); "
             "min over the runs beside it, since load from other processes only ever adds time. "
             "Inputs from `dsf.random_inputs(..., seed=0)`.", "",
             f"## 1. Recurrent vs chunked at T={T0}", ""]
    rows, best, size_rows = [], {}, []
    for name in SPEEDUP_MIXERS:
        spec = dsf.zoo.get(name)
        rec, chk = bench.rows[(name, "recurrent", T0)], bench.rows[(name, "chunked", T0)]
        by_size = bench.ratios.get(name) or {CHUNK: [rec["seconds"] / chk["seconds"]]}
        med = {C: statistics.median(r) for C, r in by_size.items()}
        C_best = max(med, key=med.get)
        best[name] = (C_best, med[C_best], med[CHUNK])
        lo, hi = min(by_size[C_best]), max(by_size[C_best])
        rows.append([f"`{name}`", spec.family, str(spec.transition), _secs(rec, True),
                     _secs(chk, True), f"{med[CHUNK]:.1f}x", str(C_best),
                     _secs(bench.sizes.get((name, C_best), chk), True), f"{med[C_best]:.1f}x",
                     f"{lo:.1f}x – {hi:.1f}x", "yes" if med[C_best] >= REQUIRED_SPEEDUP else "**no**",
                     f"{rec.get('page_faults', 0):.0f} / {chk.get('page_faults', 0):.0f}"])
        size_rows.append([f"`{name}`"] + [f"{med[C]:.1f}x" if C in med else "—" for C in CHUNKS])
    blocks = len(SCALING_MIXERS) + 1
    lines += [f"Each mixer's recurrent form and its chunked form at every chunk size ({', '.join(map(str, CHUNKS))}) "
              "are timed in turn, round after round, so the runs of a round see the same machine state; "
              f"{cfg['repeats']} rounds in each of {blocks} blocks, one before, between and after the "
              "scaling sweeps of section 2, so the rounds sample the machine over the whole run. A speedup "
              "is the median over all rounds of recurrent / chunked, the range of the rounds' ratios at "
              f"the best size beside it. The default chunk size ({CHUNK}) is what `dsf.chunked` uses "
              "when none is given; the best one is the fastest on this machine.", ""]
    lines += _table(["mixer", "family", "Λ structure", "recurrent (s) median / min",
                     f"chunked, chunk {CHUNK} (s) median / min", f"speedup, chunk {CHUNK}",
                     "best chunk size", "chunked, best (s) median / min", "speedup, best",
                     "range over rounds (best)", f"≥ {REQUIRED_SPEEDUP:g}x (best, median)",
                     f"page faults a call (median, rec / chunk {CHUNK})"], rows)
    short = [n for n, (_, s, _) in best.items() if s < REQUIRED_SPEEDUP]
    short_default = [n for n, (_, _, s) in best.items() if s < REQUIRED_SPEEDUP]
    lines += ["", (f"Short of {REQUIRED_SPEEDUP:g}x at the best chunk size: {', '.join(short)}." if short
                   else f"Every mixer reaches {REQUIRED_SPEEDUP:g}x at its best chunk size.")
              + (f" At the default chunk size {CHUNK}, short of {REQUIRED_SPEEDUP:g}x: "
                 f"{', '.join(short_default)}." if short_default else
                 f" Every mixer reaches it at the default chunk size {CHUNK} too.")]
    lines += ["", "Speedup (median over rounds) by chunk size:", ""]
    lines += _table(["mixer"] + [f"chunk {C}" for C in CHUNKS], size_rows)

    lines += ["", "## 2. Scaling in T", "",
              f"Seconds per call. Recurrent only up to T={cfg['T_recurrent_max']}; parallel "
              "materialises Φ ([B, H, T, T]) and is skipped where it would need more than 8 GB.", ""]
    header, rows = ["T"], []
    for name in SCALING_MIXERS:
        header += [f"{name} {f}" for f in ("recurrent", "chunked", "parallel")]
    for T in cfg["Ts"]:
        row = [str(T)]
        for name in SCALING_MIXERS:
            for form in ("recurrent", "chunked", "parallel"):
                r = bench.rows.get((name, form, T))
                row.append("not run" if r is None else _secs(r))
        rows.append(row)
    lines += _table(header, rows)

    lo = 1024 if max(cfg["Ts"]) > 1024 else min(cfg["Ts"])
    lines += ["", "Fitted exponent p in time ∝ T^p (least squares on log time vs log T):", ""]
    rows = []
    for name in SCALING_MIXERS:
        for form in ("recurrent", "chunked", "parallel"):
            got = [bench.rows[(name, form, T)] for T in cfg["Ts"] if (name, form, T) in bench.rows]
            ran = [r["T"] for r in got if r["samples"]]

            def p(key, t_min=0):
                pts = [(r["T"], r[key]) for r in got if r["T"] >= t_min]
                return f"{fit_exponent(*zip(*pts)):.2f}" if pts else "—"
            rows.append([f"`{name}`", form, p("seconds"), p("seconds", lo), p("min_seconds", lo),
                         f"{min(ran)}–{max(ran)}" if ran else "—"])
    lines += _table(["mixer", "form", "p (median, all T)", f"p (median, T ≥ {lo})",
                     f"p (min, T ≥ {lo})", "T range"], rows)

    lines += ["", "## Machine", "", f"- command: `{command}`",
              f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
              f"- CPU: {cpu_model()} ({os.cpu_count()} logical cores)",
              f"- torch {torch.__version__}, {torch.get_num_threads()} threads ({cfg['threads']}), "
              f"Python {platform.python_version()}, {platform.system()} {platform.release()}",
              f"- load average (1 min) at start {load[0]:.2f}, at end {load[1]:.2f}: other "
              "processes on the machine make the small-op recurrent loop especially noisy",
              f"- memory: {cfg['malloc']}", ""]
    csv_rows = [dict(section="speedup" if T == T0 and n in SPEEDUP_MIXERS and f != "parallel"
                     else "scaling", **r) for (n, f, T), r in bench.rows.items()]
    csv_rows += [dict(section="speedup", **r) for r in bench.sizes.values()]
    return "\n".join(lines), csv_rows


def measure(cfg: dict) -> Bench:
    """Every timing the report needs: recurrent vs chunked at one T, in blocks before, between and
    after the scaling sweeps of SCALING_MIXERS, so its rounds sample the machine over the whole run
    (its speed drifts over minutes on a shared host, beyond what one block of rounds sees)."""
    bench = Bench(cfg["repeats"], log=lambda s: print(s, flush=True))
    T0 = cfg["T_speedup"]

    def speedup_block(i):
        print(f"1. recurrent vs chunked at T={T0}, block {i + 1} of {len(SCALING_MIXERS) + 1}", flush=True)
        for name in SPEEDUP_MIXERS:
            bench.paired(name, T0)

    speedup_block(0)
    for i, name in enumerate(SCALING_MIXERS):
        print(f"2. scaling in T: {name}", flush=True)
        for T in cfg["Ts"]:
            bench.run(name, "chunked", T)
            bench.run(name, "parallel", T)
            if T <= cfg["T_recurrent_max"]:
                bench.run(name, "recurrent", T)
        speedup_block(i + 1)
    return bench


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the report files; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.forms", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of a few seconds")
    p.add_argument("--out", default="benchmarks/results", help="output directory")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per point")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--malloc", choices=("keep", "glibc"), default="keep",
                   help="keep: freed memory stays in the process (glibc's trim and mmap thresholds "
                   "fixed, so timings do not depend on when glibc returns pages); glibc: its defaults")
    args = p.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    cfg["threads"] = "set by --threads" if args.threads else "torch default"
    if args.repeats:
        cfg["repeats"] = args.repeats
    cfg["malloc"] = keep_freed_memory() if args.malloc == "keep" else "glibc malloc with its defaults"
    command = "python -m benchmarks.forms " + " ".join(sys.argv[1:] if argv is None else argv)
    load0 = os.getloadavg()[0]
    threads = torch.get_num_threads()
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        bench = measure(cfg)
        md, rows = report(bench, cfg, command.strip(), (load0, os.getloadavg()[0]))
    finally:  # main() also runs inside pytest: leave the process as it was
        torch.set_num_threads(threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "forms_cpu.md").write_text(md)
    with open(out / "forms_cpu.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["section", "mixer", "form", "T", "chunk_size", "seconds",
                                          "min_seconds", "samples", "note", "page_faults"])
        w.writeheader()
        w.writerows(rows)
    print(md)
    print(f"wrote {out / 'forms_cpu.md'} and {out / 'forms_cpu.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
