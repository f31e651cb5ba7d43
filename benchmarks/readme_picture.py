"""The README's picture: a held-out view rendered from the run's compressed file, captioned with the
file's size and the PSNR against the view's photo (the photo itself stays out of the repository:
the scenes are never committed).

Made on a CPU (2 cores, about 20 minutes) with the CPU quickstart's network:

    ns-train nerf-qat --data ../shared/data/fern --output-dir /tmp/pic --vis tensorboard \\
        --max-num-iterations 1500 --pipeline.datamanager.train-num-rays-per-batch 1024 \\
        --pipeline.model.num-layers 4 --pipeline.model.skip-connections 2 --pipeline.model.layer-width 128 \\
        --pipeline.model.num-coarse-samples 32 --pipeline.model.num-importance-samples 32
    python benchmarks/readme_picture.py /tmp/pic/fern/nerf-qat/<run>/config.yml docs/fern_render.jpg
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from nerfqat_plugin.compression.codec import load_compressed_model
from nerfqat_plugin.metrics.image_metrics import image_metrics
from nerfqat_plugin.scripts.run_loading import load_trained_pipeline


def to_image(rgb: torch.Tensor) -> Image.Image:
    return Image.fromarray((rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help="the run's config.yml")
    parser.add_argument("output", type=Path, help="the picture to write (JPEG or PNG)")
    parser.add_argument("--view", type=int, default=0, help="held-out view")
    args = parser.parse_args()
    pipeline, _ = load_trained_pipeline(args.config)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "scene.nqz"
        size = pipeline.model.export_compressed(path)
        model = load_compressed_model(path)
    dataset = pipeline.datamanager.eval_dataset
    with torch.no_grad():
        rgb = model.get_outputs_for_camera(dataset.cameras[args.view : args.view + 1])["rgb"]
    photo = dataset.get_image_float32(args.view)[..., :3]
    psnr = image_metrics(photo, rgb.clamp(0, 1))["psnr"]
    render = to_image(rgb)
    width, height = render.size
    canvas = Image.new("RGB", (width, height + 28), "white")
    canvas.paste(render, (0, 0))
    method = pipeline.model.compressed_method_name
    label = f"{method} int{pipeline.model.config.bits}" if method == "nerf-qat" else method
    caption = f"a held-out view, rendered from a {size / 1e6:.2f} MB {label} file ({psnr:.1f} dB)"
    ImageDraw.Draw(canvas).text((4, height + 8), caption, fill="black")
    canvas.save(args.output, quality=88)
    print(f"{args.output}: file {size} bytes, PSNR {psnr:.2f} dB")


if __name__ == "__main__":
    main()
