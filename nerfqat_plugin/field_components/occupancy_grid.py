"""A bit grid over a box of the scene marking where the field has density, baked once at export.

Rendering from a file skips the samples that fall in empty cells (their density is taken as 0), so
the field runs only where something is. The box is a bounded scene's scene box, or the NDC cube of
a forward-facing one. Outside the box, samples are empty for a bounded scene (nothing is modelled
there) and evaluated for NDC (rays leave the cube's sides near the image edges).

A cell is empty when the field is too faint there for the skipped cells to matter: a ray crosses at
most ``3 * resolution`` cells, at most ``sqrt(3)`` cell sizes through each, so a cell is kept where
that path would be more than ``max_ray_loss / (3 * resolution)`` opaque; skipping then darkens no
ray by more than ``max_ray_loss`` of opacity (by default 1e-3, a quarter of one 8-bit level). The
density is sampled at a few stratified points per cell and the grid dilated by one cell, so thin
parts between the points are kept. The file stores the grid bit-packed (deflated: a few kB).
"""

from __future__ import annotations

import math
from typing import Callable, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nerfqat_plugin.field_components.block_occupancy import opaque_density

DEFAULT_RESOLUTION = 64
DEFAULT_MAX_RAY_LOSS = 1e-3


class OccupancyGrid(nn.Module):
    """Occupied cells [X, Y, Z] (bool) of the box ``aabb`` [2, 3]; positions outside the box count as
    occupied when ``outside_occupied``, else as empty."""

    def __init__(self, aabb: Tensor, occupied: Tensor, outside_occupied: bool = False) -> None:
        super().__init__()
        self.register_buffer("aabb", aabb.detach().clone().float(), persistent=False)
        self.register_buffer("occupied", occupied.detach().clone().bool(), persistent=False)
        # Cells per axis on the grid's device: a tensor made from Python numbers at every call would be
        # copied to the GPU each time, and the host would wait for that copy.
        self.register_buffer("cells", torch.tensor(occupied.shape, device=occupied.device), persistent=False)
        self.outside_occupied = outside_occupied
        self.diagonal = box_diagonal(aabb)
        """The box's diagonal (world units), kept on the host: marching reads it every batch."""

    @property
    def resolution(self) -> Tuple[int, int, int]:
        return tuple(self.occupied.shape)  # type: ignore[return-value]

    def forward(self, positions: Tensor) -> Tensor:
        """Whether each of ``positions`` [M, 3] lies in an occupied cell."""
        unit = (positions - self.aabb[0]) / (self.aabb[1] - self.aabb[0])
        inside = ((unit >= 0) & (unit <= 1)).all(dim=-1)
        cell = torch.minimum((unit.clamp(0, 1) * self.cells).long(), self.cells - 1)
        in_occupied_cell = inside & self.occupied[cell[:, 0], cell[:, 1], cell[:, 2]]
        return in_occupied_cell | ~inside if self.outside_occupied else in_occupied_cell


def box_diagonal(aabb: Tensor) -> float:
    """The length of the diagonal of box ``aabb`` [2, 3] (world units)."""
    return float((aabb[1] - aabb[0]).norm())


def cell_threshold_density(aabb: Tensor, resolution: int, max_ray_loss: float) -> float:
    """Density below which a cell is empty: no ray loses more than ``max_ray_loss`` of opacity to all
    the empty cells it crosses (at most ``3 * resolution`` of them, ``sqrt(3)`` cells long each)."""
    longest_path = math.sqrt(3.0) * float(((aabb[1] - aabb[0]) / resolution).max())
    return opaque_density(max_ray_loss / (3 * resolution), longest_path)


@torch.no_grad()
def bake_occupancy(
    density_fn: Callable[[Tensor], Tensor],
    aabb: Tensor,
    resolution: int = DEFAULT_RESOLUTION,
    max_ray_loss: float = DEFAULT_MAX_RAY_LOSS,
    per_axis: int = 2,
    chunk: int = 1 << 16,
    outside_occupied: bool = False,
) -> OccupancyGrid:
    """The grid of cells of ``aabb`` where ``density_fn`` (positions [M, 3] -> density [M, 1]), at
    ``per_axis**3`` stratified points of the cell or a neighbour, exceeds :func:`cell_threshold_density`."""
    device = aabb.device
    offsets = (torch.arange(per_axis, dtype=torch.float32, device=device) + 0.5) / per_axis
    steps = (torch.arange(resolution, dtype=torch.float32, device=device)[:, None] + offsets[None]) / resolution
    axes = [(aabb[0, i] + steps * (aabb[1, i] - aabb[0, i])).reshape(-1) for i in range(3)]
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    density = torch.cat([density_fn(part).reshape(-1).float() for part in points.split(chunk)])
    fine = density.view(*(resolution * per_axis,) * 3)
    per_cell = F.max_pool3d(fine[None, None], kernel_size=per_axis, stride=per_axis)  # max over each cell
    dilated = F.max_pool3d(per_cell, kernel_size=3, stride=1, padding=1)[0, 0]
    threshold = cell_threshold_density(aabb, resolution, max_ray_loss)
    return OccupancyGrid(aabb, dilated > threshold, outside_occupied)
