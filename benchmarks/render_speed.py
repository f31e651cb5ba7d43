"""Render speed from compressed files, side by side with a peer's checkpoint, in one run.

    python benchmarks/render_speed.py --data .gpu/lego --files lego-int8.nqz lego-vqad.nqz \\
        --peer-config outputs/lego/nerfacto/<run>/config.yml --views 5

Every file is rendered at the scene's test resolution twice: as files render by default (nerf-qat's
integer products, rays that stop behind surfaces, a bounded file's occupancy grid) and as the model
renders without them (fake quantization, every sample). Each row (kind ``render-speed``) holds both
frame rates, both PSNRs over the first ``--views`` test views and their difference, and the GPU
memory of one frame; the peer's row its frame rate and PSNR. Rows go to the scene's rows file, each
as soon as it is measured. ``--top-kernels N`` adds the N ops whose kernels take most of a default
frame's GPU time (``top_kernels``: name, ms per frame), the time the GPU is busy in a frame
(``gpu_busy_ms_per_frame``: the rest of the frame is the host's), its kernel count and host syncs by
line. ``field_rows_per_ray`` counts the samples each field method evaluates in a default frame, per
ray. Files render in chunks of rays sized to the GPU's free memory (``rays_per_chunk_rendered``);
``--rays-per-chunk A B ...`` measures each file once per fixed chunk size instead;
``--model-options "" "march_occupied_space=True,march_steps=512"`` once per set of model options
(row field ``model_options``; empty: the file's own). ``--scale 0.0625`` renders at a sixteenth of the
test resolution (a CPU's study of image changes, not of speed).
"""

from __future__ import annotations

import argparse
import ast
import copy
import datetime as dt
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from profile_step import host_syncs_of, profiled_kernels
from rows import append_row, scene_path
from run_benchmark import code_commit, gpu_name, peer_lpips_disabled, scene_test_views, synchronize

from nerfqat_plugin.compression.codec import load_compressed_model
from nerfqat_plugin.fields.compiled_field import TrainingCompiledField
from nerfqat_plugin.metrics.image_metrics import image_metrics


def measure(render: Callable[[Any], torch.Tensor], cameras, images: List[torch.Tensor], repeats: int) -> Dict[str, Any]:
    """Mean PSNR over the views, frames per second of view 0 (after a warm-up) and its peak GPU memory."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.no_grad():
        psnrs = [
            image_metrics(img.to(device), render(cameras[i : i + 1].to(device)))["psnr"] for i, img in enumerate(images)
        ]
        render(cameras[0:1].to(device))
        synchronize()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(repeats):
            render(cameras[0:1].to(device))
        synchronize()
    seconds = (time.perf_counter() - start) / repeats
    memory = round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None
    return {"psnr": sum(psnrs) / len(psnrs), "render_fps": 1.0 / seconds, "render_peak_gpu_memory_gib": memory}


def scaled_views(cameras, images: List[torch.Tensor], scale: float) -> Tuple[Any, List[torch.Tensor]]:
    """The views at ``scale`` times their resolution: cameras rescaled, images area-averaged to match."""
    cameras = copy.deepcopy(cameras)
    cameras.rescale_output_resolution(scale)
    size = (int(cameras.height[0]), int(cameras.width[0]))
    resized = [
        F.interpolate(image.permute(2, 0, 1)[None], size=size, mode="area")[0].permute(1, 2, 0) for image in images
    ]
    return cameras, resized


def field_rows_per_ray(render: Callable[[Any], torch.Tensor], camera, num_rays: int) -> Dict[str, float]:
    """Rows (points or samples) each field method evaluates in one frame of ``camera``, per ray, by
    ``Field.method`` name: how many samples the render path actually costs."""
    counts: Dict[str, int] = defaultdict(int)
    eager = TrainingCompiledField.eager

    def counting(field: TrainingCompiledField, name: str, *args: Any) -> Any:
        counts[f"{type(field).__name__}.{name}"] += int(args[0].shape[0])
        return eager(field, name, *args)

    TrainingCompiledField.eager = counting  # type: ignore[method-assign]
    try:
        with torch.no_grad():
            render(camera)
    finally:
        TrainingCompiledField.eager = eager  # type: ignore[method-assign]
    return {name: round(rows / num_rays, 2) for name, rows in sorted(counts.items())}


def parse_model_options(text: str) -> Dict[str, Any]:
    """``"name=value,name=value"`` as model config options; values are Python literals (True, 512)."""
    options = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        options[name.strip()] = ast.literal_eval(value.strip())
    return options


def file_row(
    path: Path,
    cameras,
    images,
    repeats: int,
    top_kernels: int = 0,
    rays_per_chunk: Optional[int] = None,
    model_options: str = "",
    plain_renders: Optional[Dict[Any, Dict[str, Any]]] = None,
    kernel_stacks: int = 0,
) -> Optional[Dict[str, Any]]:
    """A file's row, or None when its method has one of ``model_options`` not (one method's option).
    ``plain_renders`` keeps each file's measurement as trained, which options that only change the
    render's shortcuts (the model's ``render_shortcuts``) leave as it is: measured once per file."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_compressed_model(path, device)
    if rays_per_chunk is not None:  # a fixed chunk, not sized to the free memory
        model.config.eval_num_rays_per_chunk = rays_per_chunk
        model.config.render_chunk_memory_fraction = 0.0
    options = parse_model_options(model_options)
    if any(not hasattr(model.config, name) for name in options):
        return None
    for name, value in options.items():
        setattr(model.config, name, value)

    def render(camera) -> torch.Tensor:
        return model.get_outputs_for_camera(camera)["rgb"].clamp(0, 1)

    fast = measure(render, cameras, images, repeats)
    width, height = int(cameras.width[0]), int(cameras.height[0])
    fast["field_rows_per_ray"] = field_rows_per_ray(render, cameras[0:1].to(device), width * height)
    if top_kernels:
        busy: Dict[str, Any] = {}
        with torch.no_grad():
            frame = lambda: render(cameras[0:1].to(device))  # noqa: E731
            fast["top_kernels"] = profiled_kernels(frame, 1, top_kernels, busy, kernel_stacks)
            syncs = host_syncs_of(frame)
        fast["gpu_busy_ms_per_frame"], fast["kernels_per_frame"] = busy["ms_per_call"], busy["kernels_per_call"]
        fast["host_syncs_per_frame"], fast["host_sync_sites"] = syncs["count"], syncs["where"]
    sized = getattr(model, "_render_chunks", None)  # the chunk the fast renders settled on (GPU only)
    if sized is not None:
        fast["rays_per_chunk_rendered"] = sized.rays
    kept = {name: value for name, value in options.items() if name not in type(model).render_shortcuts}
    key = (str(path), rays_per_chunk, repr(sorted(kept.items())))
    plain = (plain_renders or {}).get(key)
    if plain is None:
        with model.rendering_as_trained():
            plain = measure(render, cameras, images, repeats)
        if plain_renders is not None:
            plain_renders[key] = plain
    return {
        # The suite's files are all model.nqz, each in its configuration's folder.
        "label": f"render-{path.parent.name if path.stem == 'model' else path.stem}",
        "method": model.compressed_method_name,
        "file_bytes": path.stat().st_size,
        **fast,
        "psnr_plain": plain["psnr"],
        "psnr_change_db": fast["psnr"] - plain["psnr"],
        "render_fps_plain": plain["render_fps"],
        "speedup": fast["render_fps"] / plain["render_fps"],
        **({"rays_per_chunk": rays_per_chunk} if rays_per_chunk is not None else {}),
        **({"model_options": model_options} if model_options else {}),
    }


def peer_row(config: Path, cameras, images, repeats: int) -> Dict[str, Any]:
    from nerfqat_plugin.scripts.run_loading import load_trained_pipeline

    with peer_lpips_disabled():  # nerfstudio's models build LPIPS(AlexNet) at construction, offline too
        pipeline, _ = load_trained_pipeline(config)
    model = pipeline.model.eval()

    def render(camera) -> torch.Tensor:
        return model.get_outputs_for_camera(camera)["rgb"].clamp(0, 1)

    label = f"render-{type(model).__name__.replace('Model', '').lower()}"
    return {"label": label, "method": label.removeprefix("render-"), **measure(render, cameras, images, repeats)}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the scene (its test views)")
    parser.add_argument("--files", type=Path, nargs="+", required=True, help="compressed files to render")
    parser.add_argument("--peer-config", type=Path, default=None, help="a nerfstudio run's config.yml to compare")
    parser.add_argument("--views", type=int, default=5, help="test views for the PSNRs")
    parser.add_argument("--repeats", type=int, default=3, help="timed renders of view 0")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="render at this fraction of the test resolution (images area-averaged)"
    )
    parser.add_argument("--results", type=Path, default=None, help="rows file (default: the scene's)")
    parser.add_argument("--top-kernels", type=int, default=0, help="record the N kernels taking most of a frame")
    parser.add_argument(
        "--kernel-stacks", type=int, default=0, help="Python frames recorded for each torch op of --top-kernels"
    )
    parser.add_argument(
        "--rays-per-chunk",
        type=int,
        nargs="+",
        default=[None],
        help="fixed rays rendered at once (default: sized to the GPU's free memory)",
    )
    parser.add_argument(
        "--model-options", nargs="+", default=[""], help='sets of model options, e.g. "march_occupied_space=True"'
    )
    args = parser.parse_args(argv)
    cameras, images = scene_test_views(args.data, args.views)
    if args.scale != 1.0:
        cameras, images = scaled_views(cameras, images, args.scale)
    common = {
        "kind": "render-speed",
        "scene": args.data.name,
        "command": shlex.join(["python", *sys.argv]),
        "gpu": gpu_name(),
        "code_commit": code_commit(),
        "render_resolution": [int(cameras.width[0]), int(cameras.height[0])],
        "num_test_views": len(images),
    }
    plain_renders: Dict[Any, Dict[str, Any]] = {}
    measurements = [
        (
            f"{path} (rays per chunk {chunk or 'default'}, options {options!r})",
            lambda path=path, chunk=chunk, options=options: file_row(
                path, cameras, images, args.repeats, args.top_kernels, chunk, options, plain_renders, args.kernel_stacks
            ),
        )
        for path in args.files
        for chunk in args.rays_per_chunk
        for options in args.model_options
    ]
    if args.peer_config is not None:
        measurements.append((str(args.peer_config), lambda: peer_row(args.peer_config, cameras, images, args.repeats)))
    failed = 0
    for what, measurement in measurements:  # each row is written once measured: a run cut short keeps the rest
        try:
            measured = measurement()
        except Exception as error:  # out of memory at a large chunk, say: one line, and on to the next
            failed += 1
            print(f"[render-speed] {what} failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        if measured is None:
            print(f"[render-speed] {what}: skipped, an option its method does not have")
            continue
        row = {**common, **measured, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        append_row(args.results or scene_path(args.data.name), row)
        fps = f"{row['render_fps']:.2f} fps"
        extra = (
            f", plain {row['render_fps_plain']:.2f} fps, PSNR change {row['psnr_change_db']:+.3f} dB"
            if "speedup" in row
            else ""
        )
        print(f"[render-speed] {row['label']}: {fps}, PSNR {row['psnr']:.2f}{extra}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
