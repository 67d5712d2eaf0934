#!/usr/bin/env python3
"""Golden cases for the imatrix_mse observer on FP4 weights (tests/test_imatrix_fp4.cc): runs
the pinned reference's llmcompressor.observers.imatrix.IMatrixMSEObserver (llm-compressor
0.14.0.1, compressed-tensors 0.19.0, torch 2.13.0 CPU) with compressed-tensors' NVFP4A16 and
MXFP4 weight arguments on small weights with a given importance, and writes
data/golden/imatrix-fp4/.

Each case is one safetensors file CASE.safetensors: per member m (one weight, or for
"fused" cases two weights whose observers are fused with FusionHandler.fuse, as
fuse_weight_observers links q/k/v) the inputs (w<m>: the weight in its dtype; imp_sum<m>:
f32 per input channel; imp_count: int64) and what the compressor writes from the observer's
get_qparams (packed<m>: uint8 codes; scale<m>: E4M3 bytes (NVFP4) or E8M0 bytes (MXFP4);
global_scale<m>: f32, NVFP4 only). The NVFP4 global scale is the observer's: generate_gparam
of the fused observers' searched ranges. Case "*_uniform" has all-zero importance (the
reference's unweighted fallback).

Usage: .venv-ref/bin/python scripts/make_golden_imatrix_fp4.py [OUT_DIR]
"""
import json
import os
import sys

import numpy as np
import torch
from compressed_tensors.compressors.mxfp4.base import MXFP4PackedCompressor
from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
from compressed_tensors.quantization import QuantizationScheme
from compressed_tensors.quantization.quant_scheme import preset_name_to_scheme
from llmcompressor.observers.fusion import FusionHandler
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_golden_imatrix import DTYPES, observer, weights  # noqa: E402
from make_golden_imatrix import importance as imatrix_importance  # noqa: E402

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "golden", "imatrix-fp4")


def importance(rng, cols, zeros=0):
    """Per-channel sum of x^2 over 4096 tokens (as scripts/make_golden_imatrix.py)."""
    return imatrix_importance(rng, cols, zeros)[0]


def observe_fp4(preset, args, members, dtype, count):
    """The tensors of one case: members are (weight ndarray, importance sum) pairs, observed
    with `args` (fused with FusionHandler.fuse when more than one) and compressed as `preset`."""
    observers, modules = [], []
    for w, imp in members:
        mod = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        mod.weight.data = torch.from_numpy(w).to(dtype)
        observers.append(observer(args, imp, count))
        modules.append(mod)
    if len(members) > 1:
        FusionHandler.fuse(zip(observers, modules))
    for obs, mod in zip(observers, modules):
        obs(mod.weight)
    compressor = NVFP4PackedCompressor if preset.startswith("NVFP4") else MXFP4PackedCompressor
    tensors = {"imp_count": torch.tensor([count], dtype=torch.int64)}
    for m, (obs, mod, (w, imp)) in enumerate(zip(observers, modules, members)):
        qp = obs.get_qparams()
        sd = {"weight": mod.weight.data, "weight_scale": qp["scale"]}
        if qp["global_scale"] is not None:
            sd["weight_global_scale"] = qp["global_scale"]
        out = compressor.compress(sd, QuantizationScheme(targets=["Linear"], weights=args))
        tensors[f"w{m}"] = mod.weight.data.contiguous()
        tensors[f"imp_sum{m}"] = imp.clone().contiguous()
        tensors[f"packed{m}"] = out["weight_packed"].contiguous()
        tensors[f"scale{m}"] = out["weight_scale"].view(torch.uint8).contiguous()
        if qp["global_scale"] is not None:
            tensors[f"global_scale{m}"] = qp["global_scale"].float().contiguous()
    return tensors


def run_case(name, preset, members, dtype, count=4096):
    """members: list of (weight ndarray, importance sum tensor)."""
    scheme = preset_name_to_scheme(preset, ["Linear"])
    args = scheme.weights.model_copy(update={"observer": "imatrix_mse"})
    tensors = observe_fp4(preset, args, members, dtype, count)
    meta = {"preset": preset, "members": str(len(members)), "dtype": DTYPES[dtype]}
    save_file(tensors, os.path.join(OUT, name + ".safetensors"), metadata=meta)
    return {"name": name, **meta}


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(1804)
    cases = []
    for dt, tag in ((torch.bfloat16, "bf16"), (torch.float16, "f16"), (torch.float32, "f32")):
        cases.append(run_case(f"nvfp4_{tag}", "NVFP4A16",
                              [(weights(rng, 48, 256), importance(rng, 256))], dt))
        cases.append(run_case(f"mxfp4_{tag}", "MXFP4",
                              [(weights(rng, 40, 256), importance(rng, 256))], dt))
    # A fused pair (q/k-like: same input, so the same importance): one global scale from
    # both observers' searched ranges.
    imp = importance(rng, 192, zeros=8)
    cases.append(run_case("nvfp4_fused_bf16", "NVFP4A16",
                          [(weights(rng, 32, 192), imp), (weights(rng, 64, 192) * 1.5, imp)],
                          torch.bfloat16))
    cases.append(run_case("nvfp4_bf16_uniform", "NVFP4A16",
                          [(weights(rng, 24, 128), torch.zeros(128))], torch.bfloat16))
    cases.append(run_case("mxfp4_bf16_uniform", "MXFP4",
                          [(weights(rng, 24, 128), torch.zeros(128))], torch.bfloat16))
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump({"generator": "scripts/make_golden_imatrix_fp4.py",
                   "reference": "llmcompressor 0.14.0.1 observers/imatrix.py IMatrixMSEObserver "
                                "(grid 20, maxshrink 0.95, norm 3, patience 5) with "
                                "compressed-tensors 0.19.0 NVFP4A16 / MXFP4 weights",
                   "cases": cases}, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
