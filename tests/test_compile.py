"""The compiled fake-quant path computes what PyTorch's native fake-quant kernels compute."""

from __future__ import annotations

import torch

from nerfqat_plugin.field_components.compile import compile_fake_quant, fake_quant_per_tensor_cachemask
from nerfqat_plugin.field_components.quant_mlp import QuantMLP, QuantSpec, set_observers


def test_pointwise_form_matches_native_kernel_exactly() -> None:
    torch.manual_seed(0)
    x = torch.randn(200_000) * 4
    x[:1000] = torch.arange(1000) * 0.0234 * 0.5  # many exact ties (x / scale = k + 0.5)
    for scale, zero_point, qmin, qmax in ((0.0234, 37, 0, 255), (0.5, 0, 0, 15), (0.01, 128, 0, 255)):
        s, zp = torch.tensor(scale), torch.tensor(zero_point, dtype=torch.int32)
        native = torch.fake_quantize_per_tensor_affine(x, s, zp, qmin, qmax)
        ours, mask = fake_quant_per_tensor_cachemask(x, s, zp, torch.ones(1), qmin, qmax)
        assert torch.equal(native, ours)
        inside = (torch.round(x / scale) + zero_point >= qmin) & (torch.round(x / scale) + zero_point <= qmax)
        assert torch.equal(mask, inside)


def test_compiled_mlp_equals_default_compile_including_gradients() -> None:
    torch.manual_seed(0)
    mlp = QuantMLP(15, 3, 32, QuantSpec(bits=6, fuse_relu=False), out_dim=4, skip_connections=(2,))
    mlp.train()
    mlp(torch.randn(256, 15))
    set_observers(mlp, False)
    x = 3 * torch.randn(256, 15)

    def run(fn):
        mlp.zero_grad()
        inp = x.clone().requires_grad_()
        out = fn(inp)
        out.square().sum().backward()
        return out.detach(), inp.grad, [p.grad.clone() for p in mlp.parameters()]

    fused, default = run(compile_fake_quant(mlp)), run(torch.compile(mlp))
    assert torch.equal(fused[0], default[0]) and torch.equal(fused[1], default[1])
    assert all(torch.equal(a, b) for a, b in zip(fused[2], default[2], strict=True))
