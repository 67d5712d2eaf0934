#!/usr/bin/env python3
"""Synthetic activation statistics for scripts/bench's --algorithm runs (AWQ, SmoothQuant):
per-channel count, sum_x2, sum_abs, min and max (no Hessian: the diagonal proxy) for every
Linear input site of a Llama-shaped checkpoint (q_proj for q/k/v, o_proj, gate_proj for
gate/up, down_proj), from random activations: TOKENS rows of normal draws times a per-channel
scale spread over two decades, a few outlier channels times 20, as real residual streams look.
They are only there to time the conversion, not to be meaningful.

    make_bench_stats.py CHECKPOINT_DIR OUT_DIR [--tokens 256] [--seed 1]

Written to OUT_DIR.partial and renamed at the end (docs/statistics-format.md's layout).
"""
import argparse
import json
import os
import re
import shutil
import struct

import numpy as np

SITES = {  # site module -> the weights that read its input
    "self_attn.q_proj": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
    "self_attn.o_proj": ["self_attn.o_proj"],
    "mlp.gate_proj": ["mlp.gate_proj", "mlp.up_proj"],
    "mlp.down_proj": ["mlp.down_proj"],
}


def shapes(ck):
    out = {}
    for f in sorted(os.listdir(ck)):
        if not f.endswith(".safetensors"):
            continue
        with open(os.path.join(ck, f), "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            for k, v in json.loads(fh.read(n)).items():
                if k != "__metadata__":
                    out[k] = v["shape"]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    w = shapes(a.checkpoint)
    layers = sorted({int(m.group(1)) for k in w if (m := re.match(r"model\.layers\.(\d+)\.", k))})
    tmp = a.out + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    header, blobs, off = {}, [], 0
    sites, consumers, weights = {}, {}, {}

    def add(name, arr, dtype):
        nonlocal off
        b = arr.tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)

    for l in layers:
        for site, readers in SITES.items():
            s = f"model.layers.{l}.{site}"
            if s + ".weight" not in w:
                continue
            n = w[s + ".weight"][1]
            x = rng.standard_normal((a.tokens, n)).astype(np.float32)
            x *= np.exp(rng.uniform(-2.3, 0.0, size=n)).astype(np.float32)
            x[:, rng.choice(n, size=4, replace=False)] *= 20.0
            add(s + ".count", np.array(a.tokens, dtype="<i8"), "I64")
            add(s + ".sum_x2", (x.astype(np.float64) ** 2).sum(0), "F64")
            add(s + ".sum_abs", np.abs(x.astype(np.float64)).sum(0), "F64")
            add(s + ".min", x.min(0), "F32")
            add(s + ".max", x.max(0), "F32")
            sites[s] = {"file": "stats-00001.safetensors", "in_features": n, "experts": None,
                        "fields": ["count", "sum_x2", "sum_abs", "min", "max"]}
            for r in readers:
                consumers[f"model.layers.{l}.{r}.weight"] = {"site": s}
                weights[f"model.layers.{l}.{r}.weight"] = w[f"model.layers.{l}.{r}.weight"]
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(os.path.join(tmp, "stats-00001.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb)
        for b in blobs:
            f.write(b)
    manifest = {
        "format": "quench-stats", "version": 1,
        "model": {"model_type": "llama", "weights": weights},
        "collection": {"dataset": "synthetic", "samples": 1, "seq_len": a.tokens,
                       "tokens": a.tokens, "sequences": 1, "moe": "all", "hessian": "none"},
        "files": ["stats-00001.safetensors"], "sites": sites, "consumers": consumers,
    }
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    shutil.rmtree(a.out, ignore_errors=True)
    os.rename(tmp, a.out)


if __name__ == "__main__":
    main()
