"""``torch.compile`` for fake-quantized MLPs, with per-tensor fake quantization fused into its neighbours.

Inductor has no lowering for ``_fake_quantize_per_tensor_affine_cachemask_tensor_qparams`` (what
``torch.fake_quantize_per_tensor_affine`` becomes under autograd), so by default every activation
quantizer runs as a separate kernel: one more full read and write of each layer's activations in the
forward pass, plus a mask. Here that op is decomposed into the pointwise operations ATen's kernel
performs (the same arithmetic, in the same order), which Inductor fuses with the ReLU before it and
the matmul epilogue. Eager execution keeps PyTorch's native kernel; tests check both agree exactly.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence, Tuple, TypeVar

import torch
from torch import Tensor

aten = torch.ops.aten
FnT = TypeVar("FnT", bound=Callable[..., Any])


def fake_quant_per_tensor_cachemask(
    x: Tensor, scale: Tensor, zero_point: Tensor, fake_quant_enabled: Tensor, quant_min: int, quant_max: int
) -> Tuple[Tensor, Tensor]:
    """Pointwise form of ATen's per-tensor fake quantization with tensor qparams; returns
    ``(fake-quantized x, mask of values inside the integer range)`` (the mask gates the gradient)."""
    inv_scale = 1.0 / scale.float()
    q = torch.round(x.float() * inv_scale) + zero_point.float()  # round half to even, like nearbyint
    mask = (q >= quant_min) & (q <= quant_max)
    out = ((q.clamp(quant_min, quant_max) - zero_point.float()) * scale.float()).to(x.dtype)
    enabled = fake_quant_enabled.reshape(()) != 0
    return torch.where(enabled, out, x), mask | ~enabled


NATIVE_ENV = "NERFQAT_NATIVE_FAKE_QUANT_IN_COMPILE"
"""Set to 1 to keep ATen's unfused fake-quant kernel inside compiled graphs (for A/B benchmarks)."""


def _backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.decomposition import select_decomp_table

    if os.environ.get(NATIVE_ENV) == "1":
        return compile_fx(gm, example_inputs)
    table = dict(select_decomp_table())
    table[aten._fake_quantize_per_tensor_affine_cachemask_tensor_qparams.default] = fake_quant_per_tensor_cachemask
    return compile_fx(gm, example_inputs, decompositions=table)


def compile_fake_quant(fn: FnT) -> FnT:
    """``torch.compile(fn)`` with fake quantization fused (see module docstring)."""
    return torch.compile(fn, backend=_backend)  # type: ignore[return-value]
