"""Which blocks of a grid's vertices a field needs: the occupancy that lets fine levels be sparse.

A dense grid level that fits in a 1 MB file is coarse, and on a bounded object most of its vertices
lie in empty space. Splitting a level's vertices into cubic blocks and keeping only the blocks where
the field has density spends the same bytes on a much finer level. Blocks are judged by the opacity
of one cell (``1 - exp(-density * cell)``) at stratified points inside them, then dilated by one
block, so corners that neighbouring cells share are kept too. Under a byte budget the densest blocks
are kept first, so a file lands within its size whatever the scene's occupancy.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from nerfqat_plugin.field_components.ranks import reduce_over_ranks

if TYPE_CHECKING:  # the grid imports this module
    from nerfqat_plugin.field_components.codebook_grid import LearnedIndexCodebookGrid

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
def block_max_density(
    density_fn: Callable[[Tensor], Tensor],
    resolution: Resolution,
    block_size: int,
    per_axis: int = 4,
    chunk: int = 1 << 16,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Highest density ``density_fn`` (points in [0, 1]^3 [N, 3] -> [N, 1]) reaches at stratified
    points of every block or of one of its neighbours (row-major [blocks]). Taking the neighbours'
    maximum dilates whatever a threshold on it keeps by one block. Under DDP it is the maximum over
    all ranks, so every rank derives the same blocks from it."""
    points = block_sample_points(resolution, block_size, per_axis)
    flat = points.reshape(-1, 3)
    densities = torch.cat([density_fn(part.to(device)).reshape(-1).float() for part in flat.split(chunk)])
    per_block = densities.view(points.shape[0], -1).amax(dim=1)
    shape = block_grid_shape(resolution, block_size)
    dilated = F.max_pool3d(per_block.view(1, 1, *shape), kernel_size=3, stride=1, padding=1).reshape(-1)
    return reduce_over_ranks(dilated.contiguous(), dist.ReduceOp.MAX)


def samples_per_block_axis(resolution: Resolution, finest: Resolution, per_axis: int = 4) -> int:
    """Points per block edge that sample a level of ``resolution`` as densely as ``per_axis`` samples
    the ``finest`` level: block scores of different levels then see the same thin features, so a
    budget shared by the levels compares like with like."""
    return max(per_axis, math.ceil(per_axis * max(f / r for f, r in zip(finest, resolution, strict=True))))


def opaque_density(threshold: float, cell_size: float) -> float:
    """Density above which one cell of ``cell_size`` is more than ``threshold`` opaque."""
    return -math.log1p(-threshold) / cell_size


def block_vertex_counts(resolution: Resolution, block_size: int) -> Tensor:
    """Vertices in every block (row-major [blocks], int64): blocks on the far faces may be partial."""
    counts = []
    for r, blocks in zip(resolution, block_grid_shape(resolution, block_size), strict=True):
        start = torch.arange(blocks) * block_size
        counts.append(torch.clamp(r - start, max=block_size))
    x, y, z = counts
    return (x[:, None, None] * y[None, :, None] * z[None, None, :]).reshape(-1)


def densest_blocks_within_budget(
    scores: Sequence[Tensor], minimums: Sequence[float], costs: Sequence[Tensor], budget: float
) -> List[Tensor]:
    """Keep flags per level (bool [blocks]) for blocks whose score exceeds their level's minimum,
    densest first across all levels, as many as the summed ``costs`` allow within ``budget``.

    One density cut shared by the levels keeps them covering the same region of space, so a file
    that must shrink loses the faintest regions at every level rather than a whole fine level."""
    candidates = [score > minimum for score, minimum in zip(scores, minimums, strict=True)]
    flat_scores = torch.cat(
        [torch.where(c, s, torch.full_like(s, -math.inf)) for s, c in zip(scores, candidates, strict=True)]
    )
    flat_costs = torch.cat([cost.to(flat_scores.device, torch.float64) for cost in costs])
    order = torch.sort(flat_scores, descending=True, stable=True).indices
    within = torch.cumsum(flat_costs[order], dim=0) <= budget
    keep = torch.zeros_like(flat_scores, dtype=torch.bool)
    keep[order[within]] = True
    keep &= torch.cat(candidates)
    return list(keep.split([s.numel() for s in scores]))


def prune_sparse_levels(
    grid: LearnedIndexCodebookGrid,
    density: Callable[[Tensor], Tensor],
    unit_extent: Tensor,
    threshold: float,
    max_file_bytes: Optional[int],
    file_bytes: Callable[[], int],
    min_kept_fraction: Optional[float] = None,
) -> Optional[Dict[int, float]]:
    """Set the block masks of ``grid``'s sparse levels: blocks where one cell is more than
    ``threshold`` opaque, the densest first while ``file_bytes()`` stays within ``max_file_bytes``
    (None: every such block). Returns the kept fraction per sparse level.

    ``density`` maps points in the unit cube [N, 3] to density [N, 1]; ``unit_extent`` is the world
    length of the unit cube's axes [3] (cell sizes for the opacity threshold). With
    ``min_kept_fraction``, a pruning that would keep fewer than that fraction of the blocks is refused
    and None returned, the masks untouched; without it, blocks are ranked by density alone (no
    threshold). Every DDP rank keeps the same blocks (:func:`block_max_density` reduces over ranks)."""
    device = unit_extent.device
    scores, minimums, costs = [], [], []
    for lvl in grid.sparse_levels:
        resolution = grid.resolutions[lvl]
        cell = float((unit_extent / (torch.tensor(resolution, device=device) - 1)).mean())
        per_axis = samples_per_block_axis(resolution, grid.resolutions[-1])
        scores.append(block_max_density(density, resolution, grid.block_size, per_axis, device=device))
        minimums.append(opaque_density(threshold, cell) if min_kept_fraction is not None else -math.inf)
        costs.append(block_vertex_counts(resolution, grid.block_size) * grid.level_bits[lvl])
    if min_kept_fraction is not None:
        occupied = sum(int((score > minimum).sum()) for score, minimum in zip(scores, minimums, strict=True))
        if occupied < min_kept_fraction * sum(score.numel() for score in scores):
            return None
    budget = math.inf if max_file_bytes is None else _sparse_index_budget_bits(grid, max_file_bytes, file_bytes)
    for _ in range(8):
        masks = densest_blocks_within_budget(scores, minimums, costs, budget)
        for lvl, keep in zip(grid.sparse_levels, masks, strict=True):
            grid.set_block_mask(lvl, keep)
        if max_file_bytes is None:
            break
        # Headers, byte padding and incompressible streams can add a few bytes: measure, tighten.
        excess = file_bytes() - max_file_bytes
        if excess <= 0 or not any(keep.any() for keep in masks):
            break
        budget -= 8.0 * excess + 512.0
    return {lvl: round(keep.float().mean().item(), 4) for lvl, keep in zip(grid.sparse_levels, masks, strict=True)}


def _sparse_index_budget_bits(grid: LearnedIndexCodebookGrid, limit: int, file_bytes: Callable[[], int]) -> float:
    """Bits left for the sparse levels' indices in a file of ``limit`` bytes: measured as the file's
    size with every sparse block dropped (dense levels, masks, codebooks, decoders, header)."""
    for lvl in grid.sparse_levels:
        grid.set_block_mask(lvl, torch.zeros_like(grid.block_mask(lvl)))
    base = file_bytes()
    if base > limit:
        CONSOLE.print(
            f"[yellow]vqad: the file without sparse blocks already takes {base} bytes "
            f"(max_file_bytes {limit}): every sparse block is dropped"
        )
    return max(0, limit - base) * 8.0
