"""vqad's compressed form: bit-packed learned indices, fp16 codebooks and decoders, the resolved grids.

One trained model is written at any operating point: ``levels=k`` keeps the grid's first k levels.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from torch import Tensor

from nerfqat_plugin.compression.codebook_state import decode_codebook_module, encode_codebook_module
from nerfqat_plugin.compression.codec import CompressedCodec, TensorsAndPayload, register_codec
from nerfqat_plugin.model_components.scene_space import SceneSpace
from nerfqat_plugin.models.compressible import OCCUPANCY_KEY, scene_box_from_payload
from nerfqat_plugin.models.vqad import VQADModel, VQADModelConfig
from nerfqat_plugin.models.vqad_grid_spec import model_values, operating_point_levels


class VQADCodec(CompressedCodec):
    method = "vqad"
    file_keys = {
        "field.grid": "field.grid",
        "field.density_mlp": "field.density_mlp",
        "field.color_mlp": "field.color_mlp",
        "proposal.grid": "proposal_field.grid",
        "proposal.density_mlp": "proposal_field.density_mlp",
        OCCUPANCY_KEY: OCCUPANCY_KEY,
    }

    def decoded_values(self, payload: Dict[str, Any]) -> int:
        options = payload["model"]
        resolutions = options["grid_resolutions"]
        bits = options.get("level_bits") or [options.get("bits") or 8] * len(resolutions)
        return model_values(
            resolutions, bits, options.get("index_mode", "learned"), options.get("probe_table_bits", 16),
            options.get("feature_dim", 8), options["proposal_resolutions"],
        )  # fmt: skip

    def encode_modules(self, model: VQADModel, operating_point: Optional[str]) -> TensorsAndPayload:
        levels = model.active_levels if operating_point is None else operating_point_levels(operating_point)
        tensors: Dict[str, Tensor] = {}
        layout: Dict[str, Any] = {}
        modules = [("field.", model.field, {"grid": levels})]
        if not model.marches_occupancy():  # the occupancy sampler renders without proposals
            modules.append(("proposal_field.", model.proposal_field, None))
        for prefix, module, keep in modules:
            t, lay = encode_codebook_module(module, prefix, keep)
            tensors.update(t)
            layout.update(lay)
        spec = model.grid_spec
        options = model.config.to_payload()  # the user's options, then the grids as resolved
        options["grid_resolutions"] = [list(r) for r in spec.resolutions[:levels]]
        options["level_bits"] = list(spec.level_bits[:levels])
        options["feature_dim"], options["concat_levels"] = spec.feature_dim, spec.concat_levels
        options["index_mode"] = spec.index_mode
        options["proposal_resolutions"] = [list(r) for r in spec.proposal_resolutions]
        sparse = spec.sparse_from_level
        options["sparse_from_level"] = sparse if sparse is not None and sparse < levels else None
        grid_tensors, grid_layout, grid_entry = model.occupancy_state()
        tensors.update(grid_tensors)
        layout.update(grid_layout)
        return tensors, {"model": options, **model.scene_space.to_payload(), **grid_entry, "tensors": layout}

    def decode_modules(self, tensors: Dict[str, Tensor], payload: Dict[str, Any]) -> VQADModel:
        model = VQADModel(
            config=VQADModelConfig.from_payload(payload["model"]),
            scene_box=scene_box_from_payload(payload),
            num_train_data=0,
            metadata=SceneSpace.metadata_from_payload(payload),
            inference_only=True,
        )
        decode_codebook_module(model.field, "field.", tensors, payload["tensors"])
        if not model.marches_occupancy():
            decode_codebook_module(model.proposal_field, "proposal_field.", tensors, payload["tensors"])
        model.load_occupancy(tensors, payload)
        return model


register_codec(VQADCodec())
