"""Render-time sample skipping: rays stop behind opaque surfaces and the pixels stay the same."""

from __future__ import annotations

import pytest
import torch
from helpers import forward_rays
from nerfstudio.model_components.ray_samplers import UniformSampler
from nerfstudio.model_components.renderers import RGBRenderer

from nerfqat_plugin.field_components.occupancy_grid import OccupancyGrid
from nerfqat_plugin.model_components.sample_skipping import density_where_occupied, evaluate_front_to_back

CENTRE = torch.tensor([0.0, 0.0, -2.0])


def _sphere_density(positions: torch.Tensor):
    """Opaque ball of radius 0.5 around CENTRE; features: the position (colour from it)."""
    inside = (positions - CENTRE).norm(dim=-1, keepdim=True) < 0.5
    return 50.0 * inside.float(), positions


def _colour(features: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(features + 0.1 * directions)


def _render(
    density_fn, chunks: int, min_transmittance: float, min_weight: float, occupied=None, background="last_sample"
):
    bundle = forward_rays(256, seed=4)
    bundle.nears, bundle.fars = torch.full((256, 1), 0.5), torch.full((256, 1), 4.0)
    samples = UniformSampler(num_samples=64, train_stratified=False)(bundle)
    positions = samples.frustums.get_positions()
    directions = samples.frustums.directions
    density, rgb, share = evaluate_front_to_back(
        samples, positions, directions, density_fn, _colour, chunks, min_transmittance, min_weight, occupied
    )
    weights = samples.get_weights(density)
    return RGBRenderer(background_color=background)(rgb=rgb, weights=weights), share


def test_rays_stop_behind_an_opaque_surface_and_the_pixels_do_not_change() -> None:
    full, share_full = _render(_sphere_density, chunks=1, min_transmittance=0.0, min_weight=0.0)
    skipped, share = _render(_sphere_density, chunks=8, min_transmittance=1e-4, min_weight=1e-5)
    assert share_full == 1.0 and share < 0.9  # rays through the ball stopped evaluating behind it
    # Bound: the transmittance left behind (1e-4) plus 64 samples below 1e-5 weight each.
    assert float((full - skipped).abs().max()) <= 1e-4 + 64 * 1e-5


def test_features_are_kept_for_evaluated_samples_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory follows the samples evaluated: no [rays, samples, features] buffer for every sample
    (a nerf-qat chunk marching 1,024 steps would take gigabytes)."""

    def wide_features(positions: torch.Tensor):
        density, _ = _sphere_density(positions)
        return density, positions.repeat(1, 5)  # 15 features per sample

    made = []
    original = torch.zeros
    monkeypatch.setattr(torch, "zeros", lambda *size, **kw: made.append(size) or original(*size, **kw))
    picked = []
    colour = lambda features, directions: picked.append(len(features)) or _colour(features[:, :3], directions)  # noqa: E731
    bundle = forward_rays(32, seed=4)
    bundle.nears, bundle.fars = torch.full((32, 1), 0.5), torch.full((32, 1), 4.0)
    samples = UniformSampler(num_samples=64, train_stratified=False)(bundle)
    positions = samples.frustums.get_positions()
    density, rgb, _ = evaluate_front_to_back(samples, positions, samples.frustums.directions, wide_features, colour)
    assert not [size for size in made if 15 in size]
    coloured = int((rgb.abs().sum(-1) > 0).sum())
    assert picked == [coloured] and 0 < coloured < 32 * 64  # colours of the needed samples, placed back


def test_an_empty_scene_evaluates_every_sample_and_keeps_the_last_colour() -> None:
    def empty(positions: torch.Tensor):
        return torch.zeros(positions.shape[0], 1), positions

    full, _ = _render(empty, chunks=1, min_transmittance=0.0, min_weight=0.0)
    skipped, share = _render(empty, chunks=4, min_transmittance=1e-4, min_weight=1e-5)
    assert share == 1.0 and torch.equal(full, skipped)  # the background is the last sample's colour


@pytest.mark.parametrize("method", ["nerf-qat", "vqad"])
def test_models_render_the_same_with_and_without_skipping(method: str) -> None:
    from helpers import render_nerf_qat, render_vqad, tiny_nerf_qat_model, tiny_vqad_model, train_nerf_qat, train_vqad

    torch.manual_seed(0)
    if method == "nerf-qat":
        model = tiny_nerf_qat_model()
        train_nerf_qat(model, 6)
        torch.nn.init.constant_(model.field_fine.density_head.linear.bias, 3.0)  # opaque: rays terminate
        render = render_nerf_qat
    else:
        model = tiny_vqad_model()
        train_vqad(model, 3)
        render = render_vqad
    skipped = render(model)
    model.config.skip_hidden_samples = False
    full = render(model)
    assert float((full["rgb"] - skipped["rgb"]).abs().max()) <= 1e-3
    assert float((full["accumulation"] - skipped["accumulation"]).abs().max()) <= 1e-3


def test_a_baked_occupancy_grid_skips_empty_space_and_keeps_the_pixels() -> None:
    from nerfqat_plugin.field_components.occupancy_grid import bake_occupancy

    box = torch.tensor([[-1.0, -1.0, -3.0], [1.0, 1.0, -1.0]])
    grid = bake_occupancy(lambda p: _sphere_density(p)[0], box, resolution=32)
    assert 0.01 < float(grid.occupied.float().mean()) < 0.2  # the ball (dilated), not the box
    directions = torch.nn.functional.normalize(torch.randn(500, 3, generator=torch.Generator().manual_seed(0)))
    assert bool(grid(CENTRE + 0.45 * directions).all())  # every point of the ball lies in an occupied cell
    assert not bool(grid(torch.tensor([[0.9, 0.9, -1.1], [0.0, 0.0, 5.0]])).any())  # a far corner; outside

    full, _ = _render(_sphere_density, 1, 0.0, 0.0, background="white")
    skipped, share = _render(_sphere_density, 4, 1e-4, 1e-5, occupied=grid, background="white")
    assert share < 0.2  # most samples lie in empty cells or behind the ball
    assert float((full - skipped).abs().max()) <= 1e-4 + 64 * 1e-5


def test_the_grid_threshold_bounds_the_opacity_a_ray_loses_to_skipped_haze() -> None:
    """Stated bound: all the empty cells a ray crosses take at most ``max_ray_loss`` of its opacity.
    A haze just below the threshold everywhere is all skipped, and even the box's diagonal (the
    longest path) loses less than that; just above it, every cell is kept."""
    import math

    from nerfqat_plugin.field_components.occupancy_grid import bake_occupancy, cell_threshold_density

    box = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    threshold = cell_threshold_density(box, 16, 1e-3)
    below = bake_occupancy(lambda p: torch.full((p.shape[0], 1), 0.99 * threshold), box, resolution=16)
    assert not bool(below.occupied.any())
    diagonal = math.sqrt(3.0) * 2.0
    assert 1.0 - math.exp(-0.99 * threshold * diagonal) <= 1e-3
    above = bake_occupancy(lambda p: torch.full((p.shape[0], 1), 1.01 * threshold), box, resolution=16)
    assert bool(above.occupied.all())


def test_outside_the_box_is_empty_for_bounded_scenes_and_evaluated_for_ndc() -> None:

    occupied = torch.zeros(4, 4, 4, dtype=torch.bool)
    occupied[0, 0, 0] = True
    box = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    points = torch.tensor([[-0.9, -0.9, -0.9], [0.9, 0.9, 0.9], [1.5, 0.0, 0.0], [0.0, -3.0, 0.5]])
    assert OccupancyGrid(box, occupied)(points).tolist() == [True, False, False, False]
    assert OccupancyGrid(box, occupied, outside_occupied=True)(points).tolist() == [True, False, True, True]


def test_each_chunk_waits_for_the_device_once() -> None:
    """On a GPU every boolean-mask index and every ``bool()``/``.item()`` of a tensor waits for the
    device; the evaluation lists each chunk's samples with one ``nonzero`` and uses indices after."""
    from torch.overrides import TorchFunctionMode

    waits = []

    class CountWaits(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            index = args[1] if len(args) > 1 and name in ("__getitem__", "__setitem__") else None
            mask = isinstance(index, torch.Tensor) and index.dtype == torch.bool
            if name in ("nonzero", "__bool__", "item", "tolist", "any", "all") or mask:
                waits.append(name)
            return func(*args, **(kwargs or {}))

    with CountWaits():
        _render(_sphere_density, chunks=4, min_transmittance=1e-4, min_weight=1e-5)
    assert waits == ["nonzero"] * 5  # four chunks and the colours


def test_density_where_occupied_evaluates_occupied_positions_only() -> None:
    occupied = torch.zeros(4, 4, 4, dtype=torch.bool)
    occupied[:2] = True  # x below 0
    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), occupied)
    evaluated = []

    def density_fn(positions: torch.Tensor) -> torch.Tensor:
        evaluated.append(positions)
        return positions[..., :1].abs() + 1.0

    positions = torch.rand(6, 5, 3) * 2 - 1
    density = density_where_occupied(density_fn, grid)(positions)
    inside = positions[..., 0] < 0
    assert density.shape == (6, 5, 1) and bool(grid(torch.cat(evaluated)).all())
    assert torch.equal(density[inside], density_fn(positions[inside]))
    assert bool((density[~inside] == 0).all()) and int(inside.sum()) == len(evaluated[0])
