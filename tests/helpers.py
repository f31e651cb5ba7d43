"""What several test modules share: tiny models and their options for CPU runs, rays, and running the
command-line tools."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation

from nerfqat_plugin.models.nerfqat import NeRFQATModel, NeRFQATModelConfig
from nerfqat_plugin.models.vqad import VQADModel, VQADModelConfig

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


TINY_NERF_QAT_OPTIONS = dict(num_layers=3, layer_width=24, skip_connections=(2,), head_width=12, position_frequencies=4)
TINY_NERF_QAT_OPTIONS.update(direction_frequencies=2, num_coarse_samples=8, num_importance_samples=8, compile=False)
TINY_NDC = {"focal": 30.0, "width": 32.0, "height": 24.0, "near": 1.0}


def tiny_nerf_qat_model(metadata: Optional[dict] = None, **overrides) -> NeRFQATModel:
    """A small nerf-qat model on a forward-facing (NDC) scene unless ``metadata`` says otherwise."""
    config = NeRFQATModelConfig(
        **{**TINY_NERF_QAT_OPTIONS, "float_warmup_steps": 2, "calibration_steps": 3, **overrides}
    )
    box = SceneBox(aabb=torch.tensor([[-2.0] * 3, [2.0] * 3]))
    return NeRFQATModel(config=config, scene_box=box, num_train_data=4, metadata=metadata or {"ndc": TINY_NDC})


TINY_VQAD_OPTIONS = dict(
    grid_resolutions=((4, 4, 3), (8, 6, 5), (12, 10, 7)),
    proposal_resolutions=((4, 4, 4), (6, 6, 6)),
    feature_dim=4,
    hidden_dim=16,
    color_hidden_dim=16,
    num_proposal_samples=(16, 8),
    num_nerf_samples=8,
    sampler="proposal",  # the proposal path; tests of the occupancy sampler ask for it
)


def tiny_vqad_model(metadata: Optional[dict] = None, **overrides) -> VQADModel:
    """A small vqad model on a forward-facing (NDC) scene unless ``metadata`` says otherwise."""
    config = VQADModelConfig(**{**TINY_VQAD_OPTIONS, **overrides})
    box = SceneBox(aabb=torch.tensor([[-1.5] * 3, [1.5] * 3]))
    return VQADModel(config=config, scene_box=box, num_train_data=4, metadata=metadata or {"ndc": TINY_NDC})


def vqad_rays(n: int = 64, seed: int = 0, bounded: bool = False) -> RayBundle:
    g = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(
        torch.cat([0.3 * torch.randn(n, 2, generator=g), -torch.ones(n, 1)], -1), dim=-1
    )
    origins = 0.05 * torch.randn(n, 3, generator=g) + (torch.tensor([0.0, 0.0, 4.0]) if bounded else 0.0)
    return RayBundle(
        origins=origins,
        directions=directions,
        pixel_area=torch.ones(n, 1),
        camera_indices=torch.zeros(n, 1, dtype=torch.long),
    )


def train_vqad(model: VQADModel, steps: int, bounded: bool = False) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    target = {"image": torch.rand(64, 3, generator=torch.Generator().manual_seed(1))}
    model.train()
    for step in range(steps):
        outputs = model(vqad_rays(seed=step, bounded=bounded))
        loss = sum(model.get_loss_dict(outputs, target).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.proposal_sampler.step_cb(step)
    model.eval()


def render_vqad(model: VQADModel, bounded: bool = False) -> Dict[str, torch.Tensor]:
    with torch.no_grad():
        return model(vqad_rays(256, seed=99, bounded=bounded))


def train_nerf_qat(model: NeRFQATModel, steps: int, after_step: Sequence[TrainingCallback] = ()) -> None:
    """A few Adam steps on random colours, with the model's quantization schedule; then eval mode."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    target = {"image": torch.rand(64, 3, generator=torch.Generator().manual_seed(1))}
    model.train()
    for step in range(steps):
        model._apply_quant_schedule(step)
        outputs = model(forward_rays(seed=step))
        loss = sum(model.get_loss_dict(outputs, target).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for callback in after_step:
            callback.run_callback_at_location(step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
    model.eval()


def render_nerf_qat(model: NeRFQATModel) -> Dict[str, torch.Tensor]:
    with torch.no_grad():
        return model(forward_rays(256, seed=99))
