"""A quantized MLP's hidden blocks in one Triton kernel: activations stay on chip between blocks.

:class:`~nerfqat_plugin.field_components.integer_linear.IntegerQuantMLP` runs each block as an int8
product (int32 out, written to memory) and an epilogue kernel that reads it back, scales, adds the
bias, applies ReLU and writes the next block's int8 integers: every block's output goes through
memory twice, and rendering is bound by that traffic. Here one program takes a block of rows through
every hidden block: the int8 product of its integers with the block's weights (``tl.dot``, int32
accumulation), then the same epilogue as the integer path (shift correction with the weights' row
sums, scales, bias, ReLU, the block's output quantizer, rounding half to even as ``torch.round``),
in registers. Only the MLP's input integers are read and the last block's integers written.

Skip connections read the MLP's input again: a block that reads ``[h, input]`` adds the input's own
product, with its own scale and correction, as the integer path does. Widths are padded to powers of
two with zero weights, so padded columns never reach a real output. The result equals the integer
path's up to the float rounding of the epilogue (a value can land on the other side of a rounding
step now and then; tested on the CPU through Triton's interpreter).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, List

import torch
from torch import Tensor

try:  # Triton ships with CUDA builds of torch; CPU-only installs have no fused trunk.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

if TYPE_CHECKING:
    from nerfqat_plugin.field_components.integer_linear import IntegerActivation, IntegerQuantMLP

BLOCK_ROWS = 64
"""Rows per program where the launch is not tuned (Triton's interpreter)."""
TUNED_LAUNCHES = ((64, 8), (128, 8), (128, 16), (64, 4))
"""(rows per program, warps) tried on a GPU at the first call for each MLP shape; the fastest is kept."""
MAX_ROWS_PER_LAUNCH = 1 << 20
"""Rows one launch takes; larger calls are split. A launch of 2**21 rows faulted on an H100 (an
illegal memory access, cause not yet found) where 2**20 rows ran and matched the integer path."""


def fused_trunk_available(device: torch.device) -> bool:
    """Whether the fused trunk runs on ``device``: CUDA with Triton, or Triton's interpreter on a CPU
    (``TRITON_INTERPRET=1``, as the tests run it)."""
    if triton is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def _power_of_two(n: int) -> int:
    return max(32, 1 << (n - 1).bit_length())  # int8 tensor-core products step 32 along K


if triton is not None:

    @triton.jit
    def _round_half_even(x):
        r = tl.floor(x + 0.5)
        tie = (r - x) == 0.5
        odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
        return tl.where(tie & odd, r - 1.0, r)

    @triton.jit
    def _trunk_kernel(
        x_ptr,
        out_ptr,
        wh_ptr,
        wx_ptr,
        corr_h_ptr,
        corr_x_ptr,
        scale_h_ptr,
        scale_x_ptr,
        bias_ptr,
        quant_ptr,
        num_rows,
        IN: tl.constexpr,
        WIDTH: tl.constexpr,
        LAYERS: tl.constexpr,
        READS_INPUT: tl.constexpr,
        RELU_BEFORE_QUANT: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        row_ok = rows < num_rows
        k_in = tl.arange(0, IN)
        cols = tl.arange(0, WIDTH)
        x = tl.load(x_ptr + rows[:, None] * IN + k_in[None, :], mask=row_ok[:, None], other=0)
        h = tl.zeros([BLOCK, WIDTH], dtype=tl.int8)
        # A loop, not unrolled: one block's code compiled once (an unrolled trunk compiles for minutes).
        for layer in range(LAYERS):
            y = tl.zeros([BLOCK, WIDTH], dtype=tl.float32)
            if layer > 0:  # the previous block's integers
                wh = tl.load(wh_ptr + layer * WIDTH * WIDTH + cols[:, None] * WIDTH + cols[None, :])
                acc = tl.dot(h, wh, out_dtype=tl.int32) + tl.load(corr_h_ptr + layer * WIDTH + cols)[None, :]
                y = acc.to(tl.float32) * tl.load(scale_h_ptr + layer * WIDTH + cols)[None, :]
            if (READS_INPUT >> layer) & 1:  # the MLP's input (the first block, skip connections)
                wx = tl.load(wx_ptr + layer * IN * WIDTH + k_in[:, None] * WIDTH + cols[None, :])
                acc_x = tl.dot(x, wx, out_dtype=tl.int32) + tl.load(corr_x_ptr + layer * WIDTH + cols)[None, :]
                y = y + acc_x.to(tl.float32) * tl.load(scale_x_ptr + layer * WIDTH + cols)[None, :]
            y = y + tl.load(bias_ptr + layer * WIDTH + cols)[None, :]
            if RELU_BEFORE_QUANT:
                y = tl.maximum(y, 0.0)
            inverse_scale = tl.load(quant_ptr + layer * 5)
            zero = tl.load(quant_ptr + layer * 5 + 1)
            q = _round_half_even(y * inverse_scale) + zero
            q = tl.minimum(tl.maximum(q, tl.load(quant_ptr + layer * 5 + 2)), tl.load(quant_ptr + layer * 5 + 3))
            shifted = q - tl.load(quant_ptr + layer * 5 + 4)
            if not RELU_BEFORE_QUANT:  # ReLU after quantizing: q >= zero
                shifted = tl.maximum(shifted, zero - tl.load(quant_ptr + layer * 5 + 4))
            h = shifted.to(tl.int8)
        tl.store(out_ptr + rows[:, None] * WIDTH + cols[None, :], h, mask=row_ok[:, None])

    _tuned_trunk_kernel = triton.autotune(
        [triton.Config({"BLOCK": rows}, num_warps=warps) for rows, warps in TUNED_LAUNCHES],
        key=["IN", "WIDTH", "LAYERS", "READS_INPUT"],
    )(_trunk_kernel)


class FusedIntegerTrunk:
    """The hidden blocks of an :class:`IntegerQuantMLP`, packed for :func:`_trunk_kernel`: per block,
    its weights transposed (the part reading the previous block and the part reading the MLP's input),
    the shift corrections and scales of each part, the bias and the output quantizer's constants."""

    def __init__(self, mlp: IntegerQuantMLP) -> None:
        layers = mlp.layers
        assert layers, "an MLP without hidden blocks has nothing to fuse"
        width = layers[0].out_features
        in_dim = mlp.mlp.in_dim
        relu = {(block.block.relu, block.block.spec.fuse_relu) for block in layers}
        assert relu in ({(True, True)}, {(True, False)}), "hidden blocks with ReLU, all fused or all not"
        assert all(block.out_features == width and block.output is not None for block in layers)
        self.in_padded, self.width_padded = _power_of_two(in_dim), _power_of_two(width)
        self.width, self.num_layers = width, len(layers)
        self.relu_before_quant = relu == {(True, True)}
        device = layers[0].bias.device
        num, k_in, w = len(layers), self.in_padded, self.width_padded
        self.wh = torch.zeros(num, w, w, dtype=torch.int8, device=device)
        self.wx = torch.zeros(num, k_in, w, dtype=torch.int8, device=device)
        self.corr_h = torch.zeros(num, w, dtype=torch.int32, device=device)
        self.corr_x = torch.zeros(num, w, dtype=torch.int32, device=device)
        self.scale_h = torch.zeros(num, w, device=device)
        self.scale_x = torch.zeros(num, w, device=device)
        self.bias = torch.zeros(num, w, device=device)
        quant: List[Tensor] = []
        self.reads_input = 0
        input_quant = mlp.input_quantization
        for i, block in enumerate(layers):
            # The integer path's segments, in its order: [previous block] and/or [MLP input].
            reads = ["input"] if i == 0 else (["hidden", "input"] if len(block.segments) == 2 else ["hidden"])
            for what, weight, row_sum in zip(reads, block.segments, block.row_sums, strict=True):
                source = input_quant if what == "input" else layers[i - 1].output
                assert source is not None
                columns = in_dim if what == "input" else width
                transposed = weight[:width, :columns].t()
                if what == "input":
                    self.wx[i, :columns, :width] = transposed
                    self.corr_x[i, :width] = source.offset * row_sum
                    self.scale_x[i, :width] = source.scale * block.weight_scale
                    self.reads_input |= 1 << i
                else:
                    self.wh[i, :columns, :width] = transposed
                    self.corr_h[i, :width] = source.offset * row_sum
                    self.scale_h[i, :width] = source.scale * block.weight_scale
            self.bias[i, :width] = block.bias
            out = block.output
            constants = (out.inverse_scale, out.zero, out.quant_min, out.quant_max, out.shift)
            quant.append(torch.stack([c.float().reshape(()) for c in constants]))
        self.quant = torch.stack(quant).contiguous()
        self.output = layers[-1].output

    def __call__(self, first: IntegerActivation) -> IntegerActivation:
        """The last hidden block's integers for the MLP's quantized input ``first``."""
        x = first.shifted
        rows = x.shape[0]
        if x.shape[1] != self.in_padded:
            x = torch.nn.functional.pad(x, (0, self.in_padded - x.shape[1]))
        out = torch.empty(rows, self.width_padded, dtype=torch.int8, device=x.device)
        shapes = dict(
            IN=self.in_padded,
            WIDTH=self.width_padded,
            LAYERS=self.num_layers,
            READS_INPUT=self.reads_input,
            RELU_BEFORE_QUANT=self.relu_before_quant,
        )
        x = x.contiguous()
        for start in range(0, rows, MAX_ROWS_PER_LAUNCH):
            part_in, part_out = x[start : start + MAX_ROWS_PER_LAUNCH], out[start : start + MAX_ROWS_PER_LAUNCH]
            count = part_in.shape[0]
            args = (part_in, part_out, self.wh, self.wx, self.corr_h, self.corr_x, self.scale_h, self.scale_x)
            if x.is_cuda:
                grid = lambda meta, n=count: (triton.cdiv(n, meta["BLOCK"]),)  # noqa: E731
                _tuned_trunk_kernel[grid](*args, self.bias, self.quant, count, **shapes)
            else:
                _trunk_kernel[(triton.cdiv(count, BLOCK_ROWS),)](
                    *args, self.bias, self.quant, count, **shapes, BLOCK=BLOCK_ROWS
                )
        shifted = out if self.width_padded == self.width else out[:, : self.width].contiguous()
        return self.output.activation(shifted)
