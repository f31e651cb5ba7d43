"""Packed marching through occupied cells: which steps are kept, their weights, and renders from them
against nerfstudio's dense samples and renderer."""

from __future__ import annotations

import math
from typing import List, Tuple

import pytest
import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.model_components.renderers import RGBRenderer
from torch import Tensor

from nerfqat_plugin.field_components.occupancy_grid import OccupancyGrid
from nerfqat_plugin.model_components import packed_marching
from nerfqat_plugin.model_components.packed_marching import (
    PackedSamples,
    march_occupied,
    packed_transmittance,
    packed_weights,
    ray_box_interval,
    rays_crossing_occupied,
    render_packed,
)

BOX = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def _rays(n: int, seed: int = 0, spread: float = 1.2) -> Tuple[Tensor, Tensor]:
    """Rays from a sphere of radius 3 towards points within ``spread`` of the box's centre (some miss it)."""
    g = torch.Generator().manual_seed(seed)
    origins = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 3.0
    targets = spread * (torch.rand(n, 3, generator=g) * 2 - 1)
    return origins, torch.nn.functional.normalize(targets - origins, dim=-1)


def _grid(seed: int = 0, resolution: int = 8) -> OccupancyGrid:
    g = torch.Generator().manual_seed(seed)
    return OccupancyGrid(BOX, torch.rand(resolution, resolution, resolution, generator=g) < 0.3)


def _steps_by_hand(origin: Tensor, direction: Tensor, near: float, far: float, grid: OccupancyGrid, step: float):
    """Start distances of the kept steps of one ray, a step at a time."""
    entry, exit_ = (float(v) for v in ray_box_interval(origin[None], direction[None], grid.aabb))
    start, end = max(near, entry), min(far, exit_)
    kept, k = [], 0
    while start + (k + 0.5) * step < end:
        t = start + k * step
        if bool(grid((origin + direction * (t + 0.5 * step))[None])[0]):
            kept.append(t)
        k += 1
    return kept


def test_torch_marching_keeps_the_steps_whose_midpoints_are_occupied() -> None:
    origins, directions = _rays(40)
    grid, step = _grid(), 0.07
    nears, fars = torch.full((40,), 0.5), torch.full((40,), 5.0)
    fars[3] = 2.9  # a far plane inside the box cuts the ray short
    samples = march_occupied(origins, directions, nears, fars, grid, step, use_nerfacc=False)
    assert bool((samples.ray_indices[1:] >= samples.ray_indices[:-1]).all())  # packed ray after ray
    assert torch.allclose(samples.t_ends - samples.t_starts, torch.full((len(samples),), step))
    for ray in range(40):
        mine = samples.t_starts[samples.ray_indices == ray]
        expected = _steps_by_hand(origins[ray], directions[ray], 0.5, float(fars[ray]), grid, step)
        assert torch.allclose(mine, torch.tensor(expected, dtype=mine.dtype), atol=1e-5), ray
    assert len(samples) > 40  # the rays do cross occupied cells
    assert bool((samples.ray_indices == 3).any()) and float(samples.t_ends[samples.ray_indices == 3].max()) <= 2.9


def test_jitter_shifts_each_rays_steps_by_less_than_a_step_after_the_box_entry() -> None:
    origins, directions = _rays(200, seed=5)
    full = OccupancyGrid(BOX, torch.ones(4, 4, 4, dtype=torch.bool))
    nears, fars = torch.zeros(200), torch.full((200,), 9.0)
    plain = march_occupied(origins, directions, nears, fars, full, 0.1, use_nerfacc=False)
    jittered = march_occupied(origins, directions, nears, fars, full, 0.1, jitter=True, use_nerfacc=False)

    def first_steps(samples: PackedSamples) -> Tensor:  # each ray's first start (nan: no step)
        first = torch.full((samples.num_rays,), float("nan"))
        return first.index_reduce(0, samples.ray_indices, samples.t_starts, "amin", include_self=False)

    shift = first_steps(jittered) - first_steps(plain)
    shift = shift[~shift.isnan()]  # rays with steps both times (a grazing ray may lose its only one)
    assert len(shift) > 150 and bool((shift >= 0).all()) and bool((shift < 0.1).all()) and float(shift.std()) > 0.02


def test_torch_marching_lists_long_rays_in_slabs(monkeypatch: pytest.MonkeyPatch) -> None:
    origins, directions = _rays(30, seed=1)
    grid, step = _grid(seed=1), 0.05
    nears, fars = torch.zeros(30), torch.full((30,), 10.0)
    whole = march_occupied(origins, directions, nears, fars, grid, step, use_nerfacc=False)
    monkeypatch.setattr(packed_marching, "TORCH_MARCH_CANDIDATES", 200)  # a few rays per slab
    slabs = march_occupied(origins, directions, nears, fars, grid, step, use_nerfacc=False)
    assert torch.equal(whole.ray_indices, slabs.ray_indices) and torch.equal(whole.t_starts, slabs.t_starts)


def test_rays_that_miss_the_box_or_an_empty_grid_get_no_samples() -> None:
    origins = torch.tensor([[0.0, 3.0, 0.0], [0.0, 0.0, 3.0]])
    directions = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0]])  # away from the box; through it
    full = OccupancyGrid(BOX, torch.ones(4, 4, 4, dtype=torch.bool))
    samples = march_occupied(origins, directions, torch.zeros(2), torch.full((2,), 9.0), full, 0.1, use_nerfacc=False)
    assert set(samples.ray_indices.tolist()) == {1} and len(samples) == 20  # 2 units of box at 0.1
    empty = OccupancyGrid(BOX, torch.zeros(4, 4, 4, dtype=torch.bool))
    none = march_occupied(origins, directions, torch.zeros(2), torch.full((2,), 9.0), empty, 0.1, use_nerfacc=False)
    assert len(none) == 0
    rendered = render_packed(none, origins, directions, _field_fns()[0], _field_fns()[1], RGBRenderer("white"))
    assert torch.equal(rendered["rgb"], torch.ones(2, 3)) and torch.equal(rendered["accumulation"], torch.zeros(2, 1))


def test_rays_crossing_occupied_cells_are_marked_and_rays_beside_them_are_not() -> None:
    occupied = torch.zeros(8, 8, 8, dtype=torch.bool)
    occupied[5, 2, 3] = True  # one cell: x in [0.25, 0.5], y in [-0.5, -0.25], z in [-0.25, 0]
    grid = OccupancyGrid(BOX, occupied)
    centre = torch.tensor([0.375, -0.375, -0.125])
    directions = torch.nn.functional.normalize(torch.randn(30, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    through = centre - 3.0 * directions  # 30 rays through the cell's centre from every side
    beside = through + torch.tensor([0.0, 0.0, 0.4])  # the same rays shifted more than a cell in z
    origins, all_directions = torch.cat([through, beside]), torch.cat([directions, directions])
    nears, fars = torch.zeros(60), torch.full((60,), 6.0)
    crossing = rays_crossing_occupied(origins, all_directions, nears, fars, grid)
    assert bool(crossing[:30].all())
    # a shifted ray still clips the cell now and then: it is marked exactly when a step finds it
    pairs = zip(beside, directions, strict=True)
    by_hand = torch.tensor([bool(_steps_by_hand(o, d, 0.0, 6.0, grid, 0.25)) for o, d in pairs])
    assert torch.equal(crossing[30:], by_hand) and int(by_hand.sum()) < 15
    fars[:30] = 2.5  # the rays end before the cell (at distance 3): not marked
    assert not bool(rays_crossing_occupied(origins, all_directions, nears, fars, grid)[:30].any())


def test_ray_starts_and_ranks_of_rays_with_and_without_samples() -> None:
    ray_indices = torch.tensor([1, 1, 1, 3, 4, 4])  # rays 0, 2 and 5 have none
    samples = PackedSamples(ray_indices, torch.zeros(6), torch.ones(6), num_rays=6)
    assert samples.ray_starts().tolist() == [0, 0, 3, 3, 4, 6]  # an empty ray: where it would start
    assert samples.ranks().tolist() == [0, 1, 2, 0, 0, 1]


def _dense(samples: PackedSamples) -> Tuple[Tensor, Tensor, Tensor]:
    """The packed samples laid out [R, S] (padding after each ray's own samples) and the mask of real ones."""
    counts = torch.bincount(samples.ray_indices, minlength=samples.num_rays)
    width = int(counts.max())
    ranks = samples.ranks()
    starts = torch.full((samples.num_rays, width), 1e3)
    ends = torch.full((samples.num_rays, width), 1e3 + 1e-3)
    real = torch.zeros(samples.num_rays, width, dtype=torch.bool)
    starts[samples.ray_indices, ranks] = samples.t_starts
    ends[samples.ray_indices, ranks] = samples.t_ends
    real[samples.ray_indices, ranks] = True
    return starts, ends, real


def _bundle_samples(origins: Tensor, directions: Tensor, starts: Tensor, ends: Tensor):
    bundle = RayBundle(origins=origins, directions=directions, pixel_area=torch.ones(len(origins), 1))
    return bundle.get_ray_samples(bin_starts=starts[..., None], bin_ends=ends[..., None])


def test_packed_weights_equal_nerfstudios_on_the_same_samples() -> None:
    origins, directions = _rays(50, seed=2)
    samples = march_occupied(
        origins, directions, torch.zeros(50), torch.full((50,), 9.0), _grid(seed=2), 0.05, use_nerfacc=False
    )
    density = (torch.rand(len(samples)) * 20).requires_grad_()
    starts, ends, real = _dense(samples)
    dense_density = torch.zeros(real.shape).index_put((samples.ray_indices, samples.ranks()), density)
    expected = _bundle_samples(origins, directions, starts, ends).get_weights(dense_density[..., None])[..., 0]
    weights = packed_weights(samples, density)
    assert torch.allclose(weights, expected[real], atol=1e-6)
    assert float(expected[real].max()) > 0.1  # opaque enough for transmittance to matter
    # Training differentiates them: the same gradients as nerfstudio's (a weighted sum as the loss).
    colour = torch.rand(len(samples))
    (ours,) = torch.autograd.grad((weights * colour).sum(), density)
    (theirs,) = torch.autograd.grad((expected[real] * colour).sum(), density)
    assert torch.allclose(ours, theirs, atol=1e-5) and float(theirs.abs().max()) > 1e-3


def test_packed_transmittance_is_what_the_weights_before_each_sample_leave() -> None:
    origins, directions = _rays(50, seed=3)
    samples = march_occupied(
        origins, directions, torch.zeros(50), torch.full((50,), 9.0), _grid(seed=3), 0.05, use_nerfacc=False
    )
    density = torch.rand(len(samples)) * 20
    weights = packed_weights(samples, density).double()
    before = torch.cumsum(weights, 0) - weights
    expected = 1 - (before - before[samples.ray_starts()[samples.ray_indices]])
    reached = packed_transmittance(samples, density)
    assert torch.allclose(reached.double(), expected, atol=1e-5)
    assert float(reached.min()) < 1e-4 and torch.all(reached[samples.ranks() == 0] == 1)
    lit = reached > 1e-4
    kept = samples.subset(lit.nonzero().view(-1))  # a prefix of each ray, weights unchanged
    assert torch.equal(kept.ranks(), torch.arange(len(samples))[lit] - samples.ray_starts()[kept.ray_indices])
    assert torch.allclose(packed_weights(kept, density[lit]), packed_weights(samples, density)[lit])


def _field_fns(opaque: float = 40.0):
    """A field with a dense ball of radius 0.5 (density ``opaque``), faint elsewhere, colour from
    position and direction."""

    def density_fn(x: Tensor) -> Tuple[Tensor, Tensor]:
        sigma = torch.where(x.norm(dim=-1, keepdim=True) < 0.5, opaque, 0.3)
        return sigma, torch.sigmoid(torch.cat([x, x.sin()], dim=-1))

    def color_fn(features: Tensor, directions: Tensor) -> Tensor:
        return torch.sigmoid(features[:, :3] * 2 + directions)

    return density_fn, color_fn


def _counting(fn, counts: List[int]):
    def wrapped(x, *rest):
        counts.append(len(x))
        return fn(x, *rest)

    return wrapped


def test_render_equals_nerfstudios_renderer_on_every_sample_and_skips_behind_surfaces() -> None:
    origins, directions = _rays(64, seed=3, spread=0.6)  # most through the ball
    grid = OccupancyGrid(BOX, torch.ones(6, 6, 6, dtype=torch.bool))
    grid.occupied[0] = False  # one empty slab
    nears, fars = torch.zeros(64), torch.full((64,), 9.0)
    samples = march_occupied(origins, directions, nears, fars, grid, 0.02, use_nerfacc=False)
    density_fn, color_fn = _field_fns()
    renderer = RGBRenderer(background_color="white").eval()

    # Reference: every sample evaluated, nerfstudio's weights and compositing on the dense layout.
    starts, ends, real = _dense(samples)
    dense = _bundle_samples(origins, directions, starts, ends)
    positions = dense.frustums.get_positions()
    sigma, features = density_fn(positions.reshape(-1, 3))
    sigma = sigma.view(*real.shape, 1) * real[..., None]
    colour = color_fn(features, directions[:, None].expand_as(positions).reshape(-1, 3)).view(*real.shape, 3)
    weights = dense.get_weights(sigma)
    expected_rgb = renderer(rgb=colour, weights=weights)
    middles = (starts + ends) / 2
    expected_accumulation = weights.sum(dim=-2)
    expected_depth = (weights[..., 0] * middles).sum(-1, keepdim=True) / expected_accumulation.clamp_min(1e-10)

    counts: List[int] = []
    counted = _counting(density_fn, counts)
    no_skipping = dict(min_transmittance=0.0, min_weight=0.0)
    everything = render_packed(samples, origins, directions, counted, color_fn, renderer, **no_skipping)
    assert sum(counts) == len(samples)
    assert torch.allclose(everything["rgb"], expected_rgb, atol=1e-5)
    assert torch.allclose(everything["accumulation"], expected_accumulation, atol=1e-5)
    assert torch.allclose(everything["depth"], expected_depth, atol=1e-4)
    assert float(expected_rgb.std()) > 0.05 and float(expected_accumulation.max()) > 0.99  # ball and background

    counts.clear()
    skipping = render_packed(samples, origins, directions, _counting(density_fn, counts), color_fn, renderer, window=8)
    assert sum(counts) < 0.8 * len(samples)  # samples behind the ball were never evaluated
    bound = 1e-4 + 1e-5 * int(torch.bincount(samples.ray_indices).max())
    assert float((skipping["rgb"] - expected_rgb).abs().max()) <= bound


def test_nerfacc_is_used_only_on_cuda() -> None:
    assert not packed_marching.nerfacc_traversal_available(torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nerfacc's traversal needs CUDA")
def test_nerfacc_marches_the_same_steps_as_torch() -> None:
    if not packed_marching.nerfacc_traversal_available(torch.device("cuda")):
        pytest.skip("nerfacc's CUDA extension did not load")
    origins, directions = (v.cuda() for v in _rays(2000, seed=4))
    grid = _grid(seed=4, resolution=16).cuda()
    nears, fars = torch.zeros(2000, device="cuda"), torch.full((2000,), 9.0, device="cuda")
    step = 0.01
    ours = march_occupied(origins, directions, nears, fars, grid, step, use_nerfacc=False)
    theirs = march_occupied(origins, directions, nears, fars, grid, step, use_nerfacc=True)
    # Both keep the steps whose midpoint is occupied; a midpoint on a cell face may land either side.
    assert abs(len(ours) - len(theirs)) <= 1e-3 * len(ours)
    density_fn, color_fn = _field_fns()
    renderer = RGBRenderer(background_color="white").eval()
    a = render_packed(ours, origins, directions, density_fn, color_fn, renderer)
    b = render_packed(theirs, origins, directions, density_fn, color_fn, renderer)
    assert float((a["rgb"] - b["rgb"]).abs().mean()) < 1e-3 and not math.isnan(float(b["rgb"].sum()))


def _ball_grid(box: Tensor, resolution: int, radius: float) -> OccupancyGrid:
    """The cells of ``box`` whose centres lie within ``radius`` of the origin."""
    axes = [box[0, i] + (torch.arange(resolution) + 0.5) / resolution * (box[1, i] - box[0, i]) for i in range(3)]
    centres = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    return OccupancyGrid(box, centres.norm(dim=-1) < radius)


def test_small_first_windows_evaluate_fewer_samples_behind_surfaces_and_render_the_same() -> None:
    origins, directions = _rays(64, seed=3, spread=0.6)
    grid = _ball_grid(BOX, 12, radius=0.7)  # samples only near the ball: most are in it or behind it
    nears, fars = torch.zeros(64), torch.full((64,), 9.0)
    samples = march_occupied(origins, directions, nears, fars, grid, 0.02, use_nerfacc=False)
    density_fn, color_fn = _field_fns(opaque=400.0)  # rays stop within a few steps of the ball
    renderer = RGBRenderer(background_color="white").eval()
    evaluated = {}
    images = {}
    for first_window in (64, 4):
        counts: List[int] = []
        density = _counting(density_fn, counts)
        out = render_packed(
            samples, origins, directions, density, color_fn, renderer, window=64, first_window=first_window
        )
        evaluated[first_window], images[first_window] = sum(counts), out["rgb"]
        if first_window == 4:  # windows of 4, 8, 16, 32, then 64 samples per ray
            assert counts[0] <= 4 * 64
    assert evaluated[4] < 0.8 * evaluated[64]
    assert torch.allclose(images[4], images[64], atol=1e-4)
