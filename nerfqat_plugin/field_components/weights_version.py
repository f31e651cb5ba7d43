"""A key that changes whenever any weight of some modules changes: for caches derived from weights."""

from __future__ import annotations

from typing import Tuple

from torch import nn


def weights_version(*modules: nn.Module) -> Tuple[Tuple[int, int], ...]:
    """The storage and in-place version of every parameter and buffer of ``modules``: an optimizer
    step, averaged weights swapped in, a load or a move to another device all change it."""
    return tuple((t.data_ptr(), t._version) for module in modules for t in [*module.parameters(), *module.buffers()])
