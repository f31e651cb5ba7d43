"""The comparison command (benchmarks/compare.py): plan, resume, failure reporting and the report."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import make_llff_scene

ROOT = Path(__file__).resolve().parents[2]


def _load_benchmark_script(name: str):
    """Import ``benchmarks/<name>.py`` (a script folder, not a package) as module ``name``."""
    if str(ROOT / "benchmarks") not in sys.path:  # the scripts import each other (rows, compare)
        sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


compare = _load_benchmark_script("compare")


def _row(label: str, method: str, psnr: float, budget: float = 420.0, kind: str = "comparison", **extra) -> dict:
    return {
        "kind": kind,
        "label": label,
        "scene": "fern",
        "code_commit": "0123abc",
        "method": method,
        "budget_s": budget,
        "psnr": psnr,
        "ssim": 0.7,
        "lpips": None,
        "train_seconds": 400.0,
        "iterations_per_s": 30.0,
        "render_fps": 1.0,
        "gpu": "NVIDIA H200",
        "date": "2026-11-21T00:00:00+00:00",
        "command": f"python benchmarks/run_benchmark.py --label {label}",
        **extra,
    }


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(compare, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(compare, "DOCS", tmp_path / "docs")
    (tmp_path / "results").mkdir()
    return tmp_path


def test_plan_covers_both_tables_and_configures_peers_fairly(tiny_llff: Path) -> None:
    bounds, scene_type = compare.scene_space(tiny_llff)
    assert scene_type == "forward-facing"
    jobs = {job.label: job for job in compare.plan("tiny", tiny_llff, bounds)}
    assert {"nerf-fp32", "nerf-qat-int8", "nerf-qat-int8-unfused", "nerf-qat-int4", "vqad"} <= set(jobs)
    assert {"vanilla-nerf", "nerfacto", "instant-ngp", "tensorf"} <= set(jobs)
    for peer in ("nerfacto", "tensorf"):
        args = jobs[peer].args
        assert args[args.index("--pipeline.model.camera-optimizer.mode") + 1] == "off"
    assert f"{bounds[0]:.4f}" in jobs["vanilla-nerf"].args and jobs["vanilla-nerf"].args[-1] == "auto-data"
    assert "white" not in jobs["instant-ngp"].args  # forward-facing: the peers' own backgrounds
    bounded = {job.label: job for job in compare.plan("lego", tiny_llff, (2.0, 6.0), white_background=True)}
    for peer in ("vanilla-nerf", "nerfacto", "instant-ngp", "tensorf"):
        args = bounded[peer].args
        assert args[args.index("--pipeline.model.background-color") + 1] == "white"  # like the test images


def test_resume_skips_configurations_with_a_row_for_the_same_budget(dirs: Path) -> None:
    rows = [_row("vqad", "vqad", 22.0, budget=270.0), _row("nerf-fp32", "nerf-qat", 24.0)]
    compare.rows_path("fern").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert set(compare.load_rows("fern", 420.0)) == {"nerf-fp32"}
    assert set(compare.load_rows("fern")) == {"vqad", "nerf-fp32"}


def test_report_has_both_tables_operating_points_null_lpips_and_the_plot(dirs: Path) -> None:
    points = [
        {"operating_point": f"levels={k}", "file_bytes": 10**k, "psnr": 18.0 + k, "ssim": 0.5, "lpips": None}
        for k in (1, 2, 3)
    ]
    rows = [
        _row("nerf-qat-int8", "nerf-qat", 24.0, file_bytes=1221512),
        _row("nerf-qat-int8-unfused", "nerf-qat", 23.5, file_bytes=1221512),
        _row("vqad", "vqad", 21.0, file_bytes=1000, operating_points=points),
        _row("nerfacto", "nerfacto", 25.8, param_bytes=88_100_000, lpips=0.1),
    ]
    compare.rows_path("fern").write_text("".join(json.dumps(r) + "\n" for r in rows))
    compare.report(["fern"])
    text = (dirs / "docs" / "benchmarks.md").read_text()
    assert "| nerf-qat-int8 | 24.00 | 0.700 |" in text and "| nerf-qat-int8-unfused | 23.50 | 0.700 |" in text
    assert "| vqad (levels=2) | 20.00 | 0.500 | null | 0.000 |" in text
    assert "| nerfacto | 25.80 | 0.700 | 0.100 | 88.100 |" in text
    assert (dirs / "docs" / "benchmarks_fern.png").stat().st_size > 10_000
    table = compare.table_rows(compare.load_rows("fern"))
    assert len(table) == 2 + 3 + 1  # vqad once per operating point
    # Which rows are ours comes from the plugin's registry of compressible methods.
    assert {r["method"]: r["ours"] for r in table} == {"nerf-qat": True, "vqad": True, "nerfacto": False}


def test_a_failing_configuration_is_reported_and_the_others_go_on(tmp_path: Path) -> None:
    scene = make_llff_scene(tmp_path / "scene")
    command = [sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--scene", "tiny", "--data", str(scene)]
    command += ["--results-dir", str(tmp_path / "results"), "--docs-dir", str(tmp_path / "docs")]
    command += ["--log-dir", str(tmp_path / "logs"), "--gpus", "2", "--budget-s", "1", "--poll-s", "0.5"]
    command += ["--only", "vqad,tensorf", "--common-args", "--no-such-option 1"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[compare] FAILED vqad" in proc.stdout and "[compare] FAILED tensorf" in proc.stdout
    assert "failed: vqad, tensorf" in proc.stdout or "failed: tensorf, vqad" in proc.stdout
    assert (tmp_path / "logs" / "tiny_vqad.log").is_file()


def test_budget_planner_fits_the_budget_and_replans_after_a_slow_start() -> None:
    planner = _load_benchmark_script("run_benchmark").BudgetPlanner(budget_s=100.0)
    # 5 it/s for the first 300 steps (start-up), 50 it/s afterwards.
    elapsed, step, plans = 0.0, 0, []
    while planner.stop_at is None or step + 1 < planner.stop_at:
        step += 1
        elapsed += 0.2 if step <= 300 else 0.02
        plan = planner.update(step, elapsed)
        if plan is not None:
            plans.append(plan)
        assert step < 10_000, "the planner never ended the run"
    first_total, first_rate = plans[0]
    assert first_rate == pytest.approx(5.0, rel=0.01) and first_total < 500  # planned from the slow start
    assert len(plans) >= 2, "the run ended at the slow start's plan with most of its budget left"
    assert 0.9 * 100.0 <= elapsed <= 100.0  # the replanned run uses the budget, and no more


def test_longest_configuration_starts_first_and_late_gpus_take_what_still_fits() -> None:
    args = argparse.Namespace(budget_s=150.0, margin_s=45.0, eval_s=80.0, deadline_s=540.0)
    jobs = {job.label: job for job in compare.plan("lego", Path("."), (2.0, 6.0), white_background=True)}
    assert jobs["vqad"].evaluations == 3
    assert jobs["vqad"].runner_args == ["--operating-points", "largest:3"]
    pending = sorted(jobs.values(), key=lambda j: -j.expected_s(150.0, 45.0, 80.0))
    assert compare.next_job(pending, 0.0, args).label == "vqad"  # 435 s: only fits at the start
    assert compare.next_job(pending, 0.0, args).label == "nerf-fp32"  # then plan order among equals
    # At 250 s a 275 s configuration still fits the 540 s deadline; at 300 s none does.
    assert compare.next_job(pending, 250.0, args).label == "nerf-qat-int8"
    before = len(pending)
    assert compare.next_job(pending, 300.0, args) is None and len(pending) == before
    # A configuration that no longer fits is passed over for a shorter one that does.
    long, short = compare.Job("long", "vqad", evaluations=3), compare.Job("short", "tensorf")
    assert compare.next_job([long, short], 200.0, args) is short


def test_test_views_come_in_an_order_whose_every_prefix_spans_the_path() -> None:
    indices = _load_benchmark_script("run_benchmark").test_view_indices
    order = indices(25, None)
    assert sorted(order) == list(range(25)) and order[:3] == [0, 24, 12]
    for k in range(1, 5):  # the first 2**k + 1 views leave no gap wider than 24 / 2**k
        prefix = sorted(order[: 2**k + 1])
        assert max(b - a for a, b in zip(prefix, prefix[1:], strict=False)) <= -(-24 // 2**k)
    spread = indices(200, 5)
    assert sorted(spread) == [0, 50, 100, 149, 199] and spread[:2] == [0, 199]
    assert indices(1, None) == [0] and indices(0, None) == []


def test_a_view_out_of_gpu_memory_is_rendered_again_in_smaller_chunks() -> None:
    import torch

    run_benchmark = _load_benchmark_script("run_benchmark")

    class Model:  # runs out of memory above a chunk of `fits` rays
        def __init__(self, fits: int) -> None:
            self.config, self.fits, self.chunks = argparse.Namespace(eval_num_rays_per_chunk=1 << 16), fits, []

        def get_outputs_for_camera(self, camera: str) -> dict:
            self.chunks.append(self.config.eval_num_rays_per_chunk)
            if self.config.eval_num_rays_per_chunk > self.fits:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return {"rgb": camera}

    model = Model(fits=1 << 14)
    assert run_benchmark.render_camera(model, "view") == {"rgb": "view"}
    assert model.chunks == [1 << 16, 1 << 15, 1 << 14] and model.config.eval_num_rays_per_chunk == 1 << 14
    assert run_benchmark.render_camera(model, "next") == {"rgb": "next"} and model.chunks[-1] == 1 << 14
    hopeless = Model(fits=0)  # below the smallest chunk the error is the caller's
    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_benchmark.render_camera(hopeless, "view")
    assert hopeless.chunks[-1] == run_benchmark.MIN_EVAL_RAYS_PER_CHUNK


def test_jobs_sharing_a_gpu_evaluate_in_smaller_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    run_benchmark = _load_benchmark_script("run_benchmark")
    chunks = {jobs: run_benchmark.eval_rays_per_chunk(jobs) for jobs in (1, 2, 3, 4, 5, 8, 9, 16, 10**6)}
    assert chunks == {
        1: 1 << 16,
        2: 1 << 16,
        3: 1 << 15,
        4: 1 << 15,
        5: 1 << 14,
        8: 1 << 14,
        9: 1 << 13,
        16: 1 << 13,
        10**6: run_benchmark.MIN_EVAL_RAYS_PER_CHUNK,
    }
    monkeypatch.setenv("JOBS_PER_GPU", "9")  # what compare.py tells each job
    assert run_benchmark.jobs_per_gpu() == 9


def _launched_commands(
    jobs: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobs_per_gpu: int = 1, scene: str = "", data=None
) -> list:
    """The commands ``compare.run_jobs`` starts for ``jobs`` on one GPU (processes that end at once)."""
    launched = []

    class _Done:
        returncode = 0

        def __init__(self, command, **_):
            launched.append(command)

        def poll(self):
            return 0

    monkeypatch.setattr(compare.subprocess, "Popen", _Done)
    args = argparse.Namespace(budget_s=10.0, margin_s=0.0, eval_s=0.0, deadline_s=100.0, jobs_per_gpu=jobs_per_gpu)
    args.log_dir, args.output_dir, args.poll_s, args.progress_s, args.threads_per_job = tmp_path, tmp_path, 0, 60, 1
    args.scene, args.data = scene, data
    assert compare.run_jobs(jobs, args, gpus=1) == []
    return launched


def test_jobs_are_told_when_to_stop_evaluating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = compare.time.time()
    job = compare.Job("nerf-qat-int8", "nerf-qat")
    (command,) = _launched_commands([job], tmp_path, monkeypatch, scene="fern", data=Path("fern"))
    stop = float(command[command.index("--stop-evaluation-at") + 1])
    assert before + 100.0 - compare.EVALUATION_RESERVE_S - 1 <= stop <= compare.time.time() + 100.0


def test_jobs_of_one_label_on_two_scenes_write_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = [compare.Job("nerf-qat-int8", "nerf-qat", scene=s, data=Path(s)) for s in ("fern", "horns")]
    launched = _launched_commands(jobs, tmp_path, monkeypatch, jobs_per_gpu=2)
    folders = {Path(c[c.index("--output-dir") + 1]) for c in launched}
    assert folders == {tmp_path / "fern", tmp_path / "horns"}


def test_gpu_slots_map_into_the_callers_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 1")
    assert [compare.visible_gpu(slot) for slot in (0, 1)] == ["3", "1"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert compare.visible_gpu(2) == "2"


class _FiveLevels:
    def operating_points(self) -> list:
        return [f"levels={k}" for k in range(1, 6)]

    def check_operating_point(self, name: str) -> None:
        if name not in self.operating_points():
            raise ValueError(f"unknown operating point {name!r}")


def test_operating_points_resolve_largest_n_and_refuse_unknown_names_before_training() -> None:
    run_benchmark = _load_benchmark_script("run_benchmark")
    model = _FiveLevels()
    assert run_benchmark.resolve_operating_points(model, ["largest:3"]) == ["levels=3", "levels=4", "levels=5"]
    assert run_benchmark.resolve_operating_points(model, ["levels=1"]) == ["levels=1"]
    with pytest.raises(SystemExit, match="unknown operating point"):
        run_benchmark.resolve_operating_points(model, ["levels=9"])
    with pytest.raises(SystemExit, match="positive N"):
        run_benchmark.resolve_operating_points(model, ["largest:x"])


scene_suite = _load_benchmark_script("scene_suite")


def test_suite_plans_four_configurations_per_scene_with_the_peers_background(tmp_path: Path) -> None:
    from conftest import make_blender_scene, make_capture_scene

    for maker, white in ((make_blender_scene, True), (make_capture_scene, False)):
        jobs = scene_suite.suite_jobs("s", maker(tmp_path / maker.__name__), tmp_path)
        assert [j.label for j in jobs] == list(scene_suite.SUITE)
        assert all(j.results == tmp_path / "s.jsonl" and j.scene == "s" for j in jobs)
        assert ("white" in jobs[-1].args) is white  # object scenes' test images are composited on white
        vqad = next(j for j in jobs if j.method == "vqad")
        assert vqad.runner_args == ["--no-operating-points"]


def test_render_speed_pass_takes_each_scenes_files_and_latest_peer_and_marches_bounded_scenes(tmp_path: Path) -> None:
    from conftest import make_blender_scene

    scenes = {
        "chair": make_blender_scene(tmp_path / "data" / "chair"),
        "fern": make_llff_scene(tmp_path / "data" / "fern"),
    }
    out = tmp_path / "out"
    assert scene_suite.render_speed_command("chair", scenes["chair"], out, tmp_path) is None  # nothing exported
    for scene in scenes:
        for label in ("nerf-qat-int8", "vqad"):
            (out / scene / label).mkdir(parents=True)
            (out / scene / label / "model.nqz").write_bytes(b"")
        for age, run in ((100, "new"), (200, "old")):
            (out / scene / "nerfacto" / run).mkdir(parents=True)
            (out / scene / "nerfacto" / run / "config.yml").write_text(run)
            os.utime(out / scene / "nerfacto" / run / "config.yml", (1e9 - age, 1e9 - age))
    commands = {s: scene_suite.render_speed_command(s, data, out, tmp_path) for s, data in scenes.items()}
    for scene, command in commands.items():
        files = command[command.index("--files") + 1 : command.index("--views")]
        assert files == [str(out / scene / label / "model.nqz") for label in ("nerf-qat-int8", "vqad")]
        assert Path(command[command.index("--peer-config") + 1]).read_text() == "new"
        assert command[command.index("--results") + 1] == str(tmp_path / f"{scene}.jsonl")
    options = ["--model-options", "", "occupancy_guided_sampling=True", "fused_integer_trunk=True"]
    assert commands["chair"][-5:] == [*options, "march_occupied_space=True"]
    assert commands["fern"][-4:] == options  # forward-facing: nothing to march


def test_render_speed_commands_run_one_per_gpu_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    launched, running = [], []

    class _Proc:
        def __init__(self, command, env, **_):
            launched.append((command[-1], env["CUDA_VISIBLE_DEVICES"]))
            running.append(command[-1])
            self.name = command[-1]

        def wait(self):
            assert len(running) <= 2  # never more at once than GPUs
            running.remove(self.name)
            return 1 if self.name == "c" else 0

    monkeypatch.setattr(compare.subprocess, "Popen", _Proc)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    failed = scene_suite.run_render_speed([["x", "a"], ["x", "b"], ["x", "c"]], gpus=2, log_dir=tmp_path)
    assert launched == [("a", "0"), ("b", "1"), ("c", "0")]
    assert failed == [str(tmp_path / "render_speed_2.log")]


def test_render_speed_table_shows_the_latest_row_of_each_file_chunk_and_options() -> None:
    def speed(label: str, fps: float, **extra) -> dict:
        row = {"kind": "render-speed", "label": label, "render_fps": fps, "render_resolution": [800, 800]}
        return {**row, "num_test_views": 3, "code_commit": "abc1234", **extra}

    rows = [
        speed("render-vqad", 1.0, psnr=30.0, psnr_change_db=-0.01, render_fps_plain=0.5),
        speed("render-vqad", 2.0, psnr=30.0, psnr_change_db=-0.02, render_fps_plain=0.5, gpu="NVIDIA H100 80GB HBM3"),
        speed("render-vqad", 9.0, psnr=29.5, model_options="march_occupied_space=True"),
        speed("render-nerfacto", 0.7, psnr=31.0),
        {"kind": "suite", "label": "vqad", "render_fps": 5.0},
        speed("render-vqad", 0.1, psnr=30.0, gpu="cpu"),  # a CPU's frame rate: not in the GPU table
    ]
    lines = scene_suite.render_speed_table(rows)
    body = [line for line in lines if line.startswith("| vqad") or line.startswith("| nerfacto")]
    assert len(body) == 3
    assert body[0].startswith("| vqad |  | 800×800 | 3 | 2.00 | 0.50 | 30.00 | -0.020 dB |")  # the later row
    assert body[0].endswith("| H100 | abc1234 |")  # frame rates name their card
    assert body[1].startswith("| vqad | march_occupied_space=True | 800×800 | 3 | 9.00 | — | 29.50 |")
    assert body[2].startswith("| nerfacto |  | 800×800 | 3 | 0.70 | — | 31.00 |  |")
    assert scene_suite.render_speed_table(rows[-1:]) == []


def test_a_candidate_default_runs_beside_its_base_on_every_scene_and_is_reported_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from conftest import make_blender_scene

    make_blender_scene(tmp_path / "data" / "chair")
    options = ["--pipeline.model.activation-bits", "8"]
    argv = ["--data-root", str(tmp_path / "data"), "--results-dir", str(tmp_path), "--dry-run"]
    assert scene_suite.main([*argv, "--candidate", "int4-a8", "--beside", "nerf-qat-int8", "--", *options]) == 0
    planned = [line for line in capsys.readouterr().out.splitlines() if "would run" in line]
    assert len(planned) == 3 and "chair nerf-qat-int4: nerf-qat --pipeline.model.bits 4" in planned[0]
    assert planned[0].endswith("bits 4") and planned[1].endswith("bits 4 --pipeline.model.activation-bits 8")
    assert planned[2].endswith("chair nerf-qat-int8: nerf-qat --pipeline.model.bits 8")
    assert scene_suite.CANDIDATE_KIND in _load_benchmark_script("rows").KINDS  # run_benchmark --kind accepts it
    with pytest.raises(SystemExit, match="not a suite configuration"):
        scene_suite.main([*argv, "--candidate", "x", "--beside", "int3", "--", *options])
    with pytest.raises(SystemExit):  # a candidate needs its options, and options a candidate
        scene_suite.main([*argv, "--candidate", "int4-a8"])
    rows = [
        _row("nerf-qat-int4", "nerf-qat", 19.0, kind="candidate", file_bytes=670_000),
        _row("int4-a8", "nerf-qat", 26.5, kind="candidate", file_bytes=680_000),
        _row("nerf-qat-int8", "nerf-qat", 27.0, kind="candidate", file_bytes=1_130_000),
        _row("nerf-qat-int4", "nerf-qat", 30.0, kind="suite"),  # the suite's own rows stay apart
    ]
    (tmp_path / "chair.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = scene_suite.candidate_table("int4-a8", "nerf-qat-int4", tmp_path, ["nerf-qat-int8"])
    assert "| chair | 19.00 dB, 0.67 MB | 26.50 dB, 0.68 MB | 27.00 dB, 1.13 MB | +7.50 dB |" in table
    assert "fern" not in table
    results = scene_suite.results_markdown(tmp_path)
    assert "| nerf-qat-int4 | 30.00 |" in results and "26.50" not in results and "19.00" not in results


def test_rows_older_than_their_defaults_are_marked_and_run_again(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import make_blender_scene

    monkeypatch.setattr(scene_suite, "DEFAULTS_SINCE", {"vqad": "2026-11-22T00:00:00+00:00"})
    rows = [
        _row("vqad", "vqad", 22.0, budget=300.0, kind="suite", scene="chair"),  # 2026-11-21: before
        _row("nerf-qat-int8", "nerf-qat", 25.0, budget=300.0, kind="suite", scene="chair"),
    ]
    (tmp_path / "chair.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = scene_suite.readme_table(tmp_path)
    chair = next(line for line in table.splitlines() if line.startswith("| chair")).split(" | ")
    assert chair[1].startswith("25.00 dB") and not chair[1].endswith("†")  # no default change for int8
    assert chair[3].startswith("22.00 dB") and chair[3].endswith("†") and "previous defaults" in table
    assert "previous defaults" in scene_suite.results_markdown(tmp_path)
    make_blender_scene(tmp_path / "data" / "chair")
    argv = ["--data-root", str(tmp_path / "data"), "--results-dir", str(tmp_path), "--dry-run", "--budget-s", "300"]
    assert scene_suite.main([*argv, "--only", "vqad,nerf-qat-int8"]) == 0
    planned = [line for line in capsys.readouterr().out.splitlines() if "would run" in line]
    assert [line.split(":")[0] for line in planned] == ["[suite] would run chair vqad"]  # int8's row stands
    rows[0]["date"] = "2026-11-23T00:00:00+00:00"  # measured with today's defaults: neither marked nor rerun
    (tmp_path / "chair.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert "†" not in scene_suite.readme_table(tmp_path)


def test_a_default_change_dated_per_scene_marks_only_those_scenes_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    # A default of the occupancy sampler changes lego's runs, not fern's (proposals).
    monkeypatch.setattr(scene_suite, "DEFAULTS_SINCE", {"vqad": {"lego": "2026-11-22T00:00:00+00:00"}})
    before = "2026-11-21T00:00:00+00:00"
    assert scene_suite.previous_defaults(_row("vqad", "vqad", 30.0, kind="suite", scene="lego", date=before))
    assert not scene_suite.previous_defaults(_row("vqad", "vqad", 24.0, kind="suite", scene="fern", date=before))
    after = "2026-11-23T00:00:00+00:00"
    assert not scene_suite.previous_defaults(_row("vqad", "vqad", 30.0, kind="suite", scene="lego", date=after))


def test_results_doc_is_generated_per_scene_with_the_gap_to_nerfacto(tmp_path: Path) -> None:
    rows = [
        _row("nerf-qat-int8", "nerf-qat", 25.0, kind="suite", file_bytes=1_100_000, jobs_per_gpu=1),
        _row("nerfacto", "nerfacto", 26.5, kind="suite", param_bytes=50_000_000),
        _row("vqad", "vqad", 12.0, kind="suite", file_bytes=900_000, collapse_warning=True),
        _row("nerf-qat-int8", "nerf-qat", 30.0, kind="experiment"),  # another kind: not in the table
    ]
    (tmp_path / "fern.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    constants = {"fern": {"white": 5.0, "black": 4.0, "mean_colour": 12.0}}
    (tmp_path / scene_suite.CONSTANT_IMAGES.name).write_text(json.dumps(constants))
    text = scene_suite.results_markdown(tmp_path)
    assert "## fern" in text and "## lego" not in text
    assert "| nerf-qat-int8 | 25.00 |" in text and "-1.50 dB" in text and "collapse warning" in text
    assert text.index("| nerf-qat-int8") < text.index("| vqad") < text.index("| nerfacto")  # suite order
    assert "30.00" not in text and "holds 1 more rows" in text
    # 12 dB is within 8 dB of the white image's 5 dB; 25 dB is not.
    vqad_line = next(line for line in text.splitlines() if line.startswith("| vqad"))
    int8_line = next(line for line in text.splitlines() if line.startswith("| nerf-qat-int8"))
    assert "within 8 dB of a blank image" in vqad_line and "blank" not in int8_line
    assert "5.00 dB (white)" in text


def test_gap_to_nerfacto_compares_the_test_views_both_rendered(tmp_path: Path) -> None:
    # int8's evaluation was cut short after views 0 and 8; nerfacto rendered all three.
    int8 = _row("nerf-qat-int8", "nerf-qat", 21.0, kind="suite", test_views=[0, 8], per_view_psnr=[20.0, 22.0])
    peer = _row("nerfacto", "nerfacto", 23.0, kind="suite", test_views=[0, 8, 16], per_view_psnr=[21.0, 22.5, 25.5])
    old = _row("vqad", "vqad", 22.0, kind="suite")  # a row from before per-view figures: the means
    assert scene_suite.psnr_gap(int8, peer) == (pytest.approx(-0.75), 2)
    assert scene_suite.psnr_gap(old, peer) == (pytest.approx(-1.0), None)
    assert scene_suite.psnr_gap(peer, peer) is None
    assert scene_suite.psnr_gap({**int8, "test_views": [4], "per_view_psnr": [20.0]}, peer) is None  # none shared
    (tmp_path / "fern.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (int8, peer, old)))
    text = scene_suite.results_markdown(tmp_path)
    int8_line = next(line for line in text.splitlines() if line.startswith("| nerf-qat-int8"))
    vqad_line = next(line for line in text.splitlines() if line.startswith("| vqad"))
    assert "| -0.75 dB |" in int8_line and "over the 2 test views both rendered" in int8_line
    assert "| -1.00 dB |" in vqad_line and "both rendered" not in vqad_line


def test_a_gap_to_nerfacto_trained_with_other_jobs_on_its_gpu_is_marked_unequal(tmp_path: Path) -> None:
    rows = [
        _row("nerf-qat-int8", "nerf-qat", 25.0, kind="suite", jobs_per_gpu=1),
        _row("nerf-qat-int4", "nerf-qat", 24.0, kind="suite", jobs_per_gpu=9),
        _row("nerfacto", "nerfacto", 23.0, kind="suite", jobs_per_gpu=9),
    ]
    (tmp_path / "horns.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = {line.split(" |")[0]: line for line in scene_suite.results_markdown(tmp_path).splitlines()}
    assert (
        "| +2.00 dB |" in lines["| nerf-qat-int8"]
        and "nerfacto ran with 9 jobs on its GPU: unequal" in lines["| nerf-qat-int8"]
    )
    assert "unequal" not in lines["| nerf-qat-int4"] and "unequal" not in lines["| nerfacto"]


def test_constant_image_psnr_scores_blank_images_against_the_test_views(tmp_path: Path) -> None:
    from conftest import make_blender_scene

    scores = scene_suite.constant_image_psnr(make_blender_scene(tmp_path / "scene"))
    assert set(scores) == {"white", "black", "mean_colour"}
    # The mean colour minimises the squared error among constant images.
    assert scores["mean_colour"] >= max(scores["white"], scores["black"]) and scores["white"] > 0


def test_committed_results_doc_and_readme_table_are_up_to_date() -> None:
    committed = (ROOT / "docs" / "results.md").read_text()
    assert committed == scene_suite.results_markdown(), "run: python benchmarks/scene_suite.py --report-only"
    readme = (ROOT / "README.md").read_text()
    assert readme == scene_suite.readme_with_table(readme), "run: python benchmarks/scene_suite.py --report-only"


def test_readme_table_lists_every_scene_and_configuration(tmp_path: Path) -> None:
    row = _row("vqad", "vqad", 23.456, kind="suite", file_bytes=987_654, date="2027-01-01T00:00:00+00:00")
    (tmp_path / "fruit.jsonl").write_text(json.dumps(row) + "\n")
    readme = "intro\n<!-- results:begin -->\nold\n<!-- results:end -->\nrest\n"
    text = scene_suite.readme_with_table(readme, tmp_path)
    assert text.startswith("intro\n<!-- results:begin -->\n| scene |") and text.endswith("<!-- results:end -->\nrest\n")
    assert "old" not in text and "| fruit | — | — | 23.46 dB, 0.99 MB | — |" in text
    assert all(f"| {scene} |" in text for scene in scene_suite.SCENES)


def test_readme_is_short_and_words_hold_no_development_history() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    places = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
    places += [*(ROOT / "nerfqat_plugin").rglob("*.py"), *(ROOT / "method_configs").rglob("*.py")]
    mentions = [str(p.relative_to(ROOT)) for p in places if "session" in p.read_text().lower()]
    assert not mentions, mentions
    # Its picture and every link into the repository resolve.
    links = re.findall(r"\]\(((?:docs|benchmarks)/[^)#]+)\)", readme)
    assert "docs/fern_render.jpg" in links and all((ROOT / link).is_file() for link in links), links


def test_config_docstrings_and_comments_carry_no_measurements() -> None:
    code = [*(ROOT / "nerfqat_plugin").rglob("*.py"), *(ROOT / "method_configs").rglob("*.py")]
    figures = [str(p.relative_to(ROOT)) for p in code if re.search(r"\d dB\b|\(README\)|see README", p.read_text())]
    assert not figures, figures
    # Option docstrings are ns-train --help text: one or two lines each, what the option does (how a
    # default was measured belongs in docs/methods).
    long_docs, measured = [], []
    for path in code:
        configs = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)]
        for node in (n for n in configs if n.name.endswith("Config")):
            for option, doc in zip(node.body, node.body[1:], strict=False):
                is_text = isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
                text = doc.value.value if is_text else None
                if isinstance(option, ast.AnnAssign) and isinstance(text, str) and len(text.strip().splitlines()) > 2:
                    long_docs.append(f"{path.name}: {node.name}.{ast.unparse(option.target)}")
                if isinstance(option, ast.AnnAssign) and isinstance(text, str) and re.search(r"\bmeasured\b", text):
                    measured.append(f"{path.name}: {node.name}.{ast.unparse(option.target)}")
    assert not long_docs, long_docs
    assert not measured, measured


def test_past_the_evaluation_deadline_the_smallest_operating_points_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_benchmark = _load_benchmark_script("run_benchmark")
    clock = {"now": 0.0}
    exported: list = []

    class Model:  # four levels; each evaluation takes 10 s of the fake clock
        def operating_points(self) -> list:
            return [f"levels={k}" for k in range(1, 5)]

        def current_operating_point(self) -> str:
            return "levels=4"

        def export_compressed(self, path: Path, name: str = "levels=4") -> int:
            exported.append(name)
            return 100 * int(name[-1])

    def evaluate_file(path, pipeline, device, max_views, stop_at) -> dict:
        clock["now"] += 10.0
        return {"psnr": 20.0 + len(exported), "ssim": 0.5, "lpips": None}

    monkeypatch.setattr(run_benchmark, "evaluate_file", evaluate_file)
    monkeypatch.setattr(run_benchmark.time, "time", lambda: clock["now"])
    result = run_benchmark.export_and_evaluate(Model(), None, tmp_path, "cpu", stop_at=25.0)
    assert exported == ["levels=4", "levels=3", "levels=2"]  # the largest first; none past the deadline
    assert [p["operating_point"] for p in result["operating_points"]] == ["levels=2", "levels=3", "levels=4"]
    assert [p["file_bytes"] for p in result["operating_points"]] == [200, 300, 400]
    assert result["operating_points_skipped"] == ["levels=1"]
    unhurried = run_benchmark.export_and_evaluate(Model(), None, tmp_path, "cpu")
    assert len(unhurried["operating_points"]) == 4 and "operating_points_skipped" not in unhurried


def _fake_gpu_host(root: Path, job_seconds: float) -> dict:
    """A checkout at ``root`` whose ``run_benchmark.py`` prints a line, sleeps ``job_seconds`` and
    prints another, and an environment with one fake GPU (``nvidia-smi -L``)."""
    (root / "benchmarks" / "gpu_host").mkdir(parents=True)
    (root / "bin").mkdir()
    suite = ROOT / "benchmarks" / "gpu_host" / "gpu_suite.sh"
    (root / "benchmarks" / "gpu_host" / "gpu_suite.sh").write_text(suite.read_text())
    runner = f"import time\nprint('[benchmark] started', flush=True)\ntime.sleep({job_seconds})\n"
    runner += "print('[benchmark] finished')\n"
    (root / "benchmarks" / "run_benchmark.py").write_text(runner)
    (root / "bin" / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: fake'\n")
    (root / "bin" / "nvidia-smi").chmod(0o755)
    (root / "bin" / "python3").symlink_to(sys.executable)
    path = f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, "PATH": path, "OUT": str(root / "out"), "LOG_SNAPSHOT_S": "0.5", "JOBS_PER_GPU": "2"}


def _archived_logs(out: Path) -> dict:
    with tarfile.open(out / "logs.tgz") as archive:
        return {Path(m.name).name: archive.extractfile(m).read().decode() for m in archive.getmembers() if m.isfile()}


def test_gpu_suite_returns_its_logs_when_cut_off_and_ends_when_its_runs_end(tmp_path: Path) -> None:
    command = ["bash", "benchmarks/gpu_host/gpu_suite.sh", "a|vqad|d|1|", "b|vqad|d|1|", "c|vqad|d|1|"]
    quick = tmp_path / "quick"
    env = _fake_gpu_host(quick, job_seconds=0.2)
    proc = subprocess.run(command, cwd=quick, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.count("finished") == 3  # the snapshot loop does not hold it up
    assert set(_archived_logs(quick / "out")) == {"a.log", "b.log", "c.log"}
    slow = tmp_path / "slow"  # a call cut off at its time limit, its runs still going
    env = _fake_gpu_host(slow, job_seconds=60)
    proc = subprocess.Popen(command, cwd=slow, env=env, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the suite, its runs and its snapshot loop, as the device tool does
        proc.wait()
    logs = _archived_logs(slow / "out")
    assert logs["a.log"].strip() == logs["b.log"].strip() == "[benchmark] started"


def test_every_committed_row_follows_the_one_schema_in_one_file_per_scene() -> None:
    rows_module = _load_benchmark_script("rows")
    files = sorted((ROOT / "benchmarks" / "results").glob("*.jsonl"))
    assert files, "no committed rows"
    for path in files:
        for row in rows_module.read_rows(path):
            rows_module.check_row(row)
            assert row["scene"] == path.stem, f"{path.name}: a row of scene {row['scene']}"


def test_a_row_without_its_command_or_commit_is_refused(tmp_path: Path) -> None:
    rows_module = _load_benchmark_script("rows")
    row = _row("vqad", "vqad", 22.0, kind="suite")
    rows_module.append_row(tmp_path / "fern.jsonl", row)
    for key, value in (("command", None), ("code_commit", ""), ("kind", "guess")):
        with pytest.raises(ValueError, match=key if key != "kind" else "unknown kind"):
            rows_module.append_row(tmp_path / "fern.jsonl", {**row, key: value})
    assert len(rows_module.read_rows(tmp_path / "fern.jsonl")) == 1  # nothing half-written


def test_profiled_ops_name_their_python_frames_from_the_stack_or_the_event_tree() -> None:
    from types import SimpleNamespace

    python_frames = _load_benchmark_script("profile_step").python_frames
    # A profiler that keeps each op's stack (innermost first): torch's own frames are skipped.
    kept = SimpleNamespace(stack=["<built-in>", "/x/nerfqat_plugin/a.py(3): f", "/y/b.py(9): g"], cpu_parent=None)
    assert python_frames(kept, 5) == ("a.py(3): f", "b.py(9): g")
    assert python_frames(kept, 1) == ("a.py(3): f",)
    # One that records Python calls as the op's parents instead.
    outer = SimpleNamespace(name="/y/b.py(9): g", cpu_parent=None)
    middle = SimpleNamespace(name="aten::matmul", cpu_parent=outer)
    inner = SimpleNamespace(name="/x/a.py(3): f", cpu_parent=middle)
    op = SimpleNamespace(stack=[], cpu_parent=inner)
    assert python_frames(op, 5) == ("a.py(3): f", "b.py(9): g") and python_frames(op, 1) == ("a.py(3): f",)


def test_gpu_time_counts_each_kernel_once() -> None:
    """A Triton launch and a record_function range show up on the device as annotations spanning
    their kernels, and every kernel also under the op that launched it: each is counted once."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    profile_step = _load_benchmark_script("profile_step")

    def event(key: str, device: bool, us: float, annotation: bool = False) -> SimpleNamespace:
        kind = DeviceType.CUDA if device else DeviceType.CPU
        return SimpleNamespace(
            key=key, device_type=kind, self_device_time_total=us, self_cpu_time_total=3.0, is_user_annotation=annotation
        )

    events = [
        event("Optimizer.step#Adam.step", False, 0.0, annotation=True),
        event("Optimizer.step#Adam.step", True, 1900.0, annotation=True),  # the span, not work
        event("aten::_fused_adam_", False, 40.0),
        event("fused_adam_kernel", True, 40.0),
        event("triton_poi_fused_add_0", False, 700.0, annotation=True),  # the launch, its kernel's time
        event("triton_poi_fused_add_0", True, 700.0, annotation=True),
        event("triton_poi_fused_add_0", True, 700.0),
        event("aten::mm", False, 500.0),
        event("sm90_gemm", True, 500.0),
    ]
    assert profile_step.device_work(events) == {"us": 1240.0, "kernels": 3}
    ranked = profile_step.launching_ops(events, cuda=True)
    assert ranked == [("triton_poi_fused_add_0", 700.0), ("aten::mm", 500.0), ("aten::_fused_adam_", 40.0)]
    assert [name for name, _ in profile_step.launching_ops(events, cuda=False)][:1] == ["Optimizer.step#Adam.step"]


def test_scaled_views_shrink_cameras_and_images_together() -> None:
    import torch
    from nerfstudio.cameras.cameras import Cameras

    render_speed = _load_benchmark_script("render_speed")
    cameras = Cameras(camera_to_worlds=torch.eye(4)[None, :3], fx=40.0, fy=40.0, cx=16.0, cy=12.0, width=32, height=24)
    image = torch.rand(24, 32, 3)
    scaled, (small,) = render_speed.scaled_views(cameras, [image], 0.25)
    assert (int(scaled.width[0]), int(scaled.height[0])) == (8, 6) and small.shape == (6, 8, 3)
    assert float(scaled.fx[0]) == pytest.approx(10.0) and int(cameras.width[0]) == 32  # the original stays
    assert torch.allclose(small[0, 0], image[:4, :4].reshape(-1, 3).mean(0))  # each pixel: its block's mean
