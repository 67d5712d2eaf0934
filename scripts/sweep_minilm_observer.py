#!/usr/bin/env python3
"""Observer settings on all-MiniLM-L6-v2, with llm-compressor's own observers (bench/README.md
"imatrix_mse observer settings"): each encoder/pooler Linear weight is observed by the pinned
observer class (llmcompressor.observers: imatrix_mse, nvfp4_expanded_imatrix, mse,
memoryless_mse, nvfp4_expanded_mse, memoryless_minmax) with the given observer_kwargs, fed the
importance from a quench statistics folder (the observer's _imatrix_sum / _imatrix_count, as its
hook would have accumulated them); the weight is then fake-quantized with calculate_qparams /
fake_quantize (NVFP4: one global scale per fused set, query/key/value fused as quench fuses
them) and the model's mean-pooled embeddings of the evaluation paragraphs are compared to the
unquantized model's (scripts/eval_minilm_static.py's measure). These are the weights quench
writes for the same settings (its golden tests check the observer's choices), so the sweep
chooses settings without converting.

`--observer fp8aware` is NOT a reference observer: an NVFP4 experiment that searches each
group's scale as it will be stored (E4M3 with the global scale of the min-max ranges fixed),
to measure what the reference's search (FP32 scales, E4M3 rounding afterwards) leaves.

Usage (reference venv):
  python scripts/sweep_minilm_observer.py MODEL_DIR EVAL_TXT STATS --scheme NVFP4A16 \
      --run imatrix_mse --run imatrix_mse:norm=2.4,grid=40 --run memoryless_minmax
"""
import argparse
import json
import os
import re
import sys
import warnings

import torch
from compressed_tensors.quantization import QuantizationArgs, QuantizationStrategy
from compressed_tensors.quantization.lifecycle import fake_quantize
from compressed_tensors.quantization.quant_scheme import preset_name_to_scheme
from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam
from llmcompressor.observers import Observer
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_minilm_static import embed, samples  # noqa: E402

FUSED = re.compile(r"\.attention\.self\.(query|key|value)\.weight$")


def weight_args(scheme):
    if scheme == "W4A16":  # as scripts/ref_minilm_imatrix.py: int4 symmetric, group 128
        return QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group",
                                group_size=128)
    return preset_name_to_scheme(scheme, ["Linear"]).weights


def parse_run(spec):
    name, _, kw = spec.partition(":")
    kwargs = {}
    for item in filter(None, kw.split(",")):
        k, v = item.split("=")
        kwargs[k] = float(v) if "." in v or "e" in v else int(v)
    return name, kwargs


def load_importance(stats_dir):
    m = json.load(open(os.path.join(stats_dir, "manifest.json")))
    t = {}
    for f in m["files"]:
        t.update(load_file(os.path.join(stats_dir, f)))
    return {w: (t[c["site"] + ".sum_x2"], t[c["site"] + ".count"])
            for w, c in m["consumers"].items()}


def fp8aware(w, args, imp, kw, gscale):
    """Not the reference: each group's E4M3 scale searched with the global scale fixed."""
    g = args.group_size
    x = w.unflatten(-1, (-1, g))
    pos = x.abs().amax(-1)
    grid, expand = kw.get("grid", 200), kw.get("expand", 1.8)
    lo = kw.get("low", 0.5)
    norm = kw.get("norm", 2.0)
    iw = imp.unflatten(-1, (-1, g)) if imp is not None else torch.ones_like(x)
    best_err = torch.full(pos.shape, float("inf"))
    best_s = None
    for i in range(grid + 1):
        p = expand - (expand - lo) * i / grid
        s = (gscale * p * pos / 6).clamp(max=448).to(torch.float8_e4m3fn).float() / gscale
        s = torch.where(s == 0, torch.full_like(s, 1.0), s)
        q = quant_fp4(x / s.unsqueeze(-1)) * s.unsqueeze(-1)
        err = ((q - x).abs().pow(norm) * iw).sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s = s if best_s is None else torch.where(better, s, best_s)
    return (quant_fp4(x / best_s.unsqueeze(-1)) * best_s.unsqueeze(-1)).flatten(-2)


def quant_fp4(v):
    levels = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    a = v.abs().clamp(max=6.0)
    idx = (a.unsqueeze(-1) - levels).abs().argmin(-1)  # ties: lower level (not RNE; test only)
    return levels[idx] * v.sign()


def quantize_model(model, args, name, kwargs, imps):
    sd = model.state_dict()
    names = [n for n in sd if n.endswith(".weight") and n in imps]
    observed = {}
    for n in names:
        w = sd[n]
        a = args.model_copy(deep=True)
        a.observer = name
        a.observer_kwargs = dict(kwargs)
        if name == "fp8aware":
            observed[n] = None
            continue
        obs = Observer.load_from_registry(name, base_name="weight", args=a)
        if hasattr(obs, "_imatrix_sum"):
            s, c = imps[n]
            obs._imatrix_sum = s.float()
            obs._imatrix_count = c.to(torch.int64).reshape(())
        obs(w)
        observed[n] = (obs.min_vals, obs.max_vals, a)
    # NVFP4's global scale over each fused set (query/key/value of a layer; others alone).
    def set_key(n):
        return FUSED.sub(".attention.self.qkv", n)
    gs = {}
    if args.strategy == QuantizationStrategy.TENSOR_GROUP:
        for n in names:
            if observed[n] is None:  # fp8aware: min-max ranges
                amax = sd[n].abs().max()
            else:
                mn, mx, _ = observed[n]
                amax = torch.max(mx.max(), -mn.min())
            k = set_key(n)
            gs[k] = amax if k not in gs else torch.max(gs[k], amax)
        gs = {k: generate_gparam(-v.reshape(1), v.reshape(1)) for k, v in gs.items()}
    for n in names:
        g = gs.get(set_key(n))
        if observed[n] is None:
            s, c = imps[n]
            imp = (s.float() / c.float())
            imp = imp / (imp.mean() + torch.finfo(torch.float32).tiny)
            imp = imp.unsqueeze(0).expand_as(sd[n])
            sd[n] = fp8aware(sd[n], args, imp, kwargs, g)
            continue
        mn, mx, a = observed[n]
        scale, zp = calculate_qparams(min_vals=mn, max_vals=mx, quantization_args=a,
                                      global_scale=g)
        sd[n] = fake_quantize(sd[n], scale, zp, a, global_scale=g)
    model.load_state_dict(sd)
    return len(names)


def main():
    warnings.filterwarnings("ignore")
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("eval")
    p.add_argument("stats")
    p.add_argument("--scheme", default="NVFP4A16")
    p.add_argument("--run", action="append", required=True,
                   help="OBSERVER[:key=value,...] (observer_kwargs)")
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("SWEEP_THREADS", "2")))
    tok = AutoTokenizer.from_pretrained(a.model)
    sents = samples(a.eval)
    base = AutoModel.from_pretrained(a.model, dtype=torch.float32).eval()
    ref = embed(base, tok, sents)
    imps = load_importance(a.stats)
    args = weight_args(a.scheme)
    for spec in a.run:
        name, kwargs = parse_run(spec)
        model = AutoModel.from_pretrained(a.model, dtype=torch.float32).eval()
        n = quantize_model(model, args, name, kwargs, imps)
        cos = (embed(model, tok, sents) * ref).sum(-1)
        print(f"{a.scheme} {spec}: {n} weights, {len(sents)} sentences, mean cos "
              f"{cos.mean():.6f}, min {cos.min():.6f}, gap {1 - cos.mean():.6f}", flush=True)


if __name__ == "__main__":
    main()
