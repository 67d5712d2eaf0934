"""transformers loads quench's quantized Llama 4 with its experts linearized.

The source is data/golden/llama4lin/src (scripts/make_golden_llama4_linear.py: a tiny
Llama4ForConditionalGeneration whose experts are stored as Llama 4's releases store them,
[E, in, out] stacks). quench writes each expert's gate_proj / up_proj / down_proj as its own
quantized Linear weight; transformers 5.17 reads a compressed-tensors Llama 4 with one Linear
module per expert (SequentialLlama4TextExperts). What the weights it dequantizes are held to
is the source's stacks cut by llm-compressor's rule, written out here (gate_up_proj[e][:, :I].T,
gate_up_proj[e][:, I:].T, down_proj[e].T), not quench.
"""
import json
import os
import subprocess

import pytest
import torch
import transformers as T
from transformers.utils.quantization_config import CompressedTensorsConfig

import consumers as C

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data", "golden",
                   "llama4lin", "src")
IDS = torch.tensor([[1, 17, 31, 99, 52, 7, 88, 42, 3, 65, 12, 100]])


def linearized_source():
    """The source's tensors with every expert stack replaced by its per-expert weights."""
    src = C.load_tensors(SRC)
    out = {}
    for k, v in src.items():
        if k.endswith("experts.gate_up_proj"):
            prefix, half = k[:-len("gate_up_proj")], v.shape[2] // 2
            for e in range(v.shape[0]):
                out[f"{prefix}{e}.gate_proj.weight"] = v[e][:, :half].t().contiguous()
                out[f"{prefix}{e}.up_proj.weight"] = v[e][:, half:].t().contiguous()
        elif k.endswith("experts.down_proj"):
            prefix = k[:-len("down_proj")]
            for e in range(v.shape[0]):
                out[f"{prefix}{e}.down_proj.weight"] = v[e].t().contiguous()
        else:
            out[k] = v
    return out


@pytest.mark.parametrize("scheme", ["W4A16", "FP8_DYNAMIC", "W8A8", "NVFP4A16"])
def test_quantized_experts_load_per_expert_within_the_bound(scheme, tmp_path):
    dst = tmp_path / scheme
    subprocess.run([str(C.QUENCH), "convert", SRC, str(dst), "-q", "--scheme", scheme],
                   check=True)
    model, info = T.Llama4ForConditionalGeneration.from_pretrained(
        dst, dtype=torch.bfloat16, output_loading_info=True,
        quantization_config=CompressedTensorsConfig(run_compressed=False))
    assert {k: v for k, v in info.items() if v} == {}  # nothing missing or unexpected
    experts = model.language_model.model.layers[1].feed_forward.experts
    assert len(experts) == 4 and isinstance(experts[3].down_proj, torch.nn.Linear)
    out = C.load_tensors(dst)
    assert "language_model.model.layers.1.feed_forward.experts.3.down_proj.weight_scale" in out
    want = linearized_source()
    got = model.state_dict()
    # Every expert weight (and every other quantized weight) within the scheme's bound of the
    # source's slice; everything else equal to the source.
    assert all(k in got for k in want if ".experts." in k)
    C.check_weights(want, got, out, C.weights_args(dst))
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=IDS).logits).all()
    ignore = json.loads((dst / "config.json").read_text())["quantization_config"]["ignore"]
    assert not any("experts" in i for i in ignore)
