"""Training-only compilation of the fields (both methods): compiled paths while training, eager
paths in evaluation (so trained and file-rebuilt models render identically), compiled once."""

from __future__ import annotations

from typing import List

import pytest
import torch
from helpers import forward_rays as _rays
from helpers import tiny_nerf_qat_model as nerfqat_model
from helpers import tiny_vqad_model as vqad_model


@pytest.mark.parametrize("build", [nerfqat_model, vqad_model], ids=["nerf-qat", "vqad"])
def test_compiled_paths_run_only_while_training(monkeypatch: pytest.MonkeyPatch, build) -> None:
    calls: List[str] = []

    def fake_compile(fn):
        def compiled(*args):
            calls.append(fn.__name__)
            return fn(*args)

        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = build(compile=True)
    model.train()
    model(_rays())  # on CPU nothing is compiled: the option is for CUDA
    assert calls == []
    model.compile_fields_once(torch.device("cuda"), True)
    model(_rays())
    assert calls, "training must use the compiled paths"
    seen = len(calls)
    model.eval()
    with torch.no_grad():
        model(_rays())
    assert len(calls) == seen  # evaluation stays eager
    fields = model.fields_to_compile()
    compiled = [dict(f._compiled) for f in fields]
    model.train()
    model.compile_fields_once(torch.device("cuda"), True)  # once only
    assert [dict(f._compiled) for f in fields] == compiled
