#!/usr/bin/env python3
"""Golden cases for SmoothQuant (tests/test_smoothquant.cc, tests/test_smoothquant_convert.cc):
runs the pinned reference's own SmoothQuantModifier._apply_smoothing (llm-compressor 0.14.0.1,
torch 2.13.0 CPU) on small modules and writes data/golden/smoothquant/.

Unit cases (CASE.safetensors): a smooth layer (a norm weight with or without a bias, or a
linear's weight and bias), balance linears, and the per-channel activation min/max as the
reference's hook sees them (in the model's dtype; stored here as f32 holding those values).
Outputs: `scales` (f32, what the modifier multiplies by, after its 1e-5 floor) and every
smoothed tensor in its own dtype. Metadata: dtype, alpha, the balance layers' names.

End to end (tiny-llama-smoothed/, stats/): synthetic activation statistics for data/tiny-llama
in quench's statistics format (docs/statistics-format.md), and the checkpoint the reference's
smoothing makes of data/tiny-llama with them (LlamaForCausalLM mappings: input_layernorm ->
q/k/v, post_attention_layernorm -> gate/up, alpha 0.5). quench's smoothquant conversion of
tiny-llama must equal its RTN conversion of this smoothed checkpoint, byte for byte.

Usage: .venv-ref/bin/python scripts/make_golden_smoothquant.py [OUT_DIR]
"""
import hashlib
import json
import os
import shutil
import sys

import numpy as np
import torch
from llmcompressor.modifiers.transform.smoothquant.base import (
    SmoothQuantMapping, SmoothQuantModifier, SmoothQuantScale)
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "data", "golden", "smoothquant")
DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


class Norm(torch.nn.Module):
    def __init__(self, weight, bias=None):
        super().__init__()
        self.weight = torch.nn.Parameter(weight)
        self.bias = torch.nn.Parameter(bias) if bias is not None else None


def linear(weight, bias=None):
    m = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                        dtype=weight.dtype)
    with torch.no_grad():
        m.weight.copy_(weight)
        if bias is not None:
            m.bias.copy_(bias)
    return m


def smooth(alpha, smooth_layer, balance, mn, mx):
    """The reference's smoothing of one mapping; returns the scales it applied."""
    mod = SmoothQuantModifier(smoothing_strength=alpha)
    mod.resolved_mappings_ = [SmoothQuantMapping("smooth", smooth_layer, balance)]
    mod.scales_ = {"smooth": SmoothQuantScale(min_channel_vals=mn, max_channel_vals=mx)}
    act = mx - mn
    scales = mod._calculate_smoothing_scales(balance, act)
    scales = torch.maximum(scales, torch.Tensor([1e-5]))
    model = torch.nn.ModuleList([smooth_layer, *balance])
    mod._apply_smoothing(model)
    return scales


def act_minmax(rng, n, dtype, zero_channels=0):
    x = rng.standard_normal((64, n)) * np.exp(rng.uniform(-3, 1, size=n))
    x[:, rng.choice(n, size=3, replace=False)] *= 40.0
    mn = torch.tensor(x.min(0), dtype=torch.float32).to(dtype)
    mx = torch.tensor(x.max(0), dtype=torch.float32).to(dtype)
    mn[:zero_channels] = 0  # channels that never fired: range 0, scale floored at 1e-5
    mx[:zero_channels] = 0
    return mn, mx


def unit_case(name, rng, dtype_name, alpha, n, outs, kind="norm", bias=False, dead_cols=0):
    dtype = DTYPES[dtype_name]
    ws = [torch.tensor(rng.standard_normal((m, n)) * 0.05, dtype=torch.float32).to(dtype)
          for m in outs]
    for w in ws:
        w[:, n - dead_cols:] = 0  # columns no balance layer uses: scale = activation range
    if kind == "norm":
        sw = torch.tensor(1 + 0.1 * rng.standard_normal(n), dtype=torch.float32).to(dtype)
        sb = torch.tensor(0.1 * rng.standard_normal(n), dtype=torch.float32).to(dtype) \
            if bias else None
        smooth_layer = Norm(sw.clone(), None if sb is None else sb.clone())
    else:
        sw = torch.tensor(rng.standard_normal((n, 48)) * 0.05, dtype=torch.float32).to(dtype)
        sb = torch.tensor(0.1 * rng.standard_normal(n), dtype=torch.float32).to(dtype) \
            if bias else None
        smooth_layer = linear(sw, sb)
    balance = [linear(w) for w in ws]
    mn, mx = act_minmax(rng, n, dtype, zero_channels=2)
    scales = smooth(alpha, smooth_layer, balance, mn, mx)
    t = {"in.smooth_weight": sw, "in.min": mn.float(), "in.max": mx.float(),
         "out.scales": scales.float().contiguous(),
         "out.smooth_weight": smooth_layer.weight.detach().clone()}
    if sb is not None:
        t["in.smooth_bias"] = sb
        t["out.smooth_bias"] = smooth_layer.bias.detach().clone()
    for i, (w, b) in enumerate(zip(ws, balance)):
        t[f"in.balance{i}"] = w
        t[f"out.balance{i}"] = b.weight.detach().clone()
    meta = {"dtype": dtype_name, "alpha": repr(alpha), "balance": str(len(ws)), "kind": kind}
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(OUT, name + ".safetensors"),
              metadata=meta)
    return name


def tiny_llama(rng):
    src = os.path.join(ROOT, "data", "tiny-llama")
    dst = os.path.join(OUT, "tiny-llama-smoothed")
    stats = os.path.join(OUT, "stats")
    for d in (dst, stats):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    index = json.load(open(os.path.join(src, "model.safetensors.index.json")))
    shards = sorted(set(index["weight_map"].values()))
    tensors = {}
    for s in shards:
        tensors.update(load_file(os.path.join(src, s)))
    cfg = json.load(open(os.path.join(src, "config.json")))
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    sites, consumers, weights, arrays = {}, {}, {}, {}
    fields = ["count", "sum_x2", "sum_abs", "min", "max"]

    def site(name, n, members):
        x = rng.standard_normal((256, n)) * np.exp(rng.uniform(-3, 1, size=n))
        x[:, rng.choice(n, size=4, replace=False)] *= 30.0
        sites[name] = {"file": "stats-00001.safetensors", "in_features": n, "experts": None,
                       "fields": fields}
        arrays[name + ".count"] = torch.tensor(256, dtype=torch.int64)
        arrays[name + ".sum_x2"] = torch.tensor((x * x).sum(0), dtype=torch.float64)
        arrays[name + ".sum_abs"] = torch.tensor(np.abs(x).sum(0), dtype=torch.float64)
        arrays[name + ".min"] = torch.tensor(x.min(0), dtype=torch.float32)
        arrays[name + ".max"] = torch.tensor(x.max(0), dtype=torch.float32)
        for m in members:
            consumers[m + ".weight"] = {"site": name}
            weights[m + ".weight"] = list(tensors[m + ".weight"].shape)

    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        attn = [p + "self_attn." + k for k in ("q_proj", "k_proj", "v_proj")]
        mlp = [p + "mlp." + k for k in ("gate_proj", "up_proj")]
        site(attn[0], hidden, attn)
        site(p + "self_attn.o_proj", hidden, [p + "self_attn.o_proj"])
        site(mlp[0], hidden, mlp)
        site(p + "mlp.down_proj", inter, [p + "mlp.down_proj"])
        for norm, members in ((p + "input_layernorm", attn), (p + "post_attention_layernorm", mlp)):
            dtype = tensors[norm + ".weight"].dtype
            mn = arrays[members[0] + ".min"].to(dtype)  # the norm's output, in the model's dtype
            mx = arrays[members[0] + ".max"].to(dtype)
            nl = Norm(tensors[norm + ".weight"].clone())
            bl = [linear(tensors[m + ".weight"]) for m in members]
            smooth(0.5, nl, bl, mn, mx)
            tensors[norm + ".weight"] = nl.weight.detach().clone()
            for m, b in zip(members, bl):
                tensors[m + ".weight"] = b.weight.detach().clone()
    for s in shards:
        names = [k for k, v in index["weight_map"].items() if v == s]
        save_file({k: tensors[k].contiguous() for k in names}, os.path.join(dst, s),
                  metadata={"format": "pt"})
    for f in os.listdir(src):
        if not f.endswith(".safetensors"):
            shutil.copy(os.path.join(src, f), os.path.join(dst, f))
    save_file(arrays, os.path.join(stats, "stats-00001.safetensors"))
    cfg_bytes = open(os.path.join(src, "config.json"), "rb").read()
    manifest = {
        "format": "quench-stats", "version": 1,
        "model": {"architectures": cfg["architectures"], "model_type": cfg["model_type"],
                  "config_sha256": hashlib.sha256(cfg_bytes).hexdigest(), "weights": weights},
        "collection": {"collector": "make_golden_smoothquant.py (synthetic)",
                       "dataset": "synthetic", "samples": 1, "seq_len": 256, "tokens": 256,
                       "sequences": 1, "dtype": "bfloat16", "device": "cpu", "moe": "all",
                       "hessian": "none"},
        "files": ["stats-00001.safetensors"], "sites": sites, "consumers": consumers}
    with open(os.path.join(stats, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20)
    cases = []
    for dt in ("bf16", "f16", "f32"):
        cases.append(unit_case(f"norm_{dt}_a05", rng, dt, 0.5, 96, [64, 32, 32], dead_cols=3))
        cases.append(unit_case(f"norm_{dt}_a08", rng, dt, 0.8, 96, [80, 40], dead_cols=1))
        cases.append(unit_case(f"layernorm_bias_{dt}_a05", rng, dt, 0.5, 64, [48], bias=True))
        cases.append(unit_case(f"linear_bias_{dt}_a065", rng, dt, 0.65, 64, [32], kind="linear",
                               bias=True))
    tiny_llama(rng)
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump({"generator": "scripts/make_golden_smoothquant.py",
                   "llmcompressor": "0.14.0.1", "torch": torch.__version__, "cases": cases}, f,
                  indent=1)


if __name__ == "__main__":
    main()
