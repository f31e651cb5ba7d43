"""AveragedWeights: torch-ema's average as part of a module (buffers, checkpoints, swapping)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nerfqat_plugin.model_components.weight_averaging import AveragedWeights


def _net_and_average(decay: float = 0.5) -> tuple[nn.Linear, AveragedWeights]:
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    return net, AveragedWeights(list(net.parameters()), decay)


def _step(net: nn.Linear, value: float) -> None:
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(value)


def test_average_follows_torch_ema_warmup_and_swaps_in_and_out() -> None:
    net, average = _net_and_average(decay=0.5)
    initial = net.weight.detach().clone()
    _step(net, 1.0)
    average.update()  # n=1: decay min(0.5, 2/11) = 2/11
    expected = initial * 2 / 11 + 1.0 * 9 / 11
    _step(net, 3.0)
    average.update()  # n=2: decay min(0.5, 3/12) = 0.25
    expected = expected * 0.25 + 3.0 * 0.75
    assert average.num_updates == 2
    average.swap_in()
    assert torch.allclose(net.weight, expected)
    with pytest.raises(RuntimeError, match="swapped into the parameters"):
        average.update()
    average.swap_out()
    assert torch.all(net.weight == 3.0)
    with average.applied():
        assert torch.allclose(net.weight, expected)
    assert torch.all(net.weight == 3.0)


def test_swapping_changes_the_weights_version_that_caches_are_keyed_on() -> None:
    from nerfqat_plugin.field_components.weights_version import weights_version

    net, average = _net_and_average()
    _step(net, 1.0)
    average.update()
    before = weights_version(net)
    average.swap_in()  # torch-ema writes through .data, which no version counter sees by itself
    swapped = weights_version(net)
    average.swap_out()
    assert len({before, swapped, weights_version(net)}) == 3


def test_nothing_is_swapped_before_the_first_update() -> None:
    net, average = _net_and_average()
    _step(net, 2.0)
    with average.applied():
        assert torch.all(net.weight == 2.0)


def test_average_survives_a_state_dict_round_trip_and_a_dtype_move() -> None:
    net, average = _net_and_average(decay=0.5)
    for value in (1.0, 2.0, 4.0):
        _step(net, value)
        average.update()
    state = average.state_dict()
    assert sum(key.startswith("shadow_") for key in state) == 2

    other_net, other = _net_and_average(decay=0.5)
    other.load_state_dict(state)
    assert other.num_updates == 3
    _step(other_net, 4.0)
    with other.applied(), average.applied():
        assert torch.equal(other_net.weight, net.weight)

    # After a move the module's buffers are new tensors; updates and swaps must use them.
    other_net.double()
    other.double()
    other.update()
    assert other.get_buffer("shadow_0").dtype == torch.float64
    with other.applied():
        assert other_net.weight.dtype == torch.float64
        assert torch.allclose(other_net.weight, other.get_buffer("shadow_0"))


def test_decay_outside_zero_one_is_rejected() -> None:
    with pytest.raises(ValueError, match="EMA decay must be between 0 and 1"):
        AveragedWeights(list(nn.Linear(2, 2).parameters()), 1.0)
