#!/usr/bin/env python3
"""Golden files for expert pruning (issue 21) of 3-D compressed-tensors sources (issue 17):
fused MoE expert stacks stored compressed, pruned by router magnitude, with the pinned
reference (compressed-tensors 0.19.0, llm-compressor 0.14.0.1).

Run with the reference venv's python:

    .venv-ref/bin/python scripts/make_golden_prune_ct3d.py

Source (made in a temporary folder): a Qwen3-MoE-like BF16 model, 2 MoE layers of 4
experts (`mlp.experts.gate_up_proj` [4, 2I, H], `mlp.experts.down_proj` [4, H, I], expert e
scaled by 1 + e so a misplaced expert changes bytes), BF16 routers `mlp.gate.weight` [4, H]
and a DeepSeek-style F32 `mlp.gate.e_score_correction_bias` [4] in layer 1.
Compressed sources (data/golden/xprune-ct3d/<SCHEME>/): as scripts/make_golden_ct3d.py makes
them: each expert's 2-D weight compressed by the reference's model_free_ptq(SCHEME) (routers
ignored: unquantized), then every tensor of a stack stacked along a new first dimension
(weight_packed, weight_scale, weight_zero_point, weight_global_scale; weight_shape [E, rows,
cols]): compressed-tensors' own 3-D layout.

The reference on such a source (recorded in the manifest, "reference_on_compressed"):
MagnitudeExpertPruner.from_pretrained(src, r"mlp\\.gate\\.weight$", r"mlp\\.experts\\.(gate_up_
proj|down_proj)", 0.5) through convert_checkpoint. Its layout detection samples the first
expert tensor name, a [3] `weight_shape` or [E, ...] codes, and index_select's every matching
tensor along dimension 0: the outcome (its error, or a written folder whose dequantization by
CompressedTensorsDequantizer is then tried) is recorded as it is.

Expected outputs (independent of that): the source decoded to BF16 by the reference
(convert_checkpoint with CompressedTensorsDequantizer; where that fails on 3-D stacks, its
decode of the same codes stored per expert, stacked, as make_golden_ct3d.py), then
MagnitudeExpertPruner (same patterns, 0.5) through convert_checkpoint on that BF16 model:
  <SCHEME>/BF16  the pruned BF16 model (stacks 3-D, the kept experts only);
  <SCHEME>/W4A16 model_free_ptq(pruned, W4A16, DEFAULT_IGNORE): split per expert, quantized.
The reference does not touch e_score_correction_bias (its router pattern takes `.weight`);
the generator replaces it with bias.index_select(0, retained), as make_golden_expert_prune.py
does, and marks the case "bias_sliced_by_generator". The kept experts on the decoded model
are checked to equal the pruner's choice on the compressed source's router (the same bytes).

Writes data/golden/xprune-ct3d/ and data/golden/prune_ct3d_manifest.json. Deterministic.
"""
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_golden import bf16_randn, write_json_hf  # noqa: E402
from make_golden_ct import describe, load_folder, save_folder  # noqa: E402
from make_golden_ct3d import stack_decoded, stack_experts  # noqa: E402

GOLDEN = os.path.join(os.path.dirname(HERE), "data", "golden")
ROOT = os.path.join(GOLDEN, "xprune-ct3d")
DEFAULT_IGNORE = ["lm_head", "re:.*embed_tokens$", "re:.*mlp\\.gate$"]
BF16_MODULES = ["re:.*norm$", "re:.*embed_tokens$", "lm_head", "re:.*mlp\\.gate$"]
ROUTER, EXPERT = r"mlp\.gate\.weight$", r"mlp\.experts\.(gate_up_proj|down_proj)"
H = I = 128
E = 4
SPARSITY = 0.5
SOURCES = ["W4A16", "W4A16_ASYM", "NVFP4A16", "FP8_BLOCK"]
TARGETS = ["BF16", "W4A16"]
STACKS = [("model.layers.0.mlp.experts", E), ("model.layers.1.mlp.experts", E)]


def bf16_model():
    import numpy as np
    import torch

    rng = np.random.default_rng(2117)
    t = {"model.embed_tokens.weight": bf16_randn(rng, 64, H)}
    for layer in range(2):
        p = f"model.layers.{layer}"
        t[f"{p}.self_attn.q_proj.weight"] = bf16_randn(rng, H, H)
        t[f"{p}.self_attn.k_proj.weight"] = bf16_randn(rng, 64, H)
        t[f"{p}.self_attn.v_proj.weight"] = bf16_randn(rng, 64, H)
        t[f"{p}.self_attn.o_proj.weight"] = bf16_randn(rng, H, H)
        t[f"{p}.input_layernorm.weight"] = bf16_randn(rng, H, std=1.0)
        t[f"{p}.mlp.gate.weight"] = bf16_randn(rng, E, H, std=0.05)
        if layer == 1:
            t[f"{p}.mlp.gate.e_score_correction_bias"] = torch.from_numpy(
                rng.standard_normal(E).astype("float32"))
        for kind, rows, cols in (("gate_up_proj", 2 * I, H), ("down_proj", H, I)):
            t[f"{p}.mlp.experts.{kind}"] = torch.stack(
                [(bf16_randn(rng, rows, cols).float() * (1 + e)).bfloat16() for e in range(E)])
    t["model.norm.weight"] = bf16_randn(rng, H, std=1.0)
    t["lm_head.weight"] = bf16_randn(rng, 64, H)
    cfg = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
           "hidden_size": H, "moe_intermediate_size": I, "num_experts": E,
           "num_experts_per_tok": 1, "num_hidden_layers": 2, "vocab_size": 64,
           "torch_dtype": "bfloat16"}
    return t, cfg


def per_expert(t):
    """Each stack as one 2-D weight per expert under names model_free_ptq does not split
    ("<prefix>.<e>.w13.weight"), as make_golden_ct3d.py."""
    out = {}
    for name, v in t.items():
        for kind, piece in (("gate_up_proj", "w13"), ("down_proj", "w2")):
            if name.endswith(f".{kind}"):
                prefix = name[: -len(kind) - 1]
                for e in range(v.shape[0]):
                    out[f"{prefix}.{e}.{piece}.weight"] = v[e].contiguous()
                break
        else:
            out[name] = v
    return out


def pruner(src):
    from compressed_tensors.entrypoints.convert import MagnitudeExpertPruner

    return MagnitudeExpertPruner.from_pretrained(src, router_pattern=ROUTER,
                                                 expert_pattern=EXPERT, sparsity=SPARSITY)


def err(e):
    return f"{type(e).__name__}: {e}"[:300]


def slice_bias(tensors, retained):
    import torch

    for n in list(tensors):
        if n.endswith("mlp.gate.e_score_correction_bias"):
            idx = torch.tensor(retained[n[: -len("e_score_correction_bias")] + "weight"])
            tensors[n] = tensors[n].index_select(0, idx).contiguous()


def main():
    from importlib import metadata
    from compressed_tensors.entrypoints.convert import convert_checkpoint
    from compressed_tensors.entrypoints.convert.converters import CompressedTensorsDequantizer
    import compressed_tensors.entrypoints.convert.convert_file as cf
    import llmcompressor.entrypoints.model_free as mf

    # index_select / stacked views are saved contiguous (as make_golden_ct3d.py's worker).
    orig_cf, orig_mf = cf.save_file, mf.save_file
    cf.save_file = lambda t, f, metadata=None: orig_cf({k: v.contiguous() for k, v in t.items()}, f, metadata)
    mf.save_file = lambda t, f, metadata=None: orig_mf({k: v.contiguous() for k, v in t.items()}, f, metadata)
    versions = {p: metadata.version(p) for p in
                ("compressed-tensors", "llmcompressor", "torch", "safetensors")}
    shutil.rmtree(ROOT, ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix="golden-prune-ct3d-")
    tensors, cfg = bf16_model()
    src_bf16 = os.path.join(tmp, "src-bf16")
    save_folder(src_bf16, tensors, cfg, {n: "model.safetensors" for n in tensors})
    flat_src = os.path.join(tmp, "per-expert")
    flat_t = per_expert(tensors)
    save_folder(flat_src, flat_t, cfg, {n: "model.safetensors" for n in flat_t})
    retained_bf16 = pruner(src_bf16).retained_experts
    cases = []
    for scheme in SOURCES:
        flat = os.path.join(tmp, scheme, "flat")
        mf.model_free_ptq(flat_src, flat, scheme=scheme, ignore=DEFAULT_IGNORE, device="cpu")
        stacked = load_folder(flat)
        for prefix, e in STACKS:
            stacked.update(stack_experts(stacked, prefix, e))
        with open(os.path.join(flat, "config.json")) as f:
            qcfg = json.load(f)
        src = os.path.join(ROOT, scheme)
        save_folder(src, stacked, qcfg, {n: "model.safetensors" for n in stacked})
        # The reference on the compressed source itself.
        on_ct = {}
        try:
            conv = pruner(src)
            on_ct["retained"] = conv.retained_experts
            out = os.path.join(tmp, scheme, "ref-pruned-ct")
            convert_checkpoint(src, out, conv, device="cpu")
            on_ct["pruned"] = "written"
            try:
                convert_checkpoint(out, out + "-bf16", converter=CompressedTensorsDequantizer(
                    out, ignore=BF16_MODULES), device="cpu")
                on_ct["dequantized"] = "written"
                on_ct["dequantized_tensors"] = describe(load_folder(out + "-bf16"))
            except Exception as e:  # noqa: BLE001 (recorded as it is)
                on_ct["dequantize_error"] = err(e)
        except Exception as e:  # noqa: BLE001
            on_ct["error"] = err(e)
        if "retained" in on_ct and on_ct["retained"] != retained_bf16:
            raise SystemExit(f"{scheme}: the pruner chose otherwise on the compressed source")
        # The decoded BF16 model: the reference's 3-D decode, else its per-expert decode stacked.
        decoded = os.path.join(tmp, scheme, "decoded")
        decode_error = None
        try:
            convert_checkpoint(src, decoded, converter=CompressedTensorsDequantizer(
                src, ignore=BF16_MODULES), device="cpu")
        except Exception as e:  # noqa: BLE001
            decode_error = err(e)
            shutil.rmtree(decoded, ignore_errors=True)
            convert_checkpoint(flat, flat + "-bf16", converter=CompressedTensorsDequantizer(
                flat, ignore=BF16_MODULES), device="cpu")
            d = load_folder(flat + "-bf16")
            for prefix, e in STACKS:
                d.update(stack_decoded(d, prefix, e))
            with open(os.path.join(flat + "-bf16", "config.json")) as f:
                dcfg = json.load(f)
            save_folder(decoded, d, dcfg, {n: "model.safetensors" for n in d})
        conv = pruner(decoded)
        if conv.retained_experts != retained_bf16:
            raise SystemExit(f"{scheme}: the pruner chose otherwise on the decoded model")
        pruned = os.path.join(tmp, scheme, "pruned")
        convert_checkpoint(decoded, pruned, conv, device="cpu")
        for target in TARGETS:
            out = pruned
            if target != "BF16":
                out = os.path.join(tmp, scheme, "pruned-" + target)
                mf.model_free_ptq(pruned, out, scheme=target, ignore=DEFAULT_IGNORE, device="cpu")
            got = load_folder(out)
            slice_bias(got, conv.retained_experts)
            dst = os.path.join(ROOT, "expected", scheme, target)
            os.makedirs(dst, exist_ok=True)
            shutil.copy(os.path.join(out, "config.json"), os.path.join(dst, "config.json"))
            entry = {"name": f"{scheme}/{target}", "source": f"golden/xprune-ct3d/{scheme}",
                     "scheme": target, "ignore": [] if target == "BF16" else DEFAULT_IGNORE,
                     "prune_experts": SPARSITY, "retained": conv.retained_experts,
                     "expected_tensors": describe(got),
                     "expected_config": f"golden/xprune-ct3d/expected/{scheme}/{target}/config.json",
                     "bias_sliced_by_generator": True, "versions": versions,
                     "via": ("convert_checkpoint(decoded, MagnitudeExpertPruner)" +
                             ("" if target == "BF16" else f"; model_free_ptq({target})")),
                     "decoded_by": ("CompressedTensorsDequantizer on the 3-D source"
                                    if decode_error is None else
                                    "CompressedTensorsDequantizer on the per-expert 2-D source, "
                                    "stacked"),
                     "reference_on_compressed": on_ct}
            if decode_error is not None:
                entry["decode_error"] = decode_error
            cases.append(entry)
            print(entry["name"], on_ct.get("error") or on_ct.get("dequantize_error") or "ok",
                  file=sys.stderr)
    shutil.rmtree(tmp)
    write_json_hf(os.path.join(GOLDEN, "prune_ct3d_manifest.json"),
                  {"cases": cases, "retained": retained_bf16})


if __name__ == "__main__":
    main()
