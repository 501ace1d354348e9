#!/bin/bash
# The forty-fifth session's benchmark, call 1 of 2: every linear mixer of the table (ours, ours-fused, fla) in
# one process, T = 1K … 32K, forward, forward from a CUDA graph, forward + backward. Needs fla-core 0.6.0's
# wheel in .whl/ (see step.sh).
source kernels/results/runs/step.sh
step bench_linear 570 python -m kernels.bench --ops scalar,key,delta,gdn --impls ours,ours-fused,fla --out $OUT/bench1
cp $OUT/bench1/*.csv $OUT/bench1/*.md $L/ 2>/dev/null
cd $OUT && tar czf logs.tgz logs && rm -rf logs bench1
