"""``ns-train nerf-qat``: NeRF with quantization-aware training of fused Linear+ReLU blocks."""

from __future__ import annotations

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification

from nerfqat_plugin.data.auto_dataparser import AutoDataParserConfig
from nerfqat_plugin.models.nerfqat import NeRFQATModelConfig
from nerfqat_plugin.pipelines.compression_pipeline import CompressionPipelineConfig

MAX_ITERATIONS = 30000

nerf_qat_method = MethodSpecification(
    config=TrainerConfig(
        method_name="nerf-qat",
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
            model=NeRFQATModelConfig(eval_num_rays_per_chunk=1 << 14),
        ),
        optimizers={
            "fields": {
                "optimizer": AdamOptimizerConfig(lr=5e-4, eps=1e-8),
                "scheduler": ExponentialDecaySchedulerConfig(lr_final=5e-5, max_steps=MAX_ITERATIONS),
            }
        },
        viewer=ViewerConfig(num_rays_per_chunk=1 << 14),
        vis="viewer",
    ),
    description="NeRF with quantization-aware training (fused Linear+ReLU), exported with integer weights.",
)
