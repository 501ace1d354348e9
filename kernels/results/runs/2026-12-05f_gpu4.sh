#!/bin/bash
# The forty-fifth session's call 4: the scalar family's one-pass forward before a backward where the pass has a
# program per SM (1K-4K at the benchmark's shape), which the fresh benchmark's ours-fused rows showed faster
# (1.40 against 1.55 ms for Mamba-2's forward + backward): A/B in one process, bf16 and fp32, and where the time goes.
source kernels/results/runs/step.sh
F=kernels.diag.chunk.FUSED_FORWARD=True
step ab_1k 120 python -m kernels.sweep ab --ops scalar --T 1024 --rounds 3 --set $F
step ab_4k 120 python -m kernels.sweep ab --ops scalar --T 4096 --rounds 3 --set $F
step ab_4k_fp32 150 python -m kernels.sweep ab --ops scalar --T 4096 --rounds 2 --dtype fp32 --set $F
step prof_two 60 python -m kernels.sweep profile --ops scalar --T 4096 --impls ours --modes fwd+bwd
step prof_one 60 python -m kernels.sweep profile --ops scalar --T 4096 --impls ours --modes fwd+bwd --set $F
cd $OUT && tar czf logs.tgz logs && rm -rf logs
