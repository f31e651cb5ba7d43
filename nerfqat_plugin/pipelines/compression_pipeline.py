"""nerfstudio's VanillaPipeline, reporting what compression is about in ``ns-eval``.

``ns-eval`` averages whatever metrics the model returns per image. This pipeline adds the
compressed file's byte count (``size_bytes``) and reports LPIPS as ``null`` when the pretrained
backbone is unavailable, instead of failing or averaging meaningless values. For models with
several operating points (vqad's levels) it evaluates every one and reports each as
``<point>/psnr`` etc.; the unprefixed metrics are those of the model's configured operating point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Type

from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils.rich_utils import CONSOLE
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

    def get_average_image_metrics(self, data_loader, image_prefix, step=None, output_path=None, get_std=False):
        metrics = self._metrics_at(None, data_loader, image_prefix, step, output_path, get_std)
        model = self.model
        if isinstance(model, CompressibleModel) and model.operating_points():
            current = model.current_operating_point()
            try:
                for name in model.operating_points():
                    if name != current:
                        CONSOLE.print(f"Evaluating operating point {name} (of {', '.join(model.operating_points())})")
                        model.set_operating_point(name)
                        point = self._metrics_at(name, data_loader, image_prefix, step, None, False)
                    else:
                        point = metrics
                    metrics.update({f"{name}/{key}": point[key] for key in ("psnr", "ssim", "lpips", "size_bytes")})
            finally:
                model.set_operating_point(current)
        if not get_std:
            # The trainer's periodic evaluation (get_std=False) hands these to nerfstudio's writers,
            # which take numbers only; ns-eval (get_std=True) reports unavailable LPIPS as null.
            metrics = {key: value for key, value in metrics.items() if value is not None}
        return metrics

    def _metrics_at(self, operating_point, data_loader, image_prefix, step, output_path, get_std):
        metrics = super().get_average_image_metrics(data_loader, image_prefix, step, output_path, get_std)
        metrics.setdefault("lpips", None)
        if get_std:
            metrics.setdefault("lpips_std", None)
        if isinstance(self.model, CompressibleModel):
            metrics["size_bytes"] = self.model.compressed_size_bytes(operating_point)
        return metrics
