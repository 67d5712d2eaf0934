#!/usr/bin/env python3
"""Golden cases for the imatrix_mse observer with non-default observer_kwargs
(tests/test_imatrix_kwargs.cc): the pinned llmcompressor.observers.imatrix.IMatrixMSEObserver
(llm-compressor 0.14.0.1, compressed-tensors 0.19.0, torch 2.13.0 CPU) with QuantizationArgs
whose observer_kwargs set norm, grid, maxshrink, patience and expand, on small weights with a
given importance; writes data/golden/imatrix-kwargs/.

Each case is CASE.safetensors with metadata kind ("int" or "fp4"), kwargs (the
observer_kwargs as JSON), dtype, and the arguments:
  int: w, imatrix_sum (f32), imatrix_count (int64); scale (weight dtype), zero_point (int8)
       and codes (int8, compressed-tensors quantize()) from the observer's get_qparams;
       metadata num_bits, symmetric, group_size (as scripts/make_golden_imatrix.py).
  fp4: per member m (two fused observers for "fused" cases) w<m>, imp_sum<m>, imp_count;
       packed<m>, scale<m> (E4M3 / E8M0 bytes) and global_scale<m> (NVFP4) from the
       compressor; metadata preset, members (as scripts/make_golden_imatrix_fp4.py).
manifest.json lists the cases with each case's weights args as compressed-tensors dumps them
(QuantizationArgs.model_dump(): what config.json's quantization_config holds, observer_kwargs
included).

Usage: .venv-ref/bin/python scripts/make_golden_imatrix_kwargs.py [OUT_DIR]
"""
import json
import os
import sys

import numpy as np
import torch
from compressed_tensors.quantization import QuantizationArgs
from compressed_tensors.quantization.quant_scheme import preset_name_to_scheme
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_golden_imatrix import DTYPES, importance, int_args, observe_int, weights  # noqa: E402
from make_golden_imatrix_fp4 import observe_fp4  # noqa: E402

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "golden",
    "imatrix-kwargs")


def int_case(name, rng, rows, cols, bits, group, sym, dtype, kwargs, zero_imp=False):
    args = QuantizationArgs(**int_args(bits, group, sym), observer="imatrix_mse",
                            observer_kwargs=kwargs)
    w = torch.from_numpy(weights(rng, rows, cols)).to(dtype)
    imp, count = importance(rng, cols)
    if zero_imp:
        imp = torch.zeros(cols)
    tensors = observe_int(args, w, imp, count)
    meta = {"kind": "int", "kwargs": json.dumps(kwargs, sort_keys=True),
            "num_bits": str(bits), "symmetric": str(sym).lower(), "group_size": str(group),
            "dtype": DTYPES[dtype]}
    save_file(tensors, os.path.join(OUT, name + ".safetensors"), metadata=meta)
    return {"name": name, **meta, "weights_args": args.model_dump()}


def fp4_case(name, rng, preset, shapes, dtype, kwargs, count=4096):
    scheme = preset_name_to_scheme(preset, ["Linear"])
    args = scheme.weights.model_copy(update={"observer": "imatrix_mse",
                                             "observer_kwargs": kwargs})
    imp, _ = importance(rng, shapes[0][1])
    members = [(weights(rng, rows, cols) * (1 + 0.5 * i), imp)
               for i, (rows, cols) in enumerate(shapes)]
    tensors = observe_fp4(preset, args, members, dtype, count)
    meta = {"kind": "fp4", "kwargs": json.dumps(kwargs, sort_keys=True), "preset": preset,
            "members": str(len(shapes)), "dtype": DTYPES[dtype]}
    save_file(tensors, os.path.join(OUT, name + ".safetensors"), metadata=meta)
    return {"name": name, **meta, "weights_args": args.model_dump()}


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(2026)
    bf, f16, f32 = torch.bfloat16, torch.float16, torch.float32
    cases = [
        int_case("w4g128_bf16_norm2.4", rng, 32, 256, 4, 128, True, bf, {"norm": 2.4}),
        int_case("w4g128_f32_norm2", rng, 32, 256, 4, 128, True, f32, {"norm": 2}),
        int_case("w4asym_g64_bf16_grid30", rng, 24, 256, 4, 64, False, bf,
                 {"grid": 30, "maxshrink": 0.9}),
        int_case("w8_channel_f16_patience0", rng, 24, 192, 8, -1, True, f16, {"patience": 0}),
        int_case("w4g32_bf16_patience1_shrink0.5", rng, 24, 128, 4, 32, True, bf,
                 {"patience": 1, "maxshrink": 0.5}),
        int_case("w4g128_bf16_expand1.25", rng, 32, 256, 4, 128, True, bf, {"expand": 1.25}),
        int_case("w4g64_bf16_uniform_norm2.4", rng, 16, 128, 4, 64, True, bf,
                 {"norm": 2.4, "grid": 40, "maxshrink": 0.5}, zero_imp=True),
        fp4_case("nvfp4_bf16_norm2.4", rng, "NVFP4A16", [(32, 256)], bf, {"norm": 2.4}),
        fp4_case("nvfp4_f32_expand1.5_grid40", rng, "NVFP4A16", [(32, 256)], f32,
                 {"expand": 1.5, "grid": 40, "maxshrink": 0.5}),
        fp4_case("nvfp4_fused_bf16_norm2_patience0", rng, "NVFP4A16", [(16, 192), (32, 192)],
                 bf, {"norm": 2.0, "patience": 0}),
        fp4_case("nvfp4_bf16_grid31_shrink1", rng, "NVFP4A16", [(16, 128)], bf,
                 {"grid": 31, "maxshrink": 1.0}),
        fp4_case("mxfp4_bf16_grid30_norm2.4", rng, "MXFP4", [(24, 256)], bf,
                 {"grid": 30, "norm": 2.4}),
        fp4_case("mxfp4_f16_expand1.25", rng, "MXFP4", [(24, 256)], f16, {"expand": 1.25}),
    ]
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump({"generator": "scripts/make_golden_imatrix_kwargs.py",
                   "reference": "llmcompressor 0.14.0.1 observers/imatrix.py IMatrixMSEObserver "
                                "with observer_kwargs; compressed-tensors 0.19.0",
                   "cases": cases}, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
