"""The methods' trainer configurations: options that reach what they configure."""

from __future__ import annotations

import shlex

import pytest
import torch
import tyro
from tyro.conf import FlagConversionOff

from method_configs.vqad import vqad_method


def test_adam_betas_are_an_option_that_reaches_torch() -> None:
    default = vqad_method.config
    config = tyro.cli(type(default), args=shlex.split("--optimizers.fields.optimizer.betas 0.9 0.999"), default=default)
    param = torch.nn.Parameter(torch.zeros(2))
    assert config.optimizers["fields"]["optimizer"].setup([param]).defaults["betas"] == (0.9, 0.999)
    assert config.optimizers["index_logits"]["optimizer"].setup([param]).defaults["betas"] == (0.9, 0.99)  # default
    assert config.optimizers["proposal_networks"]["optimizer"].setup([param]).defaults["betas"] == (0.9, 0.999)


def test_adam_betas_outside_0_to_1_are_refused_with_a_message_not_a_traceback(capsys: pytest.CaptureFixture) -> None:
    default = vqad_method.config
    with pytest.raises(SystemExit):  # tyro reports a ValueError raised while building the config
        tyro.cli(type(default), args=shlex.split("--optimizers.fields.optimizer.betas 0.9 1.0"), default=default)
    message = " ".join(capsys.readouterr().err.split())
    assert "betas must each be in [0, 1), got [0.9, 1.0]" in message.replace("│", "").replace("  ", " ")
    assert "Traceback" not in message


def test_adam_is_fused_by_default_and_updates_as_the_per_operation_loop_does() -> None:
    from method_configs.nerf_qat import nerf_qat_method

    default = vqad_method.config
    args = ["--optimizers.fields.optimizer.fused", "False"]
    off = tyro.cli(type(default), args=args, default=default, config=(FlagConversionOff,))
    torch.manual_seed(0)
    start, grads = torch.randn(3, 5), [torch.randn(3, 5) for _ in range(3)]
    updated = []
    for config in (default, off):
        param = torch.nn.Parameter(start.clone())
        optimizer = config.optimizers["fields"]["optimizer"].setup([param])
        for grad in grads:
            param.grad = grad.clone()
            optimizer.step()
        updated.append((optimizer.defaults["fused"], param.detach()))
    (fused, with_fused), (loop, with_loop) = updated
    assert fused is True and not loop
    torch.testing.assert_close(with_fused, with_loop)
    assert not torch.equal(with_fused, start)
    for name, group in {**default.optimizers, **nerf_qat_method.config.optimizers}.items():
        assert group["optimizer"].setup([torch.nn.Parameter(start.clone())]).defaults["fused"], name
