"""The extension point of the compressed file: one codec per method, and the registry that finds it.

A :class:`CompressedCodec` turns a trained model into file tensors plus a JSON payload and a file back
into a model. Its tensors are named in the file by ``file_keys``, a map from stable file-key prefixes
to the module paths that hold them in the model: renaming an attribute changes the right-hand side of
one entry and nothing in the file, and a tensor no entry covers is refused rather than written under
a name that would silently change the format. :func:`load_compressed_model` reads any registered
method's file; methods register their codec with :func:`register_codec`.
"""

from __future__ import annotations

import abc
import math
from pathlib import Path
from typing import Any, ClassVar, Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from nerfqat_plugin.compression.file_format import CompressedFileError, read_compressed

TensorsAndPayload = Tuple[Dict[str, Tensor], Dict[str, Any]]
MAX_DECODED_VALUES = 1 << 30
"""Largest model a file may describe (values of its parameters and buffers): 4 GiB of float32."""


def _occupancy_values(payload: Dict[str, Any]) -> int:
    resolution = (payload.get("occupancy") or {}).get("resolution", [])
    return math.prod(int(r) for r in resolution) if resolution else 0


def _rename(names: Mapping[str, Any], prefixes: Mapping[str, str], what: str) -> Dict[str, str]:
    """Old name -> new name for every one of ``names``, replacing its longest prefix (whole dotted
    components) found in ``prefixes``; a name no prefix covers raises ValueError."""
    ordered = sorted(prefixes.items(), key=lambda item: -len(item[0]))
    renamed = {}
    for name in names:
        match = next((p for p in ordered if name == p[0] or name.startswith(p[0] + ".")), None)
        if match is None:
            raise ValueError(f"{what} {name!r} has no file key: add its module to the codec's file_keys")
        renamed[name] = match[1] + name[len(match[0]) :]
    return renamed


class CompressedCodec(abc.ABC):
    """Encode one method's model into a file's tensors and payload, and decode them back.

    Subclasses set ``method`` (the payload's method name) and ``file_keys`` (file-key prefix ->
    module path), and implement :meth:`encode_modules` / :meth:`decode_modules`, which name tensors by
    module path; this class turns those names into file keys and back."""

    method: ClassVar[str]
    file_keys: ClassVar[Dict[str, str]]

    def decoded_values(self, payload: Dict[str, Any]) -> int:
        """An upper estimate of the values the payload's model holds, checked before it is built:
        a payload that claims an enormous model is refused instead of exhausting memory."""
        return 0

    @abc.abstractmethod
    def encode_modules(self, model: nn.Module, operating_point: Optional[str]) -> TensorsAndPayload:
        """Tensors named by module path, and the payload (``payload["tensors"]``: their layouts)."""

    @abc.abstractmethod
    def decode_modules(self, tensors: Dict[str, Tensor], payload: Dict[str, Any]) -> nn.Module:
        """A model rebuilt from tensors named by module path and the payload."""

    def encode(self, model: nn.Module, operating_point: Optional[str] = None) -> TensorsAndPayload:
        tensors, payload = self.encode_modules(model, operating_point)
        names = _rename(tensors, self.file_keys_by_module_path(), "tensor")
        layout = {names[name]: spec for name, spec in payload.get("tensors", {}).items()}
        return {names[name]: t for name, t in tensors.items()}, {**payload, "tensors": layout}

    def decode(self, tensors: Dict[str, Tensor], payload: Dict[str, Any]) -> nn.Module:
        claimed = self.decoded_values(payload) + _occupancy_values(payload)
        if claimed > MAX_DECODED_VALUES:
            raise ValueError(f"the payload describes a model of {claimed} values (more than {MAX_DECODED_VALUES})")
        names = _rename(tensors, self.file_keys, "file tensor")
        layout = {names.get(key, key): spec for key, spec in payload.get("tensors", {}).items()}
        return self.decode_modules({names[k]: t for k, t in tensors.items()}, {**payload, "tensors": layout})

    @classmethod
    def file_keys_by_module_path(cls) -> Dict[str, str]:
        return {path: key for key, path in cls.file_keys.items()}


_CODECS: Dict[str, CompressedCodec] = {}


def register_codec(codec: CompressedCodec) -> CompressedCodec:
    """Make files whose payload names ``codec.method`` decode with ``codec``."""
    _CODECS[codec.method] = codec
    return codec


def _register_plugin_codecs() -> None:
    import nerfqat_plugin.models  # noqa: F401  (importing the models registers their codecs)


def codec_for(method: str) -> Optional[CompressedCodec]:
    """The registered codec of ``method`` (the plugin's own methods register on first use)."""
    if method not in _CODECS:
        _register_plugin_codecs()
    return _CODECS.get(method)


def registered_methods() -> Tuple[str, ...]:
    """The names of every method with a registered codec."""
    _register_plugin_codecs()
    return tuple(sorted(_CODECS))


def load_compressed_model(path: Path | str, device: Optional[torch.device | str] = None) -> nn.Module:
    """Rebuild a model from a compressed-field file, ready to render (eval mode)."""
    tensors, payload = read_compressed(Path(path))
    method = payload.get("method")
    codec = codec_for(str(method))
    if codec is None:
        raise CompressedFileError(f"{path}: unknown method {method!r} (known: {list(registered_methods())})")
    try:
        model = codec.decode(tensors, payload)
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        raise CompressedFileError(f"{path}: inconsistent contents ({err})") from err
    model.eval()
    if device is not None:
        model.to(device)
    return model
