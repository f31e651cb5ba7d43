"""Copy a scene folder for the GPU host with its PNGs re-encoded as lossless WebP (same file names).

The device tool carries at most 64 MiB per call; lego's PNGs are 53 MB. Lossless WebP with
``exact=True`` keeps every RGBA value (checked here for every image) at about 70% of the bytes;
PIL, which nerfstudio loads images with, detects the format from the content, not the name.

    python benchmarks/lossless_transport.py ../shared/data/lego .gpulego/lego
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def main(source: Path, target: Path) -> None:
    for path in sorted(source.rglob("*")):
        out = target / path.relative_to(source)
        if path.is_dir():
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() != ".png":
            shutil.copy2(path, out)
            continue
        with Image.open(path) as image:
            image.save(out, format="WEBP", lossless=True, exact=True, method=6)
            with Image.open(out) as check:
                if not np.array_equal(np.asarray(image), np.asarray(check)):
                    raise SystemExit(f"{path}: lossless WebP changed pixels")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
