"""LLFF parsing (tiny generated scene and fern), format detection, and clear errors on bad scenes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_HEIGHT, TINY_WIDTH, make_blender_scene, make_capture_scene, make_llff_scene

from nerfqat_plugin.data.auto_dataparser import AutoDataParserConfig, detect_scene_format
from nerfqat_plugin.data.llff_dataparser import LLFFDataParserConfig
from nerfqat_plugin.errors import DataError


def _parse(data: Path, split: str = "train", **kwargs):
    return LLFFDataParserConfig(data=data, **kwargs).setup().get_dataparser_outputs(split)


def test_tiny_scene_split_intrinsics_and_orientation(tiny_llff: Path) -> None:
    train, test = _parse(tiny_llff, "train"), _parse(tiny_llff, "test")
    assert [p.name for p in test.image_filenames] == ["image000.png", "image008.png", "image016.png"]
    assert len(train.image_filenames) == 14 and not set(train.image_filenames) & set(test.image_filenames)
    cams = train.cameras
    assert int(cams.width[0]) == TINY_WIDTH and int(cams.height[0]) == TINY_HEIGHT
    # The generated focal is 1.2 x full width; scaled to images_8 it is 1.2 x 32.
    assert float(cams.fx[0]) == pytest.approx(1.2 * TINY_WIDTH)
    # The generated cameras look down -z with y up: after LLFF -> OpenGL they keep an identity rotation.
    assert torch.allclose(cams.camera_to_worlds[:, :3, :3], torch.eye(3).expand(14, 3, 3), atol=1e-5)
    ndc = train.metadata["ndc"]
    assert ndc["near"] == 1.0 and ndc["width"] == TINY_WIDTH
    # Scaled so that the nearest bound (2.0) becomes 1 / 0.75.
    assert train.metadata["near_far"][1] == pytest.approx(20.0 / (2.0 * 0.75))


def test_fern_matches_nerf_split_and_resolution(fern: Path) -> None:
    train, test = _parse(fern, "train"), _parse(fern, "test")
    assert [p.name for p in test.image_filenames] == ["image000.png", "image008.png", "image016.png"]
    assert len(train.image_filenames) == 17
    assert (int(test.cameras.width[0]), int(test.cameras.height[0])) == (504, 378)
    poses = np.load(fern / "poses_bounds.npy")
    assert float(test.cameras.fx[0]) == pytest.approx(poses[0, 14] * 504 / 4032, rel=1e-5)
    # Recentred: the average camera looks down -z from near the origin.
    mean_forward = -train.cameras.camera_to_worlds[:, :3, 2].mean(0)
    assert mean_forward[2] < -0.95


def test_detection(tiny_llff: Path, tmp_path: Path) -> None:
    assert detect_scene_format(tiny_llff) == "llff"
    assert detect_scene_format(make_blender_scene(tmp_path / "blender")) == "blender"
    (tmp_path / "ns").mkdir()
    (tmp_path / "ns" / "transforms.json").write_text("{}")
    assert detect_scene_format(tmp_path / "ns") == "nerfstudio"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="unrecognised scene folder"):
        detect_scene_format(tmp_path / "empty")


def test_auto_parser_adds_bounds_for_blender(tmp_path: Path) -> None:
    outputs = AutoDataParserConfig(data=make_blender_scene(tmp_path / "b")).setup().get_dataparser_outputs("train")
    assert outputs.metadata["near_far"] == (2.0, 6.0) and "ndc" not in outputs.metadata


def test_auto_parser_on_lego(lego: Path) -> None:
    outputs = AutoDataParserConfig(data=lego).setup().get_dataparser_outputs("test")
    assert len(outputs.image_filenames) == 25 and outputs.metadata["near_far"] == (2.0, 6.0)


@pytest.fixture()
def scene_copy(tmp_path: Path) -> Path:
    return make_llff_scene(tmp_path / "scene")


def test_missing_poses(scene_copy: Path) -> None:
    (scene_copy / "poses_bounds.npy").unlink()
    with pytest.raises(DataError, match=r"poses_bounds\.npy not found"):
        _parse(scene_copy)


def test_image_count_mismatch(scene_copy: Path) -> None:
    (scene_copy / "images_8" / "image016.png").unlink()
    with pytest.raises(DataError, match="17 poses .* but 16 images"):
        _parse(scene_copy)


def test_unreadable_image(scene_copy: Path) -> None:
    bad = scene_copy / "images_8" / "image005.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="image005.png: unreadable image"):
        _parse(scene_copy)


def test_wrong_downscale_factor_names_the_folder(scene_copy: Path) -> None:
    with pytest.raises(DataError, match="images_4: image folder not found"):
        _parse(scene_copy, downscale_factor=4)


def test_malformed_poses(scene_copy: Path) -> None:
    np.save(scene_copy / "poses_bounds.npy", np.zeros((17, 5)))
    with pytest.raises(DataError, match="N x 17"):
        _parse(scene_copy)


# -- every scene type -----------------------------------------------------------------------------

EXPECTED_DEV_SPLITS = {"fern": (17, 3), "horns": (54, 8), "lego": (100, 25), "chair": (100, 25), "fruit": (70, 11)}
EXPECTED_DEV_TYPES = {"fern": "forward-facing", "horns": "forward-facing", "lego": "bounded", "chair": "bounded"}
EXPECTED_DEV_TYPES["fruit"] = "unbounded"


def test_auto_parser_reads_every_dev_scene_with_its_type_and_split(dev_scene: Path) -> None:
    parser = AutoDataParserConfig(data=dev_scene).setup()
    train, test = parser.get_dataparser_outputs("train"), parser.get_dataparser_outputs("test")
    assert (len(train.image_filenames), len(test.image_filenames)) == EXPECTED_DEV_SPLITS[dev_scene.name]
    assert not set(train.image_filenames) & set(test.image_filenames)
    assert train.metadata["scene_type"] == EXPECTED_DEV_TYPES[dev_scene.name]
    assert all(Path(p).is_file() for p in train.image_filenames + test.image_filenames)


def test_a_capture_holds_out_every_eighth_frame_and_keeps_its_distortion(tmp_path: Path) -> None:
    scene = make_capture_scene(tmp_path / "capture", frames=17, present=17)
    parser = AutoDataParserConfig(data=scene).setup()
    test = parser.get_dataparser_outputs("test")
    assert [p.name for p in test.image_filenames] == ["frame_000.png", "frame_008.png", "frame_016.png"]
    assert test.metadata["scene_type"] == "unbounded" and test.metadata["near_far"] == (0.05, 4.0)
    assert float(test.cameras.distortion_params[0, 0]) == pytest.approx(0.01)


def test_a_capture_with_alpha_is_an_object_scene(tmp_path: Path) -> None:
    scene = make_capture_scene(tmp_path / "capture", alpha=True)
    assert AutoDataParserConfig(data=scene).setup().get_dataparser_outputs("train").metadata["scene_type"] == "bounded"


def test_blender_images_keep_their_alpha_unless_asked(tmp_path: Path) -> None:
    from nerfstudio.data.datasets.base_dataset import InputDataset

    scene = make_blender_scene(tmp_path / "b")
    outputs = AutoDataParserConfig(data=scene).setup().get_dataparser_outputs("train")
    assert outputs.metadata["scene_type"] == "bounded" and InputDataset(outputs)[0]["image"].shape[-1] == 4
    white = AutoDataParserConfig(data=scene, alpha_color="white").setup().get_dataparser_outputs("train")
    assert InputDataset(white)[0]["image"].shape[-1] == 3


def test_missing_capture_images_are_named_in_one_error(tmp_path: Path) -> None:
    scene = make_capture_scene(tmp_path / "capture", frames=14, present=10)
    with pytest.raises(DataError, match=r"4 of 14 frames name images that do not exist \(images/frame_010.png, "
                       r"images/frame_011.png, images/frame_012.png, \.\.\.\); add --skip-missing-images"):  # fmt: skip
        AutoDataParserConfig(data=scene).setup().get_dataparser_outputs("train")
    empty = make_capture_scene(tmp_path / "none", frames=3, present=0)
    with pytest.raises(DataError, match="none of the 3 frames' images exist"):
        AutoDataParserConfig(data=empty).setup().get_dataparser_outputs("train")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json: unreadable transforms file"):
        AutoDataParserConfig(data=tmp_path / "bad.json").setup().get_dataparser_outputs("train")


def test_skip_missing_images_trains_on_the_frames_that_exist(tmp_path: Path) -> None:
    scene = make_capture_scene(tmp_path / "capture", frames=14, present=10)
    parser = AutoDataParserConfig(data=scene, skip_missing_images=True).setup()
    train, test = parser.get_dataparser_outputs("train"), parser.get_dataparser_outputs("test")
    names = sorted(p.name for p in train.image_filenames + test.image_filenames)
    assert names == [f"frame_{i:03d}.png" for i in range(10)]
    assert all(Path(p).is_file() for p in train.image_filenames)
