"""Turning a module holding :class:`QuantLinear` blocks into file tensors and back.

Every QuantLinear weight whose block is quantized is stored as bit-packed integers plus one fp16
scale per output channel, and its bias as fp16 (the blocks train with exactly these fp16 values);
everything else the forward pass needs (biases, activation scales and
zero points, float weights of unquantized models) is stored as-is. Observer statistics and other
training-only state are left out.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
from torch import nn

from nerfqat_plugin.compression.bitpack import decode_integers, encode_integers
from nerfqat_plugin.field_components.quant_mlp import QuantLinear, QuantMLP, set_observers
from nerfqat_plugin.field_components.quantizers import ActivationQuantizer

_TRAINING_ONLY_SUFFIXES = ("running_min", "running_max", "_extra_state", "log_scale")

Layout = Dict[str, Dict[str, Any]]
"""Encoding of every tensor that is not stored as-is (``raw``, the default)."""


def encode_quantized_module(module: nn.Module, prefix: str) -> Tuple[Dict[str, torch.Tensor], Layout]:
    """Encode ``module``'s inference state; tensor names are ``prefix + state_dict key``."""
    packed_weights: Dict[str, QuantLinear] = {}
    half_precision = set()  # biases and weight scales of quantized blocks: the blocks use fp16 values
    unused_prefixes = []  # quantizer state of blocks that run in float is not needed to render
    for name, child in module.named_modules():
        dot = f"{name}." if name else ""
        if isinstance(child, QuantLinear) and child.quant_enabled:
            packed_weights[f"{dot}linear.weight"] = child
            half_precision.update({f"{dot}linear.bias", f"{dot}weight_quantizer.scale"})
        elif isinstance(child, QuantLinear):
            unused_prefixes += [f"{dot}weight_quantizer.", f"{dot}output_quantizer."]
        elif isinstance(child, QuantMLP) and not child.quant_enabled:
            unused_prefixes.append(f"{dot}input_quantizer.")

    tensors: Dict[str, torch.Tensor] = {}
    layout: Layout = {}
    for key, value in module.state_dict().items():
        if key.endswith(_TRAINING_ONLY_SUFFIXES) or key.startswith(tuple(unused_prefixes)):
            continue
        if key in packed_weights:
            block = packed_weights[key]
            integers = block.integer_weight()
            tensors[prefix + key], layout[prefix + key] = encode_integers(integers, block.spec.bits, signed=True)
        elif key in half_precision:
            tensors[prefix + key] = value.detach().cpu().half().contiguous()
        else:
            tensors[prefix + key] = value.detach().cpu().contiguous()
    return tensors, layout


def decode_quantized_module(module: nn.Module, prefix: str, tensors: Dict[str, torch.Tensor], layout: Layout) -> None:
    """Load tensors written by :func:`encode_quantized_module` into a freshly built ``module``.

    Quantized weights become ``integers * scale`` with the scale frozen, and activation observers
    are frozen, so the rebuilt module computes exactly what the trained quantized one did.
    """
    state: Dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if not name.startswith(prefix):
            continue
        key = name[len(prefix) :]
        spec = layout.get(name, {"encoding": "raw"})
        if spec["encoding"] == "packed-int":
            integers = decode_integers(tensor, spec)
            scale_key = prefix + key.replace("linear.weight", "weight_quantizer.scale")
            tensor = integers.to(torch.float32) * tensors[scale_key].to(torch.float32)[:, None]
        elif spec["encoding"] != "raw":
            raise ValueError(f"unknown tensor encoding {spec['encoding']!r} of {name}")
        state[key] = tensor.float() if tensor.dtype == torch.float16 else tensor
    missing, unexpected = module.load_state_dict(state, strict=False)
    real_missing = [k for k in missing if not k.endswith(_TRAINING_ONLY_SUFFIXES) and "quantizer." not in k]
    if real_missing or unexpected:
        raise ValueError(f"compressed state does not match the model: missing {real_missing}, unexpected {unexpected}")
    for child in module.modules():
        if isinstance(child, QuantLinear):
            child.weight_quantizer.scale_frozen = True
        if isinstance(child, ActivationQuantizer):
            # Stored scales are final; the running range is not needed any more.
            child.running_min.fill_(0.0)
            child.running_max.fill_(0.0)
    set_observers(module, False)
