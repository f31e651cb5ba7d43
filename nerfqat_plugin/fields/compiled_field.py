"""A nerfstudio Field whose flat-tensor methods run ``torch.compile``d while training.

Evaluation always runs the eager methods, so a trained model and a model rebuilt from its
compressed file (never compiled) render identical images.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import torch
from nerfstudio.fields.base_field import Field


class TrainingCompiledField(Field):
    """Field with ``compiled_methods``: methods on flat tensors that :meth:`compile_for_training`
    compiles and :meth:`run` calls (compiled while training, eager otherwise)."""

    compiled_methods: Tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self._compiled: Dict[str, Callable[..., Any]] = {}

    def compile_for_training(self) -> None:
        """Use ``torch.compile``d versions of ``compiled_methods`` while training."""
        self._compiled = {name: torch.compile(getattr(self, name)) for name in self.compiled_methods}

    def run(self, name: str, *args: Any) -> Any:
        """Call method ``name``: compiled while training (once compiled), eager otherwise."""
        fn = self._compiled.get(name) if self.training else None
        return (fn or getattr(self, name))(*args)
