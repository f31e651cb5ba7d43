"""End to end through nerfstudio's own command-line tools on a tiny generated LLFF scene (CPU), for
both methods: ns-train -> ns-eval -> ns-export-compressed -> render from the file == model -> ns-export."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import make_llff_scene
from helpers import TINY_MODELS, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=sorted(TINY_MODELS))
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    method = request.param
    root = tmp_path_factory.mktemp(f"e2e-{method}")
    scene = make_llff_scene(root / "scene")
    proc = run(
        "ns-train",
        [method, "--data", str(scene), "--output-dir", str(root / "out"), "--max-num-iterations", "12"]
        + ["--steps-per-save", "12", "--machine.device-type", "cpu", "--vis", "tensorboard"]
        + ["--viewer.quit-on-train-completion", "True", "--pipeline.datamanager.train-num-rays-per-batch", "128"]
        + TINY_MODELS[method],
    )
    if method == "vqad":  # the trainer's run length reached the pruning schedule
        assert "vqad: step 3, kept blocks per sparse level" in proc.stdout
    (config,) = (root / "out").glob(f"scene/{method}/*/config.yml")
    return config


def test_train_eval_export_and_render_from_file(trained: Path, tmp_path: Path) -> None:
    compressed = tmp_path / "scene.nqz"
    run("ns-export-compressed", ["--load-config", str(trained), "--output-path", str(compressed)])
    assert compressed.stat().st_size > 0

    run("ns-eval", ["--load-config", str(trained), "--output-path", str(tmp_path / "eval.json")])
    results = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert results["size_bytes"] == compressed.stat().st_size
    assert 0 < results["psnr"] < 60 and 0 < results["ssim"] <= 1
    assert "lpips" in results and (results["lpips"] is None or results["lpips"] >= 0)

    from nerfstudio.utils.eval_utils import eval_setup

    from nerfqat_plugin.compression.codec import load_compressed_model

    _, pipeline, _, _ = eval_setup(trained, test_mode="test")
    loaded = load_compressed_model(compressed)
    camera = pipeline.datamanager.eval_dataset.cameras[0:1]
    with torch.no_grad():
        expected = pipeline.model.get_outputs_for_camera(camera)
        actual = loaded.get_outputs_for_camera(camera)
    for key in ("rgb", "depth", "accumulation"):
        assert torch.max(torch.abs(expected[key] - actual[key])) <= 1e-5, key

    for point in pipeline.model.operating_points():  # vqad: every operating point in ns-eval, exportable
        assert results[f"{point}/size_bytes"] == pipeline.model.compressed_size_bytes(point)
        assert 0 < results[f"{point}/psnr"] < 60 and f"{point}/lpips" in results
        out = tmp_path / f"{point}.nqz"
        args = ["--load-config", str(trained), "--output-path", str(out), "--operating-point", point]
        run("ns-export-compressed", args)
        assert out.stat().st_size == results[f"{point}/size_bytes"]


def test_nerfstudio_exports(trained: Path, tmp_path: Path) -> None:
    run("ns-export", ["cameras", "--load-config", str(trained), "--output-dir", str(tmp_path / "cams")])
    assert json.loads((tmp_path / "cams" / "transforms_train.json").read_text())
    run(
        "ns-export",
        ["pointcloud", "--load-config", str(trained), "--output-dir", str(tmp_path / "pc"), "--num-points", "500"]
        + ["--remove-outliers", "False", "--normal-method", "open3d"],
    )
    assert (tmp_path / "pc" / "point_cloud.ply").stat().st_size > 0


def test_help_lists_the_methods() -> None:
    listing = run("ns-train", ["--help"]).stdout
    assert "nerf-qat" in listing and "vqad" in listing


def test_bad_scene_is_one_clear_error(tmp_path: Path) -> None:
    scene = make_llff_scene(tmp_path / "scene")
    (scene / "poses_bounds.npy").unlink()
    args = ["nerf-qat", "--data", str(scene), "--machine.device-type", "cpu", "llff-data"]  # explicit subcommand
    proc = run("ns-train", args, check=False)
    assert proc.returncode != 0
    assert f"error: {scene / 'poses_bounds.npy'}: poses_bounds.npy not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_corrupt_compressed_file_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.nqz"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    proc = run("ns-compressed-info", [str(bad)], check=False)
    assert proc.returncode == 1
    assert f"error: {bad}" in proc.stderr and "Traceback" not in proc.stderr


def test_ns_train_stops_in_one_line_on_a_capture_with_missing_images(tmp_path: Path) -> None:
    from conftest import make_capture_scene

    scene = make_capture_scene(tmp_path / "capture", frames=12, present=9)
    args = ["--data", str(scene), "--output-dir", str(tmp_path / "out"), "--machine.device-type", "cpu"]
    proc = run("ns-train", ["nerf-qat", *args, "--vis", "tensorboard"], check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "3 of 12 frames name images that do not exist" in errors[0]


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in (root ignores permission bits: /sys then)."""
    if os.geteuid() == 0:
        return Path("/sys/nerfqat-test")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def _one_line_error(proc: subprocess.CompletedProcess, path: Path, problem: str) -> None:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith(f"error: {path}: {problem}"), errors


def test_export_bad_inputs_are_one_line_each_and_leave_the_old_file(trained: Path, tmp_path: Path) -> None:
    if "nerf-qat" not in trained.parts:
        pytest.skip("the command's input handling does not depend on the method; checked with nerf-qat")
    existing = tmp_path / "existing.nqz"
    existing.write_bytes(b"keep me")
    export = ["--load-config", str(trained), "--output-path"]

    folder = tmp_path / "a-folder"
    folder.mkdir()
    _one_line_error(run("ns-export-compressed", [*export, str(folder)], check=False), folder, "is a directory")

    unwritable = _unwritable_folder(tmp_path) / "out.nqz"
    proc = run("ns-export-compressed", [*export, str(unwritable)], check=False)
    _one_line_error(proc, unwritable, "cannot write here")

    not_yaml = tmp_path / "config.yml"
    not_yaml.write_bytes(bytes(range(256)))
    proc = run("ns-export-compressed", ["--load-config", str(not_yaml), "--output-path", str(existing)], check=False)
    _one_line_error(proc, not_yaml, "not a nerfstudio config.yml")

    (checkpoint,) = (trained.parent / "nerfstudio_models").glob("step-*.ckpt")
    whole = checkpoint.read_bytes()
    try:
        checkpoint.write_bytes(whole[: len(whole) // 2])
        proc = run("ns-export-compressed", [*export, str(existing)], check=False)
        _one_line_error(proc, checkpoint, "unreadable checkpoint")
        proc = run("ns-eval", ["--load-config", str(trained), "--output-path", str(tmp_path / "e.json")], check=False)
        _one_line_error(proc, checkpoint, "unreadable checkpoint")  # nerfstudio's loader, our message
    finally:
        checkpoint.write_bytes(whole)
    assert existing.read_bytes() == b"keep me"


def readme_block(marker: str) -> list[list[str]]:
    """The commands of README.md's code block after ``<!-- marker -->``, continuation lines joined."""
    lines = (Path(__file__).resolve().parents[1] / "README.md").read_text().splitlines()
    start = lines.index(f"<!-- {marker} -->") + 2  # past the marker and the opening fence
    block = "\n".join(lines[start : lines.index("```", start)]).replace("\\\n", " ")
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def test_the_readme_cpu_quickstart_runs_as_written(tmp_path: Path) -> None:
    """The README's CPU quickstart, verbatim but for the scene path (a tiny generated scene)."""
    scene = make_llff_scene(tmp_path / "scene")
    for command in readme_block("cpu-quickstart"):
        args = [str(scene) if a == "path/to/scene" else a for a in command[1:]]
        if any("<run>" in a for a in args):
            (run_dir,) = (tmp_path / "outputs" / "scene" / "nerf-qat").iterdir()
            args = [a.replace("<run>", run_dir.name) for a in args]
        proc = run(command[0], args, cwd=tmp_path)
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert json.loads((tmp_path / "eval.json").read_text())["results"]["psnr"] > 0
    assert (tmp_path / "scene.nqz").stat().st_size > 0


def test_vqad_with_the_occupancy_sampler_trains_through_ns_train_and_renders_from_its_file(tmp_path: Path) -> None:
    """nerfstudio's trainer with the occupancy grid's updates, sample-sized batches (the real pixel
    sampler resized each step), the grid in the checkpoint, and a file that marches."""
    from conftest import make_blender_scene
    from helpers import TINY_VQAD

    scene = make_blender_scene(tmp_path / "scene")
    occupancy = ["--pipeline.model.sampler", "occupancy", "--pipeline.model.march-steps", "32"]
    occupancy += ["--pipeline.model.occupancy-resolution", "16", "--pipeline.model.occupancy-update-every", "2"]
    occupancy += ["--pipeline.model.target-samples-per-batch", "1024"]
    run(
        "ns-train",
        ["vqad", "--data", str(scene), "--output-dir", str(tmp_path / "out"), "--max-num-iterations", "8"]
        + ["--steps-per-save", "8", "--machine.device-type", "cpu", "--vis", "tensorboard"]
        + ["--viewer.quit-on-train-completion", "True", "--pipeline.datamanager.train-num-rays-per-batch", "64"]
        + TINY_VQAD
        + occupancy,
    )
    (config,) = (tmp_path / "out").glob("scene/vqad/*/config.yml")
    (checkpoint,) = config.parent.glob("nerfstudio_models/*.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["pipeline"]
    (density,) = [value for key, value in state.items() if key.endswith("occupancy_estimator.density")]
    assert float(density.max()) > 0  # the trainer ran the grid's updates
    compressed = tmp_path / "scene.nqz"
    run("ns-export-compressed", ["--load-config", str(config), "--output-path", str(compressed)])
    from nerfqat_plugin.compression.codec import load_compressed_model

    loaded = load_compressed_model(compressed)
    assert loaded.marches_occupancy()
    from helpers import vqad_rays

    with torch.no_grad():
        rgb = loaded(vqad_rays(16, bounded=True))["rgb"]
    assert bool(torch.isfinite(rgb).all())
