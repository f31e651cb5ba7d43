"""What grids a vqad model builds: its options and the scene's kind resolved once, purely.

:func:`resolve_grid_spec` turns a :class:`~nerfqat_plugin.models.vqad.VQADModelConfig` and whether the
scene is sampled in NDC into a :class:`GridSpec` (the presets live here, beside it); the config is
never rewritten. A model built from a spec, a checkpoint or a file rebuilds the same grids. The
operating points' names (``levels=k``) are built and parsed here too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

from nerfqat_plugin.compression.codec import MAX_DECODED_VALUES
from nerfqat_plugin.errors import UserInputError
from nerfqat_plugin.field_components.codebook_grid import IndexMode

if TYPE_CHECKING:
    from nerfqat_plugin.models.vqad import VQADModelConfig

Resolution = Tuple[int, int, int]

# Default finest resolutions. NDC: x/y follow a 4:3 image at about 2.6 pixels per cell at 504x378
# and z (linear in disparity) is coarser; bounded: a cube. Both keep a 4-bit file under 1 MB.
DEFAULT_FINEST_NDC: Resolution = (192, 144, 56)
DEFAULT_FINEST_BOUNDED: Resolution = (112, 112, 112)
DEFAULT_NUM_LEVELS = 4
DEFAULT_PROPOSAL_NDC: Resolution = (64, 48, 24)
DEFAULT_PROPOSAL_BOUNDED: Resolution = (48, 48, 48)
# Scenes outside NDC with no grid option given: five levels to 256^3, the two finest sparse and
# pruned to fit 990 kB (why: docs/methods/vqad.md).
BOUNDED_SPARSE_PRESET = {"num_levels": 5, "finest_resolution": (256, 256, 256), "sparse_from_level": 3}
BOUNDED_SPARSE_MAX_FILE_BYTES = 990_000
# NDC scenes with no grid or bit option given, learned indices: 8-bit codebooks on the three coarse
# levels (few vertices, so 256 entries cost few bytes) and a slightly coarser finest level to stay
# within the same file size (why: docs/methods/vqad.md).
NDC_LEVEL_BITS_PRESET = {"finest_resolution": (184, 138, 54), "level_bits": (8, 8, 8, 4)}
DEFAULT_BITS = 4
DEFAULT_FEATURE_DIM = 8
# Probed grids: bits of the (large, hashed) codebook when none are given; instant-NGP-sized tables
# of 2**14 entries per level are what a ~1 MB file affords at 4 levels x 7 features (fp16).
DEFAULT_PROBED_BITS = 14
# Probed grids with no grid option given: instant-NGP's 16 geometric levels from 16 to 1024 vertices
# (NDC: 4:3 in x/y, z coarser), concatenated, with 2**13-entry codebooks of 2-wide features (each
# unless given); with 2-bit probes into 2**16-entry index tables a file is about 0.85 MB (why:
# docs/methods/vqad.md).
PROBED_PRESET = {"num_levels": 16, "coarsest_resolution": 16}
PROBED_PRESET_FEATURES = {"feature_dim": 2, "concat_levels": 16}
PROBED_PRESET_FINEST_NDC: Resolution = (1024, 768, 256)
PROBED_PRESET_FINEST: Resolution = (1024, 1024, 1024)
PROBED_PRESET_BITS = 13
# Index mode when none is given: learned hash probing (the probed preset) where it measured best, on
# forward-facing and object scenes with no grid option; on unbounded captures the hashed grid overfits
# the views and learned per-vertex indices (the sparse preset) generalise better; learned too wherever
# grid options are given (why: docs/methods/vqad.md).
DEFAULT_INDEX_MODE: IndexMode = "probed"
DEFAULT_INDEX_MODE_OTHERWISE: IndexMode = "learned"
OPERATING_POINT_PREFIX = "levels="


@dataclass(frozen=True)
class GridSpec:
    """The grids of one vqad model, every option resolved."""

    resolutions: Tuple[Resolution, ...]
    """Vertices per axis of each level of the radiance field's grid, coarse to fine."""
    level_bits: Tuple[int, ...]
    """Index bits of each level."""
    proposal_resolutions: Tuple[Resolution, ...]
    """Levels of the proposal field's grid."""
    sparse_from_level: Optional[int]
    """Levels from this index on keep only occupied blocks (None: all dense)."""
    max_file_bytes: Optional[int]
    """Byte budget the sparse levels are pruned to (None: every occupied block)."""
    feature_dim: int = DEFAULT_FEATURE_DIM
    """Width of codebook entries."""
    concat_levels: int = 0
    """Levels concatenated into the decoder's input (0: summed)."""
    index_mode: IndexMode = "learned"
    """How vertices find their codebook entries."""

    @property
    def num_levels(self) -> int:
        return len(self.resolutions)


def level_resolutions(finest: Resolution, num_levels: int) -> List[Resolution]:
    """Resolutions halving from ``finest`` towards the coarsest level (at least 2 per axis)."""
    return [
        tuple(max(2, round(r / 2 ** (num_levels - 1 - level))) for r in finest)  # type: ignore[misc]
        for level in range(num_levels)
    ]


def geometric_resolutions(coarsest: int, finest: Resolution, num_levels: int) -> List[Resolution]:
    """Resolutions growing by one factor per level from ``coarsest`` (along the finest level's longest
    axis, the others in proportion, at least 2) to ``finest``: instant-NGP's spacing."""
    longest = max(finest)
    start = [max(2.0, coarsest * r / longest) for r in finest]
    if num_levels == 1:
        return [tuple(finest)]
    return [
        tuple(max(2, round(s * (r / s) ** (level / (num_levels - 1)))) for s, r in zip(start, finest, strict=True))  # type: ignore[misc]
        for level in range(num_levels)
    ]


def _resolutions(
    explicit: Optional[Sequence[Sequence[int]]], finest: Sequence[int], levels: int, coarsest: Optional[int] = None
) -> List[Resolution]:
    """Explicit per-level resolutions if given, else ``levels`` from ``finest``: halving, or growing
    geometrically from ``coarsest``."""
    if explicit is not None:
        return [tuple(int(v) for v in r) for r in explicit]  # type: ignore[misc]
    if coarsest is not None:
        return geometric_resolutions(coarsest, tuple(finest), levels)  # type: ignore[arg-type]
    return level_resolutions(tuple(finest), levels)  # type: ignore[arg-type]


def _grid_option_given(cfg: VQADModelConfig) -> bool:
    """Whether the user gave any option shaping the grid (then no preset applies)."""
    grid_options = (
        cfg.grid_resolutions,
        cfg.finest_resolution,
        cfg.num_levels,
        cfg.coarsest_resolution,
        cfg.sparse_from_level,
    )
    return any(option is not None for option in grid_options)


def index_mode(cfg: VQADModelConfig, unbounded: bool) -> IndexMode:
    """The index mode ``cfg`` gives, else probed (with its preset) on a scene that is not ``unbounded``
    where no grid option and no option of learned indices (index bits, factorised logits, a byte limit
    for sparse levels) is given, else learned."""
    if cfg.index_mode is not None:
        return cfg.index_mode
    bits_given = cfg.bits is not None or cfg.level_bits is not None  # 1-8 index bits: learned's meaning
    learned_only = bits_given or cfg.logit_rank > 0 or cfg.max_file_bytes is not None
    if unbounded or learned_only or _grid_option_given(cfg):
        return DEFAULT_INDEX_MODE_OTHERWISE
    return DEFAULT_INDEX_MODE


def scene_preset(cfg: VQADModelConfig, ndc: bool, mode: IndexMode) -> dict:
    """The preset options a scene gets when the user gave none of the grid options: probed indices
    (``mode``) the 16-level hashed grid (``PROBED_PRESET``; its bits and features where none are given);
    else outside NDC the sparse grid (``BOUNDED_SPARSE_PRESET``), in NDC with learned indices and no bit
    option the per-level bits (``NDC_LEVEL_BITS_PRESET``)."""
    if _grid_option_given(cfg):
        return {}
    if mode == "probed":
        preset = {**PROBED_PRESET, "finest_resolution": PROBED_PRESET_FINEST_NDC if ndc else PROBED_PRESET_FINEST}
        if cfg.bits is None and cfg.level_bits is None:
            preset["level_bits"] = (PROBED_PRESET_BITS,) * PROBED_PRESET["num_levels"]
        return {**preset, **PROBED_PRESET_FEATURES}
    if ndc:
        plain_bits = mode == "learned" and cfg.bits is None and cfg.level_bits is None
        return dict(NDC_LEVEL_BITS_PRESET) if plain_bits else {}
    return {**BOUNDED_SPARSE_PRESET, "max_file_bytes": BOUNDED_SPARSE_MAX_FILE_BYTES}


def resolve_grid_spec(cfg: VQADModelConfig, ndc: bool, unbounded: bool = False) -> GridSpec:
    """The grids ``cfg`` asks for on a scene sampled in NDC (``ndc``), an unbounded capture
    (``unbounded``: contracted) or an object's box; bad options raise :class:`UserInputError` with one
    line naming the option."""
    mode = index_mode(cfg, unbounded and not ndc)
    preset = scene_preset(cfg, ndc, mode)

    def option(name: str):  # the user's value, else the preset's
        given = getattr(cfg, name)
        return preset.get(name) if given is None else given

    finest = option("finest_resolution") or (DEFAULT_FINEST_NDC if ndc else DEFAULT_FINEST_BOUNDED)
    coarsest = option("coarsest_resolution")
    if coarsest is not None and not 2 <= coarsest <= max(finest):
        raise UserInputError(
            f"vqad: --pipeline.model.coarsest-resolution must be 2 to the finest resolution ({max(finest)}), "
            f"got {coarsest}"
        )
    levels = option("num_levels") or DEFAULT_NUM_LEVELS
    feature_dim = option("feature_dim")
    resolutions = _resolutions(cfg.grid_resolutions, finest, levels, coarsest)
    proposal_finest = cfg.proposal_finest_resolution or (DEFAULT_PROPOSAL_NDC if ndc else DEFAULT_PROPOSAL_BOUNDED)
    proposal = _resolutions(cfg.proposal_resolutions, proposal_finest, cfg.proposal_levels)
    default_bits = DEFAULT_PROBED_BITS if mode == "probed" else DEFAULT_BITS
    level_bits = option("level_bits")
    level_bits = tuple(level_bits) if level_bits is not None else (cfg.bits or default_bits,) * len(resolutions)
    spec = GridSpec(
        resolutions=tuple(resolutions),
        level_bits=level_bits,
        proposal_resolutions=tuple(proposal),
        sparse_from_level=option("sparse_from_level"),
        max_file_bytes=option("max_file_bytes"),
        feature_dim=DEFAULT_FEATURE_DIM if feature_dim is None else feature_dim,
        concat_levels=option("concat_levels") or 0,
        index_mode=mode,
    )
    _check(spec, cfg)
    return spec


def model_values(
    resolutions: Sequence[Sequence[int]],
    level_bits: Sequence[int],
    index_mode: str,
    probe_table_bits: int,
    feature_dim: int,
    proposal_resolutions: Sequence[Sequence[int]],
) -> int:
    """An upper estimate of the values a model of these grids holds when rebuilt from a file: an index
    per vertex (none on hashed levels, a table on probed ones), the codebooks' entries, and the
    proposal grid's vertices."""
    vertices = [math.prod(int(r) for r in resolution) for resolution in resolutions]
    if index_mode == "hashed":
        indices = 0
    elif index_mode == "probed":
        indices = (1 << int(probe_table_bits)) * len(vertices)
    else:
        indices = sum(vertices)
    codebooks = sum((1 << min(int(b), 30)) * int(feature_dim) for b in level_bits)
    return indices + codebooks + sum(math.prod(int(r) for r in resolution) for resolution in proposal_resolutions)


def _check(spec: GridSpec, cfg: VQADModelConfig) -> None:
    levels = spec.num_levels
    if len(spec.level_bits) != levels:
        raise UserInputError(
            f"vqad: level_bits gives {len(spec.level_bits)} bit widths ({list(spec.level_bits)}) for a grid of "
            f"{levels} levels: give one per level, coarse to fine"
        )
    if spec.index_mode == "learned" and not all(1 <= b <= 8 for b in spec.level_bits):
        raise UserInputError(f"vqad: index bits must be in [1, 8], got {list(spec.level_bits)}")
    if spec.sparse_from_level is not None and not 0 <= spec.sparse_from_level < levels:
        raise UserInputError(
            f"vqad: sparse_from_level must name one of the grid's levels (0 to {levels - 1}), "
            f"got {spec.sparse_from_level}"
        )
    if spec.feature_dim < 1:
        raise UserInputError(f"vqad: feature_dim must be at least 1, got {spec.feature_dim}")
    if spec.concat_levels < 0:
        raise UserInputError(f"vqad: concat_levels must be 0 (levels summed) or more, got {spec.concat_levels}")
    if cfg.sparse_block_size < 2:
        raise UserInputError(f"vqad: sparse_block_size must be at least 2, got {cfg.sparse_block_size}")
    if spec.max_file_bytes is not None and (spec.sparse_from_level is None or spec.max_file_bytes <= 0):
        raise UserInputError(
            f"vqad: max_file_bytes ({spec.max_file_bytes}) sizes the sparse levels: it needs "
            "--pipeline.model.sparse-from-level and a positive byte count"
        )
    if cfg.random_levels_fraction is not None and not 0.0 <= cfg.random_levels_fraction <= 1.0:
        raise UserInputError(f"vqad: random_levels_fraction must be in [0, 1], got {cfg.random_levels_fraction}")
    if not 0.0 <= cfg.prune_at_fraction < 1.0:
        raise UserInputError(f"vqad: prune_at_fraction must be in [0, 1), got {cfg.prune_at_fraction}")
    if not 0.0 <= cfg.train_min_transmittance < 1.0:  # 1 or more would drop every training sample
        raise UserInputError(
            f"vqad: train_min_transmittance must be in [0, 1) (0: off), got {cfg.train_min_transmittance}"
        )
    if cfg.eval_levels is not None and not 1 <= cfg.eval_levels <= levels:
        raise UserInputError(f"vqad: eval_levels must be in [1, {levels}], got {cfg.eval_levels}")
    values = model_values(
        spec.resolutions, spec.level_bits, spec.index_mode, cfg.probe_table_bits, spec.feature_dim,
        spec.proposal_resolutions,
    )  # fmt: skip
    if values > MAX_DECODED_VALUES:
        raise UserInputError(
            f"vqad: these grids make a model of {values:,} values, more than a file may hold "
            f"({MAX_DECODED_VALUES:,}); {spec.index_mode} indices take "
            f"{'one per vertex' if spec.index_mode in ('learned', 'random') else 'a table per level'}: "
            "use coarser levels (--pipeline.model.finest-resolution) or --pipeline.model.index-mode hashed"
        )


def operating_point_name(levels: int) -> str:
    """The name of the operating point made of a grid's first ``levels`` levels."""
    return f"{OPERATING_POINT_PREFIX}{levels}"


def operating_point_levels(name: str) -> int:
    """The level count an operating point's name stands for (the inverse of :func:`operating_point_name`)."""
    if not name.startswith(OPERATING_POINT_PREFIX) or not name[len(OPERATING_POINT_PREFIX) :].isdigit():
        raise UserInputError(f"vqad: an operating point is named {OPERATING_POINT_PREFIX}k, got {name!r}")
    return int(name[len(OPERATING_POINT_PREFIX) :])
