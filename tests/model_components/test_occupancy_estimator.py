"""The occupancy grid kept while training (sampler occupancy): it follows the field's density, never
erases the scene, and training evaluates the field only in its occupied cells."""

from __future__ import annotations

import pytest
import torch
from nerfstudio.cameras.rays import Frustums, RaySamples
from nerfstudio.field_components.field_heads import FieldHeadNames

from nerfqat_plugin.model_components.occupancy_estimator import OccupancyEstimator, occupied_field_outputs

BOX = torch.tensor([[-1.0] * 3, [1.0] * 3])


def _ball(x: torch.Tensor) -> torch.Tensor:
    """Density 50 inside a ball of radius 0.5 at the origin, 0 elsewhere."""
    return 50.0 * (x.norm(dim=-1, keepdim=True) < 0.5).float()


def test_the_grid_follows_the_fields_density() -> None:
    torch.manual_seed(0)
    estimator = OccupancyEstimator(BOX, resolution=16, warmup_steps=10)
    assert bool(estimator.occupied.all())  # before any update: everything may hold the scene
    estimator.update(_ball, step=0)
    grid = estimator.grid()
    assert bool(grid(torch.zeros(1, 3)).all()) and not bool(grid(torch.full((1, 3), 0.9)).any())
    occupied = float(estimator.occupied.float().mean())
    ball_share = 4 / 3 * torch.pi * 0.5**3 / 8  # the ball's share of the box
    assert 0.5 * ball_share < occupied < 3 * ball_share


def test_the_grid_never_erases_the_scene(capsys: pytest.CaptureFixture) -> None:
    estimator = OccupancyEstimator(BOX, resolution=8)
    for step in range(3):  # a field that has learned no density yet
        estimator.update(lambda x: torch.zeros(x.shape[0], 1), step)
    assert bool(estimator.occupied.all())
    assert capsys.readouterr().out.count("no density anywhere yet") == 1  # said once
    estimator.update(_ball, step=3)
    for step in range(4, 40):  # the density fades everywhere: the ball's cells stay the occupied ones
        estimator.update(lambda x: torch.zeros(x.shape[0], 1), step)
    assert bool(estimator.grid()(torch.zeros(1, 3)).all()) and not bool(estimator.occupied.all())


def test_training_evaluates_the_field_only_in_occupied_cells_with_gradients() -> None:
    estimator = OccupancyEstimator(BOX, resolution=8)
    estimator.update(_ball, step=0)
    num_rays, num_steps = 6, 32
    origins = torch.tensor([[-1.0, 0.0, 0.0]]).repeat(num_rays, 1)
    origins[:, 1] = torch.linspace(-0.9, 0.9, num_rays)  # some rays through the ball, some beside it
    starts = torch.linspace(0.0, 2.0, num_steps + 1)
    frustums = Frustums(
        origins=origins[:, None].expand(-1, num_steps, -1),
        directions=torch.tensor([1.0, 0.0, 0.0]).expand(num_rays, num_steps, 3),
        starts=starts[:-1].expand(num_rays, num_steps)[..., None],
        ends=starts[1:].expand(num_rays, num_steps)[..., None],
        pixel_area=torch.ones(num_rays, num_steps, 1),
    )
    samples = RaySamples(frustums=frustums, deltas=frustums.ends - frustums.starts)
    weight = torch.nn.Parameter(torch.tensor(1.0))
    seen = []

    def field(part: RaySamples) -> dict:
        positions = part.frustums.get_positions()
        seen.append(positions.detach())
        return {
            FieldHeadNames.DENSITY: weight * torch.ones_like(positions[..., :1]),
            FieldHeadNames.RGB: torch.sigmoid(weight * positions),
        }

    outputs, evaluated = occupied_field_outputs(samples, estimator.grid(), field)
    inside = estimator.grid()(samples.frustums.get_positions().view(-1, 3)).view(num_rays, num_steps)
    assert 0 < int(inside.sum()) < inside.numel() and seen[0].shape[0] == int(inside.sum()) == int(evaluated)
    assert torch.equal(outputs[FieldHeadNames.DENSITY][..., 0] > 0, inside)  # empty space: density 0
    outputs[FieldHeadNames.DENSITY].sum().backward()
    assert float(weight.grad) == pytest.approx(float(inside.sum()))


def test_updates_read_points_set_by_the_step_alone() -> None:
    """DDP ranks have their own random states; they must still keep equal grids (nothing broadcasts them)."""
    grids = []
    for seed in (1, 2):  # two ranks
        torch.manual_seed(seed)
        estimator = OccupancyEstimator(BOX, resolution=8, warmup_steps=2)
        for step in range(4):  # warm-up updates and later ones (a random quarter of the cells)
            estimator.update(lambda x: 50.0 * torch.sin(7 * x).prod(dim=-1, keepdim=True).clamp_min(0), step)
        grids.append(estimator.density.clone())
    assert torch.equal(grids[0], grids[1])


def test_a_batch_entirely_in_empty_space_is_background_without_evaluating_the_field() -> None:
    estimator = OccupancyEstimator(BOX, resolution=4)
    estimator.occupied.zero_()  # (updates never leave it so; a batch may still miss every occupied cell)
    frustums = Frustums(
        origins=torch.zeros(2, 3, 3),
        directions=torch.tensor([1.0, 0.0, 0.0]).expand(2, 3, 3),
        starts=torch.zeros(2, 3, 1),
        ends=torch.full((2, 3, 1), 0.1),
        pixel_area=torch.ones(2, 3, 1),
    )
    samples = RaySamples(frustums=frustums, deltas=torch.full((2, 3, 1), 0.1))
    outputs, evaluated = occupied_field_outputs(samples, estimator.grid(), lambda s: pytest.fail("evaluated"))
    assert int(evaluated) == 0 and float(outputs[FieldHeadNames.DENSITY].abs().sum()) == 0.0
