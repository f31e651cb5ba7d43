"""Bit packing and the compressed-field file: round trips, atomic writes, clear errors on bad files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nerfqat_plugin.compression import file_format
from nerfqat_plugin.compression.bitpack import (
    decode_integers,
    encode_integers,
    pack_signed,
    pack_unsigned,
    packed_num_bytes,
    unpack_signed,
    unpack_unsigned,
)
from nerfqat_plugin.compression.file_format import CompressedFileError, read_compressed, write_compressed
from nerfqat_plugin.errors import OutputError


@pytest.mark.parametrize("bits", list(range(1, 17)))
def test_unsigned_packing_round_trips_for_every_width(bits: int) -> None:
    values = torch.randint(0, 2**bits, (1001,))
    packed = pack_unsigned(values, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_num_bytes(1001, bits)
    assert torch.equal(unpack_unsigned(packed, bits, 1001), values)


@pytest.mark.parametrize("bits", [4, 5, 8])
def test_signed_packing_round_trips(bits: int) -> None:
    values = torch.randint(-(2 ** (bits - 1)), 2 ** (bits - 1), (77,))
    assert torch.equal(unpack_signed(pack_signed(values, bits), bits, 77), values)


def test_packing_rejects_out_of_range_values_and_wrong_lengths() -> None:
    with pytest.raises(ValueError, match="out of range"):
        pack_unsigned(torch.tensor([16]), 4)
    with pytest.raises(ValueError, match="bytes"):
        unpack_unsigned(torch.zeros(3, dtype=torch.uint8), 4, 10)


@pytest.mark.parametrize("signed", [True, False])
def test_integer_encoding_deflates_only_when_smaller_and_round_trips(signed: bool) -> None:
    g = torch.Generator().manual_seed(0)
    noisy = torch.randint(-8 if signed else 0, 8 if signed else 16, (1000,), generator=g)
    repetitive = torch.zeros(4000, dtype=torch.int64)
    repetitive[::97] = 3
    for values in (noisy, repetitive.view(40, 100)):
        data, spec = encode_integers(values, 4, signed)
        assert torch.equal(decode_integers(data, spec), values)
        packed_bytes = (values.numel() * 4 + 7) // 8
        assert data.numel() <= packed_bytes
    assert spec["compression"] == "deflate" and data.numel() < 100  # 2000 packed bytes of mostly zeros
    assert encode_integers(noisy, 4, signed)[1].get("compression") is None  # random bits do not shrink


def test_deflated_stream_is_checked_and_bounded() -> None:
    data, spec = encode_integers(torch.zeros(4000, dtype=torch.int64), 4, signed=False)
    with pytest.raises(ValueError, match="expected"):
        decode_integers(data, {**spec, "shape": [10]})  # inflates to more than announced: refused
    with pytest.raises(ValueError, match="corrupt"):
        decode_integers(torch.full((20,), 7, dtype=torch.uint8), spec)
    with pytest.raises(ValueError, match="compression"):
        decode_integers(data, {**spec, "compression": "lzma"})


def _sample(tmp_path: Path) -> Path:
    path = tmp_path / "field.nqz"
    tensors = {"a": torch.arange(10, dtype=torch.uint8), "b": torch.randn(3, 4), "c": torch.tensor(1.5)}
    size = write_compressed(path, tensors, {"method": "test", "n": 3})
    assert size == path.stat().st_size
    return path


def test_round_trip_and_no_leftover_files(tmp_path: Path) -> None:
    path = _sample(tmp_path)
    tensors, payload = read_compressed(path)
    assert payload == {"method": "test", "n": 3}
    assert torch.equal(tensors["a"], torch.arange(10, dtype=torch.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["field.nqz"]
    header = json.loads(path.read_bytes()[8 : 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]])
    assert header["__metadata__"]["format_version"] == str(file_format.FORMAT_VERSION)
    # Reproducible bytes: sorted header keys (safetensors' writer orders them per process), and
    # safetensors itself still reads the rewritten file.
    assert list(header) == sorted(header) and list(header["__metadata__"]) == sorted(header["__metadata__"])
    from safetensors.torch import load_file

    assert torch.equal(load_file(path)["b"], tensors["b"])


def test_failed_write_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _sample(tmp_path)
    before = path.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(file_format.os, "replace", broken_replace)
    with pytest.raises(OutputError, match=f"{path}: cannot write here \\(disk full\\)"):
        write_compressed(path, {"x": torch.zeros(5)}, {"method": "test"})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["field.nqz"]


def test_unwritable_outputs_are_one_line_errors_and_leave_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(OutputError, match=f"{tmp_path}: is a directory; name the file to write"):
        write_compressed(tmp_path, {"x": torch.zeros(5)}, {"method": "test"})
    with pytest.raises(OutputError, match=f"{tmp_path}: is a directory; name the file to write"):
        file_format.check_writable(tmp_path)  # what a command checks before its long work
    file_format.check_writable(tmp_path / "new" / "out.nqz")  # writable: leaves only the folder it made
    assert [p.name for p in tmp_path.rglob("*")] == ["new"]
    (tmp_path / "new").rmdir()

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(file_format.tempfile, "mkstemp", read_only)
    with pytest.raises(OutputError, match=r"out.nqz: cannot write here \(Read-only file system\)"):
        write_compressed(tmp_path / "out.nqz", {"x": torch.zeros(5)}, {"method": "test"})
    with pytest.raises(OutputError, match=r"out.nqz: cannot write here \(Read-only file system\)"):
        file_format.check_writable(tmp_path / "out.nqz")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda b: b[:5], "truncated"),
        (lambda b: b[: len(b) - 7], "corrupt or truncated"),
        (lambda b: b[:-1] + bytes([b[-1] ^ 0xFF]), "checksum"),
        (lambda b: b"PK\x03\x04 not a safetensors file at all", "not a compressed field file"),
    ],
)
def test_damaged_files_give_one_clear_error(tmp_path: Path, corrupt, message: str) -> None:
    path = _sample(tmp_path)
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(CompressedFileError, match=message) as info:
        read_compressed(path)
    assert str(path) in str(info.value)


def test_foreign_safetensors_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(CompressedFileError, match="not a nerfqat-plugin"):
        read_compressed(path)


def test_newer_format_version_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file_format, "FORMAT_VERSION", file_format.FORMAT_VERSION + 1)
    path = _sample(tmp_path)
    monkeypatch.undo()
    with pytest.raises(CompressedFileError, match="newer"):
        read_compressed(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CompressedFileError, match="not found"):
        read_compressed(tmp_path / "nope.nqz")
