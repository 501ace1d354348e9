"""The delta rule's forward-only pass compiled for sm_90 without a GPU at 32- and 64-wide value tiles, DeltaNet
and Gated DeltaNet (bf16, K = V = 128): registers, spills, shared memory. Run it twice, as is and with
DISABLE_MMA_V3=1 (per-warp products), to compare the two kinds of tensor-core product:

    python kernels/results/runs/2026-12-05d_pass_tiles.py
    DISABLE_MMA_V3=1 python kernels/results/runs/2026-12-05d_pass_tiles.py
"""
import os

import torch

import kernels.delta.chunk as C
from kernels.delta.compile_check import check

products = "per-warp (mma.sync)" if os.environ.get("DISABLE_MMA_V3") else "warp-group (wgmma)"
for gated in (False, True):
    for bv in (32, 64):
        C._pass_tile = lambda *a, **k: bv  # noqa: E731 - the tile the pass would take with fewer sequences
        row = [r for r in check(torch.bfloat16, 128, 128, 64, 90, gated=gated) if r["label"] == "forward, alone"
               and r["kernel"] == "_state_kernel"][0]
        print(f"{products}: {'Gated DeltaNet' if gated else 'DeltaNet'}, {bv}-wide: {row['regs']} registers, "
              f"{row['spill_stores']} B of spill stores, {row['shared'] / 1024:.0f} KB shared, "
              f"{row['stages']} stages", flush=True)
