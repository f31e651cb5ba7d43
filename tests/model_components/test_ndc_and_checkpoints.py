"""NDC warp against NeRF's formula, and safe loading of checkpoints holding numpy scalars."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch

import nerfqat_plugin  # noqa: F401  (registers the numpy allow-list)
from nerfqat_plugin.model_components.ndc import NDCSpace


def _nerf_ndc_rays(h, w, focal, near, rays_o, rays_d):
    """NeRF's reference ``ndc_rays`` (run_nerf_helpers.py), written out in numpy for comparison."""
    t = -(near + rays_o[..., 2]) / rays_d[..., 2]
    rays_o = rays_o + t[..., None] * rays_d
    o0 = -1.0 / (w / (2.0 * focal)) * rays_o[..., 0] / rays_o[..., 2]
    o1 = -1.0 / (h / (2.0 * focal)) * rays_o[..., 1] / rays_o[..., 2]
    o2 = 1.0 + 2.0 * near / rays_o[..., 2]
    d0 = -1.0 / (w / (2.0 * focal)) * (rays_d[..., 0] / rays_d[..., 2] - rays_o[..., 0] / rays_o[..., 2])
    d1 = -1.0 / (h / (2.0 * focal)) * (rays_d[..., 1] / rays_d[..., 2] - rays_o[..., 1] / rays_o[..., 2])
    d2 = -2.0 * near / rays_o[..., 2]
    return np.stack([o0, o1, o2], -1), np.stack([d0, d1, d2], -1)


def test_ndc_matches_nerf_reference() -> None:
    rng = np.random.default_rng(0)
    origins = rng.normal(scale=0.2, size=(50, 3))
    directions = np.concatenate([rng.normal(scale=0.3, size=(50, 2)), -np.ones((50, 1))], -1)
    ref_o, ref_d = _nerf_ndc_rays(378, 504, 407.0, 1.0, origins, directions)
    space = NDCSpace(focal=407.0, width=504.0, height=378.0, near=1.0)
    o, d, _ = space.rays_to_ndc(torch.from_numpy(origins), torch.from_numpy(directions))
    assert np.allclose(o.numpy(), ref_o) and np.allclose(d.numpy(), ref_d)


def test_world_distance_inverts_the_warp() -> None:
    space = NDCSpace(focal=400.0, width=500.0, height=400.0, near=1.0)
    origins = torch.tensor([[0.1, -0.2, 0.3]], dtype=torch.float64)
    directions = torch.nn.functional.normalize(torch.tensor([[0.2, 0.1, -1.0]], dtype=torch.float64), dim=-1)
    o, d, t_near = space.rays_to_ndc(origins, directions)
    for t_world in (2.0, 5.0, 40.0):
        point = origins + t_world * directions
        # The NDC image of the world point, and its parameter s along the NDC ray o + s d.
        ndc_z = 1.0 + 2.0 * space.near / point[0, 2]
        s = (ndc_z - o[0, 2]) / d[0, 2]
        back = NDCSpace.world_distance(s.reshape(1, 1, 1), origins, directions, t_near, space.near)
        assert float(back) == pytest.approx(t_world, rel=1e-6)


def test_checkpoint_with_numpy_scalars_loads_safely() -> None:
    buffer = io.BytesIO()
    torch.save({"step": 3, "lr": [np.float64(5e-4)], "flag": np.bool_(True), "i": np.int64(2)}, buffer)
    buffer.seek(0)
    state = torch.load(buffer)  # weights_only=True is the default on torch >= 2.6
    assert state["lr"][0] == pytest.approx(5e-4)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_safe_loading_is_still_on_for_anything_else() -> None:
    payload = pickle.dumps({"x": _Evil()})
    buffer = io.BytesIO()
    torch.save({"x": 1}, buffer)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(io.BytesIO(_torch_zip_with(payload, buffer.getvalue())))


def _torch_zip_with(pickled: bytes, template: bytes) -> bytes:
    """A torch checkpoint whose data.pkl is ``pickled`` (what a malicious file would contain)."""
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(template)) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = pickled if item.filename.endswith("data.pkl") else src.read(item.filename)
            dst.writestr(item, data)
    return out.getvalue()
