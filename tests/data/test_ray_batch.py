"""Training batches without host waits: the same pixels and rays as nerfstudio's sampler and generator."""

from __future__ import annotations

import math

import pytest
import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.pixel_samplers import PixelSamplerConfig
from nerfstudio.model_components.ray_generators import RayGenerator

from nerfqat_plugin.data.datamanager import CenterCropPixelSamplerConfig
from nerfqat_plugin.data.pinhole_rays import PinholeRayGenerator, training_ray_generator


def _cameras(n: int = 4, **kwargs) -> Cameras:
    g = torch.Generator().manual_seed(0)
    angles = torch.rand(n, 3, generator=g) * 2 * math.pi
    c2w = torch.zeros(n, 3, 4)
    for i, (a, b, c) in enumerate(angles.tolist()):  # a rotation per camera, and a position
        rx = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
        ry = torch.tensor([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
        rz = torch.tensor([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
        c2w[i, :, :3] = rz @ ry @ rx
    c2w[:, :, 3] = torch.randn(n, 3, generator=g)
    return Cameras(
        camera_to_worlds=c2w,
        fx=300.0 + 50 * torch.rand(n, 1, generator=g, dtype=torch.float64),  # some dataparsers give float64
        fy=310.0 + 50 * torch.rand(n, 1, generator=g),
        cx=40.0 + torch.rand(n, 1, generator=g),
        cy=30.0 + torch.rand(n, 1, generator=g),
        width=80,
        height=60,
        **kwargs,
    )


def _indices(n: int, cameras: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack(
        [torch.randint(0, cameras, (n,), generator=g), torch.randint(0, 60, (n,), generator=g),
         torch.randint(0, 80, (n,), generator=g)], dim=-1,
    )  # fmt: skip


def test_pinhole_rays_equal_nerfstudios() -> None:
    cameras = _cameras(distortion_params=torch.zeros(4, 6))  # zeros: undistorted
    ours = training_ray_generator(cameras)
    assert isinstance(ours, PinholeRayGenerator)
    indices = _indices(500, 4)
    expected, actual = RayGenerator(cameras)(indices), ours(indices)
    pairs = {name: (getattr(actual, name), getattr(expected, name)) for name in ("origins", "directions", "pixel_area")}
    pairs["camera_indices"] = actual.camera_indices, expected.camera_indices
    pairs["directions_norm"] = actual.metadata["directions_norm"], expected.metadata["directions_norm"]
    for name, (value, reference) in pairs.items():
        assert value.dtype == reference.dtype and value.shape == reference.shape, name
        assert torch.allclose(value, reference, atol=1e-7, rtol=1e-6), name
    assert float(expected.directions[:, 0].std()) > 0.1 and float(expected.origins.std()) > 0.1  # varied rays


@pytest.mark.parametrize("kind", ["distorted", "fisheye"])
def test_other_cameras_keep_nerfstudios_generator(kind: str) -> None:
    if kind == "distorted":
        cameras = _cameras(distortion_params=torch.tensor([[0.1, 0, 0, 0, 0, 0]] * 4))
    else:
        cameras = _cameras(camera_type=CameraType.FISHEYE)
    assert type(training_ray_generator(cameras)) is RayGenerator


def _image_batch(mask: bool = False) -> dict:
    g = torch.Generator().manual_seed(2)
    batch = {"image": torch.rand(4, 60, 80, 3, generator=g), "image_idx": torch.tensor([3, 5, 7, 9])}
    if mask:
        batch["mask"] = torch.rand(4, 60, 80, 1, generator=g) > 0.5
    return batch


@pytest.mark.parametrize("mask", [False, True])
def test_pixel_batches_equal_nerfstudios_for_the_same_draw(mask: bool) -> None:
    batches = []
    for config in (PixelSamplerConfig(num_rays_per_batch=256), CenterCropPixelSamplerConfig(num_rays_per_batch=256)):
        torch.manual_seed(3)
        batches.append(config.setup().sample(_image_batch(mask)))
    expected, actual = batches
    assert set(actual) == set(expected)
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key
    assert set(actual["indices"][:, 0].tolist()) <= {3, 5, 7, 9}  # the cameras' own indices
