"""A multi-level feature grid whose vertices hold learned indices into small codebooks (VQAD).

Variable Bitrate Neural Fields (Takikawa et al. 2022) store, at every grid vertex, a b-bit index
into a per-level codebook of ``2**b`` feature vectors instead of the feature vector itself. The
index is learned: each vertex keeps logits over the codebook; training uses the straight-through
estimator ``one_hot(argmax) - softmax.detach() + softmax`` (hard lookups forward, softmax gradients
backward, so both logits and codebook learn); inference uses only the argmax, which is what gets
stored, bit-packed. Features are trilinearly interpolated per level and summed over levels, so the
first ``k`` levels alone already form a (coarser) field: that is the variable bitrate.

Only the corners a batch touches are gathered, so a step costs ``points x 8 x 2**b`` per level,
not ``vertices x 2**b``.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_CORNERS = torch.tensor([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)])


def _corner_lookup(positions: Tensor, resolution: int) -> tuple[Tensor, Tensor]:
    """Flat vertex ids [N, 8] of the cell around each position in [0, 1]^3, and trilinear weights [N, 8]."""
    scaled = positions.clamp(0.0, 1.0) * (resolution - 1)
    base = scaled.floor().clamp(max=resolution - 2).long()
    frac = scaled - base
    corners = base[:, None, :] + _CORNERS.to(positions.device)[None]
    ids = (corners[..., 0] * resolution + corners[..., 1]) * resolution + corners[..., 2]
    select = _CORNERS.to(positions.device)[None].bool()
    weights = torch.where(select, frac[:, None, :], 1.0 - frac[:, None, :]).prod(dim=-1)
    return ids, weights


class LearnedIndexCodebookGrid(nn.Module):
    """Levels of dense 3D grids; each vertex selects one of ``2**bits`` codebook entries per level.

    Args:
        resolutions: vertices per side of each level, coarse to fine (each at least 2).
        bits: index width b; each level's codebook has ``2**bits`` entries.
        feature_dim: width of codebook entries (and of the output).
        init_std: standard deviation of the initial codebook entries.
    """

    def __init__(self, resolutions: Sequence[int], bits: int, feature_dim: int, init_std: float = 0.1) -> None:
        super().__init__()
        if not resolutions or min(resolutions) < 2:
            raise ValueError(f"every level needs at least 2 vertices per side, got {list(resolutions)}")
        if not 1 <= bits <= 16:
            raise ValueError(f"index bits must be in [1, 16], got {bits}")
        self.resolutions = [int(r) for r in resolutions]
        self.bits = bits
        self.feature_dim = feature_dim
        size = 1 << bits
        self.logits = nn.ParameterList([nn.Parameter(0.01 * torch.randn(r**3, size)) for r in self.resolutions])
        self.codebooks = nn.ParameterList(
            [nn.Parameter(init_std * torch.randn(size, feature_dim)) for _ in self.resolutions]
        )

    @property
    def num_levels(self) -> int:
        return len(self.resolutions)

    def hard_indices(self, level: int) -> Tensor:
        """The stored indices of one level: argmax of every vertex's logits, int64 [vertices]."""
        return self.logits[level].argmax(dim=-1)

    def level_features(self, positions: Tensor, level: int, hard: bool) -> Tensor:
        """Interpolated features [N, F] of one level at positions in [0, 1]^3 [N, 3]."""
        ids, weights = _corner_lookup(positions, self.resolutions[level])
        codebook = self.codebooks[level]
        if hard:
            vertex = codebook[self.logits[level].argmax(dim=-1)[ids]]
        else:
            soft = F.softmax(self.logits[level][ids], dim=-1)  # [N, 8, K]
            one_hot = F.one_hot(soft.argmax(dim=-1), soft.shape[-1]).to(soft.dtype)
            vertex = (one_hot - soft.detach() + soft) @ codebook  # straight-through estimator
        return (weights[..., None] * vertex).sum(dim=1)

    def forward(self, positions: Tensor, num_levels: Optional[int] = None, hard: Optional[bool] = None) -> Tensor:
        """Sum of the first ``num_levels`` levels' features [N, F]; hard lookups unless training."""
        hard = (not self.training) if hard is None else hard
        levels = self.num_levels if num_levels is None else num_levels
        if not 1 <= levels <= self.num_levels:
            raise ValueError(f"num_levels must be in [1, {self.num_levels}], got {levels}")
        features: List[Tensor] = [self.level_features(positions, lvl, hard) for lvl in range(levels)]
        return torch.stack(features).sum(dim=0)
