"""Renders that march occupied space: even steps through a bounded scene's occupied cells, evaluating
only the (fine) field there, instead of the trained sampler (packed samples: model_components tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List

import pytest
import torch
from helpers import forward_rays, tiny_nerf_qat_model, tiny_vqad_model, vqad_rays
from nerfstudio.engine.callbacks import TrainingCallbackLocation
from nerfstudio.field_components.field_heads import FieldHeadNames

from nerfqat_plugin.compression.codec import load_compressed_model
from nerfqat_plugin.compression.file_format import read_compressed
from nerfqat_plugin.field_components.occupancy_grid import OccupancyGrid
from nerfqat_plugin.model_components.packed_marching import ray_box_interval
from nerfqat_plugin.models import vqad as vqad_module

STEPS = 48


def _recording(fn: Callable, positions: List[torch.Tensor]) -> Callable:
    def wrapped(x, *rest):
        positions.append(x.detach().clone())
        return fn(x, *rest)

    return wrapped


def _half_box_grid(model) -> OccupancyGrid:
    """The file's grid with the cells of the box's lower half in z occupied (which the test rays
    cross), the upper half empty."""
    grid = model.occupancy_grid
    occupied = torch.zeros_like(grid.occupied)
    occupied[:, :, : occupied.shape[2] // 2] = True
    return OccupancyGrid(grid.aabb, occupied, outside_occupied=False)


def test_nerf_qat_marches_the_fine_field_through_occupied_cells_only(bounded_nerf_qat_file: Path) -> None:
    model = load_compressed_model(bounded_nerf_qat_file)
    model.occupancy_grid = grid = _half_box_grid(model)
    model.config.march_occupied_space, model.config.march_steps = True, STEPS
    fine, coarse = [], []
    model.field_fine.density_and_features = _recording(model.field_fine.density_and_features, fine)
    model.field_coarse.density_and_features = _recording(model.field_coarse.density_and_features, coarse)
    with torch.no_grad():
        outputs = model(forward_rays(64))
    assert not coarse and fine  # no coarse pass: the fine field alone
    evaluated = torch.cat(fine)
    assert bool(grid(evaluated).all())  # only samples in occupied cells
    assert "rgb_coarse" not in outputs and outputs["rgb"].shape == (64, 3)
    # Every step of the box's diagonal / STEPS from near (or the box's entry) to far, evaluated in one
    # pass with nerfstudio's samples and renderer: the same image up to what skipping may leave out.
    model.config.march_occupied_space = False
    with torch.no_grad():
        bundle = model.sampling_rays(forward_rays(64)).bundle
        step = float((grid.aabb[1] - grid.aabb[0]).norm()) / STEPS
        entry, exit_ = ray_box_interval(bundle.origins, bundle.directions, grid.aabb)
        near = torch.maximum(bundle.nears.view(-1), entry)
        far = torch.minimum(bundle.fars.view(-1), exit_)
        count = int(((far - near) / step).ceil().max())
        starts = near[:, None] + step * torch.arange(count)[None]
        samples = bundle.get_ray_samples(bin_starts=starts[..., None], bin_ends=(starts + step)[..., None])
        positions = samples.frustums.get_positions()
        kept = grid(positions.view(-1, 3)).view(64, count) & (starts + 0.5 * step < far[:, None])
        field = model.field_fine(samples)
        density = field[FieldHeadNames.DENSITY] * kept[..., None]
        expected = model.renderer_rgb(rgb=field[FieldHeadNames.RGB], weights=samples.get_weights(density))
    assert float(torch.max(torch.abs(outputs["rgb"] - expected))) <= 1e-4 + count * 1e-5
    assert float(expected.std()) > 1e-3  # the comparison says something


def test_renders_as_trained_and_forward_facing_scenes_keep_the_trained_sampler(bounded_nerf_qat_file: Path) -> None:
    model = load_compressed_model(bounded_nerf_qat_file)
    model.config.march_occupied_space = True
    assert model.marching_grid() is not None
    with model.rendering_as_trained():
        assert model.marching_grid() is None
        with torch.no_grad():
            assert "rgb_coarse" in model(forward_rays(8))
    ndc = tiny_nerf_qat_model(march_occupied_space=True)  # forward-facing: the grid's outside is occupied
    box, everywhere = torch.tensor([[-1.0] * 3, [1.0] * 3]), torch.ones(4, 4, 4, dtype=torch.bool)
    ndc.occupancy_grid = OccupancyGrid(box, everywhere, outside_occupied=True)
    ndc.eval()
    assert ndc.marching_grid() is None


def test_vqad_marches_instead_of_its_proposals(bounded_vqad_file: Path) -> None:
    model = load_compressed_model(bounded_vqad_file)
    model.occupancy_grid = grid = _half_box_grid(model)
    model.config.march_occupied_space, model.config.march_steps = True, STEPS
    evaluated = []
    model.field.density_at = _recording(model.field.density_at, evaluated)
    model.density_fns = [lambda x: pytest.fail("a proposal network was evaluated")] * len(model.density_fns)
    with torch.no_grad():
        outputs = model(vqad_rays(32, bounded=True))
    assert evaluated and bool(grid(torch.cat(evaluated)).all())
    assert outputs["rgb"].shape == (32, 3) and bool(torch.isfinite(outputs["rgb"]).all())


def test_vqad_trained_with_the_occupancy_sampler_marches_in_training_and_from_its_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tiny_vqad_model({"near_far": (2.0, 6.0), "scene_type": "bounded"}, sampler="occupancy", march_steps=STEPS)
    model.density_fns = [lambda x: pytest.fail("a proposal network was evaluated")] * len(model.density_fns)
    estimator = model.occupancy_estimator
    assert model.marches_occupancy() and estimator is not None
    estimator.occupied[: estimator.occupied.numel() // 2] = False  # half the box empty, as an update may leave it
    evaluated = []
    model.field.density_from_unit = _recording(model.field.density_from_unit, evaluated)
    model.train()
    outputs = model(vqad_rays(32, bounded=True))
    losses = model.get_loss_dict(outputs, {"image": torch.rand(32, 3)})
    assert "interlevel_loss" not in losses and "distortion_loss" not in losses  # no proposals to train
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.field.grid.codebooks)
    unit_box = torch.stack([torch.zeros(3), torch.ones(3)])  # the field's positions are normalised to [0, 1]^3
    box = model.occupancy_estimator.aabb
    world = box[0] + torch.cat(evaluated) * (box[1] - box[0])
    assert bool(estimator.grid()(world).all()) and bool((torch.cat(evaluated) <= unit_box[1]).all())
    (callback,) = model._occupancy_callbacks()
    callback.run_callback_at_location(0, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)  # an update runs
    estimator.occupied[estimator.occupied.numel() // 2 :] = False  # the tiny field is dense: empty a half again
    model.export_compressed(tmp_path / "occupancy.nqz")
    stored = read_compressed(tmp_path / "occupancy.nqz")[0]
    assert stored and not [name for name in stored if name.startswith("proposal")]  # no bytes for unused proposals
    loaded = load_compressed_model(tmp_path / "occupancy.nqz")
    assert loaded.config.sampler == "occupancy" and loaded.marches_occupancy() and loaded.occupancy_estimator is None
    # The file holds the grid training marched, cell for cell, not one baked from the fields.
    assert loaded.occupancy_grid_trained and torch.equal(loaded.occupancy_grid.occupied, estimator.grid().occupied)
    loaded.density_fns = [lambda x: pytest.fail("a proposal network was evaluated")] * len(loaded.density_fns)
    model.eval()
    with torch.no_grad():
        rgb = loaded(vqad_rays(32, bounded=True))["rgb"]
        with loaded.rendering_as_trained():  # the reference renders check against: the trained grid, every step
            reference = loaded(vqad_rays(32, bounded=True))["rgb"]
        trained = model(vqad_rays(32, bounded=True))["rgb"]
    assert rgb.shape == (32, 3) and bool(torch.isfinite(rgb).all())
    assert float((rgb - reference).abs().max()) < 1e-3  # the stop behind opaque surfaces: within its bound
    assert float((reference - trained).abs().max()) < 1e-5  # the file renders what the trained model renders


def test_a_training_batch_that_misses_every_occupied_cell_is_background_and_still_trains() -> None:
    torch.manual_seed(0)
    model = tiny_vqad_model({"near_far": (2.0, 6.0), "scene_type": "bounded"}, sampler="occupancy", march_steps=STEPS)
    model.occupancy_estimator.occupied.zero_()  # (updates never leave it so; a batch may miss every cell)
    model.train()
    outputs = model(vqad_rays(16, bounded=True))
    assert model._last_batch_samples == 0 and float(outputs["accumulation"].abs().sum()) == 0.0
    assert torch.equal(outputs["rgb"], torch.zeros(16, 3))  # random background while training: not blended
    losses = model.get_loss_dict(outputs, {"image": torch.rand(16, 3)})
    sum(losses.values()).backward()  # the graph still reaches the field (with zero gradients)


def test_training_evaluates_only_the_marched_samples_light_reaches_with_the_same_image() -> None:
    torch.manual_seed(0)
    model = tiny_vqad_model({"near_far": (2.0, 6.0), "scene_type": "bounded"}, sampler="occupancy", march_steps=STEPS)
    with torch.no_grad():  # an opaque field: many of each ray's marched samples lie behind its surface
        model.field.density_mlp.layers[-1].parametrizations.bias.original[0] = 3.0
    model.train()
    outputs, evaluated = {}, {}
    for threshold in (0.0, 1e-4):
        model.config.train_min_transmittance = threshold
        torch.manual_seed(1)  # the same rays' jitter and levels
        outputs[threshold] = model(vqad_rays(16, bounded=True))
        evaluated[threshold] = int(model._last_batch_samples)
    assert evaluated[1e-4] < 0.5 * evaluated[0.0]  # the hidden samples were dropped
    for key in ("rgb", "accumulation"):
        assert torch.allclose(outputs[1e-4][key], outputs[0.0][key], atol=1e-3), key


class _RaySource:
    """A datamanager stand-in: batches of as many rays as its pixel sampler is set to."""

    def __init__(self, rays: int) -> None:
        self.num_rays_per_batch = rays
        self.train_pixel_sampler = self

    def set_num_rays_per_batch(self, rays: int) -> None:
        self.num_rays_per_batch = rays

    def get_train_rays_per_batch(self) -> int:
        return self.num_rays_per_batch

    def next_train(self, step: int):
        n = self.num_rays_per_batch
        return vqad_rays(n, seed=step, bounded=True), {"image": torch.rand(n, 3)}


def test_occupancy_batches_hold_as_many_rays_as_make_the_target_samples() -> None:
    from nerfqat_plugin.pipelines.compression_pipeline import CompressionPipeline

    torch.manual_seed(0)
    target = 400
    model = tiny_vqad_model({"near_far": (2.0, 6.0), "scene_type": "bounded"}, sampler="occupancy", march_steps=STEPS)
    model.config.target_samples_per_batch = target
    model.train()
    pipeline = CompressionPipeline.__new__(CompressionPipeline)  # the step's logic, without a real datamanager
    torch.nn.Module.__init__(pipeline)
    pipeline._model, pipeline.datamanager, pipeline.world_size = model, _RaySource(32), 1
    pipeline.train_rays = pipeline.train_batches = 0
    counts = []
    for step in range(3):
        pipeline.get_train_loss_dict(step)
        counts.append(int(pipeline.train_rays) - sum(counts))
        evaluated = int(model._last_batch_samples)
        # a CPU: no floor of 256 rays
        assert pipeline.datamanager.num_rays_per_batch == min(target, max(1, round(counts[-1] * target / evaluated)))
    # Before the first step every cell is occupied: on a CPU the first batch's candidates fit the target.
    assert counts[0] == target // STEPS and counts[1] != counts[0]  # then the ray count followed the samples
    assert pipeline.mean_train_rays_per_batch() == pytest.approx(sum(counts) / 3)
    model._last_batch_samples = torch.tensor(1)  # almost nothing occupied: candidates stay capped
    model.config.target_samples_per_batch = model.config.cpu_samples_per_batch = 1 << 30
    assert model.rays_for_next_batch(4096) == vqad_module.MAX_MARCHED_CANDIDATES // STEPS
    model.config.target_samples_per_batch = 0  # off: the datamanager's count stays
    assert model.rays_for_next_batch(32) is None


def test_on_a_cpu_batches_stay_under_the_cpu_sample_cap_and_a_gpu_keeps_the_target(monkeypatch) -> None:
    model = tiny_vqad_model({"near_far": (2.0, 6.0), "scene_type": "bounded"}, sampler="occupancy", march_steps=STEPS)
    model.config.target_samples_per_batch, model.config.cpu_samples_per_batch = 1 << 18, 1 << 12
    assert model.device.type == "cpu"
    assert model.rays_for_next_batch(4096) == (1 << 12) // STEPS  # first batch: every step of every ray
    model._last_batch_samples = torch.tensor(4096 * 8)  # 8 samples per ray
    assert model.rays_for_next_batch(4096) == 512  # 2**12 samples, not 2**18
    monkeypatch.setattr(type(model), "device", property(lambda self: torch.device("cuda")))
    assert model.rays_for_next_batch(4096) == 1 << 15  # 2**18 samples at 8 per ray
    model._last_batch_samples = None
    assert model.rays_for_next_batch(4096) is None  # the datamanager's count starts on a GPU


def test_occupancy_sampler_fields_compile_once_for_any_sample_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Marched batches hold a different sample count every step: compiled for any count at once, not
    recompiled for the second (the proposals' fixed count keeps torch's default)."""
    dynamic: List = []
    monkeypatch.setattr(torch, "compile", lambda fn, **options: dynamic.append(options.get("dynamic")) or fn)
    for sampler, expected in (("occupancy", True), ("proposal", None)):
        dynamic.clear()
        model = tiny_vqad_model({"near_far": (2.0, 6.0), "scene_type": "bounded"}, sampler=sampler)
        model.train()
        model.compile_fields_once(torch.device("cuda"), enabled=True)  # (compiling is lazy: no GPU needed)
        assert dynamic and set(dynamic) == {expected}, sampler
