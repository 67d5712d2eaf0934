#!/usr/bin/env python3
"""llm-compressor's own GPTQModifier on all-MiniLM-L6-v2 (docs/convert-reference.md "GPTQ",
bench/README.md "Sequential statistics"): oneshot with W4A16 (int4 symmetric, group 128;
actorder static, the modifier's default), calibrated on the same samples collect-stats reads
(the text's paragraphs, first N, truncated to L tokens, one unpadded sequence per batch), with
`--pipeline sequential` (oneshot's default for this model) or `basic`; saved compressed
(pack-quantized) so that scripts/eval_minilm_gptq.py decodes it as it decodes quench's outputs.

--hessians FILE also saves every module's Hessian as the modifier holds it when it quantizes
the module (`2 * sum x x^T`, float32, divided by the sample count only in `prepare_batch`;
safetensors, key = module name), for comparison with a statistics folder (`--compare STATS`,
or offline `--compare-from HESSIANS STATS`: per weight, the largest difference relative to the
Hessian's largest element, both as `2/sequences * sum x x^T`, quench's normalisation).

`--stats-from HESSIANS LIKE_STATS OUT_STATS` (no oneshot) writes a statistics folder equal to
LIKE_STATS but with each site's Hessian replaced by the saved one of the site's module, scaled
back to a sum (`H / 2`): quench's GPTQ on the reference's own Hessians.

Usage (reference venv): python scripts/ref_minilm_gptq.py MODEL_DIR CALIB_TXT OUT_DIR
       [--samples 256] [--seq-len 128] [--pipeline sequential|basic] [--hessians FILE]
       [--compare STATS]
       python scripts/ref_minilm_gptq.py --stats-from HESSIANS LIKE_STATS OUT_STATS
       python scripts/ref_minilm_gptq.py --compare-from HESSIANS STATS
"""
import json
import os
import sys
import time

import numpy as np
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from llmcompressor import oneshot
from llmcompressor.modifiers.gptq import GPTQModifier

from ref_minilm_calib import (  # the collector's own sampling
    add_sampling_args, calib_argparser, load_calibration, save_compressed)


def compare(hessians: dict, stats: str) -> None:
    from safetensors.numpy import load_file
    man = json.load(open(os.path.join(stats, "manifest.json")))
    arr = {}
    for f in man["files"]:
        arr.update(load_file(os.path.join(stats, f)))
    seqs = man["collection"]["sequences"]
    for w, c in sorted(man["consumers"].items()):
        mod = w[: -len(".weight")]
        if mod not in hessians:
            continue
        site = c["site"]
        n = man["sites"][site]["in_features"]
        h = np.zeros((n, n))
        h[np.triu_indices(n)] = arr[f"{site}.hessian"]
        h = (h + np.triu(h, 1).T) * (2.0 / seqs)  # quench's normalisation (gptq_run.cc)
        ref = hessians[mod].astype(np.float64) / seqs  # one sample per batch: num_samples
        print(f"{mod}: max |H_stats - H_ref| / max |H_ref| = {np.abs(h - ref).max() / np.abs(ref).max():.3e}")


def stats_from(hessians_file: str, like: str, out: str) -> None:
    from safetensors.numpy import load_file, save_file
    saved = load_file(hessians_file)
    man = json.load(open(os.path.join(like, "manifest.json")))
    arr = {}
    for f in man["files"]:
        arr.update(load_file(os.path.join(like, f)))
    for site, info in man["sites"].items():
        if "hessian" not in info["fields"]:
            continue
        h = saved[site].astype(np.float64) / 2.0
        arr[f"{site}.hessian"] = h[np.triu_indices(h.shape[0])]
    os.makedirs(out, exist_ok=True)
    save_file(arr, os.path.join(out, man["files"][0]))
    man["collection"]["dataset"] += f" (Hessians: {os.path.basename(hessians_file)})"
    json.dump(man, open(os.path.join(out, "manifest.json"), "w"), indent=2)


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--stats-from":
        return stats_from(*sys.argv[2:])
    if len(sys.argv) == 4 and sys.argv[1] == "--compare-from":
        from safetensors.numpy import load_file
        return compare(load_file(sys.argv[2]), sys.argv[3])
    p = calib_argparser()
    add_sampling_args(p)
    p.add_argument("--pipeline", default="sequential", choices=["sequential", "basic"])
    p.add_argument("--hessians")
    p.add_argument("--compare")
    a = p.parse_args()
    tok, seqs, ds, model = load_calibration(a.model, a.calib, a.samples, a.seq_len)
    scheme = QuantizationScheme(
        targets=["Linear"],
        weights=QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=128))
    mod = GPTQModifier(config_groups={"group_0": scheme})
    saved = {}
    if a.hessians or a.compare:
        original = GPTQModifier.compress_module_list

        def keep(self, module_list):
            for m in module_list:
                saved[self._module_names[m]] = self._hessians[m].detach().float().cpu().numpy().copy()
            return original(self, module_list)
        GPTQModifier.compress_module_list = keep
    t0 = time.time()
    oneshot(model=model, dataset=ds, recipe=[mod], num_calibration_samples=len(seqs),
            processor=tok, max_seq_length=a.seq_len, pipeline=a.pipeline, batch_size=1)
    took = time.time() - t0
    save_compressed(model, tok, a.out)
    print(f"oneshot GPTQ W4A16 ({a.pipeline}, {len(seqs)} samples) took {took:.1f} s -> {a.out}")
    if a.hessians:
        from safetensors.numpy import save_file
        save_file(saved, a.hessians)
    if a.compare:
        compare(saved, a.compare)


if __name__ == "__main__":
    main()
