"""Marching a bounded scene's occupied cells, with samples packed ray after ray.

Rays step evenly (``step`` world units, from each ray's near bound or, if later, where it enters the
grid's box) and keep only the steps
whose midpoint lies in an occupied cell of the file's :class:`OccupancyGrid`; empty space costs
nothing. The samples are packed: one flat list, ordered by ray, then by distance (nerfacc's layout),
so memory and work follow the occupied steps, not rays x steps.

On CUDA, nerfacc's ``traverse_grids`` walks the grid cell by cell and emits only those steps (its
extension is built on first use; where it does not build, torch is used). Elsewhere torch lists
every step of a slab of rays and keeps the occupied ones: the same steps, up to the rounding of
nerfacc's running sum of step lengths.

Training (vqad's occupancy sampler) finds, without gradients, the marched samples that light still
reaches (:func:`packed_transmittance`; every one where its threshold is 0), evaluates those with
gradients and composites them (:func:`packed_weights`, :func:`composite_packed`). Renders evaluate the
field front to back in windows of ``window`` samples per ray: after each window, rays whose
transmittance has fallen below ``min_transmittance`` stop, so samples behind an opaque surface are
never evaluated; colours only where a sample's weight reaches ``min_weight`` (the bounds of
:mod:`sample_skipping`, far below one 8-bit level).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from nerfstudio.model_components.renderers import RGBRenderer
from nerfstudio.utils.math import intersect_aabb
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from nerfqat_plugin.field_components.occupancy_grid import OccupancyGrid
from nerfqat_plugin.model_components.sample_skipping import MIN_TRANSMITTANCE, MIN_WEIGHT, ColorFn, DensityFn

TORCH_MARCH_CANDIDATES = 1 << 24
"""Steps (rays x steps per ray) the torch marcher lists at once."""

_nerfacc_traversal: Optional[bool] = None  # whether nerfacc's CUDA extension loaded (None: not tried)


@dataclass
class PackedSamples:
    """Samples of ``num_rays`` rays, packed: ``ray_indices`` [N] (non-decreasing), and each sample's
    interval ``t_starts``/``t_ends`` [N] along its ray (world units, increasing within a ray)."""

    ray_indices: Tensor
    t_starts: Tensor
    t_ends: Tensor
    num_rays: int
    _starts: Optional[Tensor] = field(default=None, init=False, repr=False)

    def __len__(self) -> int:
        return self.ray_indices.numel()

    def ray_starts(self) -> Tensor:
        """Index of each ray's first sample [num_rays] (a ray without samples: where it would start).
        A binary search of the sorted ray indices (a histogram's atomics pile up on them), kept once
        computed."""
        if self._starts is None:
            rays = torch.arange(self.num_rays, device=self.ray_indices.device, dtype=self.ray_indices.dtype)
            self._starts = torch.searchsorted(self.ray_indices, rays)
        return self._starts

    def subset(self, indices: Tensor) -> PackedSamples:
        """The samples at ``indices`` [M] (increasing, so the packing stays ordered by ray), of the
        same rays."""
        return PackedSamples(self.ray_indices[indices], self.t_starts[indices], self.t_ends[indices], self.num_rays)

    def ranks(self) -> Tensor:
        """Each sample's position within its ray [N] (0: the nearest)."""
        index = torch.arange(len(self), device=self.ray_indices.device)
        return index - self.ray_starts()[self.ray_indices]


def nerfacc_traversal_available(device: torch.device) -> bool:
    """Whether nerfacc's ``traverse_grids`` can run on ``device``: CUDA, and its extension builds
    (first call; a failure prints one line and torch marches instead)."""
    global _nerfacc_traversal
    if device.type != "cuda":
        return False
    if _nerfacc_traversal is None:
        try:
            from nerfacc.cuda import _backend

            _nerfacc_traversal = _backend._C is not None
        except Exception as error:  # a toolkit that does not build it: torch marches instead
            CONSOLE.print(f"[yellow]nerfacc's CUDA extension did not load ({type(error).__name__}); marching in torch")
            _nerfacc_traversal = False
    return _nerfacc_traversal


def march_occupied(
    origins: Tensor,
    directions: Tensor,
    nears: Tensor,
    fars: Tensor,
    grid: OccupancyGrid,
    step: float,
    jitter: bool = False,
    use_nerfacc: Optional[bool] = None,
) -> PackedSamples:
    """Steps of ``step`` along rays ``origins``/``directions`` [R, 3] (unit directions) from ``nears``
    (or where a ray enters the grid's box) to ``fars`` [R] whose midpoints lie in ``grid``'s occupied
    cells (outside its box: empty); with ``jitter`` every ray's steps shift by one random fraction of a
    step (training). ``use_nerfacc`` None: nerfacc where :func:`nerfacc_traversal_available`."""
    if use_nerfacc is None:
        use_nerfacc = nerfacc_traversal_available(origins.device)
    entry, exit_ = ray_box_interval(origins, directions, grid.aabb)
    nears, fars = torch.maximum(nears, entry), torch.minimum(fars, exit_)  # steps start where the box does
    if jitter:
        nears = nears + torch.rand_like(nears) * step
    if use_nerfacc:
        return _march_nerfacc(origins, directions, nears, fars, grid, step)
    return _march_torch(origins, directions, nears, fars, grid, step)


def rays_crossing_occupied(
    origins: Tensor, directions: Tensor, nears: Tensor, fars: Tensor, grid: OccupancyGrid
) -> Tensor:
    """Whether each ray [R] (unit ``directions``, from ``nears`` to ``fars``) has a step of the grid's
    smallest cell size whose midpoint lies in an occupied cell. Grids are baked dilated by one cell,
    so a ray that reaches a cell with density first runs at least a cell size through occupied cells,
    which holds a step's midpoint; a ray that is not marked meets no cell where the bake saw density."""
    cell = float(((grid.aabb[1] - grid.aabb[0]) / grid.cells).min())
    steps = march_occupied(origins, directions, nears, fars, grid, cell)
    crossing = torch.zeros(len(origins), dtype=torch.bool, device=origins.device)
    crossing[steps.ray_indices] = True
    return crossing


def ray_box_interval(origins: Tensor, directions: Tensor, aabb: Tensor) -> Tuple[Tensor, Tensor]:
    """Distances [R] at which rays enter and leave the box ``aabb`` [2, 3], from 0 (a miss: both
    1e10, so no steps): nerfstudio's ``intersect_aabb``, with direction components of exactly 0
    nudged so that a ray in the plane of a face divides no 0 by 0."""
    safe = torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    return intersect_aabb(origins, safe, aabb.reshape(6))


def _march_nerfacc(
    origins: Tensor, directions: Tensor, nears: Tensor, fars: Tensor, grid: OccupancyGrid, step: float
) -> PackedSamples:
    from nerfacc.grid import traverse_grids

    intervals, samples = traverse_grids(
        origins.float(),
        directions.float(),
        grid.occupied[None],
        grid.aabb.reshape(1, 6).float(),
        near_planes=nears.float(),
        far_planes=fars.float(),
        step_size=step,
        cone_angle=0.0,
    )
    return PackedSamples(
        samples.ray_indices.long(),
        intervals.vals[intervals.is_left],
        intervals.vals[intervals.is_right],
        len(origins),
    )


def _march_torch(
    origins: Tensor, directions: Tensor, nears: Tensor, fars: Tensor, grid: OccupancyGrid, step: float
) -> PackedSamples:
    num_rays = len(origins)
    longest = float((fars - nears).max().clamp_min(0)) if num_rays else 0.0
    steps = max(1, int(math.ceil(longest / step)))
    slab = max(1, TORCH_MARCH_CANDIDATES // steps)
    offsets = torch.arange(steps, device=origins.device, dtype=origins.dtype) * step
    parts = []
    for first in range(0, num_rays, slab):
        o, d = origins[first : first + slab], directions[first : first + slab]
        starts = nears[first : first + slab, None] + offsets  # [r, steps]
        middles = starts + 0.5 * step
        wanted = middles < fars[first : first + slab, None]
        wanted &= grid((o[:, None] + d[:, None] * middles[..., None]).reshape(-1, 3)).view_as(wanted)
        rays, columns = wanted.nonzero(as_tuple=True)
        parts.append((rays + first, starts[rays, columns]))
    ray_indices = torch.cat([rays for rays, _ in parts])
    t_starts = torch.cat([starts for _, starts in parts])
    return PackedSamples(ray_indices, t_starts, t_starts + step, num_rays)


def _optical_depths(samples: PackedSamples, density: Tensor) -> Tuple[Tensor, Tensor]:
    """Each packed sample's optical depth and that of the samples before it on its ray [N] (float64:
    one running sum over every ray)."""
    optical = density.double() * (samples.t_ends - samples.t_starts).double()
    before = torch.cumsum(optical, dim=0) - optical
    return optical, before - before[samples.ray_starts()[samples.ray_indices]]


def packed_transmittance(samples: PackedSamples, density: Tensor) -> Tensor:
    """Transmittance [N] that reaches each packed sample with ``density`` [N] from its ray's origin
    (1 at a ray's first sample, non-increasing along the ray)."""
    if len(samples) == 0:
        return density.new_zeros(0)
    return torch.exp(-_optical_depths(samples, density)[1]).to(density.dtype)


def packed_weights(samples: PackedSamples, density: Tensor) -> Tensor:
    """Volume-rendering weights [N] of packed samples with ``density`` [N]: each sample's opacity
    times the transmittance of the samples before it on its ray."""
    if len(samples) == 0:
        return density.new_zeros(0)
    optical, within_ray = _optical_depths(samples, density)
    return (torch.exp(-within_ray) * -torch.expm1(-optical)).to(density.dtype)


@torch.no_grad()
def render_packed(
    samples: PackedSamples,
    origins: Tensor,
    directions: Tensor,
    density_fn: DensityFn,
    color_fn: ColorFn,
    renderer_rgb: RGBRenderer,
    window: int = 64,
    first_window: int = 16,
    min_transmittance: float = MIN_TRANSMITTANCE,
    min_weight: float = MIN_WEIGHT,
) -> Dict[str, Tensor]:
    """``rgb`` [R, 3], ``accumulation`` [R, 1] and ``depth`` [R, 1] (distance along the ray) of
    ``samples`` along rays ``origins``/``directions`` [R, 3], the field evaluated front to back and
    the colours composited by ``renderer_rgb`` (the model's, with its background). Each ray's samples
    are evaluated in windows of ``first_window`` samples, doubling up to ``window``; rays stop once
    nearly opaque. Most rays that reach a surface stop within a few steps of it, so small first
    windows evaluate few samples behind it; larger ones later keep the passes few."""
    num_rays, device = samples.num_rays, origins.device
    total = len(samples)
    middles = 0.5 * (samples.t_starts + samples.t_ends)
    density = torch.zeros(total, device=device)
    # Features stay packed as evaluated (sample index, features per window): a buffer for every
    # marched sample would be written once with zeros and mostly never read.
    evaluated: List[Tuple[Tensor, Tensor]] = []
    optical_depth = torch.zeros(num_rays, device=device)
    limit = -math.log(min_transmittance) if min_transmittance > 0 else math.inf
    ranks = samples.ranks()
    deepest = int(ranks.max()) + 1 if total else 0
    start, size = 0, max(1, min(first_window, window))
    while start < deepest:
        end = start + size
        alive = optical_depth < limit
        chosen = ((ranks >= start) & (ranks < end) & alive[samples.ray_indices]).nonzero().view(-1)
        start, size = end, min(2 * size, window)
        if chosen.numel() == 0:
            continue
        rays = samples.ray_indices[chosen]
        sigma, feat = density_fn(origins[rays] + directions[rays] * middles[chosen, None])
        sigma = sigma.view(-1).float()
        density[chosen] = sigma
        evaluated.append((chosen, feat))
        optical_depth.index_add_(0, rays, sigma * (samples.t_ends[chosen] - samples.t_starts[chosen]))
    weights = packed_weights(samples, density)
    rgb = torch.zeros(total, 3, device=device)
    if evaluated:
        indices, features = (torch.cat(parts) for parts in zip(*evaluated, strict=True))
        keep = (weights[indices] >= min_weight).nonzero().view(-1)
        if keep.numel():
            needed = indices[keep]
            rgb[needed] = color_fn(features[keep], directions[samples.ray_indices[needed]]).float()
    return composite_packed(samples, weights, rgb, renderer_rgb)


def composite_packed(
    samples: PackedSamples, weights: Tensor, rgb: Tensor, renderer_rgb: RGBRenderer
) -> Dict[str, Tensor]:
    """Per ray [R, ...]: ``rgb`` composited by ``renderer_rgb`` (with its background), accumulation and
    depth (distance along the ray), from packed samples' ``weights`` [N] and colours ``rgb`` [N, 3]."""
    ray_indices, num_rays = samples.ray_indices, samples.num_rays
    colour = renderer_rgb(rgb=rgb, weights=weights[:, None], ray_indices=ray_indices, num_rays=num_rays)
    zeros = weights.new_zeros(num_rays, 1)
    accumulation = zeros.index_add(0, ray_indices, weights[:, None])
    middles = 0.5 * (samples.t_starts + samples.t_ends)
    depth = zeros.index_add(0, ray_indices, (weights * middles)[:, None]) / accumulation.clamp_min(1e-10)
    return {"rgb": colour, "accumulation": accumulation, "depth": depth}
