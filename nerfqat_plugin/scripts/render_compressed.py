"""``ns-render-compressed FILE --output-path OUT``: render a compressed-field file along a camera path.

The file alone is enough: with no camera path, the cameras orbit the scene (bounded and unbounded
files) or sway around the reference view (forward-facing files), from :func:`preview_cameras`. A
nerfstudio viewer camera path (``camera_path.json``) renders that path instead. Frames go to a folder
of PNGs, or to a video when the output ends in ``.mp4`` (needs ffmpeg), written under a temporary name
and renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Literal, Optional

import numpy as np
import torch
import tyro
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.utils.rich_utils import CONSOLE
from PIL import Image
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from nerfqat_plugin.compression.codec import load_compressed_model
from nerfqat_plugin.compression.file_format import check_writable
from nerfqat_plugin.errors import OutputError, UserInputError
from nerfqat_plugin.rendering import preview_cameras

VIDEO_SUFFIXES = (".mp4", ".mov")


def frame_name(index: int) -> str:
    """The PNG file name of frame ``index`` in an output folder."""
    return f"{index:05d}.png"


@dataclass
class RenderCompressed:
    """Render a nerf-qat or vqad compressed file to PNG frames or a video, with nothing but the file."""

    path: tyro.conf.Positional[Path]
    """The compressed-field file."""
    output_path: Path
    """A folder for PNG frames, or a .mp4 / .mov video (needs ffmpeg)."""
    camera_path_filename: Optional[Path] = None
    """A nerfstudio viewer camera path (camera_path.json); default: an orbit from the file alone."""
    frames: int = 48
    """Frames of the default orbit."""
    size: int = 400
    """Width and height in pixels of the default orbit's frames (bounded and unbounded scenes)."""
    fps: float = 24.0
    """Frames per second of a video."""
    operating_point: Optional[str] = None
    """vqad: render this operating point (e.g. levels=2); default: the file's."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to render (auto: the GPU when there is one)."""

    def cameras(self, model) -> Cameras:
        if self.camera_path_filename is None:
            return preview_cameras(model, count=self.frames, size=self.size)
        from nerfstudio.cameras.camera_paths import get_path_from_json

        try:
            return get_path_from_json(json.loads(self.camera_path_filename.read_text()))
        except (OSError, ValueError, KeyError) as err:
            raise UserInputError(f"{self.camera_path_filename}: not a nerfstudio camera path ({err})") from None

    def check_output(self) -> bool:
        """Whether the output is a video; raises OutputError for an output that cannot be written."""
        video = self.output_path.suffix.lower() in VIDEO_SUFFIXES
        if video and shutil.which("ffmpeg") is None:
            raise OutputError(f"{self.output_path}: writing a video needs ffmpeg on the PATH; give a folder for PNGs")
        if not video and self.output_path.exists() and not self.output_path.is_dir():
            raise OutputError(f"{self.output_path}: exists and is not a folder")
        # A video is one file; frames are files in the folder: probe where the first one goes.
        check_writable(self.output_path if video else self.output_path / frame_name(0))
        return video

    def main(self) -> List[Path]:
        if not self.path.is_file():
            raise UserInputError(f"{self.path}: no such file")
        video = self.check_output()
        device = "cuda" if self.device == "auto" and torch.cuda.is_available() else self.device
        device = "cpu" if device == "auto" else device
        model = load_compressed_model(self.path, device)
        if self.operating_point is not None:
            try:
                model.set_operating_point(self.operating_point)
            except ValueError as err:
                raise UserInputError(f"{self.path}: {err}") from None
        cameras = self.cameras(model).to(device)
        frames: List[np.ndarray] = []
        written: List[Path] = []
        start = time.perf_counter()
        columns = (TextColumn("rendering"), BarColumn(), TextColumn("{task.completed}/{task.total} frames"))
        with Progress(*columns, TimeRemainingColumn(), console=CONSOLE) as progress, torch.no_grad():
            task = progress.add_task("frames", total=len(cameras))
            for i in range(len(cameras)):
                rgb = model.get_outputs_for_camera(cameras[i : i + 1])["rgb"]
                image = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
                if video:
                    frames.append(image)
                else:
                    written.append(self.output_path / frame_name(i))
                    Image.fromarray(image).save(written[-1])
                progress.advance(task)
        seconds = time.perf_counter() - start
        if video:
            import mediapy

            partial = self.output_path.with_name(f".{self.output_path.name}.partial{self.output_path.suffix}")
            mediapy.write_video(partial, frames, fps=self.fps)
            os.replace(partial, self.output_path)
            written = [self.output_path]
        CONSOLE.print(
            f"Rendered {len(cameras)} frames of {self.path} in {seconds:.1f} s ({len(cameras) / seconds:.2f} fps, "
            f"{device}) to {self.output_path}"
        )
        return written


def entrypoint() -> None:
    """Console-script entry point."""
    tyro.extras.set_accent_color("bright_yellow")
    tyro.cli(RenderCompressed).main()


if __name__ == "__main__":
    entrypoint()
