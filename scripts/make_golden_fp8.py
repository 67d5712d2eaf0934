#!/usr/bin/env python3
"""Golden files for FP8 sources (issue 17), made with the pinned reference.

Run with the reference venv's python (scripts/setup_reference.sh):

    .venv-ref/bin/python scripts/make_golden_fp8.py

Writes (relative to <repo>/data/golden):
  fp8src/src/            a synthetic DeepSeek-V3-style FP8 checkpoint: E4M3 weights with F32
                         weight_scale_inv per 128x128 block (partial blocks in both directions,
                         subnormal codes, a zero scale, a huge scale),
                         BF16 embeddings, norms and lm_head; config.json with quant_method fp8
  fp8src/BF16/           compressed-tensors' convert_checkpoint with FP8BlockDequantizer(ignore=
                         [lm_head, embed_tokens]): the dequantized model (no quantization_config)
  fp8src/<SCHEME>/       model_free_ptq(scheme, ignore=DEFAULT_IGNORE (W4A16, NVFP4A16: and
                         down_proj, whose 300 inputs make no whole group),
                         converter=the same dequantizer) for FP8_DYNAMIC, W4A16, NVFP4A16
  fp8src-split/src/      the same tensors with down_proj's scale in the other shard
  fp8src-split/BF16/     (the reference fails on it: recorded in the manifest)
  fp8src-e8m0/src/       the same weights with F8_E8M0 scales (scale_fmt ue8m0)
  fp8src-e8m0/BF16/      its dequantized model (the reference fails on it: safetensors 0.8.0
                         cannot read F8_E8M0)
  fp8src-e8m0/decoded/   the independent computation quench is tested against where the
                         reference fails: the e8m0 source decoded here, in torch, by the
                         dequantizer's definition (codes and scales to f32, scales repeated over
                         their 128x128 blocks and trimmed, product rounded once to bf16), written
                         as a plain BF16 checkpoint; the same code reproduces fp8src/BF16 (the
                         reference's output) byte for byte, which this script asserts
  fp8src-e8m0/NVFP4A16/  model_free_ptq(NVFP4A16) of decoded/ (no converter needed)
  fp8_manifest.json      the cases, the reference versions, and any reference failure

Each reference run happens in a fresh subprocess. Deterministic.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(os.path.dirname(HERE), "data", "golden")
DEFAULT_IGNORE = ["lm_head", "re:.*embed_tokens$", "re:.*mlp\\.gate$"]
SCHEMES = ["FP8_DYNAMIC", "W4A16", "NVFP4A16"]

WORKER = r"""
import json, sys
from compressed_tensors.entrypoints.convert.converters import FP8BlockDequantizer
src, dst, scheme, ignore = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
use_converter = sys.argv[5] == "1"
# The dequantizer targets every .weight unless told otherwise, and stops at the first without
# a weight_scale_inv: it is given the BF16 modules as its ignore list, as its users must.
dequantizer = FP8BlockDequantizer(ignore=["lm_head", "re:.*embed_tokens$"])
if scheme == "BF16":
    import compressed_tensors.entrypoints.convert.convert_file as cf
    from compressed_tensors.entrypoints.convert import convert_checkpoint
    # The dequantizer trims padded blocks with a slice; safetensors refuses to save the
    # non-contiguous result. .contiguous() changes no byte.
    orig_cf = cf.save_file
    cf.save_file = lambda t, f, metadata=None: orig_cf({k: v.contiguous() for k, v in t.items()}, f, metadata)
    convert_checkpoint(src, dst, converter=dequantizer, device="cpu")
else:
    import llmcompressor.entrypoints.model_free as mf
    # As scripts/make_golden.py: CT's FP8_BLOCK output can be non-contiguous; no byte change.
    orig = mf.save_file
    mf.save_file = lambda t, f, metadata=None: orig({k: v.contiguous() for k, v in t.items()}, f, metadata)
    mf.model_free_ptq(src, dst, scheme=scheme, ignore=ignore, device="cpu",
                      **({"converter": dequantizer} if use_converter else {}))
"""


def fp8_tensors(seed, scale_dtype, split_pair=False):
    """name -> torch tensor, and which shard (1 or 2) each goes to."""
    import torch

    g = torch.Generator().manual_seed(seed)
    hidden, inter, vocab = 256, 300, 64

    def codes(rows, cols):
        # Random finite E4M3 codes (no NaN: 0x7F / 0xFF), with subnormals (exponent field 0),
        # zeros, -0 and the largest code 0x7E planted in the first row.
        c = torch.randint(0, 256, (rows, cols), generator=g, dtype=torch.int32)
        c = torch.where((c & 0x7F) == 0x7F, c - 1, c)
        c[0, :16] = torch.tensor([0x00, 0x80, 0x01, 0x81, 0x07, 0x87, 0x08, 0x7E,
                                  0xFE, 0x38, 0xB8, 0x06, 0x02, 0x79, 0x40, 0x3F])
        return c.to(torch.uint8).view(torch.float8_e4m3fn)

    def scales(rows, cols, special=None):
        s = torch.exp2(torch.empty((rows + 127) // 128, (cols + 127) // 128).uniform_(
            -14.0, -6.0, generator=g))
        if special == "zero":
            s[0, 0] = 0.0
        elif special == "huge":
            s[-1, -1] = 2.0 ** 100
        if scale_dtype == "e8m0":
            # E8M0 holds powers of two only: round the exponents, as ue8m0 checkpoints do.
            return torch.exp2(torch.round(torch.log2(s.clamp_min(2.0 ** -127)))).to(
                torch.float8_e8m0fnu)
        return s.to(torch.float32)

    def bf16(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    t, shard = {}, {}
    t["model.embed_tokens.weight"], shard["model.embed_tokens.weight"] = bf16(vocab, hidden), 1
    p = "model.layers.0."
    linears = [
        ("self_attn.q_proj", hidden, hidden, None),
        ("self_attn.k_proj", 128, hidden, None),
        ("self_attn.v_proj", 128, hidden, "zero"),
        ("self_attn.o_proj", hidden, hidden, "huge"),
        ("mlp.gate_proj", inter, hidden, None),
        ("mlp.up_proj", inter, hidden, None),
        ("mlp.down_proj", hidden, inter, None),
    ]
    for name, rows, cols, special in linears:
        t[p + name + ".weight"] = codes(rows, cols)
        t[p + name + ".weight_scale_inv"] = scales(rows, cols, special)
        shard[p + name + ".weight"] = 1
        # split_pair: down_proj's scale lives in the other shard (DeepSeek's index can split
        # a pair; the reference fails on it, see fp8_manifest.json).
        shard[p + name + ".weight_scale_inv"] = 2 if split_pair and name == "mlp.down_proj" else 1
    for n in ("input_layernorm", "post_attention_layernorm"):
        t[p + n + ".weight"], shard[p + n + ".weight"] = torch.ones(hidden, dtype=torch.bfloat16), 1
    t["model.norm.weight"], shard["model.norm.weight"] = torch.ones(hidden, dtype=torch.bfloat16), 2
    t["lm_head.weight"], shard["lm_head.weight"] = bf16(vocab, hidden), 2
    return t, shard


def source_config(quantization_config):
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
           "intermediate_size": 300, "num_attention_heads": 4, "num_key_value_heads": 2,
           "num_hidden_layers": 1, "vocab_size": 64, "torch_dtype": "bfloat16"}
    if quantization_config is not None:
        cfg["quantization_config"] = quantization_config
    return cfg


def write_source(dirpath, seed, scale_dtype, split_pair=False):
    from safetensors.torch import save_file

    t, shard = fp8_tensors(seed, scale_dtype, split_pair)
    os.makedirs(dirpath, exist_ok=True)
    q = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
         "weight_block_size": [128, 128]}
    if scale_dtype == "e8m0":
        q["scale_fmt"] = "ue8m0"
    with open(os.path.join(dirpath, "config.json"), "w") as f:
        json.dump(source_config(q), f, indent=2, sort_keys=True)
    files = {1: "model-00001-of-00002.safetensors", 2: "model-00002-of-00002.safetensors"}
    weight_map, total = {}, 0
    for k, fname in files.items():
        part = {n: v.contiguous() for n, v in t.items() if shard[n] == k}
        save_file(part, os.path.join(dirpath, fname), metadata={"format": "pt"})
        for n, v in part.items():
            weight_map[n] = fname
            total += v.numel() * v.element_size()
    with open(os.path.join(dirpath, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2,
                  sort_keys=True)


def decode_fp8(codes, scale):
    """The dequantizer's definition, computed here independently of it: f32(code) times the
    f32 scale of its 128x128 block (partial blocks at the ends), rounded once to bf16."""
    import torch

    rows, cols = codes.shape
    s = scale.to(torch.float32)
    s = s.repeat_interleave(128, dim=0)[:rows].repeat_interleave(128, dim=1)[:, :cols]
    return (codes.to(torch.float32) * s).to(torch.bfloat16)


def write_decoded(dirpath, seed, scale_dtype, split_pair=False):
    """The FP8 source of write_source decoded as a plain BF16 checkpoint, tensors in the same
    shards, scales dropped, quantization_config removed from config.json."""
    from safetensors.torch import save_file

    t, shard = fp8_tensors(seed, scale_dtype, split_pair)
    out = {}
    for n, v in t.items():
        if n.endswith("_scale_inv"):
            continue
        out[n] = decode_fp8(v, t[n + "_scale_inv"]) if n + "_scale_inv" in t else v
    os.makedirs(dirpath, exist_ok=True)
    with open(os.path.join(dirpath, "config.json"), "w") as f:
        json.dump(source_config(None), f, indent=2, sort_keys=True)
    files = {1: "model-00001-of-00002.safetensors", 2: "model-00002-of-00002.safetensors"}
    weight_map, total = {}, 0
    for k, fname in files.items():
        part = {n: v.contiguous() for n, v in out.items() if shard[n] == k}
        save_file(part, os.path.join(dirpath, fname), metadata={"format": "pt"})
        for n, v in part.items():
            weight_map[n] = fname
            total += v.numel() * v.element_size()
    with open(os.path.join(dirpath, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2,
                  sort_keys=True)
    return out


def check_decode_matches_reference(seed, reference_dir):
    """decode_fp8 must reproduce the reference dequantizer's own output byte for byte."""
    from safetensors.torch import load_file

    t, _ = fp8_tensors(seed, "f32")
    ref = {}
    for f in sorted(os.listdir(reference_dir)):
        if f.endswith(".safetensors"):
            ref.update(load_file(os.path.join(reference_dir, f)))
    checked = 0
    for n, v in t.items():
        if n + "_scale_inv" not in t:
            continue
        mine = decode_fp8(v, t[n + "_scale_inv"])
        if not mine.view(torch_int16()).equal(ref[n].view(torch_int16())):
            raise SystemExit(f"decode_fp8 differs from the reference on {n}")
        checked += 1
    assert checked == 7, checked


def torch_int16():
    import torch
    return torch.int16


def run(src, dst, scheme, ignore, converter=True):
    tmp = tempfile.mkdtemp(prefix="golden-fp8-")
    out = os.path.join(tmp, "out")
    env = dict(os.environ, PYTHONHASHSEED="0", CUDA_VISIBLE_DEVICES="")
    p = subprocess.run([sys.executable, "-c", WORKER, src, out, scheme, json.dumps(ignore),
                        "1" if converter else "0"], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        shutil.rmtree(tmp)
        lines = [l for l in p.stderr.strip().splitlines() if "Error" in l and not l.startswith(" ")]
        return (lines or p.stderr.strip().splitlines() or ["?"])[-1][:300]
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.move(out, dst)
    shutil.rmtree(tmp)
    return None


def main():
    from importlib import metadata

    versions = {p: metadata.version(p) for p in
                ("compressed-tensors", "llmcompressor", "torch", "safetensors")}
    cases = []
    for name, seed, scale_dtype, split, schemes in (
            ("fp8src", 301, "f32", False, ["BF16"] + SCHEMES),
            ("fp8src-split", 301, "f32", True, ["BF16"]),
            ("fp8src-e8m0", 302, "e8m0", False, ["BF16"])):
        cdir = os.path.join(GOLDEN, name)
        if os.path.exists(cdir):
            shutil.rmtree(cdir)
        src = os.path.join(cdir, "src")
        write_source(src, seed, scale_dtype, split)
        for scheme in schemes:
            # Group schemes need whole groups: down_proj (300 inputs) stays BF16 for them.
            ignore = ([] if scheme == "BF16" else
                      DEFAULT_IGNORE if scheme == "FP8_DYNAMIC" else
                      DEFAULT_IGNORE + ["re:.*down_proj$"])
            err = run(src, os.path.join(cdir, scheme), scheme, ignore)
            entry = {"name": f"{name}/{scheme}", "source": f"golden/{name}/src",
                     "scheme": scheme, "ignore": ignore, "versions": versions}
            if err is None:
                entry["expected"] = f"golden/{name}/{scheme}"
            else:
                entry["reference_error"] = err
            cases.append(entry)
            print(entry["name"], "ok" if err is None else "REFERENCE FAILED: " + err)
    # Where the reference fails (E8M0 scales), the independent computation: decoded here,
    # then quantized by the reference from the decoded BF16 checkpoint.
    check_decode_matches_reference(301, os.path.join(GOLDEN, "fp8src", "BF16"))
    decoded = os.path.join(GOLDEN, "fp8src-e8m0", "decoded")
    write_decoded(decoded, 302, "e8m0")
    ignore = DEFAULT_IGNORE + ["re:.*down_proj$"]
    err = run(decoded, os.path.join(GOLDEN, "fp8src-e8m0", "NVFP4A16"), "NVFP4A16", ignore,
              converter=False)
    if err is not None:
        raise SystemExit("the reference failed on the decoded e8m0 checkpoint: " + err)
    cases.append({"name": "fp8src-e8m0/NVFP4A16", "source": "golden/fp8src-e8m0/src",
                  "scheme": "NVFP4A16", "ignore": ignore, "versions": versions,
                  "expected_tensors": "golden/fp8src-e8m0/NVFP4A16",
                  "via": "golden/fp8src-e8m0/decoded (decoded by this script; the reference "
                         "quantized it as a BF16 checkpoint)"})
    print("fp8src-e8m0 decoded, NVFP4A16 from it ok")
    with open(os.path.join(GOLDEN, "fp8_manifest.json"), "w") as f:
        f.write(json.dumps({"cases": cases}, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
