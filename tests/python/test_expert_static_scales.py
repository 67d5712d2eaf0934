"""Per-expert static activation scales (`--scheme FP8 --stats`) on a real tiny Qwen3-MoE
(data/golden/xprune-2d/src, 8 experts, 2 per token), with and without expert pruning.

Statistics are real: the collector (collector/collect_stats.py, in-process) over fixed token ids
with `--moe routed`, so each expert has its own input ranges. Expected values:
  - each expert's `input_scale` is compressed-tensors' calculate_qparams (static min-max FP8 args)
    of its own source expert's range (the kept source expert under pruning, from the reference's
    kept lists, data/golden/expert_prune_manifest.json);
  - transformers 5.17.0 (compressed-tensors 0.19.0) loads the model and runs it, every
    non-expert input scale as written, but its fused experts (`mlp.experts.gate_up_proj`,
    `down_proj`, 3-D) have no per-expert input scale: it reports exactly the experts'
    `input_scale` tensors UNEXPECTED and drops them (asserted as that exact set), while the
    experts' weights load decompressed, each closest to its own (kept) source expert.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
from compressed_tensors.quantization import QuantizationArgs
from compressed_tensors.quantization.utils import calculate_qparams
from safetensors import safe_open
from transformers import AutoModelForCausalLM

import consumers as C

sys.path.insert(0, str(C.ROOT / "collector"))
import collect_stats as CS  # noqa: E402

GOLDEN = C.ROOT / "data" / "golden"
SRC = GOLDEN / "xprune-2d" / "src"
RETAINED = next(c for c in json.loads((GOLDEN / "expert_prune_manifest.json").read_text())["cases"]
                if c["name"] == "xprune-2d/E0.5")["retained"]
FP8_STATIC = QuantizationArgs(num_bits=8, type="float", strategy="tensor", symmetric=True,
                              dynamic=False, observer="static_minmax")


@pytest.fixture(scope="module")
def stats(tmp_path_factory):
    out = tmp_path_factory.mktemp("stats") / "routed"
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 64, (8, 16), generator=g)
    ids[:, 0] = 1
    model, config = CS.load_model(str(SRC), "cpu", "auto")
    inv = CS.checkpoint_inventory(str(SRC), config.hidden_size)
    col, tokens, seqs = CS.collect(model, [(ids, torch.ones_like(ids))], "cpu", moe="routed")
    info = {"collector": CS.COLLECTOR, "dataset": "fixed token ids", "samples": seqs,
            "seq_len": 16, "tokens": tokens, "sequences": seqs, "dtype": "float32",
            "device": "cpu", "bos_counted": True, "padding_excluded": True, "moe": "routed",
            "hessian": "none", "torch": torch.__version__, "transformers": "", "kv_cache": False}
    manifest = CS.build_manifest(model, os.path.join(SRC, "config.json"), inv, col, info)
    CS.write_stats(str(out), manifest, col)
    return out


def convert(stats, dst, prune):
    subprocess.run([str(C.QUENCH), "convert", str(SRC), str(dst), "--scheme", "FP8", "--stats",
                    str(stats), "-q"] + (["--prune-experts", "0.5"] if prune else []), check=True)
    return dst


def source_expert(name, prune):
    """The source tensor name of an output tensor: under pruning, expert i is kept[i]."""
    if not prune or ".mlp.experts." not in name:
        return name
    head, rest = name.split(".mlp.experts.")
    i, tail = rest.split(".", 1)
    kept = RETAINED[f"{head}.mlp.gate.weight"]
    return f"{head}.mlp.experts.{kept[int(i)]}.{tail}"


def expected_input_scale(stats, weight, dtype):
    """calculate_qparams of the weight's input range: its site's (and expert's) min and max over
    channels, in the activation dtype, as the static min-max observer sees them."""
    manifest = json.loads((stats / "manifest.json").read_text())
    consumer = manifest["consumers"][weight]
    site = consumer["site"]
    with safe_open(str(stats / manifest["sites"][site]["file"]), framework="pt") as f:
        mn, mx = f.get_tensor(site + ".min"), f.get_tensor(site + ".max")
    if consumer.get("expert") is not None:
        mn, mx = mn[consumer["expert"]], mx[consumer["expert"]]
    lo = mn.min().reshape(1).to(dtype)
    hi = mx.max().reshape(1).to(dtype)
    scale, _ = calculate_qparams(lo, hi, FP8_STATIC)
    return scale.to(dtype)


@pytest.mark.parametrize("prune", [False, True], ids=["all-experts", "pruned"])
def test_each_expert_input_scale_is_its_source_experts(stats, tmp_path, prune):
    out = C.load_tensors(convert(stats, tmp_path / "out", prune))
    scales = [k for k in out if k.endswith(".input_scale")]
    experts = [k for k in scales if ".mlp.experts." in k]
    assert len(experts) == 2 * (4 if prune else 8) * 3
    distinct = set()
    for k in scales:
        weight = source_expert(k.removesuffix(".input_scale") + ".weight", prune)
        want = expected_input_scale(stats, weight, out[k].dtype)
        assert torch.equal(out[k].reshape(1), want), k
        if k in experts:
            distinct.add(out[k].item())
    assert len(distinct) > 8  # the experts' ranges differ: a per-expert scale is not shared


@pytest.mark.parametrize("prune", [False, True], ids=["all-experts", "pruned"])
def test_transformers_drops_the_experts_input_scales_and_runs(stats, tmp_path, prune):
    dst = convert(stats, tmp_path / "out", prune)
    out = C.load_tensors(dst)
    model, info = AutoModelForCausalLM.from_pretrained(dst, output_loading_info=True,
                                                       dtype=torch.float32)
    expert_scales = {k for k in out if ".mlp.experts." in k and k.endswith(".input_scale")}
    assert set(info["unexpected_keys"]) == expert_scales
    assert not info["missing_keys"] and not info["mismatched_keys"]
    assert model.config.num_experts == (4 if prune else 8)
    sd = model.state_dict()
    others = [k for k in out if k.endswith(".input_scale") and k not in expert_scales]
    assert others
    for k in others:
        assert torch.equal(sd[k].to(out[k].dtype).reshape(out[k].shape), out[k]), k
    src = C.load_tensors(SRC)
    kept_n = 4 if prune else 8
    for layer in range(2):
        experts = model.model.layers[layer].mlp.experts
        for new in range(kept_n):
            old = int(source_expert(f"model.layers.{layer}.mlp.experts.{new}.x", prune)
                      .split(".mlp.experts.")[1].split(".")[0])
            p = f"model.layers.{layer}.mlp.experts."
            errors = [(experts.down_proj[new].float() - src[f"{p}{e}.down_proj.weight"].float())
                      .norm().item() for e in range(8)]
            assert min(range(8), key=errors.__getitem__) == old
    logits = model(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])).logits
    assert logits.shape == (1, 8, 64) and torch.isfinite(logits).all()
