#!/usr/bin/env python3
"""MiniLM embedding similarity of quench outputs with quantized activations
(docs/convert-reference.md "Static activation scales"): loads each output folder with
transformers' compressed-tensors support (the default load: weights decompressed, activations
fake-quantized as the config says: per token for dynamic schemes, with the stored input_scale /
input_zero_point for static ones) and prints the mean and min cosine similarity of mean-pooled
sentence embeddings to the unquantized model's over the evaluation text (disjoint from the
calibration text the statistics came from; scripts/calib-text).

Usage (tests/python venv: torch, transformers, compressed-tensors):
  python scripts/eval_minilm_static.py MODEL_DIR EVAL_TXT OUT_DIR [OUT_DIR...]
"""
import sys
import warnings

import torch
from transformers import AutoModel, AutoTokenizer


def samples(path, n=256):
    text = open(path, encoding="utf-8").read()
    parts = [p.strip() for p in text.split("\n\n") if p.strip()]
    return parts[:n]


def embed(model, tok, sents):
    out = []
    with torch.inference_mode():
        for i in range(0, len(sents), 32):
            b = tok(sents[i:i + 32], padding=True, truncation=True, max_length=128,
                    return_tensors="pt")
            h = model(**b).last_hidden_state.float()
            m = b["attention_mask"].unsqueeze(-1).float()
            e = (h * m).sum(1) / m.sum(1)
            out.append(torch.nn.functional.normalize(e, dim=-1))
    return torch.cat(out)


def main():
    warnings.filterwarnings("ignore")
    model_dir, eval_txt, outs = sys.argv[1], sys.argv[2], sys.argv[3:]
    tok = AutoTokenizer.from_pretrained(model_dir)
    sents = samples(eval_txt)
    ref = embed(AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval(), tok, sents)
    for folder in outs:
        model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
        cos = (embed(model, tok, sents) * ref).sum(-1)
        print(f"{folder}: {len(sents)} sentences, mean cos {cos.mean():.6f}, "
              f"min {cos.min():.6f}, gap 1-mean {1 - cos.mean():.6f}")


if __name__ == "__main__":
    main()
