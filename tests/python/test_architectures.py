"""A sweep over the architectures people convert: a tiny model of each (transformers' own
configuration and model classes, random weights, seed 0, bf16; hidden 128, so that W4A16's
groups of 128 fit), converted by quench W4A16 with its defaults, read back by transformers
with compressed-tensors. Each must load with nothing missing and nothing unexpected and give
logits close to the unquantized model's (floors: MEASURED, as elsewhere in this suite). Which
modules each leaves unquantized and why is test_default_ignores.py's subject; this sweep is
there so that a new default, or a change to the planner, that breaks one family shows.
"""
import subprocess

import pytest
import torch
import transformers as T

import consumers as C

TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, max_position_embeddings=256)
IDS = torch.tensor([[1, 17, 301, 99, 7, 42, 3, 128]])
MOE = dict(num_experts_per_tok=2)


def siglip():
    return T.SiglipVisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                num_attention_heads=4, image_size=32, patch_size=8)


def clip():
    return T.CLIPVisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                              num_attention_heads=4, image_size=32, patch_size=8)


def mrope(**kw):
    return dict(**{k: v for k, v in TEXT.items()}, **kw)


# name: (model class, configuration). Causal models and image-text models (read with text
# only: the language model is what is quantized).
MODELS = {
    "gemma2": ("Gemma2ForCausalLM", lambda: T.Gemma2Config(**TEXT, head_dim=32)),
    "gemma3_text": ("Gemma3ForCausalLM", lambda: T.Gemma3TextConfig(**TEXT, head_dim=32)),
    "phi3": ("Phi3ForCausalLM", lambda: T.Phi3Config(**TEXT, pad_token_id=0)),
    "qwen3": ("Qwen3ForCausalLM", lambda: T.Qwen3Config(**TEXT, head_dim=32)),
    "glm4": ("Glm4ForCausalLM", lambda: T.Glm4Config(**TEXT, head_dim=32, pad_token_id=0)),
    "granite": ("GraniteForCausalLM", lambda: T.GraniteConfig(**TEXT)),
    "olmo2": ("Olmo2ForCausalLM", lambda: T.Olmo2Config(**TEXT)),
    "cohere": ("CohereForCausalLM", lambda: T.CohereConfig(**TEXT)),
    "smollm3": ("SmolLM3ForCausalLM", lambda: T.SmolLM3Config(**TEXT, pad_token_id=0)),
    "exaone4": ("Exaone4ForCausalLM", lambda: T.Exaone4Config(**TEXT, head_dim=32)),
    "seed_oss": ("SeedOssForCausalLM", lambda: T.SeedOssConfig(**TEXT, head_dim=32)),
    "apertus": ("ApertusForCausalLM", lambda: T.ApertusConfig(**TEXT)),
    "falcon_h1": ("FalconH1ForCausalLM", lambda: T.FalconH1Config(
        **TEXT, mamba_d_ssm=128, mamba_n_heads=4, mamba_d_head=32, mamba_d_state=16,
        mamba_n_groups=1, head_dim=32)),
    "jamba": ("JambaForCausalLM", lambda: T.JambaConfig(
        **TEXT, num_experts=4, **MOE, attn_layer_period=2, attn_layer_offset=1,
        expert_layer_period=2, expert_layer_offset=1, mamba_d_state=16, mamba_expand=2,
        mamba_dt_rank=128)),
    "qwen3_next": ("Qwen3NextForCausalLM", lambda: T.Qwen3NextConfig(
        **dict(TEXT, num_hidden_layers=4), full_attention_interval=2, num_experts=4, **MOE,
        moe_intermediate_size=128, shared_expert_intermediate_size=128, head_dim=32,
        linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=32,
        linear_value_head_dim=32)),
    "ernie4_5_moe": ("Ernie4_5_MoeForCausalLM", lambda: T.Ernie4_5_MoeConfig(
        **TEXT, moe_num_experts=4, moe_k=2, moe_intermediate_size=128,
        moe_layer_start_index=0, head_dim=32)),
    "glm4_moe": ("Glm4MoeForCausalLM", lambda: T.Glm4MoeConfig(
        **TEXT, n_routed_experts=4, **MOE, moe_intermediate_size=128, first_k_dense_replace=1,
        head_dim=32)),
    "deepseek_v3": ("DeepseekV3ForCausalLM", lambda: T.DeepseekV3Config(
        **dict(TEXT, num_key_value_heads=4), n_routed_experts=4, **MOE,
        moe_intermediate_size=128, first_k_dense_replace=1, q_lora_rank=128, kv_lora_rank=128,
        qk_rope_head_dim=32, qk_nope_head_dim=32, v_head_dim=32, n_group=1, topk_group=1)),
    "dots1": ("Dots1ForCausalLM", lambda: T.Dots1Config(
        **TEXT, n_routed_experts=4, **MOE, moe_intermediate_size=128, first_k_dense_replace=1,
        n_shared_experts=1)),
    "gpt_oss": ("GptOssForCausalLM", lambda: T.GptOssConfig(
        **dict(TEXT, intermediate_size=128), num_local_experts=4, **MOE, head_dim=32)),
    "olmoe": ("OlmoeForCausalLM", lambda: T.OlmoeConfig(**TEXT, num_experts=4, **MOE)),
    "mixtral": ("MixtralForCausalLM", lambda: T.MixtralConfig(**TEXT, num_local_experts=4, **MOE)),
    "phimoe": ("PhimoeForCausalLM", lambda: T.PhimoeConfig(**TEXT, num_local_experts=4, **MOE)),
    "minimax": ("MiniMaxForCausalLM", lambda: T.MiniMaxConfig(
        **TEXT, num_local_experts=4, **MOE, head_dim=32)),
    "hunyuan_v1_moe": ("HunYuanMoEV1ForCausalLM", lambda: T.HunYuanMoEV1Config(
        **TEXT, num_experts=4, moe_topk=2, head_dim=32)),
    "qwen2_moe": ("Qwen2MoeForCausalLM", lambda: T.Qwen2MoeConfig(
        **TEXT, num_experts=4, **MOE, moe_intermediate_size=128,
        shared_expert_intermediate_size=128)),
    "qwen3_moe": ("Qwen3MoeForCausalLM", lambda: T.Qwen3MoeConfig(
        **TEXT, num_experts=4, **MOE, moe_intermediate_size=128, head_dim=32)),
    "gemma3": ("Gemma3ForConditionalGeneration", lambda: T.Gemma3Config(
        text_config=T.Gemma3TextConfig(**TEXT, head_dim=32), vision_config=siglip(),
        mm_tokens_per_image=4, image_token_index=500, boi_token_index=501,
        eoi_token_index=502)),
    "mistral3": ("Mistral3ForConditionalGeneration", lambda: T.Mistral3Config(
        text_config=T.MistralConfig(**TEXT, head_dim=32),
        vision_config=T.PixtralVisionConfig(hidden_size=128, intermediate_size=256,
                                            num_hidden_layers=2, num_attention_heads=4,
                                            image_size=32, patch_size=8, head_dim=32),
        image_token_index=500)),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", lambda: T.Qwen2_5_VLConfig(
        text_config=mrope(rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]}),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4,
                           out_hidden_size=128, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, fullatt_block_indexes=[1]),
        image_token_id=500, video_token_id=501)),
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", lambda: T.Qwen3VLConfig(
        text_config=mrope(head_dim=32, rope_scaling={
            "rope_type": "default", "mrope_section": [4, 6, 6], "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4,
                           out_hidden_size=128, patch_size=16, spatial_merge_size=2,
                           temporal_patch_size=2, deepstack_visual_indexes=[1]),
        image_token_id=500, video_token_id=501)),
    "idefics3": ("Idefics3ForConditionalGeneration", lambda: T.Idefics3Config(
        text_config=T.LlamaConfig(**TEXT),
        vision_config=T.Idefics3VisionConfig(hidden_size=128, intermediate_size=256,
                                             num_hidden_layers=2, num_attention_heads=4,
                                             image_size=32, patch_size=8),
        image_token_id=500, scale_factor=2)),
    "llava_next": ("LlavaNextForConditionalGeneration", lambda: T.LlavaNextConfig(
        text_config=T.LlamaConfig(**TEXT), vision_config=clip(), image_token_index=500,
        image_grid_pinpoints=[[32, 32]])),
    "internvl": ("InternVLForConditionalGeneration", lambda: T.InternVLConfig(
        text_config=T.Qwen2Config(**TEXT),
        vision_config=T.InternVLVisionConfig(hidden_size=128, intermediate_size=256,
                                             num_hidden_layers=2, num_attention_heads=4,
                                             image_size=[32, 32], patch_size=[8, 8]),
        image_token_id=500)),
}

# Smallest cosine similarity of the logits (all positions of IDS) between the W4A16 model and
# the unquantized one, measured on 2026-12-07 (torch 2.13.0+cpu, compressed-tensors 0.19.0,
# transformers 5.17.0); a test fails below 1 - 1.25 * (1 - measured).
MEASURED = {
    "gemma2": 0.962628, "gemma3_text": 0.964925, "phi3": 0.984139, "qwen3": 0.988713,
    "glm4": 0.943432, "granite": 0.990240, "olmo2": 0.952557, "cohere": 0.989664,
    "smollm3": 0.989668, "exaone4": 0.957040, "seed_oss": 0.973668, "apertus": 0.976117,
    "falcon_h1": 0.980106, "jamba": 0.988678, "qwen3_next": 0.981053, "ernie4_5_moe": 0.984766,
    "glm4_moe": 0.984945, "deepseek_v3": 0.981249, "dots1": 0.980173, "gpt_oss": 0.958881,
    "olmoe": 0.978244, "mixtral": 0.980222, "phimoe": 0.969255, "minimax": 0.999650,
    "hunyuan_v1_moe": 0.969911, "qwen2_moe": 0.981465, "qwen3_moe": 0.978967,
    "gemma3": 0.951605, "mistral3": 0.985489, "qwen2_5_vl": 0.977380, "qwen3_vl": 0.975871,
    "idefics3": 0.983919, "llava_next": 0.984384, "internvl": 0.982218,
}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("architectures")


@pytest.mark.parametrize("name", list(MODELS))
def test_converted_model_loads_whole(work, name):
    cls_name, config = MODELS[name]
    cls = getattr(T, cls_name)
    src, dst = work / name, work / f"{name}-W4A16"
    torch.manual_seed(0)
    cls(config()).to(torch.bfloat16).save_pretrained(src)
    subprocess.run([str(C.QUENCH), "convert", str(src), str(dst), "--scheme", "W4A16", "-q"],
                   check=True)
    got, info = cls.from_pretrained(dst, dtype=torch.bfloat16, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert any(getattr(m, "quantization_scheme", None) is not None for m in got.modules())
    ref = cls.from_pretrained(src, dtype=torch.bfloat16)
    with torch.no_grad():
        a = ref(input_ids=IDS).logits.float().flatten()
        b = got(input_ids=IDS).logits.float().flatten()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    print(f"{name} W4A16 logits cosine {cos:.6f}")
    assert cos >= 1 - 1.25 * (1 - MEASURED[name])
