"""transformers loads quench's conversions of a gpt-oss MXFP4 checkpoint (quant_method "mxfp4").

The checkpoint is built here from transformers' GptOssConfig (random BF16 weights; the expert
stacks stored as OpenAI's release stores them, P_blocks U8 [E, out, in/32, 16] and P_scales U8
[E, out, in/32], exponents in 118..130 as the released checkpoints' are). What quench's outputs
are held to is transformers reading that checkpoint itself with Mxfp4Config(dequantize=True)
(its convert_moe_packed_tensors), not quench.
"""
import json
import subprocess

import numpy as np
import pytest
import torch
import transformers as T
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, Mxfp4Config
from transformers.utils.quantization_config import CompressedTensorsConfig

import consumers as C

IDS = torch.tensor([[1, 17, 31, 99, 52, 7, 88, 42, 3, 65, 12, 100]])


@pytest.fixture(scope="module")
def mxfp4_src(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpt-oss-mxfp4")
    torch.manual_seed(1)
    cfg = T.GptOssConfig(vocab_size=128, hidden_size=128, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=32, num_local_experts=4, num_experts_per_tok=2,
                         sliding_window=8, layer_types=["sliding_attention", "full_attention"],
                         max_position_embeddings=128, tie_word_embeddings=False)
    sd = {k: v.detach().contiguous()
          for k, v in T.GptOssForCausalLM(cfg).to(torch.bfloat16).state_dict().items()}
    rng = np.random.default_rng(1)
    for k in sorted(sd):
        if k.endswith("experts.gate_up_proj") or k.endswith("experts.down_proj"):
            e, i, o = sd.pop(k).shape
            sd[k + "_blocks"] = torch.from_numpy(
                rng.integers(0, 256, size=(e, o, i // 32, 16), dtype=np.uint8))
            sd[k + "_scales"] = torch.from_numpy(
                rng.integers(118, 131, size=(e, o, i // 32), dtype=np.uint8))
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    c = cfg.to_dict()
    c["architectures"] = ["GptOssForCausalLM"]
    c["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (out / "config.json").write_text(json.dumps(c))
    return out


@pytest.fixture(scope="module")
def reference(mxfp4_src):
    """transformers' own decode: its state dict and its logits on IDS."""
    model = AutoModelForCausalLM.from_pretrained(
        mxfp4_src, quantization_config=Mxfp4Config(dequantize=True), dtype=torch.bfloat16)
    with torch.no_grad():
        logits = model(IDS).logits
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, logits


def convert(src, dst, *args):
    subprocess.run([str(C.QUENCH), "convert", str(src), str(dst), "-q", *args], check=True)
    return dst


def load(folder, **kwargs):
    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True,
                                                       dtype=torch.bfloat16, **kwargs)
    assert {k: v for k, v in info.items() if v} == {}  # nothing missing, unexpected or mismatched
    return model


def test_bf16_decode_is_the_dequantizers_model(mxfp4_src, reference, tmp_path):
    dst = convert(mxfp4_src, tmp_path / "bf16", "--scheme", "BF16")
    assert "quantization_config" not in json.loads((dst / "config.json").read_text())
    model = load(dst)
    want, want_logits = reference
    got = model.state_dict()
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert torch.equal(got[k], v), k
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, want_logits)


def test_fp8_dynamic_quantizes_attention_and_keeps_the_decoded_experts(mxfp4_src, reference,
                                                                       tmp_path):
    dst = convert(mxfp4_src, tmp_path / "fp8", "--scheme", "FP8_DYNAMIC")
    model = load(dst, quantization_config=CompressedTensorsConfig(run_compressed=False))
    want, _ = reference
    out = C.load_tensors(dst)
    assert "model.layers.0.self_attn.q_proj.weight_scale" in out
    # Quantized weights within FP8's bound of the decoded model; every other tensor (the expert
    # stacks, decoded to BF16 [E, in, out], among them) equal to it.
    C.check_weights(want, model.state_dict(), out, C.weights_args(dst))
    assert torch.equal(model.model.layers[1].mlp.experts.down_proj,
                       want["model.layers.1.mlp.experts.down_proj"])


def test_pruned_decode_holds_the_kept_experts(mxfp4_src, reference, tmp_path):
    dst = convert(mxfp4_src, tmp_path / "pruned", "--scheme", "BF16", "--prune-experts", "0.5")
    model = load(dst)
    assert model.config.num_local_experts == 2
    want, _ = reference
    for layer in range(2):
        p = f"model.layers.{layer}.mlp."
        router = model.model.layers[layer].mlp.router.weight
        rows = want[p + "router.weight"]
        # The kept experts, told by their router rows (chosen by router L1 norm).
        kept = [next(e for e in range(4) if torch.equal(rows[e], router[j])) for j in range(2)]
        assert kept == sorted(kept)
        experts = model.model.layers[layer].mlp.experts
        for name in ("gate_up_proj", "down_proj", "gate_up_proj_bias", "down_proj_bias"):
            assert torch.equal(getattr(experts, name), want[p + "experts." + name][kept]), name
    with torch.no_grad():
        assert torch.isfinite(model(IDS).logits).all()
