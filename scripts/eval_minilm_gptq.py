#!/usr/bin/env python3
"""MiniLM embedding similarity of quench outputs (docs/convert-reference.md "GPTQ",
bench/README.md): loads all-MiniLM-L6-v2 with transformers, replaces every quantized Linear
weight by the weight decoded from an output folder (pack-quantized int, symmetric; decoded here
from the format's definition; or, for a prune-only output without quantization_config, the float
weights as written), and prints the mean and min cosine similarity of mean-pooled sentence
embeddings to the unquantized model's over the evaluation text (disjoint from the calibration
text).

Usage (collector venv): python scripts/eval_minilm_gptq.py MODEL_DIR EVAL_TXT OUT_DIR [OUT_DIR...]
"""
import json
import os
import sys

import numpy as np
import torch
from safetensors.numpy import load_file
from transformers import AutoModel, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_minilm_static import embed, samples  # noqa: E402


def decode(folder):
    t = {}
    for f in os.listdir(folder):
        if f.endswith(".safetensors"):
            t.update(load_file(os.path.join(folder, f)))
    cfg = json.load(open(os.path.join(folder, "config.json")))
    if "quantization_config" not in cfg:  # pruned only (--scheme none): weights as they are
        return {k: v for k, v in t.items() if k.endswith(".weight") and v.ndim == 2}
    q = cfg["quantization_config"]
    (grp,) = q["config_groups"].values()
    bits = grp["weights"]["num_bits"]
    # Only symmetric pack-quantized ints are decoded here; anything else would be scored
    # wrongly (zero points ignored, or int-quantized weights left undecoded), so refuse it.
    if q.get("format") != "pack-quantized" or not grp["weights"].get("symmetric", True):
        sys.exit(f"{folder}: only symmetric pack-quantized weights are decoded here "
                 f"(format {q.get('format')}); score it with scripts/eval_minilm_static.py")
    weights = {}
    for name in t:
        if not name.endswith(".weight_packed"):
            continue
        m = name[: -len(".weight_packed")]
        rows, cols = (int(x) for x in t[m + ".weight_shape"])
        words = t[name].view(np.uint32)
        per = 32 // bits
        vals = np.stack([(words >> (bits * k)) & ((1 << bits) - 1) for k in range(per)], -1)
        codes = vals.reshape(rows, -1)[:, :cols].astype(np.int32) - (1 << (bits - 1))
        scale = t[m + ".weight_scale"].astype(np.float32)
        gs = cols // scale.shape[1]
        weights[m + ".weight"] = codes * np.repeat(scale, gs, axis=1)
    return weights


def score(model_dir, eval_txt, outs, weights_of):
    """Prints, for each output folder, the cosine similarity of MiniLM's mean-pooled
    embeddings with the weights `weights_of(folder)` gives to the unquantized model's."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    sents = samples(eval_txt)
    base = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    ref = embed(base, tok, sents)
    for folder in outs:
        model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
        sd = model.state_dict()
        for name, w in weights_of(folder).items():
            sd[name] = torch.from_numpy(np.asarray(w, dtype=np.float32))
        model.load_state_dict(sd)
        cos = (embed(model, tok, sents) * ref).sum(-1)
        print(f"{folder}: {len(sents)} sentences, mean cos {cos.mean():.6f}, "
              f"min {cos.min():.6f}, gap 1-mean {1 - cos.mean():.6f}")


def main():
    score(sys.argv[1], sys.argv[2], sys.argv[3:], decode)

if __name__ == "__main__":
    main()
