"""Image metrics that work offline: PSNR, SSIM, and LPIPS only where its pretrained backbone exists.

LPIPS compares deep features of a pretrained AlexNet that torchvision downloads on first use. On a
machine without internet (CI, the GPU hosts) that download fails; a randomly initialised network
would still produce numbers, but meaningless ones. So LPIPS is computed only when the pretrained
weights load, and is otherwise reported as ``None`` after a single warning.
"""

from __future__ import annotations

import warnings
from typing import Dict, Optional

import torch
from torch import Tensor
from torchmetrics.functional import structural_similarity_index_measure
from torchmetrics.functional.image import peak_signal_noise_ratio

_LPIPS_CACHE: Dict[str, object] = {}
_UNAVAILABLE = "unavailable"


def lpips_metric(device: torch.device) -> Optional[torch.nn.Module]:
    """The pretrained LPIPS(AlexNet) metric on ``device``, or ``None`` when its weights cannot be had."""
    key = str(device)
    cached = _LPIPS_CACHE.get(key)
    if cached is None and _UNAVAILABLE not in _LPIPS_CACHE:
        try:
            from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

            # pretrained=True is torchmetrics' default: it raises rather than fall back to random weights.
            cached = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).to(device).eval()
        except Exception as err:  # any download or load failure means: no trustworthy LPIPS here
            _LPIPS_CACHE[_UNAVAILABLE] = True
            warnings.warn(
                f"LPIPS is unavailable ({type(err).__name__}: {err}); its pretrained AlexNet weights could not be "
                "loaded (no internet?). LPIPS is reported as null. Put alexnet-owt-7be5be79.pth in "
                "$TORCH_HOME/hub/checkpoints to enable it.",
                stacklevel=2,
            )
            return None
        _LPIPS_CACHE[key] = cached
    return cached if isinstance(cached, torch.nn.Module) else None


def image_metrics(gt: Tensor, pred: Tensor) -> Dict[str, Optional[float]]:
    """PSNR, SSIM and LPIPS (or ``None``) of ``[H, W, 3]`` images in [0, 1]."""
    gt_b = torch.moveaxis(gt, -1, 0)[None].float()
    pred_b = torch.moveaxis(pred, -1, 0)[None].float().clamp(0.0, 1.0)
    metrics: Dict[str, Optional[float]] = {
        "psnr": float(peak_signal_noise_ratio(pred_b, gt_b, data_range=1.0)),
        "ssim": float(structural_similarity_index_measure(pred_b, gt_b, data_range=1.0)),  # type: ignore[arg-type]
    }
    lpips = lpips_metric(gt.device)
    metrics["lpips"] = float(lpips(pred_b, gt_b)) if lpips is not None else None
    return metrics
