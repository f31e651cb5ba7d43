"""Parameters trained as the fp16 values their compressed file stores.

A field exported with fp16 weights renders exactly like the trained model only if the model already
computes with fp16-rounded weights. :func:`round_to_half` does that rounding with a straight-through
gradient (the fp32 master weights keep learning), and :func:`train_as_half` attaches it to every
Linear layer of a module through ``torch.nn.utils.parametrize``, so any decoder MLP (nerfstudio's
:class:`~nerfstudio.field_components.mlp.MLP` included) can be stored in fp16 losslessly.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils import parametrize


def round_to_half(x: Tensor) -> Tensor:
    """``x`` rounded to the nearest fp16 value, with an identity (straight-through) gradient."""
    return x + (x.detach().half().float() - x.detach())


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
