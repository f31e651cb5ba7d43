"""``ns-train nerf-qat``: NeRF with quantization-aware training of fused Linear+ReLU blocks."""

from __future__ import annotations

from nerfstudio.plugins.types import MethodSpecification

from method_configs.common import adam, compression_trainer
from nerfqat_plugin.models.nerfqat import NeRFQATModelConfig

MAX_ITERATIONS = 30000
# Initial learning rate: NeRF's 5e-4 is tuned for 1024-ray batches; with 4096 rays, fp32 on fern
# at 180 s (H200, two seeds each, results/fern_nerf_qat.jsonl S7-fp32-lr*): 5e-4 22.61/22.98,
# 1e-3 23.75/23.51, 2e-3 24.18/24.47, 4e-3 24.62/24.45 dB. Decays to NeRF's 5e-5 over the run.
INITIAL_LR = 4e-3

nerf_qat_method = MethodSpecification(
    config=compression_trainer(
        "nerf-qat",
        NeRFQATModelConfig(eval_num_rays_per_chunk=1 << 14),
        {"fields": adam(INITIAL_LR, 5e-5, MAX_ITERATIONS, eps=1e-8)},
        MAX_ITERATIONS,
        rays_per_chunk=1 << 14,
    ),
    description="NeRF with quantization-aware training (fused Linear+ReLU), exported with integer weights.",
)
