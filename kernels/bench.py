"""Kernel benchmark on the GPU: our kernels, flash-linear-attention (fla-core) and torch SDPA, in one run.

    python -m kernels.bench [--out DIR] [--quick] [--ops KIND,...] [--modes MODE,...]
        (kinds: scalar,key,delta,gdn,softmax,titans and decode; --ops decode alone: the decode step only)

bf16, H=16, K=V=128, B·T = 32768 tokens, T from 1K to 32K; forward and forward+backward (median of
``triton.testing.do_bench``), the forward replayed from a CUDA graph ("fwd graph": its GPU time
alone, whatever the host's Python and launches cost), peak memory, the memory floor (bytes of q, k,
v, o over the measured copy bandwidth) and, with ``decode`` among the kinds (the default), the decode
step at B=64. Writes ``kernel_bench.md``, ``kernel_bench.csv`` and ``decode.csv``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import os
import sys

import torch
import torch.nn.functional as F

import kernels

H, D = 16, 128
# "ours-fused": the diagonal-decay and delta-rule kernels with their one-pass forwards forced on (FUSED_FORWARD =
# True; "ours" runs them only where the default rule picks them)
IMPLS = ("ours", "ours-fused", "ours-recurrent", "fla", "sdpa")
# "fwd graph": the forward without autograd replayed from a CUDA graph (graph_ms). do_bench's "fwd" queues
# calls back to back, so where a call's host time (Python, launches) passes its GPU time it times the
# host: DeltaNet's forward read 0.489 ms for 0.311 of kernels on one H200 host
# (kernels/results/experiments_2026-12-04g.md §2); the graph's replay reads the GPU's time on any host.
MODES = ("fwd", "fwd graph", "fwd+bwd")
TOKENS = 32768


def _inputs(B, T, kind, dtype=torch.bfloat16, grad=True):
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, device="cuda", dtype=torch.float32)  # noqa: E731
    q, k, v = r(B, T, H, D), r(B, T, H, D), r(B, T, H, D)
    k = F.normalize(k, dim=-1)
    d = {"q": q, "k": k, "v": v}
    if kind in ("scalar", "gdn"):
        d["g"] = F.logsigmoid(4 + r(B, T, H))
    if kind == "key":
        d["gk"] = F.logsigmoid(4 + r(B, T, H, D)) / 16
    if kind in ("delta", "gdn"):
        d["beta"] = torch.rand(B, T, H, generator=g, device="cuda")
    if kind == "titans":  # retention α ≈ 0.98, momentum η ≈ 0.88, steps θ ∈ (0, 0.1)
        d.update(g=F.logsigmoid(4 + r(B, T, H)), theta=0.1 * torch.sigmoid(r(B, T, H)),
                 log_eta=F.logsigmoid(2 + r(B, T, H)))
    out = {}
    for n, x in d.items():
        # β and GLA's key-wise log decays in the activations' dtype, as a layer's projections make them
        # (and as fla's own GLA benchmark draws them); per-head log decays and Titans' rates fp32
        x = x.to(dtype if n in ("q", "k", "v", "beta", "gk") else torch.float32)
        out[n] = x.requires_grad_(grad)
    return out


def _ours(kind):
    from kernels.delta import chunk_delta
    from kernels.diag import chunk_diag

    s = D ** -0.5
    if kind == "scalar":
        return lambda q, k, v, g: chunk_diag(q, k, v, "scalar", g, scale=s)[0]
    if kind == "key":
        return lambda q, k, v, gk: chunk_diag(q, k, v, "key", gk, scale=s)[0]
    if kind == "delta":
        return lambda q, k, v, beta: chunk_delta(q, k, v, beta, scale=s)[0]
    if kind == "gdn":
        return lambda q, k, v, g, beta: chunk_delta(q, k, v, beta, scale=s, g=g)[0]
    if kind == "titans":
        from kernels.memory import chunk_titans

        return lambda q, k, v, g, theta, log_eta: chunk_titans(q * s, k, v, g, theta, log_eta)[0]
    from kernels.softmax import flash_attention

    return lambda q, k, v: flash_attention(q, k, v)


@contextlib.contextmanager
def switches(changes):
    """Module attributes set for the duration — ``changes`` is [(module, name, value)] — and put back
    afterwards, also on an error (the kernels' switches: FUSED_FORWARD, UT_POWERS, ...)."""
    old = [(mod, name, getattr(mod, name)) for mod, name, _ in changes]
    try:
        for mod, name, value in changes:
            setattr(mod, name, value)
        yield
    finally:
        for mod, name, value in reversed(old):
            setattr(mod, name, value)


def _ours_fused(kind):
    """Our diagonal-decay or delta-rule kernels with their one-pass forward switched on (FUSED_FORWARD of
    kernels.diag.chunk, which the key-wise kernels follow too, or kernels.delta.chunk, with its
    SEGMENTS)."""
    if kind not in ("scalar", "key", "delta", "gdn"):
        return None
    import kernels.delta.chunk as delta_mod
    import kernels.diag.chunk as scalar_mod

    mod = scalar_mod if kind in ("scalar", "key") else delta_mod
    base = _ours(kind)

    # the delta rule's one pass over segments where its scan has too few programs (as the scalar
    # family's forced pass takes segments there)
    extra = [(delta_mod, "SEGMENTS", True)] if mod is delta_mod else []

    def run(**kw):
        with switches([(mod, "FUSED_FORWARD", True), *extra]):
            return base(**kw)
    return run


def _fla(kind):
    try:
        from fla.ops.delta_rule import chunk_delta_rule
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        from fla.ops.gla import chunk_gla
        from fla.ops.simple_gla import chunk_simple_gla
    except Exception as e:  # noqa: BLE001
        print("fla-core unavailable:", e)
        return None
    return {"scalar": lambda q, k, v, g: chunk_simple_gla(q, k, v, g=g)[0],
            "key": lambda q, k, v, gk: chunk_gla(q, k, v, gk)[0],
            "delta": lambda q, k, v, beta: chunk_delta_rule(q, k, v, beta)[0],
            "gdn": lambda q, k, v, g, beta: chunk_gated_delta_rule(q, k, v, g, beta)[0],
            }.get(kind)


def _titans_recurrent():
    from kernels.memory import fused_recurrent_titans

    s = D ** -0.5
    return lambda q, k, v, g, theta, log_eta: fused_recurrent_titans(q * s, k, v, g, theta, log_eta)[0]


def _sdpa():
    def f(q, k, v):
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                  is_causal=True).transpose(1, 2)
    return f


def _time(fn, inp, backward):
    """(ms, peak GiB) of ``fn(**inp)`` (and its backward): the median of do_bench, and the most memory
    held while timing it — the inputs and what the call allocates, not what was held before (an
    earlier row's leftovers); or (an error string, None)."""
    from triton.testing import do_bench

    def run():
        o = fn(**inp)
        if backward:
            o.backward(torch.ones_like(o))
        return o

    # a failed earlier row can leave its tensors in reference cycles (an exception's frames) until
    # the collector runs; what is still held afterwards is not this call's
    gc.collect()
    base = torch.cuda.memory_allocated() - sum(t.numel() * t.element_size() for t in inp.values())
    torch.cuda.reset_peak_memory_stats()
    try:
        # gradients set to None before each call, as a training step's zero_grad does: otherwise every
        # call after the first adds its gradients into .grad (three bf16 adds over q, k, v, ~0.27 ms at
        # B·T = 32K, in every implementation's fwd+bwd; runs before 2026-12-02 include them)
        ms = do_bench(run, warmup=25, rep=100, grad_to_none=list(inp.values()) if backward else None)
    except Exception as e:  # noqa: BLE001 - a refused or failing op is a table cell
        return f"error: {type(e).__name__}: {str(e)[:60]}", None
    return ms, (torch.cuda.max_memory_allocated() - base) / 2 ** 30


def _time_graph(fn, inp):
    """(ms, None) of ``fn(**inp)`` without autograd replayed from a CUDA graph (graph_ms), or (an error
    string, None) where the op cannot be captured."""
    try:
        with torch.no_grad():
            return graph_ms(lambda: fn(**inp)), None
    except Exception as e:  # noqa: BLE001 - an op that cannot be captured is a table cell
        return f"error: {type(e).__name__}: {str(e)[:60]}", None


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write)."""
    from triton.testing import do_bench

    x = torch.empty(2 ** 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x))
    return 2 * x.numel() / (ms * 1e-3)


DECODE_MIXERS = {"scalar": "mamba2", "gdn": "gated_deltanet"}   # kind → the mixer decoded


def decode_case(kind: str, B: int, device: str = "cuda"):
    """One decoding token of a DECODE_MIXERS kind: (mixer name, compiled mixer, a zero fp32 state,
    the token's inputs without the time dim)."""
    name = DECODE_MIXERS[kind]
    one = {n: x[:, 0].detach() for n, x in _inputs(B, 1, kind, grad=False).items()}
    return name, kernels.compile(name), torch.zeros(B, H, D, D, device=device), one


def graph_ms(fn) -> float:
    """GPU time of ``fn`` replayed from a CUDA graph (no Python or launch cost between replays): what a
    decode loop captured in a graph would take per token. Warmed up on a side stream first, as
    torch.cuda.graph asks."""
    from triton.testing import do_bench

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return do_bench(graph.replay)


def decode_bench(rows, bw=None):
    """One decoding token at B=64: compile().step (state updated in place), our raw step kernel, and
    fla's fused recurrent kernel on the same fp32 state; the raw kernel and fla's also replayed from a
    CUDA graph, which leaves their GPU time alone (where a step is timed slower than its graph, the
    host's Python and launch cost is what the plain timing measured). floor = reading and writing
    the state once."""
    from triton.testing import do_bench

    from kernels.delta import delta_step
    from kernels.diag import diag_step

    B = 64
    s = D ** -0.5
    for kind in DECODE_MIXERS:
        name, m, state, one = decode_case(kind, B)
        if kind == "scalar":
            raw_fn = lambda: diag_step(  # noqa: E731
                state, one["q"], one["k"], one["v"], "scalar", one["g"], scale=s)
        else:
            raw_fn = lambda: delta_step(  # noqa: E731
                state, one["q"], one["k"], one["v"], one["beta"], one["g"], scale=s)
        with torch.no_grad():
            ours = do_bench(lambda: m.step(state, inplace=True, **one))
            raw = do_bench(raw_fn)
        row = {"op": f"decode step B={B} ({name})", "ours step (compile)": ours, "ours raw kernel": raw}
        t1 = {n: x.unsqueeze(1) for n, x in one.items()}
        fla = None
        try:
            if kind == "scalar":
                from fla.ops.simple_gla import fused_recurrent_simple_gla

                fla = lambda: fused_recurrent_simple_gla(t1["q"], t1["k"], t1["v"], g=t1["g"],  # noqa: E731
                                                         initial_state=state, output_final_state=True)
            else:
                from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule

                fla = lambda: fused_recurrent_gated_delta_rule(  # noqa: E731
                    t1["q"], t1["k"], t1["v"], g=t1["g"], beta=t1["beta"],
                    initial_state=state, output_final_state=True)
            with torch.no_grad():
                row["fla fused recurrent"] = do_bench(fla)
        except Exception as e:  # noqa: BLE001
            row["fla fused recurrent"] = f"error: {e}"[:80]
        for label, fn in (("ours raw kernel (CUDA graph)", raw_fn), ("fla (CUDA graph)", fla)):
            try:
                with torch.no_grad():
                    row[label] = graph_ms(fn) if fn is not None else "not run"
            except Exception as e:  # noqa: BLE001
                row[label] = f"error: {e}"[:80]
        if bw:
            row["state floor"] = 2 * state.numel() * 4 / bw * 1e3
        rows.append(row)


def profile(kind: str, T: int = 4096) -> str:
    """Per-kernel CUDA time of our fwd+bwd (torch.profiler), to see which stage limits it."""
    fn = _ours(kind)
    inp = _inputs(TOKENS // T, T, kind)
    for _ in range(3):
        fn(**inp).sum().backward()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn(**inp).sum().backward()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=12)


# Runs named from this on (their CSVs start with the date and time) timed fwd+bwd with the inputs'
# gradients cleared before each call (_time); render marks the fwd+bwd cells of earlier runs.
GRADS_CLEARED_SINCE = "2026-12-02_0010"


def render(paths: list[str], header: list[str], merged_csv: str | None = None) -> str:
    """kernel_bench.md from the CSVs of one or more runs (a later run's cell replaces an earlier one),
    and optionally the merged rows as one CSV, each naming its run. A fwd+bwd cell of a run before
    GRADS_CLEARED_SINCE is marked † (it includes the adds into .grad).

    A CSV whose first column after ``op`` is not ``impl`` holds decode-step rows: every run's are
    listed, each under the name of its CSV (the step's time moves between hosts, see the notes)."""
    cells, decode, ops, old = {}, [], [], set()
    for path in paths:
        run = os.path.splitext(os.path.basename(path))[0]
        with open(path) as f:
            reader = csv.DictReader(f)
            for r in reader:
                if "impl" not in r:
                    decode.append({"run": run, **r})
                    continue
                key = (r["op"], r["impl"], r["mode"], int(r["T"]))
                cells[key] = {**r, "run": run}   # (the merged CSV names each cell's run)
                if r["mode"] == "fwd+bwd" and run < GRADS_CLEARED_SINCE:
                    old.add(key)
                else:   # (re-timed by a later run)
                    old.discard(key)
                if r["op"] not in ops:
                    ops.append(r["op"])
    Ts = sorted({k[3] for k in cells})
    if merged_csv and cells:
        with open(merged_csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(next(iter(cells.values()))))
            w.writeheader()
            w.writerows(cells.values())
    lines, errors = list(header), []
    for op in ops:
        lines += [f"## {op}", "", "| impl | mode | " + " | ".join(f"T={T}" for T in Ts) + " | peak GiB |",
                  "|---|---|" + "---|" * (len(Ts) + 1)]
        for impl in IMPLS:
            for mode in MODES:
                got = [cells.get((op, impl, mode, T)) for T in Ts]
                if any(got):
                    peaks = [float(r["peak_GiB"]) for r in got if r and r["peak_GiB"] not in ("", "None")]
                    shown = [_cell(r, errors) + ("†" if r and (op, impl, mode, T) in old
                                                  and not r["ms"].startswith("error") else "")
                             for r, T in zip(got, Ts)]
                    lines.append(f"| {impl} | {mode} | " + " | ".join(shown) + f" | {max(peaks, default='')} |")
        floors = [next((r for k, r in cells.items() if k[0] == op and k[3] == T), None) for T in Ts]
        lines += ["| memory floor | fwd | " + " | ".join(r["floor_ms"] if r else "—" for r in floors) + " | |", ""]
    lines += [f"[e{i + 1}] {e}" for i, e in enumerate(errors)] + ([""] if errors else [])
    if old:
        lines += [f"† a run before {GRADS_CLEARED_SINCE}: its forward + backward includes autograd's adds of "
                  "q, k, v's gradients into the .grad the call before left (about 0.27 ms at B·T = 32K), as "
                  "every implementation's of that run does; compare it with cells of its own kind.", ""]
    if decode:
        # every run's columns in order of first appearance (later runs added the CUDA-graph ones)
        cols = list(dict.fromkeys(c for r in decode for c in r))
        lines += ["## Decode step (ms)", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(r[c]) if c in r else "—" for c in cols) + " |" for r in decode]
    return "\n".join(lines) + "\n"


def _cell(r: dict | None, errors: list[str]) -> str:
    """A timing, "—" when not run, or "refused [eN]" with the (deduplicated) message as a footnote."""
    if not r:
        return "—"
    if not r["ms"].startswith("error"):
        return r["ms"]
    if r["ms"] not in errors:
        errors.append(r["ms"])
    return f"failed [e{errors.index(r['ms']) + 1}]"


def _fmt(x: str) -> str:
    try:
        return f"{float(x):.4f}"
    except ValueError:
        return x


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--ops", default="scalar,key,delta,gdn,softmax,decode",
                    help="comma-separated subset of scalar,key,delta,gdn,softmax,titans,decode (decode: the "
                    "one-token step at B=64; --ops decode alone times only that)")
    ap.add_argument("--impls", default="ours,fla,sdpa,ours-recurrent",
                    help="comma-separated subset of " + ",".join(IMPLS) + " (e.g. ours alone, to re-time "
                    "our kernels after a change and merge the rows with an earlier run's fla rows by --render)")
    ap.add_argument("--profile", action="store_true", help="print a per-kernel breakdown first")
    ap.add_argument("--Ts", default="", help="comma-separated sequence lengths (default 1K … 32K)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES)
                    + ' ("fwd graph": the forward replayed from a CUDA graph, the GPU\'s time alone)')
    ap.add_argument("--render", default="", help="comma-separated CSVs of earlier runs: write "
                    "kernel_bench.md from them and exit (no GPU needed)")
    args = ap.parse_args(argv)
    for flag, given, known in (("--ops", args.ops, ("scalar", "key", "delta", "gdn", "softmax", "titans", "decode")),
                               ("--impls", args.impls, IMPLS), ("--modes", args.modes, MODES)):
        unknown = [x for x in given.split(",") if x not in known]
        if unknown:
            ap.error(f"{flag}: unknown {', '.join(unknown)} (choose from {', '.join(known)})")
    os.makedirs(args.out, exist_ok=True)
    if args.render:
        md = render(args.render.split(","), [
            "# Kernel benchmark (rendered from the CSVs of the runs named below)", "",
            f"bf16, H={H}, K=V={D}, B·T={TOKENS}; ms = median of triton.testing.do_bench (fwd graph: of "
            "the forward's replays from a CUDA graph, the GPU's time alone); floor = "
            "bytes(q, k, v, o) / measured copy bandwidth. Runs: " + ", ".join(args.render.split(",")), ""],
            merged_csv=os.path.join(args.out, "kernel_bench.csv"))
        with open(os.path.join(args.out, "kernel_bench.md"), "w") as f:
            f.write(md)
        print(md)
        return 0
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU (the kernels are timed there); --render works without one")
    kinds = [k for k in args.ops.split(",") if k != "decode"]
    if args.profile:
        for kind in kinds:
            text = profile(kind)
            print(text, flush=True)
            with open(os.path.join(args.out, f"profile_{kind}.txt"), "w") as f:
                f.write(text)
    Ts = [1024, 4096] if args.quick else [1024, 2048, 4096, 8192, 16384, 32768]
    if args.Ts:
        Ts = [int(t) for t in args.Ts.split(",")]
    bw = copy_bandwidth()
    out_rows = []
    names = {"scalar": "mamba2 / simple GLA", "key": "GLA", "delta": "DeltaNet", "gdn": "Gated DeltaNet",
             "softmax": "softmax attention", "titans": "Titans (linear memory)"}
    for kind in kinds:
        impls = {"ours": _ours(kind), "ours-fused": _ours_fused(kind) if "ours-fused" in args.impls else None,
                 "fla": _fla(kind) if kind != "softmax" else None,
                 "sdpa": _sdpa() if kind == "softmax" else None,
                 "ours-recurrent": _titans_recurrent() if kind == "titans" else None}
        for T in Ts:
            B = TOKENS // T
            floor_ms = 4 * B * T * H * D * 2 / bw * 1e3
            for impl, fn in impls.items():
                if fn is None or impl not in args.impls.split(","):
                    continue
                for mode in [m for m in MODES if m in args.modes.split(",")]:
                    inp = _inputs(B, T, "softmax" if kind == "softmax" else kind, grad=mode == "fwd+bwd")
                    if mode == "fwd":
                        with torch.no_grad():
                            ms, peak = _time(fn, inp, False)
                    elif mode == "fwd graph":
                        ms, peak = _time_graph(fn, inp)
                    else:
                        ms, peak = _time(fn, inp, True)
                    row = {"op": names[kind], "impl": impl, "mode": mode, "T": T, "B": B,
                           "ms": ms if isinstance(ms, str) else round(ms, 3),
                           "peak_GiB": None if peak is None else round(peak, 2),
                           "floor_ms": round(floor_ms, 3)}
                    out_rows.append(row)
                    print(row, flush=True)
                    # write as we go: a run cut short still leaves its rows
                    path = os.path.join(args.out, "kernel_bench_partial.csv")
                    fresh = not os.path.exists(path)
                    with open(path, "a") as f:
                        if fresh:
                            f.write(",".join(row) + "\n")
                        f.write(",".join(str(x) for x in row.values()) + "\n")
                    del inp
                    torch.cuda.empty_cache()
    dec = []
    if "decode" in args.ops.split(","):
        decode_bench(dec, bw)
        print(dec, flush=True)
    for name, rows in (("decode.csv", dec), ("kernel_bench.csv", out_rows)):
        if rows:
            with open(os.path.join(args.out, name), "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
    lines = [f"# Kernel benchmark: {torch.cuda.get_device_name()}, torch {torch.__version__}",
             f"bf16, H={H}, K=V={D}, B·T={TOKENS}; copy bandwidth {bw / 1e12:.2f} TB/s; ms = median "
             "of triton.testing.do_bench (fwd graph: of the forward's replays from a CUDA graph); floor = "
             "bytes(q, k, v, o) / bandwidth", ""]
    for kind in kinds:
        lines += [f"## {names[kind]}", "", "| impl | mode | " + " | ".join(f"T={T}" for T in Ts) + " | peak GiB |",
                  "|---|---|" + "---|" * (len(Ts) + 1)]
        for impl in IMPLS:
            for mode in MODES:
                r = [x for x in out_rows if x["op"] == names[kind] and x["impl"] == impl and x["mode"] == mode]
                if r:
                    lines.append(f"| {impl} | {mode} | " + " | ".join(str(x["ms"]) for x in r)
                                 + f" | {max((x['peak_GiB'] for x in r if x['peak_GiB'] is not None), default='')} |")
        r = [x for x in out_rows if x["op"] == names[kind]][:1]
        if r:
            lines.append("| memory floor | fwd | " + " | ".join(
                str(x["floor_ms"]) for x in out_rows if x["op"] == names[kind] and x["impl"] == "ours"
                and x["mode"] == "fwd") + " | |")
        lines.append("")
    if dec:
        lines += ["## Decode step (ms)", "", "| " + " | ".join(dec[0]) + " |", "|" + "---|" * len(dec[0])]
        lines += ["| " + " | ".join(str(round(v, 4)) if isinstance(v, float) else str(v) for v in r.values())
                  + " |" for r in dec]
    with open(os.path.join(args.out, "kernel_bench.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
