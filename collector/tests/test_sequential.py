"""collect-stats --sequential (collector/sequential.py) on the real all-MiniLM-L6-v2: layer 0's
statistics equal a plain run's; layer 1's equal float64 numpy over activations captured (each
sample alone) from the model whose layer-0 weights are replaced by quench's GPTQ output for
them, decoded here from the pack-quantized format's definition (not by the code under test);
the manifest records the pipeline and quench's arguments, and quench warns when a conversion's
scheme or algorithm differ from them."""
from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import torch

import sequential
from conftest import numpy_stats, run_collector, unpack_upper
from test_collector import SAMPLES, SEQ, assert_site, check_contract, load, quench_binary

QARGS = ["--scheme", "W4A16", "--algorithm", "gptq"]
L0 = "encoder.layer.0."
L1 = "encoder.layer.1."
SITES1 = [L1 + s for s in ["attention.self.query", "attention.output.dense", "intermediate.dense",
                           "output.dense"]]

needs_quench = pytest.mark.skipif(quench_binary() is None, reason="no quench binary (build/quench or QUENCH_BIN)")


def decode_w4a16(folder: str) -> dict[str, np.ndarray]:
    """Symmetric int4 pack-quantized weights, from the format's definition: eight 4-bit codes
    per int32 along the input dimension, lowest bits first, stored offset by 8; weight = code *
    scale of its group (compressed-tensors' pack_to_int32 / dequantize)."""
    from safetensors.numpy import load_file
    t = {}
    for f in os.listdir(folder):
        if f.endswith(".safetensors"):
            t.update(load_file(os.path.join(folder, f)))
    grp = next(iter(json.load(open(os.path.join(folder, "config.json")))["quantization_config"]
                    ["config_groups"].values()))["weights"]
    assert grp["num_bits"] == 4 and grp["symmetric"] and grp["strategy"] == "group"
    out = {}
    for name in t:
        if not name.endswith(".weight_packed"):
            continue
        m = name[: -len(".weight_packed")]
        rows, cols = (int(x) for x in t[m + ".weight_shape"])
        words = t[name].view(np.uint32)
        vals = np.stack([(words >> (4 * k)) & 0xF for k in range(8)], -1).reshape(rows, -1)[:, :cols]
        scale = t[m + ".weight_scale"].astype(np.float32)
        out[m + ".weight"] = (vals.astype(np.int32) - 8).astype(np.float32) * np.repeat(
            scale, cols // scale.shape[1], axis=1)
    return out


def capture_rows(model, tok, text_file, modules):
    """Pre-hook inputs of `modules`, each of the first SAMPLES paragraphs run alone (no padding)."""
    paras = [p.strip() for p in open(text_file, encoding="utf-8").read().split("\n\n") if p.strip()][:SAMPLES]
    rows = {m: [] for m in modules}
    hooks = [model.get_submodule(m).register_forward_pre_hook(
        lambda mod, a, m=m: rows[m].append(a[0].detach().reshape(-1, a[0].shape[-1]).numpy().copy()))
        for m in modules]
    with torch.no_grad():
        for p in paras:
            model(input_ids=tok(p, truncation=True, max_length=SEQ, return_tensors="pt")["input_ids"])
    for h in hooks:
        h.remove()
    return {m: np.concatenate(v) for m, v in rows.items()}


@pytest.fixture(scope="module")
def runs(minilm_dir, calib_file, tmp_path_factory):
    d = tmp_path_factory.mktemp("seq")
    common = ["--samples", SAMPLES, "--seq-len", SEQ, "--batch-size", 5, "--hessian", "full"]
    plain = run_collector(minilm_dir, calib_file, d / "plain", *common)
    seq = run_collector(minilm_dir, calib_file, d / "seq", *common, "--sequential", "--quench",
                        quench_binary(), "--", *QARGS)
    return d, plain, seq


@needs_quench
def test_layer0_equals_plain(runs):
    _, (pm, pa), (sm, sa) = runs
    names = [k for k in pa if k.startswith(L0)]
    assert len(names) == 4 * 6  # four sites of five vectors and a Hessian
    for k in names:  # the same float model, the same batches: the same arithmetic
        np.testing.assert_array_equal(sa[k], pa[k], err_msg=k)
    # later layers saw quantized inputs: their Hessians moved
    for s in SITES1:
        assert not np.allclose(sa[s + ".hessian"], pa[s + ".hessian"], rtol=1e-3), s


@needs_quench
def test_layer1_from_quench_layer0(runs, minilm_dir, calib_file):
    """Layer 0's GPTQ weights depend only on layer 0's Hessians, which equal the plain run's:
    quench with the plain statistics writes the layer-0 weights the sequential run used."""
    from transformers import AutoTokenizer
    d, _, (sm, sa) = runs
    out = d / "gptq-plain"
    r = subprocess.run([quench_binary(), "convert", minilm_dir, str(out), *QARGS, "--stats", str(d / "plain")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    deq = decode_w4a16(str(out))
    model = load(minilm_dir)
    sd = model.state_dict()
    layer0 = [k for k in deq if k.startswith(L0)]
    assert len(layer0) == 6
    with torch.no_grad():
        for k in layer0:
            assert sd[k].shape == deq[k].shape
            assert not torch.equal(sd[k], torch.from_numpy(deq[k]))
            model.get_parameter(k).copy_(torch.from_numpy(deq[k]))
    rows = capture_rows(model, AutoTokenizer.from_pretrained(minilm_dir), calib_file, SITES1)
    for s in SITES1:
        assert_site(sa, s, numpy_stats(rows[s]), hessian="full")
    assert int(sa[SITES1[0] + ".count"]) == sm["collection"]["tokens"] == rows[SITES1[0]].shape[0]


@needs_quench
def test_manifest(runs, minilm_dir):
    _, (pm, _), (sm, sa) = runs
    check_contract(sm, sa, minilm_dir)
    c = sm["collection"]
    assert c["pipeline"] == "sequential" and "pipeline" not in pm["collection"]
    assert c["quench_args"] == QARGS
    v = subprocess.run([quench_binary(), "--version"], capture_output=True, text=True).stdout
    assert c["quench"] == v.splitlines()[0] and c["quench"].startswith("quench ")
    assert [s["layer"] for s in c["stages"]] == [f"encoder.layer.{i}" for i in range(6)]
    assert c["stages"][5]["sites"][-1] == "pooler.dense"  # calibrated with the last layer, as the reference
    assert sorted(x for s in c["stages"] for x in s["sites"]) == sorted(pm["sites"])
    # same sites, consumers, weights and settings as the plain run
    assert sm["sites"] == pm["sites"] and sm["consumers"] == pm["consumers"] and sm["model"] == pm["model"]
    same = {k: v for k, v in c.items() if k not in ("pipeline", "quench_args", "quench", "stages")}
    assert same == pm["collection"]
    assert "not_reached" not in sm


@needs_quench
def test_quench_warns_on_other_settings(runs, minilm_dir, tmp_path):
    d, _, _ = runs

    def dry(*args):
        r = subprocess.run([quench_binary(), "convert", minilm_dir, str(tmp_path / "o"), "--dry-run",
                            "--stats", str(d / "seq"), *args], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout + r.stderr
    assert "sequential" not in dry(*QARGS)
    for other in (["--scheme", "W8A16", "--algorithm", "gptq"], ["--scheme", "W4A16", "--algorithm", "rtn"]):
        text = dry(*other)
        assert "collected sequentially with earlier layers quantized by quench convert --scheme W4A16 " \
               "--algorithm gptq" in text, text


def test_stages_of_a_causal_lm(tiny_llama_dir):
    """Decoder layers from _no_split_modules; the LM head (run apart by the collector) goes
    with the last layer, as the reference's partition puts what follows the last layer."""
    import collect_stats
    model = load(tiny_llama_dir)
    ids = torch.tensor([[1, 5, 7, 9]])
    layers, stage = sequential.assign_stages(model, (ids, torch.ones_like(ids)), "cpu")
    assert layers == ["model.layers.0", "model.layers.1"]
    assert stage["model.layers.0.self_attn.q_proj"] == 0 and stage["model.layers.0.mlp.down_proj"] == 0
    assert stage["model.layers.1.self_attn.o_proj"] == 1 and stage["lm_head"] == 1
    assert set(stage) == set(sequential.hooked_modules(model))
    with pytest.raises(SystemExit, match="without --stats"):
        sequential.check_quench_args(["--scheme", "W4A16", "--stats", "x"])
    for algo in (["--algorithm", "awq,gptq"], ["--algorithm=smoothquant"]):
        with pytest.raises(SystemExit, match="smoothing"):
            sequential.check_quench_args(["--scheme", "W4A16", *algo])
    sequential.check_quench_args(["--recipe", "awq-free.yaml", "--algorithm", "gptq"])
    with pytest.raises(SystemExit):
        collect_stats.parse_args([tiny_llama_dir, "--text", "t", "-o", "o", "--sequential"])
