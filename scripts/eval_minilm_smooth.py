#!/usr/bin/env python3
"""MiniLM embedding similarity of quench outputs made with smoothing (docs/convert-reference.md
"SmoothQuant and AWQ", bench/README.md): as scripts/eval_minilm_gptq.py (mean-pooled embeddings'
cosine to the unquantized model over the evaluation text), but every float tensor of the output
replaces the model's (smoothing rewrites biases and norms besides the quantized weights), int8
weights (W8A8's int-quantized format) are decoded too, and with --act-int8 every quantized
Linear's input is quantized as vLLM runs W8A8: int8, symmetric, dynamic per token.

Usage (collector venv): python scripts/eval_minilm_smooth.py [--act-int8] MODEL_DIR EVAL_TXT OUT...
"""
import os
import sys

import numpy as np
import torch
from safetensors.numpy import load_file
from transformers import AutoModel, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_minilm_gptq import decode, embed, samples  # noqa: E402


def load(folder):
    t = {}
    for f in os.listdir(folder):
        if f.endswith(".safetensors"):
            t.update(load_file(os.path.join(folder, f)))
    weights = {}
    for name, v in t.items():
        if v.dtype == np.int8 and name.endswith(".weight") and name + "_scale" in t:
            weights[name] = v.astype(np.float32) * t[name + "_scale"].astype(np.float32)
        elif v.dtype in (np.float32, np.float16) and not name.endswith("_scale"):
            weights[name] = v.astype(np.float32)
    if any(n.endswith(".weight_packed") for n in t):
        weights.update(decode(folder))
    return weights


def act_int8(module, args):
    x = args[0]
    s = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 127.0
    return (torch.clamp(torch.round(x / s), -128, 127) * s,) + tuple(args[1:])


def main():
    argv = sys.argv[1:]
    acts = "--act-int8" in argv
    argv = [a for a in argv if a != "--act-int8"]
    model_dir, eval_txt, outs = argv[0], argv[1], argv[2:]
    tok = AutoTokenizer.from_pretrained(model_dir)
    sents = samples(eval_txt)
    base = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    ref = embed(base, tok, sents)
    for folder in outs:
        model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
        sd = model.state_dict()
        w = load(folder)
        quantized = set()
        for name, v in w.items():
            if name in sd:
                sd[name] = torch.from_numpy(v)
        for name, v in load_file_all(folder).items():
            if name.endswith(".weight_scale"):
                quantized.add(name[: -len(".weight_scale")])
        model.load_state_dict(sd)
        if acts:
            for name, m in model.named_modules():
                if name in quantized and isinstance(m, torch.nn.Linear):
                    m.register_forward_pre_hook(act_int8)
        cos = (embed(model, tok, sents) * ref).sum(-1)
        print(f"{folder}{' (int8 activations)' if acts else ''}: {len(sents)} sentences, "
              f"mean cos {cos.mean():.6f}, min {cos.min():.6f}, gap 1-mean {1 - cos.mean():.6f}")


def load_file_all(folder):
    t = {}
    for f in os.listdir(folder):
        if f.endswith(".safetensors"):
            t.update(load_file(os.path.join(folder, f)))
    return t


if __name__ == "__main__":
    main()
