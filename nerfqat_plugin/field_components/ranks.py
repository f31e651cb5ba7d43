"""Reductions over DDP ranks for state that every rank must derive identically.

Field components that observe their inputs (activation ranges, occupied blocks) see a different
batch on every rank; reducing what they observe keeps their buffers equal without DDP's buffer
broadcast. Outside a multi-process group the reduction does nothing.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def reduce_over_ranks(tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    """All-reduce ``tensor`` in place over the default process group (if one with several ranks
    exists) and return it."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=op)
    return tensor
