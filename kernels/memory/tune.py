"""Sweep the tile sizes, warps and stages of the chunked Titans kernels on a GPU.

    python -m kernels.memory.tune [--out DIR] [--T 4096] [--dtype bf16]

bf16 (default), B·T = 32768, H = 16, K = V = 128, chunk 64: the time of the forward and of
forward + backward (median of ``triton.testing.do_bench``) for each setting, changing one group of
``kernels.memory.chunk._blocks`` at a time from the default, and a per-kernel CUDA-time breakdown of
the default (torch.profiler). Writes ``titans_tune.csv`` and ``titans_tune.md``; a setting that
fails to compile (e.g. out of shared memory) is a row with its error.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

import torch
import torch.nn.functional as F

from . import chunk as CH
from .titans import chunk_titans

H, D, TOKENS = 16, 128, 32768

# (label, chunk size, overrides of the default blocks) — one group of kernels at a time
GRID = [("default", 64, {}), ("chunk 32", 32, {}), ("chunk 16", 16, {})] + \
    [(f"state BV={bv} warps={w} stages=1", 64, {"BV_state": bv, "warps_state": w, "stages_state": 1})
     for bv in (16, 32, 64) for w in (4, 8)] + \
    [(f"state BV={bv} warps=4 stages=2", 64, {"BV_state": bv, "warps_state": 4, "stages_state": 2})
     for bv in (16, 32)] + \
    [(f"grad BV={bv} BK={bk} warps={w}", 64, {"BV_grad": bv, "BK_grad": bk, "warps_grad": w})
     for bv, bk in ((16, 64), (32, 32), (64, 64), (32, 128)) for w in (4, 8)] + \
    [(f"prep warps={w}", 64, {"warps_prep": w}) for w in (2, 8)] + \
    [(f"out BV={bv}", 64, {"BV_out": bv}) for bv in (32, 128)]


def _inputs(B, T, dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, device="cuda")  # noqa: E731
    x = {"q": r(B, T, H, D) * D ** -0.5, "k": F.normalize(r(B, T, H, D), dim=-1), "v": r(B, T, H, D)}
    x = {n: t.to(dtype) for n, t in x.items()}
    x.update(g=F.logsigmoid(4 + r(B, T, H)), theta=0.1 * torch.sigmoid(r(B, T, H)),
             log_eta=F.logsigmoid(2 + r(B, T, H)))
    return {n: t.requires_grad_() for n, t in x.items()}


def _run(x, backward, chunk=64):
    o, _ = chunk_titans(x["q"], x["k"], x["v"], x["g"], x["theta"], x["log_eta"], chunk_size=chunk)
    if backward:
        o.backward(torch.ones_like(o))
    return o


def main(argv=None) -> int:
    from triton.testing import do_bench

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    args = ap.parse_args(argv)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    x = _inputs(TOKENS // args.T, args.T, dtype)
    default = CH._blocks
    rows = []
    for label, chunk, over in GRID:
        CH._blocks = lambda K, V, BT, prec, over=over: {**default(K, V, BT, prec), **over}  # noqa: E731
        row = {"setting": label}
        for mode, bwd in (("fwd", False), ("fwd+bwd", True)):
            try:
                if bwd:
                    ms = do_bench(lambda: _run(x, True, chunk), warmup=25, rep=100)
                else:
                    with torch.no_grad():
                        ms = do_bench(lambda: _run(x, False, chunk), warmup=25, rep=100)
                row[mode] = round(ms, 3)
            except Exception as e:  # noqa: BLE001 - a setting that does not compile is a row
                row[mode] = f"error: {type(e).__name__}: {str(e)[:80]}"
        rows.append(row)
        print(row, flush=True)
        with open(os.path.join(args.out, "titans_tune_partial.csv"), "a") as f:  # a cut-short run keeps rows
            f.write(f"{row['setting']},{row['fwd']},{row['fwd+bwd']}\n")
    CH._blocks = default
    for _ in range(2):
        _run(x, True)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        _run(x, True)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=15)
    print(table)
    with open(os.path.join(args.out, "titans_tune.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["setting", "fwd", "fwd+bwd"])
        w.writeheader()
        w.writerows(rows)
    lines = [f"# Chunked Titans kernels: settings on {torch.cuda.get_device_name()}, torch {torch.__version__}",
             f"{args.dtype}, B={TOKENS // args.T}, T={args.T}, H={H}, K=V={D}, chunk 64; default "
             f"{default(D, D, 64)}; ms = median of triton.testing.do_bench", "",
             "| setting | fwd ms | fwd+bwd ms |", "|---|---|---|"]
    lines += [f"| {r['setting']} | {r['fwd']} | {r['fwd+bwd']} |" for r in rows]
    lines += ["", "Per-kernel CUDA time of the default, forward + backward:", "", "```", table, "```"]
    with open(os.path.join(args.out, "titans_tune.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
