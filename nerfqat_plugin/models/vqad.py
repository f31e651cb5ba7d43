"""The vqad model: Variable Bitrate Neural Fields (Takikawa et al. 2022) on nerfstudio.

A :class:`VQADField` (codebook grid of learned indices, per vertex or hash probes, + small decoder MLPs)
is sampled with nerfstudio's proposal sampler, whose proposal density field is a small codebook grid of
its own, or in bounded scenes by marching an occupancy grid. Forward-facing scenes are sampled in NDC
(the grid spans the NDC cube), bounded ones in the scene box, unbounded ones in the scene box and a
contracted shell around it that reaches to ``unbounded_far_plane``. Which grid each scene kind gets
by default: :mod:`nerfqat_plugin.models.vqad_grid_spec`.

Variable bitrate: the grid's first ``k`` levels (summed, or concatenated with the rest zero) form a
coarser field with a smaller file. With summed levels, training renders a fraction of the rays with a
random number of levels, so every operating point stays usable; the viewer switches between them,
``ns-eval`` reports each, and ``ns-export-compressed --operating-point levels=k`` writes one.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Literal, Optional, Sequence, Tuple, Type

import numpy as np
import torch
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.model_components.losses import distortion_loss, interlevel_loss
from nerfstudio.model_components.ray_samplers import (
    ProposalNetworkSampler,
    UniformLinDispPiecewiseSampler,
    UniformSampler,
)
from nerfstudio.utils.rich_utils import CONSOLE
from nerfstudio.viewer.viewer_elements import ViewerDropdown
from torch import Tensor
from torch.nn import Parameter

from nerfqat_plugin.errors import UserInputError
from nerfqat_plugin.field_components.block_occupancy import prune_sparse_levels
from nerfqat_plugin.field_components.codebook_grid import (
    IndexMode,
    LearnedIndexCodebookGrid,
    compact_rows,
    expand_rows,
)
from nerfqat_plugin.field_components.occupancy_grid import OccupancyGrid, box_diagonal
from nerfqat_plugin.fields.compiled_field import TrainingCompiledField
from nerfqat_plugin.fields.vqad_field import ACTIVE_LEVELS_KEY, VQADField, VQADProposalField
from nerfqat_plugin.model_components.ndc import NDC_BOX
from nerfqat_plugin.model_components.occupancy_estimator import OccupancyEstimator
from nerfqat_plugin.model_components.packed_marching import (
    PackedSamples,
    composite_packed,
    packed_transmittance,
    packed_weights,
)
from nerfqat_plugin.model_components.sample_skipping import density_where_occupied
from nerfqat_plugin.models.compressible import (
    CompressibleModel,
    CompressibleModelConfig,
    run_length,
)
from nerfqat_plugin.models.vqad_grid_spec import (
    GridSpec,
    Resolution,
    operating_point_levels,
    operating_point_name,
    resolve_grid_spec,
)

# Pruning that would keep fewer than this fraction of the sparse levels' blocks waits for the field
# (an empty estimate early in training would otherwise erase the scene for good); it retries every
# PRUNE_RETRY_FRACTION of the run, and at PRUNE_DEADLINE_FRACTION keeps the densest blocks regardless.
MIN_KEPT_BLOCK_FRACTION = 0.001
PRUNE_RETRY_FRACTION = 0.05
PRUNE_DEADLINE_FRACTION = 0.5


@dataclass
class VQADModelConfig(CompressibleModelConfig):
    """vqad: a codebook grid of learned indices (Variable Bitrate Neural Fields) and its sampling."""

    payload_keys: ClassVar[Tuple[str, ...]] = CompressibleModelConfig.payload_keys + (
        "grid_resolutions",
        "bits",
        "level_bits",
        "feature_dim",
        "index_mode",
        "index_seed",
        "probe_bits",
        "probe_table_bits",
        "concat_levels",
        "sparse_from_level",
        "sparse_block_size",
        "hidden_dim",
        "geo_feat_dim",
        "color_layers",
        "color_hidden_dim",
        "sh_levels",
        "proposal_resolutions",
        "proposal_bits",
        "proposal_feature_dim",
        "proposal_hidden_dim",
        "num_proposal_samples",
        "num_nerf_samples",
        "unbounded_far_plane",
        "sampler",
        "march_steps",  # the occupancy sampler's step: the samples the field was trained on
    )
    # Files written before these keys: proposal sampling, nerfacto's far plane, the march's first step.
    payload_absent: ClassVar[Dict[str, Any]] = {
        "sampler": "proposal",
        "unbounded_far_plane": 1000.0,
        "march_steps": 1024,
        "feature_dim": 8,
        "concat_levels": 0,
    }
    _target: Type = field(default_factory=lambda: VQADModel)
    eval_num_rays_per_chunk: int = 1 << 15
    """Rays rendered at once in evaluation, the viewer and renders from a file; larger is faster on a
    GPU and takes more of its memory."""
    num_levels: Optional[int] = None
    """Grid levels (resolution halves per level); the first k form operating point levels=k. None: 4, or
    with no grid option set, a preset: probed 16, outside NDC the sparse one (5 levels to 256^3)."""
    finest_resolution: Optional[Tuple[int, int, int]] = None
    """Vertices per axis (x, y, z) of the finest level; None: a default for NDC or bounded scenes."""
    coarsest_resolution: Optional[int] = None
    """Vertices along the longest axis of the coarsest level: levels then grow by one factor each up to
    finest_resolution (instant-NGP's spacing, e.g. 16 to 2048 over 16 levels); None: each level halves."""
    grid_resolutions: Optional[Tuple[Tuple[int, int, int], ...]] = None
    """Every level's resolution explicitly (overrides num_levels and finest_resolution)."""
    bits: Optional[int] = None
    """Index bits b of every level: each level's codebook has 2**b entries (learned: 1 to 8). None: 4 (learned),
    14 (probed), or with no grid option the scene's preset (probed 13; learned in NDC 8 on coarse levels, 4)."""
    level_bits: Optional[Tuple[int, ...]] = None
    """Index bits of every level, coarse to fine (overrides bits; one per level). Coarse levels hold
    few vertices, so larger codebooks there cost few bytes, e.g. 8 8 4 4 for four levels."""
    feature_dim: Optional[int] = None
    """Width of codebook entries; None: 8, or 2 for the probed preset (index-mode probed, no grid option)."""
    codebook_init_std: float = 0.1
    """Standard deviation of the initial codebook entries (instant-NGP starts its free features
    near 1e-4)."""
    index_mode: Optional[IndexMode] = None
    """learned (per-vertex, the paper), probed (Compact NGP's hash probing), ablations random, hashed. None:
    probed (16 levels to 1024^3) on forward-facing and object scenes with no grid or bit option, else learned."""
    probe_bits: int = 2
    """probed: log2 of a bucket's entries (the width of each stored index)."""
    probe_table_bits: int = 16
    """probed: log2 of the stored indices per level (the hashed index table)."""
    index_seed: int = 0
    """Seed of random indices."""
    logit_rank: int = 0
    """0: free index logits per vertex (the paper; vertices x 2**bits floats while training); r > 0:
    logits factorised as query_v . unit(key_j) + bias_j (vertices x r floats, so 8-bit indices stay cheap)."""
    concat_levels: Optional[int] = None
    """0: levels summed (the paper, kaolin-wisp); n: levels concatenated into n x feature_dim decoder
    inputs (instant-NGP's choice; n = num_levels); None: 0, or 16 for the probed preset."""
    initial_index_bias: float = 0.0
    """Start every vertex on codebook entry 0 with this logit margin (e.g. 0.1), so vertices no ray
    trains store runs of 0 that the file deflates; 0: a random start."""
    sparse_from_level: Optional[int] = None
    """Levels from this index on keep only blocks of vertices where the field has density, decided at
    ``prune_at_fraction`` of the run (None: every level dense)."""
    sparse_block_size: int = 4
    """Vertices per block edge of sparse levels (at least 2); smaller blocks hug the surface, and each
    block costs one flag bit in the file."""
    prune_at_fraction: float = 0.25
    """Fraction of the run's iterations after which empty blocks are dropped (sparse levels)."""
    prune_threshold: float = 0.01
    """A block is kept where one cell of its level is more than this opaque somewhere in it."""
    max_file_bytes: Optional[int] = None
    """Sparse levels: keep the densest blocks while the file stays within this many bytes (None: every
    block above prune_threshold)."""
    hidden_dim: int = 64
    """Width of the density decoder."""
    geo_feat_dim: int = 15
    """Features passed from the density decoder to the colour decoder."""
    color_layers: int = 3
    """Layers of the colour decoder."""
    color_hidden_dim: int = 64
    """Width of the colour decoder."""
    sh_levels: int = 4
    """Spherical-harmonics levels encoding the view direction."""
    proposal_levels: int = 2
    """Levels of the proposal field's codebook grid."""
    proposal_finest_resolution: Optional[Tuple[int, int, int]] = None
    """Finest resolution of the proposal grid; None: a default for NDC or bounded scenes."""
    proposal_resolutions: Optional[Tuple[Tuple[int, int, int], ...]] = None
    """Every proposal level's resolution explicitly."""
    proposal_bits: int = 4
    """Index bits of the proposal grid."""
    proposal_feature_dim: int = 4
    """Codebook width of the proposal grid."""
    proposal_hidden_dim: int = 16
    """Width of the proposal density decoder."""
    sampler: Literal["proposal", "occupancy"] = "occupancy"
    """Bounded scenes: even steps through the occupied cells of a grid the field keeps up to date
    (instant-NGP's), or proposal networks (nerfacto's). Other scenes: proposal networks."""
    occupancy_resolution: int = 128
    """Cells per axis of the occupancy grid kept while training (sampler occupancy)."""
    occupancy_update_every: int = 16
    """Steps between updates of that grid."""
    target_samples_per_batch: int = 1 << 18
    """sampler occupancy: training batches hold as many rays as make about this many evaluated
    samples (the ray count adapts each step); 0: the datamanager's fixed ray count."""
    train_min_transmittance: float = 1e-4
    """sampler occupancy: training evaluates with gradients only the marched samples that more than this
    fraction of light reaches (a density pass without gradients finds them); range [0, 1), 0: every one."""
    cpu_samples_per_batch: int = 1 << 15
    """sampler occupancy, training on a CPU: at most this many samples per batch, and the first batch
    at most this many candidates (eager steps hold about 80 kB per sample until the backward)."""
    num_proposal_samples: Tuple[int, ...] = (128, 64)
    """Samples per ray of each proposal round (one proposal field serves every round)."""
    num_nerf_samples: int = 48
    """Samples per ray of the radiance field."""
    random_levels_fraction: Optional[float] = None
    """Fraction of training rays rendered with a random number of levels, so that every operating
    point is trained (0: only the full model). None: 0.25 where levels are summed, 0 where concatenated."""
    interlevel_loss_mult: float = 1.0
    """Weight of the proposal (interlevel) loss."""
    distortion_loss_mult: float = 0.002
    """Weight of mip-NeRF 360's distortion loss."""
    proposal_update_every: int = 5
    """Steps between proposal updates once warmed up."""
    proposal_warmup: int = 1000
    """Steps over which the proposal update interval grows to proposal_update_every."""
    proposal_weights_anneal_max_num_iters: int = 1000
    """Steps over which proposal weights are annealed (mip-NeRF 360, eq. 18)."""
    proposal_weights_anneal_slope: float = 10.0
    """Slope of that annealing."""
    compile: bool = True
    """torch.compile the fields for training on CUDA (evaluation stays eager)."""
    eval_levels: Optional[int] = None
    """Operating point rendered by evaluation and the viewer at start (None: all levels)."""
    unbounded_far_plane: float = 1000.0
    """Far sampling bound of unbounded scenes (world units), whose space beyond the scene box the
    grids contract into a shell around it (nerfacto's far plane)."""
    max_training_logits_gib: float = 12.0
    """Refuse grids whose logits and Adam state would exceed this (vertices x 2**bits x 16 bytes)."""
    compact_checkpoints: bool = True
    """Checkpoints hold the field's free index logits in fp16 and not their Adam moments (a sixth of
    the bytes); a resumed run restarts those moments (False: it resumes exactly)."""
    decoded_grid_lookup: bool = True
    """Rendering: interpolate each level's decoded vertex features (a float32 volume of at most 2 GiB)
    or, on CUDA, look larger probed levels up in one kernel, instead of corner by corner; same values."""
    fused_codebook_lookup: bool = False
    """Training: look up each level of free index logits (learned or probed) with one Triton kernel (CUDA
    with Triton; elsewhere the torch path); the same values and gradients, touched logits only."""


def _has_rows(value: Any, rows: int) -> bool:
    """Whether an optimizer state entry is a tensor with a row per vertex of a level of ``rows``."""
    return torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == rows


SUMMED_RANDOM_LEVELS_FRACTION = 0.25
"""Rays trained at a random operating point when levels are summed and no fraction is given."""

MAX_MARCHED_CANDIDATES = 1 << 25
"""Most candidate samples (rays x march_steps) one training batch of the occupancy sampler marches."""


class VQADModel(CompressibleModel):
    """Variable Bitrate Neural Fields: learned-index codebook grid, proposal (or, in bounded scenes,
    occupancy-grid) sampling, NDC or box."""

    config: VQADModelConfig
    compressed_method_name = "vqad"
    render_shortcuts = CompressibleModel.render_shortcuts + ("decoded_grid_lookup",)

    def populate_modules(self) -> None:
        super().populate_modules()
        self.setup_scene_space()
        cfg = self.config
        frozen = bool(self.kwargs.get("inference_only", False))
        self.grid_spec = spec = resolve_grid_spec(
            cfg, ndc=self.ndc is not None, unbounded=self.scene_type == "unbounded"
        )
        aabb = NDC_BOX if self.ndc is not None else self.scene_box.aabb
        contract = self.ndc is None and self.scene_type == "unbounded"
        if contract:  # the contracted grid reaches far beyond the box: so do the samples
            self.scene_space.far = cfg.unbounded_far_plane
        if not frozen and spec.index_mode == "learned":
            self._check_logit_memory(spec.resolutions, [cfg.logit_rank or (1 << b) for b in spec.level_bits])
        try:  # the grid checks its own options (probe widths, ...): report them as bad input
            grid = self._make_grid(spec, frozen)
        except ValueError as error:
            raise UserInputError(f"vqad: {error}") from None
        grid.half_logits_in_state = cfg.compact_checkpoints
        self._pruned = False
        self._prune_attempts = 0
        # nerfstudio's optimizer of the index logits and its parameter list, once training starts.
        self._logit_optimizer: Optional[Tuple[torch.optim.Optimizer, Optional[List[Parameter]]]] = None
        self._total_steps: Optional[Callable[[], int]] = None
        self.field = VQADField(
            aabb,
            grid,
            hidden_dim=cfg.hidden_dim,
            geo_feat_dim=cfg.geo_feat_dim,
            color_layers=cfg.color_layers,
            color_hidden_dim=cfg.color_hidden_dim,
            sh_levels=cfg.sh_levels,
            contract=contract,
        )
        proposal_grid = LearnedIndexCodebookGrid(
            list(spec.proposal_resolutions), cfg.proposal_bits, cfg.proposal_feature_dim, frozen=frozen
        )
        self.proposal_field = VQADProposalField(
            aabb, proposal_grid, hidden_dim=cfg.proposal_hidden_dim, contract=contract
        )
        self.density_fns = [self.proposal_field.density_fn] * len(cfg.num_proposal_samples)
        # Training's occupancy grid (sampler occupancy); a file marches through the grid it stores.
        self.occupancy_estimator: Optional[OccupancyEstimator] = None
        if self.marches_occupancy() and not frozen:
            aabb = self.scene_box.aabb
            step = self.march_step(box_diagonal(aabb))
            self.occupancy_estimator = OccupancyEstimator(aabb, cfg.occupancy_resolution, step=step)
        self._last_batch_samples: Optional[int] = None  # samples the last marched batch evaluated

        def update_schedule(step: int) -> float:
            ramp = np.interp(step, [0, cfg.proposal_warmup], [0, cfg.proposal_update_every])
            return float(np.clip(ramp, 1, cfg.proposal_update_every))

        self.proposal_sampler = ProposalNetworkSampler(
            num_nerf_samples_per_ray=cfg.num_nerf_samples,
            num_proposal_samples_per_ray=cfg.num_proposal_samples,
            num_proposal_network_iterations=len(cfg.num_proposal_samples),
            single_jitter=False,
            update_sched=update_schedule,
            # Contracted space: samples uniform near the cameras, then in disparity (nerfacto's).
            initial_sampler=(UniformLinDispPiecewiseSampler if contract else UniformSampler)(single_jitter=False),
        )
        self.set_operating_point(None if cfg.eval_levels is None else operating_point_name(cfg.eval_levels))
        # Names only: a file's size depends on its (deflated) contents, so the size panel below
        # measures the chosen point when it is switched to rather than labelling it in advance.
        self.viewer_operating_point = ViewerDropdown(
            name="Operating point",
            default_value=self.current_operating_point(),
            options=self.operating_points(),
            cb_hook=self._switch_operating_point,
        )
        self.add_size_viewer_elements()
        self._apply_render_options()

    def rays_for_next_batch(self, rays: int) -> Optional[int]:
        """sampler occupancy: scale the ray count towards ``target_samples_per_batch`` evaluated samples
        (at least 256 rays on a GPU, at most one ray per target sample and ``MAX_MARCHED_CANDIDATES``
        candidate samples; on a CPU towards ``cpu_samples_per_batch``, from a first batch whose
        candidates fit it); otherwise the datamanager's count."""
        target, evaluated = self.config.target_samples_per_batch, self._last_batch_samples
        if target <= 0 or self.occupancy_estimator is None:
            return None
        on_cpu = self.device.type == "cpu"
        if on_cpu:
            target = min(target, self.config.cpu_samples_per_batch)
        if evaluated is None:
            if not on_cpu:
                return None
            CONSOLE.print(
                f"vqad on a CPU: batches of at most {target} samples (--pipeline.model.cpu-samples-per-batch); "
                "expect seconds per step, where a CUDA GPU takes milliseconds."
            )
            # Before the first step every cell counts as occupied, so a ray may take all its march
            # steps: start from as many rays as the sample cap allows even then.
            return max(1, min(rays, target // self.config.march_steps))
        samples = max(1, int(evaluated))  # the step's one wait for the GPU
        # Without nerfacc, torch lists march_steps candidate steps per ray: cap the candidates (2**25
        # is about 0.4 GB of positions) however few of them turn out occupied.
        most = min(target, MAX_MARCHED_CANDIDATES // self.config.march_steps)
        least = 1 if on_cpu else 256
        return int(min(most, max(least, round(rays * target / samples))))

    def marches_occupancy(self) -> bool:
        """Whether this model samples by marching an occupancy grid (sampler occupancy, bounded scene)."""
        return self.config.sampler == "occupancy" and self.ndc is None and self.scene_type == "bounded"

    def _make_grid(self, spec: GridSpec, frozen: bool) -> LearnedIndexCodebookGrid:
        cfg = self.config
        return LearnedIndexCodebookGrid(
            list(spec.resolutions),
            spec.level_bits,
            spec.feature_dim,
            init_std=cfg.codebook_init_std,
            index_mode=spec.index_mode,
            frozen=frozen,
            seed=cfg.index_seed,
            initial_index_bias=cfg.initial_index_bias,
            concat_levels=spec.concat_levels,
            logit_rank=cfg.logit_rank,
            sparse_from_level=spec.sparse_from_level,
            block_size=cfg.sparse_block_size,
            probe_bits=cfg.probe_bits,
            probe_table_bits=cfg.probe_table_bits,
        )

    def _check_logit_memory(self, resolutions: Sequence[Resolution], floats_per_vertex: List[int]) -> None:
        vertices = sum(x * y * z for x, y, z in resolutions)
        floats = sum(x * y * z * k for (x, y, z), k in zip(resolutions, floats_per_vertex, strict=True))
        gib = floats * 16 / 2**30  # fp32 values, their gradient and two Adam moments
        if gib > self.config.max_training_logits_gib:
            raise UserInputError(
                f"vqad: {vertices} vertices with {floats} index logits need {gib:.1f} GiB while training "
                f"(limit {self.config.max_training_logits_gib} GiB): lower --pipeline.model.bits or the resolution, "
                "use --pipeline.model.logit-rank, or raise --pipeline.model.max-training-logits-gib"
            )

    # -- operating points -----------------------------------------------------------------------
    @property
    def active_levels(self) -> int:
        return self.field.num_active_levels or self.field.grid.num_levels

    def operating_points(self) -> List[str]:
        return [operating_point_name(k) for k in range(1, self.field.grid.num_levels + 1)]

    def current_operating_point(self) -> Optional[str]:
        return operating_point_name(self.active_levels)

    def set_operating_point(self, name: Optional[str]) -> None:
        self.check_operating_point(name)
        levels = None if name is None else operating_point_levels(name)
        self.field.num_active_levels = None if levels == self.field.grid.num_levels else levels

    def _switch_operating_point(self, element: ViewerDropdown) -> None:
        self.set_operating_point(str(element.value))
        self.viewer_exported_size.value = self.exported_size_text()

    def exported_size_text(self) -> str:
        return f"{self.compressed_size_bytes(self.current_operating_point()) / 1e6:.3f} MB"

    # -- training -------------------------------------------------------------------------------
    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        """Codebooks and decoders (``fields``), the proposal field, and, for learned indices, the
        index logits with a learning rate of their own (``index_logits``)."""
        logits = self.field.grid.index_logit_parameters()
        chosen = {id(p) for p in logits}
        groups = {
            "fields": [p for p in self.field.parameters() if id(p) not in chosen],
            "proposal_networks": list(self.proposal_field.parameters()),
        }
        if logits:
            groups["index_logits"] = logits
        return groups

    def training_statistics(self) -> Dict[str, Any]:
        """How saturated the index logits are and how much of each codebook is used, per level."""
        stats = self.field.grid.index_statistics()  # empty for grids without logits
        return {**super().training_statistics(), **({"index_statistics": stats} if stats else {})}

    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> List[TrainingCallback]:
        cfg = self.config
        trainer = training_callback_attributes.trainer
        if trainer is not None:  # read at every step: a benchmark may re-plan the run's length
            self._total_steps = lambda: run_length(trainer)
        optimizers = training_callback_attributes.optimizers
        optimizer = optimizers.optimizers.get("index_logits") if optimizers is not None else None
        if optimizer is not None:
            optimizer.register_state_dict_post_hook(self._compact_optimizer_state)
            self._logit_optimizer = (optimizer, optimizers.parameters.get("index_logits"))

        resumed = [optimizer is None]

        def compact_resumed_levels(step: int) -> None:
            # Once, before the first step: a resumed checkpoint's moments are loaded by then, and
            # checking every step would read the block masks back from the GPU each time.
            if not resumed[0]:
                self._compact_pruned_levels()
                resumed[0] = True

        def set_anneal(step: int) -> None:
            fraction = np.clip(step / cfg.proposal_weights_anneal_max_num_iters, 0, 1)
            slope = cfg.proposal_weights_anneal_slope
            self.proposal_sampler.set_anneal(slope * fraction / ((slope - 1) * fraction + 1))

        return [
            TrainingCallback(
                where_to_run=[TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                update_every_num_iters=1,
                func=set_anneal,
            ),
            TrainingCallback(
                where_to_run=[TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                update_every_num_iters=1,
                func=compact_resumed_levels,
            ),
            TrainingCallback(
                where_to_run=[TrainingCallbackLocation.AFTER_TRAIN_ITERATION],
                update_every_num_iters=1,
                func=self.proposal_sampler.step_cb,
            ),
            TrainingCallback(
                where_to_run=[TrainingCallbackLocation.AFTER_TRAIN_ITERATION],
                update_every_num_iters=1,
                func=self._prune_on_schedule,
            ),
            *self.shared_training_callbacks(),
            *self._occupancy_callbacks(),
        ]

    def _occupancy_callbacks(self) -> List[TrainingCallback]:
        estimator = self.occupancy_estimator
        if estimator is None:
            return []
        return [
            TrainingCallback(
                where_to_run=[TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                update_every_num_iters=self.config.occupancy_update_every,
                func=lambda step: estimator.update(lambda x: self.field.density_at(x)[0], step),
            )
        ]

    def _prune_on_schedule(self, step: int) -> None:
        """Prune at ``prune_at_fraction`` of the run. While the field is too faint for the threshold
        to keep more than a trace of the sparse levels, pruning waits (one line each time) and tries
        again every ``PRUNE_RETRY_FRACTION`` of the run; the last try, at ``PRUNE_DEADLINE_FRACTION``,
        keeps the densest blocks within the byte budget whatever their density."""
        if self._pruned or not self.field.grid.sparse_levels or self._total_steps is None:
            return
        due, deadline = self._prune_steps(self._total_steps())
        if step < due:
            return
        last_try = step >= deadline
        kept = self.prune_empty_blocks(require_occupancy=not last_try)
        self._prune_attempts += 1
        if kept is None:
            retry = self._prune_steps(self._total_steps())[0]
            CONSOLE.print(
                f"[yellow]vqad: step {step}, pruning deferred to step {retry}: fewer than "
                f"{MIN_KEPT_BLOCK_FRACTION:.1%} of the sparse levels' blocks are more than "
                f"{self.config.prune_threshold:.0%} opaque yet (the field has not learned the scene's occupancy)"
            )
            return
        how = " (the densest within the byte budget: no block reached the threshold in time)" if last_try else ""
        CONSOLE.print(f"vqad: step {step}, kept blocks per sparse level: {kept}{how}")
        self._compact_pruned_levels()

    def _compact_pruned_levels(self) -> None:
        """Train pruned levels on their kept vertices' rows only (:meth:`LearnedIndexCodebookGrid.compact_level`),
        their Adam moments following. Only under nerfstudio's trainer, whose optimizer this model
        knows, and not under DDP, whose reducer keeps the parameters it was built with; there the
        levels stay whole and a resumed run's compact moments are expanded instead."""
        if self._logit_optimizer is None:
            return
        optimizer, group = self._logit_optimizer
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and torch.distributed.get_world_size() > 1:
            self._expand_optimizer_state(optimizer)
            return
        grid = self.field.grid
        for lvl, _ in list(grid.compactable_rows().values()):
            if not bool(grid.block_mask(lvl).any()):
                continue  # nothing kept (a run pruned in its first steps): no rows to gather, the level stays whole
            old, new, kept = grid.compact_level(lvl)
            entry = optimizer.state.pop(old, {})
            # Moments of the whole level (this run's) or already of the kept rows (a resumed checkpoint's).
            optimizer.state[new] = {
                key: compact_rows(value, kept) if _has_rows(value, len(old)) else value for key, value in entry.items()
            }
            for param_group in optimizer.param_groups:
                param_group["params"] = [new if p is old else p for p in param_group["params"]]
            if group is not None:  # the list nerfstudio clips gradients over
                group[:] = [new if p is old else p for p in group]

    def _compact_optimizer_state(self, optimizer: torch.optim.Optimizer, state: Dict[str, Any]) -> Dict[str, Any]:
        """Checkpoints keep the Adam moments of pruned levels' kept vertices only (the rows of
        dropped blocks never render again), like the per-vertex logits or queries themselves; with
        ``compact_checkpoints``, none of free logits."""
        grid = self.field.grid
        index = {id(p): i for i, p in enumerate(p for group in optimizer.param_groups for p in group["params"])}
        if self.config.compact_checkpoints:  # Adam starts these moments afresh when a run resumes
            for logits in grid.logits:
                state["state"].pop(index.get(id(logits)), None)
        for lvl, param in grid.compactable_rows().values():
            entry = state["state"].get(index.get(id(param)))
            if entry is None:
                continue
            kept = grid.kept_vertices(lvl)
            # A copy: the packed entries are the optimizer's own dicts.
            state["state"][index[id(param)]] = {
                name: compact_rows(value, kept) if torch.is_tensor(value) and value.shape == param.shape else value
                for name, value in entry.items()
            }
        return state

    def _expand_optimizer_state(self, optimizer: Optional[torch.optim.Optimizer]) -> None:
        """After a resume, bring compact Adam moments (see above) back to the logits' shape, zeros in
        the dropped rows; a no-op once they match."""
        if optimizer is None:
            return
        grid = self.field.grid
        for lvl, param in grid.compactable_rows().values():
            entry = optimizer.state.get(param, {})
            for name, value in list(entry.items()):
                if torch.is_tensor(value) and value.dim() == 2 and value.shape[0] != param.shape[0]:
                    entry[name] = expand_rows(value, grid.kept_vertices(lvl), param.shape[0])

    def get_extra_state(self) -> Dict[str, Any]:
        """Training state that lives outside tensors: the pruning's progress and the proposal sampler's
        update counters, so a resumed run goes on exactly as an uninterrupted one."""
        sampler = self.proposal_sampler
        return {
            "pruned": self._pruned,
            "prune_attempts": self._prune_attempts,
            "proposal_step": sampler._step,
            "proposal_steps_since_update": sampler._steps_since_update,
        }

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        self._pruned = bool(state.get("pruned", False))
        self._prune_attempts = int(state.get("prune_attempts", 0))
        self.proposal_sampler._step = int(state.get("proposal_step", 0))
        self.proposal_sampler._steps_since_update = int(state.get("proposal_steps_since_update", 0))

    def _prune_steps(self, total: int) -> Tuple[int, int]:
        """The step of the next pruning attempt and of the last one (the deadline), in a run of ``total``."""
        first = int(self.config.prune_at_fraction * total)
        deadline = max(first, int(PRUNE_DEADLINE_FRACTION * total))
        retry = first + self._prune_attempts * max(1, int(PRUNE_RETRY_FRACTION * total))
        return min(retry, deadline), deadline

    @torch.no_grad()
    def prune_empty_blocks(self, require_occupancy: bool = True) -> Optional[Dict[int, float]]:
        """Keep only the blocks of the sparse levels where the field has density, the densest first
        within the spec's ``max_file_bytes`` (:func:`prune_sparse_levels`); returns the kept fraction
        per level, or None (every level left dense) when ``require_occupancy`` and fewer than
        ``MIN_KEPT_BLOCK_FRACTION`` of the blocks are occupied."""
        field = self.field

        def density(unit: Tensor) -> Tensor:
            return field.density_from_unit(unit, torch.ones_like(unit[:, :1]), None)[0]

        kept = prune_sparse_levels(
            field.grid,
            density,
            field.unit_extent,
            self.config.prune_threshold,
            self.grid_spec.max_file_bytes,
            file_bytes=lambda: self.compressed_size_bytes(operating_point_name(field.grid.num_levels)),
            min_kept_fraction=MIN_KEPT_BLOCK_FRACTION if require_occupancy else None,
        )
        self._pruned = self._pruned or kept is not None
        return kept

    # -- rendering ------------------------------------------------------------------------------
    def fields_to_compile(self) -> Tuple[TrainingCompiledField, ...]:
        return (self.field,) if self.marches_occupancy() else (self.field, self.proposal_field)

    def batch_sample_counts_vary(self) -> bool:
        return self.marches_occupancy()  # marched steps in occupied cells: a count of its own each batch

    def _random_levels(self, num_rays: int, device: torch.device) -> Tensor:
        """Per-ray level counts [R, 1]: all levels, except a random operating point for a fraction."""
        levels = self.field.grid.num_levels
        active = torch.full((num_rays, 1), float(levels), device=device)
        fraction = self.config.random_levels_fraction
        if fraction is None:  # prefixes of concatenated levels already decode: only the full model trains
            fraction = 0.0 if self.grid_spec.concat_levels else SUMMED_RANDOM_LEVELS_FRACTION
        if fraction > 0 and levels > 1:
            chosen = torch.rand(num_rays, 1, device=device) < fraction
            random = torch.randint(1, levels, (num_rays, 1), device=device).float()
            active = torch.where(chosen, random, active)
        return active

    @contextlib.contextmanager
    def rendering_as_trained(self) -> Iterator[None]:
        """Also every corner gathered, as training does, instead of decoded volumes."""
        saved = self.config.decoded_grid_lookup
        with super().rendering_as_trained():
            try:
                self.config.decoded_grid_lookup = False
                self._apply_render_options()
                yield
            finally:
                self.config.decoded_grid_lookup = saved
                self._apply_render_options()

    def _apply_render_options(self) -> None:
        """Hand the grids the render options they read (set on the config, also after loading)."""
        for grid in (self.field.grid, self.proposal_field.grid):
            grid.decoded_lookup = self.config.decoded_grid_lookup
            grid.fused_lookup = self.config.fused_codebook_lookup

    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Any]:
        self.compile_fields_once(ray_bundle.origins.device, self.config.compile)
        self._apply_render_options()
        rays = self.sampling_rays(ray_bundle)
        bundle = rays.bundle
        if self.training:
            metadata = dict(bundle.metadata or {})
            metadata[ACTIVE_LEVELS_KEY] = self._random_levels(len(bundle), bundle.origins.device)
            bundle.metadata = metadata
        grid = self.occupancy_grid
        if self.marches_occupancy():  # training's grid while it exists, else the file's
            if self.occupancy_estimator is not None:
                grid = self.occupancy_estimator.grid()
            elif grid is None:  # rendering as trained without training's grid: every step in the box
                device = bundle.origins.device
                everywhere = torch.ones(1, 1, 1, dtype=torch.bool, device=device)
                grid = OccupancyGrid(self.scene_box.aabb.to(device), everywhere)
        if grid is not None and (self.marches_occupancy() or self.marching_grid() is not None):
            if self.training:  # even steps through occupied cells instead of the proposals
                return self._marched_training_outputs(bundle, grid)
            field = self.field
            return self.render_marching(bundle, grid, field.density_at, field.evaluator("color_from_features"))
        density_fns = self.density_fns
        guide = self.guiding_grid()
        if guide is not None:  # proposal rounds place no weight in empty cells
            density_fns = [density_where_occupied(fn, guide) for fn in density_fns]
        ray_samples, weights_list, ray_samples_list = self.proposal_sampler(bundle, density_fns=density_fns)
        if not self.training and self.config.skip_hidden_samples:
            field = self.field
            field_outputs = self.field_outputs_skipping(
                ray_samples, field.density_at, field.evaluator("color_from_features"), grid
            )
        else:
            field_outputs = self.field(ray_samples)
        weights = ray_samples.get_weights(field_outputs[FieldHeadNames.DENSITY])
        weights_list.append(weights)
        ray_samples_list.append(ray_samples)
        rgb = self.renderer_rgb(rgb=field_outputs[FieldHeadNames.RGB], weights=weights)
        accumulation = weights.sum(dim=-2)
        midpoints = (ray_samples.frustums.starts + ray_samples.frustums.ends) / 2
        distances = rays.world_distance(midpoints, ray_bundle, self.ndc)
        depth = (weights * distances).sum(dim=-2) / accumulation.clamp_min(1e-10)
        outputs: Dict[str, Any] = {"rgb": rgb, "accumulation": accumulation, "depth": depth}
        if self.training:
            outputs["weights_list"] = weights_list
            outputs["ray_samples_list"] = ray_samples_list
        return outputs

    def _marched_training_outputs(self, bundle: RayBundle, grid: OccupancyGrid) -> Dict[str, Any]:
        """Training by marching (sampler occupancy): every jittered step in an occupied cell, packed,
        less those light does not reach (:meth:`visible_samples`), evaluated with gradients; the
        step's evaluated sample count sizes the next batch."""
        samples = self.visible_samples(bundle, self.march(bundle, grid, jitter=True))
        self._last_batch_samples = len(samples)
        field_outputs = self.field(self._packed_ray_samples(bundle, samples))
        weights = packed_weights(samples, field_outputs[FieldHeadNames.DENSITY].view(-1))
        outputs: Dict[str, Any] = composite_packed(
            samples, weights, field_outputs[FieldHeadNames.RGB].view(-1, 3), self.renderer_rgb
        )
        outputs["weights_list"], outputs["ray_samples_list"] = [], []
        return outputs

    @staticmethod
    def _packed_ray_samples(bundle: RayBundle, samples: PackedSamples) -> RaySamples:
        """One ray sample per packed sample, with its ray's metadata (the levels it trains)."""
        return bundle[samples.ray_indices].get_ray_samples(
            bin_starts=samples.t_starts[:, None, None], bin_ends=samples.t_ends[:, None, None]
        )

    @torch.no_grad()
    def visible_samples(self, bundle: RayBundle, samples: PackedSamples) -> PackedSamples:
        """Of a training batch's marched ``samples``, those that more than ``train_min_transmittance``
        of light reaches, by the field's density at each ray's levels (instant-NGP's early stop).
        Transmittance only falls along a ray, so every ray keeps a prefix of its samples, whose
        weights stay as they were; the rest held less than that fraction of the pixel."""
        threshold = self.config.train_min_transmittance
        if threshold <= 0 or len(samples) == 0:
            return samples
        density, _ = self.field.get_density(self._packed_ray_samples(bundle, samples))
        reached = packed_transmittance(samples, density.view(-1).float())
        return samples.subset((reached > threshold).nonzero().view(-1))

    def density_for_occupancy(self, positions: Tensor) -> Tensor:
        return self.field.density_at(positions)[0]

    def trained_occupancy(self) -> Optional[OccupancyGrid]:
        return self.occupancy_estimator.grid() if self.occupancy_estimator is not None else super().trained_occupancy()

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        image = batch["image"].to(outputs["rgb"].device)
        losses = self.rgb_losses(outputs, image, {"rgb_loss": "rgb"})
        if self.training and len(outputs["weights_list"]) > 1:  # proposal sampling: its own losses
            weights, samples = outputs["weights_list"], outputs["ray_samples_list"]
            losses["interlevel_loss"] = self.config.interlevel_loss_mult * interlevel_loss(weights, samples)
            losses["distortion_loss"] = self.config.distortion_loss_mult * distortion_loss(weights, samples)
        return losses
