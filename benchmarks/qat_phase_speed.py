"""Time nerf-qat's field step in each phase of its QAT schedule and count torch.compile's work.

A training run goes float -> calibration (fake quantization on, ranges observed) -> QAT (ranges
frozen). Every phase switch changes Python flags the compiled field reads, so the compiled code is
specialised again; if that exceeds dynamo's recompile limit the rest of the run falls back to eager
kernels, silently and several times slower. This script runs the coarse and fine fields exactly as
training does (bf16 autocast, the model's sample counts) through every phase and prints, per phase,
the steady (median) step time and dynamo's counters (graph breaks, frames compiled).

    python benchmarks/qat_phase_speed.py --bits 8 --steps 30
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from typing import Dict, List

import torch
from torch._dynamo.utils import counters

from nerfqat_plugin.field_components.quant_mlp import QuantSpec, set_observers, set_quantization
from nerfqat_plugin.fields.nerfqat_field import QuantNeRFField


def dynamo_counts() -> Dict[str, int]:
    """Totals of dynamo's counters: graph breaks, and frames compiled (each recompilation is one more);
    a frame that hit the recompile limit is reported in the log by dynamo itself."""
    return {
        "graph_breaks": sum(counters["graph_break"].values()),
        "frames_ok": counters["frames"]["ok"],
        "frames_total": counters["frames"]["total"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bits", type=int, default=8)
    parser.add_argument("--rays", type=int, default=4096)
    parser.add_argument("--coarse-samples", type=int, default=64)
    parser.add_argument("--fine-samples", type=int, default=192, help="coarse + importance samples")
    parser.add_argument("--steps", type=int, default=30, help="steps per phase (the first 5 are warm-up)")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = QuantSpec(args.bits, activation_range="max" if args.bits >= 8 else "mse")
    edge = QuantSpec(8, activation_range="max")
    fields = [QuantNeRFField(spec, edge_spec=edge).to(device).train() for _ in range(2)]
    params = [p for f in fields for p in f.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-4)
    if not args.no_compile:
        for f in fields:
            f.compile_for_training()
    sizes = [args.rays * args.coarse_samples, args.rays * args.fine_samples]

    def step() -> None:
        loss = torch.zeros((), device=device)
        for f, n in zip(fields, sizes, strict=True):
            positions = torch.rand(n, 3, device=device) * 2 - 1
            directions = torch.nn.functional.normalize(torch.randn(n, 3, device=device), dim=-1)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                density, features = f.run("density_and_features", positions)
                rgb = f.run("color", features, directions)
            loss = loss + density.float().mean() + rgb.float().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    phases = [("float", False, False), ("calibration", True, True), ("qat", True, False)]
    rows: List[Dict[str, object]] = []
    for name, quant, observe in phases:
        for f in fields:
            set_quantization(f, quant)
            set_observers(f, observe)
        before = Counter(dynamo_counts())
        times = []
        for i in range(args.steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 5:
                times.append(time.perf_counter() - t0)
        after = Counter(dynamo_counts())
        # The rows schema (benchmarks/rows.py); the scene is the one whose sample counts the rays use.
        row = {"kind": "qat-phase-speed", "label": f"{name}-int{args.bits}", "method": "nerf-qat", "scene": "fern"}
        row.update({"phase": name, "ms_per_step": round(1000 * sorted(times)[len(times) // 2], 2)})
        row.update({k: after[k] - before[k] for k in after})
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("graph break reasons:", dict(counters["graph_break"]))
    print("stats:", dict(counters["stats"]))


if __name__ == "__main__":
    main()
