"""Compile the Titans kernels for a GPU without one: shared memory, registers and spills per kernel.

    python -m kernels.memory.compile_check [--dtype bf16|fp16|fp32] [--K 128] [--chunk 64] [--arch 90]

Triton compiles each kernel to a cubin for sm_<arch> with the launch settings of ``_blocks``
(ptxas ships with Triton), then ``ptxas -v`` reports registers and spills. A kernel over its SM's
shared memory (227 KB on sm_90) would fail at launch; spills cost local-memory traffic.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU even where tests interpret

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from . import chunk as CH  # noqa: E402
from . import recurrent as RE  # noqa: E402
from .._common import DTYPES, cdiv  # noqa: E402
from ..compile_check import SHARED_LIMIT, ptxas_report  # noqa: E402

_INTS = {"MAXC", "NT", "NC", "C"}
_INDEX = {"offsets", "chunk_offsets", "chunk_indices", "bounds", "ck_off"}
_INPUT = {"q", "k", "v", "o", "do"}           # in the inputs' dtype; every other pointer is fp32


def _compile(fn, consts, dtype, warps, stages, arch):
    sig, cx = {}, {}
    for n in fn.arg_names:
        if n in consts:
            sig[n], cx[n] = "constexpr", consts[n]
        elif n in _INTS:
            sig[n] = "i32"
        else:
            sig[n] = "*i64" if n in _INDEX else (f"*{dtype}" if n in _INPUT else "*fp32")
    src = triton.compiler.ASTSource(fn, sig, constexprs=cx)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": warps, "num_stages": stages})


def _ptxas_info(ptx: str, arch: int) -> str:
    regs, spills = ptxas_report(ptx, arch)
    return f"{regs if regs is not None else '?'} registers, {spills if spills is not None else 0} B spill stores"


def jobs(dtype: str, K: int, BT: int):
    """(name, kernel, constexprs, warps, stages) as the launchers use them, at H = 16, K = V."""
    prec = CH._prec(DTYPES[dtype])
    bl = CH._blocks(K, K, BT, prec)
    shape = dict(H=16, K=K, V=K, BT=BT, BK=bl["BK"], PREC=prec)
    gates = dict(USE_G=True, RETAINED=False)
    out = [("prep", CH._prep_kernel, dict(shape, BV=bl["BV_prep"], **gates), bl["warps_prep"], 3),
           ("state", CH._state_kernel, dict(shape, BV=bl["BV_state"], HAS_H0=True, STORE_HT=True),
            bl["warps_state"], bl["stages_state"]),
           ("output", CH._output_kernel, dict(shape, BV=bl["BV_out"]), 4, 3),
           ("dstate", CH._dstate_kernel, dict(shape, BV=bl["BV_state"], HAS_DHT=True, STORE_DH0=True),
            bl["warps_state"], bl["stages_state"]),
           ("grad", CH._grad_kernel, dict(shape, BV=bl["BV_grad"], BK=bl["BK_grad"]), bl["warps_grad"], 3),
           ("dgate", CH._dgate_kernel, dict(H=16, BT=BT, PREC=prec, **gates), bl["warps_gate"], 3)]
    BK, BV, w = RE._blocks(K, K, "fwd")
    out.append(("recurrent fwd", RE._fwd_kernel, dict(H=16, K=K, V=K, BK=BK, BV=BV, USE_H0=True, STORE_HT=True,
                                                       SAVE_CKPT=True, **gates), w, 3))
    BK, BV, w = RE._blocks(K, K, "bwd")
    out.append(("recurrent bwd", RE._bwd_kernel, dict(H=16, K=K, V=K, BK=BK, BV=BV, NV=cdiv(K, BV),
                                                       USE_DHT=True, STORE_DH0=True, **gates), w, 3))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    ap.add_argument("--K", type=int, default=128, help="head dim, K = V")
    ap.add_argument("--chunk", type=int, default=64, choices=CH.CHUNK_SIZES)
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--only", default="", help="comma-separated kernel names")
    args = ap.parse_args(argv)
    only = set(filter(None, args.only.split(",")))
    limit = SHARED_LIMIT.get(args.arch)
    bad = 0
    for name, fn, consts, warps, stages in jobs(args.dtype, args.K, args.chunk):
        if only and name not in only:
            continue
        try:
            c = _compile(fn, consts, args.dtype, warps, stages, args.arch)
            over = limit is not None and c.metadata.shared > limit
            bad += over
            print(f"{name:14s} shared {c.metadata.shared:6d} B{' (OVER THE LIMIT)' if over else ''}, "
                  f"{warps} warps, {stages} stages: {_ptxas_info(c.asm['ptx'], args.arch)}", flush=True)
        except Exception as e:  # noqa: BLE001 - a kernel that does not compile is a line, not a crash
            bad += 1
            print(f"{name:14s} FAILED: {type(e).__name__}: {str(e)[:300]}", flush=True)
    return int(bad > 0)


if __name__ == "__main__":
    sys.exit(main())
