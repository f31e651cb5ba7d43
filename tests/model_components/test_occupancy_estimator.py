"""The occupancy grid kept while training (sampler occupancy): it follows the field's density, never
erases the scene, and training evaluates the field only in its occupied cells."""

from __future__ import annotations

import pytest
import torch

from nerfqat_plugin.model_components.occupancy_estimator import OccupancyEstimator

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


def test_the_grid_is_made_again_only_after_its_cells_change() -> None:
    estimator = OccupancyEstimator(BOX, resolution=8, warmup_steps=10)
    first = estimator.grid()
    assert estimator.grid() is first  # every batch marches it: made once
    assert first.diagonal == pytest.approx(2.0 * 3**0.5)  # kept on the host for the march step
    estimator.update(_ball, step=0)
    updated = estimator.grid()
    assert updated is not first and torch.equal(updated.occupied.view(-1), estimator.occupied)
    assert not bool(updated(torch.full((1, 3), 0.9)).any())
    resumed = OccupancyEstimator(BOX, resolution=8)
    resumed.grid()
    resumed.load_state_dict(estimator.state_dict())  # a resumed run: the checkpoint's cells
    assert torch.equal(resumed.grid().occupied, updated.occupied)


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


def test_the_threshold_applies_to_one_march_step() -> None:
    """A faint shell (density 1) loses 12% of a ray's light over a 16-cell grid's cell edge but 0.5%
    over a march step of 0.005: occupied by the cell-edge default, empty at the march step (nerfacc's
    rule: opacity over ``render_step_size``)."""

    def ball_and_shell(x: torch.Tensor) -> torch.Tensor:
        radius = x.norm(dim=-1, keepdim=True)
        return _ball(x) + ((radius > 0.6) & (radius < 0.9)).float()

    shell_point = torch.tensor([[0.75, 0.0, 0.0]])
    occupied = []
    for step in (None, 0.005):
        estimator = OccupancyEstimator(BOX, resolution=16, step=step)
        estimator.update(ball_and_shell, step=0)
        assert bool(estimator.grid()(torch.zeros(1, 3)).all())  # the ball stays occupied either way
        occupied.append(bool(estimator.grid()(shell_point).all()))
    assert occupied == [True, False]
    with pytest.raises(ValueError, match="step > 0"):
        OccupancyEstimator(BOX, step=0.0)
