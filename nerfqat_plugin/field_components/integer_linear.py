"""Inference of quantized blocks as stored: integer matrix multiplies instead of fake quantization.

A fake-quantized activation is ``scale * (q - zero)`` with integers ``q`` in ``[quant_min, quant_max]``,
and a fake-quantized weight row is ``weight_scale[c] * W[c]`` with symmetric integers ``W``. So a
block's output is

    y[n, c] = sum over input segments of  scale * weight_scale[c] * sum_k (q[n, k] - zero) * W[c, k]  + bias[c]

where the inner sum is an exact integer. Here it is computed as ``int8 x int8 -> int32``
(``torch._int_mm``): ``q`` is shifted into int8 by the centre of its range and the shift corrected with
the rows' integer sums; 4-bit weights and activations are int8 values too. Where ``torch._int_mm`` is
missing or refuses the shapes, the same integers are multiplied as float32, which is exact as long as
every partial sum stays below 2**24 (checked). The result equals the fake-quant block's up to the float
rounding of its accumulation (and, rarely, a value that rounding moves across a quantization step).

What follows the product (shift correction, scales, bias, ReLU, the next block's quantization) reads
and writes every value once per operation; rendering is bound by that memory traffic, so on CUDA it
runs as one ``torch.compile``d kernel per block (eager elsewhere, or if compiling fails). Scales and
zero points stay on the device as tensors: nothing waits for the host.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from nerfqat_plugin.field_components.fused_integer_trunk import FusedIntegerTrunk, fused_trunk_available
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
    """Per-tensor scale (float32, 0-d)."""
    offset: Tensor
    """``shift - zero`` (int32, 0-d): the value of ``shifted`` is ``scale * (shifted + offset)``."""
    _padded: Optional[Tuple[Tensor, Tensor]] = field(default=None, repr=False)

    def dequantize(self) -> Tensor:
        return self.scale * (self.shifted.float() + self.offset)

    def padded(self) -> Tensor:
        """``shifted`` with zero columns up to a multiple of 8 (what int8 kernels take), made once
        however many blocks read it (a skip connection reads the MLP's input twice)."""
        if self._padded is None or self._padded[0] is not self.shifted:
            self._padded = (self.shifted, _pad_to(self.shifted, 1, 8))
        return self._padded[1]


@dataclass
class IntegerQuantizer:
    """An activation quantizer's constants, on its device, as the integer path applies them:
    ``clamp(round(x / scale) + zero) - shift`` as int8."""

    inverse_scale: Tensor
    zero: Tensor
    quant_min: Tensor
    quant_max: Tensor
    shift: Tensor
    scale: Tensor
    offset: Tensor
    """``shift - zero`` (int32, 0-d), what every activation it makes carries."""

    @staticmethod
    def of(quantizer: ActivationQuantizer) -> IntegerQuantizer:
        shift = (quantizer.quant_min + quantizer.quant_max + 1) // 2
        device = quantizer.scale.device

        def constant(value: float) -> Tensor:  # filled on the device: no copy from the host to wait for
            return torch.full((), value, device=device)

        scale = quantizer.scale.detach().float()
        zero = quantizer.zero_point.float()
        offset = (shift - quantizer.zero_point).to(torch.int32)
        bounds = constant(quantizer.quant_min), constant(quantizer.quant_max)
        return IntegerQuantizer(1.0 / scale, zero, *bounds, constant(shift), scale, offset)

    def activation(self, shifted: Tensor) -> IntegerActivation:
        """The activation that int8 integers ``shifted`` produced by this quantization stand for."""
        return IntegerActivation(shifted, self.scale, self.offset)

    def __call__(self, x: Tensor) -> IntegerActivation:
        return self.activation(_quantize(x, self))


def _quantize(x: Tensor, out: IntegerQuantizer) -> Tensor:
    q = torch.clamp(torch.round(x * out.inverse_scale) + out.zero, out.quant_min, out.quant_max)
    return (q - out.shift).to(torch.int8)


def quantize_activation(x: Tensor, quantizer: ActivationQuantizer) -> IntegerActivation:
    """The integers the fake quantizer rounds ``x`` to (its formula: ``round(x / scale) + zero``)."""
    return IntegerQuantizer.of(quantizer)(x)


def _epilogue(
    accs: List[Tensor],
    corrections: List[Tensor],
    scales: List[Tensor],
    bias: Tensor,
    relu: bool,
    out: Optional[IntegerQuantizer],
) -> Tensor:
    """``sum_i (accs[i] + corrections[i]) * scales[i] + bias``, ReLU, and quantized by ``out`` to int8
    (float32 when ``out`` is None)."""
    y: Optional[Tensor] = None
    for acc, correction, scale in zip(accs, corrections, scales, strict=True):
        part = (acc + correction).float() * scale
        y = part if y is None else y + part
    assert y is not None
    y = y + bias
    if relu:
        y = F.relu(y)
    return y if out is None else _quantize(y, out)


_compiled_epilogues: Dict[Tuple[int, bool, bool, bool, bool], Callable[..., Tensor]] = {}
_compile_failed = False


def use_compiled_epilogue(device: torch.device) -> bool:
    """Whether blocks on ``device`` run the compiled epilogue (CUDA, unless compiling failed)."""
    return device.type == "cuda" and not _compile_failed


def _compiled_epilogue(accs: List[Tensor], bias: Tensor, relu: bool, out: Optional[IntegerQuantizer]):
    """The compiled :func:`_epilogue` for one block structure: input segments, ReLU, quantized output,
    a single output channel (a size of 1 is never treated as dynamic) and products sliced from a
    padded width (strided rows). Dynamo keeps at most
    ``recompile_limit`` (8) graphs per code object and past that runs eagerly; a field's blocks have
    about as many structures, so each structure compiles a copy of the code, with its own cache."""
    key = (len(accs), relu, out is None, bias.shape[0] == 1, accs[0].is_contiguous())
    if key not in _compiled_epilogues:
        code = _epilogue.__code__.replace()  # a new code object: a cache of its own
        copy = types.FunctionType(code, _epilogue.__globals__, f"_epilogue_{len(_compiled_epilogues)}")
        _compiled_epilogues[key] = torch.compile(copy, dynamic=True)
    return _compiled_epilogues[key]


def run_epilogue(
    accs: List[Tensor], corrections: List[Tensor], scales: List[Tensor], bias: Tensor, relu: bool, out
) -> Tensor:
    """:func:`_epilogue`, as one compiled kernel where :func:`use_compiled_epilogue` says so."""
    global _compile_failed
    if use_compiled_epilogue(accs[0].device):
        try:
            return _compiled_epilogue(accs, bias, relu, out)(accs, corrections, scales, bias, relu, out)
        except Exception as error:  # no compiler or an unsupported setup: the eager path is the same
            _compile_failed = True
            print(f"nerf-qat: integer epilogue not compiled ({type(error).__name__}); rendering eagerly")
    return _epilogue(accs, corrections, scales, bias, relu, out)


def _pad_to(x: Tensor, dim: int, multiple: int) -> Tensor:
    extra = (-x.shape[dim]) % multiple
    if extra == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim) + [0, extra]
    return F.pad(x, pad)


def integer_matmul(a: Tensor, weight: Tensor) -> Tensor:
    """Exact ``a @ weight.T`` of int8 matrices [N, K] and [M, K] as int32 [N, M] (float32 products
    where int8 kernels are missing). The weight is read transposed, as a column-major [K, M]: the
    layout cuBLAS's fast int8 kernels take (a row-major second operand gets a slow generic kernel)."""
    n, k = a.shape
    m = weight.shape[0]
    if a.is_cuda and n > 16:
        try:  # CUDA's int8 kernel wants K and M in multiples of 8
            out = torch._int_mm(_pad_to(a, 1, 8), _pad_to(_pad_to(weight, 0, 8), 1, 8).t())
            return out[:, :m]
        except RuntimeError:
            pass
    if not a.is_cuda and hasattr(torch, "_int_mm"):
        try:
            return torch._int_mm(a, weight.t())
        except RuntimeError:
            pass
    assert 128 * 128 * k < _EXACT_FLOAT32_SUM, f"{k} inputs: float32 sums would not be exact"
    return (a.float() @ weight.float().t()).round().to(torch.int32)


class IntegerLinear:
    """A frozen :class:`QuantLinear` evaluated with integer matrix multiplies.

    ``input_segments``: the widths of the concatenated inputs it reads, each quantized by its own
    quantizer (a skip connection reads the previous block's output and the MLP's input)."""

    def __init__(self, block: QuantLinear, input_segments: Sequence[int]) -> None:
        integers = block.integer_weight().detach()
        assert integers.abs().max() <= 127 and sum(input_segments) == integers.shape[1]
        self.block = block
        self.out_features = integers.shape[0]
        # int8 [M, K_i] per input segment, zero-padded once to multiples of 8 (what int8 kernels take):
        # zero columns meet the padded activations' zero columns, zero rows are sliced off the product.
        self.segments: List[Tensor] = []
        self.row_sums: List[Tensor] = []
        start = 0
        for width in input_segments:
            part = integers[:, start : start + width]
            self.segments.append(_pad_to(_pad_to(part.contiguous().to(torch.int8), 0, 8), 1, 8))
            self.row_sums.append(part.sum(dim=1).to(torch.int32))
            start += width
        self.weight_scale = block.weight_quantizer.scale.detach().float()
        self.bias = block.stored_bias().detach().float()
        quantizer = block.output_quantizer
        self.output = IntegerQuantizer.of(quantizer) if quantizer is not None else None
        """The output quantizer's constants (None: the block yields floats)."""

    def _run(self, inputs: Sequence[IntegerActivation], out: Optional[IntegerQuantizer]) -> Tensor:
        accs = [
            integer_matmul(act.padded(), weight)[:, : self.out_features]
            for act, weight in zip(inputs, self.segments, strict=True)
        ]
        corrections = [act.offset * row_sum for act, row_sum in zip(inputs, self.row_sums, strict=True)]
        scales = [act.scale * self.weight_scale for act in inputs]
        relu = self.block.relu and self.block.spec.fuse_relu
        return run_epilogue(accs, corrections, scales, self.bias, relu, out)

    def __call__(self, inputs: Sequence[IntegerActivation]) -> Tensor:
        """The block's output before its output quantizer: fused ReLU applied, float32 [N, M]."""
        return self._run(inputs, None)

    def quantized(self, inputs: Sequence[IntegerActivation]) -> IntegerActivation:
        """The block's output quantized by its own output quantizer (and an unfused ReLU after it)."""
        assert self.output is not None, "a block without an output quantizer yields floats"
        out = self.output.activation(self._run(inputs, self.output))
        if self.block.relu and not self.block.spec.fuse_relu:  # ReLU after quantizing: q >= zero
            out.shifted = torch.maximum(out.shifted, (-out.offset).to(torch.int8))
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
        self.input_quantization = IntegerQuantizer.of(mlp.input_quantizer)
        self.output_quantization = self.layers[-1].output
        """How the last hidden block's output is quantized (what :meth:`hidden` returns)."""
        self._fused: Optional[FusedIntegerTrunk] = None  # packed on first use

    def hidden(self, x: Tensor, fused: bool = False) -> IntegerActivation:
        """The last hidden block's quantized output for float input ``x`` [N, in_dim]; ``fused``: all
        hidden blocks in one kernel where :func:`fused_trunk_available` (the same integers up to the
        epilogue's float rounding)."""
        first = self.input_quantization(x)
        if fused and self.layers and fused_trunk_available(x.device):
            if self._fused is None:
                self._fused = FusedIntegerTrunk(self)
            return self._fused(first)
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
