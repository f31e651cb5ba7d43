"""What every model of this plugin shares: a compressed form, its size, and offline-safe metrics.

A :class:`CompressibleModel` can write itself to the compressed-field file and be rebuilt from
one. Rebuilt models are registered by method name, so :func:`load_compressed_model` needs only
the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Type, TypeVar

import torch
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.models.base_model import Model
from torch import Tensor

from nerfqat_plugin.compression.file_format import (
    CompressedFileError,
    read_compressed,
    serialize_compressed,
    write_compressed,
)
from nerfqat_plugin.metrics.image_metrics import image_metrics

ModelT = TypeVar("ModelT", bound="CompressibleModel")
_REGISTRY: Dict[str, Type[CompressibleModel]] = {}


def register_compressible(method_name: str) -> Callable[[Type[ModelT]], Type[ModelT]]:
    """Class decorator: files whose payload names ``method_name`` are rebuilt with this class."""

    def wrap(cls: Type[ModelT]) -> Type[ModelT]:
        cls.compressed_method_name = method_name
        _REGISTRY[method_name] = cls
        return cls

    return wrap


class CompressibleModel(Model):
    """A nerfstudio Model with a self-contained compressed form."""

    compressed_method_name: str = ""

    # -- to implement -------------------------------------------------------------------------
    def compressed_state(self) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
        """Tensors and JSON-able payload (configuration, tensor layout) that rebuild this model."""
        raise NotImplementedError

    @classmethod
    def from_compressed_state(cls: Type[ModelT], tensors: Dict[str, Tensor], payload: Dict[str, Any]) -> ModelT:
        """Rebuild the model from :meth:`compressed_state`'s output."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    def _full_payload(self) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
        tensors, payload = self.compressed_state()
        payload = {
            "method": self.compressed_method_name,
            "scene_box": self.scene_box.aabb.detach().cpu().tolist(),
            **payload,
        }
        return tensors, payload

    def export_compressed(self, path: Path) -> int:
        """Write the compressed file atomically; returns its size in bytes."""
        tensors, payload = self._full_payload()
        return write_compressed(path, tensors, payload)

    def compressed_size_bytes(self) -> int:
        """Byte count the compressed file of the current weights has (the file is not written)."""
        return len(serialize_compressed(*self._full_payload()))

    def offline_safe_image_metrics(self, gt: Tensor, pred: Tensor) -> Dict[str, float]:
        """PSNR/SSIM/LPIPS for ``get_image_metrics_and_images``; LPIPS is omitted when unavailable
        (the pipeline then reports it as null)."""
        metrics = image_metrics(gt, pred)
        return {name: value for name, value in metrics.items() if value is not None}


def scene_box_from_payload(payload: Dict[str, Any]) -> SceneBox:
    return SceneBox(aabb=torch.tensor(payload["scene_box"], dtype=torch.float32))


def load_compressed_model(path: Path, device: Optional[torch.device | str] = None) -> CompressibleModel:
    """Rebuild a model from a compressed-field file, ready to render (eval mode)."""
    tensors, payload = read_compressed(Path(path))
    method = payload.get("method")
    cls = _REGISTRY.get(str(method))
    if cls is None:
        # Registration happens on import of the method's model module.
        import nerfqat_plugin.models  # noqa: F401

        cls = _REGISTRY.get(str(method))
    if cls is None:
        raise CompressedFileError(f"{path}: unknown method {method!r} (known: {sorted(_REGISTRY)})")
    try:
        model = cls.from_compressed_state(tensors, payload)
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        raise CompressedFileError(f"{path}: inconsistent contents ({err})") from err
    model.eval()
    if device is not None:
        model.to(device)
    return model
