"""Keys that change whenever some tensors or some modules' weights change: for caches derived from them."""

from __future__ import annotations

from typing import Tuple

from torch import Tensor, nn


def tensors_version(*tensors: Tensor) -> Tuple[Tuple[int, int], ...]:
    """The storage and in-place version of each of ``tensors``: an in-place update (an optimizer step,
    ``copy_``), a load or a move to another device all change it."""
    return tuple((t.data_ptr(), t._version) for t in tensors)


def weights_version(*modules: nn.Module) -> Tuple[Tuple[int, int], ...]:
    """:func:`tensors_version` of every parameter and buffer of ``modules``: an optimizer step,
    averaged weights swapped in, a load or a move to another device all change it."""
    return tensors_version(*(t for module in modules for t in [*module.parameters(), *module.buffers()]))
