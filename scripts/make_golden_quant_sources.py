#!/usr/bin/env python3
"""Golden files for AutoAWQ and ModelOpt NVFP4 sources (issue 17), made with the pinned reference.

Run with the reference venv's python (scripts/setup_reference.sh):

    .venv-ref/bin/python scripts/make_golden_quant_sources.py

Writes (relative to <repo>/data/golden):
  awqsrc/src/          a synthetic AutoAWQ GEMM checkpoint (llama names, F16): int32 qweight
                       [in, out/8] in AutoAWQ's interleaved nibble order, int32 qzeros
                       [in/g, out/8], F16 scales [in/g, out], group size 32; k/v_proj have 40
                       outputs (5 packed words, a zero-point word of 5 nibbles per... see below),
                       down_proj 96 inputs (3 groups); layer 1's down_proj is left F16 through
                       modules_to_not_convert; layer 0's o_proj scales lie in the other shard
  awqsrc/W4A16_ASYM/   compressed-tensors' convert_checkpoint with
                       AutoAWQConverter.from_pretrained(src): the lossless repack
  awqsrc/BF16/         convert_checkpoint of that repack with CompressedTensorsDequantizer(
                       dtype=bfloat16): the dequantized model
  awqsrc/FP8_DYNAMIC/  model_free_ptq(BF16/, FP8_DYNAMIC): the requantized model
  mosrc/src/           a synthetic ModelOpt NVFP4 checkpoint (BF16 model): U8 weight [out, in/2],
                       F8_E4M3 weight_scale [out, in/16], F32 scalar weight_scale_2 and
                       input_scale; hf_quant_config.json with exclude_modules (lm_head,
                       embed_tokens, layer 1's down_proj, left BF16); layer 0's o_proj
                       weight_scale_2 and input_scale in the other shard
  mosrc/NVFP4/         convert_checkpoint with ModelOptNvfp4Converter(ignore=exclude_modules,
                       targets=["Linear"]): the lossless repack
  mosrc/BF16/          CompressedTensorsDequantizer(dtype=bfloat16) of that repack
  mosrc/W8A8/         model_free_ptq(BF16/, W8A8)
  mokvsrc/src/         mosrc's layout (another seed) with an FP8 KV cache as ModelOpt exports
                       it: kv_cache_quant_algo "FP8", F32 0-dim k_proj.k_scale / v_proj.v_scale
                       per attention layer
  mokvsrc/NVFP4/       ModelOptNvfp4Converter(..., kv_cache_scheme=KV_SCHEME): the repack,
                       k/v scales cast to BF16 under their names, kv_cache_scheme in the config
  mokvsrc/BF16/        CompressedTensorsDequantizer of that repack (k/v scales dropped)
  quant_sources_manifest.json  the cases and the reference versions

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
MO_EXCLUDE = ["lm_head", "model.embed_tokens", "model.layers.1.mlp.down_proj"]
# ModelOpt's kv_cache_quant_algo "FP8" as compressed-tensors arguments: FP8 E4M3 per tensor,
# static (the ones quench writes for --kv-cache fp8, observer aside: a conversion observes
# nothing, so the argument's default is kept).
KV_SCHEME = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False,
             "symmetric": True}

WORKER = r"""
import json, sys, torch
kind, src, dst, arg = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
from compressed_tensors.entrypoints.convert import convert_checkpoint
from compressed_tensors.entrypoints.convert.converters import (
    AutoAWQConverter, ModelOptNvfp4Converter, CompressedTensorsDequantizer)
if kind == "awq":
    convert_checkpoint(src, dst, converter=AutoAWQConverter.from_pretrained(src), device="cpu")
elif kind == "modelopt":
    convert_checkpoint(src, dst, converter=ModelOptNvfp4Converter(
        ignore=json.loads(arg), targets=["Linear"]), device="cpu")
elif kind == "modelopt_kv":
    from compressed_tensors.quantization import QuantizationArgs
    a = json.loads(arg)
    convert_checkpoint(src, dst, converter=ModelOptNvfp4Converter(
        ignore=a["ignore"], targets=["Linear"],
        kv_cache_scheme=QuantizationArgs(**a["kv"])), device="cpu")
elif kind == "dequant":
    class Dequantizer(CompressedTensorsDequantizer):
        # compressed-tensors 0.19.0's dequantizer refuses an NVFP4 (W4A4) checkpoint: it
        # leaves input_global_scale behind and its validate calls that a residual qparam
        # (docs/reference-notes.md). The activation scale means nothing once the weights are
        # dequantized: it is dropped before the dequantizer sees the tensors.
        def _drop(self, tensors):
            return {k: v for k, v in tensors.items() if not k.endswith(".input_global_scale")}
        def validate(self, tensors):
            return super().validate(self._drop(tensors))
        def process(self, tensors):
            return super().process(self._drop(tensors))
    convert_checkpoint(src, dst, converter=Dequantizer(src, dtype=torch.bfloat16), device="cpu")
else:
    import llmcompressor.entrypoints.model_free as mf
    orig = mf.save_file
    mf.save_file = lambda t, f, metadata=None: orig({k: v.contiguous() for k, v in t.items()}, f, metadata)
    mf.model_free_ptq(src, dst, scheme=kind, ignore=json.loads(arg), device="cpu")
"""

LAYERS = 2
HIDDEN = 64
INTER = 96
KV = 40  # k/v outputs: a multiple of 8 (AWQ packs 8 outputs a word), not of 16
VOCAB = 32


def modules():
    """(module name, out, in) of every Linear, layer by layer."""
    out = []
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        out += [(f"{p}.self_attn.q_proj", HIDDEN, HIDDEN), (f"{p}.self_attn.k_proj", KV, HIDDEN),
                (f"{p}.self_attn.v_proj", KV, HIDDEN), (f"{p}.self_attn.o_proj", HIDDEN, HIDDEN),
                (f"{p}.mlp.gate_proj", INTER, HIDDEN), (f"{p}.mlp.up_proj", INTER, HIDDEN),
                (f"{p}.mlp.down_proj", HIDDEN, INTER)]
    return out


def config(dtype, qc):
    c = {"architectures": ["LlamaForCausalLM"], "hidden_size": HIDDEN,
         "intermediate_size": INTER, "model_type": "llama", "num_attention_heads": 4,
         "num_hidden_layers": LAYERS, "num_key_value_heads": 2, "head_dim": 16,
         "torch_dtype": dtype, "vocab_size": VOCAB}
    if qc is not None:
        c["quantization_config"] = qc
    return c


def plain(torch, g, dtype, tensors, layer_of):
    tensors["model.embed_tokens.weight"] = (torch.randn(VOCAB, HIDDEN, generator=g) * 0.5).to(dtype)
    tensors["lm_head.weight"] = (torch.randn(VOCAB, HIDDEN, generator=g) * 0.5).to(dtype)
    tensors["model.norm.weight"] = (1 + 0.1 * torch.randn(HIDDEN, generator=g)).to(dtype)
    layer_of.update({"model.embed_tokens.weight": 0, "lm_head.weight": 1, "model.norm.weight": 1})
    for i in range(LAYERS):
        for n in ("input_layernorm", "post_attention_layernorm"):
            name = f"model.layers.{i}.{n}.weight"
            tensors[name] = (1 + 0.1 * torch.randn(HIDDEN, generator=g)).to(dtype)
            layer_of[name] = i


def save(torch, dirpath, tensors, shard_of, cfg, extra_files=None):
    from safetensors.torch import save_file
    os.makedirs(dirpath)
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map, total = {}, 0
    for s, fname in enumerate(names):
        part = {k: v.contiguous() for k, v in tensors.items() if shard_of[k] == s}
        save_file(part, os.path.join(dirpath, fname), metadata={"format": "pt"})
        for k, v in part.items():
            weight_map[k] = fname
            total += v.numel() * v.element_size()
    with open(os.path.join(dirpath, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
                  f, indent=2)
    with open(os.path.join(dirpath, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    for name, obj in (extra_files or {}).items():
        with open(os.path.join(dirpath, name), "w") as f:
            json.dump(obj, f, indent=2)


def write_awq(dirpath, seed=701, group=32):
    import torch
    g = torch.Generator().manual_seed(seed)
    tensors, layer_of = {}, {}
    plain(torch, g, torch.float16, tensors, layer_of)
    for name, out, inp in modules():
        layer = int(name.split(".")[2])
        if name == "model.layers.1.mlp.down_proj":  # modules_to_not_convert: plain F16
            tensors[name + ".weight"] = (torch.randn(out, inp, generator=g) * 0.05).half()
            layer_of[name + ".weight"] = layer
            continue
        # Any 32-bit pattern is a valid word of eight nibbles.
        tensors[name + ".qweight"] = torch.randint(-2**31, 2**31 - 1, (inp, out // 8),
                                                   generator=g, dtype=torch.int64).to(torch.int32)
        tensors[name + ".qzeros"] = torch.randint(-2**31, 2**31 - 1, (inp // group, out // 8),
                                                  generator=g, dtype=torch.int64).to(torch.int32)
        sc = (torch.rand(inp // group, out, generator=g) * 0.02 + 1e-4).half()
        if name.endswith("q_proj") and layer == 0:
            sc[0, 0] = 0.0                      # a zero scale: the group decodes to zeros
            sc[0, 1] = torch.tensor(6e-8).half()  # an F16 subnormal
            sc[1, 2] = 600.0                    # a large scale: 15 * 600 still fits F16
        tensors[name + ".scales"] = sc
        for suffix in ("qweight", "qzeros", "scales"):
            layer_of[f"{name}.{suffix}"] = layer
    shard_of = dict(layer_of)
    shard_of["model.layers.0.self_attn.o_proj.scales"] = 1  # a scale in the other shard
    qc = {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True,
          "version": "gemm", "modules_to_not_convert": ["layers.1.mlp.down_proj"]}
    save(torch, dirpath, tensors, shard_of, config("float16", qc))


def write_modelopt(dirpath, seed=702, kv=False):
    import torch
    g = torch.Generator().manual_seed(seed)
    tensors, layer_of, ws2 = {}, {}, {}
    plain(torch, g, torch.bfloat16, tensors, layer_of)
    for name, out, inp in modules():
        layer = int(name.split(".")[2])
        if name == "model.layers.1.mlp.down_proj":  # exclude_modules: plain BF16
            tensors[name + ".weight"] = (torch.randn(out, inp, generator=g) * 0.05).bfloat16()
            layer_of[name + ".weight"] = layer
            continue
        tensors[name + ".weight"] = torch.randint(0, 256, (out, inp // 2), generator=g,
                                                  dtype=torch.int32).to(torch.uint8)
        # E4M3 codes without the sign bit, NaN (0x7F) and zero excluded (compressed-tensors
        # never writes a zero NVFP4 scale, and verify refuses one): subnormals up to 448.
        codes = torch.randint(1, 0x7F, (out, inp // 16), generator=g, dtype=torch.int32)
        codes[0, 0], codes[0, 1], codes[1, 0] = 1, 2, 0x7E
        tensors[name + ".weight_scale"] = codes.to(torch.uint8).view(torch.float8_e4m3fn)
        # One weight_scale_2 per fused set (q/k/v, gate/up), as ModelOpt exports them and vLLM
        # needs them (one global scale per fused matrix).
        fused = name.rsplit(".", 1)[0] + {"q_proj": ".qkv", "k_proj": ".qkv", "v_proj": ".qkv",
                                          "gate_proj": ".gate_up", "up_proj": ".gate_up"}.get(
                                              name.rsplit(".", 1)[1], "." + name.rsplit(".", 1)[1])
        if fused not in ws2:
            ws2[fused] = (torch.rand((), generator=g) * 1e-3 + 1e-4).float()
        tensors[name + ".weight_scale_2"] = ws2[fused].clone()
        tensors[name + ".input_scale"] = (torch.rand((), generator=g) * 0.01 + 1e-3).float()
        for suffix in ("weight", "weight_scale", "weight_scale_2", "input_scale"):
            layer_of[f"{name}.{suffix}"] = layer
        if kv and name.endswith(("k_proj", "v_proj")):
            # ModelOpt's export: <attn>.k_proj.k_scale and <attn>.v_proj.v_scale, F32 0-dim.
            kname = name + (".k_scale" if name.endswith("k_proj") else ".v_scale")
            tensors[kname] = (torch.rand((), generator=g) * 0.05 + 1e-3).float()
            layer_of[kname] = layer
    shard_of = dict(layer_of)
    shard_of["model.layers.0.self_attn.o_proj.weight_scale_2"] = 1
    shard_of["model.layers.0.self_attn.o_proj.input_scale"] = 1
    # (A k_scale in another shard than its k_proj stops the reference: its validate runs file
    # by file and calls it an orphan; docs/reference-notes.md 19.)
    kv_algo = "FP8" if kv else None
    hf_quant = {"producer": {"name": "modelopt", "version": "0.29.0"},
                "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": kv_algo,
                                 "group_size": 16, "exclude_modules": MO_EXCLUDE}}
    qc = {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16,
          "exclude_modules": MO_EXCLUDE, "kv_cache_quant_algo": kv_algo,
          "producer": {"name": "modelopt", "version": "0.29.0"}}
    save(torch, dirpath, tensors, shard_of, config("bfloat16", qc),
         {"hf_quant_config.json": hf_quant})


def run(kind, src, dst, arg=""):
    tmp = tempfile.mkdtemp(prefix="golden-qsrc-")
    out = os.path.join(tmp, "out")
    env = dict(os.environ, PYTHONHASHSEED="0", CUDA_VISIBLE_DEVICES="")
    p = subprocess.run([sys.executable, "-c", WORKER, kind, src, out, arg],
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        shutil.rmtree(tmp)
        raise SystemExit(f"reference {kind} on {src} failed:\n{p.stderr[-3000:]}")
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.move(out, dst)
    shutil.rmtree(tmp)


def main():
    from importlib import metadata

    versions = {p: metadata.version(p) for p in
                ("compressed-tensors", "llmcompressor", "torch", "safetensors")}
    cases = []
    for name, writer, repack_kind, repack_scheme, arg, requant, ignore in (
            ("awqsrc", write_awq, "awq", "W4A16_ASYM", "", "FP8_DYNAMIC", DEFAULT_IGNORE),
            ("mosrc", write_modelopt, "modelopt", "NVFP4", json.dumps(MO_EXCLUDE), "W8A8",
             DEFAULT_IGNORE)):
        cdir = os.path.join(GOLDEN, name)
        if os.path.exists(cdir):
            shutil.rmtree(cdir)
        src = os.path.join(cdir, "src")
        writer(src)
        run(repack_kind, src, os.path.join(cdir, repack_scheme), arg)
        run("dequant", os.path.join(cdir, repack_scheme), os.path.join(cdir, "BF16"))
        run(requant, os.path.join(cdir, "BF16"), os.path.join(cdir, requant), json.dumps(ignore))
        for scheme, via in ((repack_scheme, f"{repack_kind} converter"),
                            ("BF16", f"CompressedTensorsDequantizer of {repack_scheme}/"),
                            (requant, "model_free_ptq of BF16/")):
            cases.append({"name": f"{name}/{scheme}", "source": f"golden/{name}/src",
                          "scheme": scheme, "expected": f"golden/{name}/{scheme}",
                          "via": via, "ignore": ignore if scheme == requant else [],
                          "versions": versions})
            print(f"{name}/{scheme} ok")
    # ModelOpt NVFP4 with an FP8 KV cache: the repack and the dequantized model.
    cdir = os.path.join(GOLDEN, "mokvsrc")
    if os.path.exists(cdir):
        shutil.rmtree(cdir)
    src = os.path.join(cdir, "src")
    write_modelopt(src, seed=703, kv=True)
    run("modelopt_kv", src, os.path.join(cdir, "NVFP4"),
        json.dumps({"ignore": MO_EXCLUDE, "kv": KV_SCHEME}))
    run("dequant", os.path.join(cdir, "NVFP4"), os.path.join(cdir, "BF16"))
    for scheme, via in (("NVFP4", "modelopt converter with kv_cache_scheme"),
                        ("BF16", "CompressedTensorsDequantizer of NVFP4/")):
        cases.append({"name": f"mokvsrc/{scheme}", "source": "golden/mokvsrc/src",
                      "scheme": scheme, "expected": f"golden/mokvsrc/{scheme}", "via": via,
                      "ignore": [], "versions": versions})
        print(f"mokvsrc/{scheme} ok")
    with open(os.path.join(GOLDEN, "quant_sources_manifest.json"), "w") as f:
        f.write(json.dumps({"cases": cases}, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
