"""The learned-index codebook grid (vqad's field component)."""

from __future__ import annotations

import pytest
import torch

from nerfqat_plugin.compression.bitpack import pack_unsigned, unpack_unsigned
from nerfqat_plugin.field_components.codebook_grid import LearnedIndexCodebookGrid


def _grid(bits: int = 4) -> LearnedIndexCodebookGrid:
    torch.manual_seed(0)
    return LearnedIndexCodebookGrid(resolutions=(3, 5), bits=bits, feature_dim=6)


def test_straight_through_gradient_reaches_codebook_and_logits() -> None:
    grid = _grid()
    grid.train()
    out = grid(torch.rand(32, 3))
    out.square().sum().backward()
    for level in range(grid.num_levels):
        assert grid.codebooks[level].grad.abs().sum() > 0
        assert grid.logits[level].grad.abs().sum() > 0


def test_training_forward_equals_hard_lookup_and_hard_equals_argmax_table() -> None:
    grid = _grid()
    positions = torch.rand(50, 3)
    grid.train()
    soft_forward = grid(positions)
    grid.eval()
    hard_forward = grid(positions)
    assert torch.allclose(soft_forward, hard_forward, atol=1e-6)  # the STE's forward value is the hard one

    # Reference: trilinear interpolation of codebook[argmax] on the vertex lattice, level by level.
    expected = torch.zeros(50, 6)
    for level, res in enumerate(grid.resolutions):
        table = grid.codebooks[level][grid.hard_indices(level)].reshape(res, res, res, 6)
        x = positions * (res - 1)
        i0 = x.floor().long().clamp(max=res - 2)
        f = x - i0
        for corner in range(8):
            c = torch.tensor([corner >> 2 & 1, corner >> 1 & 1, corner & 1])
            w = torch.where(c.bool(), f, 1 - f).prod(-1, keepdim=True)
            idx = i0 + c
            expected += w * table[idx[:, 0], idx[:, 1], idx[:, 2]]
    assert torch.allclose(hard_forward, expected, atol=1e-5)


def test_vertex_values_are_reproduced_exactly_at_lattice_points() -> None:
    grid = _grid()
    grid.eval()
    res = grid.resolutions[0]
    vertex = torch.tensor([[1, 2, 0]])
    features = grid.level_features(vertex.float() / (res - 1), 0, hard=True)
    flat_id = (1 * res + 2) * res + 0
    assert torch.allclose(features[0], grid.codebooks[0][grid.hard_indices(0)[flat_id]])


def test_fewer_levels_is_a_coarser_operating_point() -> None:
    grid = _grid()
    grid.eval()
    positions = torch.rand(10, 3)
    assert torch.allclose(grid(positions, num_levels=1), grid.level_features(positions, 0, hard=True))
    with pytest.raises(ValueError, match="num_levels"):
        grid(positions, num_levels=3)


@pytest.mark.parametrize("bits", [4, 5, 6, 7, 8])
def test_hard_indices_round_trip_through_bit_packing(bits: int) -> None:
    grid = _grid(bits)
    indices = grid.hard_indices(1)
    assert indices.max() < 2**bits
    packed = pack_unsigned(indices, bits)
    assert packed.numel() == (indices.numel() * bits + 7) // 8
    assert torch.equal(unpack_unsigned(packed, bits, indices.numel()), indices)


def test_bad_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        LearnedIndexCodebookGrid(resolutions=(1,), bits=4, feature_dim=2)
    with pytest.raises(ValueError, match="bits"):
        LearnedIndexCodebookGrid(resolutions=(4,), bits=0, feature_dim=2)
