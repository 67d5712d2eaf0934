"""The collector's statistics checked against an independent numpy computation over activations
captured by a second, plain run of the model (each sample alone: no padding at all), and the
manifest checked against docs/statistics-format.md."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch

import calib_text
import collect_stats
from conftest import numpy_stats, run_collector, unpack_upper

RTOL = 2e-4  # batched-with-padding vs one-sample-alone float32 GEMMs differ in the last bits
SAMPLES, SEQ = 12, 48


# --------------------------------------------------------------------------------------------
# Independent capture


def load(model_dir):
    import transformers
    from transformers import AutoConfig
    arch = AutoConfig.from_pretrained(model_dir).architectures[0]
    return getattr(transformers, arch).from_pretrained(model_dir, dtype=torch.float32).eval()


def capture(model_dir, text_file, modules, experts=(), samples=SAMPLES, seq=SEQ, skip_first=False):
    """Runs each of the first `samples` paragraphs alone through the full model with plain
    pre-hooks. Returns {module: rows [tokens, n]} and {experts module: (x, top_k, module)}."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    paras = [p.strip() for p in open(text_file, encoding="utf-8").read().split("\n\n") if p.strip()][:samples]
    model = load(model_dir)
    rows = {m: [] for m in modules}
    exp = {m: [] for m in experts}
    hooks = []
    for m in modules:
        def h(mod, args, m=m):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).numpy().copy()
            rows[m].append(x[1:] if skip_first and x.shape[0] > 1 else x)
        hooks.append(model.get_submodule(m).register_forward_pre_hook(h))
    for m in experts:
        def he(mod, args, m=m):
            exp[m].append((args[0].detach().numpy().copy(), args[1].detach().numpy().copy()))
        hooks.append(model.get_submodule(m).register_forward_pre_hook(he))
    with torch.no_grad():
        for p in paras:
            ids = tok(p, truncation=True, max_length=seq, return_tensors="pt")["input_ids"]
            model(input_ids=ids)
    for h in hooks:
        h.remove()
    out = {m: np.concatenate(v) for m, v in rows.items()}
    ex = {m: (np.concatenate([a for a, _ in v]), np.concatenate([b for _, b in v]), model.get_submodule(m))
          for m, v in exp.items()}
    return out, ex


def silu(x):
    return x / (1.0 + np.exp(-x))


def expert_down_input(mod, x, e):
    w = mod.gate_up_proj[e].detach().numpy().astype(np.float64)
    inter = w.shape[0] // 2
    g, u = x.astype(np.float64) @ w[:inter].T, x.astype(np.float64) @ w[inter:].T
    return silu(g) * u


def assert_site(arrays, site, ref, e=None, hessian=None, block=None):
    def get(f):
        a = arrays[f"{site}.{f}"]
        return a if e is None else a[e]
    assert int(get("count")) == int(ref["count"]), site
    np.testing.assert_allclose(get("sum_x2"), ref["sum_x2"], rtol=RTOL, atol=1e-6 * ref["sum_x2"].max())
    np.testing.assert_allclose(get("sum_abs"), ref["sum_abs"], rtol=RTOL, atol=1e-6 * ref["sum_abs"].max())
    scale = float(np.abs(ref["max"]).max() + np.abs(ref["min"]).max())
    np.testing.assert_allclose(get("min"), ref["min"], rtol=RTOL, atol=1e-5 * scale)
    np.testing.assert_allclose(get("max"), ref["max"], rtol=RTOL, atol=1e-5 * scale)
    hmax = np.abs(ref["H"]).max()
    if hessian == "full":
        n = ref["H"].shape[0]
        np.testing.assert_allclose(unpack_upper(get("hessian"), n), ref["H"], rtol=RTOL, atol=1e-5 * hmax)
    if block:
        got = get(f"hessian_blk{block}")
        n = ref["H"].shape[0]
        assert got.shape == (n // block, block, block)
        for b in range(n // block):
            s = slice(b * block, (b + 1) * block)
            np.testing.assert_allclose(got[b], ref["H"][s, s], rtol=RTOL, atol=1e-5 * hmax)


# --------------------------------------------------------------------------------------------
# The contract


DTYPES = {"count": np.int64, "sum_x2": np.float64, "sum_abs": np.float64, "min": np.float32,
          "max": np.float32, "hessian": np.float64}


def check_contract(manifest, arrays, model_dir):
    assert manifest["format"] == "quench-stats" and manifest["version"] == 1
    with open(os.path.join(model_dir, "config.json"), "rb") as f:
        assert manifest["model"]["config_sha256"] == hashlib.sha256(f.read()).hexdigest()
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    assert manifest["model"]["model_type"] == cfg["model_type"]
    assert manifest["model"]["architectures"] == cfg["architectures"]
    c = manifest["collection"]
    for k in ["collector", "dataset", "samples", "seq_len", "tokens", "sequences", "dtype", "device",
              "bos_counted", "padding_excluded", "moe", "hessian", "torch", "transformers"]:
        assert k in c, k
    assert c["collector"] == "quench-collect 1" and c["padding_excluded"] is True
    assert c["torch"] == torch.__version__.split("+")[0]
    inv = collect_stats.checkpoint_inventory(model_dir, cfg.get("hidden_size"))
    weights = manifest["model"]["weights"]
    assert set(weights) == set(manifest["consumers"])
    for w, shape in weights.items():
        assert inv[w] == shape, w
    sites = manifest["sites"]
    for w, cons in manifest["consumers"].items():
        site = sites[cons["site"]]
        assert weights[w][-1] == site["in_features"], w  # the weight reads n input features
        assert ("expert" in cons) == (site["experts"] is not None), w
        if "expert" in cons:
            assert 0 <= cons["expert"] < site["experts"]
    expected = set()
    for name, s in sites.items():
        assert s["file"] in manifest["files"]
        n, e = s["in_features"], s["experts"]
        lead = () if e is None else (e,)
        for f in s["fields"]:
            a = arrays[f"{name}.{f}"]
            expected.add(f"{name}.{f}")
            base = "hessian" if f.startswith("hessian") else f
            assert a.dtype == DTYPES[base], (name, f, a.dtype)
            if f in ("count",):
                assert a.shape == lead
            elif f == "hessian":
                assert a.shape == lead + (n * (n + 1) // 2,)
            elif f.startswith("hessian_blk"):
                b = int(f[len("hessian_blk"):])
                assert a.shape == lead + (n // b, b, b)
            else:
                assert a.shape == lead + (n,), (name, f)
        assert s["fields"][:5] == ["count", "sum_x2", "sum_abs", "min", "max"]
        cnt = arrays[f"{name}.count"]
        empty = np.asarray(cnt == 0)
        if empty.any():
            assert np.all(np.isposinf(arrays[f"{name}.min"][empty]))
            assert np.all(np.isneginf(arrays[f"{name}.max"][empty]))
        assert np.all(cnt <= c["tokens"] * max(1, c.get("top_k", 1)))
    assert expected == set(arrays), set(arrays) ^ expected


# --------------------------------------------------------------------------------------------
# Tests


def test_minilm_real_weights_full_hessian(minilm_dir, calib_file, tmp_path):
    man, arr = run_collector(minilm_dir, calib_file, tmp_path / "st", "--samples", SAMPLES, "--seq-len", SEQ,
                             "--batch-size", 5, "--hessian", "full")
    check_contract(man, arr, minilm_dir)
    c = man["collection"]
    assert c["dtype"] == "float32" and c["bos_counted"] is True and c["samples"] == SAMPLES
    assert c["sequences"] == SAMPLES
    mods = ["encoder.layer.0.attention.self.query", "encoder.layer.3.attention.output.dense",
            "encoder.layer.5.intermediate.dense", "encoder.layer.5.output.dense", "pooler.dense"]
    ref, _ = capture(minilm_dir, calib_file, mods)
    for m in mods:
        assert_site(arr, m, numpy_stats(ref[m]), hessian="full")
    # q/k/v read one tensor: one site
    for p in ["key", "value"]:
        assert man["consumers"][f"encoder.layer.0.attention.self.{p}.weight"]["site"] == mods[0]
    assert "encoder.layer.0.attention.self.key" not in man["sites"]
    assert int(arr[f"{mods[0]}.count"]) == c["tokens"] == ref[mods[0]].shape[0]
    assert int(arr["pooler.dense.count"]) == SAMPLES  # one (CLS) row per sequence
    assert len(man["sites"]) == 6 * 4 + 1 and len(man["consumers"]) == 6 * 6 + 1


def test_llama_block_hessian_and_lm_head(tiny_llama_dir, calib_file, tmp_path):
    man, arr = run_collector(tiny_llama_dir, calib_file, tmp_path / "st", "--samples", SAMPLES, "--seq-len", SEQ,
                             "--batch-size", 4, "--hessian", "block32")
    check_contract(man, arr, tiny_llama_dir)
    mods = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.o_proj",
            "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.down_proj", "lm_head"]
    ref, _ = capture(tiny_llama_dir, calib_file, mods)
    for m in mods:
        assert man["sites"][m]["fields"][-1] == "hessian_blk32"
        assert_site(arr, m, numpy_stats(ref[m]), block=32)
    assert man["consumers"]["model.layers.1.mlp.up_proj.weight"] == {"site": "model.layers.1.mlp.gate_proj"}
    assert man["consumers"]["model.layers.0.self_attn.v_proj.weight"] == {"site": "model.layers.0.self_attn.q_proj"}
    assert man["consumers"]["lm_head.weight"] == {"site": "lm_head"}
    assert len(man["sites"]) == 2 * 4 + 1


def test_exclude_bos(tiny_llama_dir, calib_file, tmp_path):
    man, arr = run_collector(tiny_llama_dir, calib_file, tmp_path / "a", "--samples", 6, "--seq-len", 32)
    man2, arr2 = run_collector(tiny_llama_dir, calib_file, tmp_path / "b", "--samples", 6, "--seq-len", 32,
                               "--exclude-bos")
    assert man["collection"]["bos_counted"] is True and man2["collection"]["bos_counted"] is False
    assert man2["collection"]["tokens"] == man["collection"]["tokens"] - 6
    site = "model.layers.0.self_attn.q_proj"
    ref, _ = capture(tiny_llama_dir, calib_file, [site], samples=6, seq=32, skip_first=True)
    assert_site(arr2, site, numpy_stats(ref[site]))


def _same_stats(a, b, names):
    for k in names:
        if k.endswith(".count"):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        else:
            np.testing.assert_allclose(a[k], b[k], rtol=RTOL, atol=1e-6 * float(np.abs(b[k]).max() or 1), err_msg=k)


@pytest.mark.parametrize("which,extra", [("llama", []), ("qwen", ["--moe", "routed"])])
def test_padding_excluded(which, extra, tiny_llama_dir, tiny_qwen_moe_dir, calib_file, tmp_path):
    d = tiny_llama_dir if which == "llama" else tiny_qwen_moe_dir
    args = ["--samples", 10, "--seq-len", SEQ, *extra]
    m1, a1 = run_collector(d, calib_file, tmp_path / "unpadded", *args, "--batch-size", 1)
    m2, a2 = run_collector(d, calib_file, tmp_path / "padded", *args, "--batch-size", 10)
    # one batch of 10 sequences of different lengths: padding is present
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(d)
    seqs = collect_stats.tokenize(tok, collect_stats.read_samples(calib_file)[:10], SEQ)
    assert len({len(s) for s in seqs}) > 1
    assert m1["collection"]["tokens"] == m2["collection"]["tokens"] == sum(len(s) for s in seqs)
    assert m1["sites"] == m2["sites"] and m1["consumers"] == m2["consumers"]
    assert set(a1) == set(a2)
    _same_stats(a2, a1, sorted(a1))


def test_qwen_moe_routed(tiny_qwen_moe_dir, calib_file, tmp_path):
    man, arr = run_collector(tiny_qwen_moe_dir, calib_file, tmp_path / "st", "--samples", SAMPLES, "--seq-len", SEQ,
                             "--batch-size", 4, "--moe", "routed", "--hessian", "full")
    check_contract(man, arr, tiny_qwen_moe_dir)
    c = man["collection"]
    assert c["moe"] == "routed" and c["top_k"] == 2
    ex = "model.layers.1.mlp.experts"
    gu, dn = f"{ex}.gate_proj", f"{ex}.down_proj"
    assert man["sites"][gu]["experts"] == 6 and man["sites"][dn]["experts"] == 6
    counts = arr[f"{gu}.count"]
    assert counts.shape == (6,) and int(counts.sum()) == c["tokens"] * 2
    np.testing.assert_array_equal(arr[f"{dn}.count"], counts)
    for e in range(6):
        assert man["consumers"][f"{ex}.{e}.gate_proj.weight"] == {"site": gu, "expert": e}
        assert man["consumers"][f"{ex}.{e}.up_proj.weight"] == {"site": gu, "expert": e}
        assert man["consumers"][f"{ex}.{e}.down_proj.weight"] == {"site": dn, "expert": e}
    # the router (a TopKRouter, not an nn.Linear) reads the MoE input: its own dense site
    assert man["consumers"]["model.layers.1.mlp.gate.weight"] == {"site": "model.layers.1.mlp.gate"}
    assert int(arr["model.layers.1.mlp.gate.count"]) == c["tokens"]
    ref, exps = capture(tiny_qwen_moe_dir, calib_file, ["model.layers.1.mlp.gate"], experts=[ex])
    assert_site(arr, "model.layers.1.mlp.gate", numpy_stats(ref["model.layers.1.mlp.gate"]), hessian="full")
    x, topk, mod = exps[ex]
    assert topk.shape[1] == 2
    for e in range(6):
        rows = np.any(topk == e, axis=1)
        assert int(counts[e]) == int(rows.sum())
        if rows.sum() == 0:
            continue
        assert_site(arr, gu, numpy_stats(x[rows]), e=e, hessian="full")
        assert_site(arr, dn, numpy_stats(expert_down_input(mod, x[rows], e)), e=e, hessian="full")


def test_qwen_moe_all_experts(tiny_qwen_moe_dir, calib_file, tmp_path):
    man, arr = run_collector(tiny_qwen_moe_dir, calib_file, tmp_path / "st", "--samples", SAMPLES, "--seq-len", SEQ,
                             "--batch-size", 4, "--moe", "all", "--hessian", "block16")
    check_contract(man, arr, tiny_qwen_moe_dir)
    c = man["collection"]
    ex = "model.layers.1.mlp.experts"
    router = "model.layers.1.mlp.gate"
    # every expert's gate/up reads the MoE input, which the router read first: one shared site
    for e in range(6):
        assert man["consumers"][f"{ex}.{e}.gate_proj.weight"] == {"site": router}
        assert man["consumers"][f"{ex}.{e}.up_proj.weight"] == {"site": router}
        assert man["consumers"][f"{ex}.{e}.down_proj.weight"] == {"site": f"{ex}.down_proj", "expert": e}
    assert f"{ex}.gate_proj" not in man["sites"]
    np.testing.assert_array_equal(arr[f"{ex}.down_proj.count"], np.full(6, c["tokens"]))
    ref, exps = capture(tiny_qwen_moe_dir, calib_file, [router], experts=[ex])
    assert_site(arr, router, numpy_stats(ref[router]), block=16)
    x, _, mod = exps[ex]
    for e in range(6):
        assert_site(arr, f"{ex}.down_proj", numpy_stats(expert_down_input(mod, x, e)), e=e, block=16)
    # the dense layer 0 MLP is an ordinary site
    assert man["consumers"]["model.layers.0.mlp.up_proj.weight"] == {"site": "model.layers.0.mlp.gate_proj"}


def test_hessian_experts_option(tiny_qwen_moe_dir, calib_file, tmp_path):
    man, arr = run_collector(tiny_qwen_moe_dir, calib_file, tmp_path / "st", "--samples", 4, "--seq-len", 32,
                             "--hessian", "full", "--hessian-experts", "none")
    check_contract(man, arr, tiny_qwen_moe_dir)
    assert man["collection"]["hessian"] == "full" and man["collection"]["hessian_experts"] == "none"
    assert man["sites"]["model.layers.1.mlp.gate"]["fields"][-1] == "hessian"
    assert man["sites"]["model.layers.1.mlp.experts.down_proj"]["fields"] == ["count", "sum_x2", "sum_abs", "min", "max"]


def test_mixtral_checkpoint_names(tiny_mixtral_dir, calib_file, tmp_path):
    """Mixtral's checkpoint keeps per-expert w1/w3/w2 under block_sparse_moe while transformers
    fuses them into mlp.experts: consumers carry the checkpoint's names."""
    man, arr = run_collector(tiny_mixtral_dir, calib_file, tmp_path / "st", "--samples", 6, "--seq-len", 32,
                             "--moe", "routed")
    check_contract(man, arr, tiny_mixtral_dir)
    p = "model.layers.0.block_sparse_moe"
    for e in range(4):
        assert man["consumers"][f"{p}.experts.{e}.w1.weight"] == {"site": "model.layers.0.mlp.experts.gate_proj", "expert": e}
        assert man["consumers"][f"{p}.experts.{e}.w3.weight"] == {"site": "model.layers.0.mlp.experts.gate_proj", "expert": e}
        assert man["consumers"][f"{p}.experts.{e}.w2.weight"] == {"site": "model.layers.0.mlp.experts.down_proj", "expert": e}
    assert man["consumers"][f"{p}.gate.weight"] == {"site": "model.layers.0.mlp.gate"}


def test_fused_checkpoint_split_names(tmp_path):
    """A checkpoint that stores experts fused (3-D) is planned split per expert, as model_free_ptq."""
    from safetensors.numpy import save_file
    save_file({"m.layers.0.mlp.experts.gate_up_proj": np.zeros((3, 8, 4), np.float32),
               "m.layers.0.mlp.experts.down_proj": np.zeros((3, 4, 4), np.float32),
               "m.layers.0.q.weight": np.zeros((4, 4), np.float32)}, str(tmp_path / "model.safetensors"))
    inv = collect_stats.checkpoint_inventory(str(tmp_path), 4)
    assert inv["m.layers.0.mlp.experts.2.up_proj.weight"] == [4, 4]
    assert inv["m.layers.0.mlp.experts.0.down_proj.weight"] == [4, 4]
    assert "m.layers.0.mlp.experts.gate_up_proj" not in inv and inv["m.layers.0.q.weight"] == [4, 4]


def quench_binary():
    path = os.environ.get("QUENCH_BIN") or os.path.join(os.path.dirname(os.path.dirname(collect_stats.__file__)),
                                                        "build", "quench")
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


@pytest.mark.skipif(quench_binary() is None, reason="no quench binary (build/quench or QUENCH_BIN)")
@pytest.mark.parametrize("moe", ["all", "routed"])
def test_quench_reads_and_merges_it(moe, tiny_qwen_moe_dir, calib_file, tmp_path):
    """The other side of the contract: quench stats inspect and merge accept what is written,
    Hessians of per-expert sites included."""
    import subprocess
    args = ["--samples", 4, "--seq-len", 32, "--moe", moe, "--hessian", "full", "--hessian-experts", "block16"]
    run_collector(tiny_qwen_moe_dir, calib_file, tmp_path / "a", *args)
    man, arr = run_collector(tiny_qwen_moe_dir, calib_file, tmp_path / "b", *args)
    q = quench_binary()
    r = subprocess.run([q, "stats", "inspect", str(tmp_path / "a")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([q, "stats", "merge", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "m")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from safetensors.numpy import load_file
    merged = load_file(str(tmp_path / "m" / "stats-00001.safetensors"))
    for k, v in arr.items():
        if k.endswith((".min", ".max")):
            np.testing.assert_array_equal(merged[k], v)
        else:
            np.testing.assert_allclose(merged[k], 2 * v, rtol=1e-12)


def test_text_formats(tmp_path):
    t = tmp_path / "a.txt"
    t.write_text("first paragraph\nstill first\n\n  \nsecond\n")
    assert collect_stats.read_samples(str(t)) == ["first paragraph\nstill first", "second"]
    t.write_text("line one\nline two\n")
    assert collect_stats.read_samples(str(t)) == ["line one", "line two"]
    j = tmp_path / "a.jsonl"
    j.write_text(json.dumps({"text": "x y"}) + "\n\n" + json.dumps({"text": "z", "id": 2}) + "\n")
    assert collect_stats.read_samples(str(j)) == ["x y", "z"]


def test_calib_eval_split(tmp_path, text_dir):
    info = calib_text.write(str(tmp_path))
    for f in ["calib.txt", "eval.txt", "source.json"]:
        assert open(tmp_path / f, "rb").read() == open(os.path.join(text_dir, f), "rb").read()  # deterministic
    calib = collect_stats.read_samples(str(tmp_path / "calib.txt"))
    evals = collect_stats.read_samples(str(tmp_path / "eval.txt"))
    assert len(calib) == info["calib"]["samples"] > 500 and len(evals) == info["eval"]["samples"] > 300
    assert not set(calib) & set(evals)
    assert not set(info["calib"]["topics"]) & set(info["eval"]["topics"])
    assert all(len(s.split()) >= calib_text.MIN_WORDS for s in calib + evals)


def test_pack_upper():
    h = np.arange(16, dtype=np.float64).reshape(4, 4)
    np.testing.assert_array_equal(collect_stats.pack_upper(h), h[np.triu_indices(4)])
    hh = np.stack([h, h + 1])
    assert collect_stats.pack_upper(hh).shape == (2, 10)


def test_write_stats_never_leaves_an_old_manifest_over_new_arrays(tmp_path, monkeypatch):
    """A run killed (here: failing) between moving its arrays in and its manifest leaves OUT
    without manifest.json, so quench refuses it as unfinished; before, an earlier manifest
    stayed and vouched for the new arrays. Nothing of the staging folder is left."""
    from types import SimpleNamespace
    out = tmp_path / "stats"
    site = SimpleNamespace(arrays=lambda: {"a.count": np.array(7, dtype=np.int64)})
    col = SimpleNamespace(sites={"a": site}, reap=None)
    collect_stats.write_stats(str(out), {"format": "quench-stats", "run": 1}, col)
    assert json.loads((out / "manifest.json").read_text())["run"] == 1
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        if str(dst).endswith("manifest.json"):
            raise OSError("killed here")
        return real_replace(src, dst)
    monkeypatch.setattr(collect_stats.os, "replace", failing_replace)
    with pytest.raises(OSError):
        collect_stats.write_stats(str(out), {"format": "quench-stats", "run": 2}, col)
    assert len(calls) == 2
    assert sorted(p.name for p in out.iterdir()) == ["stats-00001.safetensors"]
    monkeypatch.setattr(collect_stats.os, "replace", real_replace)
    collect_stats.write_stats(str(out), {"format": "quench-stats", "run": 3}, col)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "stats-00001.safetensors"]
    assert json.loads((out / "manifest.json").read_text())["run"] == 3
    assert oct((out / "manifest.json").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    u = os.umask(0)
    os.umask(u)
    return u
