"""nerfstudio's VanillaDataManager, drawing the first steps' rays from the image centres on object scenes.

An object on an empty background fills a small part of each image (a fifth of NeRF-synthetic's
chair). Supervised on all pixels from the start, a NeRF-style field finds that empty space already
explains most of them and can stay empty for good, however long it trains (NeRF's authors saw it on
their sparsest scenes and cropped the first steps, ``precrop``). So on bounded scenes the first
``center_crop_steps`` draw rays from the central part of each image, where the object is.

Training batches are also drawn without making the host wait for the GPU: pixel indices stay on the
images' device, and undistorted pinhole cameras get their rays from
:class:`~nerfqat_plugin.data.pinhole_rays.PinholeRayGenerator` (the same pixels and rays as nerfstudio's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Type, Union

import torch
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.data.pixel_samplers import PixelSampler, PixelSamplerConfig
from torch import Tensor

from nerfqat_plugin.data.pinhole_rays import training_ray_generator
from nerfqat_plugin.model_components.ray_setup import SCENE_TYPE_METADATA_KEY


@dataclass
class CenterCropPixelSamplerConfig(PixelSamplerConfig):
    """nerfstudio's pixel sampler, which can be told to sample only the images' central part."""

    _target: Type = field(default_factory=lambda: CenterCropPixelSampler)


class CenterCropPixelSampler(PixelSampler):
    """Uniform pixels over all images, or, while ``crop_fraction`` is set, over each image's centred
    window of that fraction of its width and height (masks, where given, take precedence)."""

    config: CenterCropPixelSamplerConfig
    crop_fraction: Optional[float] = None

    def sample_method(
        self,
        batch_size: int,
        num_images: int,
        image_height: int,
        image_width: int,
        mask: Optional[Tensor] = None,
        device: Union[torch.device, str] = "cpu",
    ) -> Tensor:
        if mask is not None:
            return super().sample_method(batch_size, num_images, image_height, image_width, mask, device)
        fraction = 1.0 if self.crop_fraction is None else self.crop_fraction
        height = max(1, round(image_height * fraction))
        width = max(1, round(image_width * fraction))
        # The draw nerfstudio makes, scaled by Python numbers: a tensor of the extents built on the
        # host would be copied to the GPU at every step.
        draw = torch.rand((batch_size, 3), device=device)
        return torch.stack(
            [
                (draw[:, 0] * num_images).long(),
                (draw[:, 1] * height).long() + (image_height - height) // 2,
                (draw[:, 2] * width).long() + (image_width - width) // 2,
            ],
            dim=-1,
        )

    def collate_image_dataset_batch(self, batch: Dict, num_rays_per_batch: int, keep_full_image: bool = False) -> Dict:
        """nerfstudio's, with the pixel indices kept on the images' device: nerfstudio copies them to
        the host and back, three waits for the GPU per step. Masks and special cameras go to nerfstudio."""
        if batch.get("mask") is not None or self.config.is_equirectangular or self.config.fisheye_crop_radius:
            return super().collate_image_dataset_batch(batch, num_rays_per_batch, keep_full_image)
        image = batch["image"]
        num_images, image_height, image_width = image.shape[:3]
        indices = self.sample_method(num_rays_per_batch, num_images, image_height, image_width, device=image.device)
        c, y, x = indices.unbind(dim=-1)
        collated = {key: value[c, y, x] for key, value in batch.items() if key != "image_idx" and value is not None}
        indices[:, 0] = batch["image_idx"].to(indices.device)[c]  # the cameras' own indices
        collated["indices"] = indices
        if keep_full_image:
            collated["full_image"] = image
        return collated


@dataclass
class CompressionDataManagerConfig(VanillaDataManagerConfig):
    """VanillaDataManager whose first steps on object scenes sample the images' centres."""

    _target: Type = field(default_factory=lambda: CompressionDataManager)
    pixel_sampler: PixelSamplerConfig = field(default_factory=CenterCropPixelSamplerConfig)
    center_crop_steps: int = 1000
    """Steps during which bounded scenes (an object on an empty background) draw rays from the
    centre of each image only; 0 turns it off."""
    center_crop_fraction: float = 0.5
    """Width and height of that centre, as a fraction of the image's (0 to 1)."""


class CompressionDataManager(VanillaDataManager):
    """Sets the centre crop of the training pixel sampler for each step (a function of the step alone,
    so a resumed run crops exactly as an uninterrupted one)."""

    config: CompressionDataManagerConfig

    def crops_at(self, step: int) -> bool:
        """Whether the rays of training step ``step`` come from the images' centres."""
        scene_type = self.train_dataparser_outputs.metadata.get(SCENE_TYPE_METADATA_KEY)
        return scene_type == "bounded" and step < self.config.center_crop_steps

    def setup_train(self) -> None:
        super().setup_train()
        self.train_ray_generator = training_ray_generator(self.train_dataset.cameras.to(self.device))

    def next_train(self, step: int):
        sampler = self.train_pixel_sampler
        if isinstance(sampler, CenterCropPixelSampler):
            sampler.crop_fraction = self.config.center_crop_fraction if self.crops_at(step) else None
        return super().next_train(step)
