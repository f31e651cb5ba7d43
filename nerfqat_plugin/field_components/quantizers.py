"""Fake quantizers built on PyTorch's native fake-quant ops.

``torch.fake_quantize_per_channel_affine`` and ``torch.fake_quantize_per_tensor_affine`` round in
the forward pass and pass gradients straight through (zeroed outside the representable range), in
one fused kernel each; :mod:`.fake_quant_ops` wraps the per-tensor one so that torch.compile traces it.
The classes here only decide *which* scale and zero point to use.

State that must survive a checkpoint (observed ranges, whether quantization is on) lives in
buffers, as in ``torch.ao.quantization.FakeQuantize``, so ``ns-eval`` and the viewer see the same
quantized model that training ended with.
"""

from __future__ import annotations

import math
from typing import Dict, Literal, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn

from nerfqat_plugin.field_components.fake_quant_ops import fake_quantize_per_tensor
from nerfqat_plugin.field_components.half_precision import round_to_half
from nerfqat_plugin.field_components.ranks import reduce_over_ranks

_EPS = 1e-8
_MIN_FP16_SCALE = 1e-7  # above fp16's smallest subnormal, so a stored scale never becomes 0


def symmetric_range(bits: int) -> Tuple[int, int]:
    """Signed symmetric integer range, e.g. ``(-127, 127)`` for 8 bits, ``(-7, 7)`` for 4 bits."""
    qmax = (1 << (bits - 1)) - 1
    return -qmax, qmax


def unsigned_range(bits: int) -> Tuple[int, int]:
    """Unsigned integer range, e.g. ``(0, 255)`` for 8 bits."""
    return 0, (1 << bits) - 1


RangeMethod = Literal["max", "mse"]


class PerChannelWeightQuantizer(nn.Module):
    """Symmetric per-output-channel weight fake quantizer.

    ``range_method``: ``max`` sets each row's scale to max |w| / qmax; ``mse`` to the clipped range
    with the least squared error (:func:`mse_clipped_row_scale`), for low bit widths. While
    training the scale follows the current weights (weights change every step); a model rebuilt from
    a compressed file freezes it to the stored scale (``scale_frozen``).

    ``learn_scale`` learns the scales instead (LSQ, Esser et al. 2020) through PyTorch's
    ``_fake_quantize_learnable_per_channel_affine``: each row's log-scale is a parameter,
    initialised by :meth:`initialize_scale` from max |w| / qmax when quantization starts, so Adam
    changes scales by relative steps whatever the bit width.
    """

    def __init__(
        self, num_channels: int, bits: int, learn_scale: bool = False, range_method: RangeMethod = "max"
    ) -> None:
        super().__init__()
        if range_method not in ("max", "mse"):
            raise ValueError(f"weight range method must be max or mse, got {range_method!r}")
        self.bits = bits
        self.range_method = range_method
        self.quant_min, self.quant_max = symmetric_range(bits)
        self.register_buffer("scale", torch.ones(num_channels))
        # Symmetric: the zero point is always 0, so it is not part of the saved state.
        self.register_buffer("zero_point", torch.zeros(num_channels, dtype=torch.int32), persistent=False)
        # Python flags, not buffers, so the hot path never synchronises with the GPU to read them.
        self.scale_frozen = False
        self.scale_initialized = False
        self.log_scale: Optional[nn.Parameter] = nn.Parameter(torch.zeros(num_channels)) if learn_scale else None

    def get_extra_state(self) -> Dict[str, bool]:
        return {"scale_frozen": self.scale_frozen, "scale_initialized": self.scale_initialized}

    def set_extra_state(self, state: Dict[str, bool]) -> None:
        self.scale_frozen = bool(state.get("scale_frozen", False))
        self.scale_initialized = bool(state.get("scale_initialized", False))

    def max_scale(self, weight: torch.Tensor) -> torch.Tensor:
        """max |w| / qmax of each row (never below what fp16 can store)."""
        return (weight.detach().float().abs().amax(dim=1) / self.quant_max).clamp_min(_MIN_FP16_SCALE)

    @torch.no_grad()
    def initialize_scale(self, weight: torch.Tensor) -> None:
        """Start learned scales at max |w| / qmax of each row (once; later calls do nothing)."""
        if self.log_scale is None or self.scale_initialized:
            return
        self.log_scale.copy_(self.max_scale(weight).log())
        self.scale_initialized = True

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.log_scale is not None and not self.scale_frozen:
            self.initialize_scale(weight)
            scale = round_to_half(self.log_scale.exp().clamp_min(_MIN_FP16_SCALE))  # stored as fp16
            self.scale.copy_(scale.detach())
            grad_factor = 1.0 / math.sqrt(weight.shape[1] * self.quant_max)  # LSQ's gradient scale
            return torch._fake_quantize_learnable_per_channel_affine(
                weight, scale, self.zero_point.float(), 0, self.quant_min, self.quant_max, grad_factor
            )
        if not self.scale_frozen:
            with torch.no_grad():
                scale = self.max_scale(weight)
                if self.range_method == "mse":
                    scale = mse_clipped_row_scale(weight.detach().float(), scale, self.quant_max)
                # Scales are stored as fp16, so training uses fp16-representable scales too.
                self.scale.copy_(scale.half().float())
        return torch.fake_quantize_per_channel_affine(
            weight, self.scale, self.zero_point, 0, self.quant_min, self.quant_max
        )

    def integer_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """The integers the fake-quantized weight stands for (``fake_quant(w) == q * scale``)."""
        with torch.no_grad():
            return torch.round(self.forward(weight) / self.scale[:, None]).to(torch.int32)


def global_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of ``x`` over every process of the default process group (just ``x`` without one)."""
    lo, hi = torch.aminmax(x)
    bounds = reduce_over_ranks(torch.stack([-lo, hi]), dist.ReduceOp.MAX)
    return -bounds[0], bounds[1]


def mse_clipped_row_scale(
    weight: torch.Tensor, max_scale: torch.Tensor, quant_max: int, candidates: int = 16
) -> torch.Tensor:
    """Per row, the fraction of ``max_scale`` (one of ``candidates`` steps from 1/2 to 1) whose
    symmetric quantization of the row has the least squared error.

    With 4 bits a row has 7 positive levels; the largest weight of 256 sets the step, so most
    weights land on the few levels near zero. Clipping a handful of outliers shrinks the step for
    all the others. Fractions below 1/2 are not searched: they clip a large part of any row.
    """
    fractions = 0.5 + 0.5 * torch.arange(1, candidates + 1, device=weight.device, dtype=torch.float32) / candidates
    scales = max_scale[None, :] * fractions[:, None]  # [candidates, rows]
    q = torch.clamp(torch.round(weight[None] / scales[..., None]), -quant_max, quant_max)
    errors = (q * scales[..., None] - weight[None]).square().sum(dim=2)  # [candidates, rows]
    best = errors.argmin(dim=0, keepdim=True)  # a gather, not a host read (see mse_clipped_range)
    return scales.gather(0, best).squeeze(0).clamp_min(_MIN_FP16_SCALE)


def mse_clipped_range(
    x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, quant_min: int, quant_max: int, candidates: int = 16
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The fraction of ``[lo, hi]`` (one of ``candidates`` steps up to 1) whose fake quantization of
    ``x`` has the least squared error, applied to ``lo`` and ``hi``.

    A few large activations set a per-tensor maximum; with 16 levels (4 bits) that maximum leaves
    most values in the lowest level or two. Clipping the outliers keeps the bulk resolved. The error
    is measured on every channel of evenly strided rows of ``x`` [..., channels], at most 65,536
    values, and summed over DDP ranks, so that every rank picks the same fraction.
    """
    rows = x.reshape(-1, x.shape[-1]) if x.dim() > 0 else x.reshape(1, 1)
    # Whole rows: a stride over the flat values that is a multiple of the width would read one channel.
    flat = rows[:: max(1, rows.shape[0] * rows.shape[1] // 65536)].reshape(-1)
    fractions = torch.arange(1, candidates + 1, device=x.device, dtype=torch.float32) / candidates
    cand_lo, cand_hi = lo.clamp(max=0.0) * fractions, hi.clamp(min=0.0) * fractions
    scale = ((cand_hi - cand_lo) / (quant_max - quant_min)).clamp_min(_EPS)[:, None]
    zero_point = (quant_min - torch.round(cand_lo[:, None] / scale)).clamp(quant_min, quant_max)
    q = torch.clamp(torch.round(flat[None] / scale) + zero_point, quant_min, quant_max)
    errors = reduce_over_ranks(((q - zero_point) * scale - flat[None]).square().sum(dim=1))
    # Gather with a tensor index: indexing with argmin's 0-d tensor reads it on the host, which
    # synchronises with the GPU and breaks torch.compile's graph at every calibration step.
    best = errors.argmin().view(1)
    return cand_lo.gather(0, best).squeeze(0), cand_hi.gather(0, best).squeeze(0)


class ActivationQuantizer(nn.Module):
    """Per-tensor affine activation fake quantizer with an exponential-moving-average range observer.

    ``signed=False`` is for outputs of a fused Linear+ReLU: the observed range starts at 0, so all
    ``2**bits`` levels cover the non-negative values the next layer actually sees.

    ``range_method``: ``max`` observes each batch's min and max; ``mse`` the clipped range with the
    least quantization error (:func:`mse_clipped_range`), for low bit widths.
    """

    def __init__(self, bits: int, averaging_constant: float = 0.01, range_method: RangeMethod = "max") -> None:
        super().__init__()
        if range_method not in ("max", "mse"):
            raise ValueError(f"activation range method must be max or mse, got {range_method!r}")
        self.bits = bits
        self.quant_min, self.quant_max = unsigned_range(bits)
        self.averaging_constant = averaging_constant
        self.range_method = range_method
        self.register_buffer("running_min", torch.tensor(float("inf")))
        self.register_buffer("running_max", torch.tensor(float("-inf")))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int32))
        self.observer_enabled = True

    def get_extra_state(self) -> Dict[str, bool]:
        return {"observer_enabled": self.observer_enabled}

    def set_extra_state(self, state: Dict[str, bool]) -> None:
        self.observer_enabled = bool(state.get("observer_enabled", True))

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Update the range with ``x`` and recompute scale and zero point (asymmetric, 0 exact).

        Under DDP every rank sees a different batch; the batch range is reduced over all ranks first,
        so every rank applies the same update and all hold identical ranges and scales."""
        x = x.detach().float()
        lo, hi = global_range(x)
        if self.range_method == "mse":
            lo, hi = mse_clipped_range(x, lo, hi, self.quant_min, self.quant_max)
        first = torch.isinf(self.running_min)
        a = self.averaging_constant
        self.running_min.copy_(torch.where(first, lo, self.running_min + a * (lo - self.running_min)))
        self.running_max.copy_(torch.where(first, hi, self.running_max + a * (hi - self.running_max)))
        lo = torch.clamp(self.running_min, max=0.0)
        hi = torch.clamp(self.running_max, min=0.0)
        scale = ((hi - lo) / (self.quant_max - self.quant_min)).clamp_min(_EPS)
        zero_point = (self.quant_min - torch.round(lo / scale)).clamp(self.quant_min, self.quant_max)
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point.to(torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.observer_enabled:
            self.observe(x)
        return fake_quantize_per_tensor(x, self.scale, self.zero_point, self.quant_min, self.quant_max)

    def export_state(self) -> Dict[str, torch.Tensor]:
        return {"scale": self.scale.detach().clone(), "zero_point": self.zero_point.detach().clone()}
