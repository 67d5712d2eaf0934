#!/usr/bin/env python3
"""Golden files for gpt-oss MXFP4 sources (quant_method "mxfp4"), made with the pinned reference.

Run with the reference venv's python (scripts/setup_reference.sh):

    .venv-ref/bin/python scripts/make_golden_mxfp4.py

Writes (relative to <repo>/data/golden):
  mxfp4src/src/    a tiny gpt-oss checkpoint built from transformers' GptOssConfig (2 layers,
                   hidden 64, intermediate 64, 4 experts; random BF16 weights, seed 0) whose
                   expert stacks are stored as OpenAI's release stores them:
                   P_blocks U8 [experts, out, in/32, 16] and P_scales U8 [experts, out, in/32]
                   for P = mlp.experts.gate_up_proj and mlp.experts.down_proj. Every code byte
                   occurs; layer 0's gate_up_proj scales run through every E8M0 exponent from
                   0 (2^-127, subnormal results) to 252 (the largest at which code 6 stays
                   finite in bf16), the others lie in 118..130 as released checkpoints' do.
                   Two shards: layer 1 and the head in the second, with layer 1's
                   gate_up_proj_scales in the first (a scale beside another shard's codes).
  mxfp4src/BF16/   the reference's decode: transformers' GptOssForCausalLM.from_pretrained(src,
                   quantization_config=Mxfp4Config(dequantize=True)) (convert_moe_packed_tensors:
                   each expert decoded, then transposed to [experts, in, out]), its state_dict
                   written with safetensors' save_file, and src's config.json without its
                   quantization_config. (transformers 5.17's own save_pretrained of that model
                   writes the stacks under the keys 'gate_up_proj$' and 'down_proj$', one
                   each, so the state_dict is what is compared.)
  mxfp4_manifest.json  the cases and the reference versions

The reference's decode runs in a fresh subprocess. Deterministic.
"""
import json
import os
import shutil
import subprocess
import sys


HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(os.path.dirname(HERE), "data", "golden")
OUT = os.path.join(GOLDEN, "mxfp4src")

def build(out):
    """The MXFP4 checkpoint above, written by make_golden_quant_sources.save (two shards, the
    index, config.json)."""
    import numpy as np
    import torch
    import transformers as T
    from make_golden_quant_sources import save

    torch.manual_seed(0)
    cfg = T.GptOssConfig(vocab_size=128, hidden_size=64, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, num_local_experts=4, num_experts_per_tok=2,
                         sliding_window=8, layer_types=["sliding_attention", "full_attention"],
                         max_position_embeddings=128, tie_word_embeddings=False)
    model = T.GptOssForCausalLM(cfg).to(torch.bfloat16)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    for k in sorted(sd):
        if not (k.endswith("experts.gate_up_proj") or k.endswith("experts.down_proj")):
            continue
        experts, inputs, outputs = sd.pop(k).shape
        blocks = rng.integers(0, 256, size=(experts, outputs, inputs // 32, 16), dtype=np.uint8)
        blocks.reshape(-1)[:256] = np.arange(256, dtype=np.uint8)  # every code pair
        if k == "model.layers.0.mlp.experts.gate_up_proj":
            n = experts * outputs * (inputs // 32)
            scales = (np.arange(n) % 253).astype(np.uint8).reshape(experts, outputs,
                                                                    inputs // 32)
        else:
            scales = rng.integers(118, 131, size=(experts, outputs, inputs // 32),
                                  dtype=np.uint8)
        sd[k + "_blocks"] = torch.from_numpy(blocks)
        sd[k + "_scales"] = torch.from_numpy(scales)
    # Layer 1 and the head in the second shard, layer 1's gate_up_proj scales in the first.
    moved = "model.layers.1.mlp.experts.gate_up_proj_scales"
    shard_of = {k: int(k != moved and (k.startswith("model.layers.1.") or
                                       k in ("lm_head.weight", "model.norm.weight")))
                for k in sd}
    c = cfg.to_dict()
    for key in ("transformers_version", "_name_or_path"):
        c.pop(key, None)
    c["architectures"] = ["GptOssForCausalLM"]
    c["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens",
        "lm_head"]}
    save(torch, out, sd, shard_of, c)


DECODE = r"""
import json, os, sys
import torch
import transformers as T
from transformers import Mxfp4Config
from safetensors.torch import save_file

src, dst = sys.argv[1], sys.argv[2]
model = T.GptOssForCausalLM.from_pretrained(
    src, quantization_config=Mxfp4Config(dequantize=True), dtype=torch.bfloat16)
os.makedirs(dst, exist_ok=True)
sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
save_file(sd, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
c = json.load(open(os.path.join(src, "config.json")))
c.pop("quantization_config")
with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(c, f, indent=2, sort_keys=True)
"""


def run(code, *args):
    subprocess.run([sys.executable, "-c", code, *args], check=True)


def versions():
    out = subprocess.run(
        [sys.executable, "-c",
         "import json, torch, transformers, safetensors; print(json.dumps({'torch': "
         "torch.__version__, 'transformers': transformers.__version__, 'safetensors': "
         "safetensors.__version__}))"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    src, bf16 = os.path.join(OUT, "src"), os.path.join(OUT, "BF16")
    build(src)
    run(DECODE, src, bf16)
    manifest = {"cases": [{
        "name": "mxfp4src/BF16", "scheme": "BF16", "source": "golden/mxfp4src/src",
        "expected": "golden/mxfp4src/BF16", "ignore": [],
        "via": "transformers GptOssForCausalLM.from_pretrained(src, quantization_config="
               "Mxfp4Config(dequantize=True)).state_dict()",
        "versions": versions()}]}
    with open(os.path.join(GOLDEN, "mxfp4_manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
