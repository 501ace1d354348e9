"""Compile the chunked delta kernels for a GPU without one: shared memory, registers and spills.

    python -m kernels.delta.compile_check [--dtype bf16,fp16,fp32] [--K 64,128,256] [--chunk 64] [--arch 90]
                                          [--segments]

The real launchers (``_forward``, ``_backward``) run on CPU tensors with every ``kernel[grid](...)``
turned into a compilation for sm_<arch> (Triton ships ptxas), so the launch settings checked are the
ones used. ``ptxas -v`` then reports registers and spills. A kernel over the SM's shared memory
(227 KB on sm_90) would fail at launch; spills cost local-memory traffic. Exits 1 if one is over.
Things the interpreter accepts and the GPU compiler does not (a plain global read in a kernel, say)
fail here too.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU even where tests interpret

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from .._common import seq_bounds  # noqa: E402
from ..bench import switches  # noqa: E402
from . import chunk as CH  # noqa: E402

SHARED_LIMIT = {90: 232448, 80: 166912}
_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int64: "i64",
          torch.int32: "i32"}
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _signature(fn, args, kwargs):
    bound = dict(zip(fn.arg_names, args))
    bound.update(kwargs)
    sig, consts = {}, {}
    for p in fn.params:
        v = bound[p.name] if p.name in bound else p.default   # a parameter left at its default
        if p.is_constexpr or v is None:
            sig[p.name], consts[p.name] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            sig[p.name] = "*" + _TYPES[v.dtype]
        elif isinstance(v, bool):
            sig[p.name] = "i1"
        elif isinstance(v, int):
            sig[p.name] = "i32" if abs(v) < 2 ** 31 else "i64"
        elif isinstance(v, float):
            sig[p.name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: cannot type argument {p.name} ({type(v).__name__})")
    return sig, consts


def check(dtype: torch.dtype, K: int, V: int, chunk: int, arch: int, gated: bool = True,
          segments: bool = False, settings: list | None = None) -> list[dict]:
    """One row per kernel of a forward and backward at this shape; with ``segments`` those of the
    forward and backward over segments (SEGMENTS, three segments of a chunk); ``settings`` (module,
    name, value) switches set meanwhile, as kernels.sweep.parse_settings gives them."""
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    rows = []

    def compile_only(self, *args, grid, warmup=False, **kwargs):
        opts = {n: kwargs.pop(n) for n in ("num_warps", "num_stages") if n in kwargs}
        sig, consts = _signature(self, args, kwargs)
        k = triton.compile(ASTSource(self, sig, consts), target=GPUTarget("cuda", arch, 32), options=opts)
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
            f.write(k.asm["ptx"])
        try:
            out = subprocess.run([ptxas, f"-arch=sm_{arch}a" if arch >= 90 else f"-arch=sm_{arch}", "-v",
                                  f.name, "-o", os.devnull], capture_output=True, text=True).stderr
        finally:
            os.unlink(f.name)
        regs = re.search(r"Used (\d+) registers", out)
        spills = [int(x) for x in re.findall(r"(\d+) bytes spill stores", out)]
        rows.append({"kernel": self.__name__, "warps": k.metadata.num_warps, "stages": opts.get("num_stages", 3),
                     "shared": k.metadata.shared, "regs": int(regs.group(1)) if regs else None,
                     "spill_stores": max(spills, default=0)})

    Tt, H = 2 * chunk + 3, 2
    q = torch.zeros(Tt, H, K, dtype=dtype)
    v = torch.zeros(Tt, H, V, dtype=dtype)
    beta, g = torch.zeros(Tt, H), torch.zeros(Tt, H) if gated else None
    # an equal-length batch (its layout known on the host) for segments, else a packed one
    offsets = seq_bounds(None, 1, Tt, "cpu") if segments else torch.tensor([0, Tt], dtype=torch.int64)
    h0 = torch.zeros(1, H, K, V)
    changes = [(JITFunction, "run", compile_only)]
    if segments:
        changes += [(CH, "SEGMENTS", True), (CH, "FUSED_MIN_PROGRAMS", 10 ** 4)]
    with switches(changes + list(settings or [])):
        _, _, saved = CH._forward(q, q, v, beta, g, h0, offsets, K ** -0.5, chunk, True)
        CH._backward(q, q, v, beta, g, h0, offsets, K ** -0.5, chunk, saved, torch.zeros_like(v),
                     torch.zeros(1, H, K, V))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="bf16,fp16,fp32")
    ap.add_argument("--K", default="64,128,256", help="head dims, K = V")
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--segments", action="store_true", help="the forward and backward over segments (SEGMENTS)")
    from ..sweep import add_set_option, settings_of

    add_set_option(ap, "compile", "kernels.delta.chunk.SEGMENT_TRANSITIONS_IN_SCAN=True")
    args = ap.parse_args(argv)
    settings = settings_of(ap, args)
    limit = SHARED_LIMIT.get(args.arch, 232448)
    over = 0
    print("| dtype | K = V | kernel | warps | stages | shared KB | registers | spill stores (B) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.dtype.split(","):
        for K in (int(x) for x in args.K.split(",")):
            for r in check(_DTYPES[name], K, K, args.chunk, args.arch, segments=args.segments, settings=settings):
                flag = " **over**" if r["shared"] > limit else ""
                over += bool(flag)
                print(f"| {name} | {K} | {r['kernel']} | {r['warps']} | {r['stages']} | "
                      f"{r['shared'] / 1024:.0f}{flag} | {r['regs']} | {r['spill_stores']} |", flush=True)
    print(f"\n{over} kernels over the {limit // 1024} KB of shared memory of sm_{args.arch}")
    return int(over > 0)


if __name__ == "__main__":
    sys.exit(main())
