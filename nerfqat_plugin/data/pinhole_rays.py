"""Training rays of undistorted pinhole cameras, computed without waiting for the GPU.

nerfstudio's :class:`~nerfstudio.model_components.ray_generators.RayGenerator` serves every camera
model, and choosing among them per ray (masked selections by camera type, a check for jagged image
sizes, a tensor built on the host for the normalisation's epsilon) makes the host wait for the GPU
several times per training step; the host then cannot queue the next kernels meanwhile. When every
training camera is a pinhole camera without distortion, :class:`PinholeRayGenerator` computes the
same rays (origins, unit directions, pixel areas, the direction norms in the metadata) with the
same arithmetic and no wait. Other cameras keep nerfstudio's generator (:func:`training_ray_generator`).
"""

from __future__ import annotations

import torch
from nerfstudio.cameras import camera_utils
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.model_components.ray_generators import RayGenerator
from torch import Tensor, nn


def is_undistorted_pinhole(cameras: Cameras) -> bool:
    """Whether every camera is a perspective one without distortion, in one batch dimension."""
    if len(cameras.shape) != 1 or not bool((cameras.camera_type == CameraType.PERSPECTIVE.value).all()):
        return False
    if not all(torch.is_tensor(value) for value in (cameras.metadata or {}).values()):
        return False
    return cameras.distortion_params is None or not bool(cameras.distortion_params.any())


class PinholeRayGenerator(nn.Module):
    """Rays of ``(camera, row, column)`` indices [N, 3] for undistorted pinhole cameras, equal to
    nerfstudio's ``RayGenerator`` (OpenCV pixel centres, OpenGL camera axes)."""

    def __init__(self, cameras: Cameras) -> None:
        super().__init__()
        assert is_undistorted_pinhole(cameras), "pinhole cameras without distortion only"
        self.cameras = cameras
        self.register_buffer("image_coords", cameras.get_image_coords(), persistent=False)

    def forward(self, ray_indices: Tensor) -> RayBundle:
        cameras = self.cameras
        c, row, column = ray_indices[:, 0], ray_indices[:, 1], ray_indices[:, 2]
        coords = self.image_coords[row, column]
        y, x = coords[:, 0], coords[:, 1]
        fx, fy = cameras.fx[c, 0], cameras.fy[c, 0]
        cx, cy = cameras.cx[c, 0], cameras.cy[c, 0]
        # The ray's pixel and its right and lower neighbours (for the pixel's area), as nerfstudio.
        u = torch.stack([(x - cx) / fx, (x - cx + 1) / fx, (x - cx) / fx])
        v = torch.stack([(y - cy) / fy, (y - cy) / fy, (y - cy + 1) / fy])
        # [3, N, 3], OpenCV to OpenGL axes; float32 whatever the intrinsics' type, as nerfstudio's
        local = torch.stack([u, -v, -torch.ones_like(u)], dim=-1).float()
        c2w = cameras.camera_to_worlds[c]
        directions = torch.sum(local[..., None, :] * c2w[:, :3, :3], dim=-1)
        norms = torch.linalg.vector_norm(directions, dim=-1, keepdim=True).clamp_min(float(camera_utils._EPS))
        directions = directions / norms
        dx = torch.sqrt(torch.sum((directions[0] - directions[1]) ** 2, dim=-1))
        dy = torch.sqrt(torch.sum((directions[0] - directions[2]) ** 2, dim=-1))
        camera_indices = c[:, None]
        metadata = {key: value[c] for key, value in (cameras.metadata or {}).items()}
        metadata["directions_norm"] = norms[0].detach()
        return RayBundle(
            origins=c2w[:, :3, 3],
            directions=directions[0],
            pixel_area=(dx * dy)[:, None],
            camera_indices=camera_indices,
            times=cameras.times[camera_indices, 0] if cameras.times is not None else None,
            metadata=metadata,
        )


def training_ray_generator(cameras: Cameras) -> nn.Module:
    """:class:`PinholeRayGenerator` where the cameras allow it, else nerfstudio's ``RayGenerator``."""
    return PinholeRayGenerator(cameras) if is_undistorted_pinhole(cameras) else RayGenerator(cameras)
