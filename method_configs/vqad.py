"""``ns-train vqad``: Variable Bitrate Neural Fields (learned-index codebook grid)."""

from __future__ import annotations

from nerfstudio.plugins.types import MethodSpecification

from method_configs.common import adam, compression_trainer
from nerfqat_plugin.models.vqad import VQADModelConfig

MAX_ITERATIONS = 10000
GRID_BETAS = (0.9, 0.99)

vqad_method = MethodSpecification(
    config=compression_trainer(
        "vqad",
        VQADModelConfig(),
        {
            # instant-NGP's second-moment decay: grid entries see sparse, bursty gradients
            "fields": adam(1e-2, 1e-4, MAX_ITERATIONS, betas=GRID_BETAS),
            "index_logits": adam(1e-2, 1e-4, MAX_ITERATIONS, betas=GRID_BETAS),
            "proposal_networks": adam(1e-2, 1e-4, MAX_ITERATIONS),
        },
        MAX_ITERATIONS,
        rays_per_chunk=1 << 15,
    ),
    description="Variable Bitrate Neural Fields: learned b-bit indices into small codebooks, several bitrates.",
)
