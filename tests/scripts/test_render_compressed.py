"""ns-render-compressed: frames or a video from a compressed file alone, and bad input in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from helpers import run
from PIL import Image


def test_frames_of_the_default_orbit_from_the_file_alone(bounded_vqad_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "frames"
    args = [str(bounded_vqad_file), "--output-path", str(out), "--frames", "3", "--size", "16"]
    proc = run("ns-render-compressed", args)
    frames = sorted(out.glob("*.png"))
    assert [f.name for f in frames] == ["00000.png", "00001.png", "00002.png"]
    images = [np.asarray(Image.open(f)) for f in frames]
    assert all(image.shape == (16, 16, 3) for image in images)
    assert not np.array_equal(images[0], images[1])  # the cameras move around the scene
    assert "Rendered 3 frames" in proc.stdout and "fps" in proc.stdout


def test_a_viewer_camera_path_sets_the_cameras_and_resolution(bounded_vqad_file: Path, tmp_path: Path) -> None:
    pose = torch.eye(4)
    pose[2, 3] = 4.0  # 4 units from the box's centre, looking at it
    camera_path = {
        "camera_type": "perspective",
        "render_height": 12,
        "render_width": 20,
        "camera_path": [{"camera_to_world": pose.flatten().tolist(), "fov": 50, "aspect": 20 / 12}] * 2,
    }
    (tmp_path / "path.json").write_text(json.dumps(camera_path))
    out = tmp_path / "frames"
    args = [str(bounded_vqad_file), "--output-path", str(out), "--camera-path-filename", str(tmp_path / "path.json")]
    run("ns-render-compressed", args)
    frames = sorted(out.glob("*.png"))
    assert len(frames) == 2 and np.asarray(Image.open(frames[0])).shape == (12, 20, 3)


def test_bad_input_is_one_line(bounded_vqad_file: Path, tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "bad.json").write_text("{}")
    file, out = str(bounded_vqad_file), ["--output-path", str(tmp_path / "o")]
    cases = [
        ([str(tmp_path / "missing.nqz"), *out], "no such file"),
        ([file, "--output-path", str(tmp_path / "a_file")], "exists and is not a folder"),
        ([file, "--output-path", str(tmp_path / "a_file" / "frames")], "cannot write here (Not a directory)"),
        ([file, *out, "--camera-path-filename", str(tmp_path / "bad.json")], "not a nerfstudio camera path"),
        ([file, *out, "--operating-point", "levels=9"], "operating point"),
    ]
    if shutil.which("ffmpeg") is None:
        cases.append(([str(bounded_vqad_file), "--output-path", str(tmp_path / "v.mp4")], "needs ffmpeg"))
    for args, message in cases:
        proc = run("ns-render-compressed", args, check=False)
        assert proc.returncode == 1, (args, proc.stderr[-500:])
        lines = [line for line in proc.stderr.splitlines() if line.strip() and "Warning" not in line]
        assert lines[-1].startswith("error: ") and message in lines[-1] and "Traceback" not in proc.stderr
