"""LLFF forward-facing captures (``poses_bounds.npy`` + ``images_N/``), parsed as NeRF does.

``poses_bounds.npy`` holds per image a 3x5 matrix ``[R | t | (h, w, focal)]`` for the full-size
photo, rotation columns in LLFF's ``[down, right, backwards]`` order, then near/far depth bounds.
Following NeRF's ``load_llff_data``: columns are reordered to OpenGL ``[right, up, backwards]``,
the scene is scaled so the nearest bound sits at 1/0.75, poses are recentred on their average, and
every ``llffhold``-th image (0, 8, 16 for fern) is held out for testing. The model samples in NDC
defined by the training camera's intrinsics and a near plane at 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Tuple, Type

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from PIL import Image, UnidentifiedImageError

from nerfqat_plugin.errors import DataError
from nerfqat_plugin.model_components.ndc import NDCSpace
from nerfqat_plugin.model_components.ray_setup import NDC_METADATA_KEY, NEAR_FAR_METADATA_KEY

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")
NDC_NEAR = 1.0


@dataclass
class LLFFDataParserConfig(DataParserConfig):
    """LLFF forward-facing scene (``poses_bounds.npy`` and ``images_<downscale_factor>/``)."""

    _target: Type = field(default_factory=lambda: LLFF)
    data: Path = Path("data/nerf_llff_data/fern")
    """Scene folder."""
    downscale_factor: int = 8
    """Reads ``images_<factor>/`` (8: the 504x378 resolution NeRF trains and evaluates fern at)."""
    llffhold: int = 8
    """Every llffhold-th image is a test image (NeRF's split)."""
    bd_factor: float = 0.75
    """The scene is scaled so the nearest depth bound becomes 1 / bd_factor."""
    use_ndc: bool = True
    """Sample in normalized device coordinates (forward-facing scenes)."""


def _image_folder(data: Path, factor: int) -> Path:
    folder = data / (f"images_{factor}" if factor > 1 else "images")
    if not folder.is_dir():
        available = sorted(p.name for p in data.glob("images*") if p.is_dir())
        raise DataError(
            f"{folder}: image folder not found for downscale factor {factor} (available: {available or 'none'})"
        )
    return folder


def _list_images(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in IMAGE_SUFFIXES and not p.name.startswith("."))


def _image_size(path: Path) -> Tuple[int, int]:
    """(width, height), verifying the image can be decoded."""
    try:
        with Image.open(path) as img:
            size = img.size
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"{path}: unreadable image ({err})") from err
    return size


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _average_pose(poses: np.ndarray) -> np.ndarray:
    """NeRF's ``poses_avg``: mean centre, mean viewing axis, mean up; a 3x4 camera-to-world."""
    center = poses[:, :3, 3].mean(0)
    z = _normalize(poses[:, :3, 2].sum(0))
    up = poses[:, :3, 1].sum(0)
    x = _normalize(np.cross(up, z))
    y = _normalize(np.cross(z, x))
    return np.stack([x, y, z, center], axis=1)


def load_llff_poses(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """Read ``poses_bounds.npy``: (poses [N, 3, 5] in LLFF order, bounds [N, 2]). Raises DataError."""
    if not path.is_file():
        raise DataError(f"{path}: poses_bounds.npy not found (is this an LLFF scene folder?)")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read poses ({err})") from err
    if arr.ndim != 2 or arr.shape[1] != 17 or arr.shape[0] == 0 or not np.isfinite(arr).all():
        raise DataError(f"{path}: expected a finite N x 17 array, got shape {arr.shape}")
    return arr[:, :15].reshape(-1, 3, 5).astype(np.float64), arr[:, 15:].astype(np.float64)


@dataclass
class LLFF(DataParser):
    """Parses LLFF scenes the way NeRF's ``load_llff_data`` does."""

    config: LLFFDataParserConfig

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        data = Path(self.config.data)
        poses_hwf, bounds = load_llff_poses(data / "poses_bounds.npy")
        images = _list_images(_image_folder(data, self.config.downscale_factor))
        if len(images) != len(poses_hwf):
            raise DataError(
                f"{data}: {len(poses_hwf)} poses in poses_bounds.npy but {len(images)} images in "
                f"{images[0].parent if images else 'the image folder'}"
            )
        width, height = _image_size(images[0])
        for image in images[1:]:
            if _image_size(image) != (width, height):
                raise DataError(f"{image}: size differs from {images[0].name} ({width}x{height})")

        _, full_width, full_focal = poses_hwf[0, :, 4]
        focal = float(full_focal) * width / float(full_width)
        # LLFF [down, right, back] -> OpenGL [right, up, back].
        rot = np.concatenate([poses_hwf[:, :, 1:2], -poses_hwf[:, :, 0:1], poses_hwf[:, :, 2:4]], axis=2)
        scale = 1.0 / (bounds.min() * self.config.bd_factor)
        rot[:, :, 3] *= scale
        bounds = bounds * scale
        average = np.concatenate([_average_pose(rot), [[0, 0, 0, 1]]], axis=0)
        homogeneous = np.concatenate([rot, np.tile([[[0, 0, 0, 1]]], (len(rot), 1, 1))], axis=1)
        poses = (np.linalg.inv(average) @ homogeneous)[:, :3, :4]

        all_indices = np.arange(len(images))
        test = all_indices[:: self.config.llffhold] if self.config.llffhold > 0 else np.array([], dtype=int)
        indices = np.setdiff1d(all_indices, test) if split == "train" else test
        if len(indices) == 0:
            raise DataError(f"{data}: the '{split}' split is empty (llffhold={self.config.llffhold})")

        cameras = Cameras(
            camera_to_worlds=torch.from_numpy(poses[indices]).float(),
            fx=focal,
            fy=focal,
            cx=width / 2.0,
            cy=height / 2.0,
            width=width,
            height=height,
            camera_type=CameraType.PERSPECTIVE,
        )
        # A box around the cameras and the far bound; the viewer draws it, NDC sampling ignores it.
        extent = float(max(np.abs(poses[:, :3, 3]).max(), bounds.max()))
        scene_box = SceneBox(aabb=torch.tensor([[-extent] * 3, [extent] * 3], dtype=torch.float32))
        metadata = {NEAR_FAR_METADATA_KEY: (float(bounds.min()) * 0.9, float(bounds.max()))}
        if self.config.use_ndc:
            ndc = NDCSpace(focal=float(focal), width=float(width), height=float(height), near=NDC_NEAR)
            metadata[NDC_METADATA_KEY] = ndc.to_dict()
        return DataparserOutputs(
            image_filenames=[images[i] for i in indices],
            cameras=cameras,
            scene_box=scene_box,
            dataparser_scale=scale,
            dataparser_transform=torch.from_numpy(np.linalg.inv(average)[:3, :]).float(),
            metadata=metadata,
        )
