"""The compressed-field file: safetensors tensors plus a versioned JSON header.

Layout (a valid safetensors file, so any safetensors reader can inspect it)::

    u64 little-endian header length | JSON header | raw tensor bytes

The JSON header's ``__metadata__`` holds:

* ``format``: :data:`FORMAT_NAME`, to reject foreign safetensors files;
* ``format_version``: an integer; readers refuse versions newer than :data:`FORMAT_VERSION`;
* ``payload``: JSON describing how to rebuild the field (method, configuration, tensor encodings);
* ``sha256``: digest of the payload and the tensor bytes, so a flipped bit is caught at load time
  (files of format 1 and 2 digest their tensors only, and are checked that way).

No pickle is involved anywhere: loading a file can never execute code. Files are reproducible
byte for byte: the header's keys are written sorted (safetensors' own writer orders metadata by a
per-process hash seed).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from nerfqat_plugin.errors import OutputError, UserInputError

FORMAT_NAME = "nerfqat-plugin/compressed-field"
FORMAT_VERSION = 4
"""2: packed integers may be deflated (layout ``compression``); 3: the checksum covers the payload too;
4: an occupancy grid names its box and whether outside it is occupied (forward-facing files carry one
over the NDC cube, which earlier readers would misplace). Files of every earlier version still load."""
_HEADER_LEN_BYTES = 8
_MAX_HEADER_BYTES = 100 * 1024 * 1024


class CompressedFileError(UserInputError, ValueError):
    """A compressed-field file is missing, truncated, corrupt, foreign or too new."""


def _digest(tensors: Dict[str, torch.Tensor], payload_text: str | None = None) -> str:
    """sha256 of the tensors (names, dtypes, shapes, bytes), preceded by the payload's JSON text when given."""
    sha = hashlib.sha256()
    if payload_text is not None:
        sha.update(payload_text.encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous().cpu()
        sha.update(name.encode())
        sha.update(str(tensor.dtype).encode())
        sha.update(str(tuple(tensor.shape)).encode())
        sha.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def serialize_compressed(tensors: Dict[str, torch.Tensor], payload: Dict[str, Any]) -> bytes:
    """The exact bytes :func:`write_compressed` writes (its length is the reported file size)."""
    cpu_tensors = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    payload_text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "payload": payload_text,
        "sha256": _digest(cpu_tensors, payload_text),
    }
    return _with_sorted_header(safetensors_save(cpu_tensors, metadata=metadata))


def _with_sorted_header(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted (padded to 8 bytes, as safetensors
    does); tensor offsets are relative to the end of the header, so they stay valid."""
    (length,) = struct.unpack("<Q", blob[:_HEADER_LEN_BYTES])
    header = json.loads(blob[_HEADER_LEN_BYTES : _HEADER_LEN_BYTES + length])
    encoded = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + blob[_HEADER_LEN_BYTES + length :]


def write_compressed(path: Path, tensors: Dict[str, torch.Tensor], payload: Dict[str, Any]) -> int:
    """Write ``tensors`` and ``payload`` atomically to ``path`` (:func:`write_atomically`); returns the
    file's size in bytes."""
    return write_atomically(Path(path), serialize_compressed(tensors, payload))


def write_atomically(path: Path, blob: bytes) -> int:
    """Write ``blob`` to ``path`` through a temporary sibling renamed into place, so an interrupted
    write never leaves a half-written file under the final name and a failed one leaves an existing
    file as it was. A path that cannot be written raises :class:`OutputError`. Returns the byte count."""
    path = Path(path)
    fd, tmp_name = _temporary_sibling(path)
    try:
        os.chmod(tmp_name, 0o666 & ~_current_umask())  # mkstemp creates 0600; use the usual mode
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except OSError as err:
        Path(tmp_name).unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write here ({err.strerror or err})") from None
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return len(blob)


def check_writable(path: Path) -> None:
    """Raise :class:`OutputError` now if ``path`` cannot be written (a folder, a place this process
    cannot create files in), so that a command fails before its long work rather than after it.
    Creates ``path``'s missing parent folders, as the write would."""
    fd, tmp_name = _temporary_sibling(Path(path))
    os.close(fd)
    Path(tmp_name).unlink(missing_ok=True)


def _temporary_sibling(path: Path) -> Tuple[int, str]:
    """An open temporary file beside ``path`` (its descriptor and name); OutputError if there cannot be one."""
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; name the file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise OutputError(f"{path}: cannot write here ({err.strerror or err})") from None


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _read_metadata(path: Path, blob: bytes) -> Dict[str, str]:
    if len(blob) < _HEADER_LEN_BYTES:
        raise CompressedFileError(f"{path}: file is truncated ({len(blob)} bytes)")
    (header_len,) = struct.unpack("<Q", blob[:_HEADER_LEN_BYTES])
    if header_len > _MAX_HEADER_BYTES or _HEADER_LEN_BYTES + header_len > len(blob):
        raise CompressedFileError(f"{path}: not a compressed field file (bad or truncated header)")
    try:
        header = json.loads(blob[_HEADER_LEN_BYTES : _HEADER_LEN_BYTES + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CompressedFileError(f"{path}: not a compressed field file (header is not JSON)") from err
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise CompressedFileError(f"{path}: not a nerfqat-plugin compressed field file")
    return metadata


def read_compressed(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read and verify a file written by :func:`write_compressed`; returns ``(tensors, payload)``."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError as err:
        raise CompressedFileError(f"{path}: file not found") from err
    except OSError as err:
        raise CompressedFileError(f"{path}: cannot read file ({err.strerror})") from err
    metadata = _read_metadata(path, blob)
    try:
        version = int(metadata.get("format_version", ""))
    except ValueError as err:
        raise CompressedFileError(f"{path}: missing or invalid format version") from err
    if version > FORMAT_VERSION:
        raise CompressedFileError(
            f"{path}: format version {version} is newer than this nerfqat-plugin supports "
            f"({FORMAT_VERSION}); upgrade nerfqat-plugin to read it"
        )
    try:
        tensors = safetensors_load(blob)
    except Exception as err:  # safetensors raises its own error type for any malformed body
        raise CompressedFileError(f"{path}: corrupt or truncated tensor data ({err})") from err
    payload_text = metadata.get("payload")
    if not isinstance(payload_text, str):
        raise CompressedFileError(f"{path}: missing payload description")
    if _digest(tensors, payload_text if version >= 3 else None) != metadata.get("sha256"):
        raise CompressedFileError(f"{path}: checksum mismatch, the file is corrupt")
    try:
        payload = json.loads(payload_text)
    except json.JSONDecodeError as err:
        raise CompressedFileError(f"{path}: invalid payload description") from err
    if not isinstance(payload, dict):
        raise CompressedFileError(f"{path}: invalid payload description")
    return tensors, payload
