"""--reap: each MoE layer's REAP saliency (llm-compressor 0.14.0.1's REAPSaliencyTracker) checked
against an independent float64 numpy computation over the router decisions and layer inputs
captured by a plain run of the model, each sample alone (no padding at all)."""
from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import torch

from conftest import run_collector
from test_collector import RTOL, SAMPLES, SEQ, check_contract, load, quench_binary, silu


def capture_routing(model_dir, text_file, experts, samples=SAMPLES, seq=SEQ):
    """{experts module: (x [T, H], top_k_index [T, k], top_k_weights [T, k], module)} from
    pre-hooks on the experts modules, one sample per forward."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    paras = [p.strip() for p in open(text_file, encoding="utf-8").read().split("\n\n") if p.strip()][:samples]
    model = load(model_dir)
    got = {m: [] for m in experts}
    hooks = []
    for m in experts:
        def h(mod, args, m=m):
            got[m].append(tuple(a.detach().numpy().copy() for a in args[:3]))
        hooks.append(model.get_submodule(m).register_forward_pre_hook(h))
    with torch.no_grad():
        for p in paras:
            model(input_ids=tok(p, truncation=True, max_length=seq, return_tensors="pt")["input_ids"])
    for h in hooks:
        h.remove()
    return {m: tuple(np.concatenate([v[i] for v in got[m]]) for i in range(3)) + (model.get_submodule(m),)
            for m in experts}


def numpy_reap(x, top_k, weights, mod):
    """The definition, in float64: for every token t and slot s routed to expert e = top_k[t, s],
    sum[e] += weights[t, s] * ||down_e(silu(gate_e x_t) * up_e x_t)||_2 and count[e] += 1."""
    gu = mod.gate_up_proj.detach().numpy().astype(np.float64)
    dn = mod.down_proj.detach().numpy().astype(np.float64)
    n_exp, inter = gu.shape[0], gu.shape[1] // 2
    s, c = np.zeros(n_exp), np.zeros(n_exp, dtype=np.int64)
    xd = x.astype(np.float64)
    for t in range(x.shape[0]):
        for slot in range(top_k.shape[1]):
            e = int(top_k[t, slot])
            h = silu(gu[e, :inter] @ xd[t]) * (gu[e, inter:] @ xd[t])
            s[e] += float(weights[t, slot]) * np.linalg.norm(dn[e] @ h)
            c[e] += 1
    return s, c


@pytest.mark.parametrize("moe", ["all", "routed"])
def test_qwen_moe_reap_saliency(moe, tiny_qwen_moe_dir, calib_file, tmp_path):
    man, arr = run_collector(tiny_qwen_moe_dir, calib_file, tmp_path / "st", "--samples", SAMPLES, "--seq-len", SEQ,
                             "--batch-size", 4, "--moe", moe, "--reap")
    reap_arrays = {k: v for k, v in arr.items() if k.endswith((".reap_sum", ".reap_count"))}
    check_contract(man, {k: v for k, v in arr.items() if k not in reap_arrays}, tiny_qwen_moe_dir)
    assert man["collection"]["reap"] is True
    block, ex = "model.layers.1.mlp", "model.layers.1.mlp.experts"
    # layer 0 is dense (mlp_only_layers=[0]): one MoE layer, named by its block, keyed to the
    # router's checkpoint name
    assert man["reap"] == {block: {"file": "stats-00001.safetensors", "router": f"{block}.gate.weight",
                                   "experts": 6}}
    assert set(reap_arrays) == {f"{block}.reap_sum", f"{block}.reap_count"}
    got_sum, got_count = arr[f"{block}.reap_sum"], arr[f"{block}.reap_count"]
    assert got_sum.dtype == np.float64 and got_count.dtype == np.int64
    assert got_sum.shape == got_count.shape == (6,)
    x, top_k, weights, mod = capture_routing(tiny_qwen_moe_dir, calib_file, [ex])[ex]
    # the weights the experts are given, g_j: the router's softmax over all experts at the
    # chosen ones (renormalised over them only with norm_topk_prob, false here)
    router = load(tiny_qwen_moe_dir).get_submodule(f"{block}.gate").weight.detach().numpy().astype(np.float64)
    logits = x.astype(np.float64) @ router.T
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert json.load(open(os.path.join(tiny_qwen_moe_dir, "config.json")))["norm_topk_prob"] is False
    np.testing.assert_allclose(weights, np.take_along_axis(probs, top_k, 1), rtol=1e-5)
    ref_sum, ref_count = numpy_reap(x, top_k, weights, mod)
    np.testing.assert_array_equal(got_count, ref_count)
    assert int(got_count.sum()) == man["collection"]["tokens"] * 2
    np.testing.assert_allclose(got_sum, ref_sum, rtol=RTOL)
    assert np.all(got_sum > 0)


def test_reap_equals_the_reference_measurement(tiny_qwen_moe_dir, calib_file, tmp_path):
    """The reference's own REAP hooks and tracker (REAPPruningModifier on a plain forward of each
    sample, scripts/make_golden_reap.py, data/golden/reap_manifest.json "measured") on this same
    model and text give the collector's sums and counts."""
    import hashlib
    from conftest import REPO
    golden = json.load(open(os.path.join(REPO, "data", "golden", "reap_manifest.json")))["measured"]
    with open(os.path.join(tiny_qwen_moe_dir, "model.safetensors"), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == golden["model_sha256"]  # the same weights
    man, arr = run_collector(tiny_qwen_moe_dir, calib_file, tmp_path / "st", "--samples", golden["samples"],
                             "--seq-len", golden["seq_len"], "--batch-size", 1, "--reap")
    assert set(man["reap"]) == set(golden["blocks"])
    for block, ref in golden["blocks"].items():
        np.testing.assert_array_equal(arr[f"{block}.reap_count"], ref["count"])
        np.testing.assert_allclose(arr[f"{block}.reap_sum"], ref["sum"], rtol=1e-6)


def test_reap_padding_excluded(tiny_qwen_moe_dir, calib_file, tmp_path):
    args = ["--samples", 10, "--seq-len", SEQ, "--reap"]
    _, a1 = run_collector(tiny_qwen_moe_dir, calib_file, tmp_path / "unpadded", *args, "--batch-size", 1)
    _, a2 = run_collector(tiny_qwen_moe_dir, calib_file, tmp_path / "padded", *args, "--batch-size", 10)
    k = "model.layers.1.mlp.reap_"
    np.testing.assert_array_equal(a2[k + "count"], a1[k + "count"])
    np.testing.assert_allclose(a2[k + "sum"], a1[k + "sum"], rtol=RTOL)


def test_reap_mixtral_router_name(tiny_mixtral_dir, calib_file, tmp_path):
    """Mixtral's router is block_sparse_moe.gate in the checkpoint (mlp.gate in transformers 5)."""
    man, arr = run_collector(tiny_mixtral_dir, calib_file, tmp_path / "st", "--samples", 6, "--seq-len", 32,
                             "--reap")
    assert man["reap"]["model.layers.0.mlp"]["router"] == "model.layers.0.block_sparse_moe.gate.weight"
    assert int(arr["model.layers.0.mlp.reap_count"].sum()) == man["collection"]["tokens"] * 2


def test_reap_needs_moe(tiny_llama_dir, calib_file, tmp_path):
    with pytest.raises(SystemExit, match="no MoE layer"):
        run_collector(tiny_llama_dir, calib_file, tmp_path / "st", "--samples", 2, "--seq-len", 16, "--reap")


@pytest.mark.skipif(quench_binary() is None, reason="no quench binary (build/quench or QUENCH_BIN)")
def test_quench_merges_reap(tiny_qwen_moe_dir, calib_file, tmp_path):
    """quench stats merge adds REAP sums and counts (the mean is sum / count, so the merged
    saliency is the saliency of the union); mixing parts with and without REAP is refused."""
    args = ["--samples", 4, "--seq-len", 32, "--reap"]
    _, a = run_collector(tiny_qwen_moe_dir, calib_file, tmp_path / "a", *args)
    _, b = run_collector(tiny_qwen_moe_dir, calib_file, tmp_path / "b", "--samples", 7, "--seq-len", 32, "--reap")
    run_collector(tiny_qwen_moe_dir, calib_file, tmp_path / "c", "--samples", 4, "--seq-len", 32)
    q = quench_binary()
    r = subprocess.run([q, "stats", "merge", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "m")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from safetensors.numpy import load_file
    merged = load_file(str(tmp_path / "m" / "stats-00001.safetensors"))
    man = json.load(open(tmp_path / "m" / "manifest.json"))
    assert man["reap"]["model.layers.1.mlp"]["router"] == "model.layers.1.mlp.gate.weight"
    k = "model.layers.1.mlp.reap_"
    np.testing.assert_array_equal(merged[k + "count"], a[k + "count"] + b[k + "count"])
    np.testing.assert_allclose(merged[k + "sum"], a[k + "sum"] + b[k + "sum"], rtol=1e-15)
    r = subprocess.run([q, "stats", "inspect", str(tmp_path / "m")], capture_output=True, text=True)
    assert r.returncode == 0 and "reap" in r.stdout.lower(), r.stdout + r.stderr
    r = subprocess.run([q, "stats", "merge", str(tmp_path / "a"), str(tmp_path / "c"), "-o", str(tmp_path / "n")],
                       capture_output=True, text=True)
    assert r.returncode == 3 and "different settings" in r.stderr, r.stderr
    assert not os.path.exists(tmp_path / "n" / "manifest.json")


@pytest.mark.skipif(quench_binary() is None, reason="no quench binary (build/quench or QUENCH_BIN)")
def test_quench_prunes_by_collected_saliency(tiny_qwen_moe_dir, calib_file, tmp_path):
    """The chain: collect --reap on a checkpoint transformers saved, then quench convert
    --expert-metric reap keeps, per layer, all but the int(E * F) experts of lowest saliency
    (sum / count, here all distinct), and reports the statistics' saliency and token counts."""
    _, arr = run_collector(tiny_qwen_moe_dir, calib_file, tmp_path / "st", "--samples", SAMPLES, "--seq-len", SEQ,
                           "--reap")
    report = tmp_path / "r.json"
    r = subprocess.run([quench_binary(), "convert", tiny_qwen_moe_dir, str(tmp_path / "out"), "--scheme", "none",
                        "--prune-experts", "0.5", "--expert-metric", "reap", "--stats", str(tmp_path / "st"),
                        "--dry-run", "--report", str(report)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    layers = json.load(open(report))["expert_pruning"]["layers"]
    assert [l["router"] for l in layers] == ["model.layers.1.mlp.gate.weight"]
    s, c = arr["model.layers.1.mlp.reap_sum"], arr["model.layers.1.mlp.reap_count"]
    sal = s / np.maximum(c, 1)
    assert len(set(sal.tolist())) == 6
    assert layers[0]["kept"] == sorted(np.argsort(sal)[3:].tolist())
    np.testing.assert_array_equal(layers[0]["scores"], sal)
    assert layers[0]["tokens"] == c.tolist()


@pytest.mark.skipif(quench_binary() is None, reason="no quench binary (build/quench or QUENCH_BIN)")
def test_gptq_with_expert_pruning_reads_each_survivors_own_statistics(tiny_qwen_moe_dir, calib_file, tmp_path):
    """GPTQ finds a weight's Hessian by the name the statistics give it, the source's; pruning
    renumbers the survivors. Each weight's GPTQ result depends only on the weight and its
    Hessian, so survivor i of the pruned conversion must equal source expert kept[i] of the
    unpruned one, byte for byte."""
    from safetensors.numpy import load_file
    run_collector(tiny_qwen_moe_dir, calib_file, tmp_path / "st", "--samples", SAMPLES, "--seq-len", SEQ,
                  "--moe", "routed", "--hessian", "full", "--reap")
    common = ["--scheme", "W8A8", "--algorithm", "gptq", "--stats", str(tmp_path / "st")]

    def convert(out, *extra):
        r = subprocess.run([quench_binary(), "convert", tiny_qwen_moe_dir, str(out), *common, *extra,
                            "--report", str(out) + ".json"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        tensors = {}
        for f in os.listdir(out):
            if f.endswith(".safetensors"):
                tensors.update(load_file(os.path.join(out, f)))
        return tensors, json.load(open(str(out) + ".json"))

    full, _ = convert(tmp_path / "full")
    pruned, report = convert(tmp_path / "pruned", "--prune-experts", "0.5", "--expert-metric", "reap")
    kept = report["expert_pruning"]["layers"][0]["kept"]
    assert len(kept) == 3 and kept != [0, 1, 2]  # survivors renumbered
    gptq = {t["name"] for t in report["tensors"] if t.get("algorithm") == "gptq"}
    p = "model.layers.1.mlp.experts"
    assert {f"{p}.{i}.{w}_proj.weight" for i in range(3) for w in ("gate", "up", "down")} <= gptq
    compared = 0
    for name, value in pruned.items():
        if not name.startswith(p + "."):
            continue
        i = int(name[len(p) + 1:].split(".")[0])
        src = f"{p}.{kept[i]}." + name[len(p) + 1:].split(".", 1)[1]
        np.testing.assert_array_equal(value, full[src], err_msg=name)
        compared += 1
    assert compared == 3 * 3 * 2  # 3 experts x gate/up/down x int8 weight, weight_scale
