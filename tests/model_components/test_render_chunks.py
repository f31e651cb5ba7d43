"""Render chunks sized to free GPU memory: the same image as nerfstudio's fixed chunks, a size from
the measured first chunk, and a frame that survives running out of memory."""

from __future__ import annotations

from typing import Dict, List

import pytest
import torch
from helpers import forward_rays, tiny_nerf_qat_model
from nerfstudio.cameras.rays import RayBundle

from nerfqat_plugin.errors import OptionError
from nerfqat_plugin.model_components.render_chunks import MAX_RAYS, MIN_RAYS, RenderChunkSizer, fitting_rays

KIB = 1 << 10
GIB = 1 << 30


class FakeMemory:
    """A device whose forward passes take ``bytes_per_ray`` each and run out above ``limit_rays``."""

    def __init__(self, bytes_per_ray: int, free_bytes: int, limit_rays: int = 1 << 30) -> None:
        self.bytes_per_ray, self.free_bytes, self.limit_rays = bytes_per_ray, free_bytes, limit_rays
        self.last_rays = 0
        self.released = 0

    def start_peak(self) -> int:
        return 1000  # already allocated: not part of a chunk's memory

    def peak(self) -> int:
        return 1000 + self.last_rays * self.bytes_per_ray

    def free(self) -> int:
        return self.free_bytes

    def release(self) -> None:
        self.released += 1


def camera_bundle(height: int, width: int) -> RayBundle:
    flat = forward_rays(height * width, seed=3)
    return flat.reshape((height, width))


def recording_forward(model, memory: FakeMemory, sizes: List[int]):
    def forward(bundle: RayBundle) -> Dict[str, torch.Tensor]:
        rays = len(bundle)
        sizes.append(rays)
        memory.last_rays = rays
        if rays > memory.limit_rays:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        return model.forward(bundle)

    return forward


def test_fitting_rays_is_the_largest_power_of_two_in_the_share_of_free_memory() -> None:
    assert fitting_rays(100 * KIB, 8 * GIB, 0.25) == 16384  # 2 GiB / 100 KiB = 20,971 rays
    assert fitting_rays(10 * KIB, 8 * GIB, 0.25) == 131072  # 209,715 rays
    assert fitting_rays(KIB, 100 * GIB, 0.5) == MAX_RAYS
    assert fitting_rays(100 * KIB, 64 * 1 << 20, 0.25) == MIN_RAYS  # 163 rays: never below the floor
    assert fitting_rays(0, GIB, 0.25) == MAX_RAYS  # a chunk that allocated nothing


def test_sized_chunks_render_what_nerfstudios_fixed_chunks_render() -> None:
    model = tiny_nerf_qat_model()
    model.config.eval_num_rays_per_chunk = 1000
    model.eval()
    bundle = camera_bundle(24, 200)  # 4,800 rays
    expected = model.get_outputs_for_camera_ray_bundle(bundle)  # on a CPU: nerfstudio's loop
    memory = FakeMemory(bytes_per_ray=512, free_bytes=4 << 20)  # a 1 MiB share: 2,048 rays
    sizes: List[int] = []
    sizer = RenderChunkSizer(1000, 0.25, memory)
    with torch.no_grad():
        got = sizer.render(recording_forward(model, memory, sizes), bundle)
    assert sizes == [1000, 2048, 1752] and sizer.rays == 2048  # the rest of the frame at the fitted size
    assert set(got) == {k for k, v in expected.items() if isinstance(v, torch.Tensor)}
    for name, image in expected.items():
        assert got[name].shape == image.shape
        torch.testing.assert_close(got[name], image, rtol=0, atol=1e-5)


def test_a_chunk_out_of_memory_halves_the_size_and_renders_the_frame_again() -> None:
    model = tiny_nerf_qat_model()
    model.eval()
    bundle = camera_bundle(32, 128)  # 4,096 rays
    memory = FakeMemory(bytes_per_ray=KIB, free_bytes=GIB, limit_rays=1500)
    sizes: List[int] = []
    sizer = RenderChunkSizer(8192, 0.0, memory)  # fraction 0: the given size, never measured
    with torch.no_grad():
        expected = model.forward(bundle.flatten())["rgb"].view(32, 128, 3)
        got = sizer.render(recording_forward(model, memory, sizes), bundle)
    assert sizes == [4096, 2048, 1024, 1024, 1024, 1024]  # the whole frame, then half the chunk that ran out
    assert sizer.rays == 1024 and memory.released == 2
    torch.testing.assert_close(got["rgb"], expected, rtol=0, atol=1e-5)


def test_running_out_of_memory_at_the_smallest_chunk_raises() -> None:
    model = tiny_nerf_qat_model()
    model.eval()
    memory = FakeMemory(bytes_per_ray=KIB, free_bytes=GIB, limit_rays=10)
    sizer = RenderChunkSizer(MIN_RAYS, 0.0, memory)
    with pytest.raises(torch.cuda.OutOfMemoryError), torch.no_grad():
        sizer.render(recording_forward(model, memory, []), camera_bundle(32, 64))


def test_a_memory_share_outside_zero_to_one_is_an_option_error() -> None:
    with pytest.raises(OptionError, match="render-chunk-memory-fraction must be in"):
        tiny_nerf_qat_model(render_chunk_memory_fraction=1.5)
