#!/bin/bash
# The forty-third session's first device call: Triton's warp-group products (wgmma, Hopper's default) against
# per-warp ones (mma.sync: each forward kernel's twin compiled with DISABLE_MMA_V3, kernels._common.PER_WARP)
# for the forwards still over 3x the floor at 16K, per-kernel profiles.
L=$OUT/logs1
source kernels/results/runs/step.sh
ALL="kernels._common.PER_WARP={'delta.ut','delta.pass','delta.segment_state','delta.chain','key.gate','key.pass','key.segment_state'}"
for T in 16384; do
  step prof_wgmma_$T 90 python -m kernels.sweep profile --ops key,delta,gdn --T $T --impls ours --modes fwd
  step prof_mma2_$T 90 python -m kernels.sweep profile --ops key,delta,gdn --T $T --impls ours --modes fwd --set "$ALL"
done
cd $OUT && tar czf logs1.tgz logs1 && rm -rf logs1
