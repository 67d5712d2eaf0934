"""quench's GPTQ outputs as compressed-tensors reads them: data/tiny-llama with a statistics
folder written here (numpy: Hessians of correlated activations with outlier channels, in the
format of docs/statistics-format.md), converted with --algorithm gptq (W4A16 and W4A16_ASYM with
groups of 64; FP8_DYNAMIC, FP8_BLOCK, NVFP4A16, MXFP4A16) and with RTN. compressed-tensors' model-free dequantizer must accept the output
and give back every weight, and on every weight with statistics the proxy loss tr(dW H dW^T)
of its dequantized GPTQ weights must be below that of its dequantized RTN weights; weights
without statistics (layer 1's down_proj) must dequantize exactly as RTN's."""
import json
import re
import subprocess

import numpy as np
import pytest
import torch
from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import (
    CompressedTensorsDequantizer,
)
from safetensors.numpy import save_file

import consumers as C


def hessian(n, seed):
    rng = np.random.default_rng(seed)
    k = n // 2
    x = rng.standard_normal((512, k)) @ (rng.standard_normal((k, n)) / np.sqrt(k))
    scale = rng.uniform(0.1, 1.0, n)
    scale[5::37] *= 20
    x *= scale
    return x.T @ x


def write_stats(folder, weights):
    sites, arrays, consumers, shapes = {}, {}, {}, {}
    for layer in range(2):
        p = f"model.layers.{layer}."
        groups = [("self_attn.q_proj", ["q_proj", "k_proj", "v_proj"], "self_attn."),
                  ("self_attn.o_proj", ["o_proj"], "self_attn."),
                  ("mlp.gate_proj", ["gate_proj", "up_proj"], "mlp.")]
        if layer == 0:
            groups.append(("mlp.down_proj", ["down_proj"], "mlp."))
        for site, members, prefix in groups:
            name = p + site
            n = weights[p + prefix + members[0] + ".weight"].shape[1]
            h = hessian(n, len(sites) + 19)
            iu = np.triu_indices(n)
            sites[name] = {"file": "stats-00001.safetensors", "in_features": n, "experts": None,
                           "fields": ["count", "sum_x2", "sum_abs", "min", "max", "hessian"]}
            arrays.update({name + ".count": np.array(512, dtype=np.int64),
                           name + ".sum_x2": np.diag(h).copy(),
                           name + ".sum_abs": np.sqrt(np.diag(h)),
                           name + ".min": -np.ones(n, np.float32),
                           name + ".max": np.ones(n, np.float32),
                           name + ".hessian": h[iu].astype(np.float64)})
            for m in members:
                w = p + prefix + m + ".weight"
                consumers[w] = {"site": name}
                shapes[w] = list(weights[w].shape)
            sites[name]["h"] = h
    folder.mkdir()
    hs = {k: v.pop("h") for k, v in sites.items()}
    manifest = {"format": "quench-stats", "version": 1,
                "model": {"model_type": "llama", "weights": shapes},
                "collection": {"dataset": "synthetic", "samples": 4, "seq_len": 128,
                               "tokens": 512, "sequences": 4, "moe": "all", "hessian": "full"},
                "files": ["stats-00001.safetensors"], "sites": sites, "consumers": consumers}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    save_file(arrays, str(folder / "stats-00001.safetensors"))
    return {w: hs[c["site"]] for w, c in consumers.items()}


@pytest.mark.parametrize("scheme", ["W4A16", "W4A16_ASYM", "FP8_DYNAMIC", "FP8_BLOCK", "NVFP4A16",
                                    "MXFP4A16"])
def test_gptq_output_dequantizes_and_beats_rtn(tmp_path, scheme):
    src = C.load_tensors(C.TINY_LLAMA)
    hs = write_stats(tmp_path / "stats", {k: v.float().numpy() for k, v in src.items()})
    outs = {}
    for algo in ("gptq", "rtn"):
        dst = tmp_path / algo
        extra = ["--stats", str(tmp_path / "stats"), "--algorithm", "gptq"] if algo == "gptq" else []
        # Integer groups of 64 (128 does not divide down_proj's 704 inputs).
        group = ["--group-size", "64"] if scheme.startswith("W4") else []
        subprocess.run([str(C.QUENCH), "convert", str(C.TINY_LLAMA), str(dst), "--scheme", scheme,
                        *group, "-q", *extra], check=True)
        out = C.load_tensors(dst)
        outs[algo] = CompressedTensorsDequantizer(str(dst), dtype=torch.float32).validate(dict(out))
        assert set(outs[algo]) == set(src)
    for name, h in hs.items():
        w = src[name].double().numpy()
        loss = {a: float(np.einsum("ij,jk,ik->", w - outs[a][name].double().numpy(), h,
                                   w - outs[a][name].double().numpy())) for a in outs}
        assert loss["gptq"] < loss["rtn"], (name, loss)
    d1 = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(outs["gptq"][d1], outs["rtn"][d1])


def test_actorder_group_is_refused_by_the_loaders(tmp_path):
    """`--actorder group` (weight_g_idx) cannot make a loadable checkpoint: compressed-tensors
    0.19.0's QuantizationArgs refuses actorder 'group' in its field validator, so parsing the
    config (what transformers' loader and every compressed-tensors entry point do) fails with
    this message; quench refuses the option with the same words."""
    from compressed_tensors.quantization import QuantizationConfig
    from transformers import AutoModelForCausalLM

    src = C.load_tensors(C.TINY_LLAMA)
    write_stats(tmp_path / "stats", {k: v.float().numpy() for k, v in src.items()})
    dst = tmp_path / "out"
    subprocess.run([str(C.QUENCH), "convert", str(C.TINY_LLAMA), str(dst), "--scheme", "W4A16",
                    "--group-size", "64", "-q", "--stats", str(tmp_path / "stats"),
                    "--algorithm", "gptq"], check=True)
    cfg = json.loads((dst / "config.json").read_text())
    for group in cfg["quantization_config"]["config_groups"].values():
        group["weights"]["actorder"] = "group"
    (dst / "config.json").write_text(json.dumps(cfg))
    message = "actorder='group' has been removed. Consider using actorder='weight' or actorder=None instead."
    with pytest.raises(ValueError, match=re.escape(message)):
        QuantizationConfig.model_validate(cfg["quantization_config"])
    with pytest.raises(ValueError, match="actorder='group' has been removed"):
        AutoModelForCausalLM.from_pretrained(str(dst))
    r = subprocess.run([str(C.QUENCH), "convert", str(C.TINY_LLAMA), str(tmp_path / "g"),
                        "--scheme", "W4A16", "--group-size", "64", "--stats",
                        str(tmp_path / "stats"), "--algorithm", "gptq", "--actorder", "group"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "actorder 'group' has been removed" in r.stderr
