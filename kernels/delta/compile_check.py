"""Compile the chunked delta kernels for a GPU without one: shared memory, registers and spills.

    python -m kernels.delta.compile_check [--dtype bf16,fp16,fp32] [--K 64,128,256] [--chunk 64] [--arch 90]
                                          [--segments] [--set MODULE.NAME=VALUE ...]

The delta family of ``python -m kernels.compile_check`` (which says how, and checks the diagonal
families too): the real launchers (``_forward``, ``_backward``) run on CPU tensors with every launch
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
from . import chunk as CH


def check(dtype: torch.dtype, K: int, V: int, chunk: int, arch: int, gated: bool = True,
          segments: bool = False, settings: list | None = None) -> list[dict]:
    """One row per kernel of a forward and backward at this shape, then of the one-pass forward
    without autograd of an equal-length batch ("forward, alone"); with ``segments`` those of the
    forward and backward over segments (SEGMENTS, three segments of a chunk); ``settings`` (module,
    name, value) switches set meanwhile, as kernels.sweep.parse_settings gives them."""
    Tt, H = 2 * chunk + 3, 2
    q = torch.zeros(Tt, H, K, dtype=dtype)
    v = torch.zeros(Tt, H, V, dtype=dtype)
    # β in the inputs' dtype and fp32 gates, as a layer makes them and the benchmark passes them
    beta, g = torch.zeros(Tt, H, dtype=dtype), torch.zeros(Tt, H) if gated else None
    # an equal-length batch (its layout known on the host) for segments, else a packed one
    offsets = seq_bounds(None, 1, Tt, "cpu") if segments else torch.tensor([0, Tt], dtype=torch.int64)
    h0 = torch.zeros(1, H, K, V)
    changes = [(CH, "SEGMENTS", True), (CH, "FUSED_MIN_PROGRAMS", 10 ** 4)] if segments else []
    with switches(changes + list(settings or [])), compiled_launches(arch) as rows:
        _, _, saved = CH._forward(q, q, v, beta, g, h0, offsets, K ** -0.5, chunk, True)
        n = len(rows)
        CH._backward(q, q, v, beta, g, h0, offsets, K ** -0.5, chunk, saved, torch.zeros_like(v),
                     torch.zeros(1, H, K, V))
        m = len(rows)
        with switches([(CH, "FUSED_FORWARD", True)] + ([] if segments else [(CH, "FUSED_MIN_PROGRAMS", 1)])):
            CH._forward(q, q, v, beta, g, h0, seq_bounds(None, 1, Tt, "cpu"), K ** -0.5, chunk, True, keep=False)
    for i, r in enumerate(rows):
        r["label"] = ("segments " if segments else "") + ("forward" if i < n else "backward" if i < m
                                                          else "forward, alone")
    return rows


def main(argv=None) -> int:
    return _main(["--family", "delta", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
