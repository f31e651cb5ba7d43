"""Dataparsers registered through the ``nerfstudio.dataparser_configs`` entry point."""

from __future__ import annotations

from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from nerfqat_plugin.data.auto_dataparser import AutoDataParserConfig
from nerfqat_plugin.data.llff_dataparser import LLFFDataParserConfig

llff_dataparser = DataParserSpecification(
    config=LLFFDataParserConfig(),
    description="LLFF forward-facing scenes (poses_bounds.npy + images_N/), NeRF's split and NDC.",
)

auto_dataparser = DataParserSpecification(
    config=AutoDataParserConfig(),
    description="Detects LLFF, Blender or nerfstudio scene folders.",
)
