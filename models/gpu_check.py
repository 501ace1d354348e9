"""GPU check of the layers: every zoo mixer's MixerLayer under bf16 autocast (what Lightning's
"bf16-mixed" precision runs; --dtype fp16 for "16-mixed") against the same layer in float32, forward
and backward.

    python -m models.gpu_check [--out DIR] [--mixers mamba2,gla] [--backends reference,triton] [--dtype fp16]

Writes ``layer_check.md`` (``layer_check_fp16.md`` with --dtype fp16) under --out (default $OUT or .)
and exits 1 if a row fails. A row passes when the output comes back in the autocast dtype, every
parameter's gradient is finite, and its relative difference from the float32 layer is under 2e-2 or
under three times the mixer's own sensitivity to that rounding (the float32 layer on x rounded to the
16-bit dtype and back: a mixer whose dynamics amplify small changes, such as Moneta at its default
initialisation, moves that much in any precision).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

import dsf
from dsf.testing import rel_err
from kernels.gpu_check import write_report

from .layers import MixerLayer

TOL = 2e-2


def check_autocast(name: str, backend: str, device: str = "cuda", d_model: int = 256, n_heads: int = 2,
                   B: int = 2, T: int = 300, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> dict:
    """One row: the layer under ``dtype`` autocast against its float32 self (``err``), the float32
    layer's own move under x rounded to ``dtype`` (``sensitivity``), the output dtype, whether the
    gradients are finite, and ``ok``."""
    torch.manual_seed(seed)
    layer = MixerLayer(name, d_model, n_heads, backend=backend).to(device)
    x = torch.randn(B, T, d_model, device=device)
    with torch.no_grad():
        ref = layer(x)
        sensitivity = rel_err(layer(x.to(dtype).float()), ref)
    with torch.autocast(torch.device(device).type, dtype=dtype):
        y = layer(x)
    y.float().square().mean().backward()
    finite = all(p.grad is not None and bool(torch.isfinite(p.grad).all())
                 for p in layer.parameters() if p.requires_grad)
    err = rel_err(y, ref)
    ok = y.dtype == dtype and finite and err < max(TOL, 3 * sensitivity)
    return dict(err=err, sensitivity=sensitivity, dtype=str(y.dtype)[6:], finite=finite, ok=ok)


def with_kernels(names: list[str]) -> list[str]:
    """The mixers among ``names`` that the Triton backend compiles."""
    import kernels

    return [n for n in names if kernels.supports(dsf.zoo.get(n)) is not None]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--mixers", default=None, help="comma-separated zoo names (default: all)")
    ap.add_argument("--backends", default="reference,triton", help="of reference, triton")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu with TRITON_INTERPRET=1 (slow)")
    ap.add_argument("--T", type=int, default=300)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16", help="the autocast dtype")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("needs a CUDA GPU (or --device cpu with TRITON_INTERPRET=1)")
    backends = args.backends.split(",")
    for b in backends:
        if b not in ("reference", "triton"):
            ap.error(f"--backends: {b!r} is not one of reference, triton")
    names = args.mixers.split(",") if args.mixers else dsf.zoo.names()
    for n in names:
        if n not in dsf.zoo.names():
            ap.error(f"--mixers: {n!r} is not a zoo mixer (one of {', '.join(dsf.zoo.names())})")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    lines = [f"# Layer check: MixerLayer under {args.dtype} autocast vs float32 ({args.device}"
             + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else "") + f", torch {torch.__version__})",
             f"d_model = {args.d_model}, 2 heads, B = 2, T = {args.T}; err: relative difference from the float32 "
             f"layer; sensitivity: the float32 layer's under x rounded to {args.dtype}; ok: {args.dtype} out, finite "
             f"gradients, "
             f"err < max({TOL}, 3 × sensitivity)", "",
             "| backend | mixer | out dtype | err | sensitivity | grads finite | ok |", "|---|---|---|---|---|---|---|"]
    failed = 0
    for backend in backends:
        for name in with_kernels(names) if backend == "triton" else names:
            try:
                r = check_autocast(name, backend, args.device, args.d_model, T=args.T, dtype=dtype)
                row = (f"| {backend} | {name} | {r['dtype']} | {r['err']:.1e} | {r['sensitivity']:.1e} | "
                       f"{'yes' if r['finite'] else 'no'} | {'yes' if r['ok'] else '**no**'} |")
                failed += not r["ok"]
            except Exception as e:  # noqa: BLE001 - a crash is a failing row, reported with its message
                row = f"| {backend} | {name} | {type(e).__name__}: {str(e)[:160]} | | | | **no** |"
                failed += 1
            lines.append(row)
            print(row, flush=True)
    return write_report(args.out, "layer_check.md" if args.dtype == "bf16" else "layer_check_fp16.md", lines,
                        failed)


if __name__ == "__main__":
    sys.exit(main())
