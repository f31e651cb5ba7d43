"""vqad model: training step, operating points, compressed export and rendering from the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import render_vqad as _render
from helpers import tiny_vqad_model as _model
from helpers import train_vqad as _train

from nerfqat_plugin.compression.codec import load_compressed_model
from nerfqat_plugin.compression.file_format import read_compressed
from nerfqat_plugin.errors import UserInputError
from nerfqat_plugin.models.vqad_grid_spec import level_resolutions
from nerfqat_plugin.pipelines.compression_pipeline import CompressionPipeline


def test_level_resolutions_halve_towards_the_coarsest() -> None:
    assert level_resolutions((192, 144, 56), 4) == [(24, 18, 7), (48, 36, 14), (96, 72, 28), (192, 144, 56)]
    assert level_resolutions((4, 4, 4), 4)[0] == (2, 2, 2)


def test_training_updates_logits_codebooks_decoders_and_proposals() -> None:
    torch.manual_seed(0)
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    _train(model, 3)
    changed = {k for k, v in before.items() if not torch.equal(model.state_dict()[k], v)}
    for part in ("field.grid.logits.2", "field.grid.codebooks.0", "field.density_mlp", "field.color_mlp"):
        assert any(k.startswith(part) for k in changed), part
    assert any(k.startswith("proposal_field.grid.logits") for k in changed)


SCENE_METADATA = {
    "forward-facing": None,
    "bounded": {"near_far": (2.0, 6.0), "scene_type": "bounded"},
    "unbounded": {"near_far": (0.05, 4.0), "scene_type": "unbounded"},
}


@pytest.mark.parametrize("scene_type", list(SCENE_METADATA))
def test_render_from_file_equals_hard_index_rendering(tmp_path: Path, scene_type: str) -> None:
    torch.manual_seed(0)
    bounded = scene_type != "forward-facing"
    model = _model(metadata=SCENE_METADATA[scene_type])
    _train(model, 4, bounded)
    path = tmp_path / "model.nqz"
    size = model.export_compressed(path)
    assert size == path.stat().st_size == model.compressed_size_bytes()
    loaded = load_compressed_model(path)
    assert len(loaded.field.grid.logits) == 0  # the loaded model holds integer indices only
    expected, actual = _render(model, bounded), _render(loaded, bounded)
    for key in ("rgb", "depth", "accumulation"):
        assert torch.max(torch.abs(expected[key] - actual[key])) <= 1e-5, key
    _, payload = read_compressed(path)
    packed = {name: spec for name, spec in payload["tensors"].items() if spec["encoding"] == "packed-uint"}
    expected_names = {f"field.grid.indices_{i}" for i in range(3)} | {f"proposal.grid.indices_{i}" for i in range(2)}
    expected_names |= {"occupancy"} if scene_type != "unbounded" else set()  # the empty-space grid
    assert set(packed) == expected_names
    if scene_type == "forward-facing":  # over the NDC cube; rays leaving its sides are still evaluated
        assert payload["occupancy"]["aabb"] == [[-1.0] * 3, [1.0] * 3]
        assert payload["occupancy"]["outside"] == "occupied" and loaded.occupancy_grid.outside_occupied
    assert {k: packed["field.grid.indices_2"][k] for k in ("bits", "shape")} == {"bits": 4, "shape": [12 * 10 * 7]}


def test_files_render_through_decoded_levels_and_as_trained_through_the_gathers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _model(metadata=SCENE_METADATA["bounded"])
    _train(model, 4, bounded=True)
    model.export_compressed(tmp_path / "model.nqz")
    loaded = load_compressed_model(tmp_path / "model.nqz")
    grids = (loaded.field.grid, loaded.proposal_field.grid)
    with loaded.rendering_as_trained():
        assert not any(grid.decoded_lookup for grid in grids)
        as_trained = _render(loaded, bounded=True)
    assert not any(grid._volume_cache for grid in grids)
    default = _render(loaded, bounded=True)
    assert all(sorted(grid._volume_cache) == list(grid.levels) for grid in grids)  # every level decoded
    assert float(default["accumulation"].std()) > 1e-3  # the comparison says something
    for key in ("rgb", "depth", "accumulation"):
        assert torch.max(torch.abs(default[key] - as_trained[key])) <= 1e-5, key
    loaded.config.decoded_grid_lookup = False  # an option set after loading is read at render time
    _render(loaded, bounded=True)
    assert not any(grid.decoded_lookup for grid in grids)


def test_unbounded_scenes_contract_space_beyond_the_box_into_the_grid(tmp_path: Path) -> None:
    bounded, unbounded = _model(SCENE_METADATA["bounded"]), _model(SCENE_METADATA["unbounded"])
    assert (bounded.far, unbounded.far) == (6.0, unbounded.config.unbounded_far_plane)
    far_away = torch.tensor([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0], [40.0, -3.0, 0.0], [-1e4, 0.0, 2.0]])
    unit, inside = bounded.field.normalized(far_away)
    assert inside.squeeze(-1).tolist() == [True, True, False, False]
    unit, inside = unbounded.field.normalized(far_away)
    assert bool(inside.all()) and bool(((unit >= 0) & (unit <= 1)).all())
    # The box's centre and faces map to the centre and the central half; infinity to the cube's faces.
    assert torch.allclose(unit[0], torch.full((3,), 0.5)) and torch.isclose(unit[1, 0], torch.tensor(0.75))
    assert unit[3, 0] < 1e-3 and 0.9 < unit[2, 0] < 1.0
    assert unbounded.proposal_field.contraction is not None
    path = tmp_path / "unbounded.nqz"
    unbounded.export_compressed(path)
    loaded = load_compressed_model(path)
    assert loaded.field.contraction is not None and loaded.far == unbounded.far


@pytest.mark.parametrize("concat", [0, 3])
def test_operating_points_render_and_export_with_growing_size(tmp_path: Path, concat: int) -> None:
    torch.manual_seed(0)
    model = _model(concat_levels=concat)
    _train(model, 3)
    names = model.operating_points()
    assert names == ["levels=1", "levels=2", "levels=3"]
    sizes = [model.compressed_size_bytes(name) for name in names]
    assert sizes[0] < sizes[1] < sizes[2] == model.compressed_size_bytes()
    # Index bytes grow by exactly the packed indices of the added level (4 bits per vertex)...
    assert sizes[2] - sizes[1] >= 12 * 10 * 7 * 4 // 8
    full = _render(model)["rgb"]
    model.set_operating_point("levels=2")
    coarse = _render(model)["rgb"]
    assert not torch.allclose(full, coarse)
    # ... and the file of an operating point renders what the model renders there.
    path = tmp_path / "levels2.nqz"
    assert model.export_compressed(path, "levels=2") == sizes[1]
    loaded = load_compressed_model(path)
    assert loaded.operating_points() == ["levels=1", "levels=2"]
    assert torch.max(torch.abs(_render(loaded)["rgb"] - coarse)) <= 1e-5
    with pytest.raises(ValueError, match="unknown operating point"):
        model.set_operating_point("levels=9")


def test_viewer_dropdown_switches_the_operating_point_and_its_size() -> None:
    model = _model()
    dropdown = model.viewer_operating_point
    assert dropdown.options == ["levels=1", "levels=2", "levels=3"] and dropdown.default_value == "levels=3"
    dropdown.value = "levels=1"
    dropdown.cb_hook(dropdown)
    assert model.current_operating_point() == "levels=1" and model.field.num_active_levels == 1
    expected = f"{model.compressed_size_bytes('levels=1') / 1e6:.3f} MB"
    assert model.exported_size_text() == model.viewer_exported_size.value == expected


def test_factorised_logits_export_the_same_kind_of_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _model(bits=8, logit_rank=4)
    _train(model, 3)
    path = tmp_path / "lowrank.nqz"
    model.export_compressed(path)
    tensors, payload = read_compressed(path)
    assert not any("index_queries" in n or "index_keys" in n or "index_bias" in n for n in tensors)
    assert payload["tensors"]["field.grid.indices_2"]["bits"] == 8
    assert torch.max(torch.abs(_render(model)["rgb"] - _render(load_compressed_model(path))["rgb"])) <= 1e-5


def test_per_level_bits_are_stored_at_their_width_and_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _model(level_bits=(8, 6, 4))
    _train(model, 3)
    path = tmp_path / "levelbits.nqz"
    model.export_compressed(path)
    _, payload = read_compressed(path)
    assert [payload["tensors"][f"field.grid.indices_{i}"]["bits"] for i in range(3)] == [8, 6, 4]
    assert payload["model"]["level_bits"] == [8, 6, 4]
    loaded = load_compressed_model(path)
    assert torch.max(torch.abs(_render(model)["rgb"] - _render(loaded)["rgb"])) <= 1e-5
    # A coarser operating point keeps its levels' widths.
    model.export_compressed(tmp_path / "levels2.nqz", "levels=2")
    assert load_compressed_model(tmp_path / "levels2.nqz").field.grid.level_bits == [8, 6]
    with pytest.raises(UserInputError, match="2 bit widths"):
        _model(level_bits=(8, 4))
    with pytest.raises(UserInputError, match="index bits must be in"):
        _model(level_bits=(9, 4, 4))


def test_index_logits_have_their_own_parameter_group() -> None:
    model = _model()
    groups = model.get_param_groups()
    assert {id(p) for p in groups["index_logits"]} == {id(p) for p in model.field.grid.logits}
    assert not {id(p) for p in groups["fields"]} & {id(p) for p in groups["index_logits"]}
    assert len(groups["fields"]) + len(groups["index_logits"]) == len(list(model.field.parameters()))
    assert "index_logits" not in _model(index_mode="hashed").get_param_groups()  # nothing to learn there
    stats = model.training_statistics()["index_statistics"]
    assert len(stats) == 3 and all(0 < level["top_probability"] <= 1 for level in stats)


def test_random_and_hashed_ablations_store_no_indices(tmp_path: Path) -> None:
    learned = _model().compressed_size_bytes()
    for mode in ("random", "hashed"):
        torch.manual_seed(0)
        model = _model(index_mode=mode)
        _train(model, 2)
        path = tmp_path / f"{mode}.nqz"
        assert model.export_compressed(path) < learned
        _, payload = read_compressed(path)
        assert not any(name.startswith("field.grid.indices") for name in payload["tensors"])
        assert torch.max(torch.abs(_render(model)["rgb"] - _render(load_compressed_model(path))["rgb"])) <= 1e-5


def test_logit_memory_and_operating_point_are_checked_before_allocating() -> None:
    with pytest.raises(UserInputError, match="GiB while training"):
        _model(grid_resolutions=((512, 512, 512),), bits=8)
    with pytest.raises(UserInputError, match="eval_levels"):
        _model(eval_levels=4)
    # Random indices are one per vertex: a grid whose file could not be loaded is refused at once.
    with pytest.raises(UserInputError, match="more than a file may hold.*one per vertex.*index-mode hashed"):
        _model(index_mode="random", grid_resolutions=((1100, 1000, 1000),), bits=4)
    hashed = _model(index_mode="hashed", grid_resolutions=((1100, 1000, 1000),), bits=4)  # no indices
    assert hashed.field.grid.num_vertices(0) == 1_100_000_000
    assert _model(eval_levels=2).current_operating_point() == "levels=2"


def test_evaluation_reports_every_operating_point(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    model = _model()
    seen = []

    def fake_image(self, camera, batch):
        seen.append(model.current_operating_point())
        return {"psnr": float(model.active_levels) + batch, "ssim": 0.5}, {}, 0.1, 100

    monkeypatch.setattr(CompressionPipeline, "_image_metrics", fake_image)
    pipeline = CompressionPipeline.__new__(CompressionPipeline)
    torch.nn.Module.__init__(pipeline)
    pipeline._model = model
    images = [(object(), 0.0), (object(), 1.0)]  # two images whose psnr differ by 1
    metrics = CompressionPipeline.get_average_image_metrics(pipeline, images, "")
    assert seen == ["levels=3"] * 2 + ["levels=1"] * 2 + ["levels=2"] * 2
    assert metrics["psnr"] == 3.5 and metrics["levels=1/psnr"] == 1.5 and metrics["levels=2/psnr"] == 2.5
    assert metrics["levels=3/psnr"] == 3.5
    assert metrics["levels=1/size_bytes"] == model.compressed_size_bytes("levels=1")
    assert "lpips" not in metrics  # periodic training evaluation: numbers only for the writers
    with_std = CompressionPipeline.get_average_image_metrics(pipeline, images, "", get_std=True)
    assert with_std["lpips"] is None and with_std["levels=2/lpips"] is None  # ns-eval: null
    assert with_std["psnr_std"] == pytest.approx(2**-0.5) and with_std["fps"] == pytest.approx(10.0)
    assert model.current_operating_point() == "levels=3"
    assert "Evaluating operating point levels=1, image 2 of 2" in capsys.readouterr().out  # logs: one line each


def test_probed_indices_store_the_index_table_and_render_from_the_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _model(index_mode="probed", bits=8, probe_bits=2, probe_table_bits=6)
    assert {id(p) for p in model.get_param_groups()["index_logits"]} == {id(p) for p in model.field.grid.logits}
    _train(model, 3)
    path = tmp_path / "probed.nqz"
    assert model.export_compressed(path) == path.stat().st_size
    _, payload = read_compressed(path)
    table = payload["tensors"]["field.grid.indices_2"]
    assert {k: table[k] for k in ("bits", "shape")} == {"bits": 2, "shape": [64]}
    loaded = load_compressed_model(path)
    assert len(loaded.field.grid.logits) == 0 and loaded.config.probe_table_bits == 6
    assert torch.max(torch.abs(_render(model)["rgb"] - _render(loaded)["rgb"])) <= 1e-5
    assert _model(index_mode="probed").field.grid.level_bits == [14, 14, 14]  # a hashed-size codebook
    with pytest.raises(UserInputError, match="probe_bits"):
        _model(index_mode="probed", bits=8, probe_bits=9)
    with pytest.raises(UserInputError, match="sparse levels"):
        _model(index_mode="probed", bits=8, sparse_from_level=2)


def test_the_probed_preset_writes_a_file_under_a_megabyte_that_renders_as_trained(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _model(index_mode="probed", grid_resolutions=None, feature_dim=None)  # NDC, no grid option
    grid = model.field.grid
    assert grid.num_levels == 16 and grid.feature_dim == 2 and grid.concat_levels == 16
    _train(model, 2)
    path = tmp_path / "preset.nqz"
    assert model.export_compressed(path) < 1_000_000
    options = read_compressed(path)[1]["model"]
    assert (options["feature_dim"], options["concat_levels"], len(options["grid_resolutions"])) == (2, 16, 16)
    loaded = load_compressed_model(path)
    assert torch.max(torch.abs(_render(model)["rgb"] - _render(loaded)["rgb"])) <= 1e-5


def test_bounded_and_forward_facing_files_carry_the_occupancy_grid_and_unbounded_none(tmp_path: Path) -> None:
    for scene_type, metadata in SCENE_METADATA.items():
        for bake in (True, False):
            torch.manual_seed(0)
            model = _model(metadata=metadata, bake_occupancy=bake)
            path = tmp_path / f"{scene_type}-{bake}.nqz"
            size = model.export_compressed(path)
            tensors, payload = read_compressed(path)
            has_grid = bake and scene_type != "unbounded"
            assert ("occupancy" in tensors) == ("occupancy" in payload) == has_grid, (scene_type, bake)
            loaded = load_compressed_model(path)
            assert (loaded.occupancy_grid is not None) == has_grid
            if has_grid:  # the bits round-trip, and the grid costs a few kB at most
                assert loaded.occupancy_grid.resolution == (64, 64, 64)
                baked = model.occupancy_state()[0]["occupancy"]
                assert torch.equal(tensors["occupancy"], baked)
                plain = _model(metadata=metadata, bake_occupancy=False)
                assert size - plain.compressed_size_bytes() <= 40_000


def test_the_grid_resolution_and_ray_loss_options_shape_the_files_grid(tmp_path: Path) -> None:
    grids = {}
    for resolution, loss in ((16, 1e-3), (16, 0.5), (32, 1e-3)):
        torch.manual_seed(0)
        options = dict(occupancy_bake_resolution=resolution, occupancy_max_ray_loss=loss)
        model = _model(metadata=SCENE_METADATA["bounded"], **options)
        # a density fading away from the box's centre: which cells are empty depends on the threshold
        centre = model.scene_box.aabb.mean(dim=0)
        model.density_for_occupancy = lambda p, c=centre: 1e3 * torch.exp(-8.0 * ((p - c) ** 2).sum(-1, keepdim=True))
        path = tmp_path / f"{resolution}-{loss}.nqz"
        model.export_compressed(path)
        grids[resolution, loss] = load_compressed_model(path).occupancy_grid.occupied
        assert grids[resolution, loss].shape == (resolution,) * 3
    strict, loose = grids[16, 1e-3], grids[16, 0.5]
    assert torch.equal(loose & strict, loose) and loose.sum() < strict.sum()  # a larger loss empties more cells
    with pytest.raises(UserInputError, match="occupancy-bake-resolution must be in"):
        _model(occupancy_bake_resolution=4)
    with pytest.raises(UserInputError, match=r"occupancy-max-ray-loss in \(0, 1\)"):
        _model(occupancy_max_ray_loss=1.0)


def test_renders_round_the_decoders_fp16_weights_once_per_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers import forward_rays

    from nerfqat_plugin.field_components.half_precision import HalfPrecisionRounding

    model = _model()
    rounded = [m for m in model.modules() if isinstance(m, HalfPrecisionRounding)]
    calls = []
    original = HalfPrecisionRounding.forward
    monkeypatch.setattr(HalfPrecisionRounding, "forward", lambda self, x: calls.append(id(self)) or original(self, x))
    model.eval()
    with torch.no_grad():
        model(forward_rays(256))  # the proposal rounds and sample windows call each decoder several times
    assert rounded and sorted(calls) == sorted(id(m) for m in rounded)


def test_coarsest_resolution_spaces_levels_geometrically_and_refuses_a_bad_value() -> None:
    """instant-NGP's spacing: 16 to 2048 over 16 levels, one factor apart; halving stays the default."""
    from nerfqat_plugin.models.vqad import VQADModelConfig
    from nerfqat_plugin.models.vqad_grid_spec import resolve_grid_spec

    grid = {"num_levels": 16, "index_mode": "hashed"}  # (learned indices: one per vertex, too many here)
    geometric = resolve_grid_spec(
        VQADModelConfig(**grid, finest_resolution=(2048, 2048, 1024), coarsest_resolution=16), ndc=False
    ).resolutions
    x = [r[0] for r in geometric]
    assert x[0] == 16 and x[-1] == 2048 and len(set(x)) == 16
    factors = [b / a for a, b in zip(x[:-1], x[1:], strict=True)]
    assert all(abs(f - 128 ** (1 / 15)) < 0.05 for f in factors)  # 1.38, up to rounding to whole vertices
    assert geometric[0][2] == 8 and geometric[-1][2] == 1024  # shorter axes in proportion
    halving = resolve_grid_spec(VQADModelConfig(**grid, finest_resolution=(2048,) * 3), ndc=False).resolutions
    assert [r[0] for r in halving][:7] == [2, 2, 2, 2, 2, 2, 4]
    with pytest.raises(UserInputError, match="coarsest-resolution"):
        too_coarse = VQADModelConfig(num_levels=4, finest_resolution=(64,) * 3, coarsest_resolution=128)
        resolve_grid_spec(too_coarse, ndc=False)


@pytest.mark.parametrize(
    ("options", "random_share"),
    [
        ({}, (0.15, 0.35)),
        ({"concat_levels": 3}, (0.0, 0.0)),
        ({"concat_levels": 3, "random_levels_fraction": 0.5}, (0.4, 0.6)),
    ],
)
def test_random_operating_points_train_where_levels_are_summed_unless_given(options: dict, random_share: tuple) -> None:
    """None: a quarter of the rays at a random operating point with summed levels, none with
    concatenated ones (their prefixes decode without it); a given fraction always holds."""
    torch.manual_seed(0)
    levels = _model(**options)._random_levels(4000, torch.device("cpu"))
    share = float((levels < 3).float().mean())
    assert random_share[0] <= share <= random_share[1]


def test_bad_random_levels_fraction_is_one_line() -> None:
    with pytest.raises(UserInputError, match="random_levels_fraction must be in"):
        _model(random_levels_fraction=1.5)


@pytest.mark.parametrize("value", [1.0, -0.1])
def test_bad_train_min_transmittance_is_one_line(value: float) -> None:
    with pytest.raises(UserInputError, match=r"train_min_transmittance must be in \[0, 1\)"):
        _model(train_min_transmittance=value)


def test_defaults_by_scene_kind_build_their_grids_and_samplers() -> None:
    """No grid option: objects get the probed preset and march an occupancy grid, captures learned
    indices on the sparse preset with proposals (docs/methods/vqad.md)."""
    from nerfstudio.data.scene_box import SceneBox

    from nerfqat_plugin.models.vqad import VQADModel, VQADModelConfig

    box = SceneBox(aabb=torch.tensor([[-1.5] * 3, [1.5] * 3]))
    built = {}
    for kind in ("bounded", "unbounded"):
        config = VQADModelConfig(num_nerf_samples=8, num_proposal_samples=(16, 8), compile=False)
        model = VQADModel(config=config, scene_box=box, num_train_data=4, metadata=SCENE_METADATA[kind])
        built[kind] = (model.field.grid.index_mode, model.field.grid.num_levels, model.marches_occupancy())
        assert config.index_mode is None  # resolved, not rewritten
    assert built == {"bounded": ("probed", 16, True), "unbounded": ("learned", 5, False)}
