# Sourced by the device scripts from 2026-12-05d on: step NAME SECONDS CMD... runs CMD under a time limit,
# its output in $L/NAME.txt (L: $OUT/logs unless set before), and notes its exit status and seconds in
# $L/steps.txt. Wheels in .whl/ (fla-core's, for the benchmark) are installed first where there are any.
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
L=${L:-$OUT/logs}; mkdir -p $L
step() { local name=$1 lim=$2; shift 2; echo "== $name: $*" >> $L/steps.txt; local t0=$(date +%s)
  timeout $lim "$@" > $L/$name.txt 2>&1; echo "   rc=$? $(( $(date +%s) - t0 )) s" >> $L/steps.txt; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv > $L/gpu.txt 2>&1
ls .whl/*.whl > /dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --target /tmp/site .whl/*.whl \
  > $L/pip.txt 2>&1 && export PYTHONPATH=$PYTHONPATH:/tmp/site
