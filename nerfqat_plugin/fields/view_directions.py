"""World-space view directions of samples whose positions live in another space (NDC).

Models that sample in NDC hand the fields warped rays; the colour still depends on the direction in
the world, so the sampling rays carry it in their metadata under :data:`VIEW_DIRECTIONS_KEY`.
"""

from __future__ import annotations

from nerfstudio.cameras.rays import RaySamples
from torch import Tensor

VIEW_DIRECTIONS_KEY = "view_directions"
"""RaySamples metadata key holding world-space unit viewing directions."""


def view_directions(ray_samples: RaySamples) -> Tensor:
    """Unit world viewing directions of the samples [..., 1 or S, 3] (the frustum's when not warped)."""
    metadata = ray_samples.metadata or {}
    return metadata.get(VIEW_DIRECTIONS_KEY, ray_samples.frustums.directions)
