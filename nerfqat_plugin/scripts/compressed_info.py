"""``ns-compressed-info FILE``: verify a compressed-field file, rebuild its model and describe it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro
from nerfstudio.utils.rich_utils import CONSOLE

from nerfqat_plugin.compression.codec import load_compressed_model
from nerfqat_plugin.compression.file_format import read_compressed


@dataclass
class CompressedInfo:
    """Check a compressed-field file (format, version, checksum, contents) and print what it holds."""

    path: tyro.conf.Positional[Path]
    """The compressed-field file."""
    json_output: bool = False
    """Print the description as JSON."""

    def main(self) -> None:
        _, payload = read_compressed(self.path)
        model = load_compressed_model(self.path)
        # The sampling space the file renders in; the near/far options only apply without NDC.
        options = {k: v for k, v in payload.get("model", {}).items() if k not in ("near_plane", "far_plane")}
        sampling = f"NDC {payload['ndc']}" if payload.get("ndc") else f"near/far {payload.get('near_far')}"
        info = {
            "path": str(self.path),
            "size_bytes": self.path.stat().st_size,
            "method": payload["method"],
            "sampling": sampling,
            "model": options,
            # Everything the model computes with: parameters and buffers (vqad's grid indices are buffers).
            "stored_values": sum(t.numel() for t in model.state_dict().values() if isinstance(t, torch.Tensor)),
            "operating_points": {name: model.compressed_size_bytes(name) for name in model.operating_points()},
        }
        if self.json_output:
            print(json.dumps(info, indent=2))
            return
        CONSOLE.print(f"{self.path}: {info['method']}, {info['size_bytes']} bytes, {info['stored_values']} values")
        CONSOLE.print(f"  sampling: {sampling}")
        for key, value in sorted(info["model"].items()):
            CONSOLE.print(f"  {key}: {value}")
        for name, size in info["operating_points"].items():
            CONSOLE.print(f"  operating point {name}: {size} bytes")


def entrypoint() -> None:
    """Console-script entry point."""
    tyro.cli(CompressedInfo).main()


if __name__ == "__main__":
    entrypoint()
