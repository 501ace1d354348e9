#!/bin/bash
# The forty-fifth session's call 5: the scalar family's pass before a backward as the default for bf16 inputs
# (kernels.diag.chunk.FUSED_BEFORE_BACKWARD): A/B against it switched off (bf16 1K / 4K; fp16 at 4K the pass
# forced against its default of two kernels), the mamba2, retnet and linear attention GPU checks at the default
# switches, and Mamba-2's benchmark rows (ours, every T) at the new default (not with NO_BENCH=1: on an H100).
source kernels/results/runs/step.sh
F=kernels.diag.chunk.FUSED_BEFORE_BACKWARD=False
step ab_1k 120 python -m kernels.sweep ab --ops scalar --T 1024 --rounds 3 --set $F
step ab_4k 120 python -m kernels.sweep ab --ops scalar --T 4096 --rounds 3 --set $F
step ab_4k_fp16 120 python -m kernels.sweep ab --ops scalar --T 4096 --rounds 3 --dtype fp16 --set kernels.diag.chunk.FUSED_FORWARD=True
# (FUSED_MIN_PROGRAMS=1: every shape counts as a program per SM, so the checks take the new default path)
step check 200 python -m kernels.gpu_check --only mamba2,retnet,linear_attention --dtypes bfloat16,float16 --set kernels.diag.chunk.FUSED_MIN_PROGRAMS=1 --out $OUT/check
[ -z "$NO_BENCH" ] && step bench 150 python -m kernels.bench --ops scalar --impls ours --out $OUT/bench
for d in check bench; do for f in $OUT/$d/*.csv $OUT/$d/*.md; do [ -f $f ] && cp $f $L/${d}_$(basename $f); done; done
cd $OUT && tar czf logs.tgz logs && rm -rf logs check bench
