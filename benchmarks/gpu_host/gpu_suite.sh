#!/usr/bin/env bash
# Run several benchmark configurations on one GPU host, one configuration per GPU at a time
# (JOBS_PER_GPU=N shares each GPU among N at once; rows record it as jobs_per_gpu).
# Run from the repository root after: . benchmarks/gpu_host/gpu_env.sh
# usage: bash benchmarks/gpu_host/gpu_suite.sh "LABEL|METHOD|DATA|BUDGET_S|NS-TRAIN ARGS[|RUNNER ARGS]" ...
#   e.g. "int8-fused|nerf-qat|.gpu/fern|420|--pipeline.model.bits 8"
# Rows go to $OUT/rows.jsonl, the runs' logs (LABEL.log each) to $OUT/logs.tgz: the device tool
# returns at most 8 files from $OUT, so a file per run would crowd out the rows. The archive is
# refreshed every $LOG_SNAPSHOT_S seconds (20) while the runs go, so a call cut off at its time limit
# still returns the logs.
set -u
out=${OUT:-/tmp/out}
logs=$(mktemp -d)
mkdir -p "$out"
snapshot_logs() { tar czf "$out/logs.tgz.part" -C "$logs" . && mv "$out/logs.tgz.part" "$out/logs.tgz"; }
(while sleep "${LOG_SNAPSHOT_S:-20}"; do snapshot_logs; done) >/dev/null 2>&1 &
snapshots=$!
ngpu=$(nvidia-smi -L | wc -l)
export JOBS_PER_GPU=${JOBS_PER_GPU:-1}
slots=$((ngpu * JOBS_PER_GPU))
i=0
pids=()
for entry in "$@"; do
  IFS='|' read -r label method data budget opts runner_opts <<< "$entry"
  gpu=$((i % ngpu))
  # shellcheck disable=SC2086
  CUDA_VISIBLE_DEVICES=$gpu python3 benchmarks/run_benchmark.py --data "$data" --method "$method" --label "$label" \
    --iterations 1000000 --fit-budget --budget-s "$budget" --results "$out/rows.jsonl" ${runner_opts:-} -- $opts \
    > "$logs/$label.log" 2>&1 &
  pids+=($!)
  i=$((i + 1))
  # a bare `wait` would also wait for the log snapshots, which never end
  if [ $((i % slots)) -eq 0 ]; then wait "${pids[@]}"; pids=(); fi
done
[ ${#pids[@]} -gt 0 ] && wait "${pids[@]}"
for entry in "$@"; do
  label=${entry%%|*}
  echo "== $label"; grep -h "^\[benchmark\]\|Error\|error:" "$logs/$label.log" | tail -8
done
pkill -P "$snapshots" 2>/dev/null; kill "$snapshots" 2>/dev/null
snapshot_logs
