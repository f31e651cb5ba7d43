"""What both methods' trainer configurations share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple

import torch
from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig

from nerfqat_plugin.data.auto_dataparser import AutoDataParserConfig
from nerfqat_plugin.data.datamanager import CompressionDataManagerConfig
from nerfqat_plugin.errors import OptionError
from nerfqat_plugin.models.compressible import CompressibleModelConfig
from nerfqat_plugin.pipelines.compression_pipeline import CompressionPipelineConfig


@dataclass
class AdamWithBetasOptimizerConfig(AdamOptimizerConfig):
    """nerfstudio's Adam with its moment decay rates exposed (instant-NGP trains with 0.9, 0.99)."""

    betas: Tuple[float, float] = (0.9, 0.999)
    """Decay rates of Adam's first and second moment estimates, each in [0, 1)."""
    fused: bool = True
    """Update all parameters in a few fused kernels (torch's fused Adam) instead of a kernel per operation."""

    def __post_init__(self) -> None:
        if not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise OptionError(f"--optimizers.*.optimizer.betas must each be in [0, 1), got {list(self.betas)}")


def adam(
    lr: float, lr_final: float, max_steps: int, eps: float = 1e-15, betas: Tuple[float, float] = (0.9, 0.999)
) -> Dict[str, Any]:
    """Adam with an exponential learning-rate decay over ``max_steps`` (the benchmark runner re-plans it)."""
    return {
        "optimizer": AdamWithBetasOptimizerConfig(lr=lr, eps=eps, betas=betas),
        "scheduler": ExponentialDecaySchedulerConfig(lr_final=lr_final, max_steps=max_steps),
    }


def compression_trainer(
    method_name: str,
    model: CompressibleModelConfig,
    optimizers: Dict[str, Dict[str, Any]],
    max_iterations: int,
    rays_per_chunk: int,
) -> TrainerConfig:
    """nerfstudio's trainer with the compression pipeline, auto-detected data and 4096-ray batches
    (drawn from the image centres for the first steps on object scenes)."""
    return TrainerConfig(
        method_name=method_name,
        steps_per_eval_batch=500,
        steps_per_eval_image=2000,
        steps_per_save=2000,
        max_num_iterations=max_iterations,
        mixed_precision=False,
        pipeline=CompressionPipelineConfig(
            datamanager=CompressionDataManagerConfig(
                dataparser=AutoDataParserConfig(),
                train_num_rays_per_batch=4096,
                images_on_gpu=True,  # sample pixels on the GPU: the CPU sampler is the bottleneck otherwise
                eval_num_rays_per_batch=4096,
            ),
            model=model,
        ),
        optimizers=optimizers,
        # nerfstudio defaults to CUDA and fails without a driver; our methods train on the CPU there.
        machine=MachineConfig(device_type="cuda" if torch.cuda.is_available() else "cpu"),
        viewer=ViewerConfig(num_rays_per_chunk=rays_per_chunk),
        vis="viewer",
    )
