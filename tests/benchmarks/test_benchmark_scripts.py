"""The GPU benchmark runner and the layer-sensitivity analysis, run on CPU on a tiny scene: the runner
writes its row and a loadable run (config.yml), and the analysis reads that run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
from conftest import make_llff_scene
from helpers import TINY_NERF_QAT, TINY_VQAD

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _script(
    name: str, args: list, cwd: Path, env: Optional[dict] = None, returncode: int = 0
) -> subprocess.CompletedProcess:
    """Run ``benchmarks/name`` with ``args`` in ``cwd`` (``env``: the environment's additions) and
    check its exit status."""
    command = [sys.executable, str(ROOT / "benchmarks" / name), *args]
    environment = {**os.environ, **env} if env else None
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, env=environment)
    output = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == returncode, f"{name} exited {proc.returncode}:\n{output}"
    return proc


def test_benchmark_run_is_loadable_and_its_layer_sensitivity_is_reported(tmp_path: Path) -> None:
    scene = make_llff_scene(tmp_path / "scene", views=16)  # two held-out test views
    rows = tmp_path / "rows.jsonl"
    runner_args = ["--data", str(scene), "--label", "tiny-fp32", "--iterations", "6", "--budget-s", "300"]
    runner_args += ["--stop-evaluation-at", "1"]  # a deadline long past: one view, and the row says so
    runner_args += ["--output-dir", str(tmp_path / "out"), "--results", str(rows), "--"]
    runner_args += TINY_NERF_QAT + ["--pipeline.model.quantize", "False", "--machine.device-type", "cpu"]
    runner_args += ["--pipeline.datamanager.train-num-rays-per-batch", "64"]
    _script("run_benchmark.py", runner_args, tmp_path)
    (row,) = [json.loads(line) for line in rows.read_text().splitlines()]
    assert row["label"] == "tiny-fp32" and row["iterations"] == 6 and row["psnr"] > 0
    assert row["kind"] == "experiment" and row["scene"] == "scene" and row["code_commit"]  # the one schema
    (checkpoint,) = (tmp_path / "out" / "tiny-fp32").glob("*/nerf-qat/*/nerfstudio_models/step-*.ckpt")
    assert row["checkpoint_bytes"] == checkpoint.stat().st_size
    assert row["num_test_views"] == 1 and row["evaluation_cut_short"] and len(row["per_view_psnr"]) == 1
    # The first view once more as trained (every sample): the file's default path agrees with it.
    assert row["fast_path_psnr_change_db"] == pytest.approx(row["per_view_psnr"][0] - row["psnr_first_view_as_trained"])
    assert abs(row["fast_path_psnr_change_db"]) < 0.05 and row["train_psnr_windows"] == []

    (config,) = (tmp_path / "out" / "tiny-fp32").glob("*/nerf-qat/*/config.yml")
    out = tmp_path / "sensitivity.json"
    _script("layer_sensitivity.py", ["--load-config", str(config), "--bits", "4", "--out", str(out)], tmp_path)
    result = json.loads(out.read_text())
    blocks = [r["block"] for r in result["rows"]]
    assert blocks[0] == "trunk.layers.0" and blocks[-1] == "all" and "bottleneck" in blocks
    assert all(r["psnr"] == pytest.approx(result["float_psnr"] - r["drop_db"]) for r in result["rows"])
    # Quantizing every block's weights to 4 bits changes the render (the swap really happens).
    assert result["rows"][-1]["drop_db"] != 0.0


def test_render_speed_rows_compare_the_fast_and_plain_paths_of_each_file(tmp_path: Path) -> None:
    import torch
    from helpers import tiny_nerf_qat_model, tiny_vqad_model, train_nerf_qat

    scene = make_llff_scene(tmp_path / "scene")
    torch.manual_seed(0)
    nerf = tiny_nerf_qat_model()
    train_nerf_qat(nerf, 6)
    nerf.export_compressed(tmp_path / "int8.nqz")
    tiny_vqad_model().export_compressed(tmp_path / "vqad.nqz")
    rows = tmp_path / "rows.jsonl"
    args = ["--data", str(scene), "--files", str(tmp_path / "int8.nqz"), str(tmp_path / "vqad.nqz")]
    args += ["--views", "2", "--repeats", "1", "--results", str(rows), "--top-kernels", "3", "--kernel-stacks", "2"]
    args += ["--rays-per-chunk", "256", "65536", "--model-options", "", "skip_hidden_samples=False"]
    proc = _script("render_speed.py", args, tmp_path)
    written = [json.loads(line) for line in rows.read_text().splitlines()]
    assert [r["label"] for r in written] == ["render-int8"] * 4 + ["render-vqad"] * 4
    assert [r["rays_per_chunk"] for r in written] == [256, 256, 65536, 65536] * 2
    assert [r.get("model_options") for r in written] == [None, "skip_hidden_samples=False"] * 4
    assert written[0]["psnr"] == pytest.approx(written[2]["psnr"], abs=1e-4)  # chunking changes no pixel
    assert written[0]["psnr"] == pytest.approx(written[1]["psnr"], abs=1e-3)  # nor, visibly, skipping
    for fast, other in ((0, 1), (2, 3), (4, 5), (6, 7)):  # as trained, measured once per file and chunk
        assert written[fast]["render_fps_plain"] == written[other]["render_fps_plain"]
    for row in written:
        assert row["kind"] == "render-speed" and row["num_test_views"] == 2 and row["render_fps"] > 0
        assert abs(row["psnr_change_db"]) < 0.05  # integer products and skipping keep the images
        assert len(row["top_kernels"]) == 3 and all(k["ms_per_call"] > 0 for k in row["top_kernels"])
        sites = [site for kernel in row["top_kernels"] for site in kernel.get("called_from", [])]
        assert sites and all(0 < len(site["frames"]) <= 2 for site in sites)  # where each op was called
        assert row["gpu_busy_ms_per_frame"] is None and row["host_syncs_per_frame"] is None  # CPU: no GPU
        assert row["field_rows_per_ray"] and all(rows > 0 for rows in row["field_rows_per_ray"].values())
    # Evaluating every sample, the counts are the samplers' (tiny vqad: proposals 16 + 8, then 8);
    # skipping evaluates no more than that.
    every, fast = written[5]["field_rows_per_ray"], written[4]["field_rows_per_ray"]
    assert every == {
        "VQADField.color_from_features": 8.0,
        "VQADField.density_from_unit": 8.0,
        "VQADProposalField.density_from_unit": 24.0,
    }
    assert all(fast[name] <= every[name] for name in every)
    assert "PSNR change" in proc.stdout


def test_render_speed_goes_on_past_a_measurement_that_fails(tmp_path: Path) -> None:
    from helpers import tiny_vqad_model

    scene = make_llff_scene(tmp_path / "scene")
    (tmp_path / "broken.nqz").write_bytes(b"not a compressed file")
    tiny_vqad_model().export_compressed(tmp_path / "vqad.nqz")
    rows = tmp_path / "rows.jsonl"
    args = ["--data", str(scene), "--files", str(tmp_path / "broken.nqz"), str(tmp_path / "vqad.nqz")]
    args += ["--views", "1", "--repeats", "1", "--results", str(rows)]
    args += ["--model-options", "", "fused_integer_trunk=True"]  # (nerf-qat's option: vqad skips it)
    proc = _script("render_speed.py", args, tmp_path, returncode=1)  # a measurement failed: the status says so
    failures = [line for line in proc.stdout.splitlines() if "failed:" in line]
    assert len(failures) == 2 and all("broken.nqz" in line for line in failures)
    (skipped,) = [line for line in proc.stdout.splitlines() if "skipped" in line]
    assert "vqad.nqz" in skipped and "fused_integer_trunk" in skipped
    assert [json.loads(line)["label"] for line in rows.read_text().splitlines()] == ["render-vqad"]


def test_step_profile_row_splits_a_step_into_phases_and_counts_field_samples(tmp_path: Path) -> None:
    scene = make_llff_scene(tmp_path / "scene")
    rows = tmp_path / "rows.jsonl"
    args = ["--data", str(scene), "--method", "vqad", "--label", "tiny-profile", "--warmup", "2", "--steps", "3"]
    args += ["--kernel-steps", "1", "--kernels", "4", "--output-dir", str(tmp_path / "out"), "--results", str(rows)]
    args += ["--kernel-stacks", "3"]
    args += ["--", *TINY_VQAD, "--machine.device-type", "cpu", "--pipeline.datamanager.train-num-rays-per-batch", "32"]
    proc = _script("profile_step.py", args, tmp_path)
    (row,) = [json.loads(line) for line in rows.read_text().splitlines()]
    assert row["kind"] == "step-profile" and row["rays_per_step"] == 32
    # 32 rays x the radiance field's samples per ray (the tiny model's num_nerf_samples).
    assert row["field_samples_per_step"] % 32 == 0 and row["field_samples_per_step"] > 0
    assert set(row["phase_ms"]) == {
        "ray batch",
        "sampler",
        "radiance field",
        "losses",
        "backward",
        "optimizer",
        "callbacks",
    }
    assert all(value >= 0 for value in row["phase_ms"].values()) and row["phase_ms"]["radiance field"] > 0
    assert len(row["top_kernels"]) == 4 and row["host_syncs_per_step"] is None  # CPU: no syncs to count
    assert row["gpu_busy_ms_per_step"] is None  # no GPU
    # Each torch op of the table says where it was called from: Python frames, innermost first.
    sites = [site for kernel in row["top_kernels"] for site in kernel.get("called_from", [])]
    assert sites and all(len(site["frames"]) <= 3 and site["ms_per_step"] >= 0 for site in sites)
    assert any(".py(" in frame for site in sites for frame in site["frames"])
    assert "field samples/s" in proc.stdout


def test_rebaking_a_file_changes_its_grid_and_nothing_else(tmp_path: Path) -> None:
    import torch
    from helpers import tiny_vqad_model

    from nerfqat_plugin.compression.file_format import read_compressed

    torch.manual_seed(0)
    tiny_vqad_model(metadata={"near_far": (2.0, 6.0), "scene_type": "bounded"}).export_compressed(tmp_path / "vqad.nqz")
    _script("rebake_occupancy.py", ["--out", "re", "--resolution", "16", "--max-ray-loss", "0.1", "vqad.nqz"], tmp_path)
    before, after = read_compressed(tmp_path / "vqad.nqz"), read_compressed(tmp_path / "re" / "vqad-grid16-0.1.nqz")
    assert after[1]["occupancy"]["resolution"] == [16, 16, 16] and before[1]["occupancy"]["resolution"] == [64] * 3
    assert sorted(before[0]) == sorted(after[0])
    assert all(torch.equal(before[0][name], after[0][name]) for name in before[0] if name != "occupancy")


def test_fused_trunk_speed_row_times_both_paths_and_compares_their_integers(tmp_path: Path) -> None:
    pytest.importorskip("triton")
    rows = tmp_path / "rows.jsonl"
    args = ["--layers", "3", "--width", "32", "--points", "100", "--repeats", "1", "--results", str(rows)]
    _script("fused_trunk_speed.py", args, tmp_path, env={"TRITON_INTERPRET": "1"})  # through Triton's interpreter
    (row,) = [json.loads(line) for line in rows.read_text().splitlines()]
    assert row["label"] == "fused-trunk-calibrated-8bit" and row["points"] == 100
    assert row["integer_path_ms"] > 0 and row["fused_ms"] > 0
    assert row["max_levels_apart"] <= 1 and row["share_apart"] < 0.01


def test_fused_lookup_speed_row_times_both_paths_and_compares_them(tmp_path: Path) -> None:
    pytest.importorskip("triton")
    rows = tmp_path / "rows.jsonl"
    args = ["--resolution", "6", "--points", "64", "--repeats", "1", "--results", str(rows)]
    _script("fused_lookup_speed.py", args, tmp_path, env={"TRITON_INTERPRET": "1"})  # through Triton's interpreter
    (row,) = [json.loads(line) for line in rows.read_text().splitlines()]
    assert row["label"] == "fused-lookup-6-4bit-8f" and row["points"] == 64
    assert row["torch_forward_backward_ms"] > 0 and row["fused_forward_backward_ms"] > 0
    assert row["max_value_difference"] <= 1e-6


def test_fused_lookup_speed_probed_row_times_the_default_grid_every_level_at_once(tmp_path: Path) -> None:
    pytest.importorskip("triton")
    rows = tmp_path / "rows.jsonl"
    args = ["--probed", "--points", "32", "--repeats", "1", "--results", str(rows)]
    _script("fused_lookup_speed.py", args, tmp_path, env={"TRITON_INTERPRET": "1"})  # through Triton's interpreter
    (row,) = [json.loads(line) for line in rows.read_text().splitlines()]
    assert row["label"] == "fused-probed-lookup-16-levels" and row["points"] == 32
    assert min(row[f"{path}_ms"] for path in ("torch_forward_backward", "fused_forward_backward")) > 0
    assert min(row[f"{path}_ms"] for path in ("per_level_no_grad", "all_levels_no_grad")) > 0
    assert row["max_value_difference"] <= 1e-6  # the kernel's argmax lookup is the straight-through value
