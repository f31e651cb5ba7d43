"""Where a model samples the scene, as the dataparser describes it: NDC for forward-facing captures,
near/far bounds otherwise, the scene type, and the background renderer that suits each.

A :class:`SceneSpace` is built from the dataparser's metadata (or, for a model rebuilt from its file,
from the metadata :meth:`SceneSpace.metadata_from_payload` recreates), and written to the file by
:meth:`SceneSpace.to_payload`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

from nerfstudio.cameras.rays import RayBundle
from nerfstudio.model_components.renderers import RGBRenderer

from nerfqat_plugin.model_components.ndc import NDCSpace
from nerfqat_plugin.model_components.ray_setup import (
    NDC_METADATA_KEY,
    NEAR_FAR_METADATA_KEY,
    SCENE_TYPE_METADATA_KEY,
    SamplingRays,
    SceneType,
    make_sampling_rays,
)
from nerfqat_plugin.model_components.renderers import RandomTrainingBackgroundRenderer


@dataclass
class SceneSpace:
    """The sampling space of one scene."""

    ndc: Optional[NDCSpace]
    """The NDC warp of a forward-facing scene (None: world space within near/far)."""
    near: float
    """Near sampling bound in world units (outside NDC)."""
    far: float
    """Far sampling bound in world units (outside NDC)."""
    scene_type: Optional[SceneType] = None
    """The type the dataparser detected (None: it did not say, as in files older than the key)."""

    @classmethod
    def from_metadata(cls, metadata: Dict[str, Any], near: float, far: float) -> SceneSpace:
        """The space of dataparser ``metadata``; ``near``/``far`` where it gives no bounds."""
        ndc = metadata.get(NDC_METADATA_KEY)
        near_far = metadata.get(NEAR_FAR_METADATA_KEY)
        near, far = near_far if near_far else (near, far)
        return cls(NDCSpace(**ndc) if ndc else None, float(near), float(far), metadata.get(SCENE_TYPE_METADATA_KEY))

    def sampling_rays(self, ray_bundle: RayBundle) -> SamplingRays:
        return make_sampling_rays(ray_bundle, self.ndc, self.near, self.far)

    def background_renderer(self, background: str) -> RGBRenderer:
        """``auto``: NeRF's last-sample colour in NDC; elsewhere white, with a random background per ray
        while training (so empty space cannot pass for the background). Other values as nerfstudio's."""
        if background == "auto" and self.ndc is None:
            return RandomTrainingBackgroundRenderer(eval_background="white")
        return RGBRenderer(background_color="last_sample" if background == "auto" else background)

    def to_payload(self) -> Dict[str, Any]:
        """The file's record of this space."""
        return {
            "ndc": self.ndc.to_dict() if self.ndc is not None else None,
            "near_far": [self.near, self.far],
            "scene_type": self.scene_type,
        }

    @staticmethod
    def metadata_from_payload(payload: Dict[str, Any]) -> Dict[str, Any]:
        """Dataparser-style metadata that makes a rebuilt model sample the scene as the trained one."""
        metadata: Dict[str, Any] = {NEAR_FAR_METADATA_KEY: tuple(payload["near_far"])}
        if payload.get("ndc"):
            metadata[NDC_METADATA_KEY] = payload["ndc"]
        if payload.get("scene_type"):  # absent from files older than the key: sampled as then
            metadata[SCENE_TYPE_METADATA_KEY] = payload["scene_type"]
        return metadata
