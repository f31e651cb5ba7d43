"""The integer render path of nerf-qat: exact integer products, and the same renders as fake quantization."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import render_nerf_qat, tiny_nerf_qat_model, train_nerf_qat

from nerfqat_plugin.compression.codec import load_compressed_model
from nerfqat_plugin.field_components import integer_linear
from nerfqat_plugin.field_components.integer_linear import IntegerLinear, integer_matmul, quantize_activation


def _int8(shape, seed: int) -> torch.Tensor:
    return torch.randint(-128, 128, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.int8)


@pytest.mark.parametrize("kernel", ["int_mm", "float32"])
def test_integer_matmul_is_exact(kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if kernel == "float32":  # where no int8 kernel exists, the float32 fallback must be exact too
        monkeypatch.delattr(torch, "_int_mm")
    a, w = _int8((37, 319), 0), _int8((13, 319), 1)  # the widest NeRF block: 256 + 63 inputs
    expected = a.long() @ w.long().t()
    out = integer_matmul(a, w)
    assert out.dtype == torch.int32 and torch.equal(out.long(), expected)


def test_int8_products_take_the_weight_as_a_column_major_operand(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuBLAS's int8 tensor-core kernels take the second operand column-major; given a row-major one it
    falls back to a generic kernel about three times slower, or refuses the shape."""
    seen = []
    original = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: seen.append(b.stride()) or original(a, b))
    block = IntegerLinear(tiny_nerf_qat_model().field_fine.trunk.layers[1], [24])
    assert all(w.is_contiguous() and w.shape[0] >= block.out_features for w in block.segments)  # [out, in] rows
    integer_matmul(_int8((40, 24), 2), block.segments[0])
    assert seen and seen[0][0] == 1  # the [K, M] operand steps 1 along K: column-major


@pytest.fixture(scope="module")
def trained() -> dict:
    """Tiny nerf-qat models trained past calibration: 8 and 4 bits, fused and unfused, one with a skip."""
    models = {}
    for name, options in {
        "int8": {"bits": 8},
        "int4": {"bits": 4},
        "int8-unfused": {"bits": 8, "fuse_relu": False},
    }.items():
        torch.manual_seed(0)
        model = tiny_nerf_qat_model(**options)
        train_nerf_qat(model, 8)
        assert model.field_fine.uses_integer_inference()
        models[name] = model
    return models


@pytest.mark.parametrize("name", ["int8", "int4", "int8-unfused"])
def test_each_block_matches_its_fake_quantized_output(trained: dict, name: str) -> None:
    field = trained[name].field_fine
    x = field.encode(field.position_encoding, torch.rand(500, 3, generator=torch.Generator().manual_seed(3)) * 2 - 1)
    with torch.no_grad():
        first = quantize_activation(x, field.trunk.input_quantizer)
        # The quantizer's integers are the fake quantizer's values exactly.
        assert torch.allclose(first.dequantize(), field.trunk.input_quantizer(x), atol=1e-6, rtol=0)
        block = field.trunk.layers[0]
        expected = block(field.trunk.input_quantizer(x))
        actual = IntegerLinear(block, [x.shape[1]]).quantized([first]).dequantize()
    step = float(block.output_quantizer.scale)
    # Equal, except where float accumulation put a value within rounding of a level boundary:
    # then one level apart, for a tiny share of the values.
    off = (actual - expected).abs()
    assert float(off.max()) <= step * 1.001
    assert float((off > 1e-6).float().mean()) < 0.01


@pytest.mark.parametrize("name", ["int8", "int4", "int8-unfused"])
def test_integer_renders_equal_fake_quantized_renders(trained: dict, name: str) -> None:
    """Stated bound: colours within 2e-3 everywhere (a hidden value that float rounding moves across a
    quantization level) and 1e-6 on average (float rounding of the accumulation alone); measured
    here: about 1e-7 at most."""
    model = trained[name]
    integer = render_nerf_qat(model)
    for fld in (model.field_coarse, model.field_fine):
        fld.integer_inference = False
    fake_quant = render_nerf_qat(model)
    for fld in (model.field_coarse, model.field_fine):
        fld.integer_inference = True
    diff = (integer["rgb"] - fake_quant["rgb"]).abs()
    assert float(diff.max()) <= 2e-3 and float(diff.mean()) <= 1e-6
    assert float(fake_quant["rgb"].std()) > 1e-3  # the renders vary: the comparison says something


def test_a_loaded_file_renders_with_integers_by_default(trained: dict, tmp_path: Path) -> None:
    model = trained["int8"]
    model.export_compressed(tmp_path / "m.nqz")
    loaded = load_compressed_model(tmp_path / "m.nqz")
    assert loaded.field_fine.uses_integer_inference() and loaded.field_coarse.uses_integer_inference()
    calls = []
    original = integer_linear.integer_matmul
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(integer_linear, "integer_matmul", lambda a, w: calls.append(a.dtype) or original(a, w))
        loaded_rgb = render_nerf_qat(loaded)["rgb"]
    assert calls and set(calls) == {torch.int8}  # the products really ran on int8 operands
    with torch.no_grad():  # the trunk hands the colour path its int8 integers, not floats 4x the size
        _, features = loaded.field_fine.density_and_features(torch.rand(8, 3))
    assert features.dtype == torch.int8
    assert torch.max(torch.abs(loaded_rgb - render_nerf_qat(model)["rgb"])) <= 1e-5


def test_rendering_as_trained_switches_every_shortcut_off_and_back(trained: dict, tmp_path: Path) -> None:
    model = trained["int8"]
    model.export_compressed(tmp_path / "m.nqz")
    loaded = load_compressed_model(tmp_path / "m.nqz")
    assert loaded.occupancy_grid is not None and loaded.config.skip_hidden_samples
    calls = []
    original = integer_linear.integer_matmul
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(integer_linear, "integer_matmul", lambda a, w: calls.append(1) or original(a, w))
        with loaded.rendering_as_trained():
            assert loaded.occupancy_grid is None and not loaded.config.skip_hidden_samples
            render_nerf_qat(loaded)
        assert not calls  # fake quantization in float: no integer product
        render_nerf_qat(loaded)
    assert calls and loaded.occupancy_grid is not None and loaded.config.skip_hidden_samples


def test_weights_are_padded_once_and_each_input_once_per_call(trained: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """int8 kernels take widths in multiples of 8: weights are padded when the blocks are built, and
    an activation read by two blocks (the encoded position, by block 0 and the skip block) once."""
    field = trained["int4"].field_fine
    assert field._integer() is field._integer()  # built once while the weights stay as they are
    trunk, density_head, bottleneck, color_head = field._integer()
    blocks = [*trunk.layers, density_head, bottleneck, *color_head.layers, color_head.out_layer]
    assert all(w.shape[0] % 8 == 0 and w.shape[1] % 8 == 0 for block in blocks for w in block.segments)
    padded = []
    original = torch.nn.functional.pad
    monkeypatch.setattr(
        torch.nn.functional, "pad", lambda x, *a, **k: padded.append(tuple(x.shape)) or original(x, *a, **k)
    )
    with torch.no_grad():
        density, _ = field.density_and_features(torch.rand(100, 3))
    width = field.trunk.in_dim
    assert width % 8 and padded == [(100, width)] and density.shape == (100, 1)


def test_the_occupancy_grid_is_baked_once_while_the_weights_stay(
    trained: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nerfqat_plugin.models import compressible

    model = trained["int8"]
    model._baked_occupancy = None
    bakes = []
    original = compressible.bake_occupancy
    monkeypatch.setattr(compressible, "bake_occupancy", lambda *a, **k: bakes.append(1) or original(*a, **k))
    first = model.occupancy_state()[0]
    second = model.occupancy_state()[0]  # e.g. the viewer measuring the file's size again
    assert len(bakes) == 1 and all(torch.equal(first[k], second[k]) for k in first)


def test_training_and_float_viewing_keep_the_fake_quant_path(trained: dict) -> None:
    model = trained["int8"]
    model.train()
    assert not model.field_fine.uses_integer_inference()
    model.eval()
    model.field_fine.trunk.quant_enabled = False  # the viewer's float toggle
    assert not model.field_fine.uses_integer_inference()
    model.field_fine.trunk.quant_enabled = True


@pytest.mark.parametrize("name", ["int8", "int4", "int8-unfused"])
def test_the_compiled_epilogue_renders_what_the_eager_one_does(
    trained: dict, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CUDA runs each block's epilogue as one compiled kernel; here inductor's CPU backend compiles the
    same function, so the graph (not the GPU code generator) is checked against eager. Each block
    structure compiles once: with one graph allowed per code object, and an error past it instead of
    eager running, every block still runs compiled."""
    model = trained[name]
    eager = render_nerf_qat(model)["rgb"]
    compiled_calls = []
    monkeypatch.setattr(integer_linear, "use_compiled_epilogue", lambda device: compiled_calls.append(1) or True)
    monkeypatch.setattr(integer_linear, "_compiled_epilogues", {})
    monkeypatch.setattr(integer_linear, "_compile_failed", False)  # restored after, whatever happens here
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
        compiled = render_nerf_qat(model)["rgb"]
    assert compiled_calls and not integer_linear._compile_failed  # it compiled and ran
    assert len(integer_linear._compiled_epilogues) >= 3  # hidden blocks, skip block, output layers
    assert float((compiled - eager).abs().max()) <= 1e-5
