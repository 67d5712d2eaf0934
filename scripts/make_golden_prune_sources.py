#!/usr/bin/env python3
"""Golden files for expert pruning (issue 21) of the other quantized source kinds (issue 17),
with the pinned reference (compressed-tensors 0.19.0, llm-compressor 0.14.0.1).

Run with the reference venv's python:

    .venv-ref/bin/python scripts/make_golden_prune_sources.py

One small MoE (2 layers, 4 experts per layer, expert e's weights scaled by 1 + e, unquantized
routers `mlp.gate.weight` [4, H]) in each layout (data/golden/xprune-src/<kind>/src):
  ct2d       compressed-tensors per-expert 2-D weights: the reference's model_free_ptq
             (W4A16_ASYM) of the BF16 model (`experts.<e>.gate_proj.weight_packed`, scale,
             zero point, weight_shape per expert);
  awq        AutoAWQ GEMM per expert (qweight / qzeros / scales, group 32; routers F16 in
             modules_to_not_convert), random codes as make_golden_quant_sources.py;
  modelopt   ModelOpt NVFP4 per expert (U8 weight, F8 weight_scale, weight_scale_2 shared by
             each expert's gate and up, input_scale; routers BF16 in exclude_modules);
  fp8fused   DeepSeek-style FP8 block (quant_method "fp8", 128x128) with fused 3-D experts:
             `experts.gate_up_proj.weight` F8_E4M3 [4, 2I, H] and its `weight_scale_inv`
             [4, 2I/128, H/128].

The reference prunes each with MagnitudeExpertPruner.from_pretrained(src, r"mlp\\.gate\\.
weight$", EXPERT, 0.5) through convert_checkpoint (EXPERT: r"mlp\\.experts\\.\\d+\\." per
expert, r"mlp\\.experts\\.(gate_up_proj|down_proj)" fused), then converts the pruned checkpoint
with the kind's own converter (data/golden/xprune-src/<kind>/<variant>):
  ct2d/BF16            CompressedTensorsDequantizer
  awq/W4A16_ASYM       AutoAWQConverter (the lossless repack)
  modelopt/NVFP4       ModelOptNvfp4Converter (the lossless repack)
  fp8fused/BF16        FP8BlockDequantizer
Where a step fails its error is recorded in the manifest instead ("reference_error").
Writes data/golden/xprune-src/ and data/golden/prune_sources_manifest.json. Deterministic.
"""
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_golden_ct import describe as describe_nd, load_folder  # noqa: E402

GOLDEN = os.path.join(os.path.dirname(HERE), "data", "golden")
ROOT = os.path.join(GOLDEN, "xprune-src")
DEFAULT_IGNORE = ["lm_head", "re:.*embed_tokens$", "re:.*mlp\\.gate$"]
ROUTER = r"mlp\.gate\.weight$"
EXPERT_2D, EXPERT_3D = r"mlp\.experts\.\d+\.", r"mlp\.experts\.(gate_up_proj|down_proj)"
H = I = 128
E = 4
VOCAB = 32


def describe(tensors):
    """make_golden_ct.describe, 0-dim tensors (ModelOpt's scalars) included."""
    out = describe_nd({n: t.reshape(-1) for n, t in tensors.items()})
    for n, t in tensors.items():
        out[n]["shape"] = list(t.shape)
    return out


def config(dtype, qc):
    c = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": H,
         "moe_intermediate_size": I, "num_experts": E, "num_experts_per_tok": 1,
         "num_hidden_layers": 2, "vocab_size": VOCAB, "torch_dtype": dtype}
    if qc is not None:
        c["quantization_config"] = qc
    return c


def save(dirpath, tensors, cfg, extra=None):
    from safetensors.torch import save_file
    os.makedirs(dirpath)
    save_file({k: v.contiguous() for k, v in tensors.items()},
              os.path.join(dirpath, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(dirpath, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    for name, obj in (extra or {}).items():
        with open(os.path.join(dirpath, name), "w") as f:
            json.dump(obj, f, indent=2)


def common(torch, g, dtype):
    t = {"model.embed_tokens.weight": (torch.randn(VOCAB, H, generator=g) * 0.5).to(dtype),
         "lm_head.weight": (torch.randn(VOCAB, H, generator=g) * 0.5).to(dtype),
         "model.norm.weight": (1 + 0.1 * torch.randn(H, generator=g)).to(dtype)}
    for i in range(2):
        t[f"model.layers.{i}.mlp.gate.weight"] = (torch.randn(E, H, generator=g) * 0.05).to(dtype)
    return t


def expert_modules():
    for i in range(2):
        for e in range(E):
            p = f"model.layers.{i}.mlp.experts.{e}"
            yield e, f"{p}.gate_proj", I, H
            yield e, f"{p}.up_proj", I, H
            yield e, f"{p}.down_proj", H, I


def bf16_2d(torch, g):
    t = common(torch, g, torch.bfloat16)
    for e, name, out, inp in expert_modules():
        t[name + ".weight"] = (torch.randn(out, inp, generator=g) * 0.02 * (1 + e)).bfloat16()
    return t


def write_awq(torch, g, d, group=32):
    t = common(torch, g, torch.float16)
    for e, name, out, inp in expert_modules():
        t[name + ".qweight"] = torch.randint(-2**31, 2**31 - 1, (inp, out // 8), generator=g,
                                             dtype=torch.int64).to(torch.int32)
        t[name + ".qzeros"] = torch.randint(-2**31, 2**31 - 1, (inp // group, out // 8),
                                            generator=g, dtype=torch.int64).to(torch.int32)
        t[name + ".scales"] = ((torch.rand(inp // group, out, generator=g) * 0.02 + 1e-4)
                               * (1 + e)).half()
    qc = {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True,
          "version": "gemm", "modules_to_not_convert": ["mlp.gate"]}
    save(d, t, config("float16", qc))


def write_modelopt(torch, g, d):
    t = common(torch, g, torch.bfloat16)
    ws2 = {}
    for e, name, out, inp in expert_modules():
        t[name + ".weight"] = torch.randint(0, 256, (out, inp // 2), generator=g,
                                            dtype=torch.int32).to(torch.uint8)
        codes = torch.randint(1, 0x7F, (out, inp // 16), generator=g, dtype=torch.int32)
        t[name + ".weight_scale"] = codes.to(torch.uint8).view(torch.float8_e4m3fn)
        fused = name.rsplit(".", 1)[0] + (".down" if name.endswith("down_proj") else ".gate_up")
        if fused not in ws2:
            ws2[fused] = (torch.rand((), generator=g) * 1e-3 + 1e-4).float()
        t[name + ".weight_scale_2"] = ws2[fused].clone()
        t[name + ".input_scale"] = (torch.rand((), generator=g) * 0.01 + 1e-3).float()
    exclude = ["lm_head", "model.embed_tokens", "model.layers.0.mlp.gate", "model.layers.1.mlp.gate"]
    hf = {"producer": {"name": "modelopt", "version": "0.29.0"},
          "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": None, "group_size": 16,
                           "exclude_modules": exclude}}
    qc = {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16,
          "exclude_modules": exclude, "kv_cache_quant_algo": None,
          "producer": {"name": "modelopt", "version": "0.29.0"}}
    save(d, t, config("bfloat16", qc), {"hf_quant_config.json": hf})
    return exclude


def write_fp8_fused(torch, g, d):
    t = common(torch, g, torch.bfloat16)
    for i in range(2):
        p = f"model.layers.{i}.mlp.experts"
        for kind, rows, cols in (("gate_up_proj", 2 * I, H), ("down_proj", H, I)):
            codes = torch.randint(0, 256, (E, rows, cols), generator=g, dtype=torch.int32)
            codes[(codes & 0x7F) == 0x7F] -= 1  # no E4M3 NaN
            t[f"{p}.{kind}.weight"] = codes.to(torch.uint8).view(torch.float8_e4m3fn)
            scale = torch.rand(E, rows // 128, cols // 128, generator=g) * 1e-2 + 1e-3
            t[f"{p}.{kind}.weight_scale_inv"] = scale * torch.arange(1, E + 1).view(E, 1, 1)
    qc = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
          "weight_block_size": [128, 128]}
    save(d, t, config("bfloat16", qc))


def split_stacks(t):
    """Fused [E, rows, cols] stacks and their [E, rows/128, cols/128] scales per expert."""
    out = {}
    for n, v in t.items():
        for kind, parts in (("gate_up_proj", ("gate_proj", "up_proj")), ("down_proj", ("down_proj",))):
            if f".{kind}.weight" in n:
                suffix = n[n.index(f".{kind}.weight") + len(f".{kind}"):]
                prefix = n[: n.index(f".{kind}.weight")]
                for e in range(v.shape[0]):
                    for p, half in enumerate(v[e].chunk(len(parts), 0)):
                        out[f"{prefix}.{e}.{parts[p]}{suffix}"] = half.contiguous()
                break
        else:
            out[n] = v
    return out


def main():
    import torch
    from importlib import metadata
    from compressed_tensors.entrypoints.convert import MagnitudeExpertPruner, convert_checkpoint
    from compressed_tensors.entrypoints.convert.converters import (
        AutoAWQConverter, CompressedTensorsDequantizer, FP8BlockDequantizer,
        ModelOptNvfp4Converter)
    import compressed_tensors.entrypoints.convert.convert_file as cf
    import llmcompressor.entrypoints.model_free as mf

    orig_cf, orig_mf = cf.save_file, mf.save_file
    cf.save_file = lambda t, f, metadata=None: orig_cf({k: v.contiguous() for k, v in t.items()}, f, metadata)
    mf.save_file = lambda t, f, metadata=None: orig_mf({k: v.contiguous() for k, v in t.items()}, f, metadata)
    versions = {p: metadata.version(p) for p in
                ("compressed-tensors", "llmcompressor", "torch", "safetensors")}
    shutil.rmtree(ROOT, ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix="golden-prune-src-")
    g = torch.Generator().manual_seed(2121)
    bf16 = os.path.join(tmp, "bf16")
    save(bf16, bf16_2d(torch, g), config("bfloat16", None))
    srcs = {k: os.path.join(ROOT, k, "src") for k in ("ct2d", "awq", "modelopt", "fp8fused")}
    mf.model_free_ptq(bf16, srcs["ct2d"], scheme="W4A16_ASYM", ignore=DEFAULT_IGNORE, device="cpu")
    write_awq(torch, g, srcs["awq"])
    exclude = write_modelopt(torch, g, srcs["modelopt"])
    write_fp8_fused(torch, g, srcs["fp8fused"])
    convs = {
        "ct2d": ("BF16", EXPERT_2D, lambda s: CompressedTensorsDequantizer(s, ignore=DEFAULT_IGNORE)),
        # (built from the source: the pruned checkpoint's config has no quantization_config)
        "awq": ("W4A16_ASYM", EXPERT_2D, lambda s: AutoAWQConverter.from_pretrained(srcs["awq"])),
        "modelopt": ("NVFP4", EXPERT_2D,
                     lambda s: ModelOptNvfp4Converter(ignore=exclude, targets=["Linear"])),
        "fp8fused": ("BF16", EXPERT_3D, lambda s: FP8BlockDequantizer(
            ignore=["lm_head", "re:.*embed_tokens$", "re:.*mlp\\.gate$"])),
    }
    cases = []
    for kind, (scheme, expert, converter) in convs.items():
        src = srcs[kind]
        entry = {"name": f"{kind}/{scheme}", "source": f"golden/xprune-src/{kind}/src",
                 "scheme": scheme, "ignore": [], "prune_experts": 0.5, "versions": versions,
                 "patterns": [ROUTER, expert]}
        pruned = os.path.join(tmp, kind, "pruned")
        stage = "prune"
        try:
            conv = MagnitudeExpertPruner.from_pretrained(src, router_pattern=ROUTER,
                                                         expert_pattern=expert, sparsity=0.5)
            entry["retained"] = conv.retained_experts
            convert_checkpoint(src, pruned, conv, device="cpu")
            stage = "convert"
            out = os.path.join(tmp, kind, "out")
            try:
                convert_checkpoint(pruned, out, converter=converter(pruned), device="cpu")
            except RuntimeError as e:
                if kind != "fp8fused":
                    raise
                # FP8BlockDequantizer cannot decode 3-D stacks (as on compressed-tensors
                # stacks, make_golden_ct3d.py): its failure is recorded, and the expected
                # output is its decode of the reference's pruned stacks split per expert as
                # model_free_ptq splits them (<e>.gate_proj, <e>.up_proj, <e>.down_proj).
                entry["reference_error_3d"] = f"{type(e).__name__}: {e}"[:300]
                shutil.rmtree(out, ignore_errors=True)
                split = os.path.join(tmp, kind, "split")
                save(split, split_stacks(load_folder(pruned)), json.load(
                    open(os.path.join(pruned, "config.json"))))
                convert_checkpoint(split, out, converter=converter(split), device="cpu")
                entry["via_3d"] = "pruned stacks split per expert, then FP8BlockDequantizer"
            dst = os.path.join(ROOT, kind, scheme)
            os.makedirs(dst)
            shutil.copy(os.path.join(out, "config.json"), os.path.join(dst, "config.json"))
            entry["expected_tensors"] = describe(load_folder(out))
            entry["expected_config"] = f"golden/xprune-src/{kind}/{scheme}/config.json"
            entry["via"] = "convert_checkpoint(src, MagnitudeExpertPruner); convert_checkpoint(converter)"
        except Exception as e:  # noqa: BLE001 (recorded as it is)
            entry["reference_error"] = f"{type(e).__name__}: {e}"[:300]
            entry["reference_stage"] = stage
        cases.append(entry)
        print(entry["name"], entry.get("reference_stage"), entry.get("reference_error", "ok"), entry.get("retained"), file=sys.stderr)
    shutil.rmtree(tmp)
    with open(os.path.join(GOLDEN, "prune_sources_manifest.json"), "w") as f:
        f.write(json.dumps({"cases": cases}, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
