"""Forward and backward time of one codebook-grid level: the torch path against the fused kernel.

    python benchmarks/fused_lookup_speed.py --scene lego --resolution 256 --bits 4 --features 8 --points 1048576

A learned-index level of ``--resolution``³ vertices with free logits over ``2**bits`` entries of
``--features`` values is looked up at ``--points`` random points, training-style (straight-through,
gradients to logits and codebook), by the torch path and by the fused Triton kernel
(``field_components/fused_codebook_lookup.py``); each is timed over ``--repeats`` forward-backward
passes after a warm-up, and both results are compared. One row of kind ``experiment`` goes to the
scene's rows file (or ``--results``). On a CPU the fused kernel runs only in Triton's interpreter
(``TRITON_INTERPRET=1``): correct, and far too slow to time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

import torch
from rows import append_row, scene_path
from run_benchmark import code_commit, gpu_name, synchronize

from nerfqat_plugin.field_components.codebook_grid import LearnedIndexCodebookGrid
from nerfqat_plugin.field_components.fused_codebook_lookup import fused_level_lookup, fused_lookup_available
from nerfqat_plugin.field_components.half_precision import round_to_half


def timed_ms(step: Callable[[], None], repeats: int) -> float:
    """Milliseconds per call of ``step`` after one warm-up call."""
    step()
    synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    synchronize()
    return 1e3 * (time.perf_counter() - start) / repeats


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", default="lego", help="the rows file's scene (the level's sizes are lego's)")
    parser.add_argument("--resolution", type=int, default=256, help="vertices per axis")
    parser.add_argument("--bits", type=int, default=4, help="log2 of the codebook size")
    parser.add_argument("--features", type=int, default=8, help="values per codebook entry")
    parser.add_argument("--points", type=int, default=1 << 20, help="points looked up per pass")
    parser.add_argument("--repeats", type=int, default=20, help="timed passes")
    parser.add_argument("--results", type=Path, default=None, help="rows file (default: the scene's)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not fused_lookup_available(device):
        raise SystemExit("fused_lookup_speed: the fused lookup needs CUDA and Triton (or TRITON_INTERPRET=1)")
    torch.manual_seed(0)
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
        "kind": "experiment",
        "label": f"fused-lookup-{args.resolution}-{args.bits}bit-{args.features}f",
        "method": "vqad",
        "scene": args.scene,
        "command": shlex.join(["python", *sys.argv]),
        "gpu": gpu_name(),
        "code_commit": code_commit(),
        "points": args.points,
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
