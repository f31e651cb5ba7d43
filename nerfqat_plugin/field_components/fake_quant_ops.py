"""PyTorch's native per-tensor fake-quant kernel as a custom op that ``torch.compile`` can trace.

``torch.fake_quantize_per_tensor_affine`` with tensor qparams dispatches, when its input needs a
gradient, to aten's ``_fake_quantize_per_tensor_affine_cachemask_tensor_qparams``, which has no
fake-tensor implementation for symbolic shapes. Training compiles the coarse and fine sample counts
into one dynamic-shape graph, so dynamo broke the graph at every activation quantizer: the
fields ran as many small graphs with eager work between them (for int4 the per-layer frames also
exceeded dynamo's recompile limit), and the QAT phase ran at about half the speed
(docs/measurements.md). Weights have static shapes, so the
per-channel weight op traces as it is.

Registering the kernel as a :func:`torch.library.custom_op` with a fake implementation (output
shaped like the input) and an autograd formula (the kernel's straight-through mask) keeps the same
fused kernel and values while the quantized MLP compiles into one graph.
"""

from __future__ import annotations

from typing import Any, Tuple

import torch
from torch import Tensor


@torch.library.custom_op("nerfqat::fake_quant_per_tensor", mutates_args=())
def _fake_quant_per_tensor(
    x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int
) -> Tuple[Tensor, Tensor]:
    enabled = torch.ones(1, dtype=torch.long, device=x.device)
    return torch.ops.aten._fake_quantize_per_tensor_affine_cachemask_tensor_qparams(
        x, scale, zero_point, enabled, quant_min, quant_max
    )


@_fake_quant_per_tensor.register_fake
def _(x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int) -> Tuple[Tensor, Tensor]:
    return torch.empty_like(x), torch.empty_like(x, dtype=torch.bool)


def _save_mask(ctx: Any, inputs: Tuple[Any, ...], output: Tuple[Tensor, Tensor]) -> None:
    ctx.save_for_backward(output[1])


def _straight_through(ctx: Any, grad_output: Tensor, _grad_mask: Any) -> Tuple[Any, ...]:
    """Gradient passes where the value was representable and is zero where it was clamped; scale,
    zero point and range get none (as with the native op)."""
    (mask,) = ctx.saved_tensors
    return grad_output * mask, None, None, None, None


_fake_quant_per_tensor.register_autograd(_straight_through, setup_context=_save_mask)


def fake_quantize_per_tensor(x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int) -> Tensor:
    """Same values and gradient as ``torch.fake_quantize_per_tensor_affine`` with tensor qparams."""
    return _fake_quant_per_tensor(x, scale, zero_point, quant_min, quant_max)[0]
