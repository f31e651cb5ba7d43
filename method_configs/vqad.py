"""``ns-train vqad``: Variable Bitrate Neural Fields (learned-index codebook grid) with proposal sampling."""

from __future__ import annotations

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification

from nerfqat_plugin.data.auto_dataparser import AutoDataParserConfig
from nerfqat_plugin.models.vqad import VQADModelConfig
from nerfqat_plugin.pipelines.compression_pipeline import CompressionPipelineConfig

MAX_ITERATIONS = 10000


def _adam(lr: float) -> dict:
    return {
        "optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15),
        "scheduler": ExponentialDecaySchedulerConfig(lr_final=lr / 100, max_steps=MAX_ITERATIONS),
    }


vqad_method = MethodSpecification(
    config=TrainerConfig(
        method_name="vqad",
        steps_per_eval_batch=500,
        steps_per_eval_image=2000,
        steps_per_save=2000,
        max_num_iterations=MAX_ITERATIONS,
        mixed_precision=False,
        pipeline=CompressionPipelineConfig(
            datamanager=VanillaDataManagerConfig(
                dataparser=AutoDataParserConfig(),
                train_num_rays_per_batch=4096,
                images_on_gpu=True,  # sample pixels on the GPU: the CPU sampler is the bottleneck otherwise
                eval_num_rays_per_batch=4096,
            ),
            model=VQADModelConfig(eval_num_rays_per_chunk=1 << 15),
        ),
        optimizers={"fields": _adam(1e-2), "proposal_networks": _adam(1e-2)},
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    ),
    description="Variable Bitrate Neural Fields: learned b-bit indices into small codebooks, several bitrates.",
)
