"""Which blocks of a trained float nerf-qat run lose most when only their weights are quantized.

Post-training, no QAT: for each block of the NeRF field (the same block in the coarse and the fine
field at once) the weights alone are fake-quantized to ``--bits`` per output channel (max range),
the test views are rendered, and the PSNR drop against the float model is reported; then every
block at once. It says where low-bit weights hurt, to decide which blocks to keep at more bits.

    python benchmarks/layer_sensitivity.py --load-config outputs/.../config.yml --bits 4 --out sens.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
from pathlib import Path
from typing import Dict, Iterator, List, Sequence

import torch
from run_benchmark import evaluate_model, gpu_name

from nerfqat_plugin.field_components.quant_mlp import QuantLinear
from nerfqat_plugin.field_components.quantizers import PerChannelWeightQuantizer


@contextlib.contextmanager
def weights_quantized(blocks: Sequence[QuantLinear], bits: int) -> Iterator[None]:
    """Fake-quantize the weights (not the outputs) of ``blocks`` to ``bits`` while inside."""
    saved = [(b, b.weight_quantizer, b.output_quantizer, b.quant_enabled) for b in blocks]
    for block in blocks:
        block.weight_quantizer = PerChannelWeightQuantizer(block.linear.out_features, bits).to(block.linear.weight)
        block.output_quantizer = None
        block.quant_enabled = True
    try:
        yield
    finally:
        for block, weight_quantizer, output_quantizer, enabled in saved:
            block.weight_quantizer, block.output_quantizer = weight_quantizer, output_quantizer
            block.quant_enabled = enabled


def block_names(field: torch.nn.Module) -> List[str]:
    return [name for name, module in field.named_modules() if isinstance(module, QuantLinear)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load-config", type=Path, required=True, help="config.yml of a float (quantize False) run")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()

    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, step = eval_setup(args.load_config, test_mode="test")
    model = pipeline.model
    if model.config.quantize:
        raise SystemExit(f"{args.load_config} is a quantized run; the analysis needs a float one (quantize False)")
    model.config.compile = False  # blocks are swapped between renders
    device = next(model.parameters()).device
    fields = (model.field_coarse, model.field_fine)

    def psnr() -> float:
        with torch.no_grad():
            return evaluate_model(model, pipeline, device)["psnr"]

    reference = psnr()
    rows: List[Dict[str, object]] = []
    names = block_names(model.field_fine)
    for name in names + ["all"]:
        chosen = names if name == "all" else [name]
        blocks = [f.get_submodule(n) for f in fields for n in chosen]
        with weights_quantized(blocks, args.bits):
            value = psnr()
        rows.append({"block": name, "psnr": value, "drop_db": reference - value})
        print(f"{name:28s} {value:7.2f} dB  drop {reference - value:5.2f}", flush=True)
    result = {
        "config": str(args.load_config),
        "step": step,
        "bits": args.bits,
        "float_psnr": reference,
        "rows": rows,
        "gpu": gpu_name(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
