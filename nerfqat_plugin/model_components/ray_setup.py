"""Where along a ray a model samples: NDC for forward-facing scenes, a near/far range otherwise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
from nerfstudio.cameras.rays import RayBundle
from torch import Tensor

from nerfqat_plugin.fields.view_directions import VIEW_DIRECTIONS_KEY
from nerfqat_plugin.model_components.ndc import NDCSpace

NDC_METADATA_KEY = "ndc"
"""Dataparser metadata: the NDC warp of a forward-facing scene (the fields of :class:`NDCSpace`)."""
NEAR_FAR_METADATA_KEY = "near_far"
"""Dataparser metadata: (near, far) sampling bounds of the scene in world units."""
SCENE_TYPE_METADATA_KEY = "scene_type"
"""Dataparser metadata: the :data:`SceneType` detected from the data."""

SceneType = Literal["forward-facing", "bounded", "unbounded"]
"""Forward-facing captures (NDC), objects on an empty background, and real captures all around."""


@dataclass
class SamplingRays:
    """Rays to place samples on, plus what is needed to map sample distances back to the world."""

    bundle: RayBundle
    """Rays in the sampling space with ``nears``/``fars`` set; world view directions in metadata."""
    ndc_length: Optional[Tensor] = None
    """NDC only: length of the unnormalised NDC direction, i.e. the ray's extent in NDC [N, 1]."""
    t_near: Optional[Tensor] = None
    """NDC only: world distance at which each ray crosses the near plane [N]."""

    def world_distance(self, distances: Tensor, world_rays: RayBundle, ndc: Optional[NDCSpace]) -> Tensor:
        """World distance along the original rays of sample distances ``[N, S, 1]`` in sampling space."""
        if ndc is None or self.ndc_length is None or self.t_near is None:
            return distances
        fraction = distances / self.ndc_length[..., None, :]
        return NDCSpace.world_distance(fraction, world_rays.origins, world_rays.directions, self.t_near, ndc.near)


def make_sampling_rays(ray_bundle: RayBundle, ndc: Optional[NDCSpace], near: float, far: float) -> SamplingRays:
    """Rays for the samplers: warped to NDC (unit directions, ``s`` from 0 to the NDC extent) when
    ``ndc`` is given, else the world rays clipped to ``[near, far]``."""
    directions = ray_bundle.directions
    metadata = dict(ray_bundle.metadata or {})
    metadata[VIEW_DIRECTIONS_KEY] = directions
    if ndc is None:
        ones = torch.ones_like(directions[..., :1])
        bundle = RayBundle(
            origins=ray_bundle.origins,
            directions=directions,
            pixel_area=ray_bundle.pixel_area,
            camera_indices=ray_bundle.camera_indices,
            nears=ones * near,
            fars=ones * far,
            metadata=metadata,
        )
        return SamplingRays(bundle=bundle)
    origins_ndc, directions_ndc, t_near = ndc.rays_to_ndc(ray_bundle.origins, directions)
    length = directions_ndc.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    bundle = RayBundle(
        origins=origins_ndc,
        directions=directions_ndc / length,
        pixel_area=ray_bundle.pixel_area,
        camera_indices=ray_bundle.camera_indices,
        nears=torch.zeros_like(length),
        fars=length,
        metadata=metadata,
    )
    return SamplingRays(bundle=bundle, ndc_length=length, t_near=t_near)
