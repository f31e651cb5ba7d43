"""The compressed file as a product: files written by earlier versions keep loading and rendering
identically, and no corruption of a file gets past the reader as anything but its one-line error."""

from __future__ import annotations

import json
import random
import struct
import sys
import time
from pathlib import Path
from typing import Dict

import pytest
import torch
from safetensors.torch import load_file

from nerfqat_plugin.compression import file_format
from nerfqat_plugin.compression.codec import load_compressed_model
from nerfqat_plugin.compression.file_format import CompressedFileError, read_compressed, serialize_compressed

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
sys.path.insert(0, str(FIXTURES))
from make_old_files import fixture_rays  # noqa: E402

METHODS = ("nerf_qat", "vqad")


@pytest.mark.parametrize("method", METHODS)
def test_files_render_in_the_methods_chunks(method: str) -> None:
    """A file renders as many rays at once as ``ns-train`` evaluates (nerfstudio's 4,096 would make
    the viewer and ``ns-render-compressed`` slower than the trained model on a GPU)."""
    from method_configs.nerf_qat import nerf_qat_method
    from method_configs.vqad import vqad_method

    spec = {"nerf_qat": nerf_qat_method, "vqad": vqad_method}[method]
    trained_chunk = spec.config.pipeline.model.eval_num_rays_per_chunk
    assert trained_chunk > 4096
    assert load_compressed_model(FIXTURES / f"format2_{method}.nqz").config.eval_num_rays_per_chunk == trained_chunk


@pytest.mark.parametrize("method", METHODS)
def test_format_2_files_load_and_render_as_they_did(method: str) -> None:
    path = FIXTURES / f"format2_{method}.nqz"
    assert (
        json.loads(path.read_bytes()[8 : 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]])["__metadata__"][
            "format_version"
        ]
        == "2"
    )
    expected = load_file(FIXTURES / "format2_renders.safetensors")[method]
    with torch.no_grad():
        rgb = load_compressed_model(path)(fixture_rays())["rgb"]
    assert torch.max(torch.abs(rgb - expected)) <= 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_every_option_an_old_file_lacks_decodes_as_it_was_made(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A payload key added after the oldest kept files needs the value they were made with
    (``payload_absent``): otherwise changing that option's default would change how they decode."""
    from nerfqat_plugin.models.nerfqat import NeRFQATModelConfig
    from nerfqat_plugin.models.vqad import VQADModelConfig

    config_class = {"nerf_qat": NeRFQATModelConfig, "vqad": VQADModelConfig}[method]
    stored = read_compressed(FIXTURES / f"format2_{method}.nqz")[1]["model"]
    assert [k for k in config_class.payload_keys if k not in stored and k not in config_class.payload_absent] == []
    # A file without the key takes the recorded value, not the option's default.
    key, recorded = {"nerf_qat": ("activation_bits", 6), "vqad": ("sampler", "proposal")}[method]
    assert getattr(config_class(), key) != recorded
    monkeypatch.setattr(config_class, "payload_absent", {**config_class.payload_absent, key: recorded})
    without = {k: v for k, v in stored.items() if k != key}
    assert getattr(config_class.from_payload(without), key) == recorded


@pytest.mark.parametrize("method", METHODS)
def test_a_rewritten_file_holds_the_same_model(method: str, tmp_path: Path) -> None:
    model = load_compressed_model(FIXTURES / f"format2_{method}.nqz")
    model.export_compressed(tmp_path / "new.nqz")
    assert read_compressed(tmp_path / "new.nqz")[1]["method"] == method.replace("_", "-")
    with torch.no_grad():
        rgb = load_compressed_model(tmp_path / "new.nqz")(fixture_rays())["rgb"]
    assert torch.max(torch.abs(rgb - load_file(FIXTURES / "format2_renders.safetensors")[method])) <= 1e-6


def test_the_checksum_covers_the_payload(tmp_path: Path) -> None:
    blob = serialize_compressed({"a": torch.arange(4, dtype=torch.uint8)}, {"method": "test", "bits": 8})
    tampered = blob.replace(b'\\"bits\\":8', b'\\"bits\\":9')
    assert tampered != blob
    (tmp_path / "t.nqz").write_bytes(tampered)
    with pytest.raises(CompressedFileError, match="checksum mismatch"):
        read_compressed(tmp_path / "t.nqz")


def _load_tensors_or_error(path: Path, original: Dict[str, torch.Tensor]) -> str:
    """'same' when the file decodes to exactly the original tensors and model, 'error' for the one-line error."""
    try:
        tensors, _ = read_compressed(path)
        load_compressed_model(path)
    except CompressedFileError:
        return "error"
    assert set(tensors) == set(original) and all(torch.equal(tensors[k], original[k]) for k in original)
    return "same"


@pytest.mark.parametrize("method", METHODS)
def test_fuzzed_files_either_decode_exactly_or_give_the_one_line_error(method: str, tmp_path: Path) -> None:
    """Every truncation, and random single- and multi-byte corruptions (fixed seed): never another
    exception type. Runs in a few seconds: the checksum rejects nearly every case before decoding."""
    source = tmp_path / "source.nqz"
    load_compressed_model(FIXTURES / f"format2_{method}.nqz").export_compressed(source)
    blob = source.read_bytes()
    original, _ = read_compressed(source)
    target = tmp_path / "fuzzed.nqz"
    outcomes = {"same": 0, "error": 0}
    start = time.perf_counter()
    for length in range(len(blob)):
        target.write_bytes(blob[:length])
        outcomes[_load_tensors_or_error(target, original)] += 1
    rng = random.Random(0)
    for trial in range(2000):
        damaged = bytearray(blob)
        for _ in range(1 if trial % 2 else rng.randint(2, 16)):
            damaged[rng.randrange(len(blob))] = rng.randrange(256)
        target.write_bytes(bytes(damaged))
        outcomes[_load_tensors_or_error(target, original)] += 1
    assert outcomes["error"] >= len(blob)  # every truncation is an error
    assert time.perf_counter() - start < 60


def test_a_header_claiming_a_huge_tensor_is_refused_before_allocating(tmp_path: Path) -> None:
    header = {
        "__metadata__": {"format": file_format.FORMAT_NAME, "format_version": "3", "payload": "{}", "sha256": "0"},
        "w": {"dtype": "F32", "shape": [10**6, 10**6], "data_offsets": [0, 4 * 10**12]},
    }
    encoded = json.dumps(header).encode()
    (tmp_path / "huge.nqz").write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"\0" * 64)
    with pytest.raises(CompressedFileError, match="corrupt or truncated tensor data"):
        read_compressed(tmp_path / "huge.nqz")


def test_a_deflated_stream_announcing_more_than_deflate_can_hold_is_refused() -> None:
    from nerfqat_plugin.compression.bitpack import decode_integers

    spec = {"encoding": "packed-uint", "bits": 8, "shape": [10**12], "compression": "deflate"}
    with pytest.raises(ValueError, match="cannot hold the announced"):
        decode_integers(torch.zeros(100, dtype=torch.uint8), spec)


def test_compressed_info_says_what_applies(capsys: pytest.CaptureFixture[str]) -> None:
    from nerfqat_plugin.scripts.compressed_info import CompressedInfo

    CompressedInfo(path=FIXTURES / "format2_vqad.nqz", json_output=True).main()
    info = json.loads(capsys.readouterr().out)
    assert info["sampling"].startswith("NDC") and "near_plane" not in info["model"]  # NDC: no near/far planes
    model = load_compressed_model(FIXTURES / "format2_vqad.nqz")
    assert info["stored_values"] > sum(p.numel() for p in model.parameters())  # the grid's indices count too


def test_our_methods_train_on_the_cpu_where_there_is_no_gpu() -> None:
    from method_configs.nerf_qat import nerf_qat_method
    from method_configs.vqad import vqad_method

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert nerf_qat_method.config.machine.device_type == vqad_method.config.machine.device_type == expected


def test_the_readme_python_example_renders_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    lines = (Path(__file__).resolve().parents[2] / "README.md").read_text().splitlines()
    start = lines.index("<!-- python-example -->") + 2
    code = "\n".join(lines[start : lines.index("```", start)])
    (tmp_path / "scene.nqz").write_bytes((FIXTURES / "format2_vqad.nqz").read_bytes())
    monkeypatch.chdir(tmp_path)
    namespace: Dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102  (our own README's example)
    rgb = namespace["rgb"]
    assert isinstance(rgb, torch.Tensor) and rgb.shape == (24, 32, 3) and rgb.std() > 0


def test_preview_cameras_of_a_bounded_scene_look_at_its_centre() -> None:
    from nerfstudio.data.scene_box import SceneBox

    from nerfqat_plugin.models.vqad import VQADModel, VQADModelConfig
    from nerfqat_plugin.rendering import preview_cameras

    config = VQADModelConfig(grid_resolutions=((4, 4, 4),), proposal_resolutions=((4, 4, 4),), compile=False)
    box = SceneBox(aabb=torch.tensor([[-1.0, -1.0, 0.0], [1.0, 1.0, 2.0]]))
    model = VQADModel(config=config, scene_box=box, num_train_data=1, metadata={"near_far": (2.0, 6.0)})
    cameras = preview_cameras(model, count=3, size=9)
    rays = cameras.generate_rays(camera_indices=torch.arange(3)[:, None], coords=torch.full((3, 2), 4.5))
    centre = torch.tensor([0.0, 0.0, 1.0])
    to_centre = centre - rays.origins
    assert torch.allclose(to_centre.norm(dim=-1), torch.full((3,), 4.0), atol=1e-4)  # middle of near/far
    assert torch.allclose(torch.nn.functional.normalize(to_centre, dim=-1), rays.directions, atol=1e-4)


def test_renaming_an_attribute_changes_no_file_key_and_old_files_still_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The codec names tensors by its file_keys, not by attribute: a field whose density decoder is
    renamed, with the one file_keys entry pointed at the new name, decodes a file written before the
    rename (here the format-2 fixture) to the same renders, and writes the same keys."""
    import nerfqat_plugin.models.vqad as vqad_module
    from nerfqat_plugin.fields.vqad_field import VQADField
    from nerfqat_plugin.models.vqad_codec import VQADCodec

    class RenamedField(VQADField):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.sigma_decoder = self.density_mlp  # the same module under its new name only
            del self.density_mlp

        @property
        def density_mlp(self):  # the forward pass still reads the old name
            return self.sigma_decoder

    before_keys = set(read_compressed(FIXTURES / "format2_vqad.nqz")[0])
    expected = load_compressed_model(FIXTURES / "format2_vqad.nqz")
    monkeypatch.setattr(vqad_module, "VQADField", RenamedField)
    monkeypatch.setitem(VQADCodec.file_keys, "field.density_mlp", "field.sigma_decoder")
    renamed = load_compressed_model(FIXTURES / "format2_vqad.nqz")
    assert "sigma_decoder" in dict(renamed.field.named_children()) and "density_mlp" not in dict(
        renamed.field.named_children()
    )
    with torch.no_grad():
        assert torch.equal(expected(fixture_rays())["rgb"], renamed(fixture_rays())["rgb"])
    renamed.export_compressed(tmp_path / "renamed.nqz")
    # The same keys, and the occupancy grid that forward-facing files carry since format 4.
    assert set(read_compressed(tmp_path / "renamed.nqz")[0]) == before_keys | {"occupancy"}


def test_a_module_without_a_file_key_is_refused_on_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nerfqat_plugin.models.vqad_codec import VQADCodec

    model = load_compressed_model(FIXTURES / "format2_vqad.nqz")
    monkeypatch.delitem(VQADCodec.file_keys, "field.color_mlp")
    with pytest.raises(ValueError, match="field.color_mlp.* has no file key"):
        model.export_compressed(tmp_path / "x.nqz")
    assert not (tmp_path / "x.nqz").exists()


@pytest.mark.parametrize(
    ("method", "option", "value"),
    [
        ("vqad", "grid_resolutions", [[4096, 4096, 4096]]),
        ("vqad", "proposal_resolutions", [[2048, 2048, 2048]]),
        ("nerf-qat", "layer_width", 1 << 16),
    ],
)
def test_a_valid_file_describing_an_enormous_model_is_refused_before_building_it(
    tmp_path: Path, method: str, option: str, value
) -> None:
    """A crafted payload with a correct checksum cannot make the loader allocate terabytes."""
    tensors, payload = read_compressed(FIXTURES / f"format2_{method.replace('-', '_')}.nqz")
    payload["model"][option] = value
    (tmp_path / "crafted.nqz").write_bytes(serialize_compressed(tensors, payload))
    start = time.perf_counter()
    with pytest.raises(CompressedFileError, match="describes a model of .* values"):
        load_compressed_model(tmp_path / "crafted.nqz")
    assert time.perf_counter() - start < 5


def test_an_occupancy_grid_without_its_box_covers_the_scene_box_and_a_bad_box_is_refused(tmp_path: Path) -> None:
    """Format-3 grids name no box: they cover the scene box, empty outside, as they were written."""
    from helpers import tiny_vqad_model

    from nerfqat_plugin.compression.file_format import write_compressed

    model = tiny_vqad_model(metadata={"near_far": (2.0, 6.0), "scene_type": "bounded"})
    model.export_compressed(tmp_path / "new.nqz")
    tensors, payload = read_compressed(tmp_path / "new.nqz")
    del payload["occupancy"]["aabb"], payload["occupancy"]["outside"]
    write_compressed(tmp_path / "old.nqz", tensors, payload)
    grid = load_compressed_model(tmp_path / "old.nqz").occupancy_grid
    assert torch.equal(grid.aabb, model.scene_box.aabb) and not grid.outside_occupied
    payload["occupancy"]["outside"] = "maybe"
    write_compressed(tmp_path / "bad.nqz", tensors, payload)
    with pytest.raises(CompressedFileError, match="occupancy grid"):
        load_compressed_model(tmp_path / "bad.nqz")


def test_a_hashed_grid_finer_than_the_value_limit_loads_and_its_learned_twin_is_refused(tmp_path: Path) -> None:
    """Hashed levels store no index per vertex: an instant-NGP-like 2048^3 level is a small model."""
    from helpers import tiny_vqad_model

    from nerfqat_plugin.compression.file_format import write_compressed

    fine = ((16, 16, 16), (2048, 2048, 2048))
    model = tiny_vqad_model(grid_resolutions=fine, index_mode="hashed", bits=8, feature_dim=2)
    model.export_compressed(tmp_path / "hashed.nqz")
    loaded = load_compressed_model(tmp_path / "hashed.nqz")
    assert [tuple(r) for r in loaded.grid_spec.resolutions] == [tuple(r) for r in fine]
    tensors, payload = read_compressed(tmp_path / "hashed.nqz")
    payload["model"]["index_mode"] = "learned"  # 2048^3 stored indices: 8.6e9 values
    write_compressed(tmp_path / "learned.nqz", tensors, payload)
    with pytest.raises(CompressedFileError, match="describes a model of .* values"):
        load_compressed_model(tmp_path / "learned.nqz")
