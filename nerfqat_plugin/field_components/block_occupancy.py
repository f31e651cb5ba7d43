"""Which blocks of a grid's vertices a field needs: the occupancy that lets fine levels be sparse.

A dense grid level that fits in a 1 MB file is coarse, and on a bounded object most of its vertices
lie in empty space. Splitting a level's vertices into cubic blocks and keeping only the blocks where
the field has density spends the same bytes on a much finer level. Blocks are judged by the opacity
of one cell (``1 - exp(-density * cell)``) at stratified points inside them, then dilated by one
block, so corners that neighbouring cells share are kept too.
"""

from __future__ import annotations

import math
from typing import Callable, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from nerfqat_plugin.field_components.ranks import reduce_over_ranks

Resolution = Tuple[int, int, int]


def block_grid_shape(resolution: Resolution, block_size: int) -> Resolution:
    """Blocks per axis for a level of ``resolution`` vertices per axis."""
    return tuple(math.ceil(r / block_size) for r in resolution)  # type: ignore[return-value]


def block_sample_points(resolution: Resolution, block_size: int, per_axis: int) -> Tensor:
    """``per_axis**3`` stratified points in [0, 1]^3 inside every block's cells [blocks, per_axis**3, 3],
    blocks in row-major (x, y, z) order. Fixed offsets, so every DDP rank samples the same points."""
    shape = block_grid_shape(resolution, block_size)
    offsets = (torch.arange(per_axis, dtype=torch.float32) + 0.5) / per_axis
    axes = []
    for r, blocks in zip(resolution, shape, strict=True):
        start = torch.arange(blocks, dtype=torch.float32) * block_size
        end = torch.clamp(start + block_size, max=r - 1)  # the last block ends at the last vertex
        axes.append((start[:, None] + (end - start)[:, None] * offsets[None]) / (r - 1))  # [blocks, per_axis]
    x, y, z = axes
    points = torch.stack(
        torch.broadcast_tensors(
            x[:, None, None, :, None, None], y[None, :, None, None, :, None], z[None, None, :, None, None, :]
        ),
        dim=-1,
    )
    return points.reshape(-1, per_axis**3, 3)


@torch.no_grad()
def occupied_blocks(
    density_fn: Callable[[Tensor], Tensor],
    resolution: Resolution,
    block_size: int,
    cell_size: float,
    threshold: float = 0.01,
    per_axis: int = 4,
    chunk: int = 1 << 16,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Blocks (bool, row-major [blocks]) where ``density_fn`` (points in [0, 1]^3 [N, 3] -> [N, 1])
    makes one cell of ``cell_size`` more than ``threshold`` opaque somewhere, dilated by one block.
    Under DDP the masks of all ranks are combined, so every rank keeps the same blocks."""
    points = block_sample_points(resolution, block_size, per_axis)
    flat = points.reshape(-1, 3)
    densities = torch.cat([density_fn(part.to(device)).reshape(-1) for part in flat.split(chunk)])
    alpha = 1.0 - torch.exp(-densities.float() * cell_size)
    occupied = (alpha.view(points.shape[0], -1).amax(dim=1) > threshold).float()
    shape = block_grid_shape(resolution, block_size)
    dilated = F.max_pool3d(occupied.view(1, 1, *shape), kernel_size=3, stride=1, padding=1).reshape(-1)
    return reduce_over_ranks(dilated, dist.ReduceOp.MAX) > 0
