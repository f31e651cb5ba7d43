"""fp16 rounding computed on fp32 bits (what compiled training uses) against the cast itself."""

from __future__ import annotations

import torch

from nerfqat_plugin.field_components.half_precision import half_rounded_bits


def _assert_same_as_cast(x: torch.Tensor) -> None:
    expected, got = x.half().float(), half_rounded_bits(x)
    both_nan = torch.isnan(expected) & torch.isnan(got)
    assert ((expected == got) | both_nan).all()
    assert torch.equal(torch.signbit(expected[~both_nan]), torch.signbit(got[~both_nan]))


def test_every_fp16_value_its_midpoints_and_their_neighbours_round_as_the_cast() -> None:
    every = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(torch.float16).float()
    finite = every[torch.isfinite(every)].sort().values
    midpoints = ((finite[1:].double() + finite[:-1].double()) / 2).float()  # ties go to even
    _assert_same_as_cast(every)
    _assert_same_as_cast(midpoints)
    _assert_same_as_cast(torch.nextafter(midpoints, torch.tensor(float("inf"))))
    _assert_same_as_cast(torch.nextafter(midpoints, torch.tensor(float("-inf"))))


def test_wide_range_and_edge_values_round_as_the_cast() -> None:
    g = torch.Generator().manual_seed(0)
    _assert_same_as_cast(torch.randn(1 << 18, generator=g) * torch.exp(8 * torch.randn(1 << 18, generator=g)))
    edges = [65504.0, 65519.0, 65520.0, 1e30, float("inf"), float("nan"), 0.0, -0.0, 2.0**-14, 2.0**-25, 1e-40]
    _assert_same_as_cast(torch.tensor(edges + [-e for e in edges]))
