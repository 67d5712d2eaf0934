"""transformers loads quench's expert-pruned tiny Qwen3-MoE (data/golden/xprune-2d/src) and runs it.

The kept experts come from the reference (data/golden/expert_prune_manifest.json, written by
compressed-tensors' MagnitudeExpertPruner), not from quench: unquantized, every expert and router
row transformers loads must be the source's kept one, renumbered in order; quantized (and
decompressed by transformers), each loaded expert must be closer to its kept source expert than to
any other source expert.
"""
import json
import subprocess

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM
from transformers.utils.quantization_config import CompressedTensorsConfig

import consumers as C

GOLDEN = C.ROOT / "data" / "golden"
SRC = GOLDEN / "xprune-2d" / "src"
RETAINED = next(c for c in json.loads((GOLDEN / "expert_prune_manifest.json").read_text())["cases"]
                if c["name"] == "xprune-2d/E0.5")["retained"]


def source_tensors():
    out = {}
    for f in sorted(SRC.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as sf:
            out.update({k: sf.get_tensor(k) for k in sf.keys()})
    return out


def convert_and_load(tmp_path, scheme):
    dst = tmp_path / "out"
    subprocess.run([str(C.QUENCH), "convert", str(SRC), str(dst), "--scheme", scheme,
                    "--prune-experts", "0.5", "-q"], check=True)
    kwargs = {} if scheme == "none" else {
        "quantization_config": CompressedTensorsConfig(run_compressed=False)}
    model, info = AutoModelForCausalLM.from_pretrained(dst, output_loading_info=True,
                                                       dtype=torch.bfloat16, **kwargs)
    assert {k: v for k, v in info.items() if v} == {}  # nothing missing, unexpected or mismatched
    assert model.config.num_experts == 4
    return model


def expert(src, layer, e):
    p = f"model.layers.{layer}.mlp.experts.{e}."
    gate_up = torch.cat([src[p + "gate_proj.weight"], src[p + "up_proj.weight"]])
    return gate_up.float(), src[p + "down_proj.weight"].float()


def test_unquantized_pruned_model_holds_the_kept_experts_and_runs(tmp_path):
    model = convert_and_load(tmp_path, "none")
    src = source_tensors()
    for layer in range(2):
        kept = RETAINED[f"model.layers.{layer}.mlp.gate.weight"]
        mlp = model.model.layers[layer].mlp
        assert torch.equal(mlp.gate.weight, src[f"model.layers.{layer}.mlp.gate.weight"][kept])
        for new, old in enumerate(kept):
            gate_up, down = expert(src, layer, old)
            assert torch.equal(mlp.experts.gate_up_proj[new].float(), gate_up)
            assert torch.equal(mlp.experts.down_proj[new].float(), down)
    logits = model(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])).logits
    assert logits.shape == (1, 8, 64) and torch.isfinite(logits).all()


@pytest.mark.parametrize("scheme", ["FP8_DYNAMIC", "W4A16"])
def test_quantized_pruned_model_loads_and_runs(tmp_path, scheme):
    model = convert_and_load(tmp_path, scheme)
    src = source_tensors()
    for layer in range(2):
        kept = RETAINED[f"model.layers.{layer}.mlp.gate.weight"]
        experts = model.model.layers[layer].mlp.experts
        for new, old in enumerate(kept):
            loaded = experts.gate_up_proj[new].float()
            errors = [(loaded - expert(src, layer, e)[0]).norm().item() for e in range(8)]
            assert min(range(8), key=errors.__getitem__) == old
    logits = model(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])).logits
    assert logits.shape == (1, 8, 64) and torch.isfinite(logits).all()
