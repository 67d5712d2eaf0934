"""A sweep over the architectures people convert: a tiny model of each (transformers' own
configuration and model classes, random weights, seed 0, bf16; hidden 128, so that W4A16's
groups of 128 fit), converted by quench with its defaults (five schemes), read back by
transformers with compressed-tensors. Each must load with nothing missing and nothing
unexpected and give logits close to the unquantized model's (floors: MEASURED, as elsewhere in
this suite). Which modules each leaves unquantized and why is test_default_ignores.py's
subject; this sweep is there so that a new default, or a change to the planner, that breaks
one family shows. W8A8, W4A16_ASYM and NVFP4A16 too, except on MoE experts, which transformers
5.17 merges only from FP8 or symmetric packed int4 tensors: those cases assert its exact
failure (EXPERTS_MERGED below).
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

# Smallest cosine similarity of the logits (all positions of IDS) between the converted model
# and the unquantized one, per scheme, measured on 2026-12-07 (torch 2.13.0+cpu,
# compressed-tensors 0.19.0, transformers 5.17.0); a test fails below 1 - 1.25 * (1 - measured).
W4A16 = {
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
FP8_DYNAMIC = {
    "gemma2": 0.995146, "gemma3_text": 0.995676, "phi3": 0.998587, "qwen3": 0.997887,
    "glm4": 0.995507, "granite": 0.998079, "olmo2": 0.994752, "cohere": 0.998488,
    "smollm3": 0.998063, "exaone4": 0.995380, "seed_oss": 0.998251, "apertus": 0.997173,
    "falcon_h1": 0.998189, "jamba": 0.998961, "qwen3_next": 0.998149, "ernie4_5_moe": 0.997687,
    "glm4_moe": 0.998038, "deepseek_v3": 0.998440, "dots1": 0.997141, "gpt_oss": 0.993581,
    "olmoe": 0.996181, "mixtral": 0.996740, "phimoe": 0.997572, "minimax": 0.999961,
    "hunyuan_v1_moe": 0.997484, "qwen2_moe": 0.998207, "qwen3_moe": 0.997644,
    "gemma3": 0.995103, "mistral3": 0.998055, "qwen2_5_vl": 0.998442, "qwen3_vl": 0.997007,
    "idefics3": 0.998166, "llava_next": 0.998535, "internvl": 0.998198,
}
W8A8 = {
    "gemma2": 0.999649, "gemma3_text": 0.999617, "phi3": 0.999860, "qwen3": 0.999857,
    "glm4": 0.999440, "granite": 0.999871, "olmo2": 0.999476, "cohere": 0.999902,
    "smollm3": 0.999882, "exaone4": 0.999578, "seed_oss": 0.999815, "apertus": 0.999736,
    "falcon_h1": 0.999852, "gpt_oss": 0.999900, "gemma3": 0.999472, "mistral3": 0.999876,
    "qwen2_5_vl": 0.999842, "qwen3_vl": 0.999715, "idefics3": 0.999872, "llava_next": 0.999895,
    "internvl": 0.999815,
}
W4A16_ASYM = {
    "gemma2": 0.968871, "gemma3_text": 0.969182, "phi3": 0.984198, "qwen3": 0.986947,
    "glm4": 0.962255, "granite": 0.987812, "olmo2": 0.947000, "cohere": 0.988633,
    "smollm3": 0.987975, "exaone4": 0.945233, "seed_oss": 0.986612, "apertus": 0.978572,
    "falcon_h1": 0.979936, "gpt_oss": 0.983815, "gemma3": 0.957638, "mistral3": 0.987879,
    "qwen2_5_vl": 0.984319, "qwen3_vl": 0.974862, "idefics3": 0.987336, "llava_next": 0.987423,
    "internvl": 0.982601,
}
NVFP4A16 = {
    "gemma2": 0.973791, "gemma3_text": 0.973233, "phi3": 0.989888, "qwen3": 0.988158,
    "glm4": 0.955690, "granite": 0.988690, "olmo2": 0.966399, "cohere": 0.988980,
    "smollm3": 0.989207, "exaone4": 0.962637, "seed_oss": 0.985259, "apertus": 0.977747,
    "falcon_h1": 0.982655, "gpt_oss": 0.969096, "gemma3": 0.969362, "mistral3": 0.987026,
    "qwen2_5_vl": 0.985934, "qwen3_vl": 0.978365, "idefics3": 0.987697, "llava_next": 0.989836,
    "internvl": 0.988873,
}
MEASURED = {"W4A16": W4A16, "FP8_DYNAMIC": FP8_DYNAMIC, "W8A8": W8A8, "W4A16_ASYM": W4A16_ASYM,
            "NVFP4A16": NVFP4A16}

# Upstream (transformers 5.17.0 with compressed-tensors 0.19.0): it merges a MoE layer's
# per-expert weights into its fused experts from FP8 or symmetric packed int4 tensors only.
# Int8 experts (W8A8's int-quantized `weight`) and asymmetric ones (W4A16_ASYM's zero points)
# stop the load with CONVERSION_FAILED; NVFP4A16 experts load with their `weight_global_scale`
# reported UNEXPECTED and left out, so the experts decode wrong (logits at cosine ~0 to the
# unquantized model's). The same layers of the dense families load and are compared above;
# gpt-oss's experts are kept whole ([E, in, out]) and load. Asserted exactly, so that these
# cases turn red when transformers changes.
EXPERTS_MERGED = ["jamba", "qwen3_next", "ernie4_5_moe", "glm4_moe", "deepseek_v3", "dots1",
                  "olmoe", "mixtral", "phimoe", "minimax", "hunyuan_v1_moe", "qwen2_moe",
                  "qwen3_moe"]
CONVERSION_FAILED = ("We encountered some issues during automatic conversion of the weights. "
                     "For details look at the `CONVERSION` entries of the above report!")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("architectures")


def convert(work, name, scheme):
    """(model class, source folder, converted folder)."""
    cls_name, config = MODELS[name]
    cls = getattr(T, cls_name)
    src, dst = work / name, work / f"{name}-{scheme}"
    if not (src / "config.json").exists():
        torch.manual_seed(0)
        cls(config()).to(torch.bfloat16).save_pretrained(src)
    subprocess.run([str(C.QUENCH), "convert", str(src), str(dst), "--scheme", scheme, "-q"],
                   check=True)
    return cls, src, dst


def cases(upstream):
    return [(n, s) for s in MEASURED for n in MODELS
            if (n in EXPERTS_MERGED and s in ("W8A8", "W4A16_ASYM", "NVFP4A16")) == upstream]


@pytest.mark.parametrize("name,scheme", cases(False))
def test_converted_model_loads_whole(work, name, scheme):
    cls, src, dst = convert(work, name, scheme)
    got, info = cls.from_pretrained(dst, dtype=torch.bfloat16, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert any(getattr(m, "quantization_scheme", None) is not None for m in got.modules())
    ref = cls.from_pretrained(src, dtype=torch.bfloat16)
    with torch.no_grad():
        a = ref(input_ids=IDS).logits.float().flatten()
        b = got(input_ids=IDS).logits.float().flatten()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    print(f"{name} {scheme} logits cosine {cos:.6f}")
    assert cos >= 1 - 1.25 * (1 - MEASURED[scheme][name])


@pytest.mark.parametrize("name,scheme", cases(True))
def test_transformers_merges_only_fp8_and_symmetric_int4_experts(work, name, scheme):
    cls, _, dst = convert(work, name, scheme)
    if scheme == "NVFP4A16":
        _, info = cls.from_pretrained(dst, dtype=torch.bfloat16, output_loading_info=True)
        assert not info["missing_keys"]
        unexpected = info["unexpected_keys"]
        assert unexpected and all(".experts." in k and k.endswith(".weight_global_scale")
                                  for k in unexpected), unexpected
    else:
        with pytest.raises(RuntimeError) as e:
            cls.from_pretrained(dst, dtype=torch.bfloat16)
        assert str(e.value) == CONVERSION_FAILED
