"""NeRF's radiance field with every Linear layer quantization-aware (the nerf-qat field)."""

from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from nerfstudio.cameras.rays import RaySamples
from nerfstudio.field_components.encodings import NeRFEncoding
from nerfstudio.field_components.field_heads import FieldHeadNames
from torch import Tensor

from nerfqat_plugin.field_components.integer_linear import IntegerLinear, IntegerQuantMLP
from nerfqat_plugin.field_components.quant_mlp import QuantLinear, QuantMLP, QuantSpec
from nerfqat_plugin.field_components.weights_version import weights_version
from nerfqat_plugin.fields.compiled_field import TrainingCompiledField
from nerfqat_plugin.fields.view_directions import view_directions


def nerf_frequency_encoding(num_frequencies: int) -> NeRFEncoding:
    """NeRF's encoding ``(x, sin(2^k x), cos(2^k x))`` for k < num_frequencies.

    nerfstudio's :class:`NeRFEncoding` multiplies its input by 2*pi; callers divide by 2*pi first
    (see :meth:`QuantNeRFField.encode`) so the frequencies are the paper's powers of two.
    """
    return NeRFEncoding(
        in_dim=3,
        num_frequencies=num_frequencies,
        min_freq_exp=0.0,
        max_freq_exp=float(num_frequencies - 1),
        include_input=True,
    )


class QuantNeRFField(TrainingCompiledField):
    """NeRF's MLP (8x256, skip at layer 4, density and view-dependent colour heads) built from
    quantization-aware fused Linear+ReLU blocks.

    Args:
        spec: bits and fusion of every block.
        num_layers: trunk depth.
        layer_width: trunk width.
        skip_connections: trunk blocks that re-read the encoded position.
        head_width: width of the view-dependent colour layer.
        position_frequencies: positional-encoding frequencies of positions (NeRF: 10).
        direction_frequencies: positional-encoding frequencies of view directions (NeRF: 4).
        edge_spec: quantization of the field's edges: the quantizers of the encoded position and
            direction and the density and colour output layers (default ``spec``).
        trunk_layer_specs: quantization of particular trunk blocks, by index (default ``spec``).
        integer_inference: evaluate the quantized blocks with integer matrix multiplies when not
            training (the fake-quant float path otherwise).
    """

    compiled_methods = ("density_and_features", "color")

    def __init__(
        self,
        spec: QuantSpec,
        num_layers: int = 8,
        layer_width: int = 256,
        skip_connections: Tuple[int, ...] = (4,),
        head_width: int = 128,
        position_frequencies: int = 10,
        direction_frequencies: int = 4,
        edge_spec: Optional[QuantSpec] = None,
        trunk_layer_specs: Optional[Mapping[int, QuantSpec]] = None,
        integer_inference: bool = False,
    ) -> None:
        super().__init__()
        self.integer_inference = integer_inference
        """Render a quantized field with integer matrix multiplies (:mod:`integer_linear`)."""
        self.fused_integer_trunk = False
        """With integer inference, run the trunk's hidden blocks in one kernel (:mod:`fused_integer_trunk`)."""
        self._integer_blocks: Optional[tuple] = None
        edge_spec = edge_spec or spec
        self.position_encoding = nerf_frequency_encoding(position_frequencies)
        self.direction_encoding = nerf_frequency_encoding(direction_frequencies)
        self.trunk = QuantMLP(
            in_dim=self.position_encoding.get_out_dim(),
            num_layers=num_layers,
            layer_width=layer_width,
            spec=spec,
            skip_connections=skip_connections,
            edge_spec=edge_spec,
            layer_specs=trunk_layer_specs,
        )
        self.density_head = QuantLinear(layer_width, 1, edge_spec, relu=False, quantize_output=False)
        # NeRF's bottleneck has no activation; its output is quantized because it feeds a block.
        self.bottleneck = QuantLinear(layer_width, layer_width, spec, relu=False, quantize_output=True)
        self.color_head = QuantMLP(
            in_dim=layer_width + self.direction_encoding.get_out_dim(),
            num_layers=1,
            layer_width=head_width,
            spec=spec,
            out_dim=3,
            edge_spec=edge_spec,
        )

    @staticmethod
    def encode(encoding: NeRFEncoding, x: Tensor) -> Tensor:
        return encoding(x / (2.0 * math.pi))

    # -- integer inference --------------------------------------------------------------------
    def uses_integer_inference(self) -> bool:
        """Whether renders run the blocks as stored integers (evaluation of a quantized field)."""
        blocks = (self.trunk, self.density_head, self.bottleneck, self.color_head)
        return self.integer_inference and not self.training and all(b.quant_enabled for b in blocks)

    def _integer(self) -> Tuple[IntegerQuantMLP, IntegerLinear, IntegerLinear, IntegerQuantMLP]:
        """The integer blocks, rebuilt whenever a weight, scale or device changed."""
        modules = (self.trunk, self.density_head, self.bottleneck, self.color_head)
        cached = self._integer_blocks
        if cached is None or cached[0] != weights_version(*modules):
            width = self.density_head.linear.in_features
            integer_blocks = (
                IntegerQuantMLP(self.trunk),
                IntegerLinear(self.density_head, [width]),
                IntegerLinear(self.bottleneck, [width]),
                IntegerQuantMLP(self.color_head),
            )
            # Keyed after building: reading the weights' integers refreshes their scale buffers
            # (same values, new versions), which a key taken before would take for a change.
            self._integer_blocks = cached = (weights_version(*modules), integer_blocks)
        return cached[1]

    # -- evaluation -----------------------------------------------------------------------------
    def density_and_features(self, positions: Tensor) -> Tuple[Tensor, Tensor]:
        """Raw field evaluation on flat ``[N, 3]`` positions: ``(density [N, 1], features [N, W])``;
        with integer inference the features are the trunk's int8 integers, which :meth:`color` reads."""
        x = self.encode(self.position_encoding, positions)
        if self.uses_integer_inference():
            trunk, density_head, _, _ = self._integer()
            h = trunk.hidden(x, fused=self.fused_integer_trunk)
            return F.softplus(density_head([h])), h.shifted  # colour reads these integers as they are
        h = self.trunk(x)
        density = F.softplus(self.density_head(h))
        return density, h

    def color(self, features: Tensor, directions: Tensor) -> Tensor:
        """View-dependent colour from trunk features and unit world directions (flat ``[N, ...]``)."""
        encoded = self.encode(self.direction_encoding, directions)
        if self.uses_integer_inference():
            trunk, _, bottleneck, color_head = self._integer()
            trunk_output = trunk.output_quantization
            h = trunk_output.activation(features) if features.dtype == torch.int8 else trunk_output(features)
            x = torch.cat([bottleneck.quantized([h]).dequantize(), encoded], dim=-1)
            return torch.sigmoid(color_head(x))
        x = torch.cat([self.bottleneck(features), encoded], dim=-1)
        return torch.sigmoid(self.color_head(x))

    def get_density(self, ray_samples: RaySamples) -> Tuple[Tensor, Tensor]:
        positions = ray_samples.frustums.get_positions()
        density, features = self.run("density_and_features", positions.reshape(-1, 3))
        batch_shape = positions.shape[:-1]
        return density.view(*batch_shape, 1), features.view(*batch_shape, -1)

    def get_outputs(
        self, ray_samples: RaySamples, density_embedding: Optional[Tensor] = None
    ) -> Dict[FieldHeadNames, Tensor]:
        assert density_embedding is not None
        directions = view_directions(ray_samples).expand(*density_embedding.shape[:-1], 3)
        flat_features = density_embedding.reshape(-1, density_embedding.shape[-1])
        rgb = self.run("color", flat_features, directions.reshape(-1, 3))
        return {FieldHeadNames.RGB: rgb.view(*density_embedding.shape[:-1], 3)}
