"""Quantization-aware Linear blocks and the MLP built from them.

The reusable piece is :class:`QuantLinear`: a Linear layer, optionally followed by a ReLU that is
*fused* into it, whose weights are fake-quantized per output channel (symmetric) and whose output
is fake-quantized per tensor. Fusion decides where the activation quantizer sits:

* fused (``Linear -> ReLU -> quantize``): the quantizer observes only non-negative values, so all
  ``2**bits`` levels are spent on what the next layer sees;
* unfused (``Linear -> quantize -> ReLU``): the quantizer's range also covers the negative
  pre-activations the ReLU is about to discard, wasting about half of the levels. This is the
  paper's ablation, where quality collapses (the paper's fern figures: docs/methods/nerf-qat.md).

Any nerfstudio Field can use :class:`QuantMLP` in place of ``nerfstudio.field_components.mlp.MLP``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, Iterator, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nerfqat_plugin.field_components.half_precision import round_to_half
from nerfqat_plugin.field_components.quantizers import ActivationQuantizer, PerChannelWeightQuantizer, RangeMethod

MIN_QUANT_BITS = 4
MAX_QUANT_BITS = 8


@dataclass(frozen=True)
class QuantSpec:
    """How a block is quantized."""

    bits: int = 8
    """Bits of the stored weights, and of the activations unless ``activation_bits`` is set (4 to 8)."""
    fuse_relu: bool = True
    """Fuse each Linear with its ReLU before quantizing its output (see module docstring)."""
    learned_weight_scales: bool = False
    """Learn the per-channel weight scales (LSQ) instead of taking max |w| / qmax."""
    activation_range: RangeMethod = "max"
    """How activation ranges are observed: batch min/max, or the least-error clipped range (mse)."""
    weight_range: RangeMethod = "max"
    """How per-channel weight scales are set: max |w| of the row, or the least-error clipped range (mse)."""
    activation_bits: Optional[int] = None
    """Bits of the activations when they differ from the weights' (e.g. 4-bit weights, 8-bit activations)."""

    def __post_init__(self) -> None:
        for name, value in (("bits", self.bits), ("activation bits", self.act_bits)):
            if not MIN_QUANT_BITS <= value <= MAX_QUANT_BITS:
                raise ValueError(f"quantization {name} must be in [{MIN_QUANT_BITS}, {MAX_QUANT_BITS}], got {value}")

    @property
    def act_bits(self) -> int:
        """Bits of the activation quantizers."""
        return self.bits if self.activation_bits is None else self.activation_bits

    def with_bits(self, bits: int) -> QuantSpec:
        """This spec with ``bits`` for weights and activations alike (edges, high-precision blocks)."""
        return replace(self, bits=bits, activation_bits=bits)

    def activation_quantizer(self) -> ActivationQuantizer:
        """A fresh activation quantizer with this spec's bits and range method."""
        return ActivationQuantizer(self.act_bits, range_method=self.activation_range)


class QuantSwitch(nn.Module):
    """A module whose fake quantization can be switched off; the switch is saved in checkpoints.

    The switch is a Python attribute rather than a buffer so that the forward pass never reads a
    GPU tensor to decide (that would synchronise every step); ``extra_state`` persists it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.quant_enabled = True
        """Fake quantization on (QAT and the quantized model) or off (float warm-up, float viewing)."""

    def get_extra_state(self) -> Dict[str, bool]:
        return {"quant_enabled": self.quant_enabled}

    def set_extra_state(self, state: Dict[str, bool]) -> None:
        self.quant_enabled = bool(state.get("quant_enabled", True))


class QuantLinear(QuantSwitch):
    """``Linear (+ ReLU)`` with per-channel weight and per-tensor output fake quantization.

    Args:
        in_features: input width.
        out_features: output width.
        spec: bits and fusion.
        relu: follow the Linear with a ReLU.
        quantize_output: fake-quantize the output (off for heads feeding a float activation).
    """

    def __init__(
        self, in_features: int, out_features: int, spec: QuantSpec, relu: bool, quantize_output: bool = True
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.spec = spec
        self.relu = relu
        self.weight_quantizer = PerChannelWeightQuantizer(
            out_features, spec.bits, spec.learned_weight_scales, spec.weight_range
        )
        self.output_quantizer: Optional[ActivationQuantizer] = spec.activation_quantizer() if quantize_output else None

    def forward(self, x: Tensor) -> Tensor:
        if not self.quant_enabled:
            y = self.linear(x)
            return F.relu(y) if self.relu else y
        y = F.linear(x, self.weight_quantizer(self.linear.weight), self.stored_bias())
        if self.relu and self.spec.fuse_relu:
            y = F.relu(y)
        if self.output_quantizer is not None:
            y = self.output_quantizer(y)
        if self.relu and not self.spec.fuse_relu:
            y = F.relu(y)
        return y

    def stored_bias(self) -> Tensor:
        """The bias as the compressed file stores it (fp16), with a straight-through gradient."""
        return round_to_half(self.linear.bias)

    def integer_weight(self) -> Tensor:
        """Stored integers: ``fake_quant(weight) == integer_weight * weight_quantizer.scale[:, None]``."""
        return self.weight_quantizer.integer_weight(self.linear.weight)


class QuantMLP(QuantSwitch):
    """A NeRF-style MLP of :class:`QuantLinear` blocks with optional skip connections.

    Args:
        in_dim: input width.
        num_layers: number of hidden Linear+ReLU blocks.
        layer_width: hidden width.
        spec: quantization of every block.
        out_dim: if given, a final Linear (no ReLU) to this width.
        skip_connections: block indices whose input is ``cat(hidden, mlp_input)``, as in NeRF.
        quantize_out: fake-quantize the final Linear's output (when the next consumer is another
            quantized block rather than a float activation).
        edge_spec: quantization of the MLP's edges, its input quantizer and final Linear (default
            ``spec``). NeRF's fields keep these at 8 bits below 8: they hold a few hundred weights.
        layer_specs: quantization of particular hidden blocks, by index (the others use ``spec``),
            e.g. more bits for the blocks that lose most at low bit widths.
    """

    def __init__(
        self,
        in_dim: int,
        num_layers: int,
        layer_width: int,
        spec: QuantSpec,
        out_dim: Optional[int] = None,
        skip_connections: Sequence[int] = (),
        quantize_out: bool = False,
        edge_spec: Optional[QuantSpec] = None,
        layer_specs: Optional[Mapping[int, QuantSpec]] = None,
    ) -> None:
        super().__init__()
        edge_spec = edge_spec or spec
        self.in_dim = in_dim
        self.skip_connections = frozenset(skip_connections)
        self.input_quantizer = edge_spec.activation_quantizer()
        layers = []
        for i in range(num_layers):
            width_in = in_dim if i == 0 else layer_width
            if i in self.skip_connections and i > 0:
                width_in += in_dim
            layers.append(QuantLinear(width_in, layer_width, (layer_specs or {}).get(i, spec), relu=True))
        self.layers = nn.ModuleList(layers)
        self.out_layer = (
            QuantLinear(
                layer_width if num_layers else in_dim, out_dim, edge_spec, relu=False, quantize_output=quantize_out
            )
            if out_dim is not None
            else None
        )
        self.out_dim = out_dim if out_dim is not None else layer_width

    def forward(self, x: Tensor) -> Tensor:
        if self.quant_enabled:
            x = self.input_quantizer(x)
        h = x
        for i, layer in enumerate(self.layers):
            if i in self.skip_connections and i > 0:
                h = torch.cat([h, x], dim=-1)
            h = layer(h)
        return self.out_layer(h) if self.out_layer is not None else h

    def blocks(self) -> Iterator[QuantLinear]:
        yield from self.layers
        if self.out_layer is not None:
            yield self.out_layer


def iter_quant_modules(module: nn.Module) -> Iterator[nn.Module]:
    """All modules below ``module`` that carry a ``quant_enabled`` switch."""
    for child in module.modules():
        if isinstance(child, QuantSwitch):
            yield child


def set_quantization(module: nn.Module, enabled: bool) -> None:
    """Switch fake quantization on or off for every quantized block below ``module`` (learned weight
    scales start from the current weights here, outside any compiled region)."""
    for child in iter_quant_modules(module):
        child.quant_enabled = enabled
        if enabled and isinstance(child, QuantLinear):
            child.weight_quantizer.initialize_scale(child.linear.weight)


def set_observers(module: nn.Module, enabled: bool) -> None:
    """Let activation range observers below ``module`` update (calibration) or freeze them."""
    for child in module.modules():
        if isinstance(child, ActivationQuantizer):
            child.observer_enabled = enabled
