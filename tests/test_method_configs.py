"""The methods' trainer configurations: options that reach what they configure."""

from __future__ import annotations

import shlex

import torch
import tyro

from method_configs.vqad import vqad_method


def test_adam_betas_are_an_option_that_reaches_torch() -> None:
    default = vqad_method.config
    config = tyro.cli(type(default), args=shlex.split("--optimizers.fields.optimizer.betas 0.9 0.99"), default=default)
    param = torch.nn.Parameter(torch.zeros(2))
    assert config.optimizers["fields"]["optimizer"].setup([param]).defaults["betas"] == (0.9, 0.99)
    assert config.optimizers["index_logits"]["optimizer"].setup([param]).defaults["betas"] == (0.9, 0.999)
