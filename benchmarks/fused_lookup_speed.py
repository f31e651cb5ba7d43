"""Forward and backward time of one codebook-grid level: the torch path against the fused kernel.

    python benchmarks/fused_lookup_speed.py --scene lego --resolution 256 --bits 4 --features 8 --points 1048576
    python benchmarks/fused_lookup_speed.py --scene lego --probed --points 262144

A learned-index level of ``--resolution``³ vertices with free logits over ``2**bits`` entries of
``--features`` values is looked up at ``--points`` random points, training-style (straight-through,
gradients to logits and codebook), by the torch path and by the fused Triton kernel
(``field_components/fused_codebook_lookup.py``); each is timed over ``--repeats`` forward-backward
passes after a warm-up, and both results are compared. One row of kind ``experiment`` goes to the
scene's rows file (or ``--results``). On a CPU the fused kernel runs only in Triton's interpreter
(``TRITON_INTERPRET=1``): correct, and far too slow to time.

``--probed`` times vqad's default grid on object scenes instead (learned hash probing: 16 levels from
16 to 1024 vertices per axis, 2**13-entry codebooks of 2 features, 2-bit probes into 2**16-slot index
tables, levels concatenated), all levels at once as training looks them up: the level-axis torch path
compiled (the default) against the all-levels kernel, with and without gradients.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from rows import append_row, scene_path
from run_benchmark import code_commit, gpu_name, synchronize

from nerfqat_plugin.field_components.codebook_grid import LearnedIndexCodebookGrid
from nerfqat_plugin.field_components.fused_codebook_lookup import fused_level_lookup, fused_lookup_available
from nerfqat_plugin.field_components.half_precision import round_to_half
from nerfqat_plugin.models.vqad_grid_spec import (
    PROBED_PRESET,
    PROBED_PRESET_BITS,
    PROBED_PRESET_FEATURES,
    PROBED_PRESET_FINEST,
    geometric_resolutions,
)


def timed_ms(step: Callable[[], None], repeats: int) -> float:
    """Milliseconds per call of ``step`` after one warm-up call."""
    step()
    synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    synchronize()
    return 1e3 * (time.perf_counter() - start) / repeats


def probed_row(points: int, repeats: int, device: torch.device) -> Dict[str, Any]:
    """Times and value differences of the default probed grid's training lookup, torch against fused."""
    levels = PROBED_PRESET["num_levels"]
    resolutions = geometric_resolutions(PROBED_PRESET["coarsest_resolution"], PROBED_PRESET_FINEST, levels)
    grid = LearnedIndexCodebookGrid(
        resolutions, PROBED_PRESET_BITS, index_mode="probed", probe_bits=2, probe_table_bits=16,
        **PROBED_PRESET_FEATURES,
    ).to(device).train()  # fmt: skip
    with torch.no_grad():
        for logits in grid.logits:
            logits.normal_(0.0, 2.0)
    positions = torch.rand(points, 3, device=device)
    upstream = torch.randn(points, grid.output_dim, device=device)
    # as training compiles it (Inductor fuses the level axis on CUDA)
    compiled = torch.compile(grid) if device.type == "cuda" else grid

    def training_step(fused: bool) -> Callable[[], None]:
        def step() -> None:
            grid.fused_lookup = fused
            ((grid if fused else compiled)(positions) * upstream).sum().backward()

        return step

    def densities(all_levels: bool) -> Callable[[], None]:
        def step() -> None:  # a training model's lookup without gradients: the logits' argmax
            with torch.no_grad():
                if all_levels:
                    grid(positions)
                else:
                    [grid.level_features(positions, level, hard=True) for level in range(levels)]

        return step

    with torch.no_grad():
        grid.fused_lookup = False
        expected = compiled(positions)  # the traced straight-through lookup: the hard values
        fused = grid(positions)
    torch_ms, fused_ms = timed_ms(training_step(False), repeats), timed_ms(training_step(True), repeats)
    per_level_ms, all_levels_ms = timed_ms(densities(False), repeats), timed_ms(densities(True), repeats)
    return {
        "label": f"fused-probed-lookup-{levels}-levels",
        "levels": levels,
        "torch_forward_backward_ms": round(torch_ms, 3),
        "fused_forward_backward_ms": round(fused_ms, 3),
        "speedup": round(torch_ms / fused_ms, 3),
        "per_level_no_grad_ms": round(per_level_ms, 3),
        "all_levels_no_grad_ms": round(all_levels_ms, 3),
        "no_grad_speedup": round(per_level_ms / all_levels_ms, 3),
        "max_value_difference": float((fused - expected).abs().max()),
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", default="lego", help="the rows file's scene (the level's sizes are lego's)")
    parser.add_argument("--resolution", type=int, default=256, help="vertices per axis")
    parser.add_argument("--bits", type=int, default=4, help="log2 of the codebook size")
    parser.add_argument("--features", type=int, default=8, help="values per codebook entry")
    parser.add_argument("--points", type=int, default=1 << 20, help="points looked up per pass")
    parser.add_argument("--repeats", type=int, default=20, help="timed passes")
    parser.add_argument("--results", type=Path, default=None, help="rows file (default: the scene's)")
    parser.add_argument(
        "--probed",
        action="store_true",
        help="vqad's default probed grid, all levels (ignores the three above)",
    )
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not fused_lookup_available(device):
        raise SystemExit("fused_lookup_speed: the fused lookup needs CUDA and Triton (or TRITON_INTERPRET=1)")
    torch.manual_seed(0)
    common = {
        "kind": "experiment",
        "method": "vqad",
        "scene": args.scene,
        "command": shlex.join(["python", *sys.argv]),
        "gpu": gpu_name(),
        "code_commit": code_commit(),
        "points": args.points,
    }
    if args.probed:
        row = {**common, **probed_row(args.points, args.repeats, device)}
        row["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        append_row(args.results or scene_path(args.scene), row)
        print(f"[fused-lookup] {json.dumps(row)}", flush=True)
        return 0
    grid = LearnedIndexCodebookGrid(resolutions=(args.resolution,), bits=args.bits, feature_dim=args.features)
    grid = grid.to(device).train()
    with torch.no_grad():
        grid.logits[0].normal_(0.0, 2.0)
    positions = torch.rand(args.points, 3, device=device)
    upstream = torch.randn(args.points, args.features, device=device)

    def torch_path() -> None:
        (grid.level_features(positions, 0, hard=False) * upstream).sum().backward()

    def fused_path() -> None:
        codebook = round_to_half(grid.codebooks[0])
        out = fused_level_lookup(positions, grid.logits[0], codebook, grid.resolutions[0])
        (out * upstream).sum().backward()

    with torch.no_grad():  # the values compared; the timed passes below build their graphs
        expected = grid.level_features(positions, 0, hard=False)
        fused = fused_level_lookup(positions, grid.logits[0], round_to_half(grid.codebooks[0]), grid.resolutions[0])
    torch_ms = timed_ms(torch_path, args.repeats)
    fused_ms = timed_ms(fused_path, args.repeats)
    row = {
        **common,
        "label": f"fused-lookup-{args.resolution}-{args.bits}bit-{args.features}f",
        "torch_forward_backward_ms": round(torch_ms, 3),
        "fused_forward_backward_ms": round(fused_ms, 3),
        "speedup": round(torch_ms / fused_ms, 3),
        "max_value_difference": float((fused - expected).abs().max()),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    append_row(args.results or scene_path(args.scene), row)
    print(f"[fused-lookup] torch {torch_ms:.2f} ms, fused {fused_ms:.2f} ms per forward-backward", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
