"""Where a training step spends its time: per phase, per kernel, and the host syncs.

    python benchmarks/profile_step.py --data .gpu/lego --method vqad --label lego-vqad-profile
    python benchmarks/profile_step.py --data .gpu/fern --method vqad --label fern-vqad-eager \\
        -- --pipeline.model.compile False

Everything after ``--`` goes to ``ns-train METHOD``. The run takes ``--warmup`` steps (compilation,
the first pruning), then times ``--steps`` steps as nerfstudio's trainer runs them (throughput:
rays/s, radiance-field samples/s and, with the occupancy sampler, marched samples/s), then
``--steps`` more with the GPU synchronised around each phase (ray batch, sampler, radiance field,
losses, backward, optimizer, callbacks), then profiles a few steps for the ops whose kernels take the
most GPU time (and the GPU's busy time and kernel count per step), and counts the host syncs of one step
(``torch.cuda.set_sync_debug_mode``). One row of kind ``step-profile`` goes to the scene's rows file.
Synchronising splits the time honestly but removes overlap, so the phases add up to more than the
plain step; compiled fields are timed as a whole.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from rows import append_row, scene_path
from run_benchmark import code_commit, gpu_name, make_config, split_command, synchronize
from torch.autograd import DeviceType

PHASES = ("ray batch", "sampler", "radiance field", "losses", "backward", "optimizer", "callbacks")


class PhaseTimer:
    """Accumulates the wall time of wrapped calls, with the GPU synchronised around each (when on)."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = collections.defaultdict(float)
        self.on = False

    def wrap(self, owner: Any, attribute: str, phase: str, observe: Optional[Callable[..., None]] = None) -> None:
        """Time ``owner.attribute(...)`` as ``phase``; ``observe(*args)`` sees each call's arguments."""
        original = getattr(owner, attribute)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if observe is not None:
                observe(*args)
            if not self.on:
                return original(*args, **kwargs)
            synchronize()
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                synchronize()
                self.seconds[phase] += time.perf_counter() - start

        setattr(owner, attribute, timed)


def run_callbacks(trainer, step: int, location) -> None:
    for callback in trainer.callbacks:
        callback.run_callback_at_location(step, location=location)


def train_steps(trainer, first: int, count: int, timer: Optional[PhaseTimer] = None) -> float:
    """Run ``count`` training steps from ``first`` as nerfstudio's trainer does; their wall seconds."""
    from nerfstudio.engine.callbacks import TrainingCallbackLocation

    synchronize()
    start = time.perf_counter()
    for step in range(first, first + count):
        run_callbacks(trainer, step, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        trainer.pipeline.train()
        trainer.train_iteration(step)
        if timer is not None and timer.on:
            synchronize()
            callbacks_start = time.perf_counter()
        run_callbacks(trainer, step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
        if timer is not None and timer.on:
            synchronize()
            timer.seconds["callbacks"] += time.perf_counter() - callbacks_start
    synchronize()
    return time.perf_counter() - start


def instrument(trainer, timer: PhaseTimer, samples: List[int], marched: List[int]) -> None:
    """Wrap the phases of a step; the radiance field's calls count its samples into ``samples``, the
    occupancy sampler's marched samples (before those light does not reach are dropped) ``marched``."""
    pipeline, model = trainer.pipeline, trainer.pipeline.model
    timer.wrap(pipeline.datamanager, "next_train", "ray batch")
    sampler = getattr(model, "proposal_sampler", None) or getattr(model, "sampler_pdf", None)
    if sampler is not None:
        timer.wrap(sampler, "forward", "sampler")
    if hasattr(model, "march"):  # occupancy-grid sampling: marching the occupied cells
        timer.wrap(model, "march", "sampler")

    def count_marched(_bundle: Any, packed: Any) -> None:
        if timer.on:
            marched.append(len(packed))

    if hasattr(model, "visible_samples"):  # the density pass without gradients that drops hidden samples
        timer.wrap(model, "visible_samples", "sampler", observe=count_marched)

    def count(ray_samples: Any, *_: Any) -> None:
        if timer.on and hasattr(ray_samples, "frustums"):
            samples.append(ray_samples.frustums.starts.numel())

    for name in ("field", "field_coarse", "field_fine"):
        if getattr(model, name, None) is not None:
            timer.wrap(getattr(model, name), "forward", "radiance field", observe=count)
    timer.wrap(model, "get_loss_dict", "losses")
    timer.wrap(model, "get_metrics_dict", "losses")
    timer.wrap(trainer.optimizers, "optimizer_scaler_step_some", "optimizer")
    timer.wrap(trainer.optimizers, "scheduler_step_all", "optimizer")
    timer.wrap(trainer, "train_iteration", "step")


def is_device_event(event: Any) -> bool:
    return event.device_type == DeviceType.CUDA


def launching_ops(averages: Any, cuda: bool) -> List[tuple]:
    """(name, microseconds) of the host-side ops, most first: on a GPU each op's own kernels' time
    (the kernels it launched, not its children's), else its own CPU time. Device-side entries are left
    out: each kernel is counted once, under the op that launched it."""
    timed = []
    for event in averages:
        if is_device_event(event) or event.key.startswith("ProfilerStep"):
            continue
        us = event.self_device_time_total if cuda else event.self_cpu_time_total
        if us > 0:
            timed.append((event.key, us))
    return sorted(timed, key=lambda item: -item[1])


def device_work(events: Any) -> Dict[str, float]:
    """The GPU's kernel time (us) and kernel count among profiled ``events``; ranges annotated on the
    device (record_function spans, Triton launches' names) overlap their kernels and are left out."""
    kernels = [e for e in events if is_device_event(e) and not getattr(e, "is_user_annotation", False)]
    return {"us": sum(e.self_device_time_total for e in kernels), "kernels": len(kernels)}


def profiled_kernels(
    run: Callable[[], Any],
    calls: int,
    count: int,
    busy: Optional[Dict[str, float]] = None,
    stacks: int = 0,
) -> List[Dict[str, Any]]:
    """The ``count`` ops with the most GPU time (their own kernels'; CPU time without a GPU) over
    ``calls`` calls of ``run``: name and milliseconds per call. With a ``busy`` dict, its
    ``"ms_per_call"`` and ``"kernels_per_call"`` are set to the GPU's time in all kernels and their
    count per call (None without a GPU): the rest of a call is the host's. With
    ``stacks`` > 0, each torch op among them also gets ``"called_from"``: the Python frames (that many,
    innermost first) of the three call sites taking the most time, with their milliseconds per call."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, with_stack=stacks > 0) as prof:
        for _ in range(calls):
            run()

    def own_time(event: Any) -> float:
        return event.self_device_time_total if cuda else event.self_cpu_time_total

    timed = launching_ops(prof.key_averages(), cuda)
    if busy is not None:
        work = device_work(prof.events()) if cuda else None
        busy["ms_per_call"] = round(work["us"] / 1e3 / calls, 3) if work else None
        busy["kernels_per_call"] = round(work["kernels"] / calls, 1) if work else None
    top = [{"name": name[:120], "ms_per_call": round(us / 1e3 / calls, 3)} for name, us in timed[:count]]
    if stacks > 0:  # one pass over the events: each top op's time per call site
        sites: Dict[str, Dict[tuple, float]] = {entry["name"]: collections.defaultdict(float) for entry in top}
        for event in prof.events():
            if event.device_type == DeviceType.CPU and event.name[:120] in sites:
                sites[event.name[:120]][python_frames(event, stacks)] += own_time(event)
        for entry in top:
            found = sites[entry["name"]]
            busiest = sorted(((us, frames) for frames, us in found.items() if frames), reverse=True)[:3]
            if busiest:
                entry["called_from"] = [
                    {"frames": list(frames), "ms_per_call": round(us / 1e3 / calls, 3)} for us, frames in busiest
                ]
    return top


def python_frames(event: Any, count: int) -> tuple:
    """The ``count`` innermost Python frames (``file.py(line): function``, the file without its folder)
    around a profiled op, recorded with ``with_stack``: the op's own stack where the profiler keeps one,
    else its parents in the profiler's event tree (torch versions differ in which they fill)."""
    if event.stack:
        names = [frame for frame in event.stack if ".py(" in frame]
    else:
        names, parent = [], event.cpu_parent
        while parent is not None and len(names) < count:
            if ".py(" in parent.name:
                names.append(parent.name)
            parent = parent.cpu_parent
    return tuple(name.rsplit("/", 1)[-1] for name in names[:count])


def top_kernels(
    trainer, first: int, steps: int, count: int, stacks: int = 0, busy: Optional[Dict[str, float]] = None
) -> List[Dict[str, Any]]:
    """:func:`profiled_kernels` of ``steps`` training steps from ``first``, ms per step (``busy``:
    the GPU's time per step)."""
    kernels = profiled_kernels(lambda: train_steps(trainer, first, steps), 1, count, busy, stacks)
    rows = []
    for kernel in kernels:
        row = {"name": kernel["name"], "ms_per_step": round(kernel["ms_per_call"] / steps, 3)}
        if "called_from" in kernel:
            row["called_from"] = [
                {"frames": site["frames"], "ms_per_step": round(site["ms_per_call"] / steps, 3)}
                for site in kernel["called_from"]
            ]
        rows.append(row)
    if busy is not None and busy.get("ms_per_call") is not None:
        busy["ms_per_call"] = round(busy["ms_per_call"] / steps, 3)
        busy["kernels_per_call"] = round(busy["kernels_per_call"] / steps, 1)
    return rows


def host_syncs(trainer, step: int) -> Dict[str, Any]:
    """Operations that make the host wait for the GPU in one step, by source line (CUDA only)."""
    return host_syncs_of(lambda: train_steps(trainer, step, 1))


def host_syncs_of(run: Callable[[], Any]) -> Dict[str, Any]:
    """Operations that make the host wait for the GPU in one call of ``run``, by source line (CUDA only)."""
    if not torch.cuda.is_available():
        return {"count": None, "where": []}
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    where = collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)
    return {"count": len(syncs), "where": [f"{k} x{v}" for k, v in where.most_common(12)]}


def main(argv: Optional[List[str]] = None) -> int:
    command, argv, extra = split_command("profile_step.py", argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--method", default="vqad")
    parser.add_argument("--label", required=True)
    parser.add_argument("--warmup", type=int, default=300, help="steps before timing (compilation, pruning)")
    parser.add_argument("--steps", type=int, default=100, help="timed steps, plain and phase by phase")
    parser.add_argument("--kernel-steps", type=int, default=5, help="profiled steps for the kernel table")
    parser.add_argument("--kernels", type=int, default=15, help="rows of the kernel table")
    parser.add_argument(
        "--kernel-stacks", type=int, default=0, help="Python frames recorded for each torch op in the table"
    )
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/profile"))
    parser.add_argument("--results", type=Path, default=None, help="rows file (default: the scene's)")
    args = parser.parse_args(argv)
    if min(args.warmup, args.steps, args.kernel_steps) < 1:
        parser.error("--warmup, --steps and --kernel-steps must be at least 1")

    import nerfqat_plugin  # noqa: F401  (offline-safe checkpoint loading, error reporting)

    torch.set_float32_matmul_precision("high")
    total = args.warmup + 2 * args.steps + args.kernel_steps + 1
    # The run's planned length is the profile's: schedules (pruning at a fraction of it) happen in the warm-up.
    config = make_config(args.method, args.data, args.output_dir / args.label, total, extra, None)
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    timer, samples, marched = PhaseTimer(), [], []
    instrument(trainer, timer, samples, marched)
    print(f"[profile] {args.label}: {args.warmup} warm-up steps", flush=True)
    train_steps(trainer, 0, args.warmup)
    step = args.warmup
    rays_before = getattr(trainer.pipeline, "train_rays", None)
    plain_s = train_steps(trainer, step, args.steps) / args.steps
    rays_after = getattr(trainer.pipeline, "train_rays", None)
    step += args.steps
    timer.on = True
    timed_s = train_steps(trainer, step, args.steps, timer) / args.steps
    timer.on = False
    step += args.steps
    phases = {name: timer.seconds.pop(name, 0.0) / args.steps for name in PHASES if name != "backward"}
    iteration = timer.seconds.pop("step", 0.0) / args.steps
    inside = sum(phases[name] for name in ("ray batch", "sampler", "radiance field", "losses", "optimizer"))
    phases["backward"] = max(0.0, iteration - inside)  # the rest of an iteration: backward, grad scaling
    busy: Dict[str, float] = {}
    kernels = top_kernels(trainer, step, args.kernel_steps, args.kernels, args.kernel_stacks, busy)
    step += args.kernel_steps
    syncs = host_syncs(trainer, step)
    rays = (  # the timed steps' mean: a model may size its batches by samples
        (rays_after - rays_before) / args.steps
        if rays_before is not None
        else trainer.pipeline.datamanager.get_train_rays_per_batch()
    )
    field_samples = sum(samples) / args.steps
    row: Dict[str, Any] = {
        "kind": "step-profile",
        "label": args.label,
        "method": args.method,
        "options": extra,
        "scene": args.data.name,
        "step_ms": round(plain_s * 1e3, 3),
        "rays_per_step": round(rays, 1),
        "rays_per_s": round(rays / plain_s),
        "field_samples_per_step": round(field_samples),
        "field_samples_per_s": round(field_samples / plain_s),
        "marched_samples_per_s": round(sum(marched) / args.steps / plain_s) if marched else None,
        "synchronised_step_ms": round(timed_s * 1e3, 3),
        "phase_ms": {name: round(phases[name] * 1e3, 3) for name in PHASES},
        "top_kernels": kernels,
        "gpu_busy_ms_per_step": busy.get("ms_per_call"),
        "kernels_per_step": busy.get("kernels_per_call"),
        "host_syncs_per_step": syncs["count"],
        "host_sync_sites": syncs["where"],
        "compiled": bool(getattr(trainer.pipeline.model.config, "compile", False)) and torch.cuda.is_available(),
        "gpu": gpu_name(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "code_commit": code_commit(),
    }
    if torch.cuda.is_available():
        row["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    append_row(args.results or scene_path(args.data.name), row)
    print(
        f"[profile] {args.label}: {row['step_ms']} ms/step, {row['rays_per_s']} rays/s, "
        f"{row['field_samples_per_s']} field samples/s",
        flush=True,
    )
    for name in PHASES:
        print(f"[profile]   {name:15s} {row['phase_ms'][name]:9.3f} ms", flush=True)
    print(
        f"[profile]   GPU busy {row['gpu_busy_ms_per_step']} ms per step, {row['kernels_per_step']} kernels",
        flush=True,
    )
    for kernel in kernels:
        print(f"[profile]   {kernel['ms_per_step']:9.3f} ms  {kernel['name']}", flush=True)
        for site in kernel.get("called_from", []):
            print(f"[profile]       {site['ms_per_step']:9.3f} ms from {' < '.join(site['frames'])}", flush=True)
    print(f"[profile]   host syncs per step: {syncs['count']} {syncs['where']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
