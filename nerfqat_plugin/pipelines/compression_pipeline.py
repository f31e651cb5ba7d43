"""nerfstudio's VanillaPipeline, reporting what compression is about in ``ns-eval``.

``ns-eval`` averages whatever metrics the model returns per image. This pipeline adds the
compressed file's byte count (``size_bytes``) and reports LPIPS as ``null`` when the pretrained
backbone is unavailable, instead of failing or averaging meaningless values. For models with
several operating points (vqad's levels) it evaluates every one and reports each as
``<point>/psnr`` etc.; the unprefixed metrics are those of the model's configured operating point.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Type

import torch
import torchvision.utils as vutils
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel as DDP

from nerfqat_plugin.models.compressible import CompressibleModel


@dataclass
class CompressionPipelineConfig(VanillaPipelineConfig):
    """VanillaPipeline whose evaluation also reports the compressed size."""

    _target: Type = field(default_factory=lambda: CompressionPipeline)


def wrap_for_ddp(model: CompressibleModel, local_rank: int) -> DDP:
    """DistributedDataParallel for one of our models, cheaper per step than nerfstudio's wrapper.

    - No search for unused parameters after every backward where the model says that every
      parameter gets a gradient (:meth:`CompressibleModel.ddp_find_unused_parameters`).
    - No broadcast of every buffer from rank 0 before every forward: the models keep their buffers
      identical on all ranks themselves (activation ranges are reduced over ranks before each
      update; everything else is derived from the synchronised parameters or constant), which the
      2-process test checks.
    """
    find_unused = model.ddp_find_unused_parameters()
    if not find_unused:
        # nerfstudio's empty device marker is a parameter that never gets a gradient.
        model.device_indicator_param.requires_grad_(False)
    device_ids = [local_rank] if next(model.parameters()).is_cuda else None
    return DDP(model, device_ids=device_ids, find_unused_parameters=find_unused, broadcast_buffers=False)


def rewrap_for_ddp(wrapped: DDP, local_rank: int) -> DDP:
    """Replace nerfstudio's wrapper by :func:`wrap_for_ddp`'s, taking the first wrapper's gradient
    hooks off the parameters so that only one reducer runs."""
    wrapped._remove_autograd_hooks()
    return wrap_for_ddp(wrapped.module, local_rank)


class CompressionPipeline(VanillaPipeline):
    """Adds ``size_bytes`` and a null-safe ``lpips`` to the averaged evaluation metrics, and wraps our
    models for several GPUs with :func:`wrap_for_ddp` instead of nerfstudio's default wrapper."""

    def __init__(self, config, device, test_mode="val", world_size=1, local_rank=0, grad_scaler=None):
        super().__init__(config, device, test_mode, world_size, local_rank, grad_scaler)
        if world_size > 1 and isinstance(self.model, CompressibleModel):
            self._model = rewrap_for_ddp(self._model, local_rank)
        self.train_rays = self.train_batches = 0
        """Training rays and batches so far: a model may vary its rays per batch."""

    def get_train_loss_dict(self, step: int):
        """nerfstudio's training step, then the next batch's ray count where the model sizes batches
        by samples (:meth:`CompressibleModel.rays_for_next_batch`; asked before the first step too)."""
        if self.train_batches == 0:
            self._resize_next_batch()
        outputs, losses, metrics = super().get_train_loss_dict(step)
        self.train_rays += self.datamanager.get_train_rays_per_batch()
        self.train_batches += 1
        self._resize_next_batch()
        return outputs, losses, metrics

    def _resize_next_batch(self) -> None:
        """Set the pixel sampler to the ray count the model asks of the next batch, if it asks one."""
        model = self.model
        sampler = getattr(self.datamanager, "train_pixel_sampler", None)
        if isinstance(model, CompressibleModel) and sampler is not None:
            rays = self.datamanager.get_train_rays_per_batch()
            following = model.rays_for_next_batch(rays)
            if following is not None and following != rays:
                sampler.set_num_rays_per_batch(following)

    def mean_train_rays_per_batch(self) -> Optional[float]:
        """Rays per training batch, averaged over the steps so far (None before the first)."""
        return self.train_rays / self.train_batches if self.train_batches else None

    def get_average_image_metrics(self, data_loader, image_prefix, step=None, output_path=None, get_std=False):
        """Average metrics of every image, at every operating point (the model's own first, unprefixed;
        each as ``<point>/<metric>``), with one progress bar naming the point and the image."""
        model = self.model
        points = model.operating_points() if isinstance(model, CompressibleModel) else []
        current = model.current_operating_point() if points else None
        order = [current] + [name for name in points if name != current]
        results: Dict[Optional[str], Dict[str, Any]] = {}
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=CONSOLE
        ) as progress:
            task = progress.add_task("Evaluating", total=len(order) * len(data_loader))
            try:
                for name in order:
                    if name != current:
                        model.set_operating_point(name)
                    own = name == current  # images are saved, and std reported, for the model's own point
                    results[name] = self._metrics_at(
                        name, data_loader, image_prefix, output_path if own else None, get_std and own, progress, task
                    )
            finally:
                if points:
                    model.set_operating_point(current)
        metrics = dict(results[current])
        for name in points:
            metrics.update({f"{name}/{key}": results[name][key] for key in ("psnr", "ssim", "lpips", "size_bytes")})
        if not get_std:
            # The trainer's periodic evaluation (get_std=False) hands these to nerfstudio's writers,
            # which take numbers only; ns-eval (get_std=True) reports unavailable LPIPS as null.
            metrics = {key: value for key, value in metrics.items() if value is not None}
        return metrics

    def _metrics_at(
        self, point: Optional[str], data_loader, image_prefix: str, output_path, get_std: bool, progress, task
    ) -> Dict[str, Any]:
        """nerfstudio's per-image evaluation (metrics, saved images, rays/s) averaged over the images,
        plus the file's size and a null-safe LPIPS."""
        self.eval()
        per_image = []
        count = len(data_loader)
        if output_path is not None:
            output_path.mkdir(exist_ok=True, parents=True)
        for index, (camera, batch) in enumerate(data_loader):
            where = f"operating point {point}, " if point else ""
            description = f"Evaluating {where}image {index + 1} of {count}"
            progress.update(task, description=description)
            if not CONSOLE.is_terminal:  # a log shows no live bar: one line per image instead
                CONSOLE.print(description)
            metrics, images, seconds, pixels = self._image_metrics(camera, batch)
            if output_path is not None:
                for key, image in images.items():
                    path = output_path / f"{image_prefix}_{key}_{index:04d}.png"
                    vutils.save_image(image.permute(2, 0, 1).cpu(), path)
            if seconds > 0:
                metrics["num_rays_per_sec"] = pixels / seconds
                metrics["fps"] = 1.0 / seconds
            per_image.append(metrics)
            progress.advance(task)
        self.train()
        averaged: Dict[str, Any] = {}
        for key in per_image[0]:
            values = torch.tensor([float(m[key]) for m in per_image])
            averaged[key] = float(values.mean())
            if get_std:
                averaged[f"{key}_std"] = float(values.std()) if len(values) > 1 else 0.0
        averaged.setdefault("lpips", None)
        if get_std:
            averaged.setdefault("lpips_std", None)
        if isinstance(self.model, CompressibleModel):
            averaged["size_bytes"] = self.model.compressed_size_bytes(point)
        return averaged

    def _image_metrics(self, camera, batch) -> Tuple[Dict[str, Any], Dict[str, Tensor], float, int]:
        """One image's metrics and images, the seconds its render took and its pixel count."""
        start = time.perf_counter()
        outputs = self.model.get_outputs_for_camera(camera=camera)
        seconds = time.perf_counter() - start
        metrics, images = self.model.get_image_metrics_and_images(outputs, batch)
        return metrics, images, seconds, int(camera.height.item() * camera.width.item())
