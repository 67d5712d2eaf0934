#!/usr/bin/env python3
"""Golden cases for the imatrix_mse observer (tests/test_imatrix.cc): runs the pinned
reference's llmcompressor.observers.imatrix.IMatrixMSEObserver (llm-compressor 0.14.0.1, torch
2.13.0 CPU) on small weights with a given importance (the per-channel sum of x^2 and the token
count the observer's hook would have accumulated) and writes data/golden/imatrix/.

Each case is one safetensors file CASE.safetensors holding the inputs (w: the weight in its
dtype; imatrix_sum: f32 per input channel; imatrix_count: int64 scalar) and the outputs the
observer's get_qparams gives (scale in the weight dtype, zero_point int8) and the codes the
compressed-tensors quantize() writes with them (int8, no offset), with the quantization
arguments in its metadata. Case "uniform" has all-zero importance, where the reference falls
back to the unweighted search.

Usage: .venv-ref/bin/python scripts/make_golden_imatrix.py [OUT_DIR]
"""
import json
import os
import sys

import numpy as np
import torch
from compressed_tensors.quantization import QuantizationArgs
from compressed_tensors.quantization.lifecycle.forward import quantize
from llmcompressor.observers import Observer
from safetensors.torch import save_file

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "golden", "imatrix")

DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def weights(rng, rows, cols):
    """Gaussian rows with a few large outliers per row, so clipping the range pays."""
    w = rng.standard_normal((rows, cols)) * 0.05
    for r in range(rows):
        idx = rng.choice(cols, size=3, replace=False)
        w[r, idx] *= rng.uniform(3, 8, size=3)
    return w.astype(np.float32)


def importance(rng, cols, zeros=0):
    """Per-channel sum of x^2 over 4096 tokens: scales over three decades, a few outlier
    channels, optionally some channels that never fired."""
    s = np.exp(rng.uniform(-4.0, 2.0, size=cols)) * 4096
    s[rng.choice(cols, size=4, replace=False)] *= 400.0
    if zeros:
        s[rng.choice(cols, size=zeros, replace=False)] = 0.0
    return torch.from_numpy(s.astype(np.float32)), 4096


def int_args(bits, group, sym=True):
    """compressed-tensors' arguments of an int weight, group (group > 0) or channel."""
    a = {"num_bits": bits, "type": "int", "symmetric": sym,
         "strategy": "group" if group > 0 else "channel"}
    if group > 0:
        a["group_size"] = group
    return a


def observer(args, imp_sum, count):
    """An imatrix_mse observer holding the importance its hook would have accumulated."""
    obs = Observer.load_from_registry("imatrix_mse", base_name="weight",
                                      args=args.model_copy(deep=True))
    obs._imatrix_sum = imp_sum.clone()
    obs._imatrix_count = torch.tensor(count, dtype=torch.int64)
    return obs


def observe_int(args, w, imp_sum, count):
    """The tensors of one int case: the observer's get_qparams on weight `w` (scale in its
    dtype, zero_point int8) and the codes compressed-tensors' quantize() writes with them."""
    obs = observer(args, imp_sum, count)
    obs(w)
    qp = obs.get_qparams()
    scale, zp = qp["scale"], qp["zero_point"]
    codes = quantize(x=w, scale=scale, zero_point=zp if not args.symmetric else None, args=args,
                     dtype=torch.int8)
    return {"w": w.contiguous(), "imatrix_sum": imp_sum.contiguous(),
            "imatrix_count": torch.tensor([count], dtype=torch.int64),
            "scale": scale.contiguous(), "zero_point": zp.to(torch.int8).contiguous(),
            "codes": codes.to(torch.int8).contiguous()}


def run_case(name, w, imp, args, dtype):
    qargs = QuantizationArgs(**args, observer="imatrix_mse")
    tensors = observe_int(qargs, torch.from_numpy(w).to(dtype), imp[0], imp[1])
    meta = {"num_bits": str(args["num_bits"]), "symmetric": str(args["symmetric"]).lower(),
            "group_size": str(args.get("group_size") or -1), "dtype": DTYPES[dtype]}
    save_file(tensors, os.path.join(OUT, name + ".safetensors"), metadata=meta)
    return {"name": name, **meta}


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(18)

    cases = []
    # W4A16 (int4 symmetric, group 128) in bf16, f16 and f32.
    for dt, tag in ((torch.bfloat16, "bf16"), (torch.float16, "f16"), (torch.float32, "f32")):
        cases.append(run_case(f"w4g128_{tag}", weights(rng, 48, 384), importance(rng, 384),
                              int_args(4, 128), dt))
    # W4A16_ASYM (asymmetric int4, group 128) and asymmetric int8 channel.
    cases.append(run_case("w4asym_g128_bf16", weights(rng, 48, 256), importance(rng, 256),
                          int_args(4, 128, sym=False), torch.bfloat16))
    cases.append(run_case("w8asym_channel_f32", weights(rng, 32, 192), importance(rng, 192),
                          int_args(8, -1, sym=False), torch.float32))
    # W8A16 / W8A8 weights: int8 symmetric channel; int4 channel; small groups.
    cases.append(run_case("w8_channel_bf16", weights(rng, 40, 256), importance(rng, 256),
                          int_args(8, -1), torch.bfloat16))
    cases.append(run_case("w4_channel_bf16", weights(rng, 40, 256), importance(rng, 256),
                          int_args(4, -1), torch.bfloat16))
    cases.append(run_case("w4g32_bf16_deadch", weights(rng, 32, 128),
                          importance(rng, 128, zeros=16), int_args(4, 32), torch.bfloat16))
    # All-zero importance: the reference falls back to the unweighted (uniform) search.
    cases.append(run_case("w4g64_bf16_uniform", weights(rng, 24, 128),
                          (torch.zeros(128), 4096), int_args(4, 64), torch.bfloat16))
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump({"generator": "scripts/make_golden_imatrix.py",
                   "reference": "llmcompressor 0.14.0.1 observers/imatrix.py IMatrixMSEObserver "
                                "(grid 20, maxshrink 0.95, norm 3, patience 5)",
                   "cases": cases}, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
