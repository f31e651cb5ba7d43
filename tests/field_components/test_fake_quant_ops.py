"""The compile-traceable wrapper of PyTorch's per-tensor fake-quant kernel: same values and gradients as the
native ops, and a quantized MLP that dynamo captures without graph breaks."""

from __future__ import annotations

from typing import Callable, List, Tuple

import pytest
import torch
from torch._dynamo.utils import counters

from nerfqat_plugin.field_components.fake_quant_ops import fake_quantize_per_tensor
from nerfqat_plugin.field_components.quant_mlp import QuantMLP, QuantSpec, set_observers, set_quantization
from nerfqat_plugin.fields.nerfqat_field import QuantNeRFField

GraphRecorder = Tuple[List[torch.fx.GraphModule], Callable[..., torch.fx.GraphModule]]


@pytest.fixture
def graph_recorder() -> GraphRecorder:
    """A fresh dynamo state and a ``torch.compile`` backend that records every graph it is given."""
    graphs: List[torch.fx.GraphModule] = []

    def count_graphs(gm: torch.fx.GraphModule, example_inputs: list) -> torch.fx.GraphModule:
        graphs.append(gm)
        return gm

    torch._dynamo.reset()
    counters.clear()
    return graphs, count_graphs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_tensor_matches_native_values_and_gradient(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    x = (torch.randn(300, 5) * 4).to(dtype)
    scale, zero_point = torch.tensor(0.03), torch.tensor(90, dtype=torch.int32)
    ours_in, native_in = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = fake_quantize_per_tensor(ours_in, scale, zero_point, 0, 255)
    native = torch.fake_quantize_per_tensor_affine(native_in, scale, zero_point, 0, 255)
    assert ours.dtype == dtype and torch.equal(ours, native)
    weights = torch.randn(300, 5).to(dtype)
    (ours * weights).sum().backward()
    (native * weights).sum().backward()
    assert torch.equal(ours_in.grad, native_in.grad)
    assert (ours_in.grad == 0).any() and (ours_in.grad != 0).any()  # clamped values get no gradient


@pytest.mark.parametrize("observe", [True, False], ids=["calibration", "frozen-ranges"])
@pytest.mark.parametrize(
    "spec",
    [QuantSpec(8), QuantSpec(4, activation_range="mse"), QuantSpec(4, activation_range="mse", weight_range="mse")],
    ids=["int8-max", "int4-mse", "int4-mse-weights"],
)
def test_quantized_mlp_is_captured_without_graph_breaks(
    graph_recorder: GraphRecorder, observe: bool, spec: QuantSpec
) -> None:
    """The native ops' gradient kernels have no fake-tensor implementation for symbolic shapes;
    called directly they break dynamo's graph at every quantizer once shapes are dynamic (training
    runs the coarse and fine sample counts through one compiled field), and on the GPU the QAT
    phase fell back to eager. The least-error (mse) range search must not read a tensor on the host
    either."""
    mlp = QuantMLP(in_dim=6, num_layers=3, layer_width=16, spec=spec, out_dim=2, skip_connections=(2,))
    mlp.train()
    set_quantization(mlp, True)
    set_observers(mlp, observe)
    graphs, count_graphs = graph_recorder
    compiled = torch.compile(mlp, backend=count_graphs, dynamic=True)
    out = compiled(torch.randn(64, 6))
    out.sum().backward()
    assert dict(counters["graph_break"]) == {}
    assert len(graphs) == 1
    assert mlp.layers[0].linear.weight.grad is not None


def test_nerf_field_compiles_each_method_into_one_graph_in_every_phase(graph_recorder: GraphRecorder) -> None:
    """The nerf-qat field as training runs it: coarse and fine sample counts (dynamic shapes), float,
    calibration and QAT phases; every call of a compiled method is one whole graph."""
    field = QuantNeRFField(QuantSpec(4, activation_range="mse"), layer_width=16, head_width=8)
    field.train()
    graphs, count_graphs = graph_recorder
    compiled = {name: torch.compile(getattr(field, name), backend=count_graphs) for name in field.compiled_methods}
    for quant, observe in [(False, False), (True, True), (True, False)]:
        set_quantization(field, quant)
        set_observers(field, observe)
        for n in (32, 96):
            density, features = compiled["density_and_features"](torch.rand(n, 3))
            rgb = compiled["color"](features, torch.nn.functional.normalize(torch.randn(n, 3), dim=-1))
            (density.sum() + rgb.sum()).backward()
    assert dict(counters["graph_break"]) == {}
    assert all(len(list(gm.graph.nodes)) > 10 for gm in graphs)
