#!/bin/bash
# The forty-second session's first device call: checks never run on a GPU, then the K ≠ V padding's cost.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
L=$OUT/logs; mkdir -p $L
step() { local name=$1 lim=$2; shift 2; echo "== $name: $*" >> $L/steps.txt; local t0=$(date +%s)
  timeout $lim "$@" > $L/$name.txt 2>&1; echo "   rc=$? $(( $(date +%s) - t0 )) s" >> $L/steps.txt; }
nvidia-smi --query-gpu=name,driver_version --format=csv > $L/gpu.txt
python -c "import torch, triton; print(torch.__version__, triton.__version__)" >> $L/gpu.txt
step pad 110 python -m kernels.gpu_check --out $L/pad --only unequal:deltanet,unequal:gated_deltanet,unequal:longhorn,unequal:ttt_linear \
  --dtypes bfloat16 --set kernels.delta.chunk.UNEQUAL_PAD=True --set kernels.delta.chunk.UNEQUAL_IN_FP32=False
step unequal 120 python -m kernels.gpu_check --out $L/unequal --only unequal:longhorn,unequal:softmax_attention,unequal:ttt_linear
step ttt 60 python -m kernels.gpu_check --out $L/ttt --only ttt_linear
step titans 60 python -m kernels.gpu_check --out $L/titans --only titans --dtypes float32
step models 60 python -m models.gpu_check --mixers ttt_linear --out $L/models
step check 90 python -m kernels.check --dtypes float32,bfloat16,float16 --T 300 --K 64 --V 64
step time 70 python kernels/results/runs/2026-12-05c_unequal_time.py
cd $OUT && tar czf logs.tgz logs && rm -rf logs
