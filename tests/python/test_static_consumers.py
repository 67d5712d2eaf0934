"""quench's outputs with static activation scales (FP8; W8A8 with --static-activations, symmetric
and asymmetric) and FP8 KV-cache scales as compressed-tensors and transformers read them, on
data/tiny-llama (BF16) and all-MiniLM-L6-v2 (F32). The statistics are real: the collector
(collector/collect_stats.py, run in-process) over the tiny Llama's fixed token ids, and over
MiniLM's calibration half of scripts/calib-text's text (disjoint from the sentences embedded).

transformers (CompressedTensorsConfig(dequantize=True)) must give back every weight within the
format's bound; its default load must hold the input scales, zero points and k/v scales as
written and run the model (activations quantized with them) with embeddings close to the
unquantized model's (floors from measurement). compressed-tensors' model-free dequantizer
rejects every activation parameter as residual (it dequantizes weights only), asserted by its
message."""
import os
import re
import subprocess
import sys

import pytest
import torch
from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import (
    CompressedTensorsDequantizer,
)
from transformers import AutoModel
from transformers.utils.quantization_config import CompressedTensorsConfig

import consumers as C

sys.path.insert(0, str(C.ROOT / "collector"))
import collect_stats as CS  # noqa: E402

CASES = {
    "FP8": ["--scheme", "FP8"],
    "W8A8-static": ["--scheme", "W8A8", "--static-activations"],
    "W8A8-static-asym": ["--scheme", "W8A8", "--asymmetric-activations"],
    "FP8_DYNAMIC-kv": ["--scheme", "FP8_DYNAMIC", "--kv-cache", "fp8"],
}
# Smallest cosine similarity to the unquantized model's embeddings over the fixed inputs,
# transformers' default load (activations quantized), measured 2026-12-04 (torch 2.13.0+cpu,
# compressed-tensors 0.19.0, transformers 5.17.0); a test fails below 1 - 1.25 * (1 - measured).
FLOORS = {
    "tiny-llama": {"FP8": .997475, "W8A8-static": .999415, "W8A8-static-asym": .999511,
                   "FP8_DYNAMIC-kv": .997493},
    "minilm": {"FP8": .997283, "W8A8-static": .967280, "W8A8-static-asym": .991843},
}
RESIDUAL = "residual quantization param(s) after dequantization"


def collect(model_dir, out, batches=None, text=None, kv=False):
    """Statistics of `model_dir` in `out`: over token-id batches, or over a text file."""
    if text is not None:
        assert CS.main([str(model_dir), "--text", str(text), "--samples", "32", "--seq-len", "64",
                        "-o", str(out), "--device", "cpu"] + (["--kv-cache"] if kv else [])) == 0
        return out
    model, config = CS.load_model(str(model_dir), "cpu", "auto")
    inv = CS.checkpoint_inventory(str(model_dir), config.hidden_size)
    col, tokens, seqs = CS.collect(model, batches, "cpu", kv=kv)
    info = {"collector": CS.COLLECTOR, "dataset": "consumers.LLAMA_IDS", "samples": seqs,
            "seq_len": 12, "tokens": tokens, "sequences": seqs, "dtype": "float32",
            "device": "cpu", "bos_counted": True, "padding_excluded": True, "moe": "all",
            "hessian": "none", "torch": torch.__version__, "transformers": "", "kv_cache": kv}
    manifest = CS.build_manifest(model, os.path.join(model_dir, "config.json"), inv, col, info)
    CS.write_stats(str(out), manifest, col)
    return out


@pytest.fixture(scope="module")
def stats(tmp_path_factory):
    base = tmp_path_factory.mktemp("stats")
    ids = torch.tensor(C.LLAMA_IDS)
    llama = collect(C.TINY_LLAMA, base / "llama", batches=[(ids, torch.ones_like(ids))], kv=True)
    subprocess.run([sys.executable, str(C.ROOT / "collector" / "calib_text.py"), str(base / "text")],
                   check=True, capture_output=True)
    minilm = collect(C.minilm_dir(), base / "minilm", text=base / "text" / "calib.txt")
    return {"tiny-llama": llama, "minilm": minilm}


@pytest.fixture(scope="module")
def converted(stats, tmp_path_factory):
    base = tmp_path_factory.mktemp("out")
    done = {}

    def get(model_name, case):
        if (model_name, case) not in done:
            src = C.TINY_LLAMA if model_name == "tiny-llama" else C.minilm_dir()
            dst = base / f"{model_name}-{case}"
            subprocess.run([str(C.QUENCH), "convert", str(src), str(dst), "--stats",
                            str(stats[model_name]), "-q", *CASES[case]], check=True)
            done[(model_name, case)] = (src, dst)
        return done[(model_name, case)]
    return get


def embed(model_name, model, folder):
    if model_name == "minilm":
        return C.minilm_embeddings(model, folder)
    return C.llama_embeddings(model)


def per_tensor_as_2d(out):
    """consumers.error_bound reads scales as [rows, groups]: a per-tensor [1] becomes [1, 1]."""
    return {k: v.reshape(1, 1) if k.endswith(".weight_scale") and v.dim() == 1 else v
            for k, v in out.items()}


ALL = [(m, c) for m in FLOORS for c in FLOORS[m]]


@pytest.mark.parametrize("model_name,case", ALL)
def test_transformers_loads_static_scales(converted, model_name, case):
    src, dst = converted(model_name, case)
    out = C.load_tensors(dst)
    srcw = C.load_tensors(src)
    # Weights: every one within the format's bound of the source.
    model = AutoModel.from_pretrained(str(dst), dtype=torch.float32,
                                      quantization_config=CompressedTensorsConfig(dequantize=True))
    C.check_weights(srcw, model.state_dict(), per_tensor_as_2d(out), C.weights_args(dst))
    # The default load keeps every static parameter as written and runs with them.
    model = AutoModel.from_pretrained(str(dst), dtype=torch.float32)
    sd = {k.removeprefix("model."): v for k, v in model.state_dict().items()}
    static = [k for k in out if re.search(r"\.(input_scale|input_zero_point|k_scale|v_scale)$", k)]
    assert static
    for k in static:
        assert torch.equal(sd[k.removeprefix("model.")].to(out[k].dtype).reshape(out[k].shape), out[k]), k
    ref = embed(model_name, AutoModel.from_pretrained(str(src), dtype=torch.float32), src)
    cos = C.min_cosine(embed(model_name, model, dst), ref)
    measured = FLOORS[model_name][case]
    assert cos >= 1 - 1.25 * (1 - measured), f"cosine {cos:.6f}, measured {measured}"


@pytest.mark.parametrize("model_name,case", [x for x in ALL if x[1] != "FP8_DYNAMIC-kv"])
def test_model_free_dequantizer_rejects_activation_params(converted, model_name, case):
    src, dst = converted(model_name, case)
    out = C.load_tensors(dst)
    d = CompressedTensorsDequantizer(str(dst), dtype=torch.float32)
    n = sum(1 for k in out if re.search(r"\.(input_scale|input_zero_point)$", k))
    with pytest.raises(ValueError, match=re.escape(f"Found {n} {RESIDUAL}")):
        d.validate(dict(out))


def test_model_free_dequantizer_reads_kv_cache_output(converted):
    """k_scale / v_scale are not weight parameters: the dequantizer leaves them and gives back
    every weight within the bound."""
    src, dst = converted("tiny-llama", "FP8_DYNAMIC-kv")
    out = C.load_tensors(dst)
    deq = CompressedTensorsDequantizer(str(dst), dtype=torch.float32).validate(dict(out))
    C.check_weights(C.load_tensors(src), deq, out, C.weights_args(dst))
