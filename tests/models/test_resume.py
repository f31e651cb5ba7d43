"""A run killed mid-training and resumed with ``ns-train --load-dir`` ends exactly where an uninterrupted
run ends: every parameter and buffer (activation ranges, weight scales, vqad's block masks), the QAT phase
and the exported file (CPU, same seed)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import pytest
import torch
from conftest import make_llff_scene
from helpers import TINY_NERF_QAT, TINY_VQAD, run

from nerfqat_plugin.scripts.run_loading import load_trained_pipeline

pytestmark = pytest.mark.slow
STEPS, KILLED_AFTER = 16, 10
CONFIGURATIONS = {
    # QAT from step 8 (half the run), calibrating steps 8-11: the kill falls inside calibration.
    "nerf-qat-int8": ("nerf-qat", TINY_NERF_QAT + ["--pipeline.model.calibration-steps", "4"]),
    "nerf-qat-int4": ("nerf-qat", TINY_NERF_QAT + ["--pipeline.model.calibration-steps", "4", "--pipeline.model.bits"]
                      + ["4"]),
    # The sparse level is pruned at a quarter of the run (step 4), before the kill.
    "vqad": ("vqad", TINY_VQAD + ["--pipeline.model.compact-checkpoints", "False"]),  # exact resume
}  # fmt: skip


def _train(method: str, options: List[str], scene: Path, out: Path, iterations: int, *extra: str) -> str:
    args = [method, "--data", str(scene), "--output-dir", str(out), "--max-num-iterations", str(iterations)]
    args += ["--machine.device-type", "cpu", "--vis", "tensorboard", "--viewer.quit-on-train-completion", "True"]
    args += ["--pipeline.datamanager.train-num-rays-per-batch", "64", "--steps-per-eval-batch", "1000"]
    args += ["--steps-per-eval-image", "1000", "--steps-per-eval-all-images", "1000", *extra]
    return run("ns-train", args + options).stdout


def _final(out: Path) -> Path:
    (config,) = out.glob("*/*/*/config.yml")
    return config


def _state(config: Path) -> Dict[str, torch.Tensor]:
    (checkpoint,) = (config.parent / "nerfstudio_models").glob("step-*.ckpt")
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["pipeline"]


@pytest.mark.parametrize("label", sorted(CONFIGURATIONS))
def test_a_killed_and_resumed_run_equals_an_uninterrupted_one(label: str, tmp_path: Path) -> None:
    method, options = CONFIGURATIONS[label]
    scene = make_llff_scene(tmp_path / "scene")
    _train(method, options, scene, tmp_path / "whole", STEPS, "--steps-per-save", "100")

    # The killed run: planned for 16 steps, its last checkpoint the one of step 10 (what a kill after
    # that save leaves); then a new process resumes with the remaining steps.
    keep = ["--save-only-latest-checkpoint", "False"]
    log = _train(method, options, scene, tmp_path / "killed", STEPS, "--steps-per-save", str(KILLED_AFTER), *keep)
    if method == "vqad":
        assert "vqad: step 4, kept blocks per sparse level" in log
    killed = _final(tmp_path / "killed").parent / "nerfstudio_models"
    for checkpoint in killed.glob("step-*.ckpt"):
        if checkpoint.name != f"step-{KILLED_AFTER:09d}.ckpt":
            checkpoint.unlink()
    remaining = str(STEPS - KILLED_AFTER - 1)
    resumed_log = _train(method, options, scene, tmp_path / "resumed", int(remaining), "--load-dir", str(killed))
    assert "kept blocks" not in resumed_log  # pruned once, before the kill

    whole, resumed = _state(_final(tmp_path / "whole")), _state(_final(tmp_path / "resumed"))
    assert set(whole) == set(resumed)
    different = [k for k in whole if isinstance(whole[k], torch.Tensor) and not torch.equal(whole[k], resumed[k])]
    assert not different, different[:5]
    extra = [k for k in whole if not isinstance(whole[k], torch.Tensor)]
    assert extra and all(whole[k] == resumed[k] for k in extra)  # QAT phase, pruning, proposal counters

    files = []
    for name in ("whole", "resumed"):
        pipeline, _ = load_trained_pipeline(_final(tmp_path / name))
        pipeline.model.export_compressed(tmp_path / f"{name}.nqz")
        files.append((tmp_path / f"{name}.nqz").read_bytes())
    assert files[0] == files[1]
