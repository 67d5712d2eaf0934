#!/usr/bin/env python3
"""Golden case for the imatrix_mse observer on the real all-MiniLM-L6-v2
(tests/test_imatrix_convert.cc): the statistics collect-stats wrote, and FNV-1a 64 hashes of
the weight_packed / weight_scale / weight_shape tensors llm-compressor 0.14.0.1's oneshot
wrote with its own imatrix_mse observer, which accumulated the same per-channel sum of x^2 from
the same samples (scripts/ref_minilm_imatrix.py). quench converting MiniLM with these
statistics must write the same bytes.

Made with (2-core VM, about 10 minutes):
  M=$(scripts/fetch_minilm.sh); scripts/calib-text /tmp/text
  scripts/collect-stats $M --text /tmp/text/calib.txt --samples 256 --seq-len 128 \
      --hessian none -o /tmp/stats
  .venv-ref/bin/python scripts/ref_minilm_imatrix.py $M /tmp/text/calib.txt /tmp/ref
  python3 scripts/make_golden_imatrix_minilm.py /tmp/ref /tmp/stats

NVFP4A16 (expected-nvfp4a16.json, the same statistics, oneshot about 11 minutes):
  .venv-ref/bin/python scripts/ref_minilm_imatrix.py $M /tmp/text/calib.txt \
      /tmp/ref-nvfp4 --scheme NVFP4A16
  python3 scripts/make_golden_imatrix_minilm.py /tmp/ref-nvfp4 --expected expected-nvfp4a16.json
(weight_global_scale values are recorded too: quench fuses BERT's query/key/value for vLLM,
which llm-compressor's fuse_weight_observers does not, so the test compares those by rule.)
"""
import glob
import json
import os
import shutil
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "data", "golden", "imatrix-minilm")


def fnv1a64(data: bytes) -> str:
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def tensors(folder):
    out = {}
    for f in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        raw = open(f, "rb").read()
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        for name, info in header.items():
            if name == "__metadata__":
                continue
            b, e = info["data_offsets"]
            out[name] = (info["dtype"], info["shape"], raw[8 + n + b:8 + n + e])
    return out


def main():
    ref = sys.argv[1]
    expected = "expected.json"
    if len(sys.argv) > 3 and sys.argv[2] == "--expected":
        expected = sys.argv[3]  # an added scheme: the statistics are already there
    else:
        stats = sys.argv[2]
        if os.path.exists(OUT):
            shutil.rmtree(OUT)
        shutil.copytree(stats, os.path.join(OUT, "stats"))
    want = {}
    for name, (dtype, shape, data) in sorted(tensors(ref).items()):
        if name.endswith((".weight_packed", ".weight_scale", ".weight_shape",
                          ".weight_global_scale")):
            want[name] = {"dtype": dtype, "shape": shape, "fnv1a64": fnv1a64(data)}
            if name.endswith(".weight_global_scale"):
                want[name]["value"] = struct.unpack("<f", data)[0]
    cfg = json.load(open(os.path.join(ref, "config.json")))["quantization_config"]
    (grp,) = cfg["config_groups"].values()
    what = ("int4 symmetric group 128" if expected == "expected.json"
            else expected[len("expected-"):-len(".json")].upper())
    with open(os.path.join(OUT, expected), "w") as f:
        json.dump({"generator": "scripts/make_golden_imatrix_minilm.py",
                   "reference": "llmcompressor 0.14.0.1 oneshot, QuantizationModifier, " + what +
                                ", observer imatrix_mse",
                   "weights_args": grp["weights"], "tensors": want}, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"{len(want)} tensors -> {OUT}")


if __name__ == "__main__":
    main()
