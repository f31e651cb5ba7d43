"""Normalized device coordinates for forward-facing scenes (Mildenhall et al. 2020, appendix C).

A forward-facing capture spans depths from the near plane to (nearly) infinity. NeRF warps such a
scene into the NDC cube, where depth in ``[near, inf)`` maps linearly to ``[-1, 1]`` in z, so
samples spaced uniformly in NDC are spaced uniformly in disparity in the world. Cameras look down
-z (OpenGL convention), the scene lies in front of the near plane ``z = -near``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
from torch import Tensor

NDC_BOX = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
"""The NDC cube [2, 3]: where a forward-facing scene's samples lie (apart from rays leaving its sides)."""


@dataclass(frozen=True)
class NDCSpace:
    """Intrinsics of the reference camera that define the NDC warp (NeRF uses the training camera)."""

    focal: float
    width: float
    height: float
    near: float = 1.0

    def to_dict(self) -> dict:
        return {"focal": self.focal, "width": self.width, "height": self.height, "near": self.near}

    def rays_to_ndc(self, origins: Tensor, directions: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Warp world rays into NDC.

        Returns ``(ndc_origins, ndc_directions, t_near)``: the NDC ray is ``o' + s d'`` for
        ``s`` in ``[0, 1]`` (``s = 1`` is the point at infinity), and ``t_near`` is the world
        distance along ``directions`` at which the ray crosses the near plane.
        """
        ox, oy, oz = origins.unbind(-1)
        dx, dy, dz = directions.unbind(-1)
        # Rays parallel to the image plane never reach the near plane; keep them finite.
        dz = torch.where(dz.abs() < 1e-6, torch.full_like(dz, -1e-6), dz)
        t_near = -(self.near + oz) / dz
        ox, oy, oz = ox + t_near * dx, oy + t_near * dy, oz + t_near * dz
        ax = -2.0 * self.focal / self.width
        ay = -2.0 * self.focal / self.height
        ndc_origins = torch.stack([ax * ox / oz, ay * oy / oz, 1.0 + 2.0 * self.near / oz], dim=-1)
        ndc_directions = torch.stack(
            [ax * (dx / dz - ox / oz), ay * (dy / dz - oy / oz), -2.0 * self.near / oz], dim=-1
        )
        return ndc_origins, ndc_directions, t_near

    @staticmethod
    def world_distance(s: Tensor, origins: Tensor, directions: Tensor, t_near: Tensor, near: float) -> Tensor:
        """World distance along ``directions`` of the point at NDC ray parameter ``s``.

        Inverts the warp: a point ``t`` beyond the near-plane crossing maps to
        ``s = t d_z / (o_z + t d_z)`` with ``o`` the crossing point, so ``t = s o_z / (d_z (1 - s))``.
        ``s``: [..., num_samples, 1]; the ray tensors: [..., 3] / [...].
        """
        dz = directions[..., 2:3]
        dz = torch.where(dz.abs() < 1e-6, torch.full_like(dz, -1e-6), dz)
        oz = -near * torch.ones_like(dz)  # the crossing point lies on z = -near
        s = s.clamp(max=1.0 - 1e-6)
        t_rel = s * oz[..., None, :] / (dz[..., None, :] * (1.0 - s))
        return t_near[..., None, None] + t_rel
