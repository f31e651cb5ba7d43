"""One command per scene: our methods and nerfstudio's own, same split, same wall-clock budget,
then the paper's tables side by side, a size-PSNR plot and ``docs/benchmarks.md``.

    python benchmarks/compare.py --scene fern --data .gpu/fern --budget-s 420 --deadline-s 560

Every configuration runs through ``run_benchmark.py`` (one per GPU at a time) and appends its row to
``benchmarks/results/<scene>.jsonl`` (kind ``comparison``). The command resumes: configurations with a row for this
budget are skipped, and no configuration starts unless it can finish before ``--deadline-s``, so
each call fits in one 10-minute device run; call it again until it reports nothing left to run.
While running it prints each configuration's step, planned iterations and remaining time; a failing
configuration is reported with its log's last error line and the others go on. ``--report-only``
rebuilds the plots and ``docs/benchmarks.md`` from the rows.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from rows import latest_by_label, scene_path

from nerfqat_plugin.compression.codec import registered_methods

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"
EVAL_MARGIN_S = 90.0  # default for start-up, compilation overshoot and export
EVAL_S = 30.0  # default for rendering the test views once
# vqad's operating points in Table 2: its 3 largest (levels 2-4 on fern, 3-5 on lego). The issue asks
# for 3; the coarsest levels alone are too coarse to be useful, and each point renders every test view
# again (800x800 on lego).
VQAD_EVALUATIONS = 3

# The NeRF-QAT paper's table (LLFF fern, its own protocol), drawn as "reported" points.
REPORTED: List[Tuple[str, float, float]] = [
    ("NeRF", 31.49, 4.78),
    ("Plenoxels", 31.71, 778.0),
    ("TensoRF", 33.14, 71.8),
    ("Instant-NGP", 33.18, 64.1),
    ("NeRF-QAT", 30.56, 1.33),
]


@dataclass
class Job:
    """One configuration: ``run_benchmark.py --method METHOD ... -- ARGS``."""

    label: str
    method: str
    args: List[str] = field(default_factory=list)
    runner_args: List[str] = field(default_factory=list)
    evaluations: int = 1
    """How many times its test views are rendered (once per evaluated operating point)."""
    scene: str = ""
    """Scene name of its log and rows (default: the command's --scene)."""
    data: Optional[Path] = None
    """Scene folder (default: the command's --data)."""
    results: Optional[Path] = None
    """Rows file (default: the scene's, ``<scene>.jsonl``)."""

    def expected_s(self, budget_s: float, margin_s: float, eval_s: float) -> float:
        """Wall-clock seconds the configuration is expected to take, evaluation included."""
        return budget_s + margin_s + self.evaluations * eval_s


def scene_space(data: Path) -> Tuple[Optional[Tuple[float, float]], str]:
    """World-space sampling bounds our dataparser derives for a scene (given to peers that need them)
    and the scene type it detects."""
    from nerfqat_plugin.data.auto_dataparser import AutoDataParserConfig
    from nerfqat_plugin.model_components.ray_setup import NEAR_FAR_METADATA_KEY, SCENE_TYPE_METADATA_KEY

    outputs = AutoDataParserConfig(data=data).setup().get_dataparser_outputs("train")
    bounds = outputs.metadata.get(NEAR_FAR_METADATA_KEY)
    return (float(bounds[0]), float(bounds[1])) if bounds else None, outputs.metadata[SCENE_TYPE_METADATA_KEY]


def plan(scene: str, data: Path, bounds: Optional[Tuple[float, float]], white_background: bool = False) -> List[Job]:
    """Table 1 and 2 configurations. Peers: camera optimizer off, torch implementations, our
    dataparser (same split), the scene's near/far, and on object scenes (``white_background``) the
    white background the test images are composited on."""
    near, far = bounds or (2.0, 6.0)
    peers_parser = ["auto-data"]
    no_camera_opt = ["--pipeline.model.camera-optimizer.mode", "off"]
    collider = ["--pipeline.model.collider-params", "near_plane", f"{near:.4f}", "far_plane", f"{far:.4f}"]
    white = ["--pipeline.model.background-color", "white"] if white_background else []
    return [
        Job("nerf-fp32", "nerf-qat", ["--pipeline.model.quantize", "False"]),
        Job("nerf-qat-int8", "nerf-qat", ["--pipeline.model.bits", "8"]),
        Job("nerf-qat-int8-unfused", "nerf-qat", ["--pipeline.model.bits", "8", "--pipeline.model.fuse-relu", "False"]),
        Job("nerf-qat-int4", "nerf-qat", ["--pipeline.model.bits", "4"]),
        Job(
            "vqad",
            "vqad",
            runner_args=["--operating-points", f"largest:{VQAD_EVALUATIONS}"],
            evaluations=VQAD_EVALUATIONS,
        ),
        Job("vanilla-nerf", "vanilla-nerf", collider + white + peers_parser),
        Job(
            "nerfacto",
            "nerfacto",
            no_camera_opt
            + ["--pipeline.model.implementation", "torch", "--pipeline.model.near-plane", f"{near:.4f}"]
            + white
            + peers_parser,
        ),
        Job(
            "instant-ngp",
            "instant-ngp",
            ["--pipeline.model.near-plane", f"{near:.4f}", "--pipeline.model.far-plane", f"{far:.4f}"]
            + white
            + peers_parser,
        ),
        Job("tensorf", "tensorf", no_camera_opt + collider + white + peers_parser),
    ]


def rows_path(scene: str) -> Path:
    return scene_path(scene, RESULTS)


def load_rows(
    scene: str, budget_s: Optional[float] = None, path: Optional[Path] = None, kind: str = "comparison"
) -> Dict[str, Dict[str, Any]]:
    """The latest row of every label of ``kind`` in ``path`` (default: the scene's rows file), for one
    budget if given."""
    return latest_by_label(path or rows_path(scene), kind, budget_s)


def _last_line(path: Path, markers: Sequence[str]) -> str:
    """The log's last line containing one of ``markers`` ("" if none)."""
    if not path.is_file():
        return ""
    for line in reversed(path.read_text(errors="replace").splitlines()):
        if any(marker in line for marker in markers):
            return line.strip()
    return ""


def next_job(pending: List[Job], elapsed: float, args: argparse.Namespace) -> Optional[Job]:
    """Take the first of ``pending`` (longest first) that can still end before the deadline."""
    for job in pending:
        if elapsed + job.expected_s(args.budget_s, args.margin_s, args.eval_s) <= args.deadline_s:
            pending.remove(job)
            return job
    return None


EVALUATION_RESERVE_S = 30.0
"""Seconds before the deadline after which no test view is started: the frame-rate render, the
row's writing and the process's exit fit in them."""


def visible_gpu(slot: int) -> str:
    """The device id of the ``slot``-th GPU this process may use: an index into the caller's
    CUDA_VISIBLE_DEVICES when set (so a comparison can run beside other work on the same host)."""
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return visible[slot] if visible else str(slot)


def run_jobs(jobs: List[Job], args: argparse.Namespace, gpus: int) -> List[str]:
    """Run ``jobs`` (``args.jobs_per_gpu`` per GPU at a time, default one) until done or the deadline;
    returns the failed labels.

    The longest configurations start first (they would not fit at the end of a call), and a GPU
    that frees up late takes the longest one that still fits. Evaluation stops starting test views
    ``EVALUATION_RESERVE_S`` before the deadline, so a slow evaluation still leaves its row."""
    start = time.perf_counter()
    stop_evaluation_at = time.time() + args.deadline_s - EVALUATION_RESERVE_S
    per_gpu = max(1, int(getattr(args, "jobs_per_gpu", 1) or 1))
    slots = gpus * per_gpu
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    pending = sorted(jobs, key=lambda j: -j.expected_s(args.budget_s, args.margin_s, args.eval_s))
    running: Dict[int, Tuple[Job, subprocess.Popen, float, Path]] = {}
    failed: List[str] = []
    last_report = 0.0
    while pending or running:
        for gpu in range(slots):
            if gpu in running or not pending:
                continue
            job = next_job(pending, time.perf_counter() - start, args)
            if job is None:
                if not running:
                    left = ", ".join(j.label for j in pending)
                    print(f"[compare] left for the next call (deadline): {left}", flush=True)
                    pending.clear()
                break
            scene = job.scene or args.scene
            log = log_dir / f"{scene}_{job.label}.log"
            data, results = job.data or args.data, job.results or rows_path(scene)
            command = [sys.executable, str(ROOT / "benchmarks" / "run_benchmark.py"), "--data", str(data)]
            command += ["--method", job.method, "--label", job.label, "--iterations", "1000000", "--fit-budget"]
            command += ["--budget-s", str(args.budget_s), "--results", str(results)]
            command += ["--kind", getattr(args, "kind", "comparison")]
            command += ["--stop-evaluation-at", f"{stop_evaluation_at:.0f}"]
            # A folder per scene: jobs of one label on several scenes run at once, and each evaluates
            # the file it exported (``<output-dir>/<label>/model.nqz``), not another scene's.
            command += ["--output-dir", str(Path(args.output_dir) / scene), *job.runner_args, "--", *job.args]
            # One share of the host's cores per configuration: with every process on all cores, the
            # peers' CPU-side ray sampling and kernel launches stall each other (OpenMP oversubscription).
            threads = str(args.threads_per_job or max(1, (os.cpu_count() or 1) // slots))
            device = visible_gpu(gpu % gpus)
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": device, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": threads}
            env["JOBS_PER_GPU"] = str(per_gpu)  # recorded in the row: the GPU was shared
            print(f"[compare] start {scene} {job.label} on GPU {device}: {' '.join(command[1:])}", flush=True)
            handle = log.open("w")
            proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
            running[gpu] = (job, proc, time.perf_counter(), log)
        time.sleep(args.poll_s)
        now = time.perf_counter()
        for gpu, (job, proc, started, log) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[gpu]
            if proc.returncode == 0:
                print(f"[compare] done {job.label} ({now - started:.0f} s)", flush=True)
            else:
                failed.append(job.label)
                reason = _last_line(log, ("Error", "error:", "Exception"))
                print(f"[compare] FAILED {job.label} (exit {proc.returncode}): {reason} (log: {log})", flush=True)
        if running and now - last_report >= args.progress_s:
            last_report = now
            for job, _, started, log in running.values():
                progress = _last_line(log, ("[benchmark] progress", "[benchmark] step"))
                left = args.budget_s + 30.0 - (now - started)
                when = f"about {left:.0f} s to go" if left > 0 else f"{-left:.0f} s over its budget (evaluating?)"
                print(f"[compare] {job.label}: {progress or 'starting'}; {when}", flush=True)
    return failed


# -- report ----------------------------------------------------------------------------------------
def table_rows(rows: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Table 2's rows: one per configuration, vqad once per operating point."""
    out = []
    for label, row in rows.items():
        base = {
            "train_seconds": row.get("train_seconds"),
            "iterations_per_s": row.get("iterations_per_s"),
            "render_fps": row.get("render_fps"),
            "method": row.get("method"),
            "ours": row.get("method") in registered_methods(),
        }
        points = row.get("operating_points") or []
        if points:
            for point in points:
                size = point["file_bytes"]
                name = f"{label} ({point['operating_point']})"
                quality = {k: point[k] for k in ("psnr", "ssim", "lpips")}
                out.append({**base, "name": name, **quality, "bytes": size})
            continue
        size = row.get("file_bytes") or row.get("param_bytes")
        quality = {k: row.get(k) for k in ("psnr", "ssim", "lpips")}
        out.append({**base, "name": label, **quality, "bytes": size})
    return out


def _fmt(value: Any, digits: int) -> str:
    return "null" if value is None else f"{value:.{digits}f}"


def markdown(scene: str, rows: Dict[str, Dict[str, Any]]) -> str:
    lines = [f"## {scene}", ""]
    any_row = next(iter(rows.values()), {})
    lines.append(
        f"GPU: {any_row.get('gpu', '?')}; budget {any_row.get('budget_s', '?')} s per configuration; "
        f"rows from {min((r.get('date', '') for r in rows.values()), default='?')} to "
        f"{max((r.get('date', '') for r in rows.values()), default='?')}."
    )
    lines += ["", "**Table 1** (nerf-qat int8, fused vs unfused)", ""]
    lines += ["| configuration | PSNR | SSIM |", "|---|---|---|"]
    for label in ("nerf-qat-int8", "nerf-qat-int8-unfused"):
        if label in rows:
            lines.append(f"| {label} | {_fmt(rows[label].get('psnr'), 2)} | {_fmt(rows[label].get('ssim'), 3)} |")
    lines += ["", "**Table 2**", ""]
    lines += ["| configuration | PSNR | SSIM | LPIPS | size (MB) | train s | it/s | render fps |"]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for r in table_rows(rows):
        size = None if r["bytes"] is None else r["bytes"] / 1e6
        lines.append(
            f"| {r['name']} | {_fmt(r['psnr'], 2)} | {_fmt(r['ssim'], 3)} | {_fmt(r['lpips'], 3)} | {_fmt(size, 3)} "
            f"| {_fmt(r['train_seconds'], 0)} | {_fmt(r['iterations_per_s'], 1)} | {_fmt(r['render_fps'], 2)} |"
        )
    lines += ["", f"![PSNR against size on {scene}](benchmarks_{scene}.png)", "", "Commands:", ""]
    # Launch notes of early rows name the work's organisation ("session N call M"), not the run.
    lines += [f"- `{re.sub(r';? ?session [0-9]+ call [0-9]+', '', r['command'])}`" for r in rows.values()]
    reading = ROOT / "docs" / "comparison" / f"{scene}.md"  # the written reading of the table
    if reading.is_file():
        lines += ["", reading.read_text().strip()]
    return "\n".join(lines) + "\n"


def plot(scene: str, rows: Dict[str, Dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    placed: List[Tuple[float, float]] = []

    def label(text: str, size_mb: float, psnr: float, color: str) -> None:
        # Points are labelled from the highest PSNR down; the label of a point near already labelled
        # ones (within a fifth of a decade and 0.5 dB) goes below them.
        near = sum(1 for x, y in placed if abs(math.log10(size_mb) - x) < 0.2 and abs(psnr - y) < 0.5)
        placed.append((math.log10(size_mb), psnr))
        offset = (4, 3) if not near else (4, -4 - 9 * near)
        ax.annotate(text, (size_mb, psnr), fontsize=7, color=color, xytext=offset, textcoords="offset points")

    for r in sorted(table_rows(rows), key=lambda r: -(r["psnr"] or 0.0)):
        if r["psnr"] is None or not r["bytes"]:
            continue
        ax.scatter(r["bytes"] / 1e6, r["psnr"], marker="o" if r["ours"] else "s", color="C0" if r["ours"] else "C1")
        label(r["name"], r["bytes"] / 1e6, r["psnr"], "black")
    if scene == "fern":
        for name, psnr, size in sorted(REPORTED, key=lambda point: -point[1]):
            ax.scatter(size, psnr, marker="x", color="gray")
            label(f"{name} (reported)", size, psnr, "gray")
    ax.set_xscale("log")
    ax.set_xlabel("size (MB, log scale): our files / peers' fp32 parameters")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"{scene}: PSNR against size (o ours, s nerfstudio, x reported)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(scenes: Sequence[str]) -> None:
    """Write the plot of each scene with comparison rows, and docs/benchmarks.md."""
    sections = [
        "# Benchmarks",
        "",
        "Generated by `python benchmarks/compare.py --report-only` from "
        "the `comparison` rows of `benchmarks/results/<scene>.jsonl`; every row holds its exact command, GPU and date.",
        "",
    ]
    for scene in scenes:
        rows = load_rows(scene)
        if not rows:
            continue
        plot(scene, rows, DOCS / f"benchmarks_{scene}.png")
        sections.append(markdown(scene, rows))
    DOCS.mkdir(exist_ok=True)
    (DOCS / "benchmarks.md").write_text("\n".join(sections))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", required=True, help="name used for result files (fern, lego)")
    parser.add_argument("--data", type=Path, help="the scene folder")
    parser.add_argument("--budget-s", type=float, default=420.0, help="training budget of every configuration")
    parser.add_argument("--deadline-s", type=float, default=560.0, help="start nothing that cannot end before this")
    parser.add_argument(
        "--margin-s", type=float, default=EVAL_MARGIN_S, help="start-up and export time beyond the budget"
    )
    parser.add_argument("--eval-s", type=float, default=EVAL_S, help="time to render the test views once")
    parser.add_argument(
        "--threads-per-job", type=int, default=0, help="OpenMP threads per configuration (0: cores / GPUs)"
    )
    parser.add_argument("--only", default="", help="comma-separated labels to run (default: all)")
    parser.add_argument("--common-args", default="", help="ns-train options for every configuration (quoted)")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs to use (default: all visible)")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/compare"))
    parser.add_argument("--log-dir", type=Path, default=Path(os.environ.get("OUT", "outputs/compare")))
    parser.add_argument("--poll-s", type=float, default=5.0)
    parser.add_argument("--progress-s", type=float, default=60.0)
    parser.add_argument("--results-dir", type=Path, default=None, help="where rows go (default benchmarks/results)")
    parser.add_argument("--docs-dir", type=Path, default=None, help="where benchmarks.md goes (default docs)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="print what would run")
    args = parser.parse_args(argv)
    global RESULTS, DOCS
    RESULTS, DOCS = args.results_dir or RESULTS, args.docs_dir or DOCS
    RESULTS.mkdir(parents=True, exist_ok=True)

    if not args.report_only:
        if args.data is None or not args.data.is_dir():
            parser.error(f"--data: scene folder {args.data} not found")
        bounds, scene_type = scene_space(args.data)
        jobs = plan(args.scene, args.data, bounds, white_background=scene_type == "bounded")
        for job in jobs:
            job.args = shlex.split(args.common_args) + job.args
        done = load_rows(args.scene, args.budget_s)
        wanted = {s for s in args.only.split(",") if s}
        todo = [j for j in jobs if j.label not in done and (not wanted or j.label in wanted)]
        print(f"[compare] {args.scene}: {len(done)} of {len(jobs)} configurations done, {len(todo)} to run now")
        if args.dry_run:
            for job in todo:
                print(f"[compare] would run {job.label}: {job.method} {' '.join(job.args)}")
            return 0
        if todo:
            import torch

            gpus = args.gpus or max(1, torch.cuda.device_count())
            failed = run_jobs(todo, args, gpus)
            if failed:
                print(f"[compare] failed: {', '.join(failed)}", flush=True)
    report(sorted(p.stem for p in RESULTS.glob("*.jsonl") if load_rows(p.stem)))
    print(f"[compare] wrote {DOCS / 'benchmarks.md'}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
