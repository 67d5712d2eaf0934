"""Multimodal checkpoints as transformers reads them after quench: a tiny Llava (CLIP vision
tower, projector, Llama; the Hub's `language_model.*` layout) and a tiny Qwen2-VL (`visual.*`
beside `model.*`), random weights from transformers' own configuration classes (fixed seed,
bf16), converted by quench W4A16 with its default ignores. transformers (with
compressed-tensors) must quantize exactly the language model's projections, as it finds them
in its own module tree, keep every encoder, projector and head weight bit for bit, and run
images and text through the model with logits close to the unquantized model's. vLLM's CPU
build cannot run these (README, "Consumers in detail"): the check is transformers'.
"""
import json

import pytest
import torch
from transformers import (AutoModelForImageTextToText, CLIPVisionConfig, LlamaConfig,
                          LlavaConfig, LlavaForConditionalGeneration, Qwen2VLConfig,
                          Qwen2VLForConditionalGeneration)

import consumers as C

# Smallest cosine similarity of the logits (all positions) between the W4A16 model and the
# unquantized one, measured on 2026-12-07 (torch 2.13.0+cpu, compressed-tensors 0.19.0,
# transformers 5.17.0); a test fails below 1 - 1.25 * (1 - measured).
MEASURED = {"llava": 0.982534, "qwen2-vl": 0.983906}


def make_llava(folder):
    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                              num_attention_heads=4, image_size=32, patch_size=8,
                              projection_dim=128)
    text = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                       max_position_embeddings=256, bos_token_id=1, eos_token_id=2)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=500,
                      projector_hidden_act="gelu", vision_feature_layer=-1,
                      vision_feature_select_strategy="default")
    LlavaForConditionalGeneration(cfg).to(torch.bfloat16).save_pretrained(folder)
    # 32x32 pixels in 8x8 patches: 16 image tokens (the class token dropped).
    ids = torch.tensor([[1, 17, *([500] * 16), 301, 99, 7, 42, 3, 128]])
    return {"input_ids": ids, "pixel_values": torch.randn(1, 3, 32, 32, dtype=torch.bfloat16)}


def make_qwen2_vl(folder):
    torch.manual_seed(0)
    cfg = Qwen2VLConfig(
        text_config=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                         max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
                         rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]}),
        vision_config=dict(depth=2, embed_dim=64, hidden_size=128, num_heads=4, mlp_ratio=2,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           in_channels=3),
        image_token_id=500, video_token_id=501, vision_start_token_id=502,
        vision_end_token_id=503)
    Qwen2VLForConditionalGeneration(cfg).to(torch.bfloat16).save_pretrained(folder)
    # One image of 4x4 patches of 14 pixels (2 frames deep), merged 2x2: 4 image tokens.
    ids = torch.tensor([[1, 17, 502, *([500] * 4), 503, 301, 99, 7, 42, 3, 128]])
    pixels = torch.randn(16, 3 * 2 * 14 * 14, dtype=torch.bfloat16)
    # mm_token_type_ids: 1 at image tokens, as Qwen2-VL's processor returns it (M-RoPE).
    return {"input_ids": ids, "pixel_values": pixels, "mm_token_type_ids": (ids == 500).int(),
            "image_grid_thw": torch.tensor([[1, 4, 4]])}


MODELS = {"llava": make_llava, "qwen2-vl": make_qwen2_vl}


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


def linears(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


@pytest.mark.parametrize("name", list(MODELS))
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
    with torch.no_grad():
        a = ref(**inputs).logits.float().flatten()
        b = got(**inputs).logits.float().flatten()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    print(f"{name} W4A16 logits cosine {cos:.6f}")
    assert cos >= 1 - 1.25 * (1 - MEASURED[name])
