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


@torch.library.custom_op("nerfqat::half_rounded_copy", mutates_args=())
def _half_rounded_copy(x: Tensor) -> Tensor:
    # An opaque op: Inductor removes a cast to fp16 and back inside its fused kernels (whatever
    # emulate_precision_casts says, in some torch versions), so compiled training would otherwise
    # see unrounded values where the file stores fp16.
    return x.to(torch.float16).to(x.dtype, copy=True)


@_half_rounded_copy.register_fake
def _(x: Tensor) -> Tensor:
    return torch.empty_like(x)


def round_to_half(x: Tensor) -> Tensor:
    """``x`` rounded to the nearest fp16 value, with an identity (straight-through) gradient."""
    detached = x.detach()
    return x + (_half_rounded_copy(detached) - detached)


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
