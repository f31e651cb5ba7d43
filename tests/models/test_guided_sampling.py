"""Renders guided by a file's occupancy grid (``occupancy_guided_sampling``): rays of a bounded scene
that cross no occupied cell are not sampled, and vqad's proposal rounds skip empty cells."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List

import torch
from nerfstudio.cameras.rays import RayBundle
from torch import Tensor

from nerfqat_plugin.compression.codec import load_compressed_model
from nerfqat_plugin.field_components.occupancy_grid import OccupancyGrid

WHITE = torch.ones(3)  # a bounded scene's background outside training


def _rays_down_z(xs: List[float], z: float) -> RayBundle:
    """Rays looking down -z from height ``z``, one per x in ``xs`` (at y = 0.1), parallel to the grid's
    cells, so each one either crosses the occupied half of the box below or stays clear of it."""
    n = len(xs)
    origins = torch.tensor([[x, 0.1, z] for x in xs])
    return RayBundle(
        origins=origins,
        directions=torch.tensor([[0.0, 0.0, -1.0]]).expand(n, 3).clone(),
        pixel_area=torch.ones(n, 1),
        camera_indices=torch.zeros(n, 1, dtype=torch.long),
    )


def _upper_x_half(model) -> OccupancyGrid:
    """The file's grid with the box's cells of x > 0 occupied, the others empty."""
    occupied = torch.zeros_like(model.occupancy_grid.occupied)
    occupied[occupied.shape[0] // 2 :] = True
    return OccupancyGrid(model.occupancy_grid.aabb, occupied)


def _render(model, bundle: RayBundle, guided: bool) -> Dict[str, Tensor]:
    model.config.occupancy_guided_sampling = guided
    with torch.no_grad():
        return model(bundle)


def _recording(fn: Callable, calls: List[Tensor]) -> Callable:
    def wrapped(x, *rest):
        calls.append(x.detach().clone() if isinstance(x, Tensor) else x)
        return fn(x, *rest)

    return wrapped


XS = [-1.2, -0.7, -0.3, 0.3, 0.7, 1.2]
MISSING = torch.tensor([x < 0 for x in XS])


def test_nerf_qat_renders_the_crossing_rays_only_and_the_same_image(bounded_nerf_qat_file: Path) -> None:
    model = load_compressed_model(bounded_nerf_qat_file)
    model.occupancy_grid = _upper_x_half(model)
    bundle = _rays_down_z(XS, 2.5)
    plain = _render(model, bundle, guided=False)
    bundles: List[RayBundle] = []
    model._render = _recording(model._render, bundles)
    guided = _render(model, bundle, guided=True)
    assert [len(b) for b in bundles] == [int((~MISSING).sum())]  # the sampler saw the crossing rays only
    assert set(guided) == set(plain)
    for key in plain:
        assert torch.allclose(guided[key], plain[key], atol=1e-6), key
    assert torch.equal(guided["rgb"][MISSING], WHITE.expand(int(MISSING.sum()), 3))
    assert float(plain["accumulation"][~MISSING].min()) > 1e-3  # the crossing rays do render something
    with model.rendering_as_trained():  # the reference renders: every ray sampled
        bundles.clear()
        _render(model, bundle, guided=True)
        assert [len(b) for b in bundles] == [len(XS)]


def test_vqad_proposals_skip_empty_cells_and_missing_rays_are_background(bounded_vqad_file: Path) -> None:
    model = load_compressed_model(bounded_vqad_file)
    model.occupancy_grid = grid = _upper_x_half(model)
    evaluated: List[Tensor] = []
    model.density_fns = [_recording(fn, evaluated) for fn in model.density_fns]
    bundle = _rays_down_z(XS, 4.0)
    plain = _render(model, bundle, guided=False)
    assert not bool(grid(torch.cat([p.reshape(-1, 3) for p in evaluated])).all())  # (the test says something)
    evaluated.clear()
    guided = _render(model, bundle, guided=True)
    positions = torch.cat([p.reshape(-1, 3) for p in evaluated])
    assert len(positions) and bool(grid(positions).all())  # proposals evaluated in occupied cells only
    for key in ("rgb", "accumulation", "depth"):  # rays that cross nothing: what every sample skipped renders
        assert torch.equal(guided[key][MISSING], plain[key][MISSING]), key
    assert torch.equal(guided["rgb"][MISSING], WHITE.expand(int(MISSING.sum()), 3))
    assert bool(torch.isfinite(guided["rgb"]).all()) and float(guided["accumulation"][~MISSING].min()) > 1e-3


def test_a_grid_with_no_occupied_cell_renders_the_background_everywhere(bounded_vqad_file: Path) -> None:
    model = load_compressed_model(bounded_vqad_file)
    empty = torch.zeros_like(model.occupancy_grid.occupied)
    model.occupancy_grid = OccupancyGrid(model.occupancy_grid.aabb, empty)
    outputs = _render(model, _rays_down_z(XS, 4.0), guided=True)
    assert torch.equal(outputs["rgb"], WHITE.expand(len(XS), 3))
    assert outputs["accumulation"].shape == (len(XS), 1) and not bool(outputs["accumulation"].any())


def _as_trained(model, bundle: RayBundle) -> Dict[str, Tensor]:
    with torch.no_grad(), model.rendering_as_trained():
        return model(bundle)


def test_renders_as_trained_ignore_every_render_shortcut(bounded_nerf_qat_file: Path, bounded_vqad_file: Path) -> None:
    """Benchmarks measure a file as trained once for all the shortcut options they try
    (``render_shortcuts``): each of them, set against its default, leaves that render as it is."""
    for path, z in ((bounded_nerf_qat_file, 2.5), (bounded_vqad_file, 4.0)):
        model = load_compressed_model(path)
        model.occupancy_grid = _upper_x_half(model)
        bundle = _rays_down_z(XS, z)
        reference = _as_trained(model, bundle)
        fast = _render(model, bundle, guided=False)
        assert not torch.equal(fast["rgb"], reference["rgb"])  # the shortcuts do change the default render
        for name in type(model).render_shortcuts:
            default = getattr(model.config, name)
            setattr(model.config, name, not default)
            try:
                outputs = _as_trained(model, bundle)
            finally:
                setattr(model.config, name, default)
            for key in reference:
                assert torch.equal(outputs[key], reference[key]), (model.compressed_method_name, name, key)
