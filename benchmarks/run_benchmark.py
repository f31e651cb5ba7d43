"""Train a method on a scene within a budget, evaluate the test views *from the exported file*, and
append one JSON row per run.

    python benchmarks/run_benchmark.py --data ../shared/data/fern --label int8-fused \
        --method nerf-qat --iterations 12000 --budget-s 480 -- --pipeline.model.bits 8

Everything after ``--`` is passed to ``ns-train METHOD`` unchanged. The row records method, options,
iterations, training seconds, iterations/s, PSNR, SSIM, LPIPS (null where the pretrained AlexNet is
unavailable), file bytes, render fps at the test resolution, GPU name, date and the command.
Peer methods (nerfstudio's vanilla-nerf, nerfacto, ...) are evaluated as trained, with the same
offline-safe metrics, and sized by their fp32 parameters; ``--speed-only`` only measures iterations/s.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from rows import KINDS, ROOT, append_row, scene_path

from nerfqat_plugin.compression.codec import registered_methods


def synchronize() -> None:
    """Wait for queued GPU work, so host clocks measure it (no-op on CPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def gpu_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def peer_lpips_disabled() -> Iterator[None]:
    """nerfstudio's own models build LPIPS(AlexNet) at construction and fail offline. For speed-only
    peer runs its metric is replaced by one that raises if used, so no LPIPS value is ever made up."""
    import torchmetrics.image.lpip as lpip_module

    class _NoLPIPS(torch.nn.Module):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__()

        def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
            raise RuntimeError("LPIPS is unavailable in speed-only peer runs")

    original = lpip_module.LearnedPerceptualImagePatchSimilarity
    lpip_module.LearnedPerceptualImagePatchSimilarity = _NoLPIPS  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        lpip_module.LearnedPerceptualImagePatchSimilarity = original  # type: ignore[misc]


def make_config(method: str, data: Path, output_dir: Path, iterations: int, extra: List[str], lr: Optional[float]):
    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    args = [method, "--data", str(data), "--output-dir", str(output_dir), "--vis", "tensorboard"]
    args += ["--max-num-iterations", str(iterations), "--steps-per-save", str(iterations)]
    args += ["--steps-per-eval-batch", str(10**9), "--steps-per-eval-image", str(10**9)]
    args += ["--steps-per-eval-all-images", str(10**9), "--viewer.quit-on-train-completion", "True"]
    config = tyro.cli(AnnotatedBaseConfigUnion, args=args + extra)
    config.pipeline.datamanager.data = data  # what ns-train does with --data
    config.set_timestamp()  # as ns-train does: the run's folder is named by its start time
    for group in config.optimizers.values():
        if lr is not None:
            group["optimizer"].lr = lr
        scheduler = group.get("scheduler")  # decay the learning rate over the planned run
        if scheduler is not None and hasattr(scheduler, "max_steps"):
            scheduler.max_steps = iterations
    return config


class BudgetPlanner:
    """Plans how many iterations fit in a wall-clock budget from the run's recent speed.

    It plans at step 300 (after compilation), every 1000 steps (quantization switching on changes the
    speed), and again whenever the planned end arrives with more than 5% of the budget left (a slow
    start, e.g. another process's start-up on the same host, must not cut the run short). The speed is
    measured over the last ``window`` steps, from marks taken every 50 steps after step 100.
    """

    def __init__(self, budget_s: float, window: int = 1000) -> None:
        self.budget_s = budget_s
        self.window = window
        self.marks: List[Tuple[int, float]] = []
        self.stop_at: Optional[int] = None

    def update(self, step: int, elapsed: float) -> Optional[Tuple[int, float]]:
        """Record ``step`` reached after ``elapsed`` seconds; returns (iterations, it/s) when it re-plans."""
        if step >= 100 and step % 50 == 0:
            self.marks.append((step, elapsed))
            self.marks = [m for m in self.marks if m[0] >= step - self.window]
        at_end = self.stop_at is not None and step + 1 >= self.stop_at and elapsed < 0.95 * self.budget_s
        if not (step == 300 or (step > 0 and step % 1000 == 0) or at_end) or len(self.marks) < 2:
            return None
        (first_step, first_time), (last_step, last_time) = self.marks[0], self.marks[-1]
        if last_time <= first_time:
            return None
        rate = (last_step - first_step) / (last_time - first_time)
        self.stop_at = max(step + 1, int(step + 0.97 * (self.budget_s - elapsed) * rate))
        return self.stop_at, rate


def resolve_operating_points(model, names: List[str]) -> List[str]:
    """``names`` with ``largest:N`` expanded to the model's N largest operating points (a grid's
    level count depends on the scene), each checked against the model: a typo fails before training."""
    resolved: List[str] = []
    for name in names:
        if name.startswith("largest:"):
            count = name.split(":", 1)[1]
            if not count.isdigit() or int(count) < 1:
                raise SystemExit(f"--operating-points: largest:N needs a positive N, got {name!r}")
            resolved += model.operating_points()[-int(count) :]
            continue
        try:
            model.check_operating_point(name)
        except ValueError as err:
            raise SystemExit(f"--operating-points: {err}") from None
        resolved.append(name)
    return resolved


def train(config, budget_s: float, fit_budget: bool, operating_points: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run nerfstudio's Trainer within a wall-clock budget.

    With ``fit_budget`` a :class:`BudgetPlanner` sets the iteration count, and the learning-rate
    decay, to what fits in the budget at the run's measured speed. ``operating_points`` to be
    evaluated afterwards are checked against the model first, so a typo fails before training.
    """
    from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation

    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    config.save_config()  # as ns-train does: ns-eval, ns-export-compressed and the analysis scripts load the run
    if operating_points is not None:
        operating_points = resolve_operating_points(trainer.pipeline.model, operating_points)
    schedulers = [g["scheduler"] for g in config.optimizers.values() if g.get("scheduler") is not None]
    state: Dict[str, Any] = {"start": None, "steps": 0, "stopped_early": False, "t100": None}
    planner = BudgetPlanner(budget_s)
    model = trainer.pipeline.model
    fraction = getattr(model.config, "qat_start_fraction", None)
    quantize_from = fraction if fraction is not None and hasattr(model, "start_quantization") else math.inf

    def on_step(step: int) -> None:
        now = time.perf_counter()
        if state["start"] is None:
            state["start"] = now
        state["steps"] = step + 1
        elapsed = now - state["start"]
        if step == 100:
            state["t100"] = now
        if now - state.get("last_progress", state["start"]) >= 30.0:
            state["last_progress"] = now
            planned = planner.stop_at or "?"
            print(f"[benchmark] progress: step {step} of {planned}, {elapsed:.0f} s of {budget_s:.0f} s", flush=True)
        plan = planner.update(step, elapsed) if fit_budget else None
        if plan is not None:
            total, rate = plan
            trainer.config.max_num_iterations = total  # what schedules read as the run's length
            for scheduler in schedulers:
                if hasattr(scheduler, "max_steps"):
                    scheduler.max_steps = total
            print(f"[benchmark] step {step}, {rate:.2f} it/s: planning {total} iterations", flush=True)
        if fit_budget and elapsed >= quantize_from * budget_s:
            model.start_quantization(step + 1)  # quantized steps are slower: their share is of the time
        if planner.stop_at is not None and step + 1 >= planner.stop_at:
            trainer.stop_training = True
        elif elapsed > budget_s:
            state["stopped_early"] = True
            trainer.stop_training = True

    trainer.callbacks.append(
        TrainingCallback(where_to_run=[TrainingCallbackLocation.AFTER_TRAIN_ITERATION], func=on_step)
    )
    wall_start = time.perf_counter()
    trainer.train()
    synchronize()
    end = time.perf_counter()
    seconds = end - wall_start
    if state["t100"] is not None and state["steps"] > 101:
        state["steady_iterations_per_s"] = (state["steps"] - 101) / (end - state["t100"])
    return {
        "trainer": trainer,
        "train_seconds": seconds,
        "iterations": state["steps"],
        "operating_points": operating_points,
        **state,
    }


def export_and_evaluate(
    model,
    pipeline,
    directory: Path,
    device: torch.device,
    operating_points: Optional[List[str]] = None,
    max_views: Optional[int] = None,
    stop_at: Optional[float] = None,
) -> Dict[str, Any]:
    """Export the full model and the ``operating_points`` (None: all of the model's, e.g. vqad's
    levels; []: none); evaluate each from its file (views started until ``stop_at``, Unix time).

    The operating points are evaluated from the last named (the largest of vqad's) back; past
    ``stop_at`` the rest are neither exported nor evaluated and ``operating_points_skipped`` names
    them: a grid of 16 levels has 16 operating points, and each costs an export and a view."""
    wanted = model.operating_points() if operating_points is None else operating_points
    path = directory / "model.nqz"
    result: Dict[str, Any] = {"file_bytes": model.export_compressed(path)}
    result.update(evaluate_file(path, pipeline, device, max_views, stop_at))
    points: Dict[str, Dict[str, Any]] = {}
    skipped: List[str] = []
    for name in reversed(wanted):
        if name == model.current_operating_point():
            size, metrics = result["file_bytes"], result
        elif stop_at is not None and time.time() >= stop_at:
            skipped.append(name)
            continue
        else:
            point_path = directory / f"model.{name.replace('=', '')}.nqz"
            size = model.export_compressed(point_path, name)
            metrics = evaluate_file(point_path, pipeline, device, max_views, stop_at)
        quality = {k: metrics[k] for k in ("psnr", "ssim", "lpips")}
        points[name] = {"operating_point": name, "file_bytes": size, **quality}
        print(f"[benchmark] operating point {name}: {size} bytes, PSNR {metrics['psnr']:.2f}", flush=True)
    if skipped:
        result["operating_points_skipped"] = [name for name in wanted if name in skipped]
        names = ", ".join(result["operating_points_skipped"])
        print(f"[benchmark] evaluation deadline: operating points {names} skipped", flush=True)
    if points:
        result["operating_points"] = [points[name] for name in wanted if name in points]
    return result


def evaluate_file(
    path: Path, pipeline, device: torch.device, max_views: Optional[int] = None, stop_at: Optional[float] = None
) -> Dict[str, Any]:
    """PSNR/SSIM/LPIPS and render fps of the test views, rendered from the compressed file."""
    from nerfqat_plugin.compression.codec import load_compressed_model

    return evaluate_model(load_compressed_model(path, device), pipeline, device, max_views, stop_at)


def code_commit() -> str:
    """The commit the code was run at: ``$CODE_COMMIT`` (set where the checkout has no git), else git's."""
    if os.environ.get("CODE_COMMIT"):
        return os.environ["CODE_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def scene_test_views(data: Path, count: Optional[int] = None) -> Tuple[Any, List[torch.Tensor]]:
    """A scene's first ``count`` (default: all) test cameras and images as evaluated: RGBA composited
    on white, the background object scenes render on."""
    from nerfstudio.data.datasets.base_dataset import InputDataset

    from nerfqat_plugin.data.auto_dataparser import AutoDataParserConfig

    dataset = InputDataset(AutoDataParserConfig(data=data).setup().get_dataparser_outputs("test"))
    images = []
    for i in range(len(dataset) if count is None else min(count, len(dataset))):
        image = dataset.get_image_float32(i)
        if image.shape[-1] == 4:
            image = image[..., :3] * image[..., 3:] + (1.0 - image[..., 3:])
        images.append(image)
    return dataset.cameras[: len(images)], images


def checkpoint_bytes(trainer) -> Optional[int]:
    """Size of the run's newest checkpoint (nerfstudio saves one when training ends), None if none."""
    checkpoints = sorted(Path(trainer.checkpoint_dir).glob("step-*.ckpt"), key=lambda p: p.stat().st_mtime)
    return checkpoints[-1].stat().st_size if checkpoints else None


def parameter_bytes(model: torch.nn.Module) -> int:
    """fp32 bytes of a peer model's trained parameters (metric networks are stubbed out in peer runs,
    optimizer state is not part of the model)."""
    return 4 * sum(p.numel() for p in model.parameters())


def test_view_indices(count: int, limit: Optional[int]) -> List[int]:
    """All ``count`` test views, or ``limit`` of them spread evenly (first and last included), in an
    order whose every prefix is spread too (ends first, then midpoints), so an evaluation cut short
    by a deadline still covers the whole test path."""
    chosen = list(range(count))
    if limit is not None and limit < count:
        chosen = sorted({round(k * (count - 1) / max(1, limit - 1)) for k in range(limit)})
    order = [0, len(chosen) - 1][: len(chosen)]
    intervals = [(0, len(chosen) - 1)]
    while intervals:  # breadth first: every midpoint of a level before the next level's
        split = []
        for low, high in intervals:
            if high - low > 1:
                middle = (low + high) // 2
                order.append(middle)
                split += [(low, middle), (middle, high)]
        intervals = split
    return [chosen[i] for i in order]


EVAL_RAYS_PER_CHUNK = 1 << 16
"""Rays per chunk when rendering test views (fast on a GPU of its own)."""
MIN_EVAL_RAYS_PER_CHUNK = 1 << 10


def jobs_per_gpu() -> int:
    """How many configurations share this job's GPU (``$JOBS_PER_GPU``, set by compare.py)."""
    return max(1, int(os.environ.get("JOBS_PER_GPU", "1")))


def mean_rays_per_batch(pipeline) -> float:
    """Training rays per batch: the mean over the run where the pipeline counts them (a model may
    size its batches by samples), else the datamanager's fixed count."""
    counted = getattr(pipeline, "mean_train_rays_per_batch", lambda: None)()
    return round(counted, 1) if counted else pipeline.datamanager.get_train_rays_per_batch()


def eval_rays_per_chunk(jobs: int) -> int:
    """Rays per evaluation chunk when ``jobs`` share the GPU: halved for each doubling beyond two.
    A 65,536-ray chunk of nerf-qat takes 35-46 GB; nine jobs evaluating at that size filled an H200
    and a job still training ran out of memory."""
    return max(MIN_EVAL_RAYS_PER_CHUNK, EVAL_RAYS_PER_CHUNK >> max(0, math.ceil(math.log2(jobs)) - 1))


def render_camera(model, camera) -> Dict[str, torch.Tensor]:
    """``model.get_outputs_for_camera(camera)``; when the GPU runs out of memory (jobs sharing it, a
    smaller GPU) the model's chunk of rays halves, down to ``MIN_EVAL_RAYS_PER_CHUNK``, and stays so."""
    while True:
        try:
            return model.get_outputs_for_camera(camera)
        except torch.cuda.OutOfMemoryError:
            chunk = model.config.eval_num_rays_per_chunk
            if chunk <= MIN_EVAL_RAYS_PER_CHUNK:
                raise
            model.config.eval_num_rays_per_chunk = chunk // 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            print(f"[benchmark] out of GPU memory rendering a view: {chunk // 2} rays per chunk now", flush=True)


def evaluate_model(
    model, pipeline, device: torch.device, max_views: Optional[int] = None, stop_at: Optional[float] = None
) -> Dict[str, Any]:
    """PSNR/SSIM/LPIPS (offline-safe: null without pretrained weights) and render fps of the test views
    (every one, or ``max_views`` spread over them). Past ``stop_at`` (Unix time) no further view is
    started: the metrics cover the views done (at least one; ``num_test_views`` says how many). A model
    of this plugin renders the first view once more as training does (``rendering_as_trained``):
    ``fast_path_psnr_change_db`` is what the default render path changes in its PSNR."""
    from nerfqat_plugin.metrics.image_metrics import image_metrics

    model.eval()
    model.config.eval_num_rays_per_chunk = eval_rays_per_chunk(jobs_per_gpu())
    if hasattr(model.config, "render_chunk_memory_fraction"):  # jobs sharing the GPU share its memory
        model.config.render_chunk_memory_fraction /= jobs_per_gpu()
    dataset = pipeline.datamanager.eval_dataset
    per_view, views = [], test_view_indices(len(dataset), max_views)

    def view_metrics(i: int) -> Dict[str, Any]:
        camera = dataset.cameras[i : i + 1].to(device)
        gt = dataset.get_image_float32(i).to(device)
        outputs = render_camera(model, camera)
        rgb = outputs["rgb"] if "rgb" in outputs else outputs["rgb_fine"]  # vanilla-nerf: coarse and fine
        if gt.shape[-1] == 4:  # RGBA (Blender): composite on the background the model renders
            gt = model.renderer_rgb.blend_background(gt)
        return image_metrics(gt[..., :3], rgb)

    for i in views:
        if per_view and stop_at is not None and time.time() >= stop_at:
            print(f"[benchmark] evaluation deadline: {len(per_view)} of {len(views)} test views", flush=True)
            break
        per_view.append(view_metrics(i))
    check = {}
    if hasattr(model, "rendering_as_trained"):  # the first view again, every sample as in training
        with model.rendering_as_trained():
            reference = view_metrics(views[0])["psnr"]
        check = {"psnr_first_view_as_trained": reference, "fast_path_psnr_change_db": per_view[0]["psnr"] - reference}
    # Time a second render of the first view, so first-use allocation stays out of the fps figure.
    camera = dataset.cameras[0:1].to(device)
    synchronize()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    render_camera(model, camera)
    synchronize()
    render_s = time.perf_counter() - start
    render_memory = round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None

    def mean(key: str) -> Optional[float]:
        values = [m[key] for m in per_view]
        return None if any(v is None for v in values) else sum(values) / len(values)

    return {
        "psnr": mean("psnr"),
        "ssim": mean("ssim"),
        "lpips": mean("lpips"),
        "per_view_psnr": [m["psnr"] for m in per_view],
        "render_fps": 1.0 / render_s,
        "render_peak_gpu_memory_gib": render_memory,  # while rendering one view (None without a GPU)
        "render_resolution": [int(dataset.cameras.width[0]), int(dataset.cameras.height[0])],
        # The fps figure's chunk: sized to the free memory by this plugin's models on a GPU.
        "eval_rays_per_chunk": getattr(getattr(model, "_render_chunks", None), "rays", None)
        or model.config.eval_num_rays_per_chunk,
        "num_test_views": len(per_view),
        "test_views": views[: len(per_view)],
        **({"evaluation_cut_short": True} if len(per_view) < len(views) else {}),
        **check,
    }


def split_command(script: str, argv: Optional[List[str]]) -> Tuple[str, List[str], List[str]]:
    """The command line as run (for the row: everything, ns-train options too), the script's own
    arguments and those after ``--`` (passed to ``ns-train``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = f"python benchmarks/{script} " + shlex.join(argv)
    if "--" not in argv:
        return command, argv, []
    cut = argv.index("--")
    return command, argv[:cut], argv[cut + 1 :]


def main(argv: Optional[List[str]] = None) -> int:
    command, argv, extra = split_command("run_benchmark.py", argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--method", default="nerf-qat")
    parser.add_argument("--label", required=True, help="name of this configuration in the results")
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument("--budget-s", type=float, default=540.0, help="training wall-clock limit")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/benchmarks"))
    parser.add_argument("--results", type=Path, default=None, help="rows file (default: the scene's)")
    parser.add_argument("--kind", default="experiment", choices=sorted(KINDS), help="what the row belongs to")
    parser.add_argument("--lr", type=float, default=None, help="initial learning rate of every parameter group")
    parser.add_argument("--fit-budget", action="store_true", help="fit iterations and lr decay to --budget-s")
    parser.add_argument("--speed-only", action="store_true", help="measure iterations/s only (peer methods)")
    parser.add_argument(
        "--no-operating-points", action="store_true", help="evaluate only the full model (saves time on big scenes)"
    )
    parser.add_argument(
        "--operating-points",
        default=None,
        help="comma-separated operating points to evaluate (default: all); largest:N: the N largest",
    )
    parser.add_argument("--test-views", type=int, default=None, help="evaluate N test views, spread (default: all)")
    parser.add_argument(
        "--stop-evaluation-at",
        type=float,
        default=None,
        help="Unix time after which no further test view is started (the row counts the views evaluated)",
    )
    args = parser.parse_args(argv)

    import nerfqat_plugin  # noqa: F401  (offline-safe checkpoint loading, error reporting)
    from nerfqat_plugin.models.compressible import CompressibleModel

    torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere and newer
    config = make_config(args.method, args.data, args.output_dir / args.label, args.iterations, extra, args.lr)
    print(f"[benchmark] {args.label}: training {args.method} for {args.iterations} iterations", flush=True)
    # Peers build LPIPS(AlexNet) at construction (and fail offline); their metrics are computed here.
    guard = peer_lpips_disabled() if args.method not in registered_methods() else contextlib.nullcontext()
    points: Optional[List[str]] = [] if args.no_operating_points else None
    if args.operating_points and args.method not in registered_methods():
        parser.error("--operating-points: only our methods have operating points")
    if args.operating_points:
        points = [p for p in args.operating_points.split(",") if p]
    with guard:
        run = train(config, args.budget_s, args.fit_budget, points)
    trainer, points = run["trainer"], run["operating_points"]
    row: Dict[str, Any] = {
        "kind": args.kind,
        "label": args.label,
        "method": args.method,
        "options": extra + ([f"lr={args.lr}"] if args.lr is not None else []),
        "scene": args.data.name,
        "iterations": run["iterations"],
        "iterations_planned": args.iterations,
        "stopped_early": run["stopped_early"],
        "quantized_from_step": getattr(trainer.pipeline.model, "quantization_started_at", None),
        "budget_s": args.budget_s,
        "train_seconds": round(run["train_seconds"], 2),
        "iterations_per_s": round(run["iterations"] / run["train_seconds"], 3),
        "steady_iterations_per_s": round(run.get("steady_iterations_per_s") or 0.0, 3) or None,
        "rays_per_iteration": mean_rays_per_batch(trainer.pipeline),
        "checkpoint_bytes": checkpoint_bytes(trainer),
        "gpu": gpu_name(),
        "jobs_per_gpu": jobs_per_gpu(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "code_commit": code_commit(),
    }
    if torch.cuda.is_available():
        row["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    pipeline = trainer.pipeline
    status = 0
    if isinstance(pipeline.model, CompressibleModel):
        row.update(pipeline.model.training_statistics())
    try:  # a failed evaluation still leaves its row (training figures, the error), never nothing
        if args.speed_only:
            pass
        elif isinstance(pipeline.model, CompressibleModel):
            directory = args.output_dir / args.label
            row.update(
                export_and_evaluate(
                    pipeline.model,
                    pipeline,
                    directory,
                    pipeline.device,
                    points,
                    args.test_views,
                    args.stop_evaluation_at,
                )
            )
        else:  # a peer method: evaluated as trained, sized by its fp32 parameters
            row["param_bytes"] = parameter_bytes(pipeline.model)
            with torch.no_grad():
                row.update(
                    evaluate_model(pipeline.model, pipeline, pipeline.device, args.test_views, args.stop_evaluation_at)
                )
    except Exception as err:  # noqa: BLE001  (recorded in the row; the exit status says it failed)
        row["evaluation_error"] = f"{type(err).__name__}: {err}"[:500]
        status = 1
    from nerfqat_plugin.metrics.image_metrics import lpips_weights_source

    row["lpips_weights"] = lpips_weights_source()  # the weights evaluation used; None: LPIPS is null
    append_row(args.results or scene_path(args.data.name), row)
    print("[benchmark] " + json.dumps({k: v for k, v in row.items() if k not in ("options", "command")}), flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
