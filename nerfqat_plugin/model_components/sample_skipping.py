"""Render-time sample skipping: evaluate a field only where a sample can still change the pixel.

Rendering (not training) walks each ray's samples front to back in a few chunks. After every chunk
the rays whose transmittance has fallen below ``min_transmittance`` stop: the samples behind an
opaque surface are never evaluated (their densities stay 0, so they add at most
``min_transmittance`` of colour to the pixel); with an occupancy grid, samples in empty cells are
skipped as well. Colours are then computed only for samples whose
weight reaches ``min_weight`` (and the last sample, whose colour a ``last_sample`` background
shows); the rest add at most their weight each. Both bounds are far below one 8-bit level, so
renders match evaluating every sample.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple

import torch
from nerfstudio.cameras.rays import RaySamples
from torch import Tensor

DensityFn = Callable[[Tensor], Tuple[Tensor, Tensor]]
"""Flat positions [M, 3] -> (density [M, 1], features [M, F]) for the colour."""
ColorFn = Callable[[Tensor, Tensor], Tensor]
"""Features [M, F] and unit directions [M, 3] -> colour [M, 3]."""

MIN_TRANSMITTANCE = 1e-4
MIN_WEIGHT = 1e-5


@torch.no_grad()
def evaluate_front_to_back(
    ray_samples: RaySamples,
    positions: Tensor,
    directions: Tensor,
    density_fn: DensityFn,
    color_fn: ColorFn,
    chunks: int = 4,
    min_transmittance: float = MIN_TRANSMITTANCE,
    min_weight: float = MIN_WEIGHT,
    occupied: Optional[Callable[[Tensor], Tensor]] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Density [R, S, 1], colour [R, S, 3] and the share of samples evaluated (0-d tensor), for samples
    at ``positions`` [R, S, 3] seen along ``directions`` [R, S, 3]; skipped samples hold 0.
    ``occupied`` (positions [M, 3] -> bool [M], e.g. an :class:`OccupancyGrid`): samples outside
    it are empty space and skipped too.

    The samples to evaluate are listed once per chunk (one ``nonzero``, the only wait for the GPU)
    and gathered and scattered by those indices; their features are kept packed, in the order they
    were evaluated, so memory follows the samples evaluated, not every sample of every ray."""
    num_rays, num_samples = positions.shape[:2]
    device = positions.device
    density = torch.zeros(num_rays, num_samples, 1, device=device)
    evaluated = torch.zeros(num_rays, num_samples, dtype=torch.bool, device=device)
    packed: List[Tuple[Tensor, Tensor, Tensor]] = []  # (rays, columns, features) of each chunk
    alive = torch.ones(num_rays, dtype=torch.bool, device=device)
    optical_depth = torch.zeros(num_rays, device=device)
    deltas = ray_samples.deltas[..., 0]
    limit = -math.log(min_transmittance) if min_transmittance > 0 else math.inf  # 0: never stop
    edges = [round(k * num_samples / chunks) for k in range(chunks + 1)]
    for start, end in zip(edges[:-1], edges[1:], strict=True):
        if end == start:
            continue
        wanted = alive[:, None].expand(-1, end - start)
        if occupied is not None:
            wanted = wanted & occupied(positions[:, start:end].reshape(-1, 3)).view(num_rays, end - start)
        rays, columns = wanted.nonzero(as_tuple=True)
        if rays.numel():
            columns = columns + start
            sigma, feat = density_fn(positions[rays, columns])
            density[rays, columns] = sigma.to(density.dtype)
            evaluated[rays, columns] = torch.ones_like(rays, dtype=torch.bool)  # (a Python True is copied to the GPU)
            packed.append((rays, columns, feat))
        optical_depth += (density[:, start:end, 0] * deltas[:, start:end]).sum(dim=-1)
        alive &= optical_depth < limit
    weights = ray_samples.get_weights(density)[..., 0]
    needed = evaluated & (weights >= min_weight)
    needed[:, -1] |= evaluated[:, -1]  # a "last_sample" background shows the last sample's colour
    rgb = torch.zeros(num_rays, num_samples, 3, device=device)
    if packed:
        rays, columns, features = (torch.cat(parts) for parts in zip(*packed, strict=True))
        keep = needed[rays, columns].nonzero(as_tuple=True)[0]
        if keep.numel():
            rays, columns = rays[keep], columns[keep]
            rgb[rays, columns] = color_fn(features[keep], directions[rays, columns]).to(rgb.dtype)
    return density, rgb, evaluated.float().mean()


def density_where_occupied(density_fn: Callable[[Tensor], Tensor], occupied: Callable[[Tensor], Tensor]) -> Callable:
    """``density_fn`` (positions [..., 3] -> density [..., 1], e.g. a proposal field's) evaluated only
    at the positions ``occupied`` marks (positions [M, 3] -> bool [M]); density 0 elsewhere."""

    def density(positions: Tensor) -> Tensor:
        flat = positions.reshape(-1, 3)
        index = occupied(flat).nonzero().view(-1)
        values = flat.new_zeros(len(flat), 1)
        if index.numel():
            values[index] = density_fn(flat[index]).reshape(-1, 1).to(values.dtype)
        return values.view(*positions.shape[:-1], 1)

    return density
