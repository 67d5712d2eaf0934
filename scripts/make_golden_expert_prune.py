#!/usr/bin/env python3
"""Golden files for whole-expert pruning by router magnitude (issue 21), from the reference.

Run with the reference venv's python (scripts/setup_reference.sh):

    .venv-ref/bin/python scripts/make_golden_expert_prune.py

The reference is compressed-tensors 0.19.0's MagnitudeExpertPruner
(entrypoints/convert/converters/magnitude_expert_pruner.py). Each case runs it:
  - alone:            convert_checkpoint(src, out, MagnitudeExpertPruner.from_pretrained(...))
  - with a scheme:    the same into a temporary folder, then
                      llmcompressor.model_free_ptq(tmp, out, scheme=S, ignore=DEFAULT_IGNORE, plus
                      the router for Mixtral, whose block_sparse_moe.gate it does not cover).
    model_free_ptq(src, out, scheme=S, converter=pruner) does both in one pass and writes the
    same shards and index, but its update_config never calls the converter's
    update_model_config, so its config.json keeps the unpruned expert count (a model vLLM
    cannot load). The generator checks that the one-pass run writes the same weight files and
    records the config difference in the manifest ("one_pass_config").

DeepSeek-style routers carry `mlp.gate.e_score_correction_bias` ([E], F32), which the reference
does not touch (its router pattern would score the 1-D bias as a router and crash); the model
it writes keeps E biases for fewer experts. quench slices the bias with the router. For those
cases the golden output is the reference's with that one tensor replaced by
`bias.index_select(0, retained)` (retained: the reference's own `retained_experts` for the
layer's router), re-saved with the same safetensors.torch.save_file call the reference makes,
and the index's total_size lowered by the bytes removed; the manifest marks them
"bias_sliced_by_generator".

NVFP4A16 is generated for the Mixtral layout only: on `mlp.experts.<i>.gate_proj/up_proj` the
reference gives gate and up their own global scales (it fuses `mlp.(gate|up)_proj` only), where
vLLM fuses them and quench shares one (README, deliberate differences); tests check the shared
scale on the pruned experts separately.

Writes (relative to data/golden/):
  xprune-*/src/...                  synthetic MoE checkpoints
  xprune-*/<variant>/...            every file the reference wrote
  expert_prune_manifest.json        cases, router scores and retained experts, the topk tie
                                    cases and the reference's refusals
Deterministic: running twice writes identical files.
"""
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
GOLDEN = os.path.join(REPO, "data", "golden")
sys.path.insert(0, HERE)

from make_golden import bf16_randn, versions, write_json_hf, write_shards  # noqa: E402

DEFAULT_IGNORE = ["lm_head", "re:.*embed_tokens$", "re:.*mlp\\.gate$"]
H = 128  # hidden size
I = 128  # expert intermediate size (a multiple of 128, so W4A16's groups fit)


def attention(rng, p):
    return {
        f"{p}.self_attn.q_proj.weight": bf16_randn(rng, H, H),
        f"{p}.self_attn.k_proj.weight": bf16_randn(rng, 64, H),
        f"{p}.self_attn.v_proj.weight": bf16_randn(rng, 64, H),
        f"{p}.self_attn.o_proj.weight": bf16_randn(rng, H, H),
        f"{p}.input_layernorm.weight": bf16_randn(rng, H, std=1.0),
        f"{p}.post_attention_layernorm.weight": bf16_randn(rng, H, std=1.0),
    }


def scaled(t, i):
    """Expert i's weights scaled by (1 + i): a misplaced or misnumbered expert changes bytes."""
    return (t.float() * (1 + i)).bfloat16()


def tied_router(rng, e):
    """A router whose rows 0, 2, 4, 6, 7 have one L1 norm (the same values, signs flipped and
    permuted) and rows 1, 3, 5 another, smaller one: keeping 4 or 6 of 8 cuts through a tie, so
    the kept set depends on torch.topk's tie order."""
    import torch

    base = bf16_randn(rng, H, std=0.05)
    low = (base.float() * 0.5).bfloat16()
    rows = []
    for i in range(e):
        src = low if i in (1, 3, 5) else base
        perm = torch.from_numpy(rng.permutation(H))
        sign = torch.from_numpy(rng.choice([-1.0, 1.0], H).astype("float32"))
        rows.append((src[perm].float() * sign).bfloat16())
    return torch.stack(rows)


def qwen_2d(seed):
    """Qwen3-MoE layout: per-expert 2-D weights, router mlp.gate.weight, 8 experts, 2 layers."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = {"model.embed_tokens.weight": bf16_randn(rng, 64, H)}
    for layer in range(2):
        p = f"model.layers.{layer}"
        t.update(attention(rng, p))
        t[f"{p}.self_attn.q_norm.weight"] = bf16_randn(rng, 32, std=1.0)  # Qwen3's per-head norms
        t[f"{p}.self_attn.k_norm.weight"] = bf16_randn(rng, 32, std=1.0)
        t[f"{p}.mlp.gate.weight"] = (bf16_randn(rng, 8, H, std=0.05) if layer == 0
                                     else tied_router(rng, 8))
        for e in range(8):
            t[f"{p}.mlp.experts.{e}.gate_proj.weight"] = scaled(bf16_randn(rng, I, H), e)
            t[f"{p}.mlp.experts.{e}.up_proj.weight"] = scaled(bf16_randn(rng, I, H), e)
            t[f"{p}.mlp.experts.{e}.down_proj.weight"] = scaled(bf16_randn(rng, H, I), e)
    t["model.norm.weight"] = bf16_randn(rng, H, std=1.0)
    t["lm_head.weight"] = bf16_randn(rng, 64, H)
    cfg = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
           "hidden_size": H, "intermediate_size": 256, "moe_intermediate_size": I,
           "num_experts": 8, "num_experts_per_tok": 2, "decoder_sparse_step": 1,
           "norm_topk_prob": True, "num_attention_heads": 4, "num_key_value_heads": 2,
           "head_dim": 32, "num_hidden_layers": 2, "vocab_size": 64, "rms_norm_eps": 1e-06,
           "max_position_embeddings": 256, "tie_word_embeddings": False,
           "torch_dtype": "bfloat16", "mlp_only_layers": []}
    return t, cfg


def qwen_shard_of(name):
    """Two shards: layer 1's experts 4-7 alone in the second, the rest in the first."""
    if name.startswith("model.layers.1.mlp.experts."):
        return 2 if int(name.split(".")[5]) >= 4 else 1
    return 1


def fused_3d(seed):
    """transformers v5 layout: mlp.experts.gate_up_proj [E, 2I, H] (layer 0 without a
    ".weight" suffix, layer 1 with one), down_proj [E, H, I], a [E, 2I] bias stack."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)

    def stack(rows, cols):
        return torch.stack([scaled(bf16_randn(rng, rows, cols), e) for e in range(8)])

    t = {"model.embed_tokens.weight": bf16_randn(rng, 64, H)}
    for layer in range(2):
        p = f"model.layers.{layer}"
        sfx = "" if layer == 0 else ".weight"
        t.update(attention(rng, p))
        t[f"{p}.mlp.gate.weight"] = bf16_randn(rng, 8, H, std=0.05)
        t[f"{p}.mlp.experts.gate_up_proj{sfx}"] = stack(2 * I, H)
        t[f"{p}.mlp.experts.down_proj{sfx}"] = stack(H, I)
        if layer == 0:
            t[f"{p}.mlp.experts.gate_up_proj_bias"] = bf16_randn(rng, 8, 2 * I)
    t["model.norm.weight"] = bf16_randn(rng, H, std=1.0)
    t["lm_head.weight"] = bf16_randn(rng, 64, H)
    cfg = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
           "hidden_size": H, "moe_intermediate_size": I, "num_experts": 8,
           "num_experts_per_tok": 2, "num_hidden_layers": 2, "vocab_size": 64,
           "torch_dtype": "bfloat16"}
    return t, cfg


def deepseek(seed):
    """DeepSeek-V3 layout: layer 0 dense, layer 1 MoE with 8 routed experts, one shared expert
    (mlp.shared_experts.*, never pruned) and an F32 e_score_correction_bias."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    t = {"model.embed_tokens.weight": bf16_randn(rng, 64, H)}
    t.update(attention(rng, "model.layers.0"))
    for proj, shape in (("gate_proj", (256, H)), ("up_proj", (256, H)), ("down_proj", (H, 256))):
        t[f"model.layers.0.mlp.{proj}.weight"] = bf16_randn(rng, *shape)
    p = "model.layers.1"
    t.update(attention(rng, p))
    t[f"{p}.mlp.gate.weight"] = bf16_randn(rng, 8, H, std=0.05)
    t[f"{p}.mlp.gate.e_score_correction_bias"] = torch.from_numpy(
        rng.standard_normal(8).astype("float32"))
    for e in range(8):
        t[f"{p}.mlp.experts.{e}.gate_proj.weight"] = scaled(bf16_randn(rng, I, H), e)
        t[f"{p}.mlp.experts.{e}.up_proj.weight"] = scaled(bf16_randn(rng, I, H), e)
        t[f"{p}.mlp.experts.{e}.down_proj.weight"] = scaled(bf16_randn(rng, H, I), e)
    for proj, shape in (("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I))):
        t[f"{p}.mlp.shared_experts.{proj}.weight"] = bf16_randn(rng, *shape)
    t["model.norm.weight"] = bf16_randn(rng, H, std=1.0)
    t["lm_head.weight"] = bf16_randn(rng, 64, H)
    cfg = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
           "hidden_size": H, "moe_intermediate_size": I, "n_routed_experts": 8,
           "n_shared_experts": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
           "num_hidden_layers": 2, "vocab_size": 64, "torch_dtype": "bfloat16"}
    return t, cfg


def mixtral(seed):
    """Mixtral layout: block_sparse_moe.gate, experts.N.w1/w2/w3, num_local_experts = 4."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = {"model.embed_tokens.weight": bf16_randn(rng, 64, H)}
    p = "model.layers.0"
    t.update(attention(rng, p))
    t[f"{p}.block_sparse_moe.gate.weight"] = bf16_randn(rng, 4, H, std=0.05)
    for e in range(4):
        t[f"{p}.block_sparse_moe.experts.{e}.w1.weight"] = scaled(bf16_randn(rng, I, H), e)
        t[f"{p}.block_sparse_moe.experts.{e}.w2.weight"] = scaled(bf16_randn(rng, H, I), e)
        t[f"{p}.block_sparse_moe.experts.{e}.w3.weight"] = scaled(bf16_randn(rng, I, H), e)
    t["model.norm.weight"] = bf16_randn(rng, H, std=1.0)
    t["lm_head.weight"] = bf16_randn(rng, 64, H)
    cfg = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": H,
           "intermediate_size": I, "num_local_experts": 4, "num_experts_per_tok": 2,
           "num_hidden_layers": 1, "vocab_size": 64, "torch_dtype": "bfloat16"}
    return t, cfg


def emptied(seed):
    """Two shards, the second holding only experts 2 and 3, which the router (row norms falling
    with the index) prunes at 0.5: the reference then writes an empty safetensors file."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    t = {"model.embed_tokens.weight": bf16_randn(rng, 64, H)}
    t["model.layers.0.mlp.gate.weight"] = torch.stack(
        [(bf16_randn(rng, H, std=0.01).float().abs() + 0.1 * (4 - e)).bfloat16() for e in range(4)])
    for e in range(4):
        t[f"model.layers.0.mlp.experts.{e}.gate_proj.weight"] = scaled(bf16_randn(rng, I, H), e)
        t[f"model.layers.0.mlp.experts.{e}.up_proj.weight"] = scaled(bf16_randn(rng, I, H), e)
        t[f"model.layers.0.mlp.experts.{e}.down_proj.weight"] = scaled(bf16_randn(rng, H, I), e)
    t["lm_head.weight"] = bf16_randn(rng, 64, H)
    cfg = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": H,
           "num_experts": 4, "num_experts_per_tok": 1, "num_hidden_layers": 1, "vocab_size": 64}
    return t, cfg


def emptied_shard_of(name):
    return 2 if ".experts.2." in name or ".experts.3." in name else 1


def write_source(dirpath, tensors, cfg, shard_of=None):
    from safetensors.torch import save_file

    os.makedirs(dirpath)
    if shard_of is None:
        save_file(tensors, os.path.join(dirpath, "model.safetensors"), metadata={"format": "pt"})
    else:
        write_shards(dirpath, tensors, shard_of, 2)
    write_json_hf(os.path.join(dirpath, "config.json"), cfg)


# The regexes the reference needs (it identifies nothing itself).
PATTERNS = {
    "2d": (r"mlp\.gate\.weight$", r"mlp\.experts\.\d+\."),
    "3d": (r"mlp\.gate\.weight$", r"mlp\.experts\.(gate_up_proj|down_proj)"),
    "mixtral": (r"block_sparse_moe\.gate\.weight$", r"block_sparse_moe\.experts\.\d+\."),
}

CASES = [
    # (case, builder, shard_of, patterns, [(variant, sparsity, scheme or None)])
    ("xprune-2d", qwen_2d, qwen_shard_of, "2d",
     [("E0.5", 0.5, None), ("E0.3125", 0.3125, None), ("E0.5-FP8_DYNAMIC", 0.5, "FP8_DYNAMIC"),
      ("E0.5-W4A16", 0.5, "W4A16")]),
    ("xprune-3d", fused_3d, None, "3d",
     [("E0.5", 0.5, None), ("E0.25-FP8_DYNAMIC", 0.25, "FP8_DYNAMIC")]),
    ("xprune-ds", deepseek, None, "2d",
     [("E0.5", 0.5, None), ("E0.5-FP8_DYNAMIC", 0.5, "FP8_DYNAMIC")]),
    ("xprune-emptied", emptied, emptied_shard_of, "2d",
     [("E0.5", 0.5, None), ("E0.5-FP8_DYNAMIC", 0.5, "FP8_DYNAMIC")]),
    ("xprune-mixtral", mixtral, None, "mixtral",
     [("E0.25", 0.25, None), ("E0.5-NVFP4A16", 0.5, "NVFP4A16")]),
]


def pruner(src, patterns, sparsity):
    from compressed_tensors.entrypoints.convert import MagnitudeExpertPruner

    router, expert = PATTERNS[patterns]
    return MagnitudeExpertPruner.from_pretrained(src, router_pattern=router,
                                                 expert_pattern=expert, sparsity=sparsity)


def slice_bias(out_dir, retained):
    """Replace each e_score_correction_bias with its rows for the retained experts."""
    import torch
    from safetensors.torch import load_file, save_file

    removed = 0
    for f in sorted(os.listdir(out_dir)):
        if not f.endswith(".safetensors"):
            continue
        path = os.path.join(out_dir, f)
        tensors = load_file(path)
        names = [n for n in tensors if n.endswith("mlp.gate.e_score_correction_bias")]
        if not names:
            continue
        for n in names:
            router = n[: -len("e_score_correction_bias")] + "weight"
            idx = torch.tensor(retained[router], dtype=torch.long)
            removed += tensors[n].nbytes
            tensors[n] = tensors[n].index_select(0, idx).contiguous()
            removed -= tensors[n].nbytes
        save_file(tensors, path)  # the call convert_file / _process_shard make
    # The index's total_size, written as update_safetensors_index writes it.
    index = os.path.join(out_dir, "model.safetensors.index.json")
    with open(index) as f:
        data = json.load(f)
    data["metadata"]["total_size"] -= removed
    with open(index, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)


def ignore_for(patterns):
    """model_free_ptq's ignore list: the routers stay unquantized (vLLM loads them so, and quench
    only copies a router sliced to the kept experts)."""
    if patterns == "mixtral":
        return DEFAULT_IGNORE + ["re:.*(block_sparse_moe|mlp)\\.(gate|router)$"]
    return DEFAULT_IGNORE


def run_variant(src, out, patterns, sparsity, scheme):
    ignore = ignore_for(patterns)
    from compressed_tensors.entrypoints.convert import convert_checkpoint
    import llmcompressor.entrypoints.model_free as mf

    conv = pruner(src, patterns, sparsity)
    entry = {"retained": conv.retained_experts}
    if scheme is None:
        convert_checkpoint(src, out, conv, device="cpu")
        entry["reference_call"] = ("convert_checkpoint(src, dst, MagnitudeExpertPruner."
                                   "from_pretrained(src, router_pattern, expert_pattern, sparsity))")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            convert_checkpoint(src, os.path.join(tmp, "pruned"), conv, device="cpu")
            try:
                mf.model_free_ptq(os.path.join(tmp, "pruned"), out, scheme=scheme,
                                  ignore=ignore, device="cpu")
            except ValueError as e:
                # A shard left empty by pruning is written but not indexed, and model_free_ptq
                # then refuses the folder ("Could not find inverse_weight_map for shard"). The
                # one-pass run works; its shards and index are the golden files, and its
                # config.json (unpruned count) is not compared ("compare": "weights").
                shutil.rmtree(out, ignore_errors=True)
                mf.model_free_ptq(src, out, scheme=scheme, ignore=ignore, device="cpu",
                                  converter=pruner(src, patterns, sparsity))
                os.remove(os.path.join(out, "config.json"))
                entry.update({"two_step_error": f"{type(e).__name__}: {e}", "compare": "weights",
                              "reference_call": "model_free_ptq(src, dst, scheme, ignore, "
                                                "converter=MagnitudeExpertPruner(...))"})
                return entry
            one = os.path.join(tmp, "one-pass")
            mf.model_free_ptq(src, one, scheme=scheme, ignore=ignore, device="cpu",
                              converter=pruner(src, patterns, sparsity))
            for f in sorted(os.listdir(out)):
                a = open(os.path.join(out, f), "rb").read()
                b = open(os.path.join(one, f), "rb").read()
                if f == "config.json":
                    ca, cb = json.loads(a), json.loads(b)
                    entry["one_pass_config"] = {k: [ca.get(k), cb.get(k)] for k in
                                                sorted(set(ca) | set(cb)) if ca.get(k) != cb.get(k)}
                elif a != b:
                    raise SystemExit(f"one-pass model_free_ptq(converter=) wrote another {f}")
        entry["reference_call"] = ("convert_checkpoint(src, tmp, MagnitudeExpertPruner(...)); "
                                   f"model_free_ptq(tmp, dst, scheme={scheme!r}, ignore=ignore)")
    return entry


def scores_of(src, patterns):
    """The reference's scores: router.abs().sum(dim=-1) in the router's dtype, as floats."""
    import re
    from safetensors import safe_open

    router_re = re.compile(PATTERNS[patterns][0])
    out = {}
    for f in sorted(os.listdir(src)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(src, f), framework="pt") as sf:
                for n in sf.keys():
                    if router_re.search(n):
                        out[n] = [float(x) for x in sf.get_tensor(n).abs().sum(dim=-1)]
    return out


def topk_cases():
    """torch.topk's choice among tied scores (the reference's selection), on bf16 scores with
    few distinct values, for sizes on both sides of topk's partial_sort / nth_element switch
    (k * 64 <= n)."""
    import numpy as np
    import torch

    rng = np.random.default_rng(21)
    cases = []
    for n, ks in ((8, (1, 3, 4, 6, 7)), (16, (2, 8, 12)), (60, (15, 30, 45)),
                  (128, (1, 2, 32, 64, 96)), (384, (4, 6, 96, 288))):
        for k in ks:
            for distinct in (2, 5):
                vals = rng.integers(0, distinct, n).astype("float32") * 0.5 + 10.0
                s = torch.from_numpy(vals).bfloat16()
                _, idx = torch.topk(s, k)
                cases.append({"scores": [float(x) for x in s], "k": k,
                              "kept": sorted(idx.tolist())})
    return cases


def refusals(src_2d):
    """The reference's errors for inputs quench must refuse too."""
    out = []
    for sparsity in (1.5, -0.25, 0.9):
        try:
            pruner(src_2d, "2d", sparsity)
            out.append({"sparsity": sparsity, "error": None})
        except ValueError as e:
            out.append({"sparsity": sparsity, "error": str(e)})
    return out


def main():
    import torch  # noqa: F401

    manifest = {"versions": versions(), "default_ignore": DEFAULT_IGNORE, "cases": [],
                "scores": {}}
    for case, builder, shard_of, patterns, variants in CASES:
        root = os.path.join(GOLDEN, case)
        shutil.rmtree(root, ignore_errors=True)
        tensors, cfg = builder(21)
        src = os.path.join(root, "src")
        write_source(src, tensors, cfg, shard_of)
        manifest["scores"][case] = scores_of(src, patterns)
        for variant, sparsity, scheme in variants:
            out = os.path.join(root, variant)
            entry = run_variant(src, out, patterns, sparsity, scheme)
            if case == "xprune-ds":
                slice_bias(out, entry["retained"])
                entry["bias_sliced_by_generator"] = True
            entry.update({"name": f"{case}/{variant}", "source": f"golden/{case}/src",
                          "expected": f"golden/{case}/{variant}", "prune_experts": sparsity,
                          "scheme": scheme or "none", "patterns": PATTERNS[patterns],
                          "ignore": ignore_for(patterns) if scheme else []})
            manifest["cases"].append(entry)
            print(entry["name"], entry["retained"], file=sys.stderr)
    manifest["topk"] = topk_cases()
    manifest["refused"] = refusals(os.path.join(GOLDEN, "xprune-2d", "src"))
    with open(os.path.join(GOLDEN, "expert_prune_manifest.json"), "w") as f:
        f.write(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
