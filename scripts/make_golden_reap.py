#!/usr/bin/env python3
"""Golden cases for expert pruning by REAP saliency (issue 21), from the reference's own code.

Run with the reference venv's python (scripts/setup_reference.sh), after
make_golden_expert_prune.py (whose xprune-* sources and outputs this reuses):

    .venv-ref/bin/python scripts/make_golden_reap.py

The reference is llm-compressor 0.14.0.1's REAPPruningModifier (modifiers/pruning/reap/). Its
choice, given saliency sums and counts, is made by two pieces of its code, both run here:
  - REAPPruningModifier.on_initialize: how many experts to drop (int(E * sparsity); per group
    round(drop / n_group) for group-limited routers) and its refusals. It is run on a modifier
    whose get_moe_attrs (the one part that needs a model) is replaced by the MoeModelAttrs of
    the case; everything else is the modifier's own code.
  - REAPSaliencyTracker.compute_retained_experts on a tracker whose float64 accumulators are
    set to the case's sums and counts (mean_saliency = sum / count.clamp(min=1)).

Writes (relative to data/golden/):
  reap_manifest.json    "select": saliency cases (E, sparsity, top_k, groups, sums, counts) with
                        the reference's retained experts or its error; "convert": end-to-end
                        cases below
  reap/<case>/          statistics folders (docs/statistics-format.md, REAP blocks only) for the
                        xprune-* sources. Their saliency puts the experts the magnitude golden
                        case keeps above the rest, so the reference's REAP choice is that same
                        set (checked here) and quench's output must equal the magnitude golden
                        output byte for byte: pruning is the same operation once the kept
                        experts are chosen.
                        "measured": the reference's own REAP measurement (the modifier's hooks
                        and REAPSaliencyTracker, on a plain forward of each sample) on the
                        collector tests' tiny Qwen3-MoE (collector/tests/conftest.py's recipe,
                        rebuilt here; its safetensors sha256 recorded) over the first samples of
                        scripts/calib-text's calibration half: the sums and counts
                        collector/tests/test_reap.py compares the collector's with.
Deterministic: running twice writes identical files.

Why a plain forward: oneshot runs the modifier inside its sequential pipeline, whose traced
forward gave layer 1's router inputs that differ from the model's own forward of the same
sample (by up to 3.5 in absolute value on this model, 2026-12-04), so its sums are not a
measurement of the model; the hooks and the tracker are the modifier's own either way.
"""
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
GOLDEN = os.path.join(REPO, "data", "golden")
sys.path.insert(0, HERE)

from make_golden import versions, write_json_hf  # noqa: E402


def reference_choice(experts, sparsity, top_k, n_group, topk_group, sums, counts):
    """(retained, None) or (None, error message), by the reference's code."""
    import torch
    import llmcompressor.modifiers.pruning.reap.base as base
    from llmcompressor.modifiers.pruning.reap.utils import MoeModelAttrs, REAPSaliencyTracker

    attrs = MoeModelAttrs(num_experts_config_key="num_experts", router_attr="gate",
                          experts_attr="experts", moe_layer_names=["model.layers.0.mlp"],
                          num_experts=experts, top_k=top_k, has_text_config=False,
                          n_group=n_group, top_k_group=topk_group,
                          group_size=experts // n_group if n_group else None)

    class State:
        model = None

    saved = base.get_moe_attrs
    base.get_moe_attrs = lambda model, ignore: attrs
    try:
        mod = base.REAPPruningModifier(sparsity=sparsity)
        mod.on_initialize(State())
    except ValueError as e:  # pydantic's ValidationError is a ValueError too
        return None, str(e)
    finally:
        base.get_moe_attrs = saved
    tracker = REAPSaliencyTracker(experts)
    tracker.sum_saliency = torch.tensor(sums, dtype=torch.float64)
    tracker.count = torch.tensor(counts, dtype=torch.float64)
    retained = tracker.compute_retained_experts(mod._n_experts_to_drop,
                                                mod._n_experts_to_drop_per_group, attrs)
    assert len(retained) == experts - mod._n_experts_to_drop
    return retained.tolist(), None


def tied(rng, experts, distinct, zero_counts=0):
    """Sums and counts whose means take `distinct` values exactly (v * c / c == v for these v
    and c), so that many experts tie; `zero_counts` experts saw no token (saliency 0)."""
    vals = rng.integers(1, distinct + 1, experts) * 0.25
    counts = rng.integers(1, 50, experts)
    if zero_counts:
        counts[rng.choice(experts, zero_counts, replace=False)] = 0
    sums = vals * counts
    return [float(s) for s in sums], [int(c) for c in counts]


def spread(rng, experts):
    counts = rng.integers(0, 400, experts)
    sums = rng.gamma(2.0, 1.0, experts) * counts
    return [float(s) for s in sums], [int(c) for c in counts]


def select_cases():
    import numpy as np

    rng = np.random.default_rng(21)
    specs = [
        # (experts, sparsity, top_k, n_group, topk_group, kind)
        (8, 0.5, 2, None, None, "spread"), (8, 0.5, 2, None, None, "tied2"),
        (8, 0.3125, 2, None, None, "tied3"), (8, 0.25, 2, None, None, "zero"),
        (16, 0.5, 4, None, None, "tied2"), (16, 0.75, 4, None, None, "tied3"),
        (60, 0.25, 4, None, None, "tied2"), (60, 0.5, 4, None, None, "tied5"),
        (128, 0.01, 8, None, None, "tied2"),   # drop 1: partial_sort (k * 64 <= n)
        (128, 0.0157, 8, None, None, "tied2"),  # drop int(2.0096) = 2: partial_sort
        (128, 0.5, 8, None, None, "tied3"), (128, 0.75, 8, None, None, "zero"),
        (256, 0.015625, 8, None, None, "tied2"),  # drop 4: partial_sort
        (384, 0.5, 8, None, None, "tied5"),
        (64, 0.25, 8, 8, 4, "tied2"), (64, 0.3, 8, 8, 4, "tied3"),  # 19 -> round(2.375) = 2
        (64, 0.3125, 8, 8, 4, "tied2"),  # 20 -> round(2.5) = 2 (half to even)
        (64, 0.4375, 8, 8, 4, "spread"),  # 28 -> round(3.5) = 4
        (256, 0.25, 8, 8, 4, "tied5"), (32, 0.5, 2, 4, 2, "zero"),
        # refusals
        (8, 0.05, 2, None, None, "spread"),   # int(0.4) = 0 experts to drop
        (8, 0.9, 2, None, None, "spread"),    # 1 left for top_k 2
        (8, 1.0, 1, None, None, "spread"),    # sparsity not in (0, 1)
        (8, 0.0, 1, None, None, "spread"),
        (16, 0.25, 2, 8, 4, "spread"),        # round(4 / 8) = 0 per group
        (64, 0.75, 8, 8, 2, "spread"),        # top_k 8 > 2 groups x 2 kept
    ]
    cases = []
    for experts, sparsity, top_k, n_group, topk_group, kind in specs:
        if kind == "spread":
            sums, counts = spread(rng, experts)
        elif kind == "zero":
            sums, counts = tied(rng, experts, 3, zero_counts=max(1, experts // 8))
        else:
            sums, counts = tied(rng, experts, int(kind[-1]))
        retained, error = reference_choice(experts, sparsity, top_k, n_group, topk_group, sums,
                                           counts)
        cases.append({"experts": experts, "sparsity": sparsity, "top_k": top_k,
                      "n_group": n_group, "topk_group": topk_group, "sums": sums,
                      "counts": counts, "retained": retained, "error": error})
    return cases


# End to end: (name, magnitude golden case it must equal, top_k of its config)
CONVERT = [
    ("xprune-2d/E0.5", 2), ("xprune-2d/E0.3125", 2), ("xprune-2d/E0.5-FP8_DYNAMIC", 2),
    ("xprune-2d/E0.5-W4A16", 2), ("xprune-3d/E0.5", 2), ("xprune-ds/E0.5", 2),
    ("xprune-mixtral/E0.25", 2), ("xprune-mixtral/E0.5-NVFP4A16", 2),
]


def write_stats(out, routers, sums, counts, model_type):
    """A statistics folder holding only REAP blocks (docs/statistics-format.md)."""
    import numpy as np
    from safetensors.numpy import save_file

    os.makedirs(out)
    arrays, reap = {}, {}
    for router in routers:
        block = router.rsplit(".", 2)[0]  # <block>.gate.weight
        arrays[f"{block}.reap_sum"] = np.array(sums[router], dtype=np.float64)
        arrays[f"{block}.reap_count"] = np.array(counts[router], dtype=np.int64)
        reap[block] = {"file": "stats-00001.safetensors", "router": router,
                       "experts": len(sums[router])}
    save_file(arrays, os.path.join(out, "stats-00001.safetensors"))
    manifest = {"format": "quench-stats", "version": 1,
                "model": {"model_type": model_type, "weights": {}},
                "collection": {"collector": "scripts/make_golden_reap.py", "reap": True},
                "files": ["stats-00001.safetensors"], "sites": {}, "consumers": {},
                "reap": reap}
    write_json_hf(os.path.join(out, "manifest.json"), manifest)


def convert_cases():
    import numpy as np

    with open(os.path.join(GOLDEN, "expert_prune_manifest.json")) as f:
        golden = json.load(f)
    magnitude = {c["name"]: c for c in golden["cases"]}
    rng = np.random.default_rng(2110)
    root = os.path.join(GOLDEN, "reap")
    shutil.rmtree(root, ignore_errors=True)
    out = []
    for name, top_k in CONVERT:
        mc = magnitude[name]
        cfg = json.load(open(os.path.join(REPO, "data", mc["source"], "config.json")))
        sums, counts, retained = {}, {}, {}
        for router, keep in mc["retained"].items():
            e = len(golden["scores"][name.split("/")[0]][router])
            c = rng.integers(1, 300, e)
            sal = np.where(np.isin(np.arange(e), keep), rng.uniform(2.0, 3.0, e),
                           rng.uniform(0.5, 1.5, e))
            sums[router] = [float(x) for x in sal * c]
            counts[router] = [int(x) for x in c]
            got, err = reference_choice(e, mc["prune_experts"], top_k, None, None,
                                        sums[router], counts[router])
            if err or got != keep:
                raise SystemExit(f"{name} {router}: the reference keeps {got} ({err}), not {keep}")
            retained[router] = got
        stats = os.path.join(root, name.replace("/", "-"))
        write_stats(stats, list(sums), sums, counts, cfg.get("model_type"))
        out.append({"name": name, "statistics": os.path.relpath(stats, os.path.join(REPO, "data")),
                    "retained": retained})
    return out


def minilm_dir():
    import subprocess

    path = os.environ.get("QUENCH_MINILM_DIR")
    if not path:
        path = subprocess.run([os.path.join(HERE, "fetch_minilm.sh")], check=True,
                              capture_output=True, text=True).stdout.strip()
    return path


def measured_case(samples=12, seq_len=48):
    """The reference's REAP sums and counts on the collector tests' tiny Qwen3-MoE."""
    import hashlib
    import tempfile

    import torch
    from transformers import AutoTokenizer, Qwen3MoeConfig, Qwen3MoeForCausalLM

    sys.path.insert(0, os.path.join(REPO, "collector"))
    import calib_text
    import collect_stats

    from llmcompressor.core import State
    from llmcompressor.modeling.moe.linearize import linearize_moe
    from llmcompressor.modifiers.pruning.reap import REAPPruningModifier

    with tempfile.TemporaryDirectory() as tmp:
        # collector/tests/conftest.py tiny_qwen_moe_dir, step for step
        torch.manual_seed(2)
        cfg = Qwen3MoeConfig(vocab_size=30522, hidden_size=64, intermediate_size=96,
                             moe_intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=16, num_experts=6,
                             num_experts_per_tok=2, decoder_sparse_step=1, mlp_only_layers=[0],
                             max_position_embeddings=512, tie_word_embeddings=False)
        model = Qwen3MoeForCausalLM(cfg).eval()
        with torch.no_grad():
            for layer in model.model.layers:
                if hasattr(layer.mlp, "gate") and not isinstance(layer.mlp.gate, torch.nn.Linear):
                    layer.mlp.gate.weight.normal_(0, 1.0)
        src = os.path.join(tmp, "model")
        model.save_pretrained(src)
        for f in ["tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"]:
            if os.path.exists(os.path.join(minilm_dir(), f)):
                shutil.copy(os.path.join(minilm_dir(), f), src)
        with open(os.path.join(src, "model.safetensors"), "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        calib_text.write(os.path.join(tmp, "text"))
        texts = collect_stats.read_samples(os.path.join(tmp, "text", "calib.txt"))[:samples]
        tok = AutoTokenizer.from_pretrained(src)
        seqs = collect_stats.tokenize(tok, texts, seq_len)
        m = Qwen3MoeForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
        linearize_moe(m)
        mod = REAPPruningModifier(sparsity=0.5)
        state = State(model=m)
        mod.on_initialize(state)
        mod.on_calibration_start(state, None)
        with torch.no_grad():
            for ids in seqs:
                m(input_ids=torch.tensor([ids]))
        blocks = {k: {"sum": t.sum_saliency.tolist(), "count": [int(c) for c in t.count.tolist()]}
                  for k, t in mod._saliency_trackers.items()}
        mod.on_calibration_end(state, None)
    return {"model_sha256": sha, "samples": samples, "seq_len": seq_len, "blocks": blocks,
            "reference_call": "REAPPruningModifier(sparsity=0.5).on_initialize(State(model)); "
                              ".on_calibration_start(...); model(input_ids) per sample"}


def main():
    manifest = {"versions": versions(), "select": select_cases(), "convert": convert_cases(),
                "measured": measured_case()}
    with open(os.path.join(GOLDEN, "reap_manifest.json"), "w") as f:
        f.write(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    for c in manifest["select"]:
        print(c["experts"], c["sparsity"], c["n_group"], c["retained"] is not None and len(c["retained"]),
              c["error"], file=sys.stderr)


if __name__ == "__main__":
    main()
