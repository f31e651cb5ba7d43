"""Notices when training has collapsed: rendered rays (almost) empty or one colour, images not.

A radiance field can settle into empty space (or a constant colour) and stay there, and the loss
alone does not say so. The monitor accumulates, per training step and without reading the GPU,
the mean accumulation of the batch's rays and the spread of rendered and true colours; every
``check_every`` steps it reads them once and, when two windows in a row look collapsed, prints one
warning line naming the likely cause and what to try. The state is a flag the models report as a
metric, so the run's event log records it too. Each window's training PSNR is kept
(``psnr_windows``): benchmark rows carry it, so a run's quality can be followed through training
(before and after quantization starts, say) without its event log.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

EMPTY_ACCUMULATION = 0.01
"""Mean opacity of the batch's rays below which renders count as empty."""
CONSTANT_SPREAD_RATIO = 0.05
"""Rendered colours spread less than this fraction of the true ones: renders count as constant."""
MIN_IMAGE_SPREAD = 0.02
"""True colours must spread at least this much (std, colours in [0, 1]) for a verdict."""

COLLAPSE_ADVICE = (
    "the field has collapsed to {what} ({detail}) although the training images are not. Likely "
    "causes: a learning rate too high for this scene (try --optimizers.fields.optimizer.lr at half "
    "the value), or sampling bounds that miss the scene (near/far planes, scene scale). The run goes "
    "on; its renders will stay {what}."
)


class CollapseMonitor:
    """Accumulates batch statistics and decides every ``check_every`` steps after ``start_step``."""

    def __init__(self, check_every: int = 200, start_step: int = 500) -> None:
        self.check_every = check_every
        self.start_step = start_step
        self.collapsed = False
        """Whether the last two windows looked collapsed (stays set once warned)."""
        self.warned = False
        self._suspect = False
        self._sums: Optional[Tensor] = None
        self.psnr_windows: List[Tuple[int, float]] = []
        """(step, PSNR of the training batches of the window that ended there) for every window."""

    def observe(self, rgb: Tensor, accumulation: Tensor, image: Tensor) -> None:
        """Add one training batch: rendered ``rgb`` [R, 3], its ``accumulation`` [R, 1], true ``image`` [R, 3+]
        (composited on the background the model renders)."""
        rgb, image = rgb.detach().float(), image[..., :3].detach().float()
        stats = torch.stack(
            [
                accumulation.detach().float().mean(),
                rgb.std(dim=0).mean(),
                image.std(dim=0).mean(),
                ((rgb - image) ** 2).mean(),
                torch.ones((), device=rgb.device),
            ]
        )
        self._sums = stats if self._sums is None else self._sums + stats

    def check(self, step: int) -> bool:
        """Decide on the steps observed since the last check (one host read); True when it warned now."""
        if step < self.start_step:  # the first steps render fog by design: they belong to no window
            self._sums = None
            return False
        if self._sums is None or step % self.check_every:
            return False
        accumulation, rendered_spread, image_spread, mse, _ = (self._sums / self._sums[-1]).tolist()
        self._sums = None
        self.psnr_windows.append((step, round(-10.0 * math.log10(max(mse, 1e-10)), 2)))
        if image_spread < MIN_IMAGE_SPREAD:
            return False
        empty = accumulation < EMPTY_ACCUMULATION
        constant = rendered_spread < CONSTANT_SPREAD_RATIO * image_spread
        looks_collapsed = empty or constant
        self.collapsed = looks_collapsed and (self._suspect or self.collapsed)
        self._suspect = looks_collapsed
        if not self.collapsed or self.warned:
            return False
        self.warned = True
        what = "empty space" if empty else "one colour"
        detail = (
            f"mean opacity {accumulation:.3f}"
            if empty
            else f"rendered colour spread {rendered_spread:.4f} vs {image_spread:.4f} in the images"
        )
        CONSOLE.print(f"[bold yellow]warning: step {step}: " + COLLAPSE_ADVICE.format(what=what, detail=detail))
        return True

    def psnr_lost_since(self, step: int) -> Optional[float]:
        """Training PSNR of the last window that ended before ``step`` minus that of the latest window
        that began at or after it, e.g. what switching quantization on at ``step`` cost (None until
        both exist). A window ending at ``end`` holds steps ``end - check_every + 1`` to ``end``."""
        before = [psnr for end, psnr in self.psnr_windows if end < step]
        after = [psnr for end, psnr in self.psnr_windows if end - self.check_every + 1 >= step]
        return before[-1] - after[-1] if before and after else None
