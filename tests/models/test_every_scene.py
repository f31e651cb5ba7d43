"""What keeps both methods from collapsing to empty space on scenes nobody tuned them for: random training
backgrounds and centre-cropped first steps on object scenes, vqad pruning that waits for occupancy, and a
warning when a run collapses anyway."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation

from nerfqat_plugin.data.datamanager import CenterCropPixelSamplerConfig, CompressionDataManager
from nerfqat_plugin.model_components.collapse_monitor import CollapseMonitor
from nerfqat_plugin.model_components.renderers import RandomTrainingBackgroundRenderer
from nerfqat_plugin.models.nerfqat import NeRFQATModel, NeRFQATModelConfig
from nerfqat_plugin.models.vqad import VQADModel, VQADModelConfig

BOUNDED = {"near_far": (2.0, 6.0), "scene_type": "bounded"}


def _object_rays(n: int = 256, seed: int = 0) -> RayBundle:
    """Rays from radius 4 towards the origin, spread a little: a camera looking at an object."""
    g = torch.Generator().manual_seed(seed)
    targets = 0.6 * (torch.rand(n, 3, generator=g) - 0.5)
    origins = torch.tensor([0.0, 0.0, 4.0]).expand(n, 3)
    return RayBundle(
        origins=origins,
        directions=torch.nn.functional.normalize(targets - origins, dim=-1),
        pixel_area=torch.ones(n, 1),
        camera_indices=torch.zeros(n, 1, dtype=torch.long),
    )


def _object_image(n: int = 256, seed: int = 0) -> torch.Tensor:
    """RGBA ground truth: a coloured object over a fifth of the pixels, transparent elsewhere."""
    g = torch.Generator().manual_seed(seed)
    alpha = (torch.rand(n, 1, generator=g) < 0.2).float()
    return torch.cat([torch.rand(n, 3, generator=g), alpha], dim=-1)


def _tiny_nerf_qat(**overrides) -> NeRFQATModel:
    options = dict(
        num_layers=2, layer_width=16, skip_connections=(1,), head_width=8, position_frequencies=3,
        direction_frequencies=2, num_coarse_samples=8, num_importance_samples=8, compile=False, quantize=False,
    )  # fmt: skip
    config = NeRFQATModelConfig(**{**options, **overrides})
    box = SceneBox(aabb=torch.tensor([[-1.5] * 3, [1.5] * 3]))
    return NeRFQATModel(config=config, scene_box=box, num_train_data=4, metadata=BOUNDED)


# -- random training backgrounds ----------------------------------------------------------------


def test_training_composites_one_random_background_into_prediction_and_truth() -> None:
    renderer = RandomTrainingBackgroundRenderer().train()
    pred, accumulation = torch.zeros(500, 3), torch.zeros(500, 1)  # an empty field
    gt = torch.cat([torch.rand(500, 3), torch.zeros(500, 1)], dim=-1)  # all background
    torch.manual_seed(0)
    pred_bg, gt_bg = renderer.blend_background_for_loss_computation(pred, accumulation, gt)
    assert torch.equal(pred_bg, gt_bg)  # empty space is exactly right where the image is empty...
    assert pred_bg.std() > 0.2  # ...and what it shows there is random, not white
    opaque = torch.cat([torch.full((500, 3), 0.3), torch.ones(500, 1)], dim=-1)
    pred_bg, gt_bg = renderer.blend_background_for_loss_computation(pred, accumulation, opaque)
    assert torch.allclose(gt_bg, torch.full_like(gt_bg, 0.3)) and (pred_bg - gt_bg).abs().mean() > 0.2
    # Images without alpha have nothing to composite: prediction on the evaluation colour.
    rgb_only = torch.ones(500, 3)
    pred_bg, gt_bg = renderer.blend_background_for_loss_computation(pred, accumulation, rgb_only)
    assert torch.equal(pred_bg, torch.ones(500, 3)) and torch.equal(gt_bg, rgb_only)


def test_evaluation_renders_and_blends_on_white() -> None:
    renderer = RandomTrainingBackgroundRenderer().eval()
    rgb, weights = torch.zeros(4, 8, 3), torch.zeros(4, 8, 1)
    assert torch.equal(renderer(rgb=rgb, weights=weights), torch.ones(4, 3))
    rgba = torch.tensor([[0.2, 0.4, 0.6, 0.0]])
    assert torch.allclose(renderer.blend_background(rgba), torch.ones(1, 3))
    renderer.train()  # training renders without a background (black), as its blend does
    assert torch.equal(renderer(rgb=rgb, weights=weights), torch.zeros(4, 3))
    assert torch.equal(renderer.blend_background(rgba), torch.zeros(1, 3))


def test_named_backgrounds_are_copied_to_a_device_once() -> None:
    meta = torch.device("meta")  # a device every copy to makes a new tensor
    first = RandomTrainingBackgroundRenderer.get_background_color("black", (5, 3), meta)
    again = RandomTrainingBackgroundRenderer.get_background_color("black", (7, 3), meta)
    assert first.shape == (5, 3) and again.shape == (7, 3) and first.device == meta
    assert first._base is not None and again._base is first._base  # views of one copy on the device
    white = RandomTrainingBackgroundRenderer.get_background_color("white", (2, 3), torch.device("cpu"))
    assert torch.equal(white, torch.ones(2, 3))


def test_object_scenes_get_the_random_background_and_forward_facing_ones_keep_theirs() -> None:
    assert isinstance(_tiny_nerf_qat().renderer_rgb, RandomTrainingBackgroundRenderer)
    ndc = {"ndc": {"focal": 30.0, "width": 32.0, "height": 24.0, "near": 1.0}}
    config = NeRFQATModelConfig(num_layers=2, layer_width=8, skip_connections=(1,), compile=False)
    model = NeRFQATModel(config=config, scene_box=SceneBox(aabb=torch.ones(2, 3)), num_train_data=1, metadata=ndc)
    assert not isinstance(model.renderer_rgb, RandomTrainingBackgroundRenderer)
    assert model.renderer_rgb.background_color == "last_sample"


# -- centre-cropped first steps -----------------------------------------------------------------


def test_centre_crop_sampler_draws_from_the_middle_only_while_set() -> None:
    sampler = CenterCropPixelSamplerConfig(num_rays_per_batch=64).setup()
    sampler.crop_fraction = 0.5
    indices = sampler.sample_method(20000, 3, 80, 60)
    assert indices[:, 1].min() == 20 and indices[:, 1].max() == 59  # rows 20..59 of 80
    assert indices[:, 2].min() == 15 and indices[:, 2].max() == 44  # columns 15..44 of 60
    assert set(indices[:, 0].tolist()) == {0, 1, 2}
    sampler.crop_fraction = None
    indices = sampler.sample_method(20000, 3, 80, 60)
    assert indices[:, 1].min() == 0 and indices[:, 1].max() == 79


@pytest.mark.parametrize(("scene_type", "step", "crops"), [("bounded", 0, True), ("bounded", 999, True),
                         ("bounded", 1000, False), ("unbounded", 0, False), ("forward-facing", 0, False)])  # fmt: skip
def test_only_object_scenes_crop_and_only_in_their_first_steps(scene_type: str, step: int, crops: bool) -> None:
    from nerfqat_plugin.data.datamanager import CompressionDataManagerConfig

    manager = SimpleNamespace(
        config=CompressionDataManagerConfig(),
        train_dataparser_outputs=SimpleNamespace(metadata={"scene_type": scene_type}),
    )
    assert CompressionDataManager.crops_at(manager, step) is crops  # type: ignore[arg-type]


# -- collapse warning ---------------------------------------------------------------------------


def _observe_model(model: NeRFQATModel, monitor: CollapseMonitor, steps: int) -> bool:
    """Render the synthetic object scene in training mode and let the monitor judge each step."""
    model.collapse_monitor = monitor
    model.train()
    warned = False
    with torch.no_grad():
        for step in range(steps):
            outputs = model(_object_rays(seed=step))
            metrics = model.get_metrics_dict(outputs, {"image": _object_image(seed=step)})
            warned |= monitor.check(step)
    assert metrics["collapsed"] == float(monitor.collapsed)
    return warned


def test_a_field_collapsed_to_empty_space_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    model = _tiny_nerf_qat()
    for fld in (model.field_coarse, model.field_fine):  # made to collapse: no density anywhere
        torch.nn.init.zeros_(fld.density_head.linear.weight)
        torch.nn.init.constant_(fld.density_head.linear.bias, -40.0)
    assert _observe_model(model, CollapseMonitor(check_every=2, start_step=2), 8)
    output = capsys.readouterr().out
    assert output.count("collapsed to empty space") == 1  # one line, once
    assert "learning rate" in output and model.training_statistics()["collapse_warning"] is True


def test_a_healthy_field_is_not_reported(capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    model = _tiny_nerf_qat()
    for fld in (model.field_coarse, model.field_fine):  # opaque, with colours that vary over the scene
        torch.nn.init.constant_(fld.density_head.linear.bias, 5.0)
        torch.nn.init.normal_(fld.color_head.out_layer.linear.weight, std=3.0)
    assert not _observe_model(model, CollapseMonitor(check_every=2, start_step=2), 8)
    assert "collapsed" not in capsys.readouterr().out and not model.collapse_monitor.collapsed


@pytest.mark.parametrize("quantized_error, warned", [(0.5, True), (0.11, False)])
def test_quality_lost_when_quantization_switches_on_is_reported_once(
    quantized_error: float, warned: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _tiny_nerf_qat(quantize=True, bits=4, activation_bits=4, qat_start_fraction=None, float_warmup_steps=4)
    monitor = model.collapse_monitor = CollapseMonitor(check_every=2, start_step=0)
    attributes = TrainingCallbackAttributes(optimizers=None, grad_scaler=None, pipeline=None, trainer=None)
    callbacks = model.get_training_callbacks(attributes)
    image = torch.rand(64, 3, generator=torch.Generator().manual_seed(0))
    for step in range(12):  # renders 0.1 off the images in float (20 dB), then quantized_error off
        for callback in callbacks:
            callback.run_callback_at_location(step, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        monitor.observe(
            image + (0.1 if model.quantization_started_at is None else quantized_error), torch.ones(64, 1), image
        )
        for callback in callbacks:
            callback.run_callback_at_location(step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
    output = " ".join(capsys.readouterr().out.split())  # as one line, whatever the console's width
    lost = model.training_statistics()["quantization_loss_db"]
    assert model.quantization_started_at == 4 and lost == pytest.approx(
        20.0 + 20 * math.log10(quantized_error), abs=0.02
    )
    assert output.count("when quantization (4-bit weights, 4-bit activations) switched on at step 4") == int(warned)
    assert ("activation-bits 8" in output) is warned and model.quantization_loss_warned is warned


def test_one_odd_window_is_not_yet_a_collapse_and_blank_images_are_never_judged() -> None:
    monitor = CollapseMonitor(check_every=1, start_step=0)
    rgb, image = torch.rand(64, 3), torch.rand(64, 3)
    monitor.observe(torch.zeros(64, 3), torch.zeros(64, 1), image)  # one empty window...
    assert not monitor.check(0) and not monitor.collapsed
    monitor.observe(rgb, torch.ones(64, 1), image)  # ...then a healthy one
    assert not monitor.check(1) and not monitor.collapsed
    blank = CollapseMonitor(check_every=1, start_step=0)
    for step in range(3):  # a constant render of constant images is right, not a collapse
        blank.observe(torch.ones(64, 3), torch.zeros(64, 1), torch.ones(64, 3))
        assert not blank.check(step)


def test_each_window_records_the_psnr_of_its_training_batches() -> None:
    monitor = CollapseMonitor(check_every=2, start_step=2)
    image = torch.rand(64, 3, generator=torch.Generator().manual_seed(0))
    for step, error in enumerate([0.5, 0.5, 0.1, 0.1, 0.01, 0.0, 0.0]):
        monitor.observe(image + error, torch.ones(64, 1), image)
        monitor.check(step)
    # Steps before start_step belong to no window; each window holds the PSNR of its batches' mean
    # squared error: step 2's 0.01, then (0.01 + 1e-4) / 2 of steps 3 and 4; an exact one is capped.
    assert monitor.psnr_windows == [(2, 20.0), (4, 22.97), (6, 100.0)]


# -- vqad pruning guard -------------------------------------------------------------------------


def _sparse_vqad() -> VQADModel:
    config = VQADModelConfig(
        grid_resolutions=((4, 4, 4), (16, 16, 16)), sparse_from_level=1, sparse_block_size=4, feature_dim=4,
        hidden_dim=16, color_hidden_dim=16, proposal_resolutions=((4, 4, 4),), num_proposal_samples=(8,),
        num_nerf_samples=8, compile=False,
    )  # fmt: skip
    box = SceneBox(aabb=torch.tensor([[-1.5] * 3, [1.5] * 3]))
    model = VQADModel(config=config, scene_box=box, num_train_data=4, metadata=BOUNDED)
    model._total_steps = lambda: 100
    return model


def _set_density(model: VQADModel, value: float) -> None:
    """Make the radiance field's density ``exp(value)`` everywhere (its decoder's output bias)."""
    last = [m for m in model.field.density_mlp.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():  # the fp32 weights behind the fp16 rounding (train_as_half)
        last.parametrizations.weight.original.zero_()
        last.parametrizations.bias.original.zero_()
        last.parametrizations.bias.original[0] = value


def _mask(model: VQADModel) -> torch.Tensor:
    return model.field.grid.block_mask(1)


def test_pruning_an_empty_field_is_deferred_and_the_levels_stay_dense(capsys: pytest.CaptureFixture[str]) -> None:
    model = _sparse_vqad()
    _set_density(model, -30.0)  # nothing is opaque yet
    assert model.prune_empty_blocks() is None and bool(_mask(model).all())
    model._prune_on_schedule(25)  # prune_at_fraction 0.25: first try
    assert not model._pruned and bool(_mask(model).all())
    assert "pruning deferred to step 30" in capsys.readouterr().out
    model._prune_on_schedule(29)  # waits for the retry step
    assert model._prune_attempts == 1
    model._prune_on_schedule(30)
    assert model._prune_attempts == 2 and not model._pruned


def test_pruning_goes_ahead_once_the_field_is_opaque_and_at_the_deadline_regardless() -> None:
    model = _sparse_vqad()
    _set_density(model, -30.0)
    model._prune_on_schedule(25)
    _set_density(model, 5.0)  # the field has learned density everywhere
    model._prune_on_schedule(30)
    assert model._pruned and bool(_mask(model).all())  # every block is occupied: all kept
    late = _sparse_vqad()
    budget = late.compressed_size_bytes() - 2000  # a budget that forces a choice
    late.grid_spec = dataclasses.replace(late.grid_spec, max_file_bytes=budget)
    _set_density(late, -30.0)  # still empty at the deadline (half the run)
    late._prune_on_schedule(50)
    kept = _mask(late)
    assert late._pruned and bool(kept.any()) and not bool(kept.all())  # the densest within the budget


def test_the_steps_before_the_first_check_start_no_window() -> None:
    monitor = CollapseMonitor(check_every=20, start_step=20)
    image = torch.rand(64, 3)
    for step in range(20):  # an untrained field's fog: one colour, nearly empty
        monitor.observe(torch.zeros(64, 3), torch.zeros(64, 1), image)
        monitor.check(step)
    monitor.observe(torch.rand(64, 3), torch.ones(64, 1), image)
    assert not monitor.check(20) and not monitor._suspect  # judged on step 20 alone
