"""Parameters trained as the fp16 values their compressed file stores.

A field exported with fp16 weights renders exactly like the trained model only if the model already
computes with fp16-rounded weights. :func:`round_to_half` does that rounding with a straight-through
gradient (the fp32 master weights keep learning), and :func:`train_as_half` attaches it to every
Linear layer of a module through ``torch.nn.utils.parametrize``, so any decoder MLP (nerfstudio's
:class:`~nerfstudio.field_components.mlp.MLP` included) can be stored in fp16 losslessly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize


def half_rounded_bits(x: Tensor) -> Tensor:
    """``x.half().float()`` for fp32 ``x``, computed on its bits (ties to even; fp16 subnormals,
    overflow to inf and NaN as the cast gives them)."""
    bits = x.view(torch.int32)
    # the 23-bit mantissa rounded to fp16's 10 bits; a carry rightly bumps the exponent
    normal = ((bits + 0xFFF + ((bits >> 13) & 1)) & -0x2000).view(torch.float32)
    subnormal = torch.round(x * 2.0**24) * 2.0**-24  # below 2^-14 fp16 steps by 2^-24
    rounded = torch.where(x.abs() < 2.0**-14, subnormal, normal)
    rounded = torch.where(x.abs() >= 65520.0, x * float("inf"), rounded)
    return torch.where(torch.isnan(x), x, rounded)


def _half_rounded(x: Tensor) -> Tensor:
    # Inductor removes a cast to fp16 and back inside its fused kernels (torch 2.11 on CUDA, whatever
    # emulate_precision_casts says), and an opaque op would add launches to a host-bound step;
    # integer arithmetic survives compilation and fuses. Eager keeps the cast: one kernel, not a dozen.
    if torch.compiler.is_compiling() and x.dtype == torch.float32:
        return half_rounded_bits(x)
    return x.to(torch.float16).to(x.dtype)


def round_to_half(x: Tensor) -> Tensor:
    """``x`` rounded to the nearest fp16 value, with an identity (straight-through) gradient."""
    detached = x.detach()
    return x + (_half_rounded(detached) - detached)


class HalfPrecisionRounding(nn.Module):
    """Parametrization: the parameter as seen by the forward pass is its fp16-rounded value."""

    def forward(self, x: Tensor) -> Tensor:
        return round_to_half(x)


def train_as_half(module: nn.Module) -> nn.Module:
    """Make every Linear layer of ``module`` compute with fp16-rounded weight and bias; returns it."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear) and not parametrize.is_parametrized(layer):
            for name in ("weight", "bias"):
                if getattr(layer, name, None) is not None:
                    parametrize.register_parametrization(layer, name, HalfPrecisionRounding())
    return module
