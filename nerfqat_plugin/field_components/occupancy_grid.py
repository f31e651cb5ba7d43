"""A bit grid over a bounded scene's box marking where the field has density, baked once at export.

Rendering from a file skips the samples that fall in empty cells (their density is taken as 0), so
the field runs only near the object. A cell is occupied when the field is more than ``threshold``
opaque over one cell at any of a few stratified points inside it or inside a neighbouring cell (the
grid is dilated by one cell, so thin parts between the points are kept). The file stores the grid
bit-packed (deflated: a few kB for an object).
"""

from __future__ import annotations

from typing import Callable, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nerfqat_plugin.field_components.block_occupancy import opaque_density

DEFAULT_RESOLUTION = 64
DEFAULT_THRESHOLD = 0.001


class OccupancyGrid(nn.Module):
    """Occupied cells [X, Y, Z] (bool) of the box ``aabb`` [2, 3]."""

    def __init__(self, aabb: Tensor, occupied: Tensor) -> None:
        super().__init__()
        self.register_buffer("aabb", aabb.detach().clone().float(), persistent=False)
        self.register_buffer("occupied", occupied.detach().clone().bool(), persistent=False)

    @property
    def resolution(self) -> Tuple[int, int, int]:
        return tuple(self.occupied.shape)  # type: ignore[return-value]

    def forward(self, positions: Tensor) -> Tensor:
        """Whether each of ``positions`` [M, 3] lies in an occupied cell (False outside the box)."""
        unit = (positions - self.aabb[0]) / (self.aabb[1] - self.aabb[0])
        inside = ((unit >= 0) & (unit <= 1)).all(dim=-1)
        size = torch.tensor(self.resolution, device=positions.device)
        cell = torch.minimum((unit.clamp(0, 1) * size).long(), size - 1)
        return inside & self.occupied[cell[:, 0], cell[:, 1], cell[:, 2]]


@torch.no_grad()
def bake_occupancy(
    density_fn: Callable[[Tensor], Tensor],
    aabb: Tensor,
    resolution: int = DEFAULT_RESOLUTION,
    threshold: float = DEFAULT_THRESHOLD,
    per_axis: int = 2,
    chunk: int = 1 << 16,
) -> OccupancyGrid:
    """The grid of cells where ``density_fn`` (world positions [M, 3] -> density [M, 1]) is more than
    ``threshold`` opaque over one cell at ``per_axis**3`` stratified points of the cell or a neighbour."""
    device = aabb.device
    offsets = (torch.arange(per_axis, dtype=torch.float32, device=device) + 0.5) / per_axis
    steps = (torch.arange(resolution, dtype=torch.float32, device=device)[:, None] + offsets[None]) / resolution
    axes = [(aabb[0, i] + steps * (aabb[1, i] - aabb[0, i])).reshape(-1) for i in range(3)]
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    density = torch.cat([density_fn(part).reshape(-1).float() for part in points.split(chunk)])
    fine = density.view(*(resolution * per_axis,) * 3)
    per_cell = F.max_pool3d(fine[None, None], kernel_size=per_axis, stride=per_axis)  # max over each cell
    dilated = F.max_pool3d(per_cell, kernel_size=3, stride=1, padding=1)[0, 0]
    cell_size = float(((aabb[1] - aabb[0]) / resolution).mean())
    return OccupancyGrid(aabb, dilated > opaque_density(threshold, cell_size))
