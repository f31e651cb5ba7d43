"""A multi-level feature grid whose vertices hold learned indices into small codebooks (VQAD).

Variable Bitrate Neural Fields (Takikawa et al. 2022) store, at every grid vertex, a b-bit index
into a per-level codebook of ``2**b`` feature vectors instead of the feature vector itself. The
index is learned: each vertex keeps logits over the codebook; training uses the straight-through
estimator ``one_hot(argmax) - softmax.detach() + softmax`` (hard lookups forward, softmax gradients
backward, so both logits and codebook learn); inference uses only the argmax, which is what gets
stored, bit-packed. Features are trilinearly interpolated per level and summed over levels, so the
first ``k`` levels alone already form a (coarser) field: that is the variable bitrate.

Only the corners a batch touches are gathered, so a step costs ``points x 8 x 2**b`` per level,
not ``vertices x 2**b``. The logits themselves cost ``vertices x 2**b`` floats (plus optimizer
state) while training; a grid built with ``frozen=True`` (a model loaded from its file) keeps only
the integer indices.

Rendering (no gradient, hard indices) instead decodes each level once into a volume of vertex
features, ``codebook[index]`` and zeros in dropped blocks, and interpolates it with ``grid_sample``:
one fused kernel per level instead of corner arithmetic, an index gather and a codebook gather per
corner. The values are the same trilinear sum up to float rounding. Probed levels too large to decode
read each corner's stored probe and codebook entry in one Triton kernel
(:func:`.fused_codebook_lookup.stored_probed_lookup`).

For the paper's ablation the indices can instead be fixed: ``random`` (drawn once from a seed) or
``hashed`` (instant-NGP's spatial hash of the vertex). Neither needs storing, so at equal bytes
their codebooks can be larger.

``probed`` is the authors' follow-up (Takikawa et al. 2023, "Compact Neural Graphics Primitives with
Learned Hash Probing"): a large codebook as in ``hashed``, where a vertex's hash picks a bucket of
``2**probe_bits`` consecutive entries and a learned index, read from a small hashed table of
``2**probe_table_bits`` indices, picks the entry within it (straight-through as above). Learned
indices resolve the hash's collisions while the stored indices stay few.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterator, List, Literal, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nerfqat_plugin.field_components.block_occupancy import block_grid_shape
from nerfqat_plugin.field_components.fused_codebook_lookup import (
    fused_level_lookup,
    fused_lookup_available,
    fused_probed_lookup,
    stored_probed_lookup,
)
from nerfqat_plugin.field_components.half_precision import round_to_half
from nerfqat_plugin.field_components.weights_version import tensors_version

IndexMode = Literal["learned", "random", "hashed", "probed"]
Resolution = Tuple[int, int, int]

_CORNERS = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)])
# instant-NGP's spatial-hash primes (the first is 1 so that x alone maps coherently).
_HASH_PRIMES = (1, 2654435761, 805459861)
# A second, independent hash for the index table of probed grids (large odd constants).
_PROBE_HASH_PRIMES = (2246822519, 3266489917, 668265263)
MAX_DECODED_LEVEL_BYTES = 2 << 30
"""Largest float32 feature volume a level decodes into for rendering; larger levels gather corners."""
MAX_DECODED_PROBED_LEVEL_BYTES = 256 << 20
"""The same for probed levels: their fine levels hold far more vertices than their small tables have
entries, and gathers from tables that stay in cache beat interpolating a volume that does not."""


def _as_resolution(resolution: Union[int, Sequence[int]]) -> Resolution:
    if isinstance(resolution, int):
        return (resolution, resolution, resolution)
    values = tuple(int(r) for r in resolution)
    if len(values) != 3:
        raise ValueError(f"a level's resolution is one int or three (x, y, z), got {list(values)}")
    return values  # type: ignore[return-value]


def corner_lookup(
    positions: Tensor, resolution: Resolution, offsets: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor, Tensor]:
    """Integer corners [N, 8, 3], flat vertex ids [N, 8] and trilinear weights [N, 8] of the cell
    around each position in [0, 1]^3 on a grid of ``resolution`` vertices per axis. ``offsets``: the
    8 corner offsets already on the positions' device (a grid keeps them as a buffer)."""
    rx, ry, rz = resolution
    # Python-scalar bounds per axis: no host-to-device copies in the hot path.
    scaled = torch.stack([positions[:, i].clamp(0.0, 1.0) * (r - 1) for i, r in enumerate(resolution)], dim=-1)
    base = torch.stack([scaled[:, i].floor().clamp(max=r - 2) for i, r in enumerate(resolution)], dim=-1)
    frac = scaled - base
    offsets = _CORNERS.to(positions.device) if offsets is None else offsets
    corners = base.long()[:, None, :] + offsets[None]
    ids = (corners[..., 0] * ry + corners[..., 1]) * rz + corners[..., 2]
    weights = torch.where(offsets[None].bool(), frac[:, None, :], 1.0 - frac[:, None, :]).prod(dim=-1)
    return corners, ids, weights


def interpolate_volume(volume: Tensor, positions: Tensor) -> Tensor:
    """Trilinear interpolation [N, F] of a vertex-feature volume [1, F, X, Y, Z] at positions in
    [0, 1]^3 [N, 3] (clamped, as :func:`corner_lookup` does); vertex (0, 0, 0) sits at 0 and the
    last vertex of each axis at 1."""
    return _sample_volume(volume, _sampling_grid(positions, volume.dtype)).T


def interpolate_volumes(volumes: Sequence[Tensor], positions: Tensor, concat: bool) -> Tensor:
    """:func:`interpolate_volume` of several volumes at the same positions, summed [N, F] or
    concatenated [N, sum of F]: the sampling grid is made once, and the per-volume results are
    combined feature-major and returned as one transposed view, not transposed level by level."""
    grid = _sampling_grid(positions, volumes[0].dtype)
    if concat:
        return torch.cat([_sample_volume(volume, grid) for volume in volumes]).T
    total = _sample_volume(volumes[0], grid)  # grid_sample's own output: summed into in place
    for volume in volumes[1:]:
        total.add_(_sample_volume(volume, grid))
    return total.T


def _sampling_grid(positions: Tensor, dtype: torch.dtype) -> Tensor:
    # grid_sample reads (x, y, z) as (W, H, D), the volume's last axis first; align_corners maps -1
    # and 1 onto the first and last vertices.
    return (positions.clamp(0.0, 1.0) * 2.0 - 1.0).flip(-1).reshape(1, -1, 1, 1, 3).to(dtype)


def _sample_volume(volume: Tensor, grid: Tensor) -> Tensor:
    """Features [F, N] of ``volume`` [1, F, X, Y, Z] at :func:`_sampling_grid` ``grid``."""
    sampled = F.grid_sample(volume, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return sampled.reshape(volume.shape[1], -1)


def hashed_indices(corners: Tensor, bits: int, primes: Tuple[int, int, int] = _HASH_PRIMES) -> Tensor:
    """instant-NGP's spatial hash of integer vertex coordinates [..., 3] into ``2**bits`` slots."""
    c = corners.long()
    h = (c[..., 0] * primes[0]) ^ (c[..., 1] * primes[1]) ^ (c[..., 2] * primes[2])
    return h & ((1 << bits) - 1)


def _straight_through(logits: Tensor) -> Tensor:
    """One-hot of the argmax in value, the softmax's gradient backward [..., K] (the paper's
    ``one_hot(argmax) - softmax.detach() + softmax``)."""
    soft = F.softmax(logits, dim=-1)
    one_hot = F.one_hot(soft.argmax(dim=-1), soft.shape[-1]).to(soft.dtype)
    return one_hot + (soft - soft.detach())


class LearnedIndexCodebookGrid(nn.Module):
    """Levels of dense 3D grids; each vertex selects one of ``2**bits`` codebook entries per level.

    Args:
        resolutions: vertices per axis of each level, coarse to fine: an int (cubic) or (x, y, z),
            each at least 2.
        bits: log2 of the codebook size; for learned indices, the stored index width b. One int for
            every level, or one per level: coarse levels hold few vertices, so wide indices (large
            codebooks) there cost few bytes.
        feature_dim: width of codebook entries (and of the output).
        init_std: standard deviation of the initial codebook entries.
        index_mode: ``learned`` (the method), ``random`` or ``hashed`` (fixed indices, the ablation),
            or ``probed`` (learned indices into hashed buckets of a large codebook, see above).
        frozen: learned or probed indices only: hold integer indices instead of logits (inference,
            loaded files).
        seed: seed of the random indices.
        concat_levels: 0 sums the levels (output width F, as kaolin-wisp); n > 0 concatenates them
            into n * F features, zeros for levels beyond the grid's or a point's operating point
            (instant-NGP's choice; n stays fixed when a file keeps only the first levels).
        initial_index_bias: added to every vertex's logit of entry 0 at initialisation, so vertices
            no ray trains keep index 0 (long runs that deflate well) instead of a random argmax.
        logit_rank: 0 keeps free logits per vertex (``vertices x 2**bits`` floats, the paper);
            r > 0 factorises them as ``query_v . key_j / |key_j| + bias_j`` with r-dimensional vertex
            queries and per-level keys and biases (``vertices x r`` floats whatever the bit width).
            Unit keys all lie on a sphere, so each is the argmax for queries near its direction; the
            argmax of raw products can only pick keys on the convex hull of the others.
        sparse_from_level: levels from this one on are split into blocks of ``block_size**3``
            vertices, each with a keep flag (``block_mask_<level>``, all kept until
            :meth:`set_block_mask`); vertices of dropped blocks contribute nothing and are not stored.
            None: every level dense.
        block_size: vertices per block edge of sparse levels.
        probe_bits: probed grids: log2 of the entries of a bucket (the stored index width).
        probe_table_bits: probed grids: log2 of the stored indices per level.
    """

    def __init__(
        self,
        resolutions: Sequence[Union[int, Sequence[int]]],
        bits: Union[int, Sequence[int]],
        feature_dim: int,
        init_std: float = 0.1,
        index_mode: IndexMode = "learned",
        frozen: bool = False,
        seed: int = 0,
        initial_index_bias: float = 0.0,
        concat_levels: int = 0,
        logit_rank: int = 0,
        sparse_from_level: Optional[int] = None,
        block_size: int = 8,
        probe_bits: int = 2,
        probe_table_bits: int = 16,
    ) -> None:
        super().__init__()
        self.resolutions: List[Resolution] = [_as_resolution(r) for r in resolutions]
        if not self.resolutions or min(min(r) for r in self.resolutions) < 2:
            raise ValueError(f"every level needs at least 2 vertices per axis, got {list(resolutions)}")
        level_bits = [int(bits)] * len(self.resolutions) if isinstance(bits, int) else [int(b) for b in bits]
        if len(level_bits) != len(self.resolutions):
            raise ValueError(f"{len(level_bits)} codebook bit widths for {len(self.resolutions)} levels")
        if not all(1 <= b <= 24 for b in level_bits):
            raise ValueError(f"codebook bits must be in [1, 24], got {level_bits}")
        if index_mode not in ("learned", "random", "hashed", "probed"):
            raise ValueError(f"index_mode must be learned, random, hashed or probed, got {index_mode!r}")
        if index_mode == "probed" and not 1 <= probe_bits <= min(8, *level_bits):
            raise ValueError(f"probe_bits must be in [1, min(8, codebook bits {level_bits})], got {probe_bits}")
        if index_mode == "probed" and not 1 <= probe_table_bits <= 24:
            raise ValueError(f"probe_table_bits must be in [1, 24], got {probe_table_bits}")
        if index_mode == "probed" and (logit_rank or sparse_from_level is not None):
            raise ValueError("probed indices are hashed per level: no factorised logits or sparse levels")
        if concat_levels and concat_levels < len(self.resolutions):
            raise ValueError(f"concat_levels ({concat_levels}) is below the number of levels ({len(resolutions)})")
        self.level_bits: List[int] = level_bits
        self.feature_dim = feature_dim
        self.concat_levels = concat_levels
        self.index_mode = index_mode
        self.probe_bits = probe_bits
        self.probe_table_bits = probe_table_bits
        self.frozen = frozen or not self.learns_indices
        self.register_buffer("corner_offsets", _CORNERS.clone(), persistent=False)
        levels_float = torch.tensor(self.resolutions, dtype=torch.float32).reshape(-1, 3)
        self.register_buffer("level_resolutions", levels_float, persistent=False)
        self.register_buffer("level_resolutions_int32", levels_float.int(), persistent=False)  # the kernels'
        self.codebooks = nn.ParameterList(
            [nn.Parameter(init_std * torch.randn(self.codebook_size(lvl), feature_dim)) for lvl in self.levels]
        )
        self.logit_rank = logit_rank
        self.logits = nn.ParameterList()
        self.index_queries = nn.ParameterList()
        self.index_keys = nn.ParameterList()
        self.index_bias = nn.ParameterList()
        if self.learns_indices and not frozen and logit_rank == 0:
            for lvl in self.levels:
                logits = 0.01 * torch.randn(self.index_entries(lvl), 1 << self.index_bits(lvl))
                logits[:, 0] += initial_index_bias
                self.logits.append(nn.Parameter(logits))
        if index_mode == "learned" and not frozen and logit_rank > 0:
            for lvl in self.levels:
                # Initial logits of the same spread as free ones (0.01): unit keys, small queries.
                queries = 0.01 * torch.randn(self.num_vertices(lvl), logit_rank)
                self.index_queries.append(nn.Parameter(queries))
                self.index_keys.append(nn.Parameter(torch.randn(self.codebook_size(lvl), logit_rank)))
                bias = torch.zeros(self.codebook_size(lvl))
                bias[0] = initial_index_bias
                self.index_bias.append(nn.Parameter(bias))
        if self.learns_indices and frozen:
            for lvl in self.levels:
                self.register_buffer(f"indices_{lvl}", torch.zeros(self.index_entries(lvl), dtype=torch.int32))
        self.block_size = block_size
        self.sparse_from_level = sparse_from_level
        for lvl in self.sparse_levels:
            blocks = math.prod(block_grid_shape(self.resolutions[lvl], block_size))
            self.register_buffer(f"block_mask_{lvl}", torch.ones(blocks, dtype=torch.uint8))
        # Evaluation's hard indices per level, with the versions of the logits they came from.
        self._hard_index_cache: Dict[int, Tuple[Tuple[Tuple[int, int], ...], Tensor]] = {}
        self.decoded_lookup = True
        """Renders interpolate each level's decoded feature volume, and look probed levels too large to
        decode up in one kernel where Triton runs (see the module docstring)."""
        self.fused_lookup = False
        """Training looks levels of free logits with more rows than the points have corners up with one
        Triton kernel each where it runs, and a probed grid's levels with one for all
        (:mod:`.fused_codebook_lookup`)."""
        self._volume_cache: Dict[int, Tuple[Tuple[Tuple[int, int], ...], Tensor]] = {}
        self.half_logits_in_state = False
        """Checkpoints (state dicts) hold free logits as fp16, shifted so each row's largest is 0
        (:func:`shifted_half_logits`); loading brings them back to float32."""
        # Checkpoints hold the per-vertex logits of kept blocks only (dropped vertices never render again).
        self.register_state_dict_post_hook(_compact_logits_state)
        self.register_load_state_dict_pre_hook(_expand_logits_state)
        if index_mode == "random":
            generator = torch.Generator().manual_seed(seed)
            for lvl in self.levels:
                size = self.codebook_size(lvl)
                indices = torch.randint(0, size, (self.num_vertices(lvl),), generator=generator, dtype=torch.int32)
                # Not persistent: regenerated from the seed, so neither checkpoints nor files hold them.
                self.register_buffer(f"indices_{lvl}", indices, persistent=False)

    @property
    def levels(self) -> range:
        return range(len(self.resolutions))

    @property
    def num_levels(self) -> int:
        return len(self.resolutions)

    def codebook_size(self, level: int) -> int:
        """Entries of one level's codebook: ``2**bits`` of that level."""
        return 1 << self.level_bits[level]

    @property
    def learns_indices(self) -> bool:
        """Whether indices are trained (and stored): learned and probed grids."""
        return self.index_mode in ("learned", "probed")

    def index_entries(self, level: int) -> int:
        """Stored indices of one level: one per vertex (learned), the index table (probed)."""
        return 1 << self.probe_table_bits if self.index_mode == "probed" else self.num_vertices(level)

    def index_bits(self, level: int) -> int:
        """Width of one level's stored indices: its codebook bits (learned), probe bits (probed)."""
        return self.probe_bits if self.index_mode == "probed" else self.level_bits[level]

    @property
    def sparse_levels(self) -> range:
        """Levels split into blocks that can be dropped (see ``sparse_from_level``)."""
        first = self.num_levels if self.sparse_from_level is None else max(0, self.sparse_from_level)
        return range(min(first, self.num_levels), self.num_levels)

    def block_mask(self, level: int) -> Optional[Tensor]:
        """Keep flags of a sparse level's blocks (uint8, row-major), None for a dense level."""
        return getattr(self, f"block_mask_{level}") if level in self.sparse_levels else None

    def set_block_mask(self, level: int, keep: Tensor) -> None:
        """Keep only the blocks flagged in ``keep`` (bool or 0/1, row-major) of a sparse level."""
        mask = self.block_mask(level)
        if mask is None:
            raise ValueError(f"level {level} is dense (sparse levels: {list(self.sparse_levels)})")
        if keep.numel() != mask.numel():
            raise ValueError(f"level {level}: {keep.numel()} block flags for {mask.numel()} blocks")
        mask.copy_(keep.reshape(-1).to(mask))

    def kept_vertices(self, level: int, mask: Optional[Tensor] = None) -> Tensor:
        """Flat ids (int64) of the vertices in kept blocks of a sparse level (by its block mask, or
        ``mask``), block by block, each block's vertices in row-major order: the order in which a
        file stores their indices."""
        mask = self.block_mask(level) if mask is None else mask
        assert mask is not None, f"level {level} is dense"
        resolution = self.resolutions[level]
        gx, gy, gz = block_grid_shape(resolution, self.block_size)
        kept = torch.nonzero(mask.bool(), as_tuple=False).reshape(-1).to(torch.int64)
        block = torch.stack([kept // (gy * gz), kept // gz % gy, kept % gz], dim=-1) * self.block_size
        local = torch.arange(self.block_size)
        offsets = torch.stack(torch.meshgrid(local, local, local, indexing="ij"), dim=-1).reshape(-1, 3).to(kept)
        corners = block[:, None, :] + offsets[None]  # [kept blocks, B^3, 3]
        inside = ((corners < torch.tensor(resolution, device=kept.device)).all(dim=-1)).reshape(-1)
        corners = corners.reshape(-1, 3)[inside]
        _, ry, rz = resolution
        return (corners[:, 0] * ry + corners[:, 1]) * rz + corners[:, 2]

    @property
    def output_dim(self) -> int:
        return self.feature_dim * (self.concat_levels or 1)

    def num_vertices(self, level: int) -> int:
        x, y, z = self.resolutions[level]
        return x * y * z

    def hard_indices(self, level: int) -> Tensor:
        """Every vertex's codebook index on one level (the argmax of its logits when learned), int64;
        for probed grids, the index table (each entry's probe within a bucket)."""
        if self.index_mode == "hashed":
            return torch.cat([hashed_indices(v, self.level_bits[level]) for v in self._vertex_slabs(level)])
        if self.frozen:
            return getattr(self, f"indices_{level}").long()
        if self.logit_rank == 0:
            per_row = self.logits[level].argmax(dim=-1)
            return per_row[self._buffers[f"vertex_rows_{level}"]] if self.is_compacted(level) else per_row
        chunks = torch.arange(self.index_entries(level), device=self.codebooks[level].device).split(1 << 18)
        return torch.cat([self.vertex_logits(level, ids).argmax(dim=-1) for ids in chunks])

    def cached_hard_indices(self, level: int) -> Tensor:
        """:meth:`hard_indices` of a learned level as int32, computed again only when its logits
        change: evaluation looks up millions of corners (renders, the file's occupancy grid), and an
        argmax per corner reads ``2**bits`` logits each. Equal to what an exported file stores."""
        versions = tensors_version(*self._index_parameters(level))
        cached = self._hard_index_cache.get(level)
        if cached is None or cached[0] != versions:
            with torch.no_grad():
                cached = (versions, self.hard_indices(level).to(torch.int32))
            self._hard_index_cache[level] = cached
        return cached[1]

    def train(self, mode: bool = True) -> LearnedIndexCodebookGrid:
        if mode:  # training changes the logits and codebooks every step
            self._hard_index_cache.clear()
            self._volume_cache.clear()
        return super().train(mode)

    def _index_parameters(self, level: int) -> List[Tensor]:
        """The tensors a level's indices follow from: stored indices, or the logits they are argmaxes
        of (none for hashed indices, a fixed function of the vertex)."""
        if self.index_mode == "hashed":
            return []
        if self.frozen:
            return [getattr(self, f"indices_{level}")]
        if self.logit_rank == 0:
            return [self.logits[level]]
        return [self.index_queries[level], self.index_keys[level], self.index_bias[level]]

    def decoded_volume(self, level: int) -> Optional[Tensor]:
        """Every vertex's feature on one level as a volume [1, F, X, Y, Z] (float32, the fp16-rounded
        codebook entry of its hard index; zeros in dropped blocks), computed again only when the
        indices, codebook or block mask change. None where the volume would exceed
        :data:`MAX_DECODED_LEVEL_BYTES` (probed: :data:`MAX_DECODED_PROBED_LEVEL_BYTES`; the level
        gathers its corners)."""
        limit = MAX_DECODED_PROBED_LEVEL_BYTES if self.index_mode == "probed" else MAX_DECODED_LEVEL_BYTES
        if self.num_vertices(level) * self.feature_dim * 4 > limit:
            return None
        mask = self.block_mask(level)
        masks = [] if mask is None else [mask]
        versions = tensors_version(self.codebooks[level], *self._index_parameters(level), *masks)
        cached = self._volume_cache.get(level)
        if cached is None or cached[0] != versions:
            with torch.no_grad():
                learning = self.index_mode == "learned" and not self.frozen
                if self.index_mode == "probed":
                    indices = self._probed_vertex_entries(level)
                else:
                    indices = (self.cached_hard_indices(level) if learning else self.hard_indices(level)).long()
                features = F.embedding(indices, round_to_half(self.codebooks[level]).float())
                if mask is not None:
                    features = features * self.vertex_keep_flags(level).to(features)[:, None]
                # Channels last: a corner's features are adjacent in memory, one read per corner as
                # in the codebook gathers (grid_sample follows the strides it is given).
                volume = features.reshape(1, *self.resolutions[level], self.feature_dim).permute(0, 4, 1, 2, 3)
            cached = (versions, volume)
            self._volume_cache[level] = cached
        return cached[1]

    def _vertex_slabs(self, level: int) -> Iterator[Tensor]:
        """Every vertex's integer coordinates on one level [n, 3], in flat-id order, a slab of x at a
        time (about 2**22 vertices each), so that whole-level hashing stays within bounded memory."""
        x, y, z = self.resolutions[level]
        device = self.codebooks[level].device
        yz = torch.stack(torch.meshgrid(*(torch.arange(n, device=device) for n in (y, z)), indexing="ij"), -1)
        yz = yz.reshape(-1, 2)
        slab = max(1, (1 << 22) // (y * z))
        for start in range(0, x, slab):
            xs = torch.arange(start, min(x, start + slab), device=device)
            yield torch.cat([xs.repeat_interleave(len(yz))[:, None], yz.repeat(len(xs), 1)], dim=-1)

    def _probed_vertex_entries(self, level: int) -> Tensor:
        """Every vertex's codebook entry on a probed level [vertices] (int64, flat ids): its bucket plus
        the hard probe its index-table slot holds."""
        table = getattr(self, f"indices_{level}") if self.frozen else self.vertex_logits(level).argmax(dim=-1)
        entries = []
        for vertices in self._vertex_slabs(level):
            bucket = hashed_indices(vertices, self.level_bits[level] - self.probe_bits) << self.probe_bits
            entries.append(bucket + table[hashed_indices(vertices, self.probe_table_bits, _PROBE_HASH_PRIMES)].long())
        return torch.cat(entries)

    def vertex_keep_flags(self, level: int) -> Tensor:
        """Whether each vertex of a sparse level lies in a kept block [vertices] (bool, flat ids)."""
        kept = self.kept_vertices(level)
        flags = torch.zeros(self.num_vertices(level), dtype=torch.bool, device=kept.device)
        flags[kept] = True
        return flags

    def vertex_logits(self, level: int, ids: Optional[Tensor] = None) -> Tensor:
        """Logits over the codebook of the vertices ``ids`` [..., 2**bits], or of every vertex of the
        level [vertices, 2**bits] when ``ids`` is None (learned, unfrozen grids). Probed grids: of
        index-table entries, over a bucket's probes."""
        if ids is not None:
            ids = self.vertex_rows(level, ids)
        if self.logit_rank == 0:
            return self.logits[level] if ids is None else F.embedding(ids, self.logits[level])
        queries = self.index_queries[level] if ids is None else F.embedding(ids, self.index_queries[level])
        return queries @ F.normalize(self.index_keys[level], dim=-1).T + self.index_bias[level]

    @property
    def per_vertex_parameters(self) -> str:
        """Name of the parameter list holding a row per vertex while training: free logits, or the
        queries of factorised ones."""
        return "logits" if self.logit_rank == 0 else "index_queries"

    def compactable_rows(self) -> Dict[str, Tuple[int, nn.Parameter]]:
        """The per-vertex training parameters (:attr:`per_vertex_parameters`) of pruned sparse levels,
        by state-dict name, with their level: only their kept rows are saved (:func:`compact_rows` /
        :func:`expand_rows`)."""
        name = self.per_vertex_parameters
        per_vertex = getattr(self, name)
        if len(per_vertex) == 0:
            return {}
        pruned = {lvl: self.block_mask(lvl) for lvl in self.sparse_levels}
        return {
            f"{name}.{lvl}": (lvl, per_vertex[lvl])
            for lvl, mask in pruned.items()
            if mask is not None and not bool(mask.all()) and not self.is_compacted(lvl)
        }

    def is_compacted(self, level: int) -> bool:
        """Whether a pruned level's per-vertex training parameter holds its kept rows only
        (:meth:`compact_level`)."""
        return f"vertex_rows_{level}" in self._buffers

    def vertex_rows(self, level: int, ids: Tensor) -> Tensor:
        """Rows of the per-vertex training parameter holding the vertices ``ids``: the ids themselves,
        or on a compacted level their kept rows (vertices of dropped blocks read row 0; their
        interpolation weights are zero)."""
        return self._buffers[f"vertex_rows_{level}"][ids] if self.is_compacted(level) else ids

    def compact_level(self, level: int) -> Tuple[nn.Parameter, nn.Parameter, Tensor]:
        """From now on keep only the kept blocks' rows of a pruned sparse level's per-vertex training
        parameter (free logits, or factorised queries), so gradients and optimizer steps cost the kept
        vertices rather than the whole level; values and gradients are unchanged. Returns the old
        parameter, its replacement and the kept vertex ids (the rows' order, as checkpoints store
        them), for an optimizer's state to follow."""
        assert self.block_mask(level) is not None and not self.is_compacted(level), f"level {level}"
        per_vertex = getattr(self, self.per_vertex_parameters)
        old = per_vertex[level]
        kept = self.kept_vertices(level).to(old.device)
        new = nn.Parameter(old.detach()[kept].clone())
        per_vertex[level] = new
        rows = torch.zeros(self.num_vertices(level), dtype=torch.int64, device=old.device)
        rows[kept] = torch.arange(kept.numel(), device=old.device)
        self.register_buffer(f"vertex_rows_{level}", rows, persistent=False)
        self._hard_index_cache.pop(level, None)
        return old, new, kept

    def index_logit_parameters(self) -> List[nn.Parameter]:
        """The parameters that only choose indices (free or factorised logits): training-only, and
        given their own learning rate by vqad (they saturate differently from codebooks)."""
        return [*self.logits, *self.index_queries, *self.index_keys, *self.index_bias]

    @torch.no_grad()
    def index_statistics(self, chunk: int = 1 << 18) -> List[Dict[str, float]]:
        """Per level of a learned, unfrozen grid: ``top_probability``, the mean softmax probability
        of each vertex's chosen entry (near 1: the logits have saturated and the straight-through
        gradient that could still move the index is vanishing), and ``usage_perplexity``, the
        effective number of codebook entries the hard indices use (2**bits at most)."""
        if self.frozen:
            return []
        stats = []
        for lvl in self.levels:
            top, counts = 0.0, torch.zeros(1 << self.index_bits(lvl), device=self.codebooks[lvl].device)
            mask = self.block_mask(lvl)  # pruned levels: the vertices that still render
            entries = torch.arange(self.index_entries(lvl)) if mask is None else self.kept_vertices(lvl).cpu()
            for ids in entries.to(counts.device).split(chunk):
                probabilities = F.softmax(self.vertex_logits(lvl, ids).float(), dim=-1)
                best, index = probabilities.max(dim=-1)
                top += float(best.sum())
                counts += torch.bincount(index, minlength=counts.numel()).to(counts)
            share = counts / counts.sum()
            entropy = -(share * share.clamp_min(1e-12).log()).sum()
            stats.append(
                {
                    "top_probability": round(top / max(1, len(entries)), 4),
                    "usage_perplexity": round(float(entropy.exp()), 2),
                }
            )
        return stats

    def set_hard_indices(self, level: int, indices: Tensor) -> None:
        """Load stored indices into a frozen learned (or probed) grid."""
        if not (self.learns_indices and self.frozen):
            raise RuntimeError("only a frozen grid of learned indices takes stored indices")
        buffer = getattr(self, f"indices_{level}")
        if indices.numel() != buffer.numel():
            raise ValueError(f"level {level}: {indices.numel()} indices for {buffer.numel()} entries")
        buffer.copy_(indices.reshape(-1).to(buffer))

    def level_features(self, positions: Tensor, level: int, hard: bool) -> Tensor:
        """Interpolated features [N, F] of one level at positions in [0, 1]^3 [N, 3]."""
        if self._reads_decoded_volumes(hard):
            volume = self.decoded_volume(level)
            if volume is not None:
                return interpolate_volume(volume, positions)
        rows = self._trained_rows(level)
        if not hard and self._fusable(rows, positions):
            return self._fused_level_features(positions, level)
        if self._fusable_probed(positions, hard):
            return self._probed_kernel_features(positions, range(level, level + 1))[:, 0]
        corners, ids, weights = corner_lookup(positions, self.resolutions[level], self.corner_offsets)
        mask = self.block_mask(level)
        if mask is not None:  # corners in dropped blocks contribute nothing
            _, gy, gz = block_grid_shape(self.resolutions[level], self.block_size)
            block = torch.div(corners, self.block_size, rounding_mode="floor")
            weights = weights * mask[(block[..., 0] * gy + block[..., 1]) * gz + block[..., 2]].to(weights.dtype)
        codebook = round_to_half(self.codebooks[level])
        # Lookups go through F.embedding: its backward accumulates duplicate rows efficiently, where
        # advanced indexing's backward serialises them (millions of samples share few rows).
        if self.index_mode == "hashed":
            vertex = F.embedding(hashed_indices(corners, self.level_bits[level]), codebook)
        elif self.index_mode == "probed":
            vertex = self._probed_features(corners, level, hard, codebook)
        elif self.frozen:
            # The stored int32 indices directly: hard_indices() would copy the whole level to int64
            # for every batch of points.
            vertex = F.embedding(getattr(self, f"indices_{level}")[ids], codebook)
        elif hard:
            vertex = F.embedding(self.cached_hard_indices(level)[ids], codebook)
        elif rows < ids.numel():
            # A level with fewer vertices than the batch has corners: the straight-through feature
            # of every vertex once, then a gather, instead of a softmax per corner (same values and
            # gradients; coarse levels cost vertices x 2**b instead of corners x 2**b).
            rows = self.vertex_rows(level, ids)
            vertex = F.embedding(rows, _straight_through(self.vertex_logits(level)) @ codebook)
        else:
            vertex = _straight_through(self.vertex_logits(level, ids)) @ codebook
        return (weights[..., None] * vertex).sum(dim=1)

    def _reads_decoded_volumes(self, hard: bool) -> bool:
        """Whether a lookup interpolates decoded volumes: evaluation (volumes would be decoded again
        after every training step), hard indices, no gradients, option on."""
        return hard and self.decoded_lookup and not self.training and not torch.is_grad_enabled()

    def _trained_rows(self, level: int) -> int:
        """Rows of a level's per-vertex training parameters (0 where indices are not trained)."""
        if self.index_mode != "learned" or self.frozen:
            return 0
        return getattr(self, self.per_vertex_parameters)[level].shape[0]

    def _fusable(self, rows: int, positions: Tensor) -> bool:
        """Whether a training lookup of a level with ``rows`` trained rows takes the fused kernel: the
        option on, free logits, Triton there, and more rows than the points have corners (a smaller
        level costs less as the per-vertex gather of :meth:`level_features`)."""
        large_free_logits = self.logit_rank == 0 and rows > 0 and rows >= 8 * positions.shape[0]
        return self.fused_lookup and large_free_logits and fused_lookup_available(positions.device)

    def _fusable_probed(self, positions: Tensor, hard: bool) -> bool:
        """Whether a lookup of a probed level takes a fused kernel (Triton there): training free logits
        of an index table (option ``fused_lookup``); or, without gradients, a training model's lookup
        or a render (``decoded_lookup``) of a level too large to decode, from the stored probes or the
        logits' argmax."""
        if self.index_mode != "probed" or not fused_lookup_available(positions.device):
            return False
        if hard:  # (a training model's lookup without gradients is hard only outside compiled code)
            return self._reads_decoded_volumes(hard) or (self.training and not torch.is_grad_enabled())
        return self.fused_lookup and not self.frozen  # probed grids have free logits (no logit rank)

    def _probed_kernel_features(self, positions: Tensor, levels: range) -> Tensor:
        """Features [N, len(levels), F] of consecutive probed ``levels`` in one Triton launch: a file's
        stored probes straight from its tables, or the logits' argmax (straight-through gradients)."""
        codebooks = [round_to_half(self.codebooks[lvl]) for lvl in levels]
        vertices = self.level_resolutions_int32[levels.start : levels.stop]
        if self.frozen:
            tables = [getattr(self, f"indices_{lvl}") for lvl in levels]
            return stored_probed_lookup(
                positions, tables, codebooks, vertices, self.probe_bits, _HASH_PRIMES, _PROBE_HASH_PRIMES
            )
        logits = [self.logits[lvl] for lvl in levels]
        return fused_probed_lookup(positions, logits, codebooks, vertices, _HASH_PRIMES, _PROBE_HASH_PRIMES)

    def _one_codebook_size(self, levels: range) -> bool:
        """Whether ``levels`` (at least one) have codebooks of one size: probed levels' index tables all have
        ``2**probe_table_bits`` slots, so their tables and codebooks stack for one kernel launch."""
        return len({self.level_bits[lvl] for lvl in levels}) == 1

    def _fused_level_features(self, positions: Tensor, level: int) -> Tensor:
        rows = self._buffers[f"vertex_rows_{level}"] if self.is_compacted(level) else None
        codebook, mask, size = round_to_half(self.codebooks[level]), self.block_mask(level), self.block_size
        return fused_level_lookup(positions, self.logits[level], codebook, self.resolutions[level], rows, mask, size)

    def _probed_features(self, corners: Tensor, level: int, hard: bool, codebook: Tensor) -> Tensor:
        """Corner features [N, 8, F] of a probed level: the entry ``bucket + probe`` of the codebook,
        the bucket from the vertex's spatial hash, the probe from the hashed index table."""
        probes = 1 << self.probe_bits
        bucket = hashed_indices(corners, self.level_bits[level] - self.probe_bits) * probes
        slot = hashed_indices(corners, self.probe_table_bits, _PROBE_HASH_PRIMES)
        if self.frozen:
            return F.embedding(bucket + getattr(self, f"indices_{level}")[slot], codebook)
        logits = self.vertex_logits(level, slot)
        if hard:
            return F.embedding(bucket + logits.argmax(dim=-1), codebook)
        candidates = F.embedding(bucket[..., None] + torch.arange(probes, device=bucket.device), codebook)
        return (_straight_through(logits)[..., None] * candidates).sum(dim=-2)

    def forward(
        self, positions: Tensor, num_levels: Optional[int] = None, level_mask: Optional[Tensor] = None
    ) -> Tensor:
        """The first ``num_levels`` levels' features at positions in [0, 1]^3, summed [N, F] or
        concatenated [N, concat_levels * F].

        Training uses the straight-through soft lookup, evaluation the hard indices. ``level_mask``
        [N, levels] (0/1) drops levels per point (training at random operating points)."""
        levels = self.num_levels if num_levels is None else num_levels
        if not 1 <= levels <= self.num_levels:
            raise ValueError(f"num_levels must be in [1, {self.num_levels}], got {levels}")
        # Without gradients (a training model's occupancy and pruning densities, run eagerly) the soft
        # lookup has nothing to pass straight through; its value is the hard lookup's, at a fraction
        # of the cost. Compiled code (the proposals' densities) keeps the traced soft lookup: the hard
        # path's caches do not trace.
        soft = self.training and (torch.is_grad_enabled() or torch.compiler.is_compiling())
        hard = not soft
        if level_mask is None and self._reads_decoded_volumes(hard):
            return self._rendered_features(positions, levels)
        if self._fuses_probed_levels(positions, soft):
            return self._combined_levels(self._probed_kernel_features(positions, range(levels)), level_mask)
        if soft and self._probes_levels_together():
            return self._probed_levels_together(positions, levels, level_mask)
        features = [self.level_features(positions, 0, hard)]
        for lvl in range(1, levels):
            level = self.level_features(positions, lvl, hard)
            features.append(level if level_mask is None else level * level_mask[:, lvl : lvl + 1])
        if not self.concat_levels:
            return torch.stack(features).sum(dim=0)
        missing = self.concat_levels - len(features)
        features += [torch.zeros_like(features[0])] * missing
        return torch.cat(features, dim=-1)

    def _fuses_probed_levels(self, positions: Tensor, soft: bool) -> bool:
        """Whether a lookup takes every level of a probed grid in one Triton kernel: free logits (not a
        file's probes) of levels of one codebook size (the presets'), Triton there, and either training
        with option ``fused_lookup`` or a training model's lookup without gradients (the occupancy,
        pruning and hidden-sample densities, from the logits' argmax)."""
        if not self._trained_probed_levels_stack() or not fused_lookup_available(positions.device):
            return False
        return self.fused_lookup if soft else self.training and not torch.is_grad_enabled()

    def _probes_levels_together(self) -> bool:
        """Whether a training (soft) lookup of a probed grid takes all levels in one set of tensor
        operations: compiled code (which fuses the level axis's temporaries; run eagerly, every level's
        would be alive at once) and levels of one codebook size (the presets'). :meth:`forward` asks
        after the all-levels kernel (:meth:`_fuses_probed_levels`) was not chosen."""
        return self._trained_probed_levels_stack() and torch.compiler.is_compiling()

    def _trained_probed_levels_stack(self) -> bool:
        """Whether the grid is probed, has free logits (not a file's probes) and levels of one codebook
        size (the presets'), so its levels stack on a level axis."""
        return self.index_mode == "probed" and not self.frozen and self._one_codebook_size(range(self.num_levels))

    def _combined_levels(self, features: Tensor, level_mask: Optional[Tensor]) -> Tensor:
        """The grid's output from features [N, levels, F] with a level axis: levels dropped per point by
        ``level_mask`` (level 0 is every point's), then summed, or concatenated and zero-padded to
        ``concat_levels``."""
        n, levels, f = features.shape
        if level_mask is not None:
            features = torch.cat([features[:, :1], features[:, 1:] * level_mask[:, 1:levels, None]], dim=1)
        if not self.concat_levels:
            return features.sum(dim=1)
        features = features.reshape(n, levels * f)
        missing = (self.concat_levels - levels) * f
        return torch.cat([features, features.new_zeros(n, missing)], dim=-1) if missing else features

    def _probed_levels_together(self, positions: Tensor, levels: int, level_mask: Optional[Tensor]) -> Tensor:
        """:meth:`forward`'s training lookup of a probed grid with a level axis instead of a loop over
        levels: the same values and gradients as :meth:`level_features` level by level, in a handful
        of kernels instead of a handful per level (a training step is bound by its kernel launches).
        Level ``l``'s rows of the stacked logits and codebooks start at ``l`` times a level's rows."""
        probes = 1 << self.probe_bits
        resolution = self.level_resolutions[:levels]  # [L, 3] float, vertices per axis
        scaled = positions.clamp(0.0, 1.0)[:, None, :] * (resolution - 1.0)  # [N, L, 3]
        base = torch.minimum(scaled.floor(), resolution - 2.0)
        frac = scaled - base
        offsets = self.corner_offsets
        corners = base.long()[:, :, None, :] + offsets  # [N, L, 8, 3]
        weights = torch.where(offsets.bool(), frac[:, :, None, :], 1.0 - frac[:, :, None, :]).prod(dim=-1)
        level = torch.arange(levels, device=positions.device)[:, None]  # [L, 1]
        table_rows, codebook_rows = 1 << self.probe_table_bits, 1 << self.level_bits[0]
        slot = hashed_indices(corners, self.probe_table_bits, _PROBE_HASH_PRIMES) + level * table_rows
        bucket = hashed_indices(corners, self.level_bits[0] - self.probe_bits) * probes + level * codebook_rows
        logits = F.embedding(slot, torch.cat(list(self.logits[:levels])))  # [N, L, 8, P]
        codebook = round_to_half(torch.cat(list(self.codebooks[:levels])))
        candidates = F.embedding(bucket[..., None] + torch.arange(probes, device=positions.device), codebook)
        vertex = (_straight_through(logits)[..., None] * candidates).sum(dim=-2)  # [N, L, 8, F]
        return self._combined_levels((weights[..., None] * vertex).sum(dim=2), level_mask)  # [N, L, F] first

    def _rendered_features(self, positions: Tensor, levels: int) -> Tensor:
        """:meth:`forward` for rendering (hard indices, no gradients, every point at ``levels``): the
        levels that decode (the coarse ones: volumes grow with the level) are interpolated together
        from one sampling grid, the others looked up level by level, and the results combined once."""
        decoded: List[Tensor] = []
        for lvl in range(levels):
            volume = self.decoded_volume(lvl)
            if volume is None:
                break
            decoded.append(volume)
        concat = bool(self.concat_levels)
        features = [interpolate_volumes(decoded, positions, concat)] if decoded else []
        rest = range(len(decoded), levels)
        if self._fusable_probed(positions, True) and self._one_codebook_size(rest):
            looked_up = self._probed_kernel_features(positions, rest)  # the fine levels in one launch
            features.append(looked_up.flatten(1) if concat else looked_up.sum(dim=1))
        else:
            features += [self.level_features(positions, lvl, hard=True) for lvl in rest]
        if not concat:
            return features[0] if len(features) == 1 else torch.stack(features).sum(dim=0)
        missing = (self.concat_levels - levels) * self.feature_dim
        if missing:
            features.append(positions.new_zeros(positions.shape[0], missing))
        return features[0] if len(features) == 1 else torch.cat(features, dim=-1)


def compact_rows(full: Tensor, kept: Tensor) -> Tensor:
    """The rows of ``full`` [V, ...] at ``kept`` ids: a pruned level's per-vertex training state."""
    return full[kept.to(full.device)]


def expand_rows(compact: Tensor, kept: Tensor, num_rows: int) -> Tensor:
    """Inverse of :func:`compact_rows`, zeros in the dropped rows."""
    full = compact.new_zeros(num_rows, *compact.shape[1:])
    full[kept.to(compact.device)] = compact
    return full


def shifted_half_logits(logits: Tensor) -> Tensor:
    """Logits [rows, K] as fp16 with each row's largest at exactly 0: softmax and argmax ignore a
    row's shift, and fp16 is finest near 0, so every row keeps its argmax (an entry that would round
    to a tie with it is kept just below) and its softmax to fp16's relative precision."""
    logits = logits.detach()
    top = logits.argmax(dim=-1, keepdim=True)
    half = (logits - logits.gather(-1, top)).half()
    columns = torch.arange(logits.shape[-1], device=logits.device)
    tied = (half == 0) & (columns != top)
    return torch.where(tied, torch.full_like(half, -(2.0**-24)), half)


def _compact_logits_state(grid: LearnedIndexCodebookGrid, state: Dict[str, Any], prefix: str, _meta: Any) -> None:
    for name, (lvl, _) in grid.compactable_rows().items():
        if prefix + name in state:
            state[prefix + name] = compact_rows(state[prefix + name], grid.kept_vertices(lvl))
    if grid.half_logits_in_state:
        for lvl in range(len(grid.logits)):
            key = f"{prefix}logits.{lvl}"
            if key in state:
                state[key] = shifted_half_logits(state[key])


def _expand_logits_state(grid: LearnedIndexCodebookGrid, state: Dict[str, Any], prefix: str, *_: Any) -> None:
    for lvl in range(len(grid.logits)):  # fp16 logits of a compact checkpoint (whatever this grid writes)
        key = f"{prefix}logits.{lvl}"
        if key in state and state[key].dtype == torch.float16:
            state[key] = state[key].float()
    name = grid.per_vertex_parameters
    for lvl in grid.sparse_levels:
        key, mask_key, rows = f"{prefix}{name}.{lvl}", f"{prefix}block_mask_{lvl}", grid.num_vertices(lvl)
        # A compacted level (compact_level) takes its kept rows as they are.
        if grid.is_compacted(lvl) or len(getattr(grid, name)) <= lvl:
            continue
        if key in state and mask_key in state and state[key].shape[0] != rows:
            state[key] = expand_rows(state[key], grid.kept_vertices(lvl, state[mask_key].cpu()), rows)
