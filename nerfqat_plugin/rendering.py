"""Cameras for rendering a compressed file with nothing but the file: its own scene space says where to look.

A forward-facing (NDC) file holds the intrinsics of its reference camera, which looks down -z from the
origin after the dataparser's recentring; a bounded file holds its scene box and sampling range, so a
camera on a circle around the box's centre, at the middle of that range, sees the scene.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from torch import Tensor

from nerfqat_plugin.models.compressible import CompressibleModel


def look_at(eye: Tensor, target: Tensor, up: Tensor) -> Tensor:
    """OpenGL camera-to-world [3, 4] at ``eye`` looking at ``target`` (columns: right, up, backwards)."""
    backwards = torch.nn.functional.normalize(eye - target, dim=0)
    right = torch.nn.functional.normalize(torch.linalg.cross(up, backwards), dim=0)
    return torch.stack([right, torch.linalg.cross(backwards, right), backwards, eye], dim=1)


def preview_cameras(
    model: CompressibleModel,
    count: int = 1,
    size: Optional[int] = None,
    elevation_deg: float = 30.0,
    field_of_view_deg: float = 40.0,
) -> Cameras:
    """``count`` cameras that see the model's scene. NDC files: the reference camera at the file's
    resolution, then small sideways steps; others: a circle around the scene box's centre (``size``
    pixels square, default 400) at ``elevation_deg``, at the middle of the sampling range."""
    if model.ndc is not None:
        ndc = model.ndc
        steps = [0.0] + [0.05 * math.sin(2 * math.pi * k / max(1, count - 1)) for k in range(1, count)]
        poses = torch.eye(4)[:3].repeat(count, 1, 1)
        poses[:, 0, 3] = torch.tensor(steps[:count])
        width, height, focal = int(ndc.width), int(ndc.height), float(ndc.focal)
    else:
        width = height = size or 400
        focal = 0.5 * width / math.tan(math.radians(field_of_view_deg) / 2)
        center = model.scene_box.aabb.mean(dim=0).float()
        radius = 0.5 * (model.near + model.far)
        elevation = math.radians(elevation_deg)
        eyes = []
        for k in range(count):
            azimuth = 2 * math.pi * k / count
            offset = [math.cos(azimuth) * math.cos(elevation), math.sin(azimuth) * math.cos(elevation)]
            eyes.append(center + radius * torch.tensor([*offset, math.sin(elevation)]))
        poses = torch.stack([look_at(eye, center, torch.tensor([0.0, 0.0, 1.0])) for eye in eyes])
    return Cameras(
        camera_to_worlds=poses,
        fx=focal,
        fy=focal,
        cx=width / 2,
        cy=height / 2,
        width=width,
        height=height,
        camera_type=CameraType.PERSPECTIVE,
    )
