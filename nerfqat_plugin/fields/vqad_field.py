"""Fields of the vqad method: a learned-index codebook grid decoded by small MLPs.

:class:`VQADField` is the radiance field (density and view-dependent colour); :class:`VQADProposalField`
is the density-only field the proposal sampler reads. Both normalise positions by an axis-aligned box
(the NDC cube for forward-facing scenes, the scene box for bounded ones, the contracted scene box for
unbounded ones) and decode with MLPs that compute with fp16-rounded weights, the values the compressed
file stores.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from nerfstudio.cameras.rays import RaySamples
from nerfstudio.field_components.activations import trunc_exp
from nerfstudio.field_components.encodings import SHEncoding
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.field_components.mlp import MLP
from nerfstudio.field_components.spatial_distortions import SceneContraction
from torch import Tensor, nn

from nerfqat_plugin.field_components.codebook_grid import LearnedIndexCodebookGrid
from nerfqat_plugin.field_components.half_precision import train_as_half
from nerfqat_plugin.fields.compiled_field import TrainingCompiledField
from nerfqat_plugin.fields.view_directions import view_directions

ACTIVE_LEVELS_KEY = "active_levels"
"""RaySamples metadata key: per-ray number of grid levels to use [..., 1] (training at random
operating points); absent means the field's current operating point."""


def _mlp(in_dim: int, num_layers: int, width: int, out_dim: int) -> MLP:
    # torch implementation always: tcnn's fused MLPs compute in fp16 internally, and the trained
    # model must render exactly like the one rebuilt from its file.
    mlp = MLP(in_dim, num_layers, width, out_dim=out_dim, activation=nn.ReLU(), implementation="torch")
    return train_as_half(mlp)


class _BoxNormalizedField(TrainingCompiledField):
    """Maps positions in ``aabb`` to [0, 1]^3 for the grid; positions outside have no density
    (bounded scenes; the NDC cube contains every sample by construction). With ``contract``, space
    beyond the box is contracted into a shell around it instead (unbounded scenes): the box is mapped
    to [-1, 1]^3, mip-NeRF 360's L-inf contraction maps everything into [-2, 2]^3, and that cube
    spans the grid, so the box itself gets the central half of each axis."""

    def __init__(self, aabb: Tensor, contract: bool = False) -> None:
        super().__init__()
        self.register_buffer("aabb", aabb.detach().clone().float(), persistent=False)
        self.contraction = SceneContraction(order=float("inf")) if contract else None

    @property
    def unit_extent(self) -> Tensor:
        """World length of the unit cube's axes near the centre [3] (where a grid cell is smallest)."""
        extent = self.aabb[1] - self.aabb[0]
        return extent * 2.0 if self.contraction is not None else extent

    def normalized(self, positions: Tensor) -> Tuple[Tensor, Tensor]:
        """Flat positions in [0, 1]^3 [N, 3] and whether each lay inside the grid's space [N, 1]."""
        flat = positions.reshape(-1, 3)
        if self.contraction is not None:
            centred = (flat - self.aabb.mean(dim=0)) / ((self.aabb[1] - self.aabb[0]) / 2.0)
            unit = (self.contraction(centred) + 2.0) / 4.0
            return unit, torch.ones_like(unit[:, :1])
        unit = (flat - self.aabb[0]) / (self.aabb[1] - self.aabb[0])
        inside = ((unit >= 0.0) & (unit <= 1.0)).all(dim=-1, keepdim=True)
        return unit, inside


class VQADField(_BoxNormalizedField):
    """Density and colour from a :class:`LearnedIndexCodebookGrid` and two small MLPs.

    Args:
        aabb: the box the grid spans [2, 3].
        grid: the codebook grid (its levels summed give the feature of a point).
        hidden_dim: width of the density MLP.
        geo_feat_dim: features passed from the density MLP to the colour MLP.
        color_layers: depth of the colour MLP.
        color_hidden_dim: width of the colour MLP.
        sh_levels: spherical-harmonics levels of the view-direction encoding.
        contract: contract space beyond ``aabb`` into the grid (unbounded scenes).
    """

    compiled_methods = ("density_from_unit", "color_from_features")

    def __init__(
        self,
        aabb: Tensor,
        grid: LearnedIndexCodebookGrid,
        hidden_dim: int = 64,
        geo_feat_dim: int = 15,
        color_layers: int = 3,
        color_hidden_dim: int = 64,
        sh_levels: int = 4,
        contract: bool = False,
    ) -> None:
        super().__init__(aabb, contract)
        self.grid = grid
        self.num_active_levels: Optional[int] = None
        """Operating point: levels used when rays do not say (None: all)."""
        self.geo_feat_dim = geo_feat_dim
        self.density_mlp = _mlp(grid.output_dim, 2, hidden_dim, 1 + geo_feat_dim)
        self.direction_encoding = SHEncoding(levels=sh_levels, implementation="torch")
        self.color_mlp = _mlp(geo_feat_dim + self.direction_encoding.get_out_dim(), color_layers, color_hidden_dim, 3)

    def _level_mask(self, ray_samples: RaySamples, num_points: int) -> Optional[Tensor]:
        active = (ray_samples.metadata or {}).get(ACTIVE_LEVELS_KEY)
        if active is None:
            return None
        shape = ray_samples.frustums.starts.shape[:-1]
        per_point = active.expand(*shape, 1).reshape(num_points, 1)
        levels = torch.arange(self.grid.num_levels, device=active.device)
        return (levels[None, :] < per_point).to(torch.float32)

    def density_from_unit(self, unit: Tensor, inside: Tensor, level_mask: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """Density [N, 1] and geometry features [N, G] at flat positions in [0, 1]^3."""
        features = self.grid(unit, num_levels=self.num_active_levels, level_mask=level_mask)
        h = self.density_mlp(features)
        return trunc_exp(h[:, :1]) * inside, h[:, 1:]

    def density_at(self, positions: Tensor) -> Tuple[Tensor, Tensor]:
        """Density [N, 1] and geometry features [N, G] at flat positions in the field's space [N, 3],
        at the current operating point (rendering; training passes per-ray levels)."""
        return self.eager("density_from_unit", *self.normalized(positions), None)

    def color_from_features(self, geo: Tensor, directions: Tensor) -> Tensor:
        """RGB [N, 3] from geometry features and unit world view directions (flat)."""
        return torch.sigmoid(self.color_mlp(torch.cat([geo, self.direction_encoding(directions)], dim=-1)))

    def get_density(self, ray_samples: RaySamples) -> Tuple[Tensor, Tensor]:
        positions = ray_samples.frustums.get_positions()
        unit, inside = self.normalized(positions)
        mask = self._level_mask(ray_samples, unit.shape[0])
        density, geo = self.run("density_from_unit", unit, inside, mask)
        batch_shape = positions.shape[:-1]
        return density.view(*batch_shape, 1), geo.reshape(*batch_shape, self.geo_feat_dim)

    def get_outputs(
        self, ray_samples: RaySamples, density_embedding: Optional[Tensor] = None
    ) -> Dict[FieldHeadNames, Tensor]:
        assert density_embedding is not None
        batch_shape = density_embedding.shape[:-1]
        directions = view_directions(ray_samples).expand(*batch_shape, 3).reshape(-1, 3)
        rgb = self.run("color_from_features", density_embedding.reshape(-1, self.geo_feat_dim), directions)
        return {FieldHeadNames.RGB: rgb.view(*batch_shape, 3)}


class VQADProposalField(_BoxNormalizedField):
    """Density-only field for proposal sampling: a small codebook grid and a one-hidden-layer MLP.

    Args:
        aabb: the box the grid spans [2, 3].
        grid: a (small) codebook grid.
        hidden_dim: width of the density MLP.
        contract: contract space beyond ``aabb`` into the grid (unbounded scenes).
    """

    compiled_methods = ("density_from_unit",)

    def __init__(
        self, aabb: Tensor, grid: LearnedIndexCodebookGrid, hidden_dim: int = 16, contract: bool = False
    ) -> None:
        super().__init__(aabb, contract)
        self.grid = grid
        self.density_mlp = _mlp(grid.output_dim, 2, hidden_dim, 1)

    def density_from_unit(self, unit: Tensor, inside: Tensor) -> Tensor:
        """Density [N, 1] at flat positions in [0, 1]^3."""
        return trunc_exp(self.density_mlp(self.grid(unit))) * inside

    def get_density(self, ray_samples: RaySamples) -> Tuple[Tensor, Tensor]:
        positions = ray_samples.frustums.get_positions()
        unit, inside = self.normalized(positions)
        density = self.run("density_from_unit", unit, inside)
        return density.view(*positions.shape[:-1], 1), torch.empty(0, device=positions.device)

    def get_outputs(self, ray_samples: RaySamples, density_embedding: Optional[Tensor] = None) -> Dict:
        return {}
