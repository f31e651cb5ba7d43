"""nerf-qat's compressed form: both fields' quantized blocks as bit-packed integers with fp16 scales."""

from __future__ import annotations

from typing import Any, Dict, Optional

from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from nerfqat_plugin.compression.codec import CompressedCodec, TensorsAndPayload, register_codec
from nerfqat_plugin.compression.quantized_state import decode_quantized_module, encode_quantized_module
from nerfqat_plugin.model_components.scene_space import SceneSpace
from nerfqat_plugin.models.compressible import OCCUPANCY_KEY, scene_box_from_payload
from nerfqat_plugin.models.nerfqat import NeRFQATModel, NeRFQATModelConfig

_FIELD_PARTS = ("trunk", "bottleneck", "density_head", "color_head")


class NeRFQATCodec(CompressedCodec):
    method = "nerf-qat"
    file_keys = {f"{name}.{part}": f"field_{name}.{part}" for name in ("coarse", "fine") for part in _FIELD_PARTS}
    file_keys[OCCUPANCY_KEY] = OCCUPANCY_KEY

    def decoded_values(self, payload: Dict[str, Any]) -> int:
        options = payload["model"]
        width = max(int(options.get("layer_width", 256)), int(options.get("head_width", 128)))
        inputs = 6 * max(int(options.get("position_frequencies", 10)), int(options.get("direction_frequencies", 4))) + 3
        layers = int(options.get("num_layers", 8)) + 3  # trunk, bottleneck, heads
        return 2 * layers * (width + inputs) * (width + inputs)  # coarse and fine fields

    def encode_modules(self, model: NeRFQATModel, operating_point: Optional[str]) -> TensorsAndPayload:
        quantized = model.is_quantized()
        if model.config.quantize and not quantized:
            CONSOLE.print(
                "[bold yellow]Quantization has not started yet (float warm-up); the export holds float weights."
            )
        tensors: Dict[str, Tensor] = {}
        layout: Dict[str, Any] = {}
        for prefix, fld in (("field_coarse.", model.field_coarse), ("field_fine.", model.field_fine)):
            t, lay = encode_quantized_module(fld, prefix)
            tensors.update(t)
            layout.update(lay)
        options = {
            **model.config.to_payload(),
            "quantize": quantized,
            # Stored resolved, so a later change of the default cannot change how a file decodes.
            "high_precision_layers": list(model.config.trunk_high_precision_layers()),
        }
        grid_tensors, grid_layout, grid_entry = model.occupancy_state()
        tensors.update(grid_tensors)
        layout.update(grid_layout)
        return tensors, {"model": options, **model.scene_space.to_payload(), **grid_entry, "tensors": layout}

    def decode_modules(self, tensors: Dict[str, Tensor], payload: Dict[str, Any]) -> NeRFQATModel:
        config = NeRFQATModelConfig.from_payload(payload["model"], compile=False)
        metadata = SceneSpace.metadata_from_payload(payload)
        model = NeRFQATModel(
            config=config, scene_box=scene_box_from_payload(payload), num_train_data=0, metadata=metadata
        )
        decode_quantized_module(model.field_coarse, "field_coarse.", tensors, payload["tensors"])
        decode_quantized_module(model.field_fine, "field_fine.", tensors, payload["tensors"])
        model.load_occupancy(tensors, payload)
        return model


register_codec(NeRFQATCodec())
