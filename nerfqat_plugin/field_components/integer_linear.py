"""Inference of quantized blocks as stored: integer matrix multiplies instead of fake quantization.

A fake-quantized activation is ``scale * (q - zero)`` with integers ``q`` in ``[quant_min, quant_max]``,
and a fake-quantized weight row is ``weight_scale[c] * W[c]`` with symmetric integers ``W``. So a
block's output is

    y[n, c] = sum over input segments of  scale * weight_scale[c] * sum_k (q[n, k] - zero) * W[c, k]  + bias[c]

where the inner sum is an exact integer. Here it is computed as ``int8 x int8 -> int32``
(``torch._int_mm``): ``q`` is shifted into int8 by the centre of its range and the shift corrected with
the rows' integer sums; 4-bit weights and activations are int8 values too. Bias, ReLU and the next
block's quantization follow in one pass over the int32 result. Where ``torch._int_mm`` is missing or
refuses the shapes, the same integers are multiplied as float32, which is exact as long as every
partial sum stays below 2**24 (checked). The result equals the fake-quant block's up to the float
rounding of its accumulation (and, rarely, a value that rounding moves across a quantization step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from nerfqat_plugin.field_components.quant_mlp import QuantLinear, QuantMLP
from nerfqat_plugin.field_components.quantizers import ActivationQuantizer

# float32 holds every integer below 2**24 exactly: the float fallback is exact below this bound.
_EXACT_FLOAT32_SUM = 2**24


@dataclass
class IntegerActivation:
    """A quantized activation: integers shifted into int8 and what turns them back into values."""

    shifted: Tensor
    """``q - shift`` as int8 [N, K]."""
    scale: Tensor
    """Per-tensor scale (float32 scalar)."""
    offset: int
    """``shift - zero``: the value of ``shifted`` is ``scale * (shifted + offset)``."""

    def dequantize(self) -> Tensor:
        return self.scale * (self.shifted.float() + self.offset)


def quantize_activation(x: Tensor, quantizer: ActivationQuantizer) -> IntegerActivation:
    """The integers the fake quantizer rounds ``x`` to (its formula: ``round(x / scale) + zero``)."""
    scale = quantizer.scale.float()
    zero = int(quantizer.zero_point)
    q = torch.clamp(torch.round(x * (1.0 / scale)) + zero, quantizer.quant_min, quantizer.quant_max)
    shift = (quantizer.quant_min + quantizer.quant_max + 1) // 2
    return IntegerActivation((q - shift).to(torch.int8), scale, shift - zero)


def _pad_to(x: Tensor, dim: int, multiple: int) -> Tensor:
    extra = (-x.shape[dim]) % multiple
    if extra == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim) + [0, extra]
    return F.pad(x, pad)


def integer_matmul(a: Tensor, w_t: Tensor) -> Tensor:
    """Exact ``a @ w_t`` of int8 matrices [N, K] x [K, M] as int32 (float32 where int8 kernels are missing)."""
    n, k = a.shape
    m = w_t.shape[1]
    if a.is_cuda and n > 16:
        try:  # CUDA's int8 kernel wants K and M in multiples of 8
            out = torch._int_mm(_pad_to(a, 1, 8), _pad_to(_pad_to(w_t, 0, 8), 1, 8))
            return out[:, :m]
        except RuntimeError:
            pass
    if not a.is_cuda and hasattr(torch, "_int_mm"):
        try:
            return torch._int_mm(a, w_t)
        except RuntimeError:
            pass
    assert 128 * 128 * k < _EXACT_FLOAT32_SUM, f"{k} inputs: float32 sums would not be exact"
    return (a.float() @ w_t.float()).round().to(torch.int32)


class IntegerLinear:
    """A frozen :class:`QuantLinear` evaluated with integer matrix multiplies.

    ``input_segments``: the widths of the concatenated inputs it reads, each quantized by its own
    quantizer (a skip connection reads the previous block's output and the MLP's input)."""

    def __init__(self, block: QuantLinear, input_segments: Sequence[int]) -> None:
        integers = block.integer_weight().detach()
        assert integers.abs().max() <= 127 and sum(input_segments) == integers.shape[1]
        self.block = block
        self.segments: List[Tensor] = []  # int8 [K_i, M] per input segment
        self.row_sums: List[Tensor] = []
        start = 0
        for width in input_segments:
            part = integers[:, start : start + width]
            self.segments.append(part.t().contiguous().to(torch.int8))
            self.row_sums.append(part.sum(dim=1).to(torch.int32))
            start += width
        self.weight_scale = block.weight_quantizer.scale.detach().float()
        self.bias = block.stored_bias().detach().float()

    def __call__(self, inputs: Sequence[IntegerActivation]) -> Tensor:
        """The block's output before its output quantizer: fused ReLU applied, float32 [N, M]."""
        y: Optional[Tensor] = None
        for act, w_t, row_sum in zip(inputs, self.segments, self.row_sums, strict=True):
            acc = integer_matmul(act.shifted, w_t) + act.offset * row_sum
            part = acc.float() * (act.scale * self.weight_scale)
            y = part if y is None else y + part
        assert y is not None
        y = y + self.bias
        if self.block.relu and self.block.spec.fuse_relu:
            y = F.relu(y)
        return y

    def quantized(self, inputs: Sequence[IntegerActivation]) -> IntegerActivation:
        """The block's output quantized by its own output quantizer (and an unfused ReLU after it)."""
        quantizer = self.block.output_quantizer
        assert quantizer is not None, "a block without an output quantizer yields floats"
        out = quantize_activation(self(inputs), quantizer)
        if self.block.relu and not self.block.spec.fuse_relu:  # ReLU after quantizing: q >= zero
            out.shifted = torch.clamp_min(out.shifted, -out.offset).to(torch.int8)
        return out


class IntegerQuantMLP:
    """A frozen :class:`QuantMLP` evaluated with :class:`IntegerLinear` blocks."""

    def __init__(self, mlp: QuantMLP) -> None:
        self.mlp = mlp
        self.layers = []
        width = mlp.in_dim
        for i, layer in enumerate(mlp.layers):
            skip = i in mlp.skip_connections and i > 0
            self.layers.append(IntegerLinear(layer, [width, mlp.in_dim] if skip else [width]))
            width = layer.linear.out_features
        self.out_layer = IntegerLinear(mlp.out_layer, [width]) if mlp.out_layer is not None else None

    def hidden(self, x: Tensor) -> IntegerActivation:
        """The last hidden block's quantized output for float input ``x`` [N, in_dim]."""
        first = quantize_activation(x, self.mlp.input_quantizer)
        h = first
        for i, layer in enumerate(self.layers):
            skip = i in self.mlp.skip_connections and i > 0
            h = layer.quantized([h, first] if skip else [h])
        return h

    def __call__(self, x: Tensor) -> Tensor:
        """What the MLP's forward returns, from integer arithmetic."""
        h = self.hidden(x)
        if self.out_layer is None:
            return h.dequantize()
        if self.mlp.out_layer.output_quantizer is not None:
            return self.out_layer.quantized([h]).dequantize()
        return self.out_layer([h])
