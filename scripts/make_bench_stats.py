#!/usr/bin/env python3
"""Synthetic per-channel activation statistics for a scripts/bench Llama-shaped checkpoint
(bench/README.md, imatrix_mse timing): one site per Linear input (q/k/v share the q_proj
site, gate/up the gate_proj site), count 256 and per-channel sum_x2 log-uniform over three
decades with a few outlier channels, sum_abs, min and max; no Hessian. Reads only the
checkpoint's safetensors headers (numpy, no torch). Not real statistics: for timing only.

Usage: python3 scripts/make_bench_stats.py MODEL_DIR OUT_DIR
"""
import glob
import json
import os
import struct
import sys

import numpy as np

SHARES = {"k_proj": "q_proj", "v_proj": "q_proj", "up_proj": "gate_proj"}


def main():
    model, out = sys.argv[1], sys.argv[2]
    weights = {}
    for f in sorted(glob.glob(os.path.join(model, "*.safetensors"))):
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name.endswith("_proj.weight") and len(info["shape"]) == 2:
                weights[name] = info["shape"]
    rng = np.random.default_rng(18)
    sites, consumers, arrays = {}, {}, []
    for name, (rows, cols) in sorted(weights.items()):
        module = name[: -len(".weight")]
        parent, leaf = module.rsplit(".", 1)
        site = parent + "." + SHARES.get(leaf, leaf)
        consumers[name] = {"site": site}
        if site in sites:
            continue
        sites[site] = {"file": "stats-00001.safetensors", "in_features": cols, "experts": None,
                       "fields": ["count", "sum_x2", "sum_abs", "min", "max"]}
        s = np.exp(rng.uniform(-4.0, 2.0, size=cols)) * 256
        s[rng.choice(cols, size=8, replace=False)] *= 400.0
        arrays += [(site + ".count", "I64", [], np.array(256, dtype=np.int64)),
                   (site + ".sum_x2", "F64", [cols], s),
                   (site + ".sum_abs", "F64", [cols], np.sqrt(s * 256)),
                   (site + ".min", "F32", [cols], -np.sqrt(s).astype(np.float32)),
                   (site + ".max", "F32", [cols], np.sqrt(s).astype(np.float32))]
    os.makedirs(out, exist_ok=True)
    header, blobs, off = {}, [], 0
    for name, dt, shape, a in arrays:
        b = a.tobytes()
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(os.path.join(out, "stats-00001.safetensors"), "wb") as fh:
        fh.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    manifest = {"format": "quench-stats", "version": 1,
                "model": {"model_type": "llama", "weights": weights},
                "collection": {"dataset": "synthetic", "samples": 1, "seq_len": 256,
                               "tokens": 256, "sequences": 1, "moe": "all", "hessian": "none"},
                "files": ["stats-00001.safetensors"], "sites": sites, "consumers": consumers}
    with open(os.path.join(out, "manifest.json"), "w") as fh:
        json.dump(manifest, fh)
    print(f"{len(sites)} sites, {len(consumers)} weights -> {out}")


if __name__ == "__main__":
    main()
