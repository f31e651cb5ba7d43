"""Packing of b-bit integers into a dense byte stream, optionally deflated.

Both methods store integers narrower than a byte: nerf-qat's int4..int8 weights and vqad's b-bit
codebook indices. Values are packed little-endian bit by bit, so a tensor of n values of b bits
occupies exactly ceil(n * b / 8) bytes. :func:`encode_integers` then deflates the stream (zlib)
when that makes it smaller: quantized weights cluster around zero and learned indices repeat in
space, so their packed bits are far from random.
"""

from __future__ import annotations

import zlib
from typing import Any, Dict, Tuple

import numpy as np
import torch

MIN_BITS = 1
MAX_BITS = 16
MAX_DEFLATE_RATIO = 1032
"""deflate's largest possible expansion (its longest match per bit pair): a stream announcing more is corrupt."""


def packed_num_bytes(num_values: int, bits: int) -> int:
    """Bytes needed for ``num_values`` integers of ``bits`` bits."""
    return (num_values * bits + 7) // 8


def _check_bits(bits: int) -> None:
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in [{MIN_BITS}, {MAX_BITS}], got {bits}")


def pack_unsigned(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integers in ``[0, 2**bits)`` into a flat uint8 tensor (row-major order of ``values``)."""
    _check_bits(bits)
    flat = values.detach().reshape(-1).to("cpu", torch.int64).numpy()
    if flat.size and (flat.min() < 0 or flat.max() >= (1 << bits)):
        raise ValueError(f"values out of range for {bits}-bit unsigned packing")
    if bits == 8:
        return torch.from_numpy(flat.astype(np.uint8))
    shifts = np.arange(bits, dtype=np.int64)
    bit_matrix = ((flat[:, None] >> shifts) & 1).astype(np.uint8)
    return torch.from_numpy(np.packbits(bit_matrix.reshape(-1), bitorder="little"))


def unpack_unsigned(packed: torch.Tensor, bits: int, num_values: int) -> torch.Tensor:
    """Inverse of :func:`pack_unsigned`; returns an int64 tensor of ``num_values`` values."""
    _check_bits(bits)
    data = packed.detach().reshape(-1).to("cpu", torch.uint8).numpy()
    if data.size != packed_num_bytes(num_values, bits):
        raise ValueError(
            f"packed stream has {data.size} bytes, expected {packed_num_bytes(num_values, bits)} "
            f"for {num_values} values of {bits} bits"
        )
    if bits == 8:
        return torch.from_numpy(data.astype(np.int64))
    bit_stream = np.unpackbits(data, bitorder="little")[: num_values * bits]
    weights = (1 << np.arange(bits, dtype=np.int64))[None, :]
    return torch.from_numpy((bit_stream.reshape(num_values, bits).astype(np.int64) * weights).sum(axis=1))


def pack_signed(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integers in ``[-2**(bits-1), 2**(bits-1))`` (two's-complement range) by offsetting them."""
    offset = 1 << (bits - 1)
    return pack_unsigned(values.to(torch.int64) + offset, bits)


def unpack_signed(packed: torch.Tensor, bits: int, num_values: int) -> torch.Tensor:
    """Inverse of :func:`pack_signed`."""
    return unpack_unsigned(packed, bits, num_values) - (1 << (bits - 1))


def encode_integers(values: torch.Tensor, bits: int, signed: bool) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """Pack ``values`` (deflated when smaller); returns the uint8 tensor and its layout entry."""
    packed = pack_signed(values, bits) if signed else pack_unsigned(values, bits)
    spec: Dict[str, Any] = {
        "encoding": "packed-int" if signed else "packed-uint",
        "bits": bits,
        "shape": list(values.shape),
    }
    deflated = zlib.compress(packed.numpy().tobytes(), 9)
    if len(deflated) < packed.numel():
        spec["compression"] = "deflate"
        packed = torch.frombuffer(bytearray(deflated), dtype=torch.uint8)
    return packed, spec


def decode_integers(data: torch.Tensor, spec: Dict[str, Any]) -> torch.Tensor:
    """Inverse of :func:`encode_integers` (int64 values of the recorded shape)."""
    bits = int(spec["bits"])
    shape = [int(s) for s in spec["shape"]]
    count = int(np.prod(shape)) if shape else 1
    if spec.get("compression") == "deflate":
        expected = packed_num_bytes(count, bits)
        if expected > MAX_DEFLATE_RATIO * data.numel() + 64:  # rejected before inflating anything
            raise ValueError(f"deflated stream of {data.numel()} bytes cannot hold the announced {expected}")
        inflater = zlib.decompressobj()
        try:
            # Bounded: a hostile stream cannot inflate beyond the bytes the layout announces.
            raw = inflater.decompress(data.numpy().tobytes(), expected + 1)
        except zlib.error as err:
            raise ValueError(f"corrupt deflated integer stream ({err})") from err
        if len(raw) != expected or not inflater.eof:
            raise ValueError(f"deflated integer stream holds {len(raw)} bytes, expected {expected}")
        data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    elif spec.get("compression") is not None:
        raise ValueError(f"unknown compression {spec['compression']!r}")
    unpack = unpack_signed if spec["encoding"] == "packed-int" else unpack_unsigned
    return unpack(data, bits, count).view(*shape)
