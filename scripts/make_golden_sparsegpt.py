#!/usr/bin/env python3
"""Golden cases for SparseGPT (tests/test_sparsegpt.cc): runs the pinned reference's
llmcompressor.modifiers.pruning.sparsegpt.sgpt_sparsify.sparsify_weight (llm-compressor
0.14.0.1, torch 2.13.0 CPU, float32) on small weights and Hessians and writes
data/golden/sparsegpt/.

Each case is one safetensors file CASE.safetensors holding the input W (f32 values of the weight
dtype), the returned weight `out` (f32 values of the weight dtype; its zeros are the mask), and,
for the quantized cases, what compressed-tensors then writes for it when a QuantizationModifier
follows the SparseGPTModifier (as llm-compressor's 2:4 recipes do: sparsify_weight itself takes
no quantization arguments, and the QuantizationModifier observes the weight at the same
sequential epoch end, after SparseGPT has replaced it): `codes`, `scale`, `zero_point` from the
memoryless min-max observer on the sparse weight. Metadata: the arguments, the reference's loss,
the proxy loss tr(dW H dW^T) (f64, dW = W - out) and the hessian file (shared between cases).

Hessians: random correlated activations with outlier channels, a low-rank one, one with dead
channels, an indefinite one (Cholesky fails: the reference's identity fallback), and a real one:
all-MiniLM-L6-v2's layer-0 attention input from a quench statistics file (--minilm-stats DIR,
collected with scripts/collect-stats --hessian full), with the real query weight's first rows
(--minilm-model DIR).

Usage: .venv-ref/bin/python scripts/make_golden_sparsegpt.py \
           --minilm-model MODEL_DIR --minilm-stats STATS_DIR [OUT_DIR]
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from compressed_tensors.quantization import QuantizationArgs
from compressed_tensors.quantization.lifecycle.forward import quantize
from llmcompressor.modifiers.pruning.sparsegpt.sgpt_sparsify import sparsify_weight
from safetensors.numpy import load_file
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_golden_gptq import (activations, hessian_from, observe, print_total,  # noqa: E402
                              write_manifest)

HESSIANS = {}
OUT = None


def add_hessian(name, h):
    HESSIANS[name] = h.astype(np.float32)
    save_file({"h": torch.from_numpy(HESSIANS[name]).contiguous()},
              os.path.join(OUT, name + ".safetensors"))
    return name


def run_case(name, w, hname, structure, block_size=128, damp=0.01, dtype=torch.float32,
             quant=None):
    """structure: "2:4" (the reference's mask_structure: prune 2 of every 4) or a float
    (unstructured sparsity)."""
    h = HESSIANS[hname]
    if isinstance(structure, str):
        n, m = (int(x) for x in structure.split(":"))
        sparsity = 0.5
    else:
        n, m, sparsity = 0, 0, float(structure)
    wt = torch.from_numpy(w).to(dtype)
    module = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    module.weight.data = wt.clone()
    with torch.no_grad():  # as SparseGPTModifier.compress_modules calls it
        loss, out = sparsify_weight(
            module=module, hessians_dict={module: torch.from_numpy(h).clone()},
            sparsity=sparsity, prune_n=n, prune_m=m, block_size=block_size,
            dampening_frac=damp, preserve_sparsity_mask=False)
    assert out.dtype == dtype
    dw = (wt.to(torch.float64) - out.to(torch.float64)).numpy()
    proxy = float(np.einsum("ij,jk,ik->", dw, h.astype(np.float64), dw))
    tensors = {"w": wt.to(torch.float32).contiguous(), "out": out.to(torch.float32).contiguous()}
    meta = {
        "structure": structure if isinstance(structure, str) else "unstructured",
        "sparsity": repr(sparsity), "block_size": str(block_size), "dampening": repr(damp),
        "dtype": {torch.float32: "F32", torch.bfloat16: "BF16"}[dtype], "hessian": hname,
        "loss": repr(float(loss)), "proxy_loss": repr(proxy),
        "zeros": str(int((out == 0).sum())),
    }
    if quant is not None:
        qargs = QuantizationArgs(**quant)
        scale, zp = observe(out, qargs)
        codes = quantize(x=out, scale=scale, zero_point=zp if not qargs.symmetric else None,
                         args=qargs, dtype=torch.int8)
        tensors.update({"codes": codes.to(torch.int8).contiguous(),
                        "scale": scale.to(torch.float32).contiguous(),
                        "zero_point": zp.to(torch.int8).contiguous()})
        meta.update({"num_bits": str(quant["num_bits"]),
                     "symmetric": str(quant["symmetric"]).lower(),
                     "group_size": str(quant.get("group_size") or -1)})
    save_file(tensors, os.path.join(OUT, name + ".safetensors"), metadata=meta)
    return {"name": name, **meta}


def minilm(model_dir, stats_dir):
    """Layer 0's attention input Hessian (2/sequences * sum x x^T, the reference's
    normalisation) and the first 64 rows of its query weight."""
    man = json.load(open(os.path.join(stats_dir, "manifest.json")))
    site = "encoder.layer.0.attention.self.query"
    info = man["sites"][site]
    st = load_file(os.path.join(stats_dir, info["file"]))
    n = info["in_features"]
    packed = st[site + ".hessian"].reshape(-1)
    h = np.zeros((n, n), dtype=np.float64)
    iu = np.triu_indices(n)
    h[iu] = packed
    h = h + np.triu(h, 1).T
    h *= 2.0 / man["collection"]["sequences"]
    w = load_file(os.path.join(model_dir, "model.safetensors"))[site + ".weight"][:64]
    return h.astype(np.float32), np.ascontiguousarray(w.astype(np.float32))


def main():
    global OUT
    ap = argparse.ArgumentParser()
    ap.add_argument("--minilm-model", required=True)
    ap.add_argument("--minilm-stats", required=True)
    ap.add_argument("out", nargs="?", default=os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "golden",
        "sparsegpt"))
    a = ap.parse_args()
    OUT = a.out
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(1919)
    cases = []

    def weights(rows, cols):
        return (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)

    w4g128 = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
              "group_size": 128}
    w8asym = {"num_bits": 8, "type": "int", "symmetric": False, "strategy": "channel"}

    h256 = add_hessian("h256", hessian_from(activations(rng, 256, 1024), 8))
    # Random weights, random activations: 2:4 and unstructured 0.5, f32 and bf16, two blocks.
    w = weights(48, 256)
    cases.append(run_case("r24_f32", w, h256, "2:4"))
    cases.append(run_case("run50_f32", w, h256, 0.5))
    cases.append(run_case("r24_bf16", w, h256, "2:4", dtype=torch.bfloat16))
    cases.append(run_case("run50_bf16", w, h256, 0.5, dtype=torch.bfloat16))
    # Other blocks and fractions.
    cases.append(run_case("r24_b64_bf16", weights(32, 256), h256, "2:4", block_size=64,
                          dtype=torch.bfloat16))
    cases.append(run_case("run30_b96_bf16", weights(32, 256), h256, 0.3, block_size=96,
                          dtype=torch.bfloat16))
    # Then quantized (QuantizationModifier after SparseGPTModifier): W4A16, int8 asymmetric.
    cases.append(run_case("r24_w4g128_bf16", weights(32, 256), h256, "2:4",
                          dtype=torch.bfloat16, quant=w4g128))
    cases.append(run_case("run50_w8asym_bf16", weights(32, 256), h256, 0.5,
                          dtype=torch.bfloat16, quant=w8asym))
    # Ill-conditioned: rank 24 from 40 tokens over 128 channels.
    hl = add_hessian("h128_lowrank",
                     hessian_from(activations(rng, 128, 40, outliers=2, rank=24), 1))
    cases.append(run_case("lowrank24_bf16", weights(32, 128), hl, "2:4", dtype=torch.bfloat16))
    cases.append(run_case("lowrankun50_bf16", weights(32, 128), hl, 0.5, dtype=torch.bfloat16))
    # Dead channels (zero diagonal): zeroed in W, so pruned first; two in one 2:4 group.
    xd = activations(rng, 128, 512)
    xd[:, [0, 1, 5, 64, 127]] = 0.0
    hd = add_hessian("h128_dead", hessian_from(xd, 4))
    cases.append(run_case("dead24_bf16", weights(32, 128), hd, "2:4", dtype=torch.bfloat16))
    cases.append(run_case("deadun50_damp0.1_bf16", weights(32, 128), hd, 0.5, damp=0.1,
                          dtype=torch.bfloat16))
    # Indefinite: Cholesky fails, Hinv = I (magnitude pruning, no updates). Weights from few
    # values, so that saliencies tie and torch.topk's tie order decides the 2:4 masks.
    hs = hessian_from(activations(rng, 128, 512), 4)
    hs[3, 9] = hs[9, 3] = 10.0 * float(np.sqrt(hs[3, 3] * hs[9, 9])) + 1.0
    hi = add_hessian("h128_indefinite", hs)
    ties = (rng.integers(-2, 3, size=(32, 128)) * 0.125).astype(np.float32)
    cases.append(run_case("indefinite24_ties_bf16", ties, hi, "2:4", dtype=torch.bfloat16))
    cases.append(run_case("indefiniteun50_ties_bf16", ties, hi, 0.5, dtype=torch.bfloat16))
    # Real: MiniLM layer 0 query rows with the Hessian of real activations.
    hm, wm = minilm(a.minilm_model, a.minilm_stats)
    hmn = add_hessian("h384_minilm", hm)
    cases.append(run_case("minilm24_f32", wm, hmn, "2:4"))
    cases.append(run_case("minilmun50_bf16", wm, hmn, 0.5, dtype=torch.bfloat16))
    cases.append(run_case("minilm24_w4g128_bf16", wm, hmn, "2:4", dtype=torch.bfloat16,
                          quant=w4g128))
    # End to end (tests/test_sparsegpt.cc): data/tiny-llama's layer-0 q_proj (BF16)
    # with h256 as their sites' Hessian; the test converts the checkpoint with a statistics
    # folder holding h256 and compares quench's output tensors with these.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tiny = {}
    for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        from safetensors.torch import load_file as load_torch
        tiny.update(load_torch(os.path.join(root, "data", "tiny-llama", shard)))
    for proj, structure, tag in (("self_attn.q_proj", "2:4", "24"),
                                 ("self_attn.q_proj", 0.5, "un50")):
        wt = tiny[f"model.layers.0.{proj}.weight"]
        assert wt.dtype == torch.bfloat16
        cases.append(run_case(f"tiny_{proj.split('.')[1]}_{tag}", wt.to(torch.float32).numpy(),
                              h256, structure, dtype=torch.bfloat16))
    write_manifest(OUT, "make_golden_sparsegpt.py",
                   "modifiers/pruning/sparsegpt/sgpt_sparsify.py::sparsify_weight", cases)
    print_total(OUT, cases)

if __name__ == "__main__":
    main()
