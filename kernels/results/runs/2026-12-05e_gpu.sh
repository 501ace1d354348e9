#!/bin/bash
# The forty-fourth session's device call: (1) per-kernel forward profiles at 16K, Triton's warp-group
# products (wgmma) against per-warp ones (mma.sync twins, kernels._common.PER_WARP); (2) the A/B of the
# per-warp pass; (3) the cost of Titans' fp64 gate logs on fp32 inputs (EXACT_LOGS); (4) Longhorn's K != V rows.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
L=$OUT/logs; mkdir -p $L
step() { local name=$1 lim=$2; shift 2; echo "== $name: $*" >> $L/steps.txt; local t0=$(date +%s)
  timeout $lim "$@" > $L/$name.txt 2>&1; echo "   rc=$? $(( $(date +%s) - t0 )) s" >> $L/steps.txt; }
ALL="kernels._common.PER_WARP={'delta.ut','delta.pass','delta.segment_state','delta.chain','key.gate','key.pass','key.segment_state'}"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv > $L/gpu.txt 2>&1
step prof_wgmma 90 python -m kernels.sweep profile --ops key,delta,gdn --T 16384 --impls ours --modes fwd
step prof_mma2 90 python -m kernels.sweep profile --ops key,delta,gdn --T 16384 --impls ours --modes fwd --set "$ALL"
step ab_pass 120 python -m kernels.sweep ab --ops delta,gdn,key --T 16384 --rounds 2 --set "kernels._common.PER_WARP={'delta.pass','key.pass'}"
step ab_exact 90 python -m kernels.sweep ab --ops titans --dtype fp32 --T 4096 --rounds 2 --set kernels.memory.chunk.EXACT_LOGS=False
step longhorn 150 python -m kernels.gpu_check --only unequal:longhorn
cd $OUT && tar czf logs.tgz logs && rm -rf logs
