"""``ns-train nerf-qat``: NeRF with quantization-aware training of fused Linear+ReLU blocks."""

from __future__ import annotations

from nerfstudio.plugins.types import MethodSpecification

from method_configs.common import adam, compression_trainer
from nerfqat_plugin.models.nerfqat import NeRFQATModelConfig

MAX_ITERATIONS = 30000

nerf_qat_method = MethodSpecification(
    config=compression_trainer(
        "nerf-qat",
        NeRFQATModelConfig(eval_num_rays_per_chunk=1 << 14),
        {"fields": adam(5e-4, 5e-5, MAX_ITERATIONS, eps=1e-8)},
        MAX_ITERATIONS,
        rays_per_chunk=1 << 14,
    ),
    description="NeRF with quantization-aware training (fused Linear+ReLU), exported with integer weights.",
)
