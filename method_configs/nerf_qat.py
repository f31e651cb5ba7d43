"""``ns-train nerf-qat``: NeRF with quantization-aware training of fused Linear+ReLU blocks."""

from __future__ import annotations

from nerfstudio.plugins.types import MethodSpecification

from method_configs.common import adam, compression_trainer
from nerfqat_plugin.models.nerfqat import NeRFQATModelConfig

MAX_ITERATIONS = 30000
# Initial learning rate, decaying to NeRF's 5e-5 over the run: NeRF's 5e-4 is tuned for 1024-ray
# batches; for 4096 rays this was measured best (docs/methods/nerf-qat.md).
INITIAL_LR = 4e-3

nerf_qat_method = MethodSpecification(
    config=compression_trainer(
        "nerf-qat",
        NeRFQATModelConfig(),
        {"fields": adam(INITIAL_LR, 5e-5, MAX_ITERATIONS, eps=1e-8)},
        MAX_ITERATIONS,
        rays_per_chunk=1 << 14,
    ),
    description="NeRF with quantization-aware training (fused Linear+ReLU), exported with integer weights.",
)
