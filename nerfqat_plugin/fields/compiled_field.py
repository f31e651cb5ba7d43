"""A nerfstudio Field whose flat-tensor methods run ``torch.compile``d while training.

Evaluation always runs the eager methods, so a trained model and a model rebuilt from its
compressed file (never compiled) render identical images. On a CPU, evaluation runs them over slabs
of rows (:func:`in_row_slabs`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from nerfstudio.fields.base_field import Field
from torch import Tensor

CPU_SLAB_ROWS = 1 << 13
"""Rows a CPU evaluates at once. A render chunk's samples make temporaries of hundreds of MB per
operation; glibc maps every allocation above 32 MB afresh and faults each page in, which costs more
than the arithmetic. Slabs of a few MB reuse the heap and stay in the cache."""


def _row_aligned(value: Any, rows: int) -> bool:
    """Whether ``value`` is a tensor with a row per row of the call (not None, a constant or a table)."""
    return isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == rows


def in_row_slabs(fn: Callable[..., Any], *args: Any, rows: Optional[int] = None) -> Any:
    """``fn(*args)`` for a function of flat tensors whose rows are independent, computed over slabs of
    ``rows`` rows (default :data:`CPU_SLAB_ROWS`) and concatenated. Tensor arguments with the first
    argument's row count are sliced; others (None, constants) are passed whole. Returns a tensor or a
    tuple of tensors, as ``fn`` does."""
    n, rows = args[0].shape[0], rows or CPU_SLAB_ROWS
    if n <= rows:
        return fn(*args)
    parts = []
    for start in range(0, n, rows):
        sliced = (a[start : start + rows] if _row_aligned(a, n) else a for a in args)
        parts.append(fn(*sliced))
    if isinstance(parts[0], Tensor):
        return torch.cat(parts)
    return tuple(torch.cat(column) for column in zip(*parts, strict=True))


def in_padded_rows(fn: Callable[..., Any], *args: Any, multiple: int) -> Any:
    """``fn(*args)`` for a function of flat tensors whose rows are independent, with the row-aligned
    tensor arguments (those with the first argument's row count) zero-padded to a multiple of
    ``multiple`` rows and the outputs cut back: the same values and gradients, from few shapes."""
    n = args[0].shape[0]
    padded = -(-n // multiple) * multiple
    if padded == n:
        return fn(*args)
    grown = (torch.cat([a, a.new_zeros(padded - n, *a.shape[1:])]) if _row_aligned(a, n) else a for a in args)
    out = fn(*grown)
    return out[:n] if isinstance(out, Tensor) else tuple(o[:n] for o in out)


class TrainingCompiledField(Field):
    """Field with ``compiled_methods``: methods on flat tensors that :meth:`compile_for_training`
    compiles and :meth:`run` calls (compiled while training, eager otherwise)."""

    compiled_methods: Tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self._compiled: Dict[str, Callable[..., Any]] = {}
        self._pad_rows = 0

    def compile_for_training(self, dynamic: Optional[bool] = None, mode: str = "default", pad_rows: int = 0) -> None:
        """Use ``torch.compile``d versions of ``compiled_methods`` while training; ``dynamic`` True
        compiles for any row count at once (batches whose sample count changes every step), None
        lets torch recompile for a second shape; ``mode`` is torch.compile's; ``pad_rows`` > 1 pads
        their rows to a multiple of it (:func:`in_padded_rows`)."""
        self._compiled = {
            name: torch.compile(getattr(self, name), dynamic=dynamic, mode=mode) for name in self.compiled_methods
        }
        self._pad_rows = pad_rows

    def run(self, name: str, *args: Any) -> Any:
        """Call method ``name``: compiled while training (once compiled; rows padded if asked), eager
        otherwise (in row slabs on a CPU)."""
        if self.training and name in self._compiled:
            if self._pad_rows > 1:
                return in_padded_rows(self._compiled[name], *args, multiple=self._pad_rows)
            return self._compiled[name](*args)
        return self.eager(name, *args)

    def eager(self, name: str, *args: Any) -> Any:
        """Call method ``name`` uncompiled (in row slabs on a CPU, when not training)."""
        if not self.training and args[0].device.type == "cpu":
            return in_row_slabs(getattr(self, name), *args)
        return getattr(self, name)(*args)

    def evaluator(self, name: str) -> Callable[..., Any]:
        """Method ``name`` as :meth:`run` calls it."""
        return functools.partial(self.run, name)
