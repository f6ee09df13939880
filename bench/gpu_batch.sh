#!/bin/bash
# Many bench runs side by side on one GPU, in one call of a lent device machine: the way the session-16
# H200 results were made (bench/results/digits_steps_h200.json, ablation_digits_h200.md).
#
#   bash bench/gpu_batch.sh JOBS [OUT]
#
# JOBS: one job a line, "NAME COMMAND...", run P at a time (default 10; small DTN nets leave the GPU
# mostly idle, so side-by-side runs add up). No job starts after DEADLINE seconds (default 470) and each
# is stopped there, so the results come back within one device call. Each job's output goes to
# runs/gpu-batch-logs/NAME.log (LOGS=DIR for another folder), exit statuses and times to summary.txt
# there. OUT (default /tmp/gpu_batch) gets one archive: the logs, bench/results/h200_*.json and the
# small files (config, status, metrics, results) of every run directory under runs/.
# Data: DTN_DATA_DIR and DTN_CACHE_DIR default to .devcarry/data and .devcarry/cache (a folder git
# ignores, carried to the machine: MNIST plus any cached f / reader / LeNet; synth-digits is generated
# there once, before the jobs, instead of by every job at once).
set -u
JOBS=$1
OUT=${2:-/tmp/gpu_batch}
DEADLINE=${DEADLINE:-470}
P=${P:-10}
MIN_LEFT=${MIN_LEFT:-20}   # seconds a job needs left to be started
L=${LOGS:-runs/gpu-batch-logs}   # git ignores runs/
mkdir -p "$OUT" "$L"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
export DTN_DATA_DIR=${DTN_DATA_DIR:-$PWD/.devcarry/data} DTN_CACHE_DIR=${DTN_CACHE_DIR:-$PWD/.devcarry/cache}
T0=$(date +%s)
nvidia-smi -L > $L/gpu.txt 2>&1
python -c "import torch, sys; print(sys.version, torch.__version__, torch.cuda.is_available())" >> $L/gpu.txt 2>&1
if [ "${PRELOAD:-1}" = 1 ]; then   # PRELOAD=0: the jobs load their own data
python -c "
from dtn.data import load
if __name__ == '__main__':
    for n in ('synth-digits', 'mnist'):
        for s in ('train', 'test'):
            print(n, s, len(load(n, s).images))
" > $L/data.log 2>&1
fi
echo "data: rc $? at $(( $(date +%s) - T0 )) s" >> $L/gpu.txt
grep -v '^\s*#' "$JOBS" | sed '/^\s*$/d; s/ *$//' > $L/jobs.txt   # a trailing blank would join lines in xargs -L
job() {  # NAME COMMAND...
  local name=$1; shift
  local t=$(date +%s)
  local left=$(( DEADLINE - (t - T0) ))
  if [ $left -lt ${MIN_LEFT:-20} ]; then echo "$name not started" >> $L/summary.txt; return; fi
  timeout $left "$@" > $L/$name.log 2>&1
  echo "$name rc=$? start=$(( t - T0 )) s wall=$(( $(date +%s) - t )) s" >> $L/summary.txt
}
export -f job; export T0 DEADLINE L MIN_LEFT
xargs -P $P -L 1 bash -c 'job "$@"' _ < $L/jobs.txt
echo "all: $(( $(date +%s) - T0 )) s" >> $L/summary.txt
cat $L/summary.txt
tar czf "$OUT/gpu_batch.tgz" "$L" $(ls bench/results/h200_*.json 2>/dev/null) \
  $(find runs -maxdepth 4 \( -name results.json -o -name run.json -o -name config.toml -o -name metrics.csv \) 2>/dev/null)
cp $L/summary.txt "$OUT/"
