#!/usr/bin/env python3
"""Golden cases for Wanda pruning (tests/test_wanda.cc): runs the pinned reference's
llmcompressor.modifiers.pruning.wanda.wanda_sparsify.sparsify_weight (llm-compressor
0.14.0.1, torch 2.13.0 CPU) on small Linear weights with given row scalars S (the mean of x^2
per input channel) and writes data/golden/wanda/.

Each case is one safetensors file CASE.safetensors: w (the weight in its dtype), s (S, f32),
and pruned (what sparsify_weight returns, in the weight's dtype); metadata: quench's prune
spec ("unstructured:F" or "N:M", where quench's N:M keeps N of M and llm-compressor's
mask_structure prunes N, so the reference is called with prune_n = M - N).
Ties are planted on purpose: zero weights, channels with S = 0, repeated values of S and of W.

Usage: .venv-ref/bin/python scripts/make_golden_wanda.py [OUT_DIR]
"""
import json
import os
import sys

import numpy as np
import torch
from llmcompressor.modifiers.pruning.wanda.wanda_sparsify import sparsify_weight
from safetensors.torch import save_file

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "golden", "wanda")

DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def weights(rng, rows, cols, dtype):
    w = rng.standard_normal((rows, cols)) * 0.05
    w[rng.random((rows, cols)) < 0.05] = 0.0                     # exact zeros
    w[:, 8:16] = np.round(w[:, 8:16] * 50) / 50                  # few distinct values: ties
    return torch.from_numpy(w.astype(np.float32)).to(dtype)


def row_scalars(rng, cols):
    s = np.exp(rng.uniform(-3.0, 2.0, size=cols))
    s[rng.choice(cols, size=cols // 16, replace=False)] = 0.0    # channels that never fired
    s[8:16] = 1.0                                                # equal scalars: ties with W's
    return torch.from_numpy(s.astype(np.float32))


def run_case(name, w, s, spec):
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype)
    lin.weight.data.copy_(w)
    if spec.startswith("unstructured:"):
        sparsity, n, m = float(spec.split(":")[1]), 0, 0
    else:
        keep, m = map(int, spec.split(":"))
        sparsity, n = (m - keep) / m, m - keep
    out = sparsify_weight(lin, {lin: s.clone()}, sparsity=sparsity, prune_n=n, prune_m=m)
    save_file({"w": w.contiguous(), "s": s.contiguous(), "pruned": out.contiguous()},
              os.path.join(OUT, name + ".safetensors"),
              metadata={"spec": spec, "dtype": DTYPES[w.dtype]})
    return {"name": name, "spec": spec, "dtype": DTYPES[w.dtype],
            "zeros_after": int((out == 0).sum()), "zeros_before": int((w == 0).sum())}


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(18)
    cases = []
    for dt, tag in ((torch.bfloat16, "bf16"), (torch.float16, "f16"), (torch.float32, "f32")):
        for spec, sname in (("unstructured:0.5", "u50"), ("2:4", "2of4")):
            cases.append(run_case(f"{sname}_{tag}", weights(rng, 32, 256, dt),
                                  row_scalars(rng, 256), spec))
    for spec, sname in (("unstructured:0.3", "u30"), ("unstructured:0.77", "u77"),
                        ("1:4", "1of4"), ("3:4", "3of4"), ("4:8", "4of8"), ("2:8", "2of8"),
                        ("5:16", "5of16")):
        cases.append(run_case(f"{sname}_bf16", weights(rng, 24, 192, torch.bfloat16),
                              row_scalars(rng, 192), spec))
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump({"generator": "scripts/make_golden_wanda.py",
                   "reference": "llmcompressor 0.14.0.1 modifiers/pruning/wanda/"
                                "wanda_sparsify.py sparsify_weight",
                   "cases": cases}, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
