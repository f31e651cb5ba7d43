"""One level of a learned-index codebook grid, looked up in one Triton kernel, forward and backward.

The torch path (:meth:`LearnedIndexCodebookGrid.level_features`) gathers each point's eight corner
ids, their logits rows, a softmax and one-hot per corner, the codebook rows and the trilinear
weights as separate tensors of [N, 8, ...], each written to and read back from memory. Here one
program handles a block of points: for every corner it computes the vertex id and weight, reads the
vertex's logits row, takes its argmax and adds ``weight * codebook[argmax]`` to the point's feature;
the [N, 8, K] softmaxes never exist. Backward, per corner, the straight-through gradient
(``one_hot(argmax) + softmax - softmax.detach()``) reaches only the rows of the vertices the points
touched: ``softmax * (s - <softmax, s>)`` with ``s = codebook @ g`` is added to the vertex's logits
row and ``g`` to the chosen codebook row (``g``: the corner's weight times the output's gradient).
The same values and gradients as the torch path, up to float summation order (tested on the CPU
through Triton's interpreter).

Free logits only (the default ``logit_rank`` 0, dense or compacted levels, with or without a block
mask); positions get no gradient (the fields' positions need none).

Probed levels (:func:`fused_probed_lookup`) have their own kernels, which take every level of a grid
in one launch (a program per block of points and level; a training step is bound by its launches):
per corner the two spatial hashes (the codebook bucket of ``2**probe_bits`` entries, the index-table
slot), the slot's probe logits, their argmax and ``weight * codebook[bucket + argmax]``; the torch path
writes [N, levels, 8, probes, F] candidate rows and softmaxes. Backward recomputes the corners from
the positions (nothing per corner is kept between the passes) and adds the straight-through gradient
to the touched slots' logits and the chosen codebook rows.
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from nerfqat_plugin.field_components.block_occupancy import block_grid_shape

try:  # Triton ships with CUDA builds of torch; CPU-only installs have no fused lookup.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

BLOCK_POINTS = 32
"""Points per program."""


def fused_lookup_available(device: torch.device) -> bool:
    """Whether the fused lookup runs on ``device``: CUDA with Triton, or Triton's interpreter on a CPU
    (``TRITON_INTERPRET=1``, as the tests run it)."""
    if triton is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    @triton.jit
    def _corner(px, py, pz, rx, ry, rz, corner: tl.constexpr):
        """Vertex id and trilinear weight of one of the eight corners around each position."""
        ox: tl.constexpr = (corner >> 2) & 1
        oy: tl.constexpr = (corner >> 1) & 1
        oz: tl.constexpr = corner & 1
        sx = tl.minimum(tl.maximum(px, 0.0), 1.0) * (rx - 1)
        sy = tl.minimum(tl.maximum(py, 0.0), 1.0) * (ry - 1)
        sz = tl.minimum(tl.maximum(pz, 0.0), 1.0) * (rz - 1)
        bx = tl.minimum(tl.floor(sx), rx - 2)
        by = tl.minimum(tl.floor(sy), ry - 2)
        bz = tl.minimum(tl.floor(sz), rz - 2)
        fx, fy, fz = sx - bx, sy - by, sz - bz
        wx = fx if ox == 1 else 1.0 - fx
        wy = fy if oy == 1 else 1.0 - fy
        wz = fz if oz == 1 else 1.0 - fz
        cx = bx.to(tl.int64) + ox
        cy = by.to(tl.int64) + oy
        cz = bz.to(tl.int64) + oz
        return cx, cy, cz, (cx * ry + cy) * rz + cz, wx * wy * wz

    @triton.jit
    def _block_points(pos_ptr, n, BLOCK: tl.constexpr):
        """This program's point indices, which of them exist, and their coordinates."""
        points = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        valid = points < n
        px = tl.load(pos_ptr + points * 3, mask=valid, other=0.0)
        py = tl.load(pos_ptr + points * 3 + 1, mask=valid, other=0.0)
        pz = tl.load(pos_ptr + points * 3 + 2, mask=valid, other=0.0)
        return points, valid, px, py, pz

    @triton.jit
    def _straight_through_grad(logits, s):
        """Gradient of logits rows [BLOCK, K] whose entries' shares of the output gradient are ``s``
        [BLOCK, K]: softmax · (s − ⟨softmax, s⟩), the softmax's backward."""
        e = tl.exp(logits - tl.max(logits, axis=1)[:, None])
        p = e / tl.sum(e, axis=1)[:, None]
        return p * (s - tl.sum(p * s, axis=1)[:, None])

    @triton.jit
    def _forward_kernel(
        pos_ptr, logits_ptr, rows_ptr, mask_ptr, codebook_ptr, out_ptr, chosen_ptr, row_ptr, weight_ptr,
        n, rx, ry, rz, block_size, gy, gz,
        K: tl.constexpr, F: tl.constexpr, F_PAD: tl.constexpr,
        HAS_ROWS: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        points, valid, px, py, pz = _block_points(pos_ptr, n, BLOCK)
        entries = tl.arange(0, K)
        features = tl.arange(0, F_PAD)
        feature_ok = features < F
        acc = tl.zeros((BLOCK, F_PAD), dtype=tl.float32)
        for corner in tl.static_range(8):
            cx, cy, cz, vertex, weight = _corner(px, py, pz, rx, ry, rz, corner)
            if HAS_MASK:  # corners in dropped blocks contribute nothing
                block = ((cx // block_size) * gy + cy // block_size) * gz + cz // block_size
                weight = weight * tl.load(mask_ptr + block, mask=valid, other=0.0)
            row = vertex
            if HAS_ROWS:  # a compacted level: the kept row holding the vertex
                row = tl.load(rows_ptr + vertex, mask=valid, other=0)
            logits = tl.load(logits_ptr + row[:, None] * K + entries[None, :], mask=valid[:, None], other=0.0)
            chosen = tl.argmax(logits, axis=1)
            entry = tl.load(
                codebook_ptr + chosen[:, None] * F + features[None, :], mask=valid[:, None] & feature_ok[None, :]
            )
            acc += weight[:, None] * entry
            tl.store(chosen_ptr + points * 8 + corner, chosen.to(tl.int32), mask=valid)
            tl.store(row_ptr + points * 8 + corner, row, mask=valid)
            tl.store(weight_ptr + points * 8 + corner, weight, mask=valid)
        tl.store(out_ptr + points[:, None] * F + features[None, :], acc, mask=valid[:, None] & feature_ok[None, :])

    @triton.jit
    def _backward_kernel(
        grad_out_ptr, logits_ptr, codebook_ptr, chosen_ptr, row_ptr, weight_ptr, grad_logits_ptr, grad_codebook_ptr,
        n,
        K: tl.constexpr, F: tl.constexpr, F_PAD: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        points = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        valid = points < n
        entries = tl.arange(0, K)
        features = tl.arange(0, F_PAD)
        feature_ok = features < F
        both = valid[:, None] & feature_ok[None, :]
        grad_out = tl.load(grad_out_ptr + points[:, None] * F + features[None, :], mask=both, other=0.0)
        codebook = tl.load(codebook_ptr + entries[:, None] * F + features[None, :], mask=feature_ok[None, :], other=0.0)
        for corner in tl.static_range(8):
            weight = tl.load(weight_ptr + points * 8 + corner, mask=valid, other=0.0)
            row = tl.load(row_ptr + points * 8 + corner, mask=valid, other=0)
            chosen = tl.load(chosen_ptr + points * 8 + corner, mask=valid, other=0)
            g = weight[:, None] * grad_out  # [BLOCK, F_PAD]
            s = tl.sum(codebook[None, :, :] * g[:, None, :], axis=2)  # codebook @ g, [BLOCK, K]
            logits = tl.load(logits_ptr + row[:, None] * K + entries[None, :], mask=valid[:, None], other=0.0)
            grad_logits = _straight_through_grad(logits, s)
            tl.atomic_add(grad_logits_ptr + row[:, None] * K + entries[None, :], grad_logits, mask=valid[:, None])
            tl.atomic_add(grad_codebook_ptr + chosen[:, None] * F + features[None, :], g, mask=both)

    @triton.jit
    def _probed_corner(
        px, py, pz, rx, ry, rz, b0, b1, b2, bucket_mask, s0, s1, s2, slot_mask, corner: tl.constexpr, P: tl.constexpr
    ):  # fmt: skip
        """First codebook entry of the corner's bucket, its index-table slot and its trilinear weight."""
        cx, cy, cz, _, weight = _corner(px, py, pz, rx, ry, rz, corner)
        bucket = (((cx * b0) ^ (cy * b1) ^ (cz * b2)) & bucket_mask) * P
        slot = ((cx * s0) ^ (cy * s1) ^ (cz * s2)) & slot_mask
        return bucket, slot, weight

    @triton.jit
    def _probed_level(res_ptr):
        """This program's level (the launch grid's second axis) and its vertices per axis."""
        level = tl.program_id(1).to(tl.int64)
        return level, tl.load(res_ptr + level * 3), tl.load(res_ptr + level * 3 + 1), tl.load(res_ptr + level * 3 + 2)

    @triton.jit
    def _probed_forward_kernel(
        pos_ptr, res_ptr, table_ptr, codebook_ptr, out_ptr,
        n, table_stride, codebook_stride, b0, b1, b2, bucket_mask, s0, s1, s2, slot_mask,
        P: tl.constexpr, F: tl.constexpr, F_PAD: tl.constexpr, BLOCK: tl.constexpr, STORED: tl.constexpr,
    ):  # fmt: skip
        """A block of points (axis 0) at one level (axis 1) into ``out`` [N, levels, F]; each level's
        rows of the stacked table and codebook start at ``level * stride``. ``STORED``: the table
        holds each slot's stored probe (integers) instead of its logits."""
        points, valid, px, py, pz = _block_points(pos_ptr, n, BLOCK)
        level, rx, ry, rz = _probed_level(res_ptr)
        table_ptr += level * table_stride
        codebook_ptr += level * codebook_stride
        probes = tl.arange(0, P)
        features = tl.arange(0, F_PAD)
        both = valid[:, None] & (features < F)[None, :]
        acc = tl.zeros((BLOCK, F_PAD), dtype=tl.float32)
        for corner in tl.static_range(8):
            bucket, slot, weight = _probed_corner(
                px, py, pz, rx, ry, rz, b0, b1, b2, bucket_mask, s0, s1, s2, slot_mask, corner, P
            )
            if STORED:
                entry = bucket + tl.load(table_ptr + slot, mask=valid, other=0).to(tl.int64)
            else:
                logits = tl.load(table_ptr + slot[:, None] * P + probes[None, :], mask=valid[:, None], other=0.0)
                entry = bucket + tl.argmax(logits, axis=1)
            acc += weight[:, None] * tl.load(codebook_ptr + entry[:, None] * F + features[None, :], mask=both)
        rows = points.to(tl.int64) * tl.num_programs(1) + level
        tl.store(out_ptr + rows[:, None] * F + features[None, :], acc, mask=both)

    @triton.jit
    def _probed_backward_kernel(
        grad_out_ptr, pos_ptr, res_ptr, logits_ptr, codebook_ptr, grad_logits_ptr, grad_codebook_ptr,
        n, table_stride, codebook_stride, b0, b1, b2, bucket_mask, s0, s1, s2, slot_mask,
        P: tl.constexpr, F: tl.constexpr, F_PAD: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        points, valid, px, py, pz = _block_points(pos_ptr, n, BLOCK)
        level, rx, ry, rz = _probed_level(res_ptr)
        logits_ptr += level * table_stride
        grad_logits_ptr += level * table_stride
        codebook_ptr += level * codebook_stride
        grad_codebook_ptr += level * codebook_stride
        probes = tl.arange(0, P)
        features = tl.arange(0, F_PAD)
        feature_ok = features < F
        both = valid[:, None] & feature_ok[None, :]
        rows = points.to(tl.int64) * tl.num_programs(1) + level
        grad_out = tl.load(grad_out_ptr + rows[:, None] * F + features[None, :], mask=both, other=0.0)
        for corner in tl.static_range(8):
            bucket, slot, weight = _probed_corner(
                px, py, pz, rx, ry, rz, b0, b1, b2, bucket_mask, s0, s1, s2, slot_mask, corner, P
            )
            g = weight[:, None] * grad_out  # [BLOCK, F_PAD]
            entries = bucket[:, None] + probes[None, :]  # the bucket's entries [BLOCK, P]
            candidates = tl.load(
                codebook_ptr + entries[:, :, None] * F + features[None, None, :],
                mask=valid[:, None, None] & feature_ok[None, None, :],
                other=0.0,
            )
            s = tl.sum(candidates * g[:, None, :], axis=2)  # each candidate's share of the gradient [BLOCK, P]
            logits = tl.load(logits_ptr + slot[:, None] * P + probes[None, :], mask=valid[:, None], other=0.0)
            chosen = tl.argmax(logits, axis=1)
            grad_logits = _straight_through_grad(logits, s)
            tl.atomic_add(grad_logits_ptr + slot[:, None] * P + probes[None, :], grad_logits, mask=valid[:, None])
            tl.atomic_add(grad_codebook_ptr + (bucket + chosen)[:, None] * F + features[None, :], g, mask=both)


def _ensure_triton() -> None:
    if triton is None:
        raise RuntimeError("the fused codebook lookup needs Triton")


# Registered as torch custom ops (with shapes for tracing and their own autograd), so a
# ``torch.compile``d field keeps the lookup inside its graph instead of breaking it per level.
@torch.library.custom_op("nerfqat::fused_level_lookup_forward", mutates_args=())
def _lookup_forward(
    positions: Tensor,
    logits: Tensor,
    codebook: Tensor,
    resolution: List[int],
    rows: Optional[Tensor],
    block_mask: Optional[Tensor],
    block_size: int,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Features [N, F] and, per point and corner [N, 8], the chosen entry, logits row and weight."""
    _ensure_triton()
    n, (num_entries, num_features) = positions.shape[0], codebook.shape
    positions, logits, codebook = positions.contiguous(), logits.contiguous(), codebook.contiguous()
    out = positions.new_empty(n, num_features)
    chosen = torch.empty(n, 8, dtype=torch.int32, device=positions.device)
    corner_rows = torch.empty(n, 8, dtype=torch.int64, device=positions.device)
    weights = positions.new_empty(n, 8)
    _, gy, gz = block_grid_shape(tuple(resolution), block_size)
    mask = block_mask.float().contiguous() if block_mask is not None else positions
    _forward_kernel[(triton.cdiv(n, BLOCK_POINTS),)](
        positions, logits, rows if rows is not None else chosen, mask, codebook, out, chosen, corner_rows, weights,
        n, *resolution, block_size, gy, gz,
        K=num_entries, F=num_features, F_PAD=triton.next_power_of_2(num_features),
        HAS_ROWS=rows is not None, HAS_MASK=block_mask is not None, BLOCK=BLOCK_POINTS,
    )  # fmt: skip
    return out, chosen, corner_rows, weights


@_lookup_forward.register_fake
def _(positions, logits, codebook, resolution, rows, block_mask, block_size):
    n = positions.shape[0]
    return (
        positions.new_empty(n, codebook.shape[1]),
        positions.new_empty(n, 8, dtype=torch.int32),
        positions.new_empty(n, 8, dtype=torch.int64),
        positions.new_empty(n, 8),
    )


@torch.library.custom_op("nerfqat::fused_level_lookup_backward", mutates_args=())
def _lookup_backward(
    grad_out: Tensor, logits: Tensor, codebook: Tensor, chosen: Tensor, corner_rows: Tensor, weights: Tensor
) -> Tuple[Tensor, Tensor]:
    """Gradients of the logits (touched rows only) and of the codebook."""
    _ensure_triton()
    n, (num_entries, num_features) = grad_out.shape[0], codebook.shape
    logits, codebook = logits.contiguous(), codebook.contiguous()
    grad_logits = torch.zeros_like(logits)
    grad_codebook = torch.zeros_like(codebook)
    _backward_kernel[(triton.cdiv(n, BLOCK_POINTS),)](
        grad_out.contiguous(), logits, codebook, chosen, corner_rows, weights, grad_logits, grad_codebook,
        n,
        K=num_entries, F=num_features, F_PAD=triton.next_power_of_2(num_features), BLOCK=BLOCK_POINTS,
    )  # fmt: skip
    return grad_logits, grad_codebook


@_lookup_backward.register_fake
def _(grad_out, logits, codebook, chosen, corner_rows, weights):
    return torch.empty_like(logits), torch.empty_like(codebook)


def _setup_context(ctx, inputs, output) -> None:
    _, logits, codebook, *_ = inputs
    _, chosen, corner_rows, weights = output
    ctx.save_for_backward(logits, codebook, chosen, corner_rows, weights)


def _backward(ctx, grad_out, *_unused):
    grad_logits, grad_codebook = _lookup_backward(grad_out, *ctx.saved_tensors)
    return None, grad_logits, grad_codebook, None, None, None, None


_lookup_forward.register_autograd(_backward, setup_context=_setup_context)


def fused_level_lookup(
    positions: Tensor,
    logits: Tensor,
    codebook: Tensor,
    resolution: Tuple[int, int, int],
    rows: Optional[Tensor] = None,
    block_mask: Optional[Tensor] = None,
    block_size: int = 1,
) -> Tensor:
    """Features [N, F] at ``positions`` in [0, 1]^3 [N, 3] of a level of ``resolution`` vertices per
    axis whose vertices hold free ``logits`` [rows, K] (K a power of two) over ``codebook`` [K, F]:
    each corner's ``codebook[argmax]`` with trilinear weights, straight-through gradients to both.
    ``rows`` [vertices]: the logits row of each vertex (a compacted level); ``block_mask`` [blocks]
    (0/1, row-major blocks of ``block_size`` vertices per axis): corners in dropped blocks weigh 0."""
    _ensure_triton()
    if codebook.shape[0] & (codebook.shape[0] - 1) or logits.shape[1] != codebook.shape[0]:
        raise ValueError(
            f"logits {tuple(logits.shape)} and codebook {tuple(codebook.shape)}: K must match, a power of 2"
        )
    return _lookup_forward(positions, logits, codebook, list(resolution), rows, block_mask, block_size)[0]


Primes = Tuple[int, int, int]


def _probed_hash_args(codebook_bits: int, probe_bits: int, table_bits: int, bucket_primes: Primes, slot_primes: Primes):
    """The probed kernels' hash arguments: each hash's primes and mask."""
    return (*bucket_primes, (1 << (codebook_bits - probe_bits)) - 1, *slot_primes, (1 << table_bits) - 1)


def _probed_launch(positions: Tensor, resolutions: Tensor) -> Tuple[int, Tuple[int, int]]:
    """Points, and the launch grid: blocks of points by levels."""
    n = positions.shape[0]
    return n, (triton.cdiv(n, BLOCK_POINTS), resolutions.shape[0])


@torch.library.custom_op("nerfqat::fused_probed_lookup_forward", mutates_args=())
def _probed_forward(
    positions: Tensor, logits: Tensor, codebook: Tensor, resolutions: Tensor, hashing: List[int]
) -> Tensor:
    """Features [N, levels, F] of probed levels whose index-table logits [levels * slots, probes] and
    codebooks [levels * entries, F] are stacked; ``resolutions`` [levels, 3] (int32), ``hashing``:
    :func:`_probed_hash_args`."""
    return _run_probed_forward(positions, logits, codebook, resolutions, hashing, logits.shape[1], stored=False)


def _run_probed_forward(
    positions: Tensor, table: Tensor, codebook: Tensor, resolutions: Tensor, hashing: List[int], probes: int,
    stored: bool,
) -> Tensor:  # fmt: skip
    """The probed forward kernel over ``positions``: ``table`` holds each slot's ``probes`` logits
    [levels * slots, probes], or (``stored``) its probe [levels * slots]."""
    _ensure_triton()
    (n, launch), levels, num_features = _probed_launch(positions, resolutions), resolutions.shape[0], codebook.shape[1]
    out = positions.new_empty(n, levels, num_features)
    if n:
        _probed_forward_kernel[launch](
            positions.contiguous(), resolutions.contiguous(), table.contiguous(), codebook.contiguous(), out, n,
            table.numel() // levels, codebook.numel() // levels, *hashing,
            P=probes, F=num_features, F_PAD=triton.next_power_of_2(num_features), BLOCK=BLOCK_POINTS, STORED=stored,
        )  # fmt: skip
    return out


@_probed_forward.register_fake
def _(positions, logits, codebook, resolutions, hashing):
    return positions.new_empty(positions.shape[0], resolutions.shape[0], codebook.shape[1])


@torch.library.custom_op("nerfqat::fused_probed_lookup_backward", mutates_args=())
def _probed_backward(
    grad_out: Tensor, positions: Tensor, logits: Tensor, codebook: Tensor, resolutions: Tensor, hashing: List[int]
) -> Tuple[Tensor, Tensor]:
    """Gradients of the stacked index-table logits (touched slots only) and codebooks."""
    _ensure_triton()
    logits, codebook = logits.contiguous(), codebook.contiguous()
    grad_logits, grad_codebook = torch.zeros_like(logits), torch.zeros_like(codebook)
    (n, launch), levels, num_features = _probed_launch(positions, resolutions), resolutions.shape[0], codebook.shape[1]
    if n:
        _probed_backward_kernel[launch](
            grad_out.contiguous(), positions.contiguous(), resolutions.contiguous(), logits, codebook, grad_logits,
            grad_codebook, n, logits.numel() // levels, codebook.numel() // levels, *hashing,
            P=logits.shape[1], F=num_features, F_PAD=triton.next_power_of_2(num_features), BLOCK=BLOCK_POINTS,
        )  # fmt: skip
    return grad_logits, grad_codebook


@_probed_backward.register_fake
def _(grad_out, positions, logits, codebook, resolutions, hashing):
    return torch.empty_like(logits), torch.empty_like(codebook)


def _probed_setup_context(ctx, inputs, output) -> None:
    positions, logits, codebook, resolutions, hashing = inputs
    ctx.save_for_backward(positions, logits, codebook, resolutions)
    ctx.hashing = hashing


def _probed_backward_autograd(ctx, grad_out):
    positions, logits, codebook, resolutions = ctx.saved_tensors
    grad_logits, grad_codebook = _probed_backward(grad_out, positions, logits, codebook, resolutions, ctx.hashing)
    return None, grad_logits, grad_codebook, None, None


_probed_forward.register_autograd(_probed_backward_autograd, setup_context=_probed_setup_context)


def _check_one_shape_per_level(tables: Sequence[Tensor], codebooks: Sequence[Tensor], resolutions: Tensor) -> None:
    """Levels stack only with index tables and codebooks of one shape, one per row of ``resolutions``
    (the kernels find a level's rows by offset)."""
    shapes = {(tuple(t.shape), tuple(c.shape)) for t, c in zip(tables, codebooks, strict=True)}
    if len(shapes) != 1 or len(tables) != resolutions.shape[0]:
        raise ValueError(f"probed levels of one shape, one per row of resolutions {tuple(resolutions.shape)}: {shapes}")


def _stacked(rows: Sequence[Tensor]) -> Tensor:
    """Levels' tables of one shape as one (a single level as it is)."""
    return rows[0] if len(rows) == 1 else torch.cat(list(rows))


def fused_probed_lookup(
    positions: Tensor,
    logits: Sequence[Tensor],
    codebooks: Sequence[Tensor],
    resolutions: Tensor,
    bucket_primes: Primes,
    slot_primes: Primes,
) -> Tensor:
    """Features [N, levels, F] at ``positions`` in [0, 1]^3 [N, 3] of probed levels with ``resolutions``
    [levels, 3] (int32) vertices per axis, all in one kernel: each corner's ``codebook[bucket +
    argmax(logits[slot])]`` with trilinear weights, straight-through gradients to each level's
    index-table ``logits`` [slots, probes] and ``codebook`` [entries, F] (one shape for every level).
    The bucket (of ``probes`` consecutive entries) and the slot are the corner's spatial hashes with
    ``bucket_primes`` and ``slot_primes``."""
    _ensure_triton()
    _check_one_shape_per_level(logits, codebooks, resolutions)
    (slots, probes), (entries, _) = logits[0].shape, codebooks[0].shape
    if entries & (entries - 1) or probes & (probes - 1) or probes > entries or slots & (slots - 1):
        raise ValueError(f"probed logits {(slots, probes)}, codebook entries {entries}: powers of 2, probes <= entries")
    hashing = _probed_hash_args(
        entries.bit_length() - 1, probes.bit_length() - 1, slots.bit_length() - 1, bucket_primes, slot_primes
    )
    return _probed_forward(positions, _stacked(logits), _stacked(codebooks), resolutions, list(hashing))


def stored_probed_lookup(
    positions: Tensor,
    probes: Sequence[Tensor],
    codebooks: Sequence[Tensor],
    resolutions: Tensor,
    probe_bits: int,
    bucket_primes: Primes,
    slot_primes: Primes,
) -> Tensor:
    """Features [N, levels, F] at ``positions`` of probed levels whose index tables hold stored probes
    (``probes`` [slots] per level, integers, as a file holds them): each corner's ``codebook[bucket +
    probes[slot]]`` with trilinear weights, in one kernel; no gradients (rendering a file)."""
    _ensure_triton()
    _check_one_shape_per_level(probes, codebooks, resolutions)
    (entries, _), slots = codebooks[0].shape, probes[0].numel()
    if entries & (entries - 1) or slots & (slots - 1) or not 1 <= probe_bits <= entries.bit_length() - 1:
        raise ValueError(f"probes {tuple(probes[0].shape)} and codebook {tuple(codebooks[0].shape)}: powers of 2")
    hashing = _probed_hash_args(
        entries.bit_length() - 1, probe_bits, slots.bit_length() - 1, bucket_primes, slot_primes
    )
    table, codebook = _stacked(probes), _stacked(codebooks)
    return _run_probed_forward(positions, table, codebook, resolutions, list(hashing), 1 << probe_bits, True)
