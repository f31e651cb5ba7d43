"""What several test modules share: tiny model options for CPU runs and running the command-line tools."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import torch
from nerfstudio.cameras.rays import RayBundle

BIN = Path(sys.executable).parent
TINY_NERF_QAT = [
    "--pipeline.model.num-layers", "2",
    "--pipeline.model.layer-width", "16",
    "--pipeline.model.skip-connections", "1",
    "--pipeline.model.head-width", "8",
    "--pipeline.model.position-frequencies", "4",
    "--pipeline.model.direction-frequencies", "2",
    "--pipeline.model.num-coarse-samples", "8",
    "--pipeline.model.num-importance-samples", "8",
    "--pipeline.model.qat-start-fraction", "0.5",
    "--pipeline.model.calibration-steps", "3",
]  # fmt: skip
TINY_VQAD = [
    "--pipeline.model.num-levels", "2",
    "--pipeline.model.finest-resolution", "10", "8", "6",
    "--pipeline.model.proposal-finest-resolution", "6", "6", "4",
    "--pipeline.model.feature-dim", "4",
    "--pipeline.model.hidden-dim", "16",
    "--pipeline.model.color-hidden-dim", "16",
    "--pipeline.model.num-proposal-samples", "16", "8",
    "--pipeline.model.num-nerf-samples", "8",
    "--pipeline.model.sparse-from-level", "1",  # the finest level drops empty blocks at 1/4 of the run
    "--pipeline.model.sparse-block-size", "4",
]  # fmt: skip
TINY_MODELS = {"nerf-qat": TINY_NERF_QAT, "vqad": TINY_VQAD}


def run(tool: str, args: List[str], check: bool = True, cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, env=env, timeout=600, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def forward_rays(n: int = 64, seed: int = 0) -> RayBundle:
    """``n`` rays near the origin looking down -z, spread a little (a forward-facing camera's)."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(
        torch.cat([0.3 * torch.randn(n, 2, generator=g), -torch.ones(n, 1)], -1), dim=-1
    )
    return RayBundle(
        origins=0.05 * torch.randn(n, 3, generator=g),
        directions=directions,
        pixel_area=torch.ones(n, 1),
        camera_indices=torch.zeros(n, 1, dtype=torch.long),
    )
