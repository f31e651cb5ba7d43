"""What every model of this plugin shares: a compressed form, its size, and offline-safe metrics.

A :class:`CompressibleModel` writes itself to the compressed-field file through its method's codec
(:mod:`nerfqat_plugin.compression.codec`), which also rebuilds it, so ``load_compressed_model`` needs
only the file. It also owns what both methods do with the scene the dataparser describes: NDC for
forward-facing captures, near/far bounds otherwise, and the background that suits each.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, ContextManager, Dict, Iterator, List, Literal, Optional, Tuple

import torch
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.model_components.renderers import RGBRenderer
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils import colormaps
from nerfstudio.viewer.viewer_elements import ViewerButton, ViewerText
from torch import Tensor
from torch.nn.utils import parametrize

from nerfqat_plugin.compression.bitpack import decode_integers, encode_integers
from nerfqat_plugin.compression.codec import codec_for
from nerfqat_plugin.compression.codec import load_compressed_model as load_compressed_model  # its import path of old
from nerfqat_plugin.compression.file_format import (
    CompressedFileError,
    serialize_compressed,
    write_compressed,
)
from nerfqat_plugin.errors import OptionError
from nerfqat_plugin.field_components.occupancy_grid import OccupancyGrid, bake_occupancy
from nerfqat_plugin.field_components.weights_version import weights_version
from nerfqat_plugin.fields.compiled_field import TrainingCompiledField
from nerfqat_plugin.fields.view_directions import view_directions
from nerfqat_plugin.metrics.image_metrics import image_metrics
from nerfqat_plugin.model_components.collapse_monitor import CollapseMonitor
from nerfqat_plugin.model_components.ndc import NDC_BOX, NDCSpace
from nerfqat_plugin.model_components.packed_marching import (
    PackedSamples,
    march_occupied,
    rays_crossing_occupied,
    render_packed,
)
from nerfqat_plugin.model_components.ray_setup import SamplingRays, SceneType
from nerfqat_plugin.model_components.render_chunks import CudaMemory, RenderChunkSizer
from nerfqat_plugin.model_components.sample_skipping import ColorFn, DensityFn, evaluate_front_to_back
from nerfqat_plugin.model_components.scene_space import SceneSpace
from nerfqat_plugin.model_components.weight_averaging import AveragedWeights

OCCUPANCY_KEY = "occupancy"
"""Module path (and file key) of the occupancy grid's tensor."""


@dataclass
class CompressibleModelConfig(ModelConfig):
    """Options every compressible model shares; ``payload_keys`` name those its file must keep."""

    payload_keys: ClassVar[Tuple[str, ...]] = ("near_plane", "far_plane", "background_color")
    payload_absent: ClassVar[Dict[str, Any]] = {}
    """Per payload key added after the first files were written, the value those files were made
    with: a file without the key decodes with it, whatever the option's default becomes."""
    enable_collider: bool = False
    """Sampling bounds come from NDC or from ``near_plane``/``far_plane``, not a collider."""
    near_plane: float = 2.0
    """Near bound for scenes without NDC when the dataparser gives none."""
    far_plane: float = 6.0
    """Far bound for scenes without NDC when the dataparser gives none."""
    background_color: Literal["auto", "black", "white", "last_sample", "random"] = "auto"
    """auto: the last sample's colour in NDC (NeRF's); elsewhere white, with a random background per
    ray while training (docs/methods/scene-types.md)."""

    bake_occupancy: bool = True
    """Bounded and forward-facing scenes: store a bit grid of occupied space in the file, so renders
    from it skip empty space (a few kB)."""
    occupancy_bake_resolution: int = 64
    """Cells per axis of the file's baked occupancy grid, in [8, 512]; finer skips more empty space but
    takes more bytes and baking time (models that train by marching a grid store that grid instead)."""
    occupancy_max_ray_loss: float = 1e-3
    """Most opacity the file's baked empty cells may take from one ray in the worst case, in (0, 1)."""
    skip_hidden_samples: bool = True
    """Rendering: stop each ray once its transmittance falls below 1e-4 and colour only samples of
    weight 1e-5 or more (training evaluates every sample)."""
    occupancy_guided_sampling: bool = False
    """Renders from a file's grid: rays that cross no occupied cell (bounded scenes) are not sampled,
    and vqad's proposal rounds skip empty cells, moving its samples into occupied ones."""
    march_occupied_space: bool = False
    """Render a bounded scene's file by evaluating the (fine) field at even steps in its grid's
    occupied cells only, instead of the trained sampler (docs/methods/rendering.md)."""
    compile_mode: Literal["default", "reduce-overhead"] = "default"
    """torch.compile mode of the fields' training paths (with compile on): reduce-overhead replays
    CUDA graphs, recorded once per batch shape (the proposal samplers' is fixed)."""
    compile_pad_rows: int = 0
    """Compiled training paths: pad their sample rows to a multiple of this (0: no padding), so that
    batches whose sample count varies (the occupancy sampler's) take few shapes; same values."""
    render_chunk_memory_fraction: float = 0.25
    """Rendering on a GPU: share of its free memory one chunk of rays may take, by the first chunk's
    memory per ray; in [0, 1] (0: chunks of eval-num-rays-per-chunk rays)."""
    march_steps: int = 1024
    """Marching occupied space: steps along the scene box's diagonal (the step is diagonal / this; the
    occupancy sampler's grid counts a cell occupied by its opacity over one step)."""

    def to_payload(self) -> Dict[str, Any]:
        """The options that define the rendered model, as JSON."""
        return {k: list(v) if isinstance(v, tuple) else v for k in self.payload_keys for v in [getattr(self, k)]}

    @classmethod
    def from_payload(cls, payload: Dict[str, Any], **overrides: Any) -> CompressibleModelConfig:
        """Rebuild the configuration from :meth:`to_payload` (JSON lists, nested ones included,
        become tuples again); keys an older file lacks take :attr:`payload_absent`'s values."""
        payload = {**cls.payload_absent, **payload}
        tuple_fields = {f.name for f in fields(cls) if str(f.type).startswith(("Tuple", "Optional[Tuple"))}
        options = {}
        for f in fields(cls):
            if f.name in payload:
                value = payload[f.name]
                options[f.name] = _as_tuples(value) if f.name in tuple_fields else value
        return cls(**options, **overrides)


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def check_occupancy_bake_options(method: str, resolution: int, max_ray_loss: float) -> None:
    """Raise :class:`OptionError` unless a file's occupancy grid can be baked with these options."""
    if not 8 <= resolution <= 512 or not 0.0 < max_ray_loss < 1.0:
        raise OptionError(
            f"{method}: occupancy-bake-resolution must be in [8, 512] and occupancy-max-ray-loss in (0, 1), "
            f"got {resolution} and {max_ray_loss}"
        )


SIZE_NOT_MEASURED = "not measured (press Measure exported size)"


class CompressibleModel(Model):
    """A nerfstudio Model with a self-contained compressed form."""

    config: CompressibleModelConfig
    compressed_method_name: str = ""
    render_shortcuts: ClassVar[Tuple[str, ...]] = (
        "skip_hidden_samples",
        "occupancy_guided_sampling",
        "march_occupied_space",
    )
    """Config options that only change how renders take shortcuts: :meth:`rendering_as_trained`
    renders the same whatever their values."""

    def populate_modules(self) -> None:
        super().populate_modules()
        if not 0.0 <= self.config.render_chunk_memory_fraction <= 1.0:
            raise OptionError(
                f"{self.compressed_method_name}: render-chunk-memory-fraction must be in [0, 1], "
                f"got {self.config.render_chunk_memory_fraction}"
            )
        check_occupancy_bake_options(
            self.compressed_method_name, self.config.occupancy_bake_resolution, self.config.occupancy_max_ray_loss
        )
        # An instance attribute, not a class one: nn.Module looks submodules up only when normal
        # attribute lookup fails, so a class-level None would hide the module set later.
        # Averaged weights (see average_weights), or None: the model renders its own weights.
        self.weight_average: Optional[AveragedWeights] = None
        self.collapse_monitor = CollapseMonitor()
        # Empty space of a bounded scene, from the file it was loaded from (renders skip it).
        self.occupancy_grid: Optional[OccupancyGrid] = None
        # Whether that grid is the one the model trained by marching (kept when rendering as trained).
        self.occupancy_grid_trained = False
        self._baked_occupancy: Optional[Tuple[Any, OccupancyGrid]] = None

    # -- occupancy grid (bounded and forward-facing scenes) -------------------------------------
    def density_for_occupancy(self, positions: Tensor) -> Tensor:
        """Density [M, 1] at field ``positions`` [M, 3] that decides which cells are empty."""
        raise NotImplementedError

    def occupancy_box(self) -> Optional[Tuple[Tensor, bool]]:
        """The box a file's occupancy grid covers and whether positions outside it are occupied:
        a bounded scene's box (outside: empty), the NDC cube of a forward-facing scene (outside:
        occupied, rays leave its sides), None for other scenes or with ``bake_occupancy`` off."""
        if not self.config.bake_occupancy:
            return None
        if self.ndc is not None:
            return NDC_BOX, True
        return (self.scene_box.aabb, False) if self.scene_type == "bounded" else None

    def trained_occupancy(self) -> Optional[OccupancyGrid]:
        """The grid this model marched while it trained, if it sampled that way (here: one its file
        stored); None otherwise."""
        return self.occupancy_grid if self.occupancy_grid_trained else None

    def occupancy_state(self) -> Tuple[Dict[str, Tensor], Dict[str, Any], Dict[str, Any]]:
        """The file's occupancy grid: tensors, their layouts and the payload entry (all empty where
        :meth:`occupancy_box` is None). A model that trains by marching a grid stores that grid, so
        its file renders the samples it trained on; others bake one from the current weights, once
        per change of them (sizes are measured often)."""
        box = self.occupancy_box()
        if box is None:
            return {}, {}, {}
        trained = self.trained_occupancy()
        if trained is not None:
            return self._occupancy_entry(trained.occupied, trained.aabb, trained.outside_occupied, trained=True)
        aabb, outside_occupied = box
        cfg = self.config
        options = (cfg.occupancy_bake_resolution, cfg.occupancy_max_ray_loss)
        if self._baked_occupancy is None or self._baked_occupancy[0] != (weights_version(self), *options):
            # Evaluated as the trained model renders (float arithmetic: the integer path equals it up
            # to rounding and is slower on CPUs), never in training mode, where the grid's points
            # would feed the activation-range observers (a file exported mid-calibration, the viewer).
            was_training = self.training
            self.eval()
            try:
                with torch.no_grad(), self.rendering_as_trained():
                    device = next(self.parameters()).device  # (the viewer measures sizes while the model is built)
                    grid = bake_occupancy(
                        self.density_for_occupancy,
                        aabb.to(device),
                        resolution=cfg.occupancy_bake_resolution,
                        max_ray_loss=cfg.occupancy_max_ray_loss,
                        outside_occupied=outside_occupied,
                    )
            finally:
                self.train(was_training)
            # Keyed after baking: evaluating the fields refreshes quantizer buffers (same values, new versions).
            self._baked_occupancy = ((weights_version(self), *options), grid)
        return self._occupancy_entry(self._baked_occupancy[1].occupied, aabb, outside_occupied)

    @staticmethod
    def _occupancy_entry(
        occupied: Tensor, aabb: Tensor, outside_occupied: bool, trained: bool = False
    ) -> Tuple[Dict[str, Tensor], Dict[str, Any], Dict[str, Any]]:
        """A grid's cells [X, Y, Z] over ``aabb`` [2, 3], bit-packed, as the file stores them;
        ``trained``: the grid training marched (part of the model), not a baked render shortcut."""
        packed, layout = encode_integers(occupied.reshape(-1).cpu(), 1, signed=False)
        entry = {
            "resolution": list(occupied.shape),
            "aabb": [[float(v) for v in row] for row in aabb.tolist()],
            "outside": "occupied" if outside_occupied else "empty",
        }
        if trained:
            entry["trained"] = True
        return {OCCUPANCY_KEY: packed}, {OCCUPANCY_KEY: layout}, {"occupancy": entry}

    def load_occupancy(self, tensors: Dict[str, Tensor], payload: Dict[str, Any]) -> None:
        """Attach the grid a file holds (files without one render every sample, as before; files
        written before grids named their box cover the scene box, empty outside)."""
        if "occupancy" not in payload:
            return
        entry = payload["occupancy"]
        occupied = decode_integers(tensors[OCCUPANCY_KEY], payload["tensors"][OCCUPANCY_KEY])
        shape = [int(r) for r in entry["resolution"]]
        aabb = torch.tensor(entry["aabb"], dtype=torch.float32) if "aabb" in entry else self.scene_box.aabb
        if tuple(aabb.shape) != (2, 3) or entry.get("outside", "empty") not in ("empty", "occupied"):
            raise CompressedFileError("the file's occupancy grid names an invalid box or outside state")
        outside_occupied = entry.get("outside", "empty") == "occupied"
        self.occupancy_grid = OccupancyGrid(aabb, occupied.view(*shape).bool(), outside_occupied)
        self.occupancy_grid_trained = bool(entry.get("trained", False))

    # -- hooks a method may override ------------------------------------------------------------
    def ddp_find_unused_parameters(self) -> bool:
        """Whether a training step may leave some parameters without a gradient. Under DDP, True makes
        every step walk the autograd graph to find them (nerfstudio's default): a per-step CPU cost."""
        return True

    def operating_points(self) -> List[str]:
        """Names of the settings one trained model can render at and export (default: none)."""
        return []

    def current_operating_point(self) -> Optional[str]:
        """The operating point the model renders at (None when it has none)."""
        return None

    def set_operating_point(self, name: Optional[str]) -> None:
        """Render at one of :meth:`operating_points` from now on (None: the full model)."""
        if name is not None:
            raise ValueError(f"{self.compressed_method_name} has no operating points (got {name!r})")

    def check_operating_point(self, name: Optional[str]) -> None:
        if name is not None and name not in self.operating_points():
            known = ", ".join(self.operating_points()) or "none"
            raise ValueError(f"unknown operating point {name!r} of {self.compressed_method_name} (known: {known})")

    # -- averaged weights -----------------------------------------------------------------------
    def average_weights(self, decay: float) -> None:
        """Keep an exponential moving average of the trained parameters (torch-ema) and render,
        evaluate and export with it (swapped in for each render outside training and for each
        export). Call from ``populate_modules``; :meth:`shared_training_callbacks` updates it."""
        params = [p for group in self.get_param_groups().values() for p in group]
        self.weight_average = AveragedWeights(params, decay)

    def shared_training_callbacks(self) -> List[TrainingCallback]:
        """Callbacks every model of the plugin adds to its own: per-step seeding, the collapse check,
        and folding each step's weights into the average where there is one."""
        seed = torch.initial_seed()  # the run's seed, as nerfstudio set it (per DDP rank)
        callbacks = [
            TrainingCallback(
                where_to_run=[TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                update_every_num_iters=1,
                func=lambda step: seed_step(seed, step),
            ),
            TrainingCallback(
                where_to_run=[TrainingCallbackLocation.AFTER_TRAIN_ITERATION],
                update_every_num_iters=1,
                func=self.collapse_monitor.check,
            ),
        ]
        if self.weight_average is not None:
            callbacks.append(
                TrainingCallback(
                    where_to_run=[TrainingCallbackLocation.AFTER_TRAIN_ITERATION],
                    update_every_num_iters=1,
                    func=lambda step: self.weight_average.update(),
                )
            )
        return callbacks

    def forward(self, ray_bundle: RayBundle) -> Dict[str, Tensor]:
        # Every render outside training (evaluation, ns-eval, the viewer, benchmarks) goes through
        # here, one chunk of rays at a time: it sees the averaged weights, training its own. Swapping
        # per call rather than on ``model.eval()`` also covers a checkpoint loaded after eval().
        if self.training:
            return super().forward(ray_bundle)
        # Weights rounded to fp16 through parametrizations are rounded once per chunk, not at every
        # call of the field (the sample windows and proposal rounds call it several times).
        with self.averaged_weights(), parametrize.cached():
            return self.render_crossing_rays(ray_bundle, super().forward)

    @torch.no_grad()
    def get_outputs_for_camera_ray_bundle(self, camera_ray_bundle: RayBundle) -> Dict[str, Tensor]:
        """A camera's image, on a GPU in chunks of rays sized to its free memory
        (:class:`~nerfqat_plugin.model_components.render_chunks.RenderChunkSizer`), elsewhere in
        ``eval_num_rays_per_chunk`` as nerfstudio renders."""
        device = self.device
        if device.type != "cuda" or camera_ray_bundle.origins.device != device:
            return super().get_outputs_for_camera_ray_bundle(camera_ray_bundle)
        options = (self.config.eval_num_rays_per_chunk, self.config.render_chunk_memory_fraction)
        sizer = getattr(self, "_render_chunks", None)
        if sizer is None or self._render_chunk_options != options:  # sized again when an option changes
            sizer = RenderChunkSizer(*options, CudaMemory(device))
            self._render_chunks, self._render_chunk_options = sizer, options
        return sizer.render(self.forward, camera_ray_bundle)

    def averaged_weights(self) -> ContextManager[None]:
        """Context in which the parameters hold the averaged weights (their own without an average)."""
        return contextlib.nullcontext() if self.weight_average is None else self.weight_average.applied()

    # -- scene space ----------------------------------------------------------------------------
    def setup_scene_space(self) -> None:
        """The scene space from the dataparser's metadata (:class:`SceneSpace`) and its background."""
        metadata = self.kwargs.get("metadata") or {}
        self.scene_space = SceneSpace.from_metadata(metadata, self.config.near_plane, self.config.far_plane)
        self.renderer_rgb: RGBRenderer = self.scene_space.background_renderer(self.config.background_color)

    @property
    def ndc(self) -> Optional[NDCSpace]:
        return self.scene_space.ndc

    @property
    def near(self) -> float:
        return self.scene_space.near

    @property
    def far(self) -> float:
        return self.scene_space.far

    @property
    def scene_type(self) -> Optional[SceneType]:
        return self.scene_space.scene_type

    def sampling_rays(self, ray_bundle: RayBundle) -> SamplingRays:
        return self.scene_space.sampling_rays(ray_bundle)

    def field_outputs_skipping(
        self,
        ray_samples: RaySamples,
        density_fn: DensityFn,
        color_fn: ColorFn,
        occupied: Optional[OccupancyGrid] = None,
    ) -> Dict[FieldHeadNames, Tensor]:
        """A field's density and colour for rendering, evaluated only where they can change the pixel
        (:func:`evaluate_front_to_back`, skipping the cells ``occupied`` marks empty, by default the
        file's grid when it has one; rays are checked for opacity every 64 samples or more often)."""
        positions = ray_samples.frustums.get_positions()
        directions = view_directions(ray_samples).expand_as(positions)
        chunks = max(4, positions.shape[1] // 64)
        density, rgb, _ = evaluate_front_to_back(
            ray_samples,
            positions,
            directions,
            density_fn,
            color_fn,
            chunks=chunks,
            occupied=occupied if occupied is not None else self.occupancy_grid,
        )
        return {FieldHeadNames.DENSITY: density, FieldHeadNames.RGB: rgb}

    def guiding_grid(self) -> Optional[OccupancyGrid]:
        """The file's grid where renders sample guided by it (``occupancy_guided_sampling``, not
        training, not rendering as trained); else None."""
        if self.training or not self.config.occupancy_guided_sampling:
            return None
        return self.occupancy_grid

    def render_crossing_rays(
        self, ray_bundle: RayBundle, render: Callable[[RayBundle], Dict[str, Tensor]]
    ) -> Dict[str, Tensor]:
        """``render(ray_bundle)``, where the guiding grid of a bounded scene lets it, on the rays that
        cross its occupied cells only (:func:`rays_crossing_occupied`); the others get the
        background, 0 accumulation and 0 depth, what their samples in empty cells would render."""
        grid = self.guiding_grid()
        if grid is None or grid.outside_occupied or len(ray_bundle) == 0:
            return render(ray_bundle)
        crossing = rays_crossing_occupied(*flat_rays(self.sampling_rays(ray_bundle).bundle), grid)
        num_rays = len(crossing)
        index = crossing.nonzero().view(-1)  # (the one wait for the GPU; indexing by it waits no more)
        if len(index) == num_rays:
            return render(ray_bundle)
        if len(index) == 0:  # one ray rendered at least, so the outputs' keys come from the model
            index = index.new_zeros(1)
        rendered = render(ray_bundle[index])
        outputs = {}
        for key, value in rendered.items():
            if key.startswith("rgb"):  # the renderer's background, as for rays whose weights are all 0
                full = self.renderer_rgb(rgb=value.new_zeros(num_rays, 1, 3), weights=value.new_zeros(num_rays, 1, 1))
            else:
                full = value.new_zeros(num_rays, *value.shape[1:])
            full[index] = value
            outputs[key] = full
        return outputs

    def marching_grid(self) -> Optional[OccupancyGrid]:
        """The grid this render marches through instead of the trained sampler
        (``march_occupied_space``, not training, a grid whose outside is empty: a bounded scene); None:
        render with the trained sampler."""
        grid = self.occupancy_grid
        if self.training or not self.config.march_occupied_space or grid is None or grid.outside_occupied:
            return None
        return grid

    def march(self, bundle: RayBundle, grid: OccupancyGrid, jitter: bool = False) -> PackedSamples:
        """The steps of ``bundle``'s rays (flat, unit directions, world space) in ``grid``'s occupied
        cells: steps of the grid box's diagonal over ``march_steps``, from each ray's near bound (or the
        box's entry), shifted by one random fraction of a step per ray with ``jitter``."""
        return march_occupied(*flat_rays(bundle), grid, self.march_step(grid.diagonal), jitter=jitter)

    def march_step(self, diagonal: float) -> float:
        """The marching step through a box of that ``diagonal``: the diagonal over ``march_steps`` (world
        units)."""
        return diagonal / self.config.march_steps

    def render_marching(
        self, bundle: RayBundle, grid: OccupancyGrid, density_fn: DensityFn, color_fn: ColorFn
    ) -> Dict[str, Tensor]:
        """Colour, accumulation and depth of ``bundle``'s rays marched through ``grid``'s occupied cells
        (:meth:`march`), the field evaluated front to back
        (:func:`~nerfqat_plugin.model_components.packed_marching.render_packed`)."""
        origins, directions = bundle.origins.reshape(-1, 3), bundle.directions.reshape(-1, 3)
        samples = self.march(bundle, grid)
        return render_packed(samples, origins, directions, density_fn, color_fn, self.renderer_rgb)

    @contextlib.contextmanager
    def rendering_as_trained(self) -> Iterator[None]:
        """Context in which renders evaluate every sample as training does: no sample skipping, no
        baked occupancy grid (a grid training marched stays: it places the samples) and, in
        subclasses, no other render-time shortcut. The reference a file's default renders are checked
        against."""
        saved = self.config.skip_hidden_samples, self.occupancy_grid
        self.config.skip_hidden_samples = False
        self.occupancy_grid = self.occupancy_grid if self.occupancy_grid_trained else None
        try:
            yield
        finally:
            self.config.skip_hidden_samples, self.occupancy_grid = saved

    def fields_to_compile(self) -> Tuple[TrainingCompiledField, ...]:
        """The fields whose training paths :meth:`compile_fields_once` compiles."""
        return ()

    def batch_sample_counts_vary(self) -> bool:
        """Whether the sample count of a training batch changes from step to step (fields compiled
        for any count at once, not recompiled)."""
        return False

    def compile_fields_once(self, device: torch.device, enabled: bool) -> None:
        """On the first CUDA training step, compile the fields' training paths (evaluation stays eager,
        so the trained model and one rebuilt from its file render identical images)."""
        if not enabled or not self.training or device.type != "cuda" or getattr(self, "_fields_compiled", False):
            return
        for fld in self.fields_to_compile():
            varying = self.batch_sample_counts_vary()
            fld.compile_for_training(
                dynamic=True if varying else None, mode=self.config.compile_mode, pad_rows=self.config.compile_pad_rows
            )
        self._fields_compiled = True

    # -- losses and metrics shared by both methods --------------------------------------------
    def rgb_losses(self, outputs: Dict[str, Tensor], image: Tensor, keys: Dict[str, str]) -> Dict[str, Tensor]:
        """MSE of each rendered image ``outputs[key]`` (named ``loss_name``) against the batch image,
        blended with the background as nerfstudio's renderer does."""
        losses = {}
        for loss_name, key in keys.items():
            pred, gt = self.renderer_rgb.blend_background_for_loss_computation(
                pred_image=outputs[key], pred_accumulation=outputs[key.replace("rgb", "accumulation")], gt_image=image
            )
            losses[loss_name] = torch.mean((gt - pred) ** 2)
        return losses

    def get_metrics_dict(self, outputs, batch) -> Dict[str, Any]:
        image = self.renderer_rgb.blend_background(batch["image"].to(outputs["rgb"].device))
        mse = torch.mean((outputs["rgb"].detach() - image) ** 2)
        metrics: Dict[str, Any] = {"psnr": -10.0 * torch.log10(mse.clamp_min(1e-10))}
        if self.training:
            self.collapse_monitor.observe(outputs["rgb"], outputs["accumulation"], image)
            metrics["collapsed"] = float(self.collapse_monitor.collapsed)
        return metrics

    def get_image_metrics_and_images(
        self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        image = self.renderer_rgb.blend_background(batch["image"].to(outputs["rgb"].device))
        metrics = self.offline_safe_image_metrics(image, outputs["rgb"])
        depth = colormaps.apply_depth_colormap(outputs["depth"], accumulation=outputs["accumulation"])
        images = {"img": torch.cat([image, outputs["rgb"]], dim=1), "depth": depth}
        return metrics, images

    # -- viewer -----------------------------------------------------------------------------------
    def add_size_viewer_elements(self) -> None:
        """Viewer panel: the exported file's size and a button that measures it.

        Measured on request only: while the model is built its weights are not the trained ones yet
        (the viewer and ns-eval load a checkpoint afterwards), and measuring bakes the file's occupancy
        grid from the fields."""
        self.viewer_exported_size = ViewerText(name="Exported size", default_value=SIZE_NOT_MEASURED, disabled=True)
        self.viewer_measure_size = ViewerButton(name="Measure exported size", cb_hook=self._show_exported_size)

    def exported_size_text(self) -> str:
        return f"{self.compressed_size_bytes() / 1e6:.3f} MB"

    def _show_exported_size(self, _element: ViewerButton) -> None:
        self.viewer_exported_size.value = self.exported_size_text()

    # -- shared -------------------------------------------------------------------------------
    def _full_payload(self, operating_point: Optional[str] = None) -> Tuple[Dict[str, Tensor], Dict[str, Any]]:
        self.check_operating_point(operating_point)
        codec = codec_for(self.compressed_method_name)
        assert codec is not None, f"no codec registered for {self.compressed_method_name}"
        with self.averaged_weights():
            tensors, payload = codec.encode(self, operating_point)
        payload = {
            "method": self.compressed_method_name,
            "scene_box": self.scene_box.aabb.detach().cpu().tolist(),
            **payload,
        }
        return tensors, payload

    def export_compressed(self, path: Path, operating_point: Optional[str] = None) -> int:
        """Write the compressed file atomically; returns its size in bytes."""
        tensors, payload = self._full_payload(operating_point)
        return write_compressed(path, tensors, payload)

    def rays_for_next_batch(self, rays: int) -> Optional[int]:
        """How many rays the next training batch should hold after one of ``rays``; None: as many as
        the datamanager is set to (models whose samples per ray vary may size batches by samples)."""
        return None

    def training_statistics(self) -> Dict[str, Any]:
        """Diagnostics of the trained state that benchmark rows record."""
        return {
            "collapse_warning": self.collapse_monitor.warned,
            "train_psnr_windows": self.collapse_monitor.psnr_windows,
        }

    def compressed_size_bytes(self, operating_point: Optional[str] = None) -> int:
        """Byte count the compressed file of the current weights has (the file is not written)."""
        return len(serialize_compressed(*self._full_payload(operating_point)))

    def offline_safe_image_metrics(self, gt: Tensor, pred: Tensor) -> Dict[str, float]:
        """PSNR/SSIM/LPIPS for ``get_image_metrics_and_images``; LPIPS is omitted when unavailable
        (the pipeline then reports it as null)."""
        metrics = image_metrics(gt, pred)
        return {name: value for name, value in metrics.items() if value is not None}


def flat_rays(bundle: RayBundle) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Origins, directions [R, 3], nears and fars [R] of ``bundle``'s rays (bounds it lacks: 0 and
    infinity), as the marchers take them."""
    origins, directions = bundle.origins.reshape(-1, 3), bundle.directions.reshape(-1, 3)
    nears = bundle.nears.reshape(-1) if bundle.nears is not None else origins.new_zeros(len(origins))
    fars = bundle.fars.reshape(-1) if bundle.fars is not None else origins.new_full((len(origins),), math.inf)
    return origins, directions, nears, fars


def run_length(trainer: Any) -> int:
    """Steps of the whole run: a run resumed with ``--load-dir`` trains ``max_num_iterations`` more steps
    after its checkpoint's, so fractions of the run (the QAT start, vqad's pruning) keep their steps
    when the remainder is given, and never move before steps already taken."""
    return int(getattr(trainer, "_start_step", 0)) + int(trainer.config.max_num_iterations)


def seed_step(seed: int, step: int) -> None:
    """Seed torch's generators from the run's seed and the step: every step draws its rays and samples
    from its own stream, so a run resumed from a checkpoint goes on exactly as one never stopped."""
    torch.manual_seed((seed + 1_000_003 * step) % 2**63)


def scene_box_from_payload(payload: Dict[str, Any]) -> SceneBox:
    return SceneBox(aabb=torch.tensor(payload["scene_box"], dtype=torch.float32))
