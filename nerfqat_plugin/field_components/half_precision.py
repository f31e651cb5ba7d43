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


def _half_rounded(x: Tensor) -> Tensor:
    """``x.half().float()`` for fp32 ``x``, computed on its bits. Inductor removes a cast to fp16
    and back inside its fused kernels (in torch 2.11 on CUDA whatever ``emulate_precision_casts``
    says), so compiled training saw unrounded values; an opaque op keeps the cast but breaks the
    fusion of the lookup's backward. Integer arithmetic survives compilation and stays fused."""
    if x.dtype != torch.float32:
        return x.to(torch.float16).to(x.dtype)
    bits = x.view(torch.int32)
    # round the 23-bit mantissa to fp16's 10 bits, ties to even (a carry rightly bumps the exponent)
    normal = ((bits + 0xFFF + ((bits >> 13) & 1)) & -0x2000).view(torch.float32)
    subnormal = torch.round(x * 2.0**24) * 2.0**-24  # below 2^-14 fp16 steps by 2^-24
    rounded = torch.where(x.abs() < 2.0**-14, subnormal, normal)
    rounded = torch.where(x.abs() >= 65520.0, x * float("inf"), rounded)  # fp16 overflows to inf
    return torch.where(torch.isnan(x), x, rounded)


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
