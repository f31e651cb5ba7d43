"""Re-export compressed files with another occupancy grid, to compare grids on the same weights.

    python benchmarks/rebake_occupancy.py --out files/ --resolution 128 --max-ray-loss 0.1 lego-vqad.nqz

Each file is loaded, its grid baked again from its own fields with the given resolution and
worst-case ray loss (the model options ``occupancy-bake-resolution`` and ``occupancy-max-ray-loss``),
and written to ``OUT/<name>-grid<resolution>-<loss>.nqz`` (a run's ``model.nqz`` is named after its
folder). Everything else in the file is unchanged; ``render_speed.py`` then measures both files.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

import torch

from nerfqat_plugin.compression.codec import load_compressed_model
from nerfqat_plugin.errors import OptionError
from nerfqat_plugin.models.compressible import check_occupancy_bake_options


def rebaked_name(path: Path, resolution: int, max_ray_loss: float) -> str:
    stem = path.parent.name if path.stem == "model" else path.stem
    return f"{stem}-grid{resolution}-{max_ray_loss:g}.nqz"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", type=Path, nargs="+", help="compressed files")
    parser.add_argument("--out", type=Path, required=True, help="folder for the re-exported files")
    parser.add_argument("--resolution", type=int, required=True, help="cells per axis, in [8, 512]")
    parser.add_argument("--max-ray-loss", type=float, required=True, help="worst-case opacity per ray, in (0, 1)")
    args = parser.parse_args(argv)
    try:
        check_occupancy_bake_options("rebake_occupancy", args.resolution, args.max_ray_loss)
    except OptionError as error:
        parser.error(str(error))
    args.out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for path in args.files:
        model = load_compressed_model(path, device)
        model.config.occupancy_bake_resolution = args.resolution
        model.config.occupancy_max_ray_loss = args.max_ray_loss
        target = args.out / rebaked_name(path, args.resolution, args.max_ray_loss)
        size = model.export_compressed(target)
        grid = load_compressed_model(target).occupancy_grid
        share = None if grid is None else float(grid.occupied.float().mean())
        occupied = "no grid (unbounded scene)" if share is None else f"{share:.3f} of the cells occupied"
        print(f"{target}: {size} bytes ({path.stat().st_size} before), {occupied}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
