#!/bin/bash
# The forty-second session's second device call: the K ≠ V rows and kernels.check rows the first one's limits cut,
# at the padding's new default.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
L=$OUT/logs2; mkdir -p $L
step() { local name=$1 lim=$2; shift 2; echo "== $name: $*" >> $L/steps.txt; local t0=$(date +%s)
  timeout $lim "$@" > $L/$name.txt 2>&1; echo "   rc=$? $(( $(date +%s) - t0 )) s" >> $L/steps.txt; }
step unequal 150 python -m kernels.gpu_check --out $L/unequal --only unequal:softmax_attention,unequal:ttt_linear
step pad 60 python -m kernels.gpu_check --out $L/pad --only unequal:deltanet --dtypes bfloat16
step check 150 python -m kernels.check gla s4d s6 longhorn_diag qlstm rg_lru mingru deltanet gated_deltanet longhorn \
  aaren ttt_linear --dtypes float32,bfloat16,float16 --T 300 --K 64 --V 64
cd $OUT && tar czf logs2.tgz logs2 && rm -rf logs2
