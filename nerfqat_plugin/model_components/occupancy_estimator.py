"""Occupied space of a bounded scene, kept up to date from the field while it trains.

What nerfacc's ``OccGridEstimator`` does, in torch (its CUDA extension does not build everywhere):
every ``update_every`` steps the field's density is read at a random point of each cell (all cells
during ``warmup_steps``, then a random quarter plus every occupied cell), each cell keeps the larger
of its decayed old value and the new one, and a cell is occupied where one march step (``step``
world units, as nerfacc's ``render_step_size``) through it would lose more opacity than
``min(opacity_threshold, mean over cells)``. Training and renders
then march only the occupied cells (:mod:`~nerfqat_plugin.model_components.packed_marching`).

The grid can never erase the scene: an update that would leave no cell occupied keeps every cell
occupied instead, with one log line (a field that has learned no density yet).
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor, nn

from nerfqat_plugin.field_components.occupancy_grid import OccupancyGrid
from nerfqat_plugin.field_components.weights_version import tensors_version

DensityAt = Callable[[Tensor], Tensor]
"""Flat positions [M, 3] -> density [M, 1]."""


class OccupancyEstimator(nn.Module):
    """A ``resolution``^3 grid over ``aabb`` [2, 3] of the density the field last showed per cell, and
    the occupied cells it implies (in the module's state: a resumed run continues with them)."""

    def __init__(
        self,
        aabb: Tensor,
        resolution: int = 128,
        decay: float = 0.95,
        opacity_threshold: float = 0.01,
        warmup_steps: int = 256,
        step: Optional[float] = None,
    ) -> None:
        super().__init__()
        if resolution < 2 or not 0 < decay <= 1 or not 0 < opacity_threshold < 1 or (step is not None and step <= 0):
            raise ValueError(
                f"occupancy grid: resolution {resolution} >= 2, decay in (0, 1], threshold in (0, 1), step > 0"
            )
        self.resolution = resolution
        self.decay = decay
        self.opacity_threshold = opacity_threshold
        self.warmup_steps = warmup_steps
        self.step = step
        self.register_buffer("aabb", aabb.detach().clone().float())
        self.register_buffer("density", torch.zeros(resolution**3))
        self.register_buffer("occupied", torch.ones(resolution**3, dtype=torch.bool))
        self._warned_empty = False
        self._grid: Optional[Tuple[Tuple[Tuple[int, int], ...], OccupancyGrid]] = None  # (occupied's version, grid)

    @property
    def cell_edge(self) -> float:
        """The longest edge of a cell (world units)."""
        return float((self.aabb[1] - self.aabb[0]).max()) / self.resolution

    @property
    def step_length(self) -> float:
        """The march step the opacity threshold applies to (world units; default one cell edge)."""
        return self.step if self.step is not None else self.cell_edge

    def grid(self) -> OccupancyGrid:
        """The occupied cells as an :class:`OccupancyGrid` (outside the box: empty), made again only
        after the cells change: every batch marches it, and making one copies the cells and waits for
        the GPU."""
        version = tensors_version(self.occupied)
        if self._grid is None or self._grid[0] != version:
            r = self.resolution
            self._grid = (version, OccupancyGrid(self.aabb, self.occupied.view(r, r, r), outside_occupied=False))
        return self._grid[1]

    @torch.no_grad()
    def update(self, density_at: DensityAt, step: int, chunk: int = 1 << 18) -> None:
        """Read the field's density in the cells due at ``step`` and re-decide which are occupied."""
        r = self.resolution
        device = self.density.device
        # Points drawn from the step alone: every DDP rank reads the same points of the same
        # (synchronised) field, so the grids stay identical without being broadcast.
        generator = torch.Generator(device=device).manual_seed(step)
        if step < self.warmup_steps:
            cells = torch.arange(r**3, device=device)
        else:
            sampled = torch.randint(0, r**3, (r**3 // 4,), device=device, generator=generator)
            cells = torch.unique(torch.cat([sampled, torch.nonzero(self.occupied).view(-1)]))
        ijk = torch.stack([cells // (r * r), cells // r % r, cells % r], dim=-1).float()
        unit = (ijk + torch.rand(ijk.shape, device=device, generator=generator)) / r
        positions = self.aabb[0] + unit * (self.aabb[1] - self.aabb[0])
        sigma = torch.cat([density_at(part).view(-1) for part in positions.split(chunk)])
        self.density[cells] = torch.maximum(self.density[cells] * self.decay, sigma.float())
        opacity = 1.0 - torch.exp(-self.density * self.step_length)
        occupied = opacity > min(self.opacity_threshold, float(opacity.mean()))
        if not bool(occupied.any()):
            if not self._warned_empty:
                CONSOLE.print("occupancy grid: no density anywhere yet; every cell stays occupied")
                self._warned_empty = True
            occupied = torch.ones_like(occupied)
        self.occupied.copy_(occupied)
