"""Shared fixtures: tiny generated scenes for fast CPU tests, and the real scenes when present."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Workers of ``pytest -n N`` share the cores: one thread each, and for the tools they start.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded_random_numbers() -> None:
    """Every test starts from the same random state whatever ran before it on its worker (``-n``
    hands tests out in a different order each run), so a test's draws never make it flaky."""
    torch.manual_seed(0)
    np.random.seed(0)


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY_WIDTH, TINY_HEIGHT, TINY_FACTOR, TINY_VIEWS = 32, 24, 8, 17


def _image(i: int, width: int, height: int) -> np.ndarray:
    """A smooth colour pattern that shifts with the view index (content need not be 3D-consistent)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 0.5 + 0.5 * np.sin(x / width * 6.28 + i * 0.1)
    g = 0.5 + 0.5 * np.cos(y / height * 6.28)
    b = np.full_like(r, (i % 5) / 5.0)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def make_llff_scene(root: Path, views: int = TINY_VIEWS) -> Path:
    """An LLFF folder: poses_bounds.npy (LLFF [down, right, back] columns) + images_8/ of 32x24 PNGs."""
    folder = root / f"images_{TINY_FACTOR}"
    folder.mkdir(parents=True)
    full_w, full_h = TINY_WIDTH * TINY_FACTOR, TINY_HEIGHT * TINY_FACTOR
    rows = []
    for i in range(views):
        # Camera looking down -z (OpenGL) written in LLFF column order: [down, right, back].
        right, up, back = np.eye(3)[:, 0], np.eye(3)[:, 1], np.eye(3)[:, 2]
        position = np.array([0.1 * (i % 4), 0.1 * (i // 4), 0.0])
        llff = np.stack([-up, right, back, position, [full_h, full_w, 1.2 * full_w]], axis=1)
        rows.append(np.concatenate([llff.reshape(-1), [2.0, 20.0]]))
        Image.fromarray(_image(i, TINY_WIDTH, TINY_HEIGHT)).save(folder / f"image{i:03d}.png")
    np.save(root / "poses_bounds.npy", np.array(rows))
    return root


def make_blender_scene(root: Path) -> Path:
    """A minimal Blender folder: transforms_{train,val,test}.json and RGBA PNGs."""
    for split in ("train", "val", "test"):
        (root / split).mkdir(parents=True)
        frames = []
        for i in range(2):
            pose = np.eye(4)
            pose[2, 3] = 4.0
            Image.fromarray(np.dstack([_image(i, 16, 16), np.full((16, 16), 255, np.uint8)])).save(
                root / split / f"r_{i}.png"
            )
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": pose.tolist()})
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.69, "frames": frames}))
    return root


@pytest.fixture(scope="session")
def bounded_nerf_qat_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny nerf-qat model of a bounded scene trained past calibration (8 steps) and exported: its
    file has an occupancy grid. Tests load it; none writes to it."""
    from helpers import tiny_nerf_qat_model, train_nerf_qat

    torch.manual_seed(0)
    model = tiny_nerf_qat_model(metadata={"near_far": (0.5, 3.0), "scene_type": "bounded"})
    train_nerf_qat(model, 8)
    path = tmp_path_factory.mktemp("bounded-nerf-qat") / "bounded.nqz"
    model.export_compressed(path)
    return path


@pytest.fixture(scope="session")
def bounded_vqad_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny vqad model of a bounded scene trained 3 steps and exported (with an occupancy grid).
    Tests load it; none writes to it."""
    from helpers import tiny_vqad_model, train_vqad

    torch.manual_seed(0)
    model = tiny_vqad_model({"near_far": (2.0, 6.0), "scene_type": "bounded"})
    train_vqad(model, 3, bounded=True)
    path = tmp_path_factory.mktemp("bounded-vqad") / "scene.nqz"
    model.export_compressed(path)
    return path


@pytest.fixture(scope="session")
def tiny_llff(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_llff_scene(tmp_path_factory.mktemp("tiny_llff"))


def _shared_scene(name: str, marker: str) -> Path:
    path = SHARED_DATA / name
    if not (path / marker).exists():
        pytest.skip(f"real scene not available at {path}")
    return path


@pytest.fixture()
def fern() -> Path:
    return _shared_scene("fern", "poses_bounds.npy")


@pytest.fixture()
def lego() -> Path:
    return _shared_scene("lego", "transforms_train.json")


DEV_SCENES = {"fern": "poses_bounds.npy", "horns": "poses_bounds.npy", "lego": "transforms_train.json"}
DEV_SCENES.update(chair="transforms_train.json", fruit="transforms.json")


@pytest.fixture(params=sorted(DEV_SCENES))
def dev_scene(request: pytest.FixtureRequest) -> Path:
    """Each of the five development scenes in ../shared/data (skipped where absent)."""
    return _shared_scene(request.param, DEV_SCENES[request.param])


def make_capture_scene(root: Path, frames: int = 10, present: int = 10, alpha: bool = False) -> Path:
    """An instant-ngp / COLMAP style capture: one transforms.json with shared intrinsics and distortion,
    ``frames`` frames naming images/frame_XXX.png, of which the first ``present`` exist."""
    (root / "images").mkdir(parents=True)
    entries = []
    for i in range(frames):
        angle = 2 * np.pi * i / frames
        pose = np.eye(4)
        pose[:3, 3] = [3 * np.cos(angle), 3 * np.sin(angle), 0.5]
        entries.append({"file_path": f"images/frame_{i:03d}.png", "transform_matrix": pose.tolist()})
        if i < present:
            pixels = _image(i, 16, 12)
            if alpha:
                pixels = np.dstack([pixels, np.full((12, 16), 255, np.uint8)])
            Image.fromarray(pixels).save(root / "images" / f"frame_{i:03d}.png")
    meta = {"fl_x": 14.0, "fl_y": 14.0, "cx": 8.0, "cy": 6.0, "w": 16, "h": 12, "k1": 0.01, "k2": 0.0}
    (root / "transforms.json").write_text(json.dumps({**meta, "frames": entries}))
    return root
