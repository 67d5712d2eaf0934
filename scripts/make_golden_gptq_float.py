#!/usr/bin/env python3
"""Golden cases for GPTQ on float weight schemes (tests/test_gptq_float.cc): the pinned
reference's llmcompressor.modifiers.gptq.gptq_quantize.quantize_weight (llm-compressor
0.14.0.1, compressed-tensors 0.19.0, torch 2.13.0 CPU, float32) on FP8 per channel
(FP8_DYNAMIC), per tensor (FP8), FP8 128x128 blocks (FP8_BLOCK), NVFP4 (tensor_group 16 with a global scale,
also one shared by a fused set) and MXFP4 / MXFP8 (group 32) weights, and writes
data/golden/gptq-float/.

The Hessians are those of data/golden/gptq/ (make_golden_gptq.py), read from there. Each case
CASE.safetensors holds W (f32 values of the weight dtype), scale (the observer's, as f32),
qvals (the values the compressor's quantize() rounds the returned weight to: FP8 or FP4
values, as f32) and, for NVFP4, global_scale; its metadata has the arguments, the reference's
loss and the proxy loss tr(dW H dW^T) in float64, dW = W - the compressor's values times
their scales. As GPTQModifier does, the scales come from
the memoryless min-max observer before the sweep; an NVFP4 fused set's global scale is the
observer's get_global_scale over the set (generate_gparam of the set's largest |x|).

Usage: .venv-ref/bin/python scripts/make_golden_gptq_float.py [OUT_DIR]
"""
import os
import sys

import numpy as np
import torch
from compressed_tensors.quantization import QuantizationArgs, preset_name_to_scheme
from compressed_tensors.quantization.lifecycle.forward import quantize
from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam
from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
from llmcompressor.observers import Observer
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_golden_gptq import print_total, write_manifest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "data", "golden", "gptq-float")
HDIR = os.path.join(ROOT, "data", "golden", "gptq")


def hessian(name):
    return load_file(os.path.join(HDIR, name + ".safetensors"))["h"].numpy()


def weight_args(scheme, actorder):
    args = preset_name_to_scheme(scheme, ["Linear"]).weights.model_dump()
    args["actorder"] = actorder
    return QuantizationArgs(**args)


def run_case(name, scheme, w, hname, actorder, blocksize, percdamp=0.01,
             dtype=torch.bfloat16, fused_amax=None):
    h = hessian(hname)
    qargs = weight_args(scheme, actorder)
    wt = torch.from_numpy(w).to(dtype)
    obs = Observer.load_from_registry("memoryless_minmax", base_name="weight", args=qargs)
    obs(wt)
    gs = None
    if qargs.strategy == "tensor_group":
        # Observer.get_global_scale over a fused set: the set's largest |x|.
        amax = torch.max(-obs.min_vals.min(), obs.max_vals.max())
        if fused_amax is not None:
            amax = torch.max(amax, torch.tensor(fused_amax, dtype=amax.dtype))
        gs = generate_gparam(-amax.reshape(1), amax.reshape(1))
    scale, zp = calculate_qparams(min_vals=obs.min_vals, max_vals=obs.max_vals,
                                  quantization_args=qargs, global_scale=gs)
    q, losses, fallback = quantize_weight(
        weights=wt.to(torch.float32).unsqueeze(0).clone(),
        hessians=torch.from_numpy(h).unsqueeze(0).clone(),
        scale=scale.unsqueeze(0), zero_point=zp.unsqueeze(0),
        global_scale=None if gs is None else gs.reshape(-1)[0].reshape(1),
        quant_args=qargs, blocksize=blocksize, percdamp=percdamp)
    qw = q[0].to(dtype)  # update_batch_qparams: the module's weight in its dtype
    # The compressor: quantize() of that weight with the observer's qparams (and global scale).
    qvals = quantize(x=qw, scale=scale, zero_point=None, args=qargs, global_scale=gs)
    # The proxy from what the checkpoint holds: the compressor's values times their scales
    # (over the global scale), in float64.
    rows, cols = w.shape
    sc = scale.to(torch.float64).numpy()
    if qargs.strategy == "tensor":
        eff = np.full((rows, cols), sc.reshape(-1)[0])
    elif qargs.strategy == "channel":
        eff = np.repeat(sc.reshape(rows, 1), cols, axis=1)
    elif qargs.strategy == "block":
        eff = np.repeat(np.repeat(sc, 128, axis=0), 128, axis=1)[:rows, :cols]
    else:
        eff = np.repeat(sc, qargs.group_size, axis=1)
        if gs is not None:
            eff = eff / float(gs.reshape(-1)[0])
    dw = wt.to(torch.float64).numpy() - qvals.to(torch.float64).numpy() * eff
    proxy = float(np.einsum("ij,jk,ik->", dw, h.astype(np.float64), dw))
    tensors = {
        "w": wt.to(torch.float32).contiguous(),
        "scale": scale.to(torch.float32).contiguous(),
        "qvals": qvals.to(torch.float32).contiguous(),
    }
    if gs is not None:
        tensors["global_scale"] = gs.to(torch.float32).reshape(1).contiguous()
    meta = {
        "scheme": scheme, "strategy": str(qargs.strategy),
        "actorder": str(actorder or "none"),
        "dtype": {torch.float32: "F32", torch.bfloat16: "BF16"}[dtype],
        "block_size": str(blocksize), "dampening": repr(percdamp), "hessian": hname,
        "loss": repr(float(losses[0])), "proxy_loss": repr(proxy),
        "rtn_fallback": str(bool(fallback[0])).lower(),
    }
    save_file(tensors, os.path.join(OUT, name + ".safetensors"), metadata=meta)
    return {"name": name, **meta}


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(1919)

    def weights(rows, cols, outliers=True):
        w = rng.standard_normal((rows, cols)) * 0.05
        if outliers:  # a few large entries so scales differ across groups and rows
            idx = rng.choice(rows * cols, size=max(1, rows * cols // 500), replace=False)
            w.flat[idx] *= 8.0
        return w.astype(np.float32)

    cases = []
    # FP8_DYNAMIC weights: FP8 E4M3 per output channel.
    cases.append(run_case("fp8ch_static_bf16", "FP8_DYNAMIC", weights(48, 256), "h256",
                          "static", 128))
    cases.append(run_case("fp8ch_none_f32", "FP8_DYNAMIC", weights(32, 192), "h192", None, 128,
                          dtype=torch.float32))
    cases.append(run_case("fp8ch_dead_weight_b64", "FP8_DYNAMIC", weights(32, 128), "h128_dead",
                          "weight", 64))
    cases.append(run_case("fp8ch_indefinite_rtn", "FP8_DYNAMIC", weights(16, 128),
                          "h128_indefinite", "static", 128))
    # The FP8 preset's weights: one scale per tensor.
    cases.append(run_case("fp8tensor_static_bf16", "FP8", weights(32, 192), "h192", "static",
                          128))
    # FP8_BLOCK: 128x128 tiles, partial in both directions (136 rows, 192 columns).
    cases.append(run_case("fp8blk_static_bf16", "FP8_BLOCK", weights(136, 192), "h192",
                          "static", 128))
    cases.append(run_case("fp8blk_none_b48", "FP8_BLOCK", weights(128, 256), "h256", None, 48))
    # NVFP4 weights (NVFP4A16 and NVFP4 share them): group 16, E4M3 scales, global scale.
    cases.append(run_case("nvfp4_static_bf16", "NVFP4A16", weights(48, 256), "h256",
                          "static", 128))
    cases.append(run_case("nvfp4_fused_static", "NVFP4", weights(32, 192), "h192", "static", 128,
                          fused_amax=1.7))
    cases.append(run_case("nvfp4_none_b72_f32", "NVFP4A16", weights(32, 192), "h192", None, 72,
                          dtype=torch.float32))
    cases.append(run_case("nvfp4_dead_static", "NVFP4A16", weights(32, 128), "h128_dead",
                          "static", 128))
    # MXFP4 and MXFP8 weights: group 32, E8M0 scales.
    cases.append(run_case("mxfp4_static_bf16", "MXFP4A16", weights(48, 256), "h256",
                          "static", 128))
    cases.append(run_case("mxfp4_none_b80_f32", "MXFP4", weights(32, 192), "h192", None, 80,
                          dtype=torch.float32))
    cases.append(run_case("mxfp8_static_bf16", "MXFP8A16", weights(32, 256), "h256",
                          "static", 128))
    write_manifest(OUT, "make_golden_gptq_float.py",
                   "modifiers/gptq/gptq_quantize.py::quantize_weight", cases)
    print_total(OUT, cases)

if __name__ == "__main__":
    main()
