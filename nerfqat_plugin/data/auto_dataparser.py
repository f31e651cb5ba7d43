"""A dataparser that recognises the scene format from the folder's contents.

So that ``ns-train nerf-qat --data SCENE`` works with no subcommand on LLFF, Blender and
nerfstudio / instant-ngp scenes; the explicit dataparser subcommands still work as usual. Each
scene gets a type the models read from the metadata (forward-facing, bounded object, or a real
capture), the split nerfstudio users expect (every 8th frame of a capture held out, like LLFF),
and a check, before any training, that every frame's image exists.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Type

from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.utils.rich_utils import CONSOLE
from PIL import Image

from nerfqat_plugin.data.llff_dataparser import LLFFDataParserConfig
from nerfqat_plugin.errors import DataError
from nerfqat_plugin.model_components.ray_setup import NEAR_FAR_METADATA_KEY, SCENE_TYPE_METADATA_KEY, SceneType

SceneFormat = Literal["llff", "blender", "nerfstudio"]

BLENDER_NEAR_FAR = (2.0, 6.0)
"""NeRF's bounds for the synthetic scenes (cameras at radius 4 around a unit-sized object)."""
NERFSTUDIO_NEAR_FAR = (0.05, 4.0)
"""nerfstudio scenes are scaled into [-1, 1]; rays are sampled up to beyond the box's far corner."""
HOLDOUT_INTERVAL = 8
"""Captures without a split of their own hold out every 8th frame (sorted by file name), like LLFF."""


def detect_scene_format(data: Path) -> SceneFormat:
    """``llff`` (poses_bounds.npy), ``blender`` (transforms_train.json) or ``nerfstudio`` (transforms.json)."""
    if not data.exists():
        raise DataError(f"{data}: scene folder not found")
    if data.is_file() and data.suffix == ".json":
        return "nerfstudio"
    if (data / "poses_bounds.npy").exists():
        return "llff"
    if (data / "transforms_train.json").exists():
        return "blender"
    if (data / "transforms.json").exists():
        return "nerfstudio"
    raise DataError(
        f"{data}: unrecognised scene folder; expected poses_bounds.npy (LLFF), "
        "transforms_train.json (Blender) or transforms.json (nerfstudio)"
    )


def read_transforms(path: Path) -> Dict[str, Any]:
    """A transforms.json as a dict, or one :class:`DataError` naming what is wrong with it."""
    try:
        meta = json.loads(path.read_text(encoding="utf8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable transforms file ({err})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise DataError(f"{path}: no 'frames' list in the transforms file")
    if not all(isinstance(f, dict) and "file_path" in f for f in meta["frames"]):
        raise DataError(f"{path}: every frame needs a 'file_path'")
    return meta


def frame_image(data_dir: Path, file_path: str) -> Optional[Path]:
    """The image a frame names, or None; an extensionless path (Blender style) may be any image suffix."""
    path = data_dir / file_path
    candidates = [path] + [path.with_suffix(suffix) for suffix in (".png", ".jpg", ".jpeg")]
    return next((candidate for candidate in candidates if candidate.is_file()), None)


def missing_frames(meta: Dict[str, Any], data_dir: Path) -> List[str]:
    """The ``file_path`` of every frame whose image does not exist."""
    return [str(frame["file_path"]) for frame in meta["frames"] if frame_image(data_dir, frame["file_path"]) is None]


def has_alpha(image_path: Path) -> bool:
    with Image.open(image_path) as image:
        return image.mode in ("RGBA", "LA") or "transparency" in image.info


@dataclass
class AutoDataParserConfig(DataParserConfig):
    """Detects LLFF, Blender or nerfstudio scenes and parses them with their own parser's defaults."""

    _target: Type = field(default_factory=lambda: AutoDataParser)
    data: Path = Path()
    """Scene folder (or a nerfstudio transforms.json)."""
    llff: LLFFDataParserConfig = field(default_factory=LLFFDataParserConfig)
    """Options used when the folder is an LLFF scene."""
    alpha_color: Optional[Literal["white", "black"]] = None
    """Blender scenes: composite their RGBA images on this colour while loading; None keeps the alpha
    so that the model composites (our methods train on random backgrounds, render on white)."""
    skip_missing_images: bool = False
    """Train on the frames whose images exist when a transforms.json lists some that do not
    (default: stop with an error naming them)."""


@dataclass
class AutoDataParser(DataParser):
    """Dispatches to the LLFF, Blender or nerfstudio dataparser."""

    config: AutoDataParserConfig

    def __post_init__(self) -> None:
        self._capture: Optional[Tuple[Path, bool]] = None

    def _nerfstudio_source(self, data: Path) -> Tuple[Path, bool]:
        """The transforms.json to parse (a copy listing only existing frames, with
        ``skip_missing_images``) and whether its images carry alpha; worked out once for all splits."""
        if self._capture is None:
            self._capture = self._check_capture(data)
        return self._capture

    def _check_capture(self, data: Path) -> Tuple[Path, bool]:
        path = data if data.is_file() else data / "transforms.json"
        meta = read_transforms(path)
        missing = missing_frames(meta, path.parent)
        if missing and len(missing) == len(meta["frames"]):
            raise DataError(f"{path}: none of the {len(missing)} frames' images exist (first: {missing[0]})")
        present = (frame_image(path.parent, frame["file_path"]) for frame in meta["frames"])
        alpha = has_alpha(next(image for image in present if image is not None))
        if not missing:
            return path, alpha
        listed = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        summary = f"{len(missing)} of {len(meta['frames'])} frames name images that do not exist ({listed})"
        if not self.config.skip_missing_images:
            raise DataError(f"{path}: {summary}; add --skip-missing-images to train on the others")
        CONSOLE.print(f"[yellow]{path}: {summary}; training on the other {len(meta['frames']) - len(missing)}")
        absent = set(missing)
        kept = [frame for frame in meta["frames"] if str(frame["file_path"]) not in absent]
        for frame in kept:  # absolute paths: the copy lives elsewhere
            for key in ("file_path", "mask_path", "depth_file_path"):
                if key in frame:
                    frame[key] = str((path.parent / frame[key]).resolve())
        folder = Path(tempfile.mkdtemp(prefix="nerfqat-frames-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)  # read only while parsing
        copy = folder / "transforms.json"
        copy.write_text(json.dumps({**meta, "frames": kept}), encoding="utf8")
        return copy, alpha

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        data = Path(self.config.data)
        fmt = detect_scene_format(data)
        scene_type: SceneType
        if fmt == "llff":
            inner: DataParserConfig = dataclasses.replace(self.config.llff, data=data)
            scene_type, near_far = "forward-facing", None
        elif fmt == "blender":
            inner = BlenderDataParserConfig(data=data, alpha_color=self.config.alpha_color)
            scene_type, near_far = "bounded", BLENDER_NEAR_FAR
        else:
            source, alpha = self._nerfstudio_source(data)
            inner = NerfstudioDataParserConfig(data=source, eval_mode="interval", eval_interval=HOLDOUT_INTERVAL)
            # Images with alpha are an object on an empty background; photos are of a whole scene.
            scene_type, near_far = ("bounded" if alpha else "unbounded"), NERFSTUDIO_NEAR_FAR
        outputs = inner.setup()._generate_dataparser_outputs(split)
        metadata = {**outputs.metadata, SCENE_TYPE_METADATA_KEY: scene_type}
        if near_far is not None:
            metadata[NEAR_FAR_METADATA_KEY] = near_far
        outputs.metadata = metadata
        return outputs
