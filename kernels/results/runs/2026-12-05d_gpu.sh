#!/bin/bash
# The forty-third session's first device call: Triton's warp-group products (wgmma, Hopper's default) against
# the older per-warp ones (mma.sync, DISABLE_MMA_V3=1) for the forwards still over 3x the floor at 8K-32K.
# One process per setting, each with its own Triton cache (the env var is read when a kernel compiles).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
L=$OUT/logs1; mkdir -p $L
step() { local name=$1 lim=$2; shift 2; echo "== $name: $*" >> $L/steps.txt; local t0=$(date +%s)
  timeout $lim "$@" > $L/$name.txt 2>&1; echo "   rc=$? $(( $(date +%s) - t0 )) s" >> $L/steps.txt; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv > $L/gpu.txt 2>&1
for T in 8192 16384 32768; do
  step prof_wgmma_$T 80 env TRITON_CACHE_DIR=/tmp/tc_a python -m kernels.sweep profile --ops key,delta,gdn --T $T \
    --impls ours --modes fwd
  step prof_mma2_$T 80 env TRITON_CACHE_DIR=/tmp/tc_b DISABLE_MMA_V3=1 python -m kernels.sweep profile \
    --ops key,delta,gdn --T $T --impls ours --modes fwd
done
step bench_wgmma 60 env TRITON_CACHE_DIR=/tmp/tc_a python -m kernels.bench --ops key,delta,gdn --impls ours \
  --Ts 8192,16384,32768 --modes "fwd graph" --out $L/bench_wgmma
step bench_mma2 60 env TRITON_CACHE_DIR=/tmp/tc_b DISABLE_MMA_V3=1 python -m kernels.bench --ops key,delta,gdn \
  --impls ours --Ts 8192,16384,32768 --modes "fwd graph" --out $L/bench_mma2
cd $OUT && tar czf logs1.tgz logs1 && rm -rf logs1
