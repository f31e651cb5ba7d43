"""Training-only compilation of the fields (both methods): compiled paths while training, eager
paths in evaluation (so trained and file-rebuilt models render identically), compiled once."""

from __future__ import annotations

from typing import List

import pytest
import torch
from helpers import forward_rays as _rays
from helpers import tiny_nerf_qat_model as nerfqat_model
from helpers import tiny_vqad_model as vqad_model

from nerfqat_plugin.field_components.half_precision import round_to_half
from nerfqat_plugin.fields import compiled_field
from nerfqat_plugin.fields.compiled_field import in_row_slabs


@pytest.mark.parametrize("build", [nerfqat_model, vqad_model], ids=["nerf-qat", "vqad"])
def test_compiled_paths_run_only_while_training(monkeypatch: pytest.MonkeyPatch, build) -> None:
    calls: List[str] = []

    def fake_compile(fn, dynamic=None, mode="default"):
        def compiled(*args):
            calls.append(fn.__name__)
            return fn(*args)

        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = build(compile=True)
    model.train()
    model(_rays())  # on CPU nothing is compiled: the option is for CUDA
    assert calls == []
    model.compile_fields_once(torch.device("cuda"), True)
    model(_rays())
    assert calls, "training must use the compiled paths"
    seen = len(calls)
    model.eval()
    with torch.no_grad():
        model(_rays())
    assert len(calls) == seen  # evaluation stays eager
    fields = model.fields_to_compile()
    compiled = [dict(f._compiled) for f in fields]
    model.train()
    model.compile_fields_once(torch.device("cuda"), True)  # once only
    assert [dict(f._compiled) for f in fields] == compiled


@pytest.mark.parametrize("sampler, dynamic", [("proposal", None), ("occupancy", True)])
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_fields_are_compiled_for_any_sample_count_only_when_the_count_varies(
    monkeypatch: pytest.MonkeyPatch, sampler: str, dynamic, mode: str
) -> None:
    seen: List[object] = []
    monkeypatch.setattr(torch, "compile", lambda fn, dynamic=None, mode="default": seen.append((dynamic, mode)) or fn)
    options = {"sampler": sampler, "compile": True, "compile_mode": mode}
    model = vqad_model({"near_far": (2.0, 6.0), "scene_type": "bounded"}, **options)
    model.train()
    model.compile_fields_once(torch.device("cuda"), True)
    # Marched counts change every batch: one graph for any count, not one per count.
    assert seen and set(seen) == {(dynamic, mode)}


class _RoundingField(compiled_field.TrainingCompiledField):
    compiled_methods = ("rounded",)

    def rounded(self, x: torch.Tensor) -> torch.Tensor:
        return round_to_half(x) * 3.0


def test_compiled_training_keeps_the_fp16_rounding_of_weights() -> None:
    # Inductor drops a cast to fp16 and back inside a fused kernel; training would then see
    # unrounded weights where the file stores fp16.
    field = _RoundingField()
    field.compile_for_training()
    field.train()
    x = (torch.randn(4096) * 0.3).requires_grad_()
    out = field.run("rounded", x)
    assert torch.equal(out, x.detach().half().float() * 3.0)
    out.sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 3.0))  # straight through the rounding


def test_row_slabs_give_what_one_call_gives_and_pass_non_row_arguments_whole() -> None:
    x, y = torch.randn(10, 3), torch.randn(10, 2)
    seen: List[int] = []

    def fn(a, b, c, scale):
        seen.append(a.shape[0])
        assert c is None and scale.shape == (2,)
        return a.sum(-1, keepdim=True) * scale[0], b * scale[1]

    scale = torch.tensor([2.0, 3.0])
    whole = fn(x, y, None, scale)
    seen.clear()
    slabs = in_row_slabs(fn, x, y, None, scale, rows=4)
    assert seen == [4, 4, 2]
    assert all(torch.equal(s, w) for s, w in zip(slabs, whole, strict=True))
    assert torch.equal(in_row_slabs(lambda a: a * 2, x, rows=3), x * 2)


@pytest.mark.parametrize("build", [nerfqat_model, vqad_model], ids=["nerf-qat", "vqad"])
def test_cpu_renders_evaluate_the_fields_in_slabs_and_render_the_same(monkeypatch: pytest.MonkeyPatch, build) -> None:
    model = build()
    model.eval()
    with torch.no_grad():
        whole = model(_rays())["rgb"]
        monkeypatch.setattr(compiled_field, "CPU_SLAB_ROWS", 7)
        calls: List[int] = []
        original = compiled_field.in_row_slabs
        monkeypatch.setattr(
            compiled_field, "in_row_slabs", lambda fn, *args: calls.append(args[0].shape[0]) or original(fn, *args)
        )
        slabbed = model(_rays())["rgb"]
    assert calls and max(calls) > 7  # the fields were handed more rows than one slab
    torch.testing.assert_close(slabbed, whole, rtol=0, atol=1e-5)


def test_padded_rows_give_the_unpadded_outputs_and_gradients_from_few_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    rows_seen: List[int] = []

    def fake_compile(fn, dynamic=None, mode="default"):
        return lambda *args: rows_seen.append(args[0].shape[0]) or fn(*args)

    monkeypatch.setattr(torch, "compile", fake_compile)
    results = []
    for pad in (0, 64):
        torch.manual_seed(0)
        options = {"sampler": "occupancy", "compile": True, "compile_pad_rows": pad, "march_steps": 48}
        model = vqad_model({"near_far": (2.0, 6.0), "scene_type": "bounded"}, **options)
        model.train()
        model.compile_fields_once(torch.device("cuda"), True)
        rows_seen.clear()
        torch.manual_seed(1)
        outputs = model(_rays())
        outputs["rgb"].square().sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((outputs["rgb"].detach(), grads, list(rows_seen)))
    (rgb, grads, rows), (padded_rgb, padded_grads, padded_rows) = results
    assert rows and any(n % 64 for n in rows)  # unpadded, the sample counts are arbitrary
    assert all(n % 64 == 0 for n in padded_rows) and len(padded_rows) == len(rows)
    torch.testing.assert_close(padded_rgb, rgb, rtol=0, atol=1e-6)
    assert len(padded_grads) == len(grads) and grads
    for g, padded_g in zip(grads, padded_grads, strict=True):
        torch.testing.assert_close(padded_g, g, rtol=1e-5, atol=1e-7)
