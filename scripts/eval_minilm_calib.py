#!/usr/bin/env python3
"""MiniLM embedding similarity of quench outputs (docs/convert-reference.md "imatrix_mse and
Wanda"), as scripts/eval_minilm_gptq.py measures it (mean-pooled embeddings of the evaluation
paragraphs, cosine to the unquantized model), for pack-quantized integer outputs (decoded from
the format's definition by eval_minilm_gptq.decode) and for pruned-only outputs (--scheme none:
dense weights, taken as they are).

Usage (collector venv): python scripts/eval_minilm_calib.py MODEL_DIR EVAL_TXT OUT_DIR [...]
"""
import glob
import os
import sys

from safetensors.numpy import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_minilm_gptq import decode, score  # noqa: E402


def weights_of(folder):
    if os.path.exists(os.path.join(folder, "config.json")) and \
            "quantization_config" in open(os.path.join(folder, "config.json")).read():
        return decode(folder)
    out = {}
    for f in glob.glob(os.path.join(folder, "*.safetensors")):
        for name, t in load_file(f).items():
            if name.endswith(".weight") and t.ndim == 2:
                out[name] = t
    return out


def main():
    score(sys.argv[1], sys.argv[2], sys.argv[3:], weights_of)

if __name__ == "__main__":
    main()
