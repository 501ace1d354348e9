#!/bin/bash
# The forty-fifth session's benchmark, call 3: Titans' linear memory (the chunked kernels and the fused
# recurrent one), T = 1K … 32K, with the inputs' gradients cleared before each call.
source kernels/results/runs/step.sh
step bench_titans 500 python -m kernels.bench --ops titans --impls ours,ours-recurrent --out $OUT/titans
for f in $OUT/titans/*.csv $OUT/titans/*.md; do [ -f $f ] && cp $f $L/titans_$(basename $f); done
cd $OUT && tar czf logs.tgz logs && rm -rf logs titans
