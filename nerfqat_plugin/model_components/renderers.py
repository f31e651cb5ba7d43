"""Colour rendering for scenes with a background: random backgrounds while training, a fixed one otherwise.

On an object photographed on a plain background (NeRF-synthetic's white), an empty field renders
the background colour everywhere, and with most pixels background that is a strong minimum the
field can fall into and not leave (every view blank). Training with a new random background per
ray, composited into the RGBA ground truth as well (instant-ngp's recipe, nerfstudio's
``"random"``), takes that minimum away: empty space must then render whatever colour the ray drew,
so only real opacity explains the object. Evaluation, the viewer and the file render on the fixed
colour the dataset's convention uses.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from nerfstudio.model_components import renderers
from nerfstudio.model_components.renderers import BackgroundColor, RGBRenderer
from nerfstudio.utils import colors
from torch import Tensor


class RandomTrainingBackgroundRenderer(RGBRenderer):
    """An :class:`RGBRenderer` that trains on random backgrounds and renders on ``eval_background``.

    While training, images render without a background (black), and the loss composites the same
    random colour into prediction and RGBA ground truth. Ground truth without alpha has nothing to
    composite, so the loss then uses ``eval_background`` for both, exactly as a fixed background.
    """

    def __init__(self, eval_background: BackgroundColor = "white") -> None:
        super().__init__(background_color="random")
        self.eval_background = eval_background

    def forward(self, rgb: Tensor, weights: Tensor, *args, background_color: Optional[BackgroundColor] = None, **kw):
        if background_color is None and not self.training:
            background_color = self.eval_background
        return super().forward(rgb, weights, *args, background_color=background_color, **kw)

    _named_colours: Dict[Tuple[str, torch.device], Tensor] = {}
    """Named background colours already on a device: nerfstudio copies one from the host at every
    call, and the host waits for each copy (every training step's metrics blend one)."""

    @classmethod
    def get_background_color(cls, background_color: BackgroundColor, shape: Tuple[int, ...], device: torch.device):
        named = renderers.BACKGROUND_COLOR_OVERRIDE is None and isinstance(background_color, str)
        if not named or background_color not in colors.COLORS_DICT or shape[-1] != 3:
            return super().get_background_color(background_color, shape, device)
        key = (background_color, torch.device(device))
        if key not in cls._named_colours:
            cls._named_colours[key] = colors.COLORS_DICT[background_color].to(device)
        return cls._named_colours[key].expand(shape)

    def blend_background(self, image: Tensor, background_color: Optional[BackgroundColor] = None) -> Tensor:
        """RGBA ``image`` on black while training (as training renders), else on ``eval_background``."""
        if background_color is None:
            background_color = "black" if self.training else self.eval_background
        return super().blend_background(image, background_color=background_color)

    def blend_background_for_loss_computation(
        self, pred_image: Tensor, pred_accumulation: Tensor, gt_image: Tensor
    ) -> Tuple[Tensor, Tensor]:
        if gt_image.shape[-1] >= 4:
            return super().blend_background_for_loss_computation(pred_image, pred_accumulation, gt_image)
        background = self.get_background_color(self.eval_background, pred_image.shape, pred_image.device)
        return pred_image + background * (1.0 - pred_accumulation), gt_image
