"""The nerf-qat model: NeRF (coarse + fine) with quantization-aware fused Linear+ReLU fields."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Literal, Optional, Tuple, Type

import torch
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.engine.optimizers import Optimizers
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.model_components.ray_samplers import PDFSampler, UniformSampler
from nerfstudio.utils.rich_utils import CONSOLE
from nerfstudio.viewer.viewer_elements import ViewerCheckbox
from torch import Tensor
from torch.nn import Parameter

from nerfqat_plugin.errors import OptionError
from nerfqat_plugin.field_components.quant_mlp import QuantSpec, iter_quant_modules, set_observers, set_quantization
from nerfqat_plugin.fields.compiled_field import TrainingCompiledField
from nerfqat_plugin.fields.nerfqat_field import QuantNeRFField
from nerfqat_plugin.model_components.ray_setup import SamplingRays
from nerfqat_plugin.models.compressible import (
    CompressibleModel,
    CompressibleModelConfig,
    run_length,
)


@dataclass
class NeRFQATModelConfig(CompressibleModelConfig):
    """nerf-qat: NeRF trained with quantization-aware training of fused Linear+ReLU blocks."""

    payload_keys: ClassVar[Tuple[str, ...]] = CompressibleModelConfig.payload_keys + (
        "num_layers",
        "layer_width",
        "skip_connections",
        "head_width",
        "position_frequencies",
        "direction_frequencies",
        "num_coarse_samples",
        "num_importance_samples",
        "quantize",
        "bits",
        "activation_bits",
        "edge_bits",
        "high_precision_layers",
        "high_precision_bits",
        "fuse_relu",
    )
    # Files written before edge_bits, high_precision_layers or activation_bits existed quantized the
    # edges, every trunk block and the activations with ``bits`` too.
    payload_absent: ClassVar[Dict[str, Any]] = {"edge_bits": None, "high_precision_layers": [], "activation_bits": None}
    _target: Type = field(default_factory=lambda: NeRFQATModel)
    eval_num_rays_per_chunk: int = 1 << 14
    """Rays rendered at once in evaluation, the viewer and renders from a file; larger is faster on a
    GPU and takes more of its memory."""
    num_layers: int = 8
    """Depth of the trunk MLP (NeRF: 8)."""
    layer_width: int = 256
    """Width of the trunk MLP (NeRF: 256)."""
    skip_connections: Tuple[int, ...] = (4,)
    """Trunk blocks that re-read the encoded position (NeRF: 4)."""
    head_width: int = 128
    """Width of the view-dependent colour layer (NeRF: 128)."""
    position_frequencies: int = 10
    """Positional-encoding frequencies of positions (NeRF: 10)."""
    direction_frequencies: int = 4
    """Positional-encoding frequencies of view directions (NeRF: 4)."""
    num_coarse_samples: int = 64
    """Stratified samples per ray for the coarse field."""
    num_importance_samples: int = 64
    """Extra samples per ray drawn from the coarse weights for the fine field."""
    quantize: bool = True
    """Quantization-aware training; False trains the same field in fp32 (the baseline)."""
    bits: int = 8
    """Bits of the stored weights (4 to 8)."""
    activation_bits: Optional[int] = 8
    """Bits of the activations (4 to 8; None: ``bits``). Only weights are stored, so the file's size
    depends on ``bits`` alone."""
    edge_bits: Optional[int] = 8
    """Bits of the fields' edges: the quantizers of the encoded inputs and the density and colour
    output layers (640 weights per field: 0.64 kB more than at 4 bits); None: ``bits``."""
    high_precision_layers: Optional[Tuple[int, ...]] = None
    """Trunk blocks quantized with ``high_precision_bits`` instead of ``bits``. None: each skip block and
    the block after it (NeRF: 4 and 5) when ``bits`` is lower; an empty list turns it off."""
    high_precision_bits: int = 8
    """Bits of the ``high_precision_layers``."""
    fuse_relu: bool = True
    """Fuse each Linear with its ReLU before quantizing (False reproduces the paper's unfused ablation)."""
    activation_range: Literal["auto", "max", "mse"] = "auto"
    """How activation ranges are calibrated: each batch's min/max (max), or the clipped range with the
    least quantization error (mse); auto: max for 8-bit activations, mse below."""
    weight_range: Literal["max", "mse"] = "max"
    """How per-channel weight scales are set: max |w| / qmax of each row (max), or the clipped range
    with the least quantization error (mse)."""
    learned_weight_scales: bool = False
    """Learn per-channel weight scales (LSQ) instead of max |w| / qmax."""
    float_warmup_steps: int = 1000
    """Steps trained in float before fake quantization switches on, when qat_start_fraction is None
    or the run's length is unknown."""
    qat_start_fraction: Optional[float] = 0.75
    """Start quantization at this fraction of the run's iterations (0 to 1); None: after
    float_warmup_steps."""
    qat_lr_scale: float = 1.0
    """Learning-rate multiplier while quantization is on (the decay schedule is kept)."""
    ema_decay: Optional[float] = None
    """Render, evaluate and export an exponential moving average of the weights (torch-ema) with this
    decay, in (0, 1), e.g. 0.999; None: the weights as trained."""
    calibration_steps: int = 300
    """Steps, once quantization is on, during which activation ranges are observed; then they freeze
    (at most a third of the quantized phase)."""
    compile: bool = True
    """torch.compile the field MLPs for training on CUDA."""
    integer_inference: bool = True
    """Render a quantized model with integer matrix multiplies (int8 x int8 -> int32, as the file stores
    it); False: fake quantization in float. Training always uses fake quantization."""
    fused_integer_trunk: bool = False
    """Rendering with integer products on CUDA with Triton: the trunk's hidden blocks in one kernel,
    activations kept on chip between blocks (the same integers up to the epilogue's float rounding)."""
    train_bf16: bool = True
    """Run the field MLPs under bf16 autocast while training on CUDA (about half the activation
    traffic); evaluation, export and rendering stay in fp32."""

    def trunk_high_precision_layers(self) -> Tuple[int, ...]:
        """The trunk blocks kept at ``high_precision_bits``: ``high_precision_layers`` checked
        against the trunk, or the default (each skip block and its successor) when it is None."""
        if self.high_precision_layers is not None:
            outside = [i for i in self.high_precision_layers if not 0 <= i < self.num_layers]
            if outside:
                raise ValueError(f"high_precision_layers {outside} are not trunk blocks (0 to {self.num_layers - 1})")
            return tuple(sorted(set(self.high_precision_layers)))
        if not self.quantize or self.bits >= self.high_precision_bits:
            return ()
        # The skip block re-reads the encoded position next to the hidden features, and its output
        # feeds the next block: those two lose most at 4 bits (docs/methods/nerf-qat.md).
        blocks = {j for i in self.skip_connections if 0 < i < self.num_layers for j in (i, i + 1)}
        return tuple(sorted(j for j in blocks if j < self.num_layers))


QUANTIZATION_LOSS_WARNING_DB = 3.0
"""Training PSNR lost at the switch to quantization above which a run warns."""

QUANTIZATION_LOSS_ADVICE = (
    "the training PSNR fell by {lost:.1f} dB when quantization ({bits}-bit weights, {act}-bit activations) "
    "switched on at step {start}; the exported file renders what training shows now. Try {fix}."
)


class NeRFQATModel(CompressibleModel):
    """NeRF with QAT fields, sampled in NDC for forward-facing scenes."""

    compressed_method_name = "nerf-qat"
    render_shortcuts = CompressibleModel.render_shortcuts + ("integer_inference", "fused_integer_trunk")

    config: NeRFQATModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        self.setup_scene_space()

        cfg = self.config
        try:  # the quantization specs and the weight average check their own options
            self._build_fields()
            if cfg.ema_decay is not None:
                self.average_weights(cfg.ema_decay)
        except ValueError as error:
            raise OptionError(f"nerf-qat: {error}") from None

        self.sampler_uniform = UniformSampler(num_samples=self.config.num_coarse_samples)
        self.sampler_pdf = PDFSampler(num_samples=self.config.num_importance_samples)
        self._view_float = False
        self._total_steps: Optional[Callable[[], int]] = None
        self._qat_started_at: Optional[int] = None
        self._calibration_steps: Optional[int] = None
        self.quantization_loss_warned = False

        self.viewer_float_weights = ViewerCheckbox(
            name="Show float weights (not quantized)",
            default_value=False,
            cb_hook=lambda element: setattr(self, "_view_float", bool(element.value)),
        )
        self.add_size_viewer_elements()

    def _build_fields(self) -> None:
        """The coarse and fine fields, quantized as the options say (float when quantize is off)."""
        cfg = self.config
        activation_bits = cfg.activation_bits or cfg.bits
        ranges = cfg.activation_range if cfg.activation_range != "auto" else ("max" if activation_bits >= 8 else "mse")
        spec = QuantSpec(
            cfg.bits, cfg.fuse_relu, cfg.learned_weight_scales, ranges, cfg.weight_range, cfg.activation_bits
        )
        edge_spec = spec.with_bits(cfg.edge_bits) if cfg.edge_bits else spec
        trunk_specs = {i: spec.with_bits(cfg.high_precision_bits) for i in cfg.trunk_high_precision_layers()}
        self.field_coarse = self._make_field(spec, edge_spec, trunk_specs)
        self.field_fine = self._make_field(spec, edge_spec, trunk_specs)
        if not cfg.quantize:
            set_quantization(self, False)

    def _make_field(
        self, spec: QuantSpec, edge_spec: QuantSpec, trunk_layer_specs: Dict[int, QuantSpec]
    ) -> QuantNeRFField:
        cfg = self.config
        return QuantNeRFField(
            spec,
            edge_spec=edge_spec,
            trunk_layer_specs=trunk_layer_specs,
            num_layers=cfg.num_layers,
            layer_width=cfg.layer_width,
            skip_connections=cfg.skip_connections,
            head_width=cfg.head_width,
            position_frequencies=cfg.position_frequencies,
            direction_frequencies=cfg.direction_frequencies,
            integer_inference=cfg.integer_inference,
        )

    # -- training schedule ----------------------------------------------------------------------
    def float_steps(self) -> int:
        """Steps trained in float before fake quantization switches on."""
        fraction = self.config.qat_start_fraction
        if fraction is None or self._total_steps is None:
            return self.config.float_warmup_steps
        return int(fraction * self._total_steps())

    def quantizing_at(self, step: int) -> bool:
        """Whether training step ``step`` runs quantized. The step at which quantization first switched
        on is kept (and saved in checkpoints), so a re-planned or resumed run never switches it off
        again or restarts calibration."""
        if not self.config.quantize:
            return False
        if self._qat_started_at is None and step >= self.float_steps():
            self.start_quantization(step)
        return self._qat_started_at is not None and step >= self._qat_started_at

    def start_quantization(self, step: int) -> None:
        """Quantize from ``step`` on, unless quantization has started already. Called by the schedule,
        and by a run with a time budget once that fraction of its time has passed (quantized steps are
        slower, so a start planned in steps alone would leave the quantized phase too few of them)."""
        if not self.config.quantize or self._qat_started_at is not None:
            return
        self._qat_started_at = step
        # Ranges are observed for calibration_steps, but for at most a third of the quantized phase
        # planned now: a short run must still train that long with the ranges frozen.
        planned = self._total_steps() - step if self._total_steps is not None else None
        steps = self.config.calibration_steps
        self._calibration_steps = steps if planned is None else max(1, min(steps, planned // 3))

    @property
    def quantization_started_at(self) -> Optional[int]:
        """The step quantization switched on at (None: not yet)."""
        return self._qat_started_at

    def _apply_quant_schedule(self, step: int) -> None:
        if not self.config.quantize:
            return
        quant_on = self.quantizing_at(step)
        set_quantization(self, quant_on)
        calibration = self._calibration_steps if self._calibration_steps is not None else self.config.calibration_steps
        set_observers(self, quant_on and step < self._qat_started_at + calibration)

    def get_extra_state(self) -> Dict[str, Any]:
        return {"qat_started_at": self._qat_started_at, "calibration_steps": self._calibration_steps}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        self._qat_started_at = state.get("qat_started_at")
        self._calibration_steps = state.get("calibration_steps")  # absent from older checkpoints

    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> List[TrainingCallback]:
        trainer = training_callback_attributes.trainer
        if trainer is not None:
            # Read at every step: a benchmark that re-plans the run length moves the QAT start too.
            self._total_steps = lambda: run_length(trainer)
        callbacks = [
            TrainingCallback(
                where_to_run=[TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                update_every_num_iters=1,
                func=self._apply_quant_schedule,
            )
        ]
        if self.config.quantize and self.config.qat_lr_scale != 1.0:
            optimizers = training_callback_attributes.optimizers
            callbacks.append(
                TrainingCallback(
                    where_to_run=[TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                    update_every_num_iters=1,
                    func=self.scale_learning_rates,
                    args=[optimizers],
                )
            )
        # After the shared ones, at the end of each window: the collapse monitor closes the window it reads.
        loss_check = TrainingCallback(
            where_to_run=[TrainingCallbackLocation.AFTER_TRAIN_ITERATION],
            update_every_num_iters=self.collapse_monitor.check_every,
            func=self.check_quantization_loss,
        )
        return callbacks + self.shared_training_callbacks() + [loss_check]

    def quantization_loss_db(self) -> Optional[float]:
        """Training PSNR lost since quantization switched on (None before a quantized window)."""
        start = self._qat_started_at
        return None if start is None else self.collapse_monitor.psnr_lost_since(start)

    def check_quantization_loss(self, step: int) -> None:
        """Warn once (one line) when quantization cost more than ``QUANTIZATION_LOSS_WARNING_DB``."""
        lost = self.quantization_loss_db() if not self.quantization_loss_warned else None
        if lost is None or lost < QUANTIZATION_LOSS_WARNING_DB:
            return
        self.quantization_loss_warned = True
        cfg = self.config
        activation_bits = cfg.activation_bits or cfg.bits
        if activation_bits < 8:
            fix = "--pipeline.model.activation-bits 8 (the file keeps its size) or --pipeline.model.bits 8"
        elif cfg.bits < 8:
            fix = "--pipeline.model.bits 8"
        else:
            fix = "--pipeline.model.quantize False to see what the float field reaches"
        advice = QUANTIZATION_LOSS_ADVICE.format(
            lost=lost, bits=cfg.bits, act=activation_bits, start=self._qat_started_at, fix=fix
        )
        CONSOLE.print(f"[bold yellow]warning: step {step}: " + advice)

    def training_statistics(self) -> Dict[str, Any]:
        return {**super().training_statistics(), "quantization_loss_db": self.quantization_loss_db()}

    def scale_learning_rates(self, optimizers: Optimizers, step: int) -> None:
        """Set every scheduler's initial rate to the configured one, times ``qat_lr_scale`` once
        quantization is on. Derived from the configuration each time, so it never compounds (a
        resumed run's schedulers come back with the scaled rate)."""
        factor = self.config.qat_lr_scale if self.quantizing_at(step) else 1.0
        for name, scheduler in optimizers.schedulers.items():
            base = optimizers.config[name]["optimizer"].lr * factor
            scheduler.base_lrs = [base] * len(scheduler.base_lrs)

    def update_to_step(self, step: int) -> None:
        self._apply_quant_schedule(step)

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        return {"fields": list(self.field_coarse.parameters()) + list(self.field_fine.parameters())}

    def ddp_find_unused_parameters(self) -> bool:
        # Both MLPs take part in every step; only learned weight scales sit idle until QAT starts.
        return self.config.learned_weight_scales

    # -- rendering ------------------------------------------------------------------------------
    def fields_to_compile(self) -> Tuple[TrainingCompiledField, ...]:
        return (self.field_coarse, self.field_fine)

    @contextlib.contextmanager
    def _viewer_precision(self) -> Iterator[None]:
        """While the viewer asks for float weights, render (never train) without fake quantization."""
        if not (self._view_float and not self.training and self.config.quantize):
            yield
            return
        previous = [(module, module.quant_enabled) for module in iter_quant_modules(self)]
        set_quantization(self, False)
        try:
            yield
        finally:
            for module, enabled in previous:
                module.quant_enabled = enabled

    @contextlib.contextmanager
    def rendering_as_trained(self) -> Iterator[None]:
        """Also fake quantization in float instead of integer products."""
        fields = (self.field_coarse, self.field_fine)
        saved = [fld.integer_inference for fld in fields]
        with super().rendering_as_trained():
            try:
                for fld in fields:
                    fld.integer_inference = False
                yield
            finally:
                for fld, enabled in zip(fields, saved, strict=True):
                    fld.integer_inference = enabled

    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Tensor]:
        self.compile_fields_once(ray_bundle.origins.device, self.config.compile)
        for fld in (self.field_coarse, self.field_fine):  # (set on the config, also after loading)
            fld.fused_integer_trunk = self.config.fused_integer_trunk
        with self._viewer_precision():
            return self._render(ray_bundle)

    def _evaluate_field(self, fld: QuantNeRFField, samples: RaySamples) -> Dict[FieldHeadNames, Tensor]:
        """Field outputs in fp32; the MLPs themselves run under bf16 autocast when training on CUDA.
        Rendering skips the samples that cannot change the pixel (:meth:`field_outputs_skipping`)."""
        if not self.training and self.config.skip_hidden_samples:
            return self.field_outputs_skipping(samples, fld.evaluator("density_and_features"), fld.evaluator("color"))
        device = samples.frustums.origins.device
        use_bf16 = self.training and self.config.train_bf16 and device.type == "cuda"
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            outputs = fld(samples)
        return {name: value.float() for name, value in outputs.items()}

    def density_for_occupancy(self, positions: Tensor) -> Tensor:
        """Both fields' densities: a cell is empty only where the coarse and the fine field agree."""
        coarse = self.field_coarse.eager("density_and_features", positions)[0]
        return torch.maximum(coarse, self.field_fine.eager("density_and_features", positions)[0])

    def _render(self, ray_bundle: RayBundle) -> Dict[str, Tensor]:
        rays = self.sampling_rays(ray_bundle)
        grid = self.marching_grid()
        if grid is not None:  # the fine field alone, at even steps through occupied cells
            fine = self.field_fine
            density, colour = fine.evaluator("density_and_features"), fine.evaluator("color")
            return self.render_marching(rays.bundle, grid, density, colour)
        # Counts from the config, not the samplers' own: a loaded file can render with other counts.
        samples_coarse = self.sampler_uniform(rays.bundle, num_samples=self.config.num_coarse_samples)
        out_coarse = self._evaluate_field(self.field_coarse, samples_coarse)
        weights_coarse = samples_coarse.get_weights(out_coarse[FieldHeadNames.DENSITY])
        samples_fine = self.sampler_pdf(
            rays.bundle, samples_coarse, weights_coarse, num_samples=self.config.num_importance_samples
        )
        out_fine = self._evaluate_field(self.field_fine, samples_fine)
        return {
            **self._fine_outputs(rays, ray_bundle, samples_fine, out_fine),
            "rgb_coarse": self.renderer_rgb(rgb=out_coarse[FieldHeadNames.RGB], weights=weights_coarse),
            "accumulation_coarse": weights_coarse.sum(dim=-2),
        }

    def _fine_outputs(
        self, rays: SamplingRays, ray_bundle: RayBundle, samples: RaySamples, out: Dict[FieldHeadNames, Tensor]
    ) -> Dict[str, Tensor]:
        """Colour, accumulation and world depth of the rendered field's samples."""
        weights = samples.get_weights(out[FieldHeadNames.DENSITY])
        accumulation = weights.sum(dim=-2)
        midpoints = (samples.frustums.starts + samples.frustums.ends) / 2
        distances = rays.world_distance(midpoints, ray_bundle, self.ndc)
        depth = (weights * distances).sum(dim=-2) / accumulation.clamp_min(1e-10)
        rgb = self.renderer_rgb(rgb=out[FieldHeadNames.RGB], weights=weights)
        return {"rgb": rgb, "accumulation": accumulation, "depth": depth}

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        image = batch["image"].to(outputs["rgb"].device)
        return self.rgb_losses(outputs, image, {"rgb_loss_coarse": "rgb_coarse", "rgb_loss_fine": "rgb"})

    def get_image_metrics_and_images(
        self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        metrics, images = super().get_image_metrics_and_images(outputs, batch)
        image = self.renderer_rgb.blend_background(batch["image"].to(outputs["rgb"].device))
        if "rgb_coarse" in outputs:  # (renders that march occupied space have no coarse pass)
            metrics["coarse_psnr"] = image_psnr(image, outputs["rgb_coarse"])
        return metrics, images

    # -- compressed form ------------------------------------------------------------------------
    def is_quantized(self) -> bool:
        """Whether the fields currently run quantized (False during the float warm-up)."""
        return all(m.quant_enabled for m in iter_quant_modules(self))


def image_psnr(gt: Tensor, pred: Tensor) -> float:
    mse = torch.mean((pred.clamp(0, 1) - gt) ** 2)
    return float(-10.0 * torch.log10(mse.clamp_min(1e-10)))
