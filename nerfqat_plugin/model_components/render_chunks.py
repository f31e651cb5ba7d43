"""Rays per render chunk on a GPU, sized to its free memory.

A render evaluates a frame's rays in chunks. Each chunk launches the same kernels whatever its size,
so on a GPU a frame of a few large chunks spends far less time launching and waiting than one of
many small ones (docs/methods/rendering.md). The first chunk a model renders on a GPU is measured:
its peak memory above what was allocated before, per ray. Later chunks hold the largest power of two
of rays whose estimate fits a share of the GPU's free memory (between :data:`MIN_RAYS` and
:data:`MAX_RAYS`). A chunk that runs out of memory halves the size and the frame starts again, so a
frame is never lost to a size that was too large (another process took memory, a region of the scene
holds more samples per ray than the measured one).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Dict, List, Optional, Protocol

import torch
from nerfstudio.cameras.rays import RayBundle
from torch import Tensor

MIN_RAYS = 1 << 10
"""Smallest chunk: below it, halving after running out of memory gives up and raises."""
MAX_RAYS = 1 << 20
"""Largest chunk (an 800x800 frame is 640,000 rays): the host's work and waits per chunk are paid once
per frame, and memory still follows the share of free memory asked for."""


class DeviceMemory(Protocol):
    """What chunk sizing reads of a device's memory (:class:`CudaMemory`; tests pass their own)."""

    def start_peak(self) -> int:
        """Start measuring a peak; returns the bytes allocated now."""

    def peak(self) -> int:
        """The most bytes allocated since :meth:`start_peak`."""

    def free(self) -> int:
        """Bytes the device has free for new allocations."""

    def release(self) -> None:
        """Give cached, unused blocks back after running out of memory."""


class CudaMemory:
    """:class:`DeviceMemory` of a CUDA device, through PyTorch's caching allocator."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def start_peak(self) -> int:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        return torch.cuda.memory_allocated(self.device)

    def peak(self) -> int:
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device)

    def free(self) -> int:
        free, _ = torch.cuda.mem_get_info(self.device)
        # Blocks the allocator caches but does not use are free to this process too.
        return free + torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)

    def release(self) -> None:
        torch.cuda.empty_cache()


def fitting_rays(bytes_per_ray: float, free_bytes: int, memory_fraction: float) -> int:
    """The largest power of two of rays whose ``bytes_per_ray`` fit ``memory_fraction`` of
    ``free_bytes``, within [:data:`MIN_RAYS`, :data:`MAX_RAYS`]."""
    budget = memory_fraction * free_bytes
    if bytes_per_ray <= 0:
        return MAX_RAYS
    rays = budget / bytes_per_ray
    if rays < MIN_RAYS:
        return MIN_RAYS
    return min(MAX_RAYS, 1 << int(math.floor(math.log2(rays))))


class RenderChunkSizer:
    """Rays per render chunk of one model (see the module docstring): ``initial_rays`` until the first
    chunk is measured, then what fits ``memory_fraction`` of the free memory; halved after running
    out of memory. ``memory_fraction`` 0 keeps ``initial_rays`` (still halved when out of memory)."""

    def __init__(self, initial_rays: int, memory_fraction: float, memory: DeviceMemory) -> None:
        self.rays = max(1, int(initial_rays))
        self.memory_fraction = memory_fraction
        self.memory = memory
        self.measured = memory_fraction <= 0
        self._attempted = self.rays  # rays of the chunk last handed to the forward pass

    def halve(self, error: BaseException) -> None:
        """After a chunk ran out of memory: half its rays, or re-raise ``error`` at :data:`MIN_RAYS`."""
        if self._attempted <= MIN_RAYS:
            raise error
        self.rays = max(MIN_RAYS, self._attempted // 2)
        self.measured = True  # a measured size that ran out is not measured again
        self.memory.release()

    def render(self, forward: Callable[[RayBundle], Dict[str, Tensor]], bundle: RayBundle) -> Dict[str, Tensor]:
        """``forward``'s tensor outputs over a camera's ``bundle`` [H, W] of rays, chunk by chunk, each
        [H, W, C] (as nerfstudio's ``get_outputs_for_camera_ray_bundle``)."""
        while True:
            try:
                return self._render_once(forward, bundle)
            except torch.cuda.OutOfMemoryError as error:
                self.halve(error)
                print(f"[nerfqat] out of GPU memory rendering: {self.rays} rays per chunk from now on", flush=True)

    def _render_once(self, forward: Callable[[RayBundle], Dict[str, Tensor]], bundle: RayBundle) -> Dict[str, Tensor]:
        height, width = bundle.origins.shape[:2]
        total = len(bundle)
        parts: Dict[str, List[Tensor]] = defaultdict(list)
        start = 0
        while start < total:
            rays = min(self.rays, total - start)
            measuring = not self.measured
            before: Optional[int] = self.memory.start_peak() if measuring else None
            self._attempted = rays
            outputs = forward(bundle.get_row_major_sliced_ray_bundle(start, start + rays))
            if before is not None:
                self.rays = fitting_rays((self.memory.peak() - before) / rays, self.memory.free(), self.memory_fraction)
                self.measured = True
            for name, output in outputs.items():
                if isinstance(output, Tensor):  # as nerfstudio: lists of tensors are not images
                    parts[name].append(output)
            start += rays
        return {name: torch.cat(chunks).view(height, width, -1) for name, chunks in parts.items()}
