"""Time of nerf-qat's trunk as integer products: one product and epilogue per block against the fused kernel.

    python benchmarks/fused_trunk_speed.py --scene lego --file lego-int8.nqz --points 2097152

The fine field's trunk of ``--file`` (or, without one, a field of ``--layers`` blocks of ``--width``,
NeRF's by default, calibrated on a few random steps at ``--bits``) is evaluated on ``--points``
encoded random positions by the integer path (``field_components/integer_linear.py``) and by the
fused Triton kernel
(``field_components/fused_integer_trunk.py``), each timed over ``--repeats`` calls after a warm-up
(the first fused call also tunes its launch), and their integers compared. One row of kind
``experiment`` goes to the scene's rows file (or ``--results``). On a CPU the fused kernel runs only in
Triton's interpreter (``TRITON_INTERPRET=1``): correct, and far too slow to time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
from pathlib import Path
from typing import List, Optional

import torch
from fused_lookup_speed import timed_ms
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.scene_box import SceneBox
from rows import append_row, scene_path
from run_benchmark import code_commit, gpu_name

from nerfqat_plugin.compression.codec import load_compressed_model
from nerfqat_plugin.field_components.fused_integer_trunk import fused_trunk_available
from nerfqat_plugin.models.nerfqat import NeRFQATModel, NeRFQATModelConfig


def calibrated_model(bits: int, device: torch.device, layers: int = 8, width: int = 256) -> NeRFQATModel:
    """A nerf-qat model (forward-facing; NeRF's trunk by default) trained a few steps on random rays,
    past its activation ranges' calibration: its blocks run as stored integers."""
    config = NeRFQATModelConfig(bits=bits, float_warmup_steps=2, calibration_steps=3, qat_start_fraction=None)
    config.num_layers, config.layer_width, config.skip_connections = layers, width, (layers // 2,)
    config.compile = False
    box = SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3]))
    ndc = {"focal": 400.0, "width": 504.0, "height": 378.0, "near": 1.0}
    model = NeRFQATModel(config=config, scene_box=box, num_train_data=1, metadata={"ndc": ndc}).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for step in range(8):
        model._apply_quant_schedule(step)
        n = 256
        directions = torch.nn.functional.normalize(
            torch.cat([0.3 * torch.randn(n, 2, device=device), -torch.ones(n, 1, device=device)], -1), dim=-1
        )
        bundle = RayBundle(
            origins=0.05 * torch.randn(n, 3, device=device),
            directions=directions,
            pixel_area=torch.ones(n, 1, device=device),
            camera_indices=torch.zeros(n, 1, dtype=torch.long, device=device),
        )
        outputs = model(bundle)
        loss = sum(model.get_loss_dict(outputs, {"image": torch.rand(n, 3, device=device)}).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", default="lego", help="the rows file's scene")
    parser.add_argument("--file", type=Path, default=None, help="a nerf-qat file (default: a calibrated NeRF field)")
    parser.add_argument("--bits", type=int, default=8, help="weight bits of the calibrated field (without --file)")
    parser.add_argument("--layers", type=int, default=8, help="trunk blocks of the calibrated field")
    parser.add_argument("--width", type=int, default=256, help="trunk width of the calibrated field")
    parser.add_argument("--points", type=int, default=1 << 21, help="positions per call")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls")
    parser.add_argument("--results", type=Path, default=None, help="rows file (default: the scene's)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not fused_trunk_available(device):
        raise SystemExit("fused_trunk_speed: the fused trunk needs CUDA and Triton (or TRITON_INTERPRET=1)")
    torch.manual_seed(0)
    if args.file is not None:
        model = load_compressed_model(args.file, device)
    else:
        model = calibrated_model(args.bits, device, args.layers, args.width)
    field = model.field_fine
    trunk = field._integer()[0]
    with torch.no_grad():
        x = field.encode(field.position_encoding, torch.rand(args.points, 3, device=device) * 2 - 1)
        expected = trunk.hidden(x)
        fused = trunk.hidden(x, fused=True)
        integer_ms = timed_ms(lambda: trunk.hidden(x), args.repeats)
        fused_ms = timed_ms(lambda: trunk.hidden(x, fused=True), args.repeats)
    apart = (fused.shifted.int() - expected.shifted.int()).abs()
    row = {
        "kind": "experiment",
        "label": f"fused-trunk-{args.file.stem if args.file else f'calibrated-{args.bits}bit'}",
        "method": "nerf-qat",
        "scene": args.scene,
        "command": shlex.join(["python", *sys.argv]),
        "gpu": gpu_name(),
        "code_commit": code_commit(),
        "points": args.points,
        "integer_path_ms": round(integer_ms, 3),
        "fused_ms": round(fused_ms, 3),
        "speedup": round(integer_ms / fused_ms, 3),
        "max_levels_apart": int(apart.max()),
        "share_apart": float((apart > 0).float().mean()),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    append_row(args.results or scene_path(args.scene), row)
    print(
        f"[fused-trunk] integer path {integer_ms:.2f} ms, fused {fused_ms:.2f} ms per call; outputs at most "
        f"{row['max_levels_apart']} integer levels apart ({row['share_apart']:.2e} of them differ)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
