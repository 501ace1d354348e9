"""Compile the Titans kernels for a GPU without one: shared memory, registers and spills per kernel.

    python -m kernels.memory.compile_check [--dtype bf16,fp16,fp32] [--K 64,128,256] [--chunk 64] [--arch 90]
                                           [--set MODULE.NAME=VALUE ...]

The titans family of ``python -m kernels.compile_check`` (which says how): the chunked kernel's and the
fused recurrent kernel's autograd functions run forward and backward on CPU tensors with every launch
compiled for sm_<arch> instead, and ptxas reports registers and spills. Exits 1 if a kernel is over
the SM's shared memory.
"""

from __future__ import annotations

import sys

import torch

from .._common import seq_bounds
from ..bench import switches
from ..compile_check import compiled_launches
from ..compile_check import main as _main
from .chunk import ChunkTitans
from .recurrent import CHECKPOINT_INTERVAL, FusedRecurrentTitans


def check(dtype: torch.dtype, K: int, V: int, chunk: int, arch: int, settings: list | None = None) -> list[dict]:
    """One row per kernel of the chunked (``chunk`` long chunks) and the fused recurrent Titans kernels,
    forward and backward, with a retention gate and initial states; ``settings`` (module, name, value)
    switches set meanwhile, as kernels.sweep.parse_settings gives them."""
    Tt, H = 2 * chunk + 3, 2
    offsets = seq_bounds(None, 1, Tt, "cpu")
    rows = []
    for form, fn, last in (("chunked", ChunkTitans, chunk), ("recurrent", FusedRecurrentTitans, CHECKPOINT_INTERVAL)):
        q, k = (torch.zeros(Tt, H, K, dtype=dtype, requires_grad=True) for _ in range(2))
        v = torch.zeros(Tt, H, V, dtype=dtype, requires_grad=True)
        theta, g, eta = (torch.zeros(Tt, H, requires_grad=True) for _ in range(3))
        s0, z0 = (torch.zeros(1, H, K, V, requires_grad=True) for _ in range(2))
        # the recurrent one takes the sequence count before `retained`
        extra = (offsets, 1) if fn is FusedRecurrentTitans else (offsets,)
        with switches(list(settings or [])), compiled_launches(arch) as got:
            o, st, zt = fn.apply(q, k, v, theta, g, eta, s0, z0, *extra, False, True, last)
            n = len(got)
            torch.autograd.grad((o.float().sum(), st.sum(), zt.sum()), (q, k, v, theta, g, eta, s0, z0),
                                allow_unused=True)
        for i, r in enumerate(got):
            r["label"] = f"{form} {'forward' if i < n else 'backward'}"
        rows += got
    return rows


def main(argv=None) -> int:
    return _main(["--family", "titans", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
