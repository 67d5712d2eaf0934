#!/usr/bin/env python3
"""llm-compressor's own SmoothQuant with static W8A8 on all-MiniLM-L6-v2
(docs/convert-reference.md "Composed calibration"): oneshot with an optional SmoothQuantModifier
(MiniLM's one exact pair, the attention context -> attention.output.dense, written as the
reference's mapping [[balance], smooth]: value's output is the context's per-channel source)
followed by a QuantizationModifier whose one group is quench's `--scheme W8A8
--static-activations` (int8 channel symmetric weights; int8 per-tensor symmetric static input
activations), calibrated on the same samples collect-stats reads (first N paragraphs, L tokens),
saved compressed (int-quantized) so that scripts/eval_minilm_static.py scores it as it scores
quench's outputs.

--two-stage runs the SmoothQuantModifier alone first (no quantization), then the
QuantizationModifier on the smoothed model in a second oneshot, so that the static input
scales are observed on the smoothed activations (what quench computes: the smoothed ranges).
In one oneshot the activation observers run in the same calibration pass that SmoothQuant's
hooks do, i.e. before the smoothing is applied.

--report prints, for every attention.output.dense, the stored input_scale and max|x| / 127 of
its input on the calibration data in the saved (smoothed) model, to show which activations the
scale was observed on.

Usage (reference venv): python scripts/ref_minilm_smooth_static.py MODEL_DIR CALIB_TXT OUT_DIR
       [--alpha 0.5] [--no-smooth] [--two-stage] [--samples 256] [--seq-len 128]
"""
import time

import torch
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import QuantizationModifier
from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

from ref_minilm_calib import (  # the collector's own sampling
    add_sampling_args, calib_argparser, load_calibration, save_compressed)

MAPPING = [[["re:.*attention\\.output\\.dense$"], "re:.*attention\\.self\\.value$"]]


def quant_modifier():
    scheme = QuantizationScheme(
        targets=["Linear"],
        weights=QuantizationArgs(num_bits=8, type="int", symmetric=True, strategy="channel"),
        input_activations=QuantizationArgs(num_bits=8, type="int", symmetric=True,
                                           strategy="tensor", dynamic=False))
    return QuantizationModifier(config_groups={"group_0": scheme})


def dense_input_max(model, tok, seqs):
    """max |x| over the calibration tokens at each attention.output.dense input (no padding:
    one sequence at a time)."""
    seen = {}
    hooks = []
    for name, m in model.named_modules():
        if name.endswith("attention.output.dense"):
            def hook(mod, args, name=name):
                v = args[0].detach().abs().max().item()
                seen[name] = max(seen.get(name, 0.0), v)
            hooks.append(m.register_forward_pre_hook(hook))
    with torch.inference_mode():
        for s in seqs:
            ids = torch.tensor([s])
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    for h in hooks:
        h.remove()
    return seen


def main():
    p = calib_argparser()
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--no-smooth", action="store_true")
    p.add_argument("--two-stage", action="store_true")
    p.add_argument("--report", action="store_true")
    add_sampling_args(p)
    a = p.parse_args()
    tok, seqs, ds, model = load_calibration(a.model, a.calib, a.samples, a.seq_len)
    smooth = SmoothQuantModifier(smoothing_strength=a.alpha, mappings=MAPPING)
    stages = []
    if a.no_smooth:
        stages.append([quant_modifier()])
    elif a.two_stage:
        stages += [[smooth], [quant_modifier()]]
    else:
        stages.append([smooth, quant_modifier()])
    t0 = time.time()
    for recipe in stages:
        oneshot(model=model, dataset=ds, recipe=recipe, num_calibration_samples=len(seqs),
                processor=tok, max_seq_length=a.seq_len, pipeline="basic", batch_size=1)
    took = time.time() - t0
    if a.report:
        # The saved model's dense inputs (smoothed where SmoothQuant ran), quantization off.
        from compressed_tensors.quantization import QuantizationStatus  # noqa: F401
        from llmcompressor.utils.helpers import DisableQuantization
        with DisableQuantization(model):
            mx = dense_input_max(model, tok, seqs)
        for name, m in model.named_modules():
            if name in mx:
                print(f"{name}: input_scale {m.input_scale.item():.6g}, "
                      f"max|x|/127 on the saved model {mx[name] / 127:.6g}")
    save_compressed(model, tok, a.out)
    what = "no smoothing" if a.no_smooth else f"SmoothQuant alpha {a.alpha}" + (
        ", two oneshots" if a.two_stage else "")
    print(f"oneshot W8A8 static ({what}, {len(seqs)} samples) took {took:.1f} s -> {a.out}")


if __name__ == "__main__":
    main()
