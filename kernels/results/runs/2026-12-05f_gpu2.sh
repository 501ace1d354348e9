#!/bin/bash
# The forty-fifth session's benchmark, call 2: Gated DeltaNet (ours, ours-fused, fla), softmax attention (ours,
# SDPA's flash backend), the decode step at B = 64; each its own process and time limit.
source kernels/results/runs/step.sh
step bench_gdn 230 python -m kernels.bench --ops gdn --impls ours,ours-fused,fla --out $OUT/gdn
step bench_softmax 220 python -m kernels.bench --ops softmax --impls ours,sdpa --out $OUT/softmax
step bench_decode 90 python -m kernels.bench --ops decode --out $OUT/decode
for d in gdn softmax decode; do for f in $OUT/$d/*.csv $OUT/$d/*.md; do [ -f $f ] && cp $f $L/${d}_$(basename $f); done; done
cd $OUT && tar czf logs.tgz logs && rm -rf logs gdn softmax decode
