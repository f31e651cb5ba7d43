"""``ns-export-compressed``: write a trained run's field as one self-contained compressed file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import tyro
from nerfstudio.utils.rich_utils import CONSOLE

from nerfqat_plugin.compression.file_format import check_writable
from nerfqat_plugin.errors import UserInputError


@dataclass
class ExportCompressed:
    """Export a nerf-qat or vqad run to a compressed-field file (safetensors + JSON header, no pickle)."""

    load_config: Path
    """Path to the run's config.yml."""
    output_path: Path
    """File to write (written atomically: an interrupted export leaves no partial file)."""
    operating_point: Optional[str] = None
    """vqad: export only this operating point (e.g. levels=2); default: the full model."""

    def main(self) -> int:
        check_writable(self.output_path)  # before loading the run, which takes a while
        # Imported here: nerfstudio's method registry takes seconds to import, and a bad output path
        # should not wait for it.
        from nerfqat_plugin.models.compressible import CompressibleModel
        from nerfqat_plugin.scripts.run_loading import load_trained_pipeline

        pipeline, checkpoint = load_trained_pipeline(self.load_config)
        model = pipeline.model
        if not isinstance(model, CompressibleModel):
            raise UserInputError(
                f"{self.load_config}: method {type(model).__name__} has no compressed form (use nerf-qat or vqad)"
            )
        try:
            model.check_operating_point(self.operating_point)
        except ValueError as err:
            raise UserInputError(f"{self.load_config}: {err}") from err
        for name in model.operating_points():
            CONSOLE.print(f"  operating point {name}: {model.compressed_size_bytes(name)} bytes")
        size = model.export_compressed(self.output_path, self.operating_point)
        CONSOLE.print(f"Exported {checkpoint.name} to {self.output_path}: {size} bytes ({size / 1e6:.3f} MB)")
        return size


def entrypoint() -> None:
    """Console-script entry point."""
    tyro.extras.set_accent_color("bright_yellow")
    tyro.cli(ExportCompressed).main()


if __name__ == "__main__":
    entrypoint()
