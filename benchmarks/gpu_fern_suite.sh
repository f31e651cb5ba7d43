#!/usr/bin/env bash
# nerf-qat on fern: fp32 baseline, int8 fused/unfused, int4 fused, each within one training budget,
# spread over the GPUs of the host (one configuration per GPU at a time), then vanilla-nerf speed.
# Run on the GPU host from the repository root after: . benchmarks/gpu_env.sh
# usage: bash benchmarks/gpu_fern_suite.sh BUDGET_S [LABEL=ARGS ...]
set -u
budget=${1:-420}; shift || true
data=${DATA:-.gpu/fern}
rows=${OUT:-/tmp/out}/rows.jsonl
configs=("$@")
if [ ${#configs[@]} -eq 0 ]; then
  configs=(
    "fp32=--pipeline.model.quantize False"
    "int8-fused=--pipeline.model.bits 8"
    "int8-unfused=--pipeline.model.bits 8 --pipeline.model.fuse-relu False"
    "int4-fused=--pipeline.model.bits 4"
  )
fi
ngpu=$(nvidia-smi -L | wc -l)
i=0
for entry in "${configs[@]}"; do
  label=${entry%%=*}; opts=${entry#*=}
  gpu=$((i % ngpu))
  # shellcheck disable=SC2086
  CUDA_VISIBLE_DEVICES=$gpu python3 benchmarks/run_benchmark.py --data "$data" --label "$label" \
    --iterations 1000000 --fit-budget --budget-s "$budget" --results "$rows" -- $opts \
    > "${OUT:-/tmp/out}/$label.log" 2>&1 &
  i=$((i + 1))
  if [ $((i % ngpu)) -eq 0 ]; then wait; fi
done
wait
for entry in "${configs[@]}"; do label=${entry%%=*}; grep -h "^\[benchmark\]" "${OUT:-/tmp/out}/$label.log" | tail -1; done
