"""Where the GPU time goes: per-kernel profiles beside fla, and sweeps of launch settings (needs CUDA).

    python -m kernels.sweep profile [--ops scalar,key,delta] [--T 4096]
    python -m kernels.sweep launch  [--ops scalar,key] [--T 4096]

``profile`` prints, for our chunked kernels and fla-core's, the wall time of forward and
forward + backward (``triton.testing.do_bench``) and each CUDA kernel's time from torch.profiler.
``launch`` times every kernel of the scalar (``kernels/diag/chunk.py``) and key-wise
(``kernels/diag/chunk_key.py``) chunked families under warps {2, 4, 8} x stages {1, 2, 3}, one
kernel at a time, and prints the fastest settings beside the ones in ``LAUNCH``. Shapes are the
benchmark's: bf16, H=16, K=V=128, B·T=32768.
"""

from __future__ import annotations

import argparse
import itertools

import torch

from . import bench


def kernel_times(fn, inp: dict, backward: bool, iters: int = 5) -> dict[str, float]:
    """ms per call of each CUDA kernel that ``fn(**inp)`` (and its backward) launches."""
    def run():
        o = fn(**inp)
        if backward:
            o.backward(torch.ones_like(o))

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


def profile(kinds: list[str], T: int) -> None:
    from triton.testing import do_bench

    for kind in kinds:
        inp = bench._inputs(bench.TOKENS // T, T, kind)
        for impl, fn in (("ours", bench._ours(kind)), ("fla", bench._fla(kind))):
            if fn is None:
                continue
            for backward in (False, True):
                mode = "fwd+bwd" if backward else "fwd"
                try:
                    times = kernel_times(fn, inp, backward)

                    def run():
                        o = fn(**inp)
                        if backward:
                            o.backward(torch.ones_like(o))
                    ms = do_bench(run, warmup=25, rep=100)
                except Exception as e:  # noqa: BLE001 - a refused op is a line of the report
                    print(f"== {kind} {impl} {mode}: failed {type(e).__name__}: {str(e)[:100]}", flush=True)
                    continue
                finally:
                    for t in inp.values():
                        t.grad = None
                total = sum(times.values())
                print(f"== {kind} {impl} {mode} T={T}: {ms:.3f} ms wall, kernels {total:.3f} ms", flush=True)
                for name, t in sorted(times.items(), key=lambda kv: -kv[1])[:12]:
                    print(f"   {t:8.3f} ms  {name[:90]}", flush=True)


def launch(kinds: list[str], T: int) -> None:
    import kernels.diag.chunk as scalar_mod
    import kernels.diag.chunk_key as key_mod

    for kind, mod in (("scalar", scalar_mod), ("key", key_mod)):
        if kind not in kinds:
            continue
        inp = bench._inputs(bench.TOKENS // T, T, kind)
        base = {k: dict(v) for k, v in mod.LAUNCH.items()}
        try:
            for name in base:
                res = []
                for nw, ns in itertools.product((2, 4, 8), (1, 2, 3)):
                    mod.LAUNCH[name] = dict(num_warps=nw, num_stages=ns)
                    try:
                        t = kernel_times(bench._ours(kind), inp, backward=True, iters=3)
                        res.append((t.get(f"_{name}_kernel", float("nan")), nw, ns))
                    except Exception:  # noqa: BLE001 - out of resources: not a candidate
                        res.append((float("inf"), nw, ns))
                mod.LAUNCH[name] = base[name]
                res.sort()
                best = " ".join(f"warps {nw}/stages {ns}: {t:.3f}" for t, nw, ns in res[:4])
                print(f"{kind} {name} (now {base[name]}): {best}; slowest {res[-1][0]:.3f} ms", flush=True)
        finally:
            mod.LAUNCH.update(base)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("profile", "launch"))
    ap.add_argument("--ops", default="scalar,key,delta",
                    help="comma-separated kinds (scalar, key, delta, gdn)")
    ap.add_argument("--T", type=int, default=4096, help="sequence length (B = 32768 / T)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU (the kernels are timed there)")
    (profile if args.what == "profile" else launch)(args.ops.split(","), args.T)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
