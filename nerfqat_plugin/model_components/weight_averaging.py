"""An exponential moving average of a model's weights that renders, evaluates and exports in their place.

The averaging is torch-ema's :class:`~torch_ema.ExponentialMovingAverage`. This module makes it a
part of the model: the averaged copies are buffers, so nerfstudio's checkpoints keep them,
``model.to(device)`` moves them, and ``ns-eval`` or ``ns-export-compressed`` find them after a reload.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Sequence

import torch
from torch import nn
from torch_ema import ExponentialMovingAverage


class AveragedWeights(nn.Module):
    """Exponential moving average of ``parameters``, swapped into them for rendering.

    Args:
        parameters: the weights to average (they stay the model's own parameters).
        decay: weight of the old average at each update; torch-ema warms it up as
            ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates.
    """

    def __init__(self, parameters: Sequence[nn.Parameter], decay: float) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be between 0 and 1 (exclusive), got {decay}")
        self._averaged = list(parameters)  # the model's own parameters (not registered here again)
        self._ema = ExponentialMovingAverage(self._averaged, decay=decay)
        for i, shadow in enumerate(self._ema.shadow_params):
            self.register_buffer(f"shadow_{i}", shadow)
        self.swapped_in = False
        """Whether the parameters hold the averages now (their own values are kept aside)."""

    @property
    def num_updates(self) -> int:
        return int(self._ema.num_updates or 0)

    def get_extra_state(self) -> Dict[str, int]:
        return {"num_updates": self.num_updates}

    def set_extra_state(self, state: Dict[str, int]) -> None:
        self._ema.num_updates = int(state.get("num_updates", 0))

    def _ema_on_current_buffers(self) -> ExponentialMovingAverage:
        # ``Module.to`` and ``load_state_dict`` may replace the buffers; torch-ema must use the
        # tensors the module holds now.
        self._ema.shadow_params = [self.get_buffer(f"shadow_{i}") for i in range(len(self._ema.shadow_params))]
        return self._ema

    @torch.no_grad()
    def update(self) -> None:
        """Fold the parameters' current values into the average (after an optimizer step)."""
        if self.swapped_in:
            raise RuntimeError("cannot update the weight average while it is swapped into the parameters")
        self._ema_on_current_buffers().update()

    def swap_in(self) -> None:
        """Put the averages into the parameters, keeping their values aside (no-op before any update)."""
        if self.swapped_in or self.num_updates == 0:
            return
        ema = self._ema_on_current_buffers()
        ema.store()
        ema.copy_to()
        self._mark_changed()
        self.swapped_in = True

    def swap_out(self) -> None:
        """Give the parameters back the values :meth:`swap_in` kept aside."""
        if not self.swapped_in:
            return
        self._ema.restore()
        self._ema.collected_params = None
        self._mark_changed()
        self.swapped_in = False

    def _mark_changed(self) -> None:
        """torch-ema copies through ``.data``, which leaves the parameters' version counters alone;
        caches keyed on them (:func:`weights_version`: integer blocks, the occupancy grid) must see
        the swap."""
        for param in self._averaged:
            torch.autograd.graph.increment_version(param)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The averages in the parameters for the duration (as they were if already swapped in)."""
        was_in = self.swapped_in
        self.swap_in()
        try:
            yield
        finally:
            if not was_in:
                self.swap_out()
