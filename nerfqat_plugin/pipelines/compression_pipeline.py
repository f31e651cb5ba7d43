"""nerfstudio's VanillaPipeline, reporting what compression is about in ``ns-eval``.

``ns-eval`` averages whatever metrics the model returns per image. This pipeline adds the
compressed file's byte count (``size_bytes``) and reports LPIPS as ``null`` when the pretrained
backbone is unavailable, instead of failing or averaging meaningless values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Type

from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig

from nerfqat_plugin.models.compressible import CompressibleModel


@dataclass
class CompressionPipelineConfig(VanillaPipelineConfig):
    """VanillaPipeline whose evaluation also reports the compressed size."""

    _target: Type = field(default_factory=lambda: CompressionPipeline)


class CompressionPipeline(VanillaPipeline):
    """Adds ``size_bytes`` and a null-safe ``lpips`` to the averaged evaluation metrics."""

    def get_average_image_metrics(self, data_loader, image_prefix, step=None, output_path=None, get_std=False):
        metrics = super().get_average_image_metrics(data_loader, image_prefix, step, output_path, get_std)
        metrics.setdefault("lpips", None)
        if get_std:
            metrics.setdefault("lpips_std", None)
        if isinstance(self.model, CompressibleModel):
            metrics["size_bytes"] = self.model.compressed_size_bytes()
        return metrics
