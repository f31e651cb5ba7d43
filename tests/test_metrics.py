"""Offline-safe metrics: LPIPS is real or None, never computed from random weights."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchmetrics.image.lpip as lpip_module

from nerfqat_plugin.metrics import image_metrics as metrics_module


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "_LPIPS_CACHE", {})


def test_lpips_is_null_with_one_warning_when_weights_are_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise OSError("no internet")

    monkeypatch.setattr(lpip_module, "LearnedPerceptualImagePatchSimilarity", offline)
    image = torch.rand(16, 16, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = metrics_module.image_metrics(image, image)
        second = metrics_module.image_metrics(image, image * 0.5)
    assert first["lpips"] is None and second["lpips"] is None
    assert first["psnr"] > 60 and second["psnr"] < first["psnr"]
    assert sum("LPIPS is unavailable" in str(w.message) for w in caught) == 1


def test_lpips_is_used_when_pretrained_weights_load(monkeypatch: pytest.MonkeyPatch) -> None:
    class PretrainedStandIn(torch.nn.Module):
        def __init__(self, net_type: str, normalize: bool) -> None:
            super().__init__()
            assert net_type == "alex" and normalize

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return (a - b).abs().mean()

    monkeypatch.setattr(lpip_module, "LearnedPerceptualImagePatchSimilarity", PretrainedStandIn)
    image = torch.rand(8, 8, 3)
    result = metrics_module.image_metrics(image, torch.zeros_like(image))
    assert result["lpips"] == pytest.approx(float(image.mean()), rel=1e-5)
