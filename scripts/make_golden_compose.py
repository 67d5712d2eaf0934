#!/usr/bin/env python3
"""Golden scales for composed calibration (tests/test_compose.cc): the smoothing scales the
pinned reference's own SmoothQuantModifier (llm-compressor 0.14.0.1, torch 2.13.0 CPU)
computes for data/tiny-llama with data/golden/smoothquant/stats (alpha 0.5), per mapping,
exactly as scripts/make_golden_smoothquant.py applied them to make
data/golden/smoothquant/tiny-llama-smoothed.

The test needs them to build what a later stage must see after smoothing, independently of
quench: the smoothed model's Hessian diag(1/s) H diag(1/s) and activation ranges
[min_c / s_c, max_c / s_c].

Writes data/golden/compose/tiny_llama_sq_scales.safetensors: "<norm>.scales" (f32).
Usage: .venv-ref/bin/python scripts/make_golden_compose.py [OUT_DIR]
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from make_golden_smoothquant import Norm, linear, smooth  # noqa: E402

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "data", "golden", "compose")


def main():
    src = os.path.join(ROOT, "data", "tiny-llama")
    stats = load_file(os.path.join(ROOT, "data", "golden", "smoothquant", "stats",
                                   "stats-00001.safetensors"))
    index = json.load(open(os.path.join(src, "model.safetensors.index.json")))
    tensors = {}
    for s in sorted(set(index["weight_map"].values())):
        tensors.update(load_file(os.path.join(src, s)))
    cfg = json.load(open(os.path.join(src, "config.json")))
    out = {}
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        attn = [p + "self_attn." + k for k in ("q_proj", "k_proj", "v_proj")]
        mlp = [p + "mlp." + k for k in ("gate_proj", "up_proj")]
        for norm, members in ((p + "input_layernorm", attn), (p + "post_attention_layernorm", mlp)):
            dtype = tensors[norm + ".weight"].dtype
            mn = stats[members[0] + ".min"].to(dtype)
            mx = stats[members[0] + ".max"].to(dtype)
            nl = Norm(tensors[norm + ".weight"].clone())
            bl = [linear(tensors[m + ".weight"]) for m in members]
            out[norm + ".scales"] = smooth(0.5, nl, bl, mn, mx).float().contiguous()
    os.makedirs(OUT, exist_ok=True)
    save_file(out, os.path.join(OUT, "tiny_llama_sq_scales.safetensors"),
              metadata={"generator": "scripts/make_golden_compose.py", "llmcompressor": "0.14.0.1",
                        "torch": torch.__version__, "alpha": "0.5"})


if __name__ == "__main__":
    main()
