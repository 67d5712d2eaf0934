"""quench's default ignores as transformers reads the output. Multimodal checkpoints: a tiny
Llava (CLIP vision tower, projector, Llama; the Hub's `language_model.*` layout) and a tiny
Qwen2-VL (`visual.*` beside `model.*`). Text models whose unquantized modules go by other names:
a tiny Qwen3-Next (linear attention with a 3-D conv1d, MoE with shared experts), a tiny
Nemotron-H (Mamba mixers, attention, a MoE mixer; `backbone.embeddings`), a tiny OPT
(learned `embed_positions`), a tiny PhiMoE (router stored `block_sparse_moe.gate`, loaded as
`mlp.router`), a tiny LFM2 (short convolutions `conv.conv`) and a tiny Llama whose head is
tied to its embedding. Random weights from
transformers' own configuration classes (fixed seed, bf16), converted by quench W4A16 with its
default ignores (before them the hybrids failed planning on their convolutions, OPT's position
embedding was quantized, which transformers then left missing and vLLM refuses, and
transformers quantized PhiMoE's router and the tied head). transformers (with
compressed-tensors) must load every tensor (nothing missing, nothing unexpected), quantize
exactly the modules quench quantized, keep every other weight bit for bit, and give logits
close to the unquantized model's. vLLM's CPU build cannot run the multimodal ones (README,
"Consumers"); its check is scripts/check-vllm multimodal.
"""
import json

import pytest
import torch
from safetensors import safe_open
from transformers import (AutoModelForCausalLM, AutoModelForImageTextToText, CLIPVisionConfig,
                          LlamaConfig, LlamaForCausalLM, Lfm2Config, Lfm2ForCausalLM,
                          LlavaConfig,
                          LlavaForConditionalGeneration,
                          NemotronHConfig, NemotronHForCausalLM, OPTConfig, OPTForCausalLM,
                          PhimoeConfig, PhimoeForCausalLM,
                          Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen3NextConfig,
                          Qwen3NextForCausalLM)

import consumers as C

# Smallest cosine similarity of the logits (all positions) between the W4A16 model and the
# unquantized one, measured on 2026-12-07 (torch 2.13.0+cpu, compressed-tensors 0.19.0,
# transformers 5.17.0); a test fails below 1 - 1.25 * (1 - measured).
MEASURED = {"llava": 0.982534, "qwen2-vl": 0.983906, "qwen3-next": 0.978876,
            "nemotron-h": 0.970362, "opt": 0.979968, "llama-tied": 0.988576, "phimoe": 0.971321,
            "lfm2": 0.983469}
# transformers' names for a checkpoint's modules where it renames them (its conversion
# mapping): (checkpoint prefix, transformers prefix).
RENAMED = {"nemotron-h": ("backbone.", "model.")}


def save(cls, cfg, folder):
    """A model of class `cls` with random weights (seed 0), saved as bf16 safetensors."""
    torch.manual_seed(0)
    cls(cfg).to(torch.bfloat16).save_pretrained(folder)


def make_llava(folder):
    vision = CLIPVisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                              num_attention_heads=4, image_size=32, patch_size=8,
                              projection_dim=128)
    text = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                       max_position_embeddings=256, bos_token_id=1, eos_token_id=2)
    save(LlavaForConditionalGeneration,
         LlavaConfig(vision_config=vision, text_config=text, image_token_index=500,
                     projector_hidden_act="gelu", vision_feature_layer=-1,
                     vision_feature_select_strategy="default"), folder)
    # 32x32 pixels in 8x8 patches: 16 image tokens (the class token dropped).
    ids = torch.tensor([[1, 17, *([500] * 16), 301, 99, 7, 42, 3, 128]])
    return {"input_ids": ids, "pixel_values": torch.randn(1, 3, 32, 32, dtype=torch.bfloat16)}


def make_qwen2_vl(folder):
    save(Qwen2VLForConditionalGeneration, Qwen2VLConfig(
        text_config=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                         max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
                         rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]}),
        vision_config=dict(depth=2, embed_dim=64, hidden_size=128, num_heads=4, mlp_ratio=2,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           in_channels=3),
        image_token_id=500, video_token_id=501, vision_start_token_id=502,
        vision_end_token_id=503), folder)
    # One image of 4x4 patches of 14 pixels (2 frames deep), merged 2x2: 4 image tokens.
    ids = torch.tensor([[1, 17, 502, *([500] * 4), 503, 301, 99, 7, 42, 3, 128]])
    pixels = torch.randn(16, 3 * 2 * 14 * 14, dtype=torch.bfloat16)
    # mm_token_type_ids: 1 at image tokens, as Qwen2-VL's processor returns it (M-RoPE).
    return {"input_ids": ids, "pixel_values": pixels, "mm_token_type_ids": (ids == 500).int(),
            "image_grid_thw": torch.tensor([[1, 4, 4]])}


IDS = torch.tensor([[1, 17, 301, 99, 7, 42, 3, 128, 77, 460, 5, 260]])
# The text models: class and configuration; each reads IDS.
TEXT = {
    "qwen3-next": (Qwen3NextForCausalLM, lambda: Qwen3NextConfig(
        hidden_size=128, intermediate_size=256, moe_intermediate_size=128,
        shared_expert_intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, vocab_size=512, num_experts=4,
        num_experts_per_tok=2, linear_num_value_heads=4, linear_num_key_heads=2,
        linear_key_head_dim=32, linear_value_head_dim=32, linear_conv_kernel_dim=4,
        full_attention_interval=2, max_position_embeddings=256)),
    "nemotron-h": (NemotronHForCausalLM, lambda: NemotronHConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        hybrid_override_pattern="M*ME", num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, vocab_size=512, mamba_num_heads=4, mamba_head_dim=32, ssm_state_size=16,
        n_groups=1, conv_kernel=4, n_routed_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=128, moe_shared_expert_intermediate_size=128,
        max_position_embeddings=256)),
    "opt": (OPTForCausalLM, lambda: OPTConfig(
        hidden_size=128, ffn_dim=256, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=512, word_embed_proj_dim=128, max_position_embeddings=256)),
    # Mixtral-style names (block_sparse_moe.gate), which transformers 5 renames mlp.router.
    "phimoe": (PhimoeForCausalLM, lambda: PhimoeConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=512, num_local_experts=4, num_experts_per_tok=2,
        max_position_embeddings=256)),
    # LFM2: short convolutions (conv.conv, [channels, 1, 3]) between attention layers.
    "lfm2": (Lfm2ForCausalLM, lambda: Lfm2Config(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=512, max_position_embeddings=256,
        layer_types=["conv", "full_attention"])),
    # The head tied to the embedding, no lm_head tensor (Llama 3.2 1B and 3B do so).
    "llama-tied": (LlamaForCausalLM, lambda: LlamaConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True)),
}


def make_text(name):
    def make(folder):
        cls, cfg = TEXT[name]
        save(cls, cfg(), folder)
        return {"input_ids": IDS}
    return make


MODELS = {"llava": make_llava, "qwen2-vl": make_qwen2_vl, **{n: make_text(n) for n in TEXT}}
MULTIMODAL = ["llava", "qwen2-vl"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    work = tmp_path_factory.mktemp("multimodal")
    out = {}
    for name, make in MODELS.items():
        src = work / name
        inputs = make(src)
        dst = C.convert(src, work / f"{name}-W4A16", "W4A16")
        out[name] = (src, dst, inputs)
    return out


def check_logits(name, ref, got, inputs):
    """The converted model's logits against the unquantized model's, within MEASURED's floor."""
    with torch.no_grad():
        a = ref(**inputs).logits.float().flatten()
        b = got(**inputs).logits.float().flatten()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    print(f"{name} W4A16 logits cosine {cos:.6f}")
    assert cos >= 1 - 1.25 * (1 - MEASURED[name])


def linears(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


@pytest.mark.parametrize("name", MULTIMODAL)
def test_transformers_quantizes_the_language_model_only(built, name):
    src, dst, inputs = built[name]
    ref = AutoModelForImageTextToText.from_pretrained(src, dtype=torch.bfloat16)
    got = AutoModelForImageTextToText.from_pretrained(dst, dtype=torch.bfloat16)
    ref_linears, got_linears = linears(ref), linears(got)
    assert set(ref_linears) == set(got_linears)
    # The language model's projections, by transformers' own module tree.
    language = {n for n in got_linears if n.startswith("model.language_model.layers.")}
    assert len(language) == 2 * 7
    quantized = {n for n, m in got_linears.items()
                 if getattr(m, "quantization_scheme", None) is not None}
    assert quantized == language
    kept = set(got_linears) - language
    assert any("vision" in n or "visual" in n for n in kept) and "lm_head" in kept
    for n in kept:
        assert torch.equal(got_linears[n].weight, ref_linears[n].weight), n
    # The written ignore list is what kept them: quench's default patterns.
    ignore = json.loads((dst / "config.json").read_text())["quantization_config"]["ignore"]
    assert any("vision_tower|" in e for e in ignore)
    check_logits(name, ref, got, inputs)


def quantized_modules(folder):
    """The modules quench quantized: those with a weight_packed tensor in the output."""
    out = set()
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            out |= {k[:-len(".weight_packed")] for k in st.keys()
                    if k.endswith(".weight_packed")}
    return out


@pytest.mark.parametrize("name", list(TEXT))
def test_transformers_reads_every_tensor_of_text_models(built, name):
    src, dst, inputs = built[name]
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    got, info = AutoModelForCausalLM.from_pretrained(dst, dtype=torch.bfloat16,
                                                     output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    # transformers quantizes the Linear modules quench quantized (same names here: no
    # renaming; transformers 5 holds MoE experts as fused 3-D parameters, not Linear modules,
    # and decompresses them at load), and every module it leaves alone keeps the source's
    # weights.
    modules = dict(got.named_modules())
    quantized = {n for n, m in modules.items()
                 if getattr(m, "quantization_scheme", None) is not None}
    old, new = RENAMED.get(name, ("", ""))
    written = {new + m[len(old):] if m.startswith(old) else m
               for m in quantized_modules(dst) if ".experts." not in m}
    assert quantized == written and quantized
    ref_params = dict(ref.named_parameters())
    for n, p in got.named_parameters():
        module = n.rsplit(".", 1)[0]
        if module not in quantized and ".experts." not in n:
            assert torch.equal(p, ref_params[n]), n
    # What the defaults kept: the convolutions, routers and embeddings, by their names.
    ignore = json.loads((dst / "config.json").read_text())["quantization_config"]["ignore"]
    expected = {"qwen3-next": ["re:.*(conv1d|conv\\.conv)$", "re:.*mlp\\.gate$"],
                "nemotron-h": ["re:.*(conv1d|conv\\.conv)$", "re:(.*\\.)?embeddings$"],
                "opt": ["lm_head", "re:.*(embed_positions|position_embedding|token_embedding|"
                        "embed_tokens_per_layer)$"],
                "llama-tied": ["lm_head", "re:.*embed_tokens$"],
                "phimoe": ["re:.*(block_sparse_moe|mlp)\\.(gate|router)$"],
                "lfm2": ["re:.*(conv1d|conv\\.conv)$"]}[name]
    assert all(e in ignore for e in expected), ignore
    check_logits(name, ref, got, inputs)
