#!/usr/bin/env python3
"""MiniLM embedding similarity of FP4 outputs (docs/convert-reference.md "imatrix_mse and
Wanda", "Static activation scales"): NVFP4 (nvfp4-pack-quantized) and MXFP4
(mxfp4-pack-quantized) weights decoded from the formats' definitions into the F32 model
(transformers' own FP4 load fails on the F32 MiniLM upstream: see docs/convert-reference.md,
"Consumers in detail"), then with `input_global_scale` present (NVFP4 W4A4) every quantized
Linear's input fake-quantized as vLLM's NVFP4 emulation does it (vllm 0.32.0
nvfp4_emulation_utils.ref_nvfp4_quant_dequant, copied below: per 16 inputs, scale =
e4m3(global_scale * amax / 6), x * (1 / (scale / global_scale)) clamped to +-6 and rounded to
E2M1, with the stored input_global_scale as vLLM's input_global_scale_inv). Prints the mean and
min cosine of mean-pooled embeddings of the evaluation paragraphs to the unquantized model's, as
scripts/eval_minilm_static.py does.

Usage (tests/python venv): python scripts/eval_minilm_fp4.py MODEL_DIR EVAL_TXT OUT_DIR [...]
"""
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_minilm_static import embed, samples  # noqa: E402

E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=np.float32)


def e4m3_to_f32(b):
    """float8_e4m3fn bytes to f32 (no infinities; 0x7F/0xFF are NaN)."""
    return torch.from_numpy(b.copy()).view(torch.float8_e4m3fn).float().numpy()


def nibbles(packed):
    """uint8 [rows, cols/2] -> E2M1 values [rows, cols] (even element in the low nibble)."""
    lo, hi = packed & 0xF, packed >> 4
    v = np.stack([lo, hi], -1).reshape(packed.shape[0], -1)
    mag = E2M1[v & 7]
    return np.where(v & 8, -mag, mag)


def decode(folder):
    t = {}
    for f in os.listdir(folder):
        if f.endswith(".safetensors"):
            for k, v in load_file(os.path.join(folder, f)).items():
                # F8_E4M3 scales as their bytes (numpy has no float8).
                t[k] = (v.view(torch.uint8) if v.dtype == torch.float8_e4m3fn else v).numpy()
    fmt = json.load(open(os.path.join(folder, "config.json")))["quantization_config"]["format"]
    weights, act_gs = {}, {}
    for name in t:
        if not name.endswith(".weight_packed"):
            continue
        m = name[: -len(".weight_packed")]
        q = nibbles(t[name])
        if fmt == "nvfp4-pack-quantized":
            s = e4m3_to_f32(t[m + ".weight_scale"]) / t[m + ".weight_global_scale"][0]
            g = 16
        else:  # mxfp4-pack-quantized: E8M0 exponents
            s = np.ldexp(1.0, t[m + ".weight_scale"].astype(np.int32) - 127).astype(np.float32)
            g = 32
        weights[m + ".weight"] = q * np.repeat(s, g, axis=1)
        if m + ".input_global_scale" in t:
            act_gs[m] = float(t[m + ".input_global_scale"][0])
    return weights, act_gs


def cast_to_fp4(x):
    sign = torch.sign(x)
    x = torch.abs(x)
    x[(x >= 0.0) & (x <= 0.25)] = 0.0
    x[(x > 0.25) & (x < 0.75)] = 0.5
    x[(x >= 0.75) & (x <= 1.25)] = 1.0
    x[(x > 1.25) & (x < 1.75)] = 1.5
    x[(x >= 1.75) & (x <= 2.5)] = 2.0
    x[(x > 2.5) & (x < 3.5)] = 3.0
    x[(x >= 3.5) & (x <= 5.0)] = 4.0
    x[x > 5.0] = 6.0
    return x * sign


def ref_nvfp4_quant_dequant(x, global_scale, block_size=16):
    m, n = x.shape
    xb = torch.reshape(x, (m, n // block_size, block_size))
    vec_max = torch.max(torch.abs(xb), dim=-1, keepdim=True)[0].to(torch.float32)
    scale = global_scale * (vec_max * (1 / 6.0))
    scale = torch.clamp(scale, max=448, min=-448)
    scale = scale.to(torch.float8_e4m3fn).to(torch.float32)
    recip = lambda v: torch.where(v == 0, torch.zeros_like(v), 1.0 / v)  # noqa: E731
    output_scale = recip(scale * recip(global_scale))
    clipped = torch.clamp(xb.to(torch.float32) * output_scale, -6.0, 6.0).reshape(m, n)
    x_fp4 = cast_to_fp4(clipped).reshape(m, n // block_size, block_size)
    return (x_fp4 * (scale / global_scale)).reshape(m, n).to(x.dtype)


def main():
    model_dir, eval_txt, outs = sys.argv[1], sys.argv[2], sys.argv[3:]
    tok = AutoTokenizer.from_pretrained(model_dir)
    sents = samples(eval_txt)
    ref = embed(AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval(), tok, sents)
    for folder in outs:
        model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
        sd = model.state_dict()
        weights, act_gs = decode(folder)
        for name, w in weights.items():
            sd[name] = torch.from_numpy(w.astype(np.float32))
        model.load_state_dict(sd)
        for m, gs in act_gs.items():
            g = torch.tensor(gs, dtype=torch.float32)

            def hook(mod, args, g=g):
                x = args[0]
                return (ref_nvfp4_quant_dequant(x.reshape(-1, x.shape[-1]), g).reshape(x.shape),)

            model.get_submodule(m).register_forward_pre_hook(hook)
        cos = (embed(model, tok, sents) * ref).sum(-1)
        print(f"{folder}: {len(sents)} sentences, mean cos {cos.mean():.6f}, "
              f"min {cos.min():.6f}, gap 1-mean {1 - cos.mean():.6f}"
              + (f" (activations NVFP4 on {len(act_gs)} Linear)" if act_gs else ""))


if __name__ == "__main__":
    main()
