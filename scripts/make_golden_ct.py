#!/usr/bin/env python3
"""Golden files for compressed-tensors checkpoints as sources (issue 17), made with the pinned
reference (compressed-tensors 0.19.0, llm-compressor 0.14.0.1).

Run with the reference venv's python:

    .venv-ref/bin/python scripts/make_golden_ct.py

Sources: the reference's own outputs of data/tiny-llama (data/golden/tiny-llama/<SCHEME>, one
per compressed-tensors format quench writes), and two synthetic ones built here from them
(data/golden/ctsrc/):
  mixed/  mixed-precision: self_attn modules from W4A16 (pack-quantized), mlp modules from
          FP8_DYNAMIC (float-quantized), two config groups with regex targets
  gidx/   W4A16 with activation order "group": every packed weight given a weight_g_idx
          (column c's group is perm[c] // 128 for a seeded permutation)

Expected outputs (data/golden/ct_manifest.json; per output tensor dtype, shape and FNV-1a 64 of
its bytes, and the written config.json under data/golden/ct/<case>/):
  <SRC>/BF16      convert_checkpoint(src, converter=CompressedTensorsDequantizer(src,
                  ignore=BF16_MODULES)); the dequantizer claims every ".weight" of a
                  "Linear"-targeted group, norms and embeddings included, and stops at the
                  first without a weight_scale: it is given the modules stored BF16, as its
                  users must (docs/reference-notes.md)
  <SRC>/<SCHEME>  model_free_ptq(src, scheme, ignore, converter=the same dequantizer)
  gidx/BF16       the reference refuses the checkpoint (actorder "group" was removed from
                  compressed-tensors' QuantizationArgs; its dequantizer would also ignore
                  weight_g_idx): recorded as reference_error; the expected tensors are the
                  reference's W4A16/BF16 output with each packed weight decoded here by the
                  format's definition with g_idx applied, code that reproduces the reference's
                  W4A16/BF16 byte for byte with g_idx = c // 128 (asserted); the expected
                  config is W4A16/BF16's (the source differs only in its quantization_config)

    .venv-ref/bin/python scripts/make_golden_ct.py --only ctsrc/gidx   # one source again
Each reference run happens in a fresh subprocess. Deterministic.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(os.path.dirname(HERE), "data")
GOLDEN = os.path.join(DATA, "golden")
BF16_MODULES = ["re:.*norm$", "re:.*embed_tokens$", "lm_head"]
DEFAULT_IGNORE = ["lm_head", "re:.*embed_tokens$", "re:.*mlp\\.gate$"]
GROUPED = DEFAULT_IGNORE + ["re:.*down_proj$"]  # 704 inputs make no whole group of 128

# (source, [target schemes]); source is a tiny-llama golden or a ctsrc/ folder.
CASES = [
    ("tiny-llama/W4A16", ["BF16", "NVFP4A16", "FP8_DYNAMIC"]),
    ("tiny-llama/W4A16_ASYM", ["BF16", "W4A16"]),
    ("tiny-llama/NVFP4A16", ["BF16", "W4A16"]),
    ("tiny-llama/MXFP4A16", ["BF16"]),
    ("tiny-llama/MXFP8A16", ["BF16"]),
    ("tiny-llama/W8A8", ["BF16"]),
    ("tiny-llama/FP8_DYNAMIC", ["BF16", "NVFP4A16"]),
    ("tiny-llama/FP8_BLOCK", ["BF16"]),
    ("ctsrc/mixed", ["BF16", "NVFP4A16"]),
    ("ctsrc/gidx", ["BF16"]),
    ("ctsrc/W8A16", ["BF16"]),
    ("ctsrc/W4AFP8", ["BF16"]),
] + [("qedge-bf16/" + q, ["BF16"]) for q in (
    "W2A16", "W3A16", "W5A16", "W6A16", "W7A16", "W8A16", "W8A16-asym", "W4A16-channel",
    "W4A16-g32", "W4A16_ASYM-g32", "W4A8", "W4AFP8", "W4AFP8-pack", "MXFP4", "MXFP8",
    "NVFP4A16")]
# Sources the reference writes itself from data/tiny-llama: 8-bit packed ints, and int4
# weights with FP8 activations (written pack-quantized; inference says int-quantized).
REF_SOURCES = {"ctsrc/W8A16": "W8A16", "ctsrc/W4AFP8": "W4AFP8"}

WORKER = r"""
import json, sys
from compressed_tensors.entrypoints.convert.converters import CompressedTensorsDequantizer
src, dst, scheme, ignore, bf16 = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), json.loads(sys.argv[5])
dequantizer = CompressedTensorsDequantizer(src, ignore=bf16) if sys.argv[6] == "1" else None
if scheme == "BF16":
    import compressed_tensors.entrypoints.convert.convert_file as cf
    from compressed_tensors.entrypoints.convert import convert_checkpoint
    orig_cf = cf.save_file
    cf.save_file = lambda t, f, metadata=None: orig_cf({k: v.contiguous() for k, v in t.items()}, f, metadata)
    convert_checkpoint(src, dst, converter=dequantizer, device="cpu")
else:
    import llmcompressor.entrypoints.model_free as mf
    orig = mf.save_file
    mf.save_file = lambda t, f, metadata=None: orig({k: v.contiguous() for k, v in t.items()}, f, metadata)
    mf.model_free_ptq(src, dst, scheme=scheme, ignore=ignore, device="cpu",
                      **({"converter": dequantizer} if dequantizer else {}))
"""


def fnv1a64(b):
    h = 0xcbf29ce484222325
    for x in b:
        h = ((h ^ x) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def load_folder(d):
    from safetensors.torch import load_file
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(d, f)))
    return out


def describe(tensors):
    import torch
    dt = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32",
          torch.float8_e4m3fn: "F8_E4M3", torch.int8: "I8", torch.uint8: "U8",
          torch.int32: "I32", torch.int64: "I64"}
    res = {}
    for n, t in sorted(tensors.items()):
        raw = t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""
        res[n] = {"dtype": dt[t.dtype], "shape": list(t.shape), "fnv1a64": fnv1a64(raw)}
    return res


def save_folder(d, tensors, config, shard_of):
    from safetensors.torch import save_file
    os.makedirs(d, exist_ok=True)
    files = sorted(set(shard_of.values()))
    weight_map, total = {}, 0
    for fname in files:
        part = {n: v.contiguous() for n, v in tensors.items() if shard_of[n] == fname}
        save_file(part, os.path.join(d, fname), metadata={"format": "pt"})
        for n, v in part.items():
            weight_map[n] = fname
            total += v.numel() * v.element_size()
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2,
                  sort_keys=True)


def shard_map(d):
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        return json.load(f)["weight_map"]


def make_mixed(dst):
    a, b = os.path.join(GOLDEN, "tiny-llama/W4A16"), os.path.join(GOLDEN, "tiny-llama/FP8_DYNAMIC")
    ta, tb = load_folder(a), load_folder(b)
    sa, sb = shard_map(a), shard_map(b)
    t, shards = {}, {}
    for n, v in ta.items():
        if ".mlp." not in n:
            t[n], shards[n] = v, sa[n]
    for n, v in tb.items():
        if ".mlp." in n:
            t[n], shards[n] = v, sb[n]
    with open(os.path.join(a, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(b, "config.json")) as f:
        qb = json.load(f)["quantization_config"]
    q = cfg["quantization_config"]
    ga = dict(next(iter(q["config_groups"].values())), targets=["re:.*self_attn\\..*"])
    gb = dict(next(iter(qb["config_groups"].values())), targets=["re:.*mlp\\..*"])
    q["config_groups"] = {"group_0": ga, "group_1": gb}
    q["format"] = "mixed-precision"
    q["ignore"] = ["lm_head", "re:.*embed_tokens$", "re:.*mlp\\.gate$"]
    save_folder(dst, t, cfg, shards)


def gidx_of(cols, seed):
    import torch
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(cols, generator=g)
    return (perm // 128).to(torch.int32)


def make_gidx(dst):
    src = os.path.join(GOLDEN, "tiny-llama/W4A16")
    t, shards = load_folder(src), shard_map(src)
    for n in list(t):
        if n.endswith(".weight_packed"):
            m = n[: -len(".weight_packed")]
            t[m + ".weight_g_idx"] = gidx_of(int(t[m + ".weight_shape"][1]), len(n))
            shards[m + ".weight_g_idx"] = shards[n]
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    for g in cfg["quantization_config"]["config_groups"].values():
        g["weights"]["actorder"] = "group"
    save_folder(dst, t, cfg, shards)


def decode_pack(packed, scale, shape, g_idx, bits=4):
    """The pack-quantized format's definition, computed independently: the dense little-endian
    bit stream of int32 words, offset 2^(bits-1); value (code) * scale[row, g_idx[col]] in the
    scale's dtype (bf16 here: one rounding), then bf16."""
    import numpy as np
    import torch
    cols = int(shape[1])
    words = packed.numpy().astype(np.uint32)
    bitpos = np.arange(cols, dtype=np.uint64) * bits
    wi, off = (bitpos // 32).astype(np.int64), (bitpos % 32).astype(np.uint32)
    lo = words[:, wi].astype(np.uint64)
    hi = np.where(wi + 1 < words.shape[1], words[:, np.minimum(wi + 1, words.shape[1] - 1)], 0)
    both = lo | (hi.astype(np.uint64) << np.uint64(32))
    codes = ((both >> off.astype(np.uint64)) & np.uint64((1 << bits) - 1)).astype(np.int64)
    codes -= 1 << (bits - 1)
    q = torch.from_numpy(codes).to(scale.dtype)
    s = scale[:, g_idx.long()]
    return (q * s).to(torch.bfloat16)


def check_gidx_decode(ref):
    """decode_pack with g_idx = c // 128 must equal the reference's W4A16 dequantization."""
    import torch
    src = load_folder(os.path.join(GOLDEN, "tiny-llama/W4A16"))
    checked = 0
    for n in src:
        if not n.endswith(".weight_packed"):
            continue
        m = n[: -len(".weight_packed")]
        cols = int(src[m + ".weight_shape"][1])
        mine = decode_pack(src[n], src[m + ".weight_scale"], src[m + ".weight_shape"],
                           torch.arange(cols, dtype=torch.int32) // 128)
        if not mine.view(torch.int16).equal(ref[m + ".weight"].view(torch.int16)):
            raise SystemExit(f"decode_pack differs from the reference on {m}")
        checked += 1
    assert checked > 0


def make_ref_source(d, scheme):
    """model_free_ptq(data/tiny-llama, scheme), saved whole as a source."""
    tmp = tempfile.mkdtemp(prefix="golden-ct-src-")
    env = dict(os.environ, PYTHONHASHSEED="0", CUDA_VISIBLE_DEVICES="")
    p = subprocess.run([sys.executable, "-c", WORKER, os.path.join(DATA, "tiny-llama"),
                        os.path.join(tmp, "out"), scheme, json.dumps(GROUPED),
                        json.dumps(BF16_MODULES), "0"], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"the reference failed to write {scheme}: {p.stderr[-500:]}")
    dst = os.path.join(GOLDEN, d)
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.move(os.path.join(tmp, "out"), dst)
    shutil.rmtree(tmp)


def run(src, dst, scheme, ignore, converter=True):
    tmp = tempfile.mkdtemp(prefix="golden-ct-")
    out = os.path.join(tmp, "out")
    env = dict(os.environ, PYTHONHASHSEED="0", CUDA_VISIBLE_DEVICES="")
    p = subprocess.run([sys.executable, "-c", WORKER, src, out, scheme, json.dumps(ignore),
                        json.dumps(BF16_MODULES), "1" if converter else "0"],
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        shutil.rmtree(tmp)
        lines = [l for l in p.stderr.strip().splitlines() if "Error" in l and not l.startswith(" ")]
        return None, (lines or p.stderr.strip().splitlines() or ["?"])[-1][:300]
    tensors = load_folder(out)
    os.makedirs(dst, exist_ok=True)
    shutil.copy(os.path.join(out, "config.json"), os.path.join(dst, "config.json"))
    shutil.rmtree(tmp)
    return tensors, None


def main():
    from importlib import metadata
    import torch

    versions = {p: metadata.version(p) for p in
                ("compressed-tensors", "llmcompressor", "torch", "safetensors")}
    only = sys.argv[2] if len(sys.argv) > 2 and sys.argv[1] == "--only" else None
    manifest = os.path.join(GOLDEN, "ct_manifest.json")
    cases = []
    if only is None:
        for d in ("ct", "ctsrc"):
            if os.path.exists(os.path.join(GOLDEN, d)):
                shutil.rmtree(os.path.join(GOLDEN, d))
        make_mixed(os.path.join(GOLDEN, "ctsrc/mixed"))
        make_gidx(os.path.join(GOLDEN, "ctsrc/gidx"))
        for d, scheme in REF_SOURCES.items():
            make_ref_source(d, scheme)
    else:
        with open(manifest) as f:
            cases = [c for c in json.load(f)["cases"] if not c["name"].startswith(only + "/")]
        if only == "ctsrc/mixed":
            make_mixed(os.path.join(GOLDEN, only))
        if only == "ctsrc/gidx":
            make_gidx(os.path.join(GOLDEN, only))
        if only in REF_SOURCES:
            make_ref_source(only, REF_SOURCES[only])
    for src, schemes in CASES:
        if only is not None and src != only:
            continue
        for scheme in schemes:
            ignore = [] if scheme == "BF16" else DEFAULT_IGNORE if scheme == "FP8_DYNAMIC" else GROUPED
            dst = os.path.join(GOLDEN, "ct", src, scheme)
            tensors, err = run(os.path.join(GOLDEN, src), dst, scheme, ignore)
            entry = {"name": f"{src}/{scheme}", "source": f"golden/{src}", "scheme": scheme,
                     "ignore": ignore, "versions": versions}
            if src == "qedge-bf16/W4AFP8-pack":
                # Written pack-quantized (as vLLM reads W4AFP8); the dequantizer infers
                # int-quantized from the weights and cannot read it. Its values are the
                # int-quantized W4AFP8's (same codes and scales), whose reference decode is the
                # expected output: decode_pack must reproduce it here.
                if err is None:
                    raise SystemExit("the reference now reads W4AFP8-pack: revisit the notes")
                entry["reference_error"] = err
                base = os.path.join(GOLDEN, "qedge-bf16/W4AFP8")
                ref, err2 = run(base, os.path.join(tempfile.mkdtemp(), "cfg"), "BF16", [])
                if err2 is not None:
                    raise SystemExit("the reference failed on qedge-bf16/W4AFP8: " + err2)
                s = load_folder(os.path.join(GOLDEN, src))
                checked = 0
                for n in s:
                    if n.endswith(".weight_packed"):
                        m = n[: -len(".weight_packed")]
                        cols = int(s[m + ".weight_shape"][1])
                        mine = decode_pack(s[n], s[m + ".weight_scale"], s[m + ".weight_shape"],
                                           torch.arange(cols, dtype=torch.int32) // 128)
                        if not mine.view(torch.int16).equal(ref[m + ".weight"].view(torch.int16)):
                            raise SystemExit(f"W4AFP8-pack {m} differs from W4AFP8's decode")
                        checked += 1
                assert checked > 0
                entry["expected_tensors"] = describe(ref)
                os.makedirs(dst, exist_ok=True)
                shutil.copy(os.path.join(GOLDEN, "ct/qedge-bf16/W4AFP8/BF16/config.json"),
                            os.path.join(dst, "config.json"))
                entry["expected_config"] = f"golden/ct/{src}/{scheme}/config.json"
                entry["via"] = ("the reference's decode of qedge-bf16/W4AFP8 (int-quantized, the "
                                "same codes and scales), equal to decode_pack of this source")
            elif src == "ctsrc/gidx":
                if err is None:
                    raise SystemExit("the reference now reads actorder 'group': revisit the notes")
                entry["reference_error"] = err
                base = os.path.join(GOLDEN, "tiny-llama/W4A16")
                ref, err2 = run(base, os.path.join(tempfile.mkdtemp(), "cfg"), "BF16", [])
                if err2 is not None:
                    raise SystemExit("the reference failed on tiny-llama/W4A16: " + err2)
                check_gidx_decode(ref)
                s = load_folder(os.path.join(GOLDEN, src))
                fixed = dict(ref)
                for n in s:
                    if n.endswith(".weight_packed"):
                        m = n[: -len(".weight_packed")]
                        fixed[m + ".weight"] = decode_pack(s[n], s[m + ".weight_scale"],
                                                           s[m + ".weight_shape"],
                                                           s[m + ".weight_g_idx"])
                entry["expected_tensors"] = describe(fixed)
                entry["expected_config"] = "golden/ct/tiny-llama/W4A16/BF16/config.json"
                entry["via"] = ("the reference's tiny-llama/W4A16/BF16 with each weight decoded "
                                "by this script's decode_pack, g_idx applied")
            elif err is not None:
                entry["reference_error"] = err
            else:
                entry["expected_tensors"] = describe(tensors)
                entry["expected_config"] = f"golden/ct/{src}/{scheme}/config.json"
            cases.append(entry)
            print(entry["name"], "ok" if err is None else "REFERENCE FAILED: " + err, flush=True)
    cases.sort(key=lambda c: [i for i, (s, _) in enumerate(CASES) if c["source"] == "golden/" + s]
               + [c["name"]])
    with open(manifest, "w") as f:
        f.write(json.dumps({"cases": cases}, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
