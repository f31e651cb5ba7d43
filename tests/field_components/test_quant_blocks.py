"""The quantized Linear block: round trip, straight-through gradients, per-channel scales, fusion."""

from __future__ import annotations

import pytest
import torch

from nerfqat_plugin.field_components.quant_mlp import QuantLinear, QuantMLP, QuantSpec, set_observers
from nerfqat_plugin.field_components.quantizers import (
    ActivationQuantizer,
    PerChannelWeightQuantizer,
    mse_clipped_range,
)


@pytest.mark.parametrize("bits", [4, 5, 6, 7, 8])
def test_weight_round_trip_is_integers_times_per_channel_scale(bits: int) -> None:
    torch.manual_seed(bits)
    weight = torch.randn(16, 9)
    quantizer = PerChannelWeightQuantizer(16, bits)
    fake = quantizer(weight)
    integers = quantizer.integer_weight(weight)
    qmax = 2 ** (bits - 1) - 1
    assert integers.abs().max() <= qmax
    assert torch.equal(integers.abs().amax(dim=1), torch.full((16,), qmax, dtype=torch.int32))
    assert torch.allclose(fake, integers.float() * quantizer.scale[:, None], atol=0, rtol=0)
    # Error of each element is at most half a quantization step of its own row.
    assert torch.all((fake - weight).abs() <= quantizer.scale[:, None] / 2 + 1e-6)


def test_per_channel_scales_follow_each_row() -> None:
    # Its own generator: the row maxima (and so the factor below) must not depend on the tests run before.
    weight = torch.randn(4, 32, generator=torch.Generator().manual_seed(0)).clamp(-1.0, 1.0)
    weight[:, 0] = 1.0  # every row reaches 1, row 1 reaches 10
    weight[1] *= 10.0
    quantizer = PerChannelWeightQuantizer(4, 8)
    quantizer(weight)
    expected = (weight.abs().amax(dim=1) / 127).half().float()
    assert torch.equal(quantizer.scale, expected)
    assert quantizer.scale[1] > 5 * quantizer.scale[0]


def test_straight_through_gradient() -> None:
    weight = torch.randn(8, 8, requires_grad=True)
    PerChannelWeightQuantizer(8, 4)(weight).mul(torch.arange(8.0)).sum().backward()
    assert torch.equal(weight.grad, torch.arange(8.0).expand(8, 8))

    x = torch.linspace(-1.0, 3.0, 101, requires_grad=True)
    act = ActivationQuantizer(8)
    act.train()
    act(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # inside the observed range the gradient passes
    act.eval()
    x2 = torch.tensor([5.0, 1.0], requires_grad=True)  # 5.0 lies outside the frozen range
    act(x2).sum().backward()
    assert x2.grad.tolist() == [0.0, 1.0]


def _block_with_identity(fuse: bool) -> QuantLinear:
    block = QuantLinear(4, 4, QuantSpec(bits=8, fuse_relu=fuse), relu=True)
    with torch.no_grad():
        block.linear.weight.copy_(torch.eye(4))
        block.linear.bias.zero_()
    return block


def test_fused_block_spends_all_levels_on_non_negative_values() -> None:
    pre_activation = torch.linspace(-2.0, 1.0, 4000).reshape(-1, 4)
    fused, unfused = _block_with_identity(True), _block_with_identity(False)
    fused.train()
    unfused.train()
    out_fused, out_unfused = fused(pre_activation), unfused(pre_activation)

    negative = pre_activation < 0
    assert torch.all(out_fused[negative] == 0) and torch.all(out_unfused[negative] == 0)
    assert torch.all(out_fused >= 0) and torch.all(out_unfused >= 0)
    # Fused: the quantizer saw only [0, 1]; unfused: it saw [-2, 1], a 3x coarser step.
    assert int(fused.output_quantizer.zero_point) == 0
    assert int(unfused.output_quantizer.zero_point) > 0
    assert unfused.output_quantizer.scale > 2.5 * fused.output_quantizer.scale
    positive = ~negative
    err_fused = (out_fused - pre_activation.clamp_min(0))[positive].abs().max()
    err_unfused = (out_unfused - pre_activation.clamp_min(0))[positive].abs().max()
    assert err_unfused > 2.5 * err_fused


def test_observers_freeze_and_quantization_switches_off() -> None:
    mlp = QuantMLP(3, 2, 8, QuantSpec(bits=8), out_dim=2)
    mlp.train()
    mlp(torch.randn(64, 3))
    set_observers(mlp, False)
    frozen = mlp.layers[0].output_quantizer.scale.clone()
    mlp(10 * torch.randn(64, 3))
    assert torch.equal(mlp.layers[0].output_quantizer.scale, frozen)
    x = torch.randn(5, 3)
    quantized = mlp(x)
    for block in mlp.blocks():
        block.quant_enabled = False
    mlp.quant_enabled = False
    assert not torch.allclose(mlp(x), quantized)


def test_quantization_state_survives_state_dict() -> None:
    a = QuantMLP(3, 2, 8, QuantSpec(bits=6), out_dim=2)
    set_observers(a, False)
    a.layers[1].quant_enabled = False
    b = QuantMLP(3, 2, 8, QuantSpec(bits=6), out_dim=2)
    b.load_state_dict(a.state_dict())
    assert b.layers[1].quant_enabled is False
    assert b.layers[0].output_quantizer.observer_enabled is False


@pytest.mark.parametrize("bits", [1, 3, 9, 16])
def test_unsupported_bits_are_rejected(bits: int) -> None:
    with pytest.raises(ValueError, match="bits"):
        QuantSpec(bits=bits)


def test_learned_scales_start_at_max_over_qmax_learn_and_stay_fp16() -> None:
    torch.manual_seed(0)
    quantizer = PerChannelWeightQuantizer(4, bits=4, learn_scale=True)
    weight = torch.randn(4, 16, requires_grad=True)
    quantizer.initialize_scale(weight)
    expected = (weight.detach().abs().amax(dim=1) / 7).half().float()
    out = quantizer(weight)
    assert torch.allclose(quantizer.scale, expected, rtol=1e-3)
    assert torch.equal(quantizer.scale, quantizer.scale.half().float())  # what the file stores
    integers = torch.round(out / quantizer.scale[:, None])
    assert torch.equal(out, integers * quantizer.scale[:, None]) and integers.abs().max() <= 7
    (out * torch.randn_like(out)).sum().backward()
    assert quantizer.log_scale.grad is not None and quantizer.log_scale.grad.abs().sum() > 0
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    before = quantizer.log_scale.detach().clone()
    quantizer.initialize_scale(weight * 10)  # only once
    assert torch.equal(quantizer.log_scale.detach(), before)


def test_learned_scales_survive_a_checkpoint() -> None:
    block = QuantLinear(8, 4, QuantSpec(bits=4, learned_weight_scales=True), relu=True)
    set_observers(block, True)
    from nerfqat_plugin.field_components.quant_mlp import set_quantization

    set_quantization(block, True)
    restored = QuantLinear(8, 4, QuantSpec(bits=4, learned_weight_scales=True), relu=True)
    restored.load_state_dict(block.state_dict())
    assert restored.weight_quantizer.scale_initialized
    assert torch.equal(restored.weight_quantizer.log_scale, block.weight_quantizer.log_scale)


def test_mse_range_clips_outliers_and_quantizes_the_bulk_better_than_max() -> None:
    torch.manual_seed(0)
    x = torch.randn(10_000).square()  # heavy-tailed non-negative activations: the maximum is an outlier
    errors = {}
    for method in ("max", "mse"):
        quantizer = ActivationQuantizer(4, range_method=method)
        quantizer.train()
        y = quantizer(x)
        errors[method] = (y - x).square().mean().item()
        if method == "max":
            assert quantizer.running_max.item() == pytest.approx(x.max().item())
        else:
            assert 1.0 <= quantizer.running_max.item() < 0.8 * x.max().item()  # clipped, not below the bulk
    assert errors["mse"] < 0.8 * errors["max"]
    with pytest.raises(ValueError, match="max or mse"):
        ActivationQuantizer(4, range_method="median")


def test_mse_range_reads_every_channel_of_a_large_batch() -> None:
    """A training batch's activations are [samples, channels] with far more than 65,536 values: the
    values the error is measured on must come from every channel, not from the few that a stride
    which is a multiple of the width lands on. Here channel 0 is a dead ReLU (all zeros): read alone
    it makes every clipped range look exact, and the narrowest (1/16 of the maximum) would win."""
    x = torch.rand(65_536, 16, generator=torch.Generator().manual_seed(0))
    x[:, 0] = 0.0
    lo, hi = mse_clipped_range(x, x.min(), x.max(), 0, 15)
    assert float(lo) == 0.0 and float(hi) > 0.75 * float(x.max())


def test_mse_weight_range_clips_row_outliers_and_lowers_the_error() -> None:
    torch.manual_seed(0)
    weight = torch.randn(8, 256)
    weight[:4, 0] = 8.0  # rows 0-3: one outlier sets max |w|; rows 4-7: Gaussian only
    errors, scales = {}, {}
    for method in ("max", "mse"):
        quantizer = PerChannelWeightQuantizer(8, bits=4, range_method=method)
        errors[method] = (quantizer(weight) - weight).square().sum(dim=1)
        scales[method] = quantizer.scale.clone()
    assert torch.all(errors["mse"] <= errors["max"] + 1e-6)  # never worse, row by row
    assert torch.all(errors["mse"][:4] < 0.8 * errors["max"][:4])  # the outliers are clipped
    assert torch.all(scales["mse"][:4] < 0.8 * scales["max"][:4])
    assert torch.all(scales["mse"] >= 0.5 * scales["max"] - 1e-6)  # the search stops at half the range
    with pytest.raises(ValueError, match="max or mse"):
        PerChannelWeightQuantizer(8, bits=4, range_method="median")


def test_activation_bits_differ_from_weight_bits() -> None:
    block = QuantLinear(8, 4, QuantSpec(bits=4, activation_bits=8), relu=True)
    assert block.weight_quantizer.quant_max == 7
    assert block.output_quantizer is not None and block.output_quantizer.quant_max == 255
    with pytest.raises(ValueError, match="activation bits"):
        QuantSpec(bits=4, activation_bits=2)
