"""A dataparser that recognises the scene format from the folder's contents.

So that ``ns-train nerf-qat --data SCENE`` works with no subcommand on LLFF, Blender and
nerfstudio scenes; the explicit dataparser subcommands still work as usual.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Type

from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

from nerfqat_plugin.data.llff_dataparser import LLFFDataParserConfig
from nerfqat_plugin.errors import DataError
from nerfqat_plugin.model_components.ray_setup import NEAR_FAR_METADATA_KEY

SceneFormat = Literal["llff", "blender", "nerfstudio"]

BLENDER_NEAR_FAR = (2.0, 6.0)
"""NeRF's bounds for the synthetic scenes (cameras at radius 4 around a unit-sized object)."""
NERFSTUDIO_NEAR_FAR = (0.05, 4.0)
"""nerfstudio scenes are scaled into [-1, 1]; rays are sampled up to beyond the box's far corner."""


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


@dataclass
class AutoDataParserConfig(DataParserConfig):
    """Detects LLFF, Blender or nerfstudio scenes and parses them with their own parser's defaults."""

    _target: Type = field(default_factory=lambda: AutoDataParser)
    data: Path = Path()
    """Scene folder (or a nerfstudio transforms.json)."""
    llff: LLFFDataParserConfig = field(default_factory=LLFFDataParserConfig)
    """Options used when the folder is an LLFF scene."""


@dataclass
class AutoDataParser(DataParser):
    """Dispatches to the LLFF, Blender or nerfstudio dataparser."""

    config: AutoDataParserConfig

    def _inner(self) -> DataParser:
        data = Path(self.config.data)
        fmt = detect_scene_format(data)
        if fmt == "llff":
            inner: DataParserConfig = dataclasses.replace(self.config.llff, data=data)
        elif fmt == "blender":
            inner = BlenderDataParserConfig(data=data)
        else:
            inner = NerfstudioDataParserConfig(data=data)
        return inner.setup()

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        data = Path(self.config.data)
        fmt = detect_scene_format(data)
        outputs = self._inner()._generate_dataparser_outputs(split)
        if fmt != "llff":
            near_far = BLENDER_NEAR_FAR if fmt == "blender" else NERFSTUDIO_NEAR_FAR
            outputs.metadata = {**outputs.metadata, NEAR_FAR_METADATA_KEY: near_far}
        return outputs
