#!/bin/bash
# The forty-fourth session's device call: (1) per-kernel forward profiles at 16K, Triton's warp-group
# products (wgmma) against per-warp ones (mma.sync twins, kernels._common.PER_WARP); (2) the A/B of the
# per-warp pass; (3) the cost of Titans' fp64 gate logs on fp32 inputs (EXACT_LOGS); (4) Longhorn's K != V rows.
source kernels/results/runs/step.sh
ALL="kernels._common.PER_WARP={'delta.ut','delta.pass','delta.segment_state','delta.chain','key.gate','key.pass','key.segment_state'}"
step prof_wgmma 90 python -m kernels.sweep profile --ops key,delta,gdn --T 16384 --impls ours --modes fwd
step prof_mma2 90 python -m kernels.sweep profile --ops key,delta,gdn --T 16384 --impls ours --modes fwd --set "$ALL"
step ab_pass 120 python -m kernels.sweep ab --ops delta,gdn,key --T 16384 --rounds 2 --set "kernels._common.PER_WARP={'delta.pass','key.pass'}"
step ab_exact 90 python -m kernels.sweep ab --ops titans --dtype fp32 --T 4096 --rounds 2 --set kernels.memory.chunk.EXACT_LOGS=False
step longhorn 150 python -m kernels.gpu_check --only unequal:longhorn
cd $OUT && tar czf logs.tgz logs && rm -rf logs
