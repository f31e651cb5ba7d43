#!/usr/bin/env bash
# Render speed of compressed files with the occupancy grid they were exported with and with other
# grids (benchmarks/rebake_occupancy.py re-exports them with nothing else changed), side by side.
# Run from the repository root after: . benchmarks/gpu_host/gpu_env.sh
# usage: [GRIDS="128,0.1 128,0.001"] [VIEWS=3] [MODEL_OPTIONS="occupancy_guided_sampling=True ..."] \
#          bash benchmarks/gpu_host/render_grids.sh SCENE FILE...
#   e.g. bash benchmarks/gpu_host/render_grids.sh .gpu/lego /tmp/o/lego/vqad/model.nqz
# Rows go to $OUT/rows.jsonl, labelled by each file and grid (render-vqad-grid128-0.1); with
# MODEL_OPTIONS, each file renders with its own options and with each set given (no spaces in a set).
set -eu
scene=$1; shift
out=${OUT:-/tmp/out}
work=$(mktemp -d)
files=("$@")
for grid in ${GRIDS:-128,0.1}; do
  folder="$work/${grid/,/-}"
  python3 benchmarks/rebake_occupancy.py --out "$folder" --resolution "${grid%,*}" --max-ray-loss "${grid#*,}" "$@"
  files+=("$folder"/*.nqz)
done
options=()
if [ -n "${MODEL_OPTIONS:-}" ]; then
  read -r -a sets <<< "$MODEL_OPTIONS"
  options=(--model-options "" "${sets[@]}")
fi
python3 benchmarks/render_speed.py --data "$scene" --files "${files[@]}" --views "${VIEWS:-3}" --results "$out/rows.jsonl" \
  ${options[@]+"${options[@]}"}
