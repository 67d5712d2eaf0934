#!/usr/bin/env python3
"""Golden files for Llama 4's expert stacks linearized and quantized, made with the pinned reference.

Run with the reference venv's python (scripts/setup_reference.sh):

    .venv-ref/bin/python scripts/make_golden_llama4_linear.py

Llama 4 stores each MoE layer's experts as two BF16 stacks kept [experts, in, out]:
`feed_forward.experts.gate_up_proj` [E, H, 2I] and `feed_forward.experts.down_proj` [E, I, H].
model_free_ptq would split them across the hidden dimension (converter.py
split_fused_moe_experts assumes [E, out, in]); llm-compressor's Llama 4 calibration module
(llmcompressor/modeling/moe/llama4.py, Llama4LinearExperts, put in place of Llama4TextExperts
by linearize_moe / load_quantizable_moe) holds them as one MLP per expert instead, whose
gate_proj, up_proj and down_proj weights are gate_up_proj[e][:, :I].T, gate_up_proj[e][:, I:].T
and down_proj[e].T (linear_experts.py, ExpertMLPWithGate.copy_from_experts_module): the layout
of llm-compressor's Llama 4 checkpoints, which vLLM's llama4.py loads. The golden output is
model_free_ptq run on that linearized model's state dict.

Writes (relative to <repo>/data/golden):
  llama4lin/src/         a tiny Llama4ForConditionalGeneration (transformers' Llama4Config: a
                         text model of 2 MoE layers, hidden 128, expert width 128, 4 experts,
                         top-1, a shared expert; a one-layer vision encoder and projector;
                         random BF16 weights, seed 0, each expert's stacks at their own
                         scale), its state_dict (the names Llama 4's releases use:
                         language_model.model.layers..., vision_model..., ...) written with
                         safetensors' save_file in two shards (layer 1 and the head in the
                         second) and an index.
  llama4lin/<SCHEME>/    model_free_ptq(linearized, out, scheme=SCHEME, ignore=IGNORE) for
                         FP8_DYNAMIC, W8A8 and W4A16, where `linearized` is the same model after
                         llm-compressor's own linearize_moe(model) (each Llama4TextExperts
                         replaced by Llama4LinearExperts.from_experts_module), its state_dict
                         written as src's.
  llama4_linear_manifest.json  the cases, the ignore list and the reference versions

NVFP4A16 is left out: model_free_ptq fuses `mlp.(gate|up)_proj` only, so on
`feed_forward.experts.<e>.gate_proj/up_proj` it gives gate and up their own global scales where
vLLM fuses them and quench shares one (README, deliberate differences; tests/test_llama4_linear.cc
checks the shared scale against compressed-tensors' formula). Deterministic.
"""
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(os.path.dirname(HERE), "data", "golden")
OUT = os.path.join(GOLDEN, "llama4lin")
SCHEMES = ("FP8_DYNAMIC", "W8A8", "W4A16")
# quench's default ignores that hit this model, as quench writes them: the head, the token
# embedding, the MoE router (vLLM loads them unquantized), the vision encoder and the projector
# (quantized multimodal releases keep them BF16).
IGNORE = ["re:(.*\\.)?lm_head$", "re:.*embed_tokens$", "re:.*(mlp|feed_forward)\\.router$",
          "re:([^.]+\\.)?(vision_tower|vision_model|visual|vision|vision_encoder|"
          "vision_embed_tokens|embed_vision|audio_tower|embed_audio)\\..*",
          "re:([^.]+\\.)?(multi_modal_projector|mm_projector|projector|connector)\\..*"]


def model():
    import torch
    import transformers as T

    torch.manual_seed(0)
    text = dict(vocab_size=128, hidden_size=128, intermediate_size=128,
                intermediate_size_mlp=256, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=32, num_local_experts=4, num_experts_per_tok=1,
                interleave_moe_layer_step=1, max_position_embeddings=128)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=64, image_size=28, patch_size=14, vision_output_dim=64,
                  projector_input_dim=64, projector_output_dim=64, pixel_shuffle_ratio=0.5)
    cfg = T.Llama4Config(text_config=text, vision_config=vision, tie_word_embeddings=False)
    m = T.Llama4ForConditionalGeneration(cfg).to(torch.bfloat16)
    with torch.no_grad():
        # Random initialisation leaves the stacks near zero-mean normals of one scale; give each
        # expert and each half its own scale so that a wrong slice or a missing transpose shows.
        for i, layer in enumerate(m.language_model.model.layers):
            ex = layer.feed_forward.experts
            for e in range(ex.gate_up_proj.shape[0]):
                ex.gate_up_proj[e].copy_(torch.randn(ex.gate_up_proj[e].shape) * 0.02 * (e + 1))
                ex.gate_up_proj[e][:, text["intermediate_size"]:] *= 3
                ex.down_proj[e].copy_(torch.randn(ex.down_proj[e].shape) * 0.01 * (i + 2) * (e + 1))
    return cfg, m


def save_state(torch, dirpath, m, cfg):
    from make_golden_quant_sources import save

    sd = {k: v.detach().contiguous() for k, v in m.state_dict().items()}
    second = ("language_model.lm_head.weight", "language_model.model.norm.weight")
    shard_of = {k: int(k.startswith("language_model.model.layers.1.") or k in second)
                for k in sd}
    c = cfg.to_dict()
    for key in ("transformers_version", "_name_or_path"):
        c.pop(key, None)
    c["architectures"] = ["Llama4ForConditionalGeneration"]
    save(torch, dirpath, sd, shard_of, c)
    return sorted(sd)


def main():
    import torch
    import compressed_tensors
    import llmcompressor
    import llmcompressor.entrypoints.model_free as mf
    import transformers as T
    from llmcompressor.modeling.moe.linearize import linearize_moe

    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    cfg, m = model()
    src_names = save_state(torch, os.path.join(OUT, "src"), m, cfg)
    linearize_moe(m)
    m.to(torch.bfloat16)
    tmp = os.path.join(OUT, "linearized.tmp")
    linear_names = save_state(torch, tmp, m, cfg)
    manifest = {"reference": {"compressed_tensors": compressed_tensors.__version__,
                              "llmcompressor": llmcompressor.__version__,
                              "transformers": T.__version__, "torch": torch.__version__},
                "linearized_by": "llmcompressor.modeling.moe.linearize.linearize_moe "
                                 "(Llama4LinearExperts.from_experts_module)",
                "reference_call": "model_free_ptq(linearized, dst, scheme, ignore, device='cpu')",
                "src_tensors": len(src_names), "linearized_tensors": len(linear_names),
                "cases": []}
    for scheme in SCHEMES:
        mf.model_free_ptq(tmp, os.path.join(OUT, scheme), scheme=scheme, ignore=IGNORE,
                          device="cpu")
        manifest["cases"].append({"name": "llama4lin-" + scheme, "scheme": scheme,
                                  "source": "golden/llama4lin/src",
                                  "expected": "golden/llama4lin/" + scheme, "ignore": IGNORE})
    shutil.rmtree(tmp)
    with open(os.path.join(GOLDEN, "llama4_linear_manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    print("wrote", OUT)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main()
