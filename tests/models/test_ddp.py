"""Both methods under DistributedDataParallel: 2 CPU processes on the gloo backend, wrapped as
CompressionPipeline wraps a model (no buffer broadcast; nerf-qat without the unused-parameter
search), each rank training on different rays. Afterwards every rank must hold the same
quantization state, logits and codebooks, and rank 0's export must equal the export of its
checkpoint loaded in a single process."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Dict

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import forward_rays as _rays
from helpers import tiny_nerf_qat_model as nerfqat_model
from helpers import tiny_vqad_model as vqad_model
from torch.nn.parallel import DistributedDataParallel as DDP

from nerfqat_plugin.pipelines.compression_pipeline import rewrap_for_ddp

STEPS = 6


def _build(method: str):
    torch.manual_seed(0)
    if method.startswith("nerf-qat"):
        # Quantization on from step 1, ranges observed until the end: the state DDP must keep equal.
        # int4 calibrates least-error clipped ranges, each rank on its own activations.
        bits = 4 if method == "nerf-qat-int4" else 8
        return nerfqat_model(bits=bits, float_warmup_steps=1, calibration_steps=100, qat_start_fraction=None)
    if method == "vqad-sparse":  # the finest level drops empty blocks mid-run (below)
        return vqad_model(
            grid_resolutions=((4, 4, 3), (8, 6, 5), (16, 12, 8)), sparse_from_level=2, sparse_block_size=4
        )
    return vqad_model()


def _state(model: torch.nn.Module) -> Dict[str, object]:
    return {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in model.state_dict().items()}


def _worker(rank: int, method: str, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model = _build(method)
        # As CompressionPipeline does: nerfstudio's wrapper first, then the one the model asks for
        # (nerf-qat: no unused-parameter search, so a parameter left without gradient would fail here).
        ddp = rewrap_for_ddp(DDP(model, find_unused_parameters=True), rank)
        assert ddp.find_unused_parameters is method.startswith("vqad")
        assert not ddp.broadcast_buffers  # the identical state below is the models' own doing
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.train()
        for step in range(STEPS):
            if method.startswith("nerf-qat"):
                model._apply_quant_schedule(step)
            if method == "vqad-sparse" and step == STEPS // 2:
                model.prune_empty_blocks()  # every rank at once, as the training callback does
            rays = _rays(seed=100 * rank + step)  # every rank its own rays and targets
            target = {"image": torch.rand(64, 3, generator=torch.Generator().manual_seed(7 + rank))}
            outputs = ddp(rays)
            loss = sum(model.get_loss_dict(outputs, target).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        states = [None, None]
        dist.all_gather_object(states, _state(model))
        if rank == 0:
            model.eval()
            size = model.export_compressed(Path(out) / "ddp.nqz")
            torch.save({"states": states, "size": size}, Path(out) / "result.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("method", ["nerf-qat", "nerf-qat-int4", "vqad", "vqad-sparse"])
def test_ranks_hold_identical_state_and_export_equals_single_process(tmp_path: Path, method: str) -> None:
    mp.spawn(_worker, args=(method, _free_port(), str(tmp_path)), nprocs=2, join=True)
    result = torch.load(tmp_path / "result.pt", weights_only=False)
    rank0, rank1 = result["states"]
    assert rank0.keys() == rank1.keys()
    differing = [
        k for k in rank0 if not (torch.equal(rank0[k], rank1[k]) if torch.is_tensor(rank0[k]) else rank0[k] == rank1[k])
    ]
    assert not differing, f"ranks differ in {differing}"
    if method.startswith("nerf-qat"):
        scales = [k for k in rank0 if k.endswith("output_quantizer.scale")]
        assert scales and any(rank0[k].item() != 1.0 for k in scales)  # ranges were really observed
    else:
        assert any(k.startswith("field.grid.logits") for k in rank0)

    # The checkpoint (rank 0's state, as nerfstudio writes it) loaded in one process exports the same file.
    single = _build(method)
    single.load_state_dict(rank0)
    single.eval()
    single.export_compressed(tmp_path / "single.nqz")
    assert (tmp_path / "single.nqz").read_bytes() == (tmp_path / "ddp.nqz").read_bytes()
