"""The scene suite: every development scene x {nerf-qat int8, nerf-qat int4, vqad, nerfacto}, one command.

    python benchmarks/scene_suite.py --data-root .gpu --budget-s 300 --deadline-s 560

``--data-root`` holds the scenes by name (fern, horns, lego, chair, fruit; those absent are skipped
with a line). Configurations run one per GPU at a time through ``run_benchmark.py`` (the scheduler
of ``compare.py``), with the defaults, at one training budget; rows go to
``benchmarks/results/<scene>.jsonl``. The command resumes: a configuration with a row for this budget
is skipped, and nothing starts that cannot end before ``--deadline-s``, so call it again until it
reports nothing left. ``--report-only`` (also run at the end) regenerates ``docs/results.md``.
nerfacto runs with the torch implementation and the camera optimizer off, on the same split.

When a configuration's defaults change, its entry in ``DEFAULTS_SINCE`` takes the change's commit date:
its older rows are marked in the README (†) and results.md, and the suite runs them again.

A default changes only with rows on every scene. ``--candidate NAME --base nerf-qat-int4 -- OPTIONS``
runs the base configuration as it is and with the ns-train OPTIONS added (label NAME) side by side on
every scene (``--beside nerf-qat-int8``: others unchanged in the same run), as rows of kind
``candidate``, then prints them per scene.

``--render-speed`` then measures, alone on a GPU per scene, how fast each scene's exported files and
nerfacto's checkpoint render at the test resolution (``render_speed.py``; also with the render options
that are off by default), rows of kind ``render-speed`` in the scene's file.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shlex
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import compare
from compare import Job, load_rows, plan, run_jobs, scene_space
from rows import read_rows, scene_path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RESULTS_DOC = ROOT / "docs" / "results.md"
SCENES = ("fern", "horns", "lego", "chair", "fruit")
SUITE = ("nerf-qat-int8", "nerf-qat-int4", "vqad", "nerfacto")
PEER = "nerfacto"
CONSTANT_IMAGES = RESULTS / "constant_images.json"
"""PSNR of constant images per scene (``--constant-images``): the floor a collapsed run sits at."""
COLLAPSE_MARGIN_DB = 8.0
_VQAD_DEFAULTS = "2026-12-06T22:11:40+00:00"
_VQAD_OCCUPANCY_DEFAULTS = "2026-12-07T18:30:00+00:00"  # train-min-transmittance: the occupancy sampler's scenes
DEFAULTS_SINCE: Dict[str, Union[str, Dict[str, str]]] = {
    "vqad": {
        "fern": _VQAD_DEFAULTS,
        "horns": _VQAD_DEFAULTS,
        "fruit": _VQAD_DEFAULTS,
        "lego": _VQAD_OCCUPANCY_DEFAULTS,
        "chair": _VQAD_OCCUPANCY_DEFAULTS,
    },
}
"""When each configuration's defaults last changed (the commit's date), for every scene or per scene
(a default of one sampler changes only its scenes' runs): older rows measured the previous defaults,
so the README marks them and the suite runs them again."""


def suite_rows(scene: str, results: Path = RESULTS, budget_s: Optional[float] = None) -> Dict[str, Dict[str, Any]]:
    """The latest suite row of every configuration of ``scene``."""
    return load_rows(scene, budget_s, scene_path(scene, results), kind="suite")


def previous_defaults(row: Dict[str, Any]) -> bool:
    """Whether a suite row was measured before its configuration's defaults last changed."""
    since = DEFAULTS_SINCE.get(row.get("label", ""))
    if isinstance(since, dict):
        since = since.get(row.get("scene", ""))
    return since is not None and dt.datetime.fromisoformat(row["date"]) < dt.datetime.fromisoformat(since)


def render_speed_command(
    scene: str, data: Path, output_dir: Path, results: Path = RESULTS, views: int = 3
) -> Optional[List[str]]:
    """``render_speed.py`` on the files the suite exported for ``scene`` under ``output_dir`` and the
    latest nerfacto run there, or None when there is no file: each file as it renders by default and
    with each render option not yet on by default (a method without the option skips it); bounded scenes
    also march occupied space."""
    scene_dir = output_dir / scene
    files = [scene_dir / label / "model.nqz" for label in SUITE if (scene_dir / label / "model.nqz").is_file()]
    if not files:
        return None
    command = [compare.sys.executable, str(ROOT / "benchmarks" / "render_speed.py"), "--data", str(data)]
    command += ["--files", *map(str, files), "--views", str(views), "--results", str(scene_path(scene, results))]
    peers = sorted((scene_dir / PEER).rglob("config.yml"), key=lambda p: p.stat().st_mtime)
    if peers:
        command += ["--peer-config", str(peers[-1])]
    options = ["", "occupancy_guided_sampling=True", "fused_integer_trunk=True"]
    if scene_space(data)[1] == "bounded":
        options.append("march_occupied_space=True")
    return command + ["--model-options", *options]


def run_render_speed(commands: List[List[str]], gpus: int, log_dir: Path) -> List[str]:
    """Each command alone on a GPU (``gpus`` at once); the logs of those that failed."""
    failed, pending = [], list(enumerate(commands))
    while pending:
        batch, pending = pending[:gpus], pending[gpus:]
        procs = []
        for slot, (i, command) in enumerate(batch):
            log = log_dir / f"render_speed_{i}.log"
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": compare.visible_gpu(slot), "PYTHONUNBUFFERED": "1"}
            print(f"[suite] render speed on GPU {env['CUDA_VISIBLE_DEVICES']}: {shlex.join(command[1:])}", flush=True)
            handle = log.open("w")
            procs.append(
                (compare.subprocess.Popen(command, stdout=handle, stderr=compare.subprocess.STDOUT, env=env), log)
            )
            handle.close()  # the child holds its own copy of the descriptor
        failed += [str(log) for proc, log in procs if proc.wait() != 0]
    return failed


def suite_jobs(scene: str, data: Path, results: Path = RESULTS) -> List[Job]:
    """The suite's configurations of one scene (vqad evaluated at its largest operating point only)."""
    bounds, scene_type = scene_space(data)
    jobs = [job for job in plan(scene, data, bounds, scene_type == "bounded") if job.label in SUITE]
    for job in jobs:
        job.scene, job.data, job.results = scene, data, scene_path(scene, results)
        if job.method == "vqad":
            job.runner_args, job.evaluations = ["--no-operating-points"], 1
    return jobs


CANDIDATE_KIND = "candidate"


def candidate_jobs(
    scene: str,
    data: Path,
    name: str,
    base: str,
    options: List[str],
    results: Path = RESULTS,
    beside: Sequence[str] = (),
) -> List[Job]:
    """The suite configuration ``base`` of one scene as it is and with ``options`` added (label ``name``),
    and the suite configurations ``beside`` as they are (to compare with in the same run)."""
    jobs = {job.label: job for job in suite_jobs(scene, data, results)}
    unknown = [label for label in (base, *beside) if label not in jobs]
    if unknown:
        raise SystemExit(f"--base/--beside: {', '.join(unknown)} not a suite configuration ({', '.join(SUITE)})")
    candidate = dataclasses.replace(jobs[base], label=name, args=[*jobs[base].args, *options])
    return [jobs[base], candidate, *(jobs[label] for label in beside if label != base)]


def psnr_and_size(row: Dict[str, Any]) -> str:
    """A summary cell: the row's PSNR and size (its file, or a peer's fp32 parameters); — unmeasured."""
    size, psnr = row.get("file_bytes") or row.get("param_bytes"), row.get("psnr")
    return "—" if psnr is None else f"{psnr:.2f} dB, {size / 1e6:.2f} MB" if size else f"{psnr:.2f} dB"


def candidate_table(name: str, base: str, results: Path = RESULTS, beside: Sequence[str] = ()) -> str:
    """Per scene, the latest candidate rows of ``base``, ``name`` and ``beside``: PSNR and size, and
    the candidate's change from its base."""
    labels = [base, name, *beside]
    lines = ["| scene | " + " | ".join(labels) + f" | {name} vs {base} |", "|---" * (len(labels) + 2) + "|"]
    for scene in SCENES:
        rows = load_rows(scene, None, scene_path(scene, results), kind=CANDIDATE_KIND)
        found = [rows.get(label) or {} for label in labels]
        if not any(found):
            continue
        cells = [psnr_and_size(r) for r in found]
        both = all(r.get("psnr") is not None for r in found[:2])
        change = f"{found[1]['psnr'] - found[0]['psnr']:+.2f} dB" if both else ""
        lines.append(f"| {scene} | " + " | ".join(cells) + f" | {change} |")
    return "\n".join(lines) + "\n"


def constant_image_psnr(data: Path) -> Dict[str, float]:
    """PSNR of constant images (white, black, the test views' mean colour) against a scene's test
    views as evaluated (RGBA composited on white): what a collapsed field would score."""
    import torch
    from run_benchmark import scene_test_views

    _, views = scene_test_views(data)
    mean_colour = torch.stack([v.reshape(-1, 3).mean(0) for v in views]).mean(0)

    def psnr(colour: torch.Tensor) -> float:
        return sum(float(-10 * torch.log10(((v - colour) ** 2).mean())) for v in views) / len(views)

    return {"white": psnr(torch.ones(3)), "black": psnr(torch.zeros(3)), "mean_colour": psnr(mean_colour)}


def write_constant_images(data_root: Path, scenes: List[str], path: Path = CONSTANT_IMAGES) -> Path:
    """Record :func:`constant_image_psnr` of every scene found under ``data_root`` in ``path``."""
    table = json.loads(path.read_text()) if path.is_file() else {}
    for scene in scenes:
        if (data_root / scene).is_dir():
            table[scene] = {k: round(v, 3) for k, v in constant_image_psnr(data_root / scene).items()}
            print(f"[suite] {scene}: constant images {table[scene]}", flush=True)
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    return path


def _fmt(value: Any, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _per_view_psnr(row: Dict[str, Any]) -> Optional[Dict[int, float]]:
    views, values = row.get("test_views"), row.get("per_view_psnr")
    return dict(zip(views, values, strict=True)) if views and values and len(views) == len(values) else None


def psnr_gap(row: Dict[str, Any], peer: Optional[Dict[str, Any]]) -> Optional[Tuple[float, Optional[int]]]:
    """``row``'s PSNR minus ``peer``'s and the number of test views compared: the views both rendered
    when both rows list them (a deadline can cut an evaluation short), else the rows' own means (None
    views). None without two PSNRs or a shared view."""
    if peer is None or row is peer or row.get("psnr") is None or peer.get("psnr") is None:
        return None
    mine, theirs = _per_view_psnr(row), _per_view_psnr(peer)
    if mine is None or theirs is None:
        return row["psnr"] - peer["psnr"], None
    shared = [view for view in mine if view in theirs]
    if not shared:
        return None
    return sum(mine[v] - theirs[v] for v in shared) / len(shared), len(shared)


def _row_line(
    scene: str, label: str, row: Dict[str, Any], peer: Optional[Dict[str, Any]], blank: Optional[float]
) -> str:
    size = row.get("file_bytes") or row.get("param_bytes")
    compared = psnr_gap(row, peer)
    gap = None if compared is None else compared[0]
    notes = []
    if compared is not None and compared[1] is not None and peer is not None:
        if compared[1] < max(len(row["test_views"]), len(peer["test_views"])):
            views = compared[1]
            notes.append(f"vs {PEER} over the {views} test view{'s' if views != 1 else ''} both rendered")
    if row.get("collapse_warning"):
        notes.append("collapse warning")
    if blank is not None and row.get("psnr") is not None and row["psnr"] < blank + COLLAPSE_MARGIN_DB:
        notes.append(f"within {COLLAPSE_MARGIN_DB:.0f} dB of a blank image")
    jobs = row.get("jobs_per_gpu") or 1
    if jobs > 1:
        notes.append(f"{jobs} jobs shared the GPU")
    peer_jobs = (peer or {}).get("jobs_per_gpu") or 1
    if compared is not None and peer_jobs != jobs:
        # A job sharing its GPU trains fewer steps in the budget: the gap is not like for like.
        notes.append(f"{PEER} ran with {peer_jobs} job{'s' if peer_jobs != 1 else ''} on its GPU: unequal")
    if row.get("num_test_views") and scene in FULL_TEST_VIEWS and row["num_test_views"] < FULL_TEST_VIEWS[scene]:
        notes.append(f"{row['num_test_views']} of {FULL_TEST_VIEWS[scene]} test views")
    if row.get("evaluation_error"):
        notes.append("evaluation failed: " + row["evaluation_error"].split(":")[0])
    if previous_defaults(row):
        notes.append("previous defaults")
    return (
        f"| {label} | {_fmt(row.get('psnr'), 2)} | {_fmt(row.get('ssim'), 3)} | {_fmt(row.get('lpips'), 3)} "
        f"| {_fmt(None if size is None else size / 1e6, 3)} | {_fmt(row.get('train_seconds'), 0)} "
        f"| {_fmt(row.get('iterations_per_s'), 1)} | {_fmt(row.get('render_fps'), 2)} "
        f"| {'' if gap is None else f'{gap:+.2f} dB'} | {'; '.join(notes)} |"
    )


def scene_table(
    scene: str, rows: Dict[str, Dict[str, Any]], constants: Optional[Dict[str, float]] = None, others: int = 0
) -> List[str]:
    """Markdown for one scene: the latest row of each suite configuration; ``others``: how many rows
    of other kinds the scene's file holds. ``constants``: :func:`constant_image_psnr` of the scene;
    a row less than ``COLLAPSE_MARGIN_DB`` above a blank (white or black) image is marked."""
    peer = rows.get(PEER) if (rows.get(PEER) or {}).get("psnr") is not None else None
    blank = max(constants["white"], constants["black"]) if constants else None
    lines = [f"## {scene}", ""]
    if constants:
        lines += [
            f"Constant images score {constants['white']:.2f} dB (white), {constants['black']:.2f} dB (black) and "
            f"{constants['mean_colour']:.2f} dB (the views' mean colour) on these test views.",
            "",
        ]
    header = "| configuration | PSNR | SSIM | LPIPS | size (MB) | train s | it/s | render fps | vs nerfacto | notes |"
    rule = "|---|---|---|---|---|---|---|---|---|---|"
    suite = [label for label in SUITE if label in rows]
    if suite:
        lines += [header, rule] + [_row_line(scene, label, rows[label], peer, blank) for label in suite]
    else:
        lines += ["The suite has not run on this scene with the current defaults yet."]
    if others:
        lines += ["", f"The scene's file holds {others} more rows (comparisons, experiments; `kind` says which)."]
    if not rows:
        return lines + [""]
    first = min((r.get("date", "") for r in rows.values()), default="")
    last = max((r.get("date", "") for r in rows.values()), default="")
    gpus = sorted({str(r.get("gpu")) for r in rows.values()})
    commits = sorted({str(r.get("code_commit")) for r in rows.values()})
    lines += ["", f"{', '.join(gpus)}; {first[:10]} to {last[:10]}; code {', '.join(commits)}. Commands: "]
    lines += [f"`benchmarks/results/{scene}.jsonl`, field `command` of each row.", ""]
    return lines


FULL_TEST_VIEWS = {"fern": 3, "horns": 8, "lego": 25, "chair": 25, "fruit": 11}


def _gpu_name(gpu: Optional[str]) -> str:
    """The card's short name (``NVIDIA H100 80GB HBM3`` -> ``H100``)."""
    return next((word for word in (gpu or "").split() if word[:1] in "ABHL" and word[1:2].isdigit()), gpu or "")


def render_speed_table(scene_rows: List[Dict[str, Any]]) -> List[str]:
    """Markdown of a scene's render-speed rows (the latest of each file or checkpoint, chunk size and
    set of model options): frame rate as files render by default and as trained, PSNR, its change,
    the GPU memory of one frame. Rows measured on a CPU (image changes of render options, not speed)
    are left out."""
    latest: Dict[Tuple[str, Any, str], Dict[str, Any]] = {}
    for row in scene_rows:
        if row.get("kind") == "render-speed" and row.get("gpu") != "cpu":
            latest[(row.get("label", ""), row.get("rays_per_chunk"), row.get("model_options", ""))] = row
    if not latest:
        return []
    lines = [
        "Render speed (`benchmarks/render_speed.py`, alone on the GPU; as trained: NeRF's or the proposal",
        "sampler at every sample, fake quantization):",
        "",
        "| file or checkpoint | options | resolution | views | fps | fps as trained | PSNR | PSNR change "
        "| GPU GiB | GPU | code |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (label, chunk, options), row in latest.items():
        settings = ", ".join(filter(None, [options, f"{chunk} rays per chunk" if chunk else ""]))
        width, height = row.get("render_resolution") or ("?", "?")
        change = row.get("psnr_change_db")
        lines.append(
            f"| {label.removeprefix('render-')} | {settings} | {width}×{height} | {row.get('num_test_views', '')} "
            f"| {_fmt(row.get('render_fps'), 2)} "
            f"| {_fmt(row.get('render_fps_plain'), 2)} | {_fmt(row.get('psnr'), 2)} "
            f"| {'' if change is None else f'{change:+.3f} dB'} | {_fmt(row.get('render_peak_gpu_memory_gib'), 2)} "
            f"| {_gpu_name(row.get('gpu'))} | {row.get('code_commit', '')} |"
        )
    return lines + [""]


def results_markdown(results: Path = RESULTS) -> str:
    """docs/results.md: the current figures of every scene with suite rows."""
    lines = [
        "# Results",
        "",
        "Generated by `python benchmarks/scene_suite.py --report-only` from `benchmarks/results/<scene>.jsonl`",
        "(the latest row of each configuration; every row holds its command, GPU, date and commit). Sizes:",
        "our compressed files, nerfacto's fp32 parameters. A dash: not measured (LPIPS needs AlexNet weights).",
        "vs nerfacto: the PSNR difference over the test views both runs rendered (a deadline can cut an",
        "evaluation short; the notes say when fewer than all were compared).",
        "",
        "The suite trains every development scene (fern, horns, lego, chair, fruit, by name under `--data-root`)",
        "with nerf-qat int8, nerf-qat int4, vqad (evaluated at its largest operating point) and nerfacto (torch,",
        "camera optimizer off, the same split), at one budget, rows to `benchmarks/results/<scene>.jsonl`; it",
        "resumes, so call it again until nothing is left (`../shared/gpu/README.md` sets up a GPU host):",
        "",
        "```bash",
        ". benchmarks/gpu_host/gpu_env.sh && python benchmarks/scene_suite.py --data-root .gpu --budget-s 300",
        "python benchmarks/scene_suite.py --data-root .gpu --budget-s 300 --render-speed  # + render speed, alone",
        "python benchmarks/scene_suite.py --data-root path/to/scenes --constant-images  # CPU: the blank-image floor",
        "```",
        "",
    ]
    constants_path = results / CONSTANT_IMAGES.name
    constants = json.loads(constants_path.read_text()) if constants_path.is_file() else {}
    for scene in SCENES:
        others = [row for row in read_rows(scene_path(scene, results)) if row.get("kind") != "suite"]
        rows = suite_rows(scene, results)
        if rows or others:
            lines += scene_table(scene, rows, constants.get(scene), len(others))
            lines += render_speed_table(others)
    return "\n".join(lines).rstrip() + "\n"


README = ROOT / "README.md"
README_MARKERS = ("<!-- results:begin -->", "<!-- results:end -->")


def readme_table(results: Path = RESULTS) -> str:
    """The README's summary: PSNR and size of each suite configuration per scene (the latest rows)."""
    lines = ["| scene | " + " | ".join(SUITE) + " |", "|---" * (len(SUITE) + 1) + "|"]
    marked = False
    for scene in SCENES:
        rows = suite_rows(scene, results)
        cells = []
        for label in SUITE:
            row = rows.get(label) or {}
            old = previous_defaults(row)
            marked |= old
            cells.append(psnr_and_size(row) + (" †" if old else ""))
        lines.append(f"| {scene} | " + " | ".join(cells) + " |")
    if marked:
        lines += ["", "† measured with that method's previous defaults (docs/CHANGELOG.md)."]
    return "\n".join(lines) + "\n"


def readme_with_table(readme: str, results: Path = RESULTS) -> str:
    """``readme`` with the text between :data:`README_MARKERS` replaced by :func:`readme_table`."""
    begin, end = README_MARKERS
    head, rest = readme.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{readme_table(results)}{end}{tail}"


def write_report(results: Path = RESULTS, doc: Path = RESULTS_DOC, readme: Optional[Path] = README) -> Path:
    """Regenerate ``doc`` and the summary table in ``readme`` (None: leave the README alone)."""
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(results_markdown(results))
    if readme is not None and readme.is_file():
        readme.write_text(readme_with_table(readme.read_text(), results))
    return doc


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, help="folder holding the scenes by name")
    parser.add_argument("--scenes", default=",".join(SCENES), help="comma-separated scene names")
    parser.add_argument("--only", default="", help="comma-separated configurations (default: all four)")
    parser.add_argument("--budget-s", type=float, default=300.0, help="training budget of every configuration")
    parser.add_argument("--deadline-s", type=float, default=560.0, help="start nothing that cannot end before this")
    parser.add_argument("--margin-s", type=float, default=compare.EVAL_MARGIN_S)
    parser.add_argument("--eval-s", type=float, default=60.0, help="time to render a scene's test views once")
    parser.add_argument("--threads-per-job", type=int, default=0)
    parser.add_argument("--gpus", type=int, default=None, help="GPUs to use (default: all visible)")
    parser.add_argument("--jobs-per-gpu", type=int, default=1, help="configurations sharing a GPU at once")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/suite"))
    parser.add_argument("--log-dir", type=Path, default=Path(os.environ.get("OUT", "outputs/suite")))
    parser.add_argument("--poll-s", type=float, default=5.0)
    parser.add_argument("--progress-s", type=float, default=60.0)
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--doc", type=Path, default=RESULTS_DOC)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--constant-images", action="store_true", help="record the PSNR of constant images per scene (CPU), then report"
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would run")
    parser.add_argument(
        "--render-speed", action="store_true", help="then measure the render speed of each scene's files, alone"
    )
    parser.add_argument("--candidate", default="", help="label of a candidate default (options after --)")
    parser.add_argument("--base", default="nerf-qat-int4", help="suite configuration the candidate changes")
    parser.add_argument("--beside", default="", help="comma-separated suite configurations run unchanged with it")
    parser.add_argument("options", nargs="*", help="ns-train options of the candidate (after --)")
    args = parser.parse_args(argv)

    scenes = [s for s in args.scenes.split(",") if s]
    if bool(args.candidate) != bool(args.options):
        parser.error("--candidate NAME and its ns-train options after -- go together")
    kind = CANDIDATE_KIND if args.candidate else "suite"
    beside = [label for label in args.beside.split(",") if label]
    if not args.report_only and (args.data_root is None or not args.data_root.is_dir()):
        parser.error(f"--data-root: folder {args.data_root} not found")
    if args.constant_images:
        write_constant_images(args.data_root, scenes, args.results_dir / CONSTANT_IMAGES.name)
    elif not args.report_only:
        wanted = {s for s in args.only.split(",") if s}
        todo: List[Job] = []
        for scene in scenes:
            data = args.data_root / scene
            if not data.is_dir():
                print(f"[suite] {scene}: not in {args.data_root}, skipped", flush=True)
                continue
            done = load_rows(scene, args.budget_s, scene_path(scene, args.results_dir), kind=kind)
            if args.candidate:
                jobs = candidate_jobs(scene, data, args.candidate, args.base, args.options, args.results_dir, beside)
            else:
                jobs = suite_jobs(scene, data, args.results_dir)
                done = {label: row for label, row in done.items() if not previous_defaults(row)}  # run again
            todo += [j for j in jobs if j.label not in done and (not wanted or j.label in wanted)]
            print(f"[suite] {scene}: {sum(j.label in done for j in jobs)} of {len(jobs)} done", flush=True)
        if args.dry_run:
            for job in todo:
                print(f"[suite] would run {job.scene} {job.label}: {job.method} {shlex.join(job.args)}")
            return 0
        if todo:
            import torch

            args.scene, args.data, args.kind = "", None, kind  # every job names its own scene
            failed = run_jobs(todo, args, args.gpus or max(1, torch.cuda.device_count()))
            if failed:
                print(f"[suite] failed: {', '.join(failed)}", flush=True)
        if args.render_speed:
            import torch

            commands = [render_speed_command(s, args.data_root / s, args.output_dir, args.results_dir) for s in scenes]
            commands = [c for c in commands if c is not None]
            args.log_dir.mkdir(parents=True, exist_ok=True)
            failed = run_render_speed(commands, args.gpus or max(1, torch.cuda.device_count()), args.log_dir)
            if failed:
                print(f"[suite] render speed failed: {', '.join(failed)}", flush=True)
    if args.candidate:
        print(candidate_table(args.candidate, args.base, args.results_dir, beside), flush=True)
        return 0
    readme = README if args.results_dir.resolve() == RESULTS else None  # other rows: leave the README alone
    print(f"[suite] wrote {write_report(args.results_dir, args.doc, readme)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
