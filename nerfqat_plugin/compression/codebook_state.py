"""Turning a module holding :class:`LearnedIndexCodebookGrid` s into file tensors and back.

Learned indices are stored bit-packed (the argmax of each vertex's logits, ``bits`` bits each, or
of each index-table entry's for probed grids, deflated when that is smaller; the logits themselves
are training-only), codebooks and every other
float tensor (decoder MLPs) as fp16, the precision the model trains them at. Random and hashed
indices are not stored at all: they are regenerated from the seed or the hash. ``keep_levels``
truncates grids to their first levels, which is how one trained model is exported at several
operating points.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import torch
from torch import Tensor, nn

from nerfqat_plugin.compression.bitpack import decode_integers, encode_integers
from nerfqat_plugin.field_components.codebook_grid import LearnedIndexCodebookGrid

Layout = Dict[str, Dict[str, Any]]


# Per-level tensors of a grid and what the file makes of them.
_LEVEL_TENSORS = {
    "codebooks.": "codebook",  # stored (fp16)
    "logits.": "indices",  # stored as their argmax
    "index_queries.": "indices",  # (factorised logits) stored as their argmax
    "indices_": "indices",  # a frozen grid's integers
    "block_mask_": "mask",  # sparse levels: which blocks of vertices are kept (1 bit each)
    "index_keys.": "training",  # factorised logits only: not needed once indices are hard
    "index_bias.": "training",
}


def _grid_level_tensor(key: str, grids: Mapping[str, LearnedIndexCodebookGrid]) -> Tuple[str, int, str] | None:
    """(grid path, level, role) if ``key`` is a per-level tensor of one of ``grids``."""
    for path in grids:
        dot = f"{path}." if path else ""
        for name, role in _LEVEL_TENSORS.items():
            if key.startswith(dot + name) and key[len(dot + name) :].isdigit():
                return path, int(key[len(dot + name) :]), role
    return None


def encode_codebook_module(
    module: nn.Module, prefix: str, keep_levels: Mapping[str, int] | None = None
) -> Tuple[Dict[str, Tensor], Layout]:
    """Encode ``module``'s inference state; tensor names are ``prefix + state_dict key``.

    ``keep_levels`` maps a grid's module path to how many of its levels to keep (default: all)."""
    grids = {name: m for name, m in module.named_modules() if isinstance(m, LearnedIndexCodebookGrid)}
    keep = {path: (keep_levels or {}).get(path, grid.num_levels) for path, grid in grids.items()}
    tensors: Dict[str, Tensor] = {}
    layout: Layout = {}
    for key, value in module.state_dict().items():
        level = _grid_level_tensor(key, grids)
        if level is not None and (level[1] >= keep[level[0]] or level[2] == "training"):
            continue  # a level beyond the exported operating point, or training-only
        if level is not None and level[2] == "indices":
            path, lvl, _ = level
            grid = grids[path]
            name = f"{prefix}{path + '.' if path else ''}indices_{lvl}"
            indices = grid.hard_indices(lvl)
            sparse = grid.block_mask(lvl) is not None
            if sparse:  # only the vertices of kept blocks, block by block
                indices = indices[grid.kept_vertices(lvl).to(indices.device)]
            tensors[name], layout[name] = encode_integers(indices, grid.index_bits(lvl), signed=False)
            if sparse:
                layout[name]["sparse_blocks"] = True
        elif level is not None and level[2] == "mask":
            tensors[prefix + key], layout[prefix + key] = encode_integers(value, 1, signed=False)
        elif value.is_floating_point():
            tensors[prefix + key] = value.detach().cpu().half().contiguous()
        else:
            tensors[prefix + key] = value.detach().cpu().contiguous()
    return tensors, layout


def decode_codebook_module(module: nn.Module, prefix: str, tensors: Dict[str, Tensor], layout: Layout) -> None:
    """Load tensors written by :func:`encode_codebook_module` into a freshly built ``module`` whose
    learned grids are frozen (built to hold indices, not logits)."""
    state: Dict[str, Tensor] = {}
    sparse = []
    for name, tensor in tensors.items():
        if not name.startswith(prefix):
            continue
        spec = layout.get(name, {"encoding": "raw"})
        if spec["encoding"] == "packed-uint":
            tensor = decode_integers(tensor, spec).to(torch.int32)
        elif spec["encoding"] != "raw":
            raise ValueError(f"unknown tensor encoding {spec['encoding']!r} of {name}")
        state[name[len(prefix) :]] = tensor.float() if tensor.dtype == torch.float16 else tensor
        if spec.get("sparse_blocks"):
            sparse.append(name[len(prefix) :])
    for key in sparse:  # indices of kept blocks only: back to every vertex, 0 in dropped blocks
        path, _, name = key.rpartition(".")
        grid = module.get_submodule(path)
        lvl = int(name[len("indices_") :])
        mask_key = f"{path + '.' if path else ''}block_mask_{lvl}"
        if not isinstance(grid, LearnedIndexCodebookGrid) or grid.block_mask(lvl) is None or mask_key not in state:
            raise ValueError(f"compressed state does not match the model: {key} is sparse without a block mask")
        grid.set_block_mask(lvl, state[mask_key])
        kept = grid.kept_vertices(lvl)
        if kept.numel() != state[key].numel():
            raise ValueError(f"{key}: {state[key].numel()} stored indices for {kept.numel()} kept vertices")
        dense = torch.zeros(grid.num_vertices(lvl), dtype=torch.int32)
        dense[kept.cpu()] = state[key].reshape(-1)
        state[key] = dense
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"compressed state does not match the model: missing {missing}, unexpected {unexpected}")
