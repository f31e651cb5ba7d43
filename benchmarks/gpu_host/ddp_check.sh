#!/usr/bin/env bash
# Issue 5 on a host with 2 GPUs: the same nerf-qat (or vqad) run on 1 and on 2 GPUs through
# nerfstudio's own DDP (--machine.num-devices), same iterations and rays per GPU; then ns-eval and
# ns-export-compressed of both, and rays/s from nerfstudio's own per-iteration timing.
# Run from the repository root after: . benchmarks/gpu_host/gpu_env.sh
# usage: [DEVICES="1 2"] [RAYS=4096] bash benchmarks/gpu_host/ddp_check.sh METHOD ITERATIONS [NS-TRAIN ARGS...]
# (RAYS: rays per iteration per GPU; DEVICES="1" and DEVICES="2" may run at once on disjoint GPUs.)
set -eu
method=${1:-nerf-qat}; iterations=${2:-6000}; shift 2 || true
data=${DATA:-.gpu/fern}
out=${OUT:-/tmp/out}
rays=${RAYS:-4096}
for devices in ${DEVICES:-1 2}; do
  run=outputs/ddp/$method-$rays-$devices
  name=ddp_${method}_${rays}r_${devices}gpu
  start=$(date +%s)
  ns-train "$method" --data "$data" --output-dir "$run" --max-num-iterations "$iterations" \
    --steps-per-save "$iterations" --steps-per-eval-batch 1000000000 --steps-per-eval-image 1000000000 \
    --steps-per-eval-all-images 1000000000 --vis tensorboard --viewer.quit-on-train-completion True \
    --logging.local-writer.enable True --logging.steps-per-log 100 \
    --pipeline.datamanager.train-num-rays-per-batch "$rays" --machine.num-devices "$devices" "$@" \
    > "$out/$name.log" 2>&1
  end=$(date +%s)
  config=$(ls "$run"/*/"$method"/*/config.yml | head -1)
  ns-eval --load-config "$config" --output-path "$out/${name}_eval.json" >> "$out/$name.log" 2>&1
  bytes=$(python3 -m nerfqat_plugin.scripts.export_compressed --load-config "$config" --output-path "$out/$name.nqz" | grep -o "[0-9]* bytes" | tail -1)
  # nerfstudio's own timing, from its local writer: "step (pct%)  iter time  ETA  rays/s" (rays/s
  # counts every GPU: world size x rays per batch / iteration time).
  python3 - "$method" "$out/${name}_eval.json" "$devices" "$iterations" "$rays" "$((end - start))" \
    "$bytes" "$out/$name.log" <<'PY' | tee -a "$out/ddp_rows.jsonl"
import datetime, json, re, sys, torch
method, path, devices, iterations, rays, wall, size, log = sys.argv[1:9]
units = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}
last, timings = None, {}
for line in open(log, errors="replace").read().replace("\x1b[0m", "").splitlines():
    columns = re.split(r"\s{2,}", re.sub(r"\x1b\[\d*[A-Z]", "", line).strip())
    if len(columns) == 4 and re.match(r"\d+ \(", columns[0]) and columns[1].endswith(" ms"):
        last = columns  # step, iteration time, ETA, rays/s
        timings[int(columns[0].split()[0])] = float(columns[1].split()[0])
results = json.load(open(path))["results"]
import os, subprocess
commit = os.environ.get("CODE_COMMIT") or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
row = {"kind": "ddp", "label": f"ddp-{method}-{devices}gpu-{rays}rays", "scene": os.path.basename(os.environ.get("DATA", ".gpu/fern").rstrip("/")),
       "command": f"bash benchmarks/gpu_host/ddp_check.sh {method} {iterations}", "code_commit": commit,
       "method": method, "devices": int(devices), "iterations": int(iterations), "rays_per_iteration_per_gpu": int(rays),
       "wall_s_including_startup": int(wall), "psnr": results.get("psnr"), "ssim": results.get("ssim"),
       "lpips": results.get("lpips"), "size_bytes": results.get("size_bytes"), "export": size,
       "train_iter_ms": float(last[1].split()[0]) if last else None,
       "train_rays_per_s": float(last[3].split()[0]) * units[(last[3].split() + [""])[1]] if last else None,
       "iter_ms_by_step": timings,  # nerf-qat: float until 3/4 of the run, then QAT (calibration, frozen)
       "gpu": (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"),
       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
print(json.dumps(row))
PY
done
