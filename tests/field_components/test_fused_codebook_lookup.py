"""The fused codebook-grid lookup (a Triton kernel) against the torch path: values and gradients.

Triton's interpreter runs the kernels on the CPU (``TRITON_INTERPRET=1``, read when Triton compiles
a kernel's definition), so the comparison runs in a subprocess of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

COMPARE = r"""
import json
import torch
from nerfqat_plugin.field_components.codebook_grid import LearnedIndexCodebookGrid
from nerfqat_plugin.field_components.fused_codebook_lookup import fused_lookup_available, fused_level_lookup
from nerfqat_plugin.field_components.half_precision import round_to_half

assert fused_lookup_available(torch.device("cpu"))
results = []
for options, compact in (({}, False), ({"sparse_from_level": 1, "block_size": 2}, False),
                         ({"sparse_from_level": 1, "block_size": 2}, True)):
    torch.manual_seed(0)
    grid = LearnedIndexCodebookGrid(resolutions=(3, (5, 4, 6)), bits=4, feature_dim=6, **options).train()
    with torch.no_grad():
        for logits in grid.logits:
            logits.normal_(0.0, 2.0)  # indices spread over the codebook
    if grid.sparse_levels:
        grid.set_block_mask(1, (torch.arange(18) % 3 != 1).to(torch.uint8))  # 3 x 2 x 3 blocks
    if compact:
        grid.compact_level(1)
    g = torch.Generator().manual_seed(1)
    positions = torch.cat([torch.rand(200, 3, generator=g), torch.rand(20, 3, generator=g) * 1.6 - 0.3])
    upstream = torch.randn(len(positions), 6, generator=g)
    for level in range(2):
        grid.zero_grad()
        expected = grid.level_features(positions, level, hard=False)
        (expected * upstream).sum().backward()
        expected_logits, expected_codebook = grid.logits[level].grad.clone(), grid.codebooks[level].grad.clone()
        grid.zero_grad()
        rows = grid._buffers[f"vertex_rows_{level}"] if grid.is_compacted(level) else None
        fused = fused_level_lookup(positions, grid.logits[level], round_to_half(grid.codebooks[level]),
                                   grid.resolutions[level], rows=rows, block_mask=grid.block_mask(level),
                                   block_size=grid.block_size)
        (fused * upstream).sum().backward()
        results.append({
            "case": f"{options} compact={compact} level={level}",
            "values": float((fused - expected).abs().max()), "scale": float(expected.abs().max()),
            "logits": float((grid.logits[level].grad - expected_logits).abs().max()),
            "logits_scale": float(expected_logits.abs().max()),
            "touched_rows": int((grid.logits[level].grad.abs().sum(-1) > 0).sum()),
            "expected_touched_rows": int((expected_logits.abs().sum(-1) > 0).sum()),
            "codebook": float((grid.codebooks[level].grad - expected_codebook).abs().max()),
            "codebook_scale": float(expected_codebook.abs().max()),
        })
print(json.dumps(results))
"""


def test_fused_lookup_has_the_torch_paths_values_and_gradients() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", COMPARE], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == 6
    for r in results:
        assert r["scale"] > 0.1 and r["logits_scale"] > 1e-2 and r["codebook_scale"] > 0.1, r  # they say something
        assert r["values"] <= 1e-6 and r["logits"] <= 1e-6 and r["codebook"] <= 1e-5 * r["codebook_scale"], r
        assert r["touched_rows"] == r["expected_touched_rows"], r  # only touched vertices get gradients


TRAIN_STEP = r"""
import json
import sys

import torch

sys.path.insert(0, sys.argv[1])
from helpers import forward_rays, tiny_vqad_model

import nerfqat_plugin.field_components.codebook_grid as codebook_grid

calls = []
fused = codebook_grid.fused_level_lookup
codebook_grid.fused_level_lookup = lambda *args: calls.append(1) or fused(*args)
results = {}
for option in (False, True):
    torch.manual_seed(0)
    # The finest level has more vertices (6,720) than the 512 samples have corners: the fused kernel
    # takes it; the coarser two take the torch path's per-vertex gather.
    levels = ((4, 4, 3), (8, 6, 5), (24, 20, 14))
    model = tiny_vqad_model(grid_resolutions=levels, fused_codebook_lookup=option, compile=False).train()
    torch.manual_seed(1)
    out = model(forward_rays(64))
    out["rgb"].pow(2).sum().backward()
    grid = model.field.grid
    results[option] = [out["rgb"].detach()] + [p.grad for p in list(grid.logits) + list(grid.codebooks)]
    results[f"calls {option}"] = len(calls)
pairs = zip(results[False], results[True])
print(json.dumps({
    "differences": [float((a - b).abs().max() / b.abs().max()) for a, b in pairs],
    "calls": [results["calls False"], results["calls True"]],
}))
"""


def test_a_vqad_training_step_with_the_fused_lookup_matches_the_torch_path() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [sys.executable, "-c", TRAIN_STEP, tests]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # The option switches the path of the finest level only, once per forward.
    assert result["calls"] == [0, 1], result
    assert max(result["differences"]) <= 1e-5, result  # colours, logits' and codebooks' gradients


COMPILED = r"""
import json
import torch
from nerfqat_plugin.field_components.codebook_grid import LearnedIndexCodebookGrid

torch.manual_seed(0)
# Sparse levels 1 and 2; the finest is compacted and has more rows (6,720) than 64 points have
# corners, so the fused kernel takes it inside the compiled graph.
grid = LearnedIndexCodebookGrid(
    resolutions=((4, 4, 3), (8, 6, 5), (24, 20, 14)), bits=4, feature_dim=4, sparse_from_level=1, block_size=2
).train()
with torch.no_grad():
    for logits in grid.logits:
        logits.normal_(0.0, 2.0)
grid.set_block_mask(2, (torch.arange(grid.block_mask(2).numel()) % 3 != 1).to(torch.uint8))
grid.compact_level(2)
grid.fused_lookup = True
positions = torch.rand(64, 3)
level_mask = (torch.rand(64, 3) < 0.8).float()
results = {}
for name, function in (("eager", grid), ("compiled", torch.compile(grid, backend="aot_eager", fullgraph=True))):
    grid.zero_grad()
    out = function(positions, level_mask=level_mask)
    out.pow(2).sum().backward()
    results[name] = [out.detach()] + [p.grad.clone() for p in list(grid.logits) + list(grid.codebooks)]
print(json.dumps({
    "fused_level": grid._fusable(grid._trained_rows(2), positions),
    "differences": [float((a - b).abs().max()) for a, b in zip(results["eager"], results["compiled"])],
    "scales": [float(b.abs().max()) for b in results["eager"]],
}))
"""


def test_a_compiled_grid_keeps_the_fused_lookup_in_one_graph() -> None:
    # fullgraph=True: a lookup that broke the graph (as a ``torch.compiler.disable``d call did, which
    # then failed on sparse levels) raises here.
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", COMPILED], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["fused_level"], result
    assert min(result["scales"]) > 0, result
    assert max(result["differences"]) <= 1e-5, result  # values, logits' and codebooks' gradients


PROBED = r"""
import json
import torch
import nerfqat_plugin.field_components.codebook_grid as codebook_grid
from nerfqat_plugin.field_components.codebook_grid import LearnedIndexCodebookGrid

calls = []  # the levels of each fused call
fused = codebook_grid.fused_probed_lookup
codebook_grid.fused_probed_lookup = lambda *args: calls.append(len(args[1])) or fused(*args)
torch.manual_seed(0)
# 6-bit codebooks of 4-probe buckets, 256-slot index tables: levels of 378 and 1,716 vertices
# collide. Levels concatenated and padded to 4: the level axis's layout is the output's.
grid = LearnedIndexCodebookGrid(
    resolutions=(5, (9, 7, 6), (13, 12, 11)), bits=6, feature_dim=3, index_mode="probed", probe_bits=2,
    probe_table_bits=8, concat_levels=4,
).train()
with torch.no_grad():
    for logits in grid.logits:
        logits.normal_(0.0, 2.0)  # probes spread over each bucket
g = torch.Generator().manual_seed(1)
positions = torch.cat([torch.rand(40, 3, generator=g), torch.rand(8, 3, generator=g) * 1.6 - 0.3])
upstream = torch.randn(len(positions), 12, generator=g)
level_mask = (torch.rand(len(positions), 3, generator=g) > 0.4).float()


def run(function, fused_lookup):
    grid.fused_lookup = fused_lookup
    grid.zero_grad()
    out = function()
    (out * upstream[:, : out.shape[1]]).sum().backward()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in [*grid.logits, *grid.codebooks]]
    return [out.detach(), *grads]


def differences(got, expected):
    return [float((a - b).abs().max()) for a, b in zip(got, expected)]


levels = []
for level in range(3):
    expected = run(lambda: grid.level_features(positions, level, hard=False), False)
    got = run(lambda: grid.level_features(positions, level, hard=False), True)
    logit_grad, fused_logit_grad = expected[1 + level], got[1 + level]
    levels.append({
        "scales": [float(t.abs().max()) for t in (expected[0], logit_grad, expected[4 + level])],
        "differences": differences(got, expected),
        "touched": int((fused_logit_grad.abs().sum(-1) > 0).sum()),
        "expected_touched": int((logit_grad.abs().sum(-1) > 0).sum()),
        "slots": logit_grad.shape[0],
    })
per_level_calls = list(calls)
together = {}
for name, call in {
    "all": lambda: grid(positions),
    "two levels, masked": lambda: grid(positions, num_levels=2, level_mask=level_mask),
}.items():
    expected = run(call, False)
    together[name] = differences(run(call, True), expected)
eager_calls = calls[len(per_level_calls):]
with torch.no_grad():  # a training model's densities: the logits' argmax, every level in one kernel
    grid.fused_lookup = False
    hard = grid(positions, num_levels=2, level_mask=level_mask)
no_grad_calls = calls[len(per_level_calls) + len(eager_calls):]
eager = run(lambda: grid(positions), False)
compiled = torch.compile(grid, backend="aot_eager", fullgraph=True)
in_graph = run(lambda: compiled(positions), True)
print(json.dumps({
    "levels": levels,
    "per_level_calls": per_level_calls,
    "together": together,
    "together_calls": eager_calls,
    "no_grad": float((hard - run(lambda: grid(positions, num_levels=2, level_mask=level_mask), False)[0]).abs().max()),
    "no_grad_calls": no_grad_calls,
    "compiled": differences(in_graph, eager),
    "compiled_calls": calls[len(per_level_calls) + len(eager_calls) + len(no_grad_calls):],
}))
"""


def test_the_fused_probed_lookup_has_the_torch_paths_values_and_gradients() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", PROBED], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["per_level_calls"] == [1, 1, 1], result  # one level each
    for level in result["levels"]:
        assert min(level["scales"]) > 1e-2, level  # values and gradients say something
        assert max(level["differences"]) <= 1e-5, level  # values, logits' and codebooks' gradients
        assert 0 < level["touched"] == level["expected_touched"] < level["slots"], level  # touched slots only
    # Every level in one call, with levels masked per point and the concatenation padded.
    assert result["together_calls"] == [3, 2], result
    for name, found in result["together"].items():
        assert max(found) <= 1e-5, (name, result)
    assert result["no_grad_calls"] == [2] and result["no_grad"] <= 1e-6, result  # densities without gradients
    assert result["compiled_calls"] and set(result["compiled_calls"]) == {3}, result
    assert max(result["compiled"]) <= 1e-5, result  # one graph (fullgraph), the same values and gradients


STORED = r"""
import json
import torch
import nerfqat_plugin.field_components.codebook_grid as codebook_grid
from nerfqat_plugin.field_components.codebook_grid import LearnedIndexCodebookGrid

calls = []
def counted(name):
    kernel = getattr(codebook_grid, name)
    return lambda *args: calls.append((name, len(args[1]))) or kernel(*args)  # (kernel, levels)


for name in ("stored_probed_lookup", "fused_probed_lookup"):
    setattr(codebook_grid, name, counted(name))
g = torch.Generator().manual_seed(1)
positions = torch.cat([torch.rand(60, 3, generator=g), torch.rand(8, 3, generator=g) * 1.6 - 0.3])
found = {}
# Nothing decodes; then the coarsest level (125 vertices x 3 features x 4 bytes) decodes and the others
# take the kernel together. Levels summed and concatenated.
for limit, concat in ((0, 0), (0, 4), (2000, 0), (2000, 4)):
    codebook_grid.MAX_DECODED_PROBED_LEVEL_BYTES = limit
    options = dict(resolutions=(5, (9, 7, 6), 11), bits=6, feature_dim=3, index_mode="probed", probe_bits=2,
                   probe_table_bits=6, concat_levels=concat)
    torch.manual_seed(0)
    trained = LearnedIndexCodebookGrid(**options).eval()
    with torch.no_grad():
        for logits in trained.logits:
            logits.normal_(0.0, 2.0)
    frozen = LearnedIndexCodebookGrid(**options, frozen=True).eval()
    frozen.load_state_dict({k: v for k, v in trained.state_dict().items() if "logits" not in k}, strict=False)
    for level in range(3):
        frozen.set_hard_indices(level, trained.logits[level].argmax(dim=-1).to(torch.int32))
    calls.clear()
    with torch.no_grad():
        trained.decoded_lookup = frozen.decoded_lookup = False
        gathered = [trained(positions), frozen(positions)]
        assert not calls, calls
        trained.decoded_lookup = frozen.decoded_lookup = True
        fused = [trained(positions), frozen(positions)]
    found[f"{limit}-{concat}"] = {
        "calls": calls[:],
        "scale": float(gathered[0].abs().max()),
        "differences": [float((a - b).abs().max()) for a, b in zip(fused, gathered)],
        "frozen_vs_trained": float((gathered[1] - gathered[0]).abs().max()),
    }
print(json.dumps(found))
"""


def test_renders_look_probed_levels_up_from_stored_probes_in_one_kernel() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", STORED], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    for case, result in found.items():
        # The levels that do not decode, in one launch: the trained grid's (argmax of its logits), then
        # the frozen one's (its stored probes).
        levels = 3 if case.startswith("0-") else 2
        assert result["calls"] == [["fused_probed_lookup", levels], ["stored_probed_lookup", levels]], (case, result)
        assert result["scale"] > 1e-2, (case, result)
        assert result["frozen_vs_trained"] <= 1e-6, (case, result)  # the stored probes are the argmax
        assert max(result["differences"]) <= 1e-5, (case, result)  # the kernels' values are the gathers'
