"""Sparse fine levels of the codebook grid: block masks, occupancy, and files holding kept blocks only."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import render_vqad as _render
from helpers import tiny_vqad_model as _model
from helpers import train_vqad as _train
from helpers import vqad_rays
from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation

from nerfqat_plugin.compression.codec import load_compressed_model
from nerfqat_plugin.compression.file_format import read_compressed
from nerfqat_plugin.errors import UserInputError
from nerfqat_plugin.field_components.block_occupancy import (
    block_grid_shape,
    block_max_density,
    block_vertex_counts,
    densest_blocks_within_budget,
    opaque_density,
    samples_per_block_axis,
)
from nerfqat_plugin.field_components.codebook_grid import LearnedIndexCodebookGrid
from nerfqat_plugin.models.vqad import VQADModelConfig
from nerfqat_plugin.models.vqad_grid_spec import operating_point_levels, operating_point_name, resolve_grid_spec


def _sparse_grid() -> LearnedIndexCodebookGrid:
    torch.manual_seed(0)
    grid = LearnedIndexCodebookGrid([(4, 4, 4), (16, 16, 16)], bits=4, feature_dim=3, sparse_from_level=1, block_size=4)
    grid.eval()
    return grid


def test_dropped_blocks_contribute_nothing_and_kept_blocks_are_unchanged() -> None:
    grid = _sparse_grid()
    assert list(grid.sparse_levels) == [1] and grid.block_mask(0) is None
    assert block_grid_shape((16, 16, 16), 4) == (4, 4, 4)
    points = torch.rand(500, 3)
    before = grid.level_features(points, 1, hard=True)
    keep = torch.zeros(4, 4, 4, dtype=torch.bool)
    keep[:2] = True  # blocks with x-vertex < 8: points with x < 7/15 have every corner there
    grid.set_block_mask(1, keep)
    after = grid.level_features(points, 1, hard=True)
    inside = points[:, 0] < 6.9 / 15
    outside = points[:, 0] > 8.1 / 15
    assert torch.equal(after[inside], before[inside])
    assert torch.all(after[outside] == 0) and before[outside].abs().sum() > 0
    kept = grid.kept_vertices(1)
    assert kept.numel() == 32 * 64 and torch.all(kept // 256 < 8)  # 32 blocks of 4^3 vertices, x < 8


def test_opaque_blocks_follow_the_density_and_are_dilated_by_one_block() -> None:
    def density(points: torch.Tensor) -> torch.Tensor:
        return 100.0 * (points[:, :1] < 0.2).float()  # an opaque slab at x < 0.2

    opaque = opaque_density(0.01, cell_size=0.1)  # the default prune threshold, one 0.1-wide cell
    keep = (block_max_density(density, (33, 33, 33), 4) > opaque).view(block_grid_shape((33, 33, 33), 4))
    # Block x-index 0 covers x in [0, 4/32], 1 covers [4/32, 8/32] (holds x < 0.2); 2 is their neighbour.
    assert keep[:3].all() and not keep[3:].any()
    empty = block_max_density(lambda p: torch.zeros(p.shape[0], 1), (17, 17, 17), 8) > opaque
    assert not empty.any()


def test_block_vertex_counts_include_partial_blocks_on_the_far_faces() -> None:
    counts = block_vertex_counts((10, 8, 5), 4).view(3, 2, 2)
    assert counts[0, 0, 0] == 64 and counts[2, 0, 0] == 2 * 4 * 4 and counts[2, 1, 1] == 2 * 4 * 1
    assert counts.sum() == 10 * 8 * 5


def test_a_budget_keeps_the_densest_blocks_of_all_levels_above_their_minimum() -> None:
    coarse = torch.tensor([5.0, 0.5, 3.0])
    fine = torch.tensor([4.0, 2.0, 6.0, 0.1])
    costs = [torch.full((3,), 10), torch.full((4,), 10)]
    unlimited = densest_blocks_within_budget([coarse, fine], [1.0, 0.2], costs, float("inf"))
    assert unlimited[0].tolist() == [True, False, True] and unlimited[1].tolist() == [True, True, True, False]
    # Room for 3 blocks: the densest are 6 (fine), 5 (coarse), 4 (fine).
    kept = densest_blocks_within_budget([coarse, fine], [1.0, 0.2], costs, 35.0)
    assert kept[0].tolist() == [True, False, False] and kept[1].tolist() == [True, False, True, False]
    assert not any(k.any() for k in densest_blocks_within_budget([coarse, fine], [1.0, 0.2], costs, 5.0))


def test_coarser_levels_are_sampled_as_densely_as_the_finest_so_thin_features_count() -> None:
    def density(points: torch.Tensor) -> torch.Tensor:  # a thin opaque sheet at x = 0.51
        return 100.0 * ((points[:, :1] - 0.51).abs() < 0.004).float()

    fine, coarse = (129, 129, 129), (33, 33, 33)
    assert samples_per_block_axis(fine, fine) == 4 and samples_per_block_axis(coarse, fine) == 16
    assert block_max_density(density, fine, 8, 4).max() == 100.0
    assert block_max_density(density, coarse, 8, samples_per_block_axis(coarse, fine)).max() == 100.0
    assert block_max_density(density, coarse, 8, 4).max() == 0.0  # what equal points per block would miss


def test_max_file_bytes_prunes_the_file_to_fit(tmp_path: Path) -> None:
    torch.manual_seed(0)
    options = dict(grid_resolutions=((4, 4, 3), (8, 6, 5), (32, 32, 24)), sparse_from_level=2, sparse_block_size=4)
    unlimited = _model(**options)
    _train(unlimited, 3)
    every_block = unlimited.prune_empty_blocks()[2]
    full_size = unlimited.export_compressed(tmp_path / "full.nqz")
    torch.manual_seed(0)
    budgeted = _model(**options, max_file_bytes=full_size - 2000)
    _train(budgeted, 3)
    fraction = budgeted.prune_empty_blocks()[2]
    assert 0.0 < fraction < every_block
    assert budgeted.export_compressed(tmp_path / "budgeted.nqz") <= full_size - 2000
    assert budgeted.config.max_file_bytes is not None
    tiny = _model(**options, max_file_bytes=100)  # less than the dense levels alone: no sparse block left
    assert tiny.prune_empty_blocks()[2] == 0.0


def test_file_keeps_only_kept_blocks_and_renders_like_the_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    # Blocks of 8, not the default 4: the file must carry its own block size.
    model = _model(grid_resolutions=((4, 4, 3), (8, 6, 5), (24, 20, 14)), sparse_from_level=2, sparse_block_size=8)
    _train(model, 3)
    dense_size = model.export_compressed(tmp_path / "dense.nqz")
    fractions = model.prune_empty_blocks()  # runs on the trained (random) field
    assert set(fractions) == {2} and 0.0 <= fractions[2] <= 1.0
    keep = torch.zeros(block_grid_shape((24, 20, 14), 8), dtype=torch.bool)
    keep[:2] = True  # two of three x-blocks
    model.field.grid.set_block_mask(2, keep)
    model.eval()
    size = model.export_compressed(tmp_path / "sparse.nqz")
    assert size < dense_size
    loaded = load_compressed_model(tmp_path / "sparse.nqz")
    assert torch.equal(loaded.field.grid.block_mask(2), model.field.grid.block_mask(2))
    expected, actual = _render(model), _render(loaded)
    for key in ("rgb", "depth", "accumulation"):
        assert torch.max(torch.abs(expected[key] - actual[key])) <= 1e-5, key
    _, payload = read_compressed(tmp_path / "sparse.nqz")
    stored = payload["tensors"]["field.grid.indices_2"]
    assert loaded.field.grid.block_size == 8
    assert stored["sparse_blocks"] and stored["shape"] == [16 * 20 * 14]  # x-vertices 0..15 of 24
    # The coarser operating points leave the sparse level and its mask out.
    model.export_compressed(tmp_path / "levels2.nqz", "levels=2")
    assert not any("_2" in name for name in read_compressed(tmp_path / "levels2.nqz")[1]["tensors"])
    model.set_operating_point("levels=2")
    coarse = load_compressed_model(tmp_path / "levels2.nqz")  # a dense model of the first 2 levels
    assert coarse.field.grid.num_levels == 2 and not list(coarse.field.grid.sparse_levels)
    assert torch.max(torch.abs(_render(model)["rgb"] - _render(coarse)["rgb"])) <= 1e-5


def test_blocks_are_pruned_once_at_the_configured_fraction_of_the_run() -> None:
    torch.manual_seed(0)
    model = _model(grid_resolutions=((4, 4, 3), (16, 12, 8)), sparse_from_level=1, sparse_block_size=4)
    model._total_steps = lambda: 100  # what the trainer's max_num_iterations provides
    calls = []
    model.prune_empty_blocks = lambda **_: calls.append(1) or {1: 0.5}  # type: ignore[method-assign]
    model._prune_on_schedule(24)
    assert not calls
    model._prune_on_schedule(25)  # prune_at_fraction 0.25
    assert calls == [1]
    model._pruned = True  # as prune_empty_blocks records it
    model._prune_on_schedule(50)
    assert calls == [1]
    dense = _model()
    dense._total_steps = lambda: 100
    dense._prune_on_schedule(99)  # no sparse levels: nothing to do
    assert not dense._pruned


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("sparse_from_level", 3, "one of the grid's levels"),
        ("sparse_block_size", 1, "at least 2"),
        ("prune_at_fraction", 1.0, r"\[0, 1\)"),
        ("max_file_bytes", 10**6, "needs --pipeline.model.sparse-from-level"),
    ],
)
def test_bad_sparse_options_are_refused_with_a_clear_error(option: str, value: float, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        _model(**{option: value})


def test_scenes_without_grid_options_get_their_preset_and_the_config_is_never_rewritten() -> None:
    unbounded = VQADModelConfig()
    before = dataclasses.asdict(unbounded)
    spec = resolve_grid_spec(unbounded, ndc=False, unbounded=True)
    assert dataclasses.asdict(unbounded) == before  # resolved purely
    assert spec.index_mode == "learned" and unbounded.index_mode is None  # captures: learned, sparse
    assert spec.resolutions[-1] == (256, 256, 256) and spec.num_levels == 5
    assert spec.sparse_from_level == 3 and spec.max_file_bytes == 990_000
    assert unbounded.sparse_block_size == 4  # measured better than 8 at equal bytes on lego
    learned = resolve_grid_spec(VQADModelConfig(index_mode="learned"), ndc=False)  # objects, learned asked for
    assert learned == spec
    smaller = resolve_grid_spec(VQADModelConfig(max_file_bytes=500_000), ndc=False)  # a byte limit: learned, sparse
    assert smaller.index_mode == "learned" and smaller.sparse_from_level == 3 and smaller.max_file_bytes == 500_000
    with pytest.raises(UserInputError, match="positive byte count"):  # the user's 0 is refused, not replaced
        resolve_grid_spec(VQADModelConfig(max_file_bytes=0), ndc=False)
    ndc = resolve_grid_spec(VQADModelConfig(index_mode="learned"), ndc=True)  # NDC: dense, 8-bit coarse codebooks
    assert ndc.sparse_from_level is None and ndc.num_levels == 4
    assert ndc.level_bits == (8, 8, 8, 4) and ndc.resolutions[-1] == (184, 138, 54)
    for given in ({"bits": 6, "index_mode": "learned"}, {"index_mode": "hashed"}, {"finest_resolution": (64, 48, 16)}):
        plain = resolve_grid_spec(VQADModelConfig(**given), ndc=True)  # a bit option, ablation or grid option
        assert len(set(plain.level_bits)) == 1
    explicit = resolve_grid_spec(VQADModelConfig(finest_resolution=(64, 64, 64)), ndc=False)
    assert explicit.index_mode == "learned"  # a grid option: the paper's indices, no preset
    assert explicit.sparse_from_level is None and explicit.max_file_bytes is None and explicit.num_levels == 4
    assert resolve_grid_spec(VQADModelConfig(logit_rank=4), ndc=True).index_mode == "learned"
    bits6 = resolve_grid_spec(VQADModelConfig(bits=6), ndc=False)  # index bits mean learned indices
    assert bits6.index_mode == "learned" and bits6.level_bits == (6,) * 5 and bits6.sparse_from_level == 3
    for ndc in (True, False):  # forward-facing and object scenes: the probed preset
        assert resolve_grid_spec(VQADModelConfig(), ndc=ndc) == resolve_grid_spec(
            VQADModelConfig(index_mode="probed"), ndc=ndc
        )
    for ndc, finest in ((True, (1024, 768, 256)), (False, (1024, 1024, 1024))):  # probed: 16 hashed levels
        probed = resolve_grid_spec(VQADModelConfig(index_mode="probed"), ndc=ndc)
        assert probed.num_levels == 16 and probed.resolutions[-1] == finest and probed.sparse_from_level is None
        assert max(probed.resolutions[0]) == 16 and probed.level_bits == (13,) * 16
        assert (probed.feature_dim, probed.concat_levels) == (2, 16)
    given = resolve_grid_spec(VQADModelConfig(index_mode="probed", bits=12, feature_dim=4, concat_levels=0), ndc=False)
    assert given.level_bits == (12,) * 16 and (given.feature_dim, given.concat_levels) == (4, 0)  # the user's
    small = resolve_grid_spec(VQADModelConfig(index_mode="probed", num_levels=3), ndc=False)  # a grid option
    assert small.num_levels == 3 and small.level_bits == (14,) * 3
    assert (small.feature_dim, small.concat_levels) == (spec.feature_dim, spec.concat_levels) == (8, 0)
    assert (small.index_mode, resolve_grid_spec(VQADModelConfig(), ndc=True).index_mode) == ("probed", "probed")
    for bad in ({"feature_dim": 0}, {"concat_levels": -1}):  # one line, not a silent default
        with pytest.raises(UserInputError, match=next(iter(bad))):
            resolve_grid_spec(VQADModelConfig(index_mode="probed", **bad), ndc=False)


def test_operating_point_names_round_trip_and_bad_names_are_one_line() -> None:
    assert [operating_point_levels(operating_point_name(k)) for k in (1, 2, 12)] == [1, 2, 12]
    for bad in ("levels=", "level=2", "levels=two", "2"):
        with pytest.raises(UserInputError, match="levels=k"):
            operating_point_levels(bad)


@pytest.mark.parametrize("logit_rank", [0, 4])
def test_checkpoints_hold_the_logits_and_adam_moments_of_kept_blocks_only(tmp_path: Path, logit_rank: int) -> None:
    """A pruned level's dropped vertices never render again: checkpoints leave their logits (free, or
    the queries of factorised ones) and Adam moments out (zeros when loaded), and training resumes."""
    torch.manual_seed(0)
    exact = {"compact_checkpoints": False}  # free logits at full precision, their moments kept
    model = _model(sparse_from_level=2, sparse_block_size=2, logit_rank=logit_rank, **exact)
    grid = model.field.grid
    name = "logits" if logit_rank == 0 else "index_queries"
    assert grid.per_vertex_parameters == name
    optimizer = torch.optim.Adam(model.get_param_groups()["index_logits"], lr=1e-2)
    _register_training_callbacks(model, optimizer)  # as the trainer does: hooks the optimizer's saving
    keep = torch.zeros_like(grid.block_mask(2))
    keep[::5] = 1  # a fifth of the blocks
    grid.set_block_mask(2, keep)
    _train(model, 1)
    per_vertex = getattr(grid, name)[2]
    per_vertex.sum().backward()
    optimizer.step()
    kept, rows = grid.kept_vertices(2), grid.num_vertices(2)
    assert 0 < len(kept) < rows

    state, saved = model.state_dict(), optimizer.state_dict()
    assert state[f"field.grid.{name}.2"].shape[0] == len(kept)  # kept rows only
    assert state[f"field.grid.{name}.1"].shape[0] == grid.num_vertices(1)  # dense levels whole
    assert saved["state"][2]["exp_avg"].shape[0] == len(kept)
    assert optimizer.state[per_vertex]["exp_avg"].shape[0] == rows  # the live optimizer untouched
    torch.save({"pipeline": state, "optimizer": saved}, tmp_path / "compact.ckpt")
    torch.save({name: state[f"field.grid.{name}.2"], **saved["state"][2]}, tmp_path / "compact_level.pt")
    torch.save({name: per_vertex.detach(), **optimizer.state[per_vertex]}, tmp_path / "dense_level.pt")
    assert (tmp_path / "compact_level.pt").stat().st_size < (tmp_path / "dense_level.pt").stat().st_size

    torch.manual_seed(1)
    resumed = _model(sparse_from_level=2, sparse_block_size=2, logit_rank=logit_rank, **exact)
    resumed.load_state_dict(torch.load(tmp_path / "compact.ckpt")["pipeline"])
    loaded = getattr(resumed.field.grid, name)[2]
    assert loaded.shape[0] == rows and torch.equal(loaded[kept], per_vertex[kept])
    resumed.eval()
    assert torch.allclose(_render(resumed)["rgb"], _render(model)["rgb"], atol=1e-6)  # renders as saved
    resumed.train()
    resumed_optimizer = torch.optim.Adam(resumed.get_param_groups()["index_logits"], lr=1e-2)
    resumed_optimizer.load_state_dict(torch.load(tmp_path / "compact.ckpt")["optimizer"])
    callbacks = _register_training_callbacks(resumed, resumed_optimizer)
    for callback in callbacks:  # the first step of the resumed run trains the kept rows only
        callback.run_callback_at_location(0, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
    compacted = getattr(resumed.field.grid, name)[2]
    assert torch.equal(compacted, per_vertex[kept].detach()) and loaded not in resumed_optimizer.state
    assert torch.equal(resumed_optimizer.state[compacted]["exp_avg"], optimizer.state[per_vertex]["exp_avg"][kept])
    compacted.sum().backward()
    resumed_optimizer.step()  # trains on


def test_compact_checkpoints_keep_every_index_in_fp16_logits_and_leave_their_moments_out(tmp_path: Path) -> None:
    """The default checkpoints: the field's free logits as fp16 (each vertex's largest at 0, so its
    index survives), no Adam moments for them; a loaded model renders the same and trains on."""
    sizes = {}
    for compact in (False, True):
        torch.manual_seed(0)
        model = _model(sparse_from_level=2, sparse_block_size=2, compact_checkpoints=compact)
        grid = model.field.grid
        optimizer = torch.optim.Adam(model.get_param_groups()["index_logits"], lr=1e-2)
        _register_training_callbacks(model, optimizer)
        with torch.no_grad():  # trained logits spread over several units, where fp16 rounds coarsely
            for logits in grid.logits:
                logits.add_(3.0 * torch.randn_like(logits))
        sum(logits.sum() for logits in grid.logits).backward()
        optimizer.step()
        state, saved = model.state_dict(), optimizer.state_dict()
        torch.save({"pipeline": state, "optimizer": saved}, tmp_path / f"{compact}.ckpt")
        moments = [t for entry in saved["state"].values() for t in entry.values() if t.dim()]
        logit_state = [t for k, t in state.items() if k.startswith("field.grid.logits.")] + moments
        sizes[compact] = sum(t.numel() * t.element_size() for t in logit_state)
    levels = range(grid.num_levels)
    assert all(state[f"field.grid.logits.{lvl}"].dtype == torch.float16 for lvl in levels)
    assert all(bool((state[f"field.grid.logits.{lvl}"].max(dim=-1).values == 0).all()) for lvl in levels)
    assert saved["state"] == {}  # the index-logit optimizer holds nothing else
    assert sizes[True] * 6 == sizes[False]  # 2 bytes per logit instead of 4 and two 4-byte moments

    torch.manual_seed(1)
    resumed = _model(sparse_from_level=2, sparse_block_size=2)
    checkpoint = torch.load(tmp_path / "True.ckpt")
    resumed.load_state_dict(checkpoint["pipeline"])
    for lvl in levels:
        loaded = resumed.field.grid.logits[lvl]
        assert loaded.dtype == torch.float32
        assert torch.equal(resumed.field.grid.hard_indices(lvl), grid.hard_indices(lvl))
        torch.testing.assert_close(loaded.softmax(-1), grid.logits[lvl].softmax(-1), rtol=0, atol=2e-3)
    resumed.eval()
    model.eval()
    assert torch.allclose(_render(resumed)["rgb"], _render(model)["rgb"], atol=1e-6)
    resumed.train()
    resumed_optimizer = torch.optim.Adam(resumed.get_param_groups()["index_logits"], lr=1e-2)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    sum(logits.sum() for logits in resumed.field.grid.logits).backward()
    resumed_optimizer.step()  # Adam starts the logits' moments afresh
    assert all(int(resumed_optimizer.state[p]["step"]) == 1 for p in resumed.field.grid.logits)


def test_a_level_pruned_to_nothing_stays_whole_and_training_goes_on() -> None:
    """A run pruned in its first steps can keep no block of a level: there are no rows to train on, so
    that level is not compacted (it renders nothing either way) and the next steps run."""
    torch.manual_seed(0)
    model = _model(sparse_from_level=2, sparse_block_size=2)
    optimizer = torch.optim.Adam(model.get_param_groups()["index_logits"], lr=1e-2)
    callbacks = _register_training_callbacks(model, optimizer)
    model.field.grid.set_block_mask(2, torch.zeros_like(model.field.grid.block_mask(2)))
    model._pruned = True
    for callback in callbacks:
        callback.run_callback_at_location(0, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
    assert not model.field.grid.is_compacted(2)
    _train(model, 2)


def _train_with(model, optimizers, steps: int) -> None:
    """``steps`` Adam steps on random colours, pruning on the model's schedule after each."""
    target = {"image": torch.rand(64, 3, generator=torch.Generator().manual_seed(1))}
    model.train()
    for step in range(steps):
        loss = sum(model.get_loss_dict(model(vqad_rays(seed=step)), target).values())
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        model.proposal_sampler.step_cb(step)
        model._prune_on_schedule(step)
    model.eval()


@pytest.mark.parametrize("logit_rank", [0, 4])
def test_pruning_trains_the_kept_rows_only_and_as_the_whole_level_would(logit_rank: int) -> None:
    """After pruning, a level's per-vertex training parameter and its Adam moments hold the kept
    vertices' rows only; training goes on exactly as with the whole level (dropped vertices never
    render, and Adam is elementwise)."""
    runs = {}
    for compact in (True, False):
        torch.manual_seed(0)
        model = _model(sparse_from_level=2, sparse_block_size=2, logit_rank=logit_rank)
        groups = model.get_param_groups()
        logit_optimizer = torch.optim.Adam(groups.pop("index_logits"), lr=1e-2)
        others = torch.optim.Adam([p for params in groups.values() for p in params], lr=1e-2)
        if compact:  # nerfstudio's trainer hands the model its optimizers; without them nothing moves
            _register_training_callbacks(model, logit_optimizer)
        model._total_steps = lambda: 8  # prune_at_fraction 0.25: after step 2
        keep = torch.zeros_like(model.field.grid.block_mask(2))
        keep[::4] = 1

        def prune(keep: torch.Tensor = keep, model=model, **_) -> dict:  # a quarter of the blocks, once
            model.field.grid.set_block_mask(2, keep)
            model._pruned = True
            return {2: 0.25}

        model.prune_empty_blocks = prune  # type: ignore[method-assign]
        torch.manual_seed(5)
        _train_with(model, [logit_optimizer, others], 8)
        runs[compact] = model, logit_optimizer
    (compacted, compact_optimizer), (whole, _) = runs[True], runs[False]
    name = compacted.field.grid.per_vertex_parameters
    kept = whole.field.grid.kept_vertices(2)
    rows, full = getattr(compacted.field.grid, name)[2], getattr(whole.field.grid, name)[2]
    assert compacted.field.grid.is_compacted(2) and not whole.field.grid.is_compacted(2)
    assert rows.shape[0] == len(kept) < full.shape[0]
    assert compact_optimizer.state[rows]["exp_avg"].shape == rows.shape  # the moments followed
    assert torch.allclose(rows, full[kept], atol=1e-5)
    assert torch.allclose(_render(compacted)["rgb"], _render(whole)["rgb"], atol=1e-5)
    assert torch.equal(compacted.field.grid.hard_indices(2)[kept], whole.field.grid.hard_indices(2)[kept])


def _register_training_callbacks(model, optimizer: torch.optim.Optimizer):
    """vqad's training callbacks, registered as nerfstudio's trainer does, with ``optimizer`` as the
    index logits' optimizer."""
    optimizers = SimpleNamespace(optimizers={"index_logits": optimizer}, parameters={"index_logits": []})
    attributes = TrainingCallbackAttributes(optimizers=optimizers, grad_scaler=None, pipeline=None, trainer=None)
    return model.get_training_callbacks(attributes)
