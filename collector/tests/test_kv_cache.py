"""collect-stats --kv-cache: the key/value ranges at each attention layer's cache update, against
an independent capture: every paragraph run alone through the model with transformers' own
DynamicCache, whose stored keys (after k_norm and RoPE) and values are read back after the
forward and reduced with numpy. Batches of several paragraphs (so with padding) must give the
same statistics over the real tokens."""
import numpy as np
import pytest
import torch

from conftest import numpy_stats, run_collector
from test_collector import RTOL, SEQ, assert_site, load

SAMPLES = 8


def capture_kv(model_dir, text_file, samples=SAMPLES, seq=SEQ):
    from transformers import AutoTokenizer, DynamicCache
    from kv_cache import attention_layers
    tok = AutoTokenizer.from_pretrained(model_dir)
    paras = [p.strip() for p in open(text_file, encoding="utf-8").read().split("\n\n") if p.strip()][:samples]
    model = load(model_dir)
    names = attention_layers(model)
    rows = {}
    with torch.no_grad():
        for p in paras:
            ids = tok(p, truncation=True, max_length=seq, return_tensors="pt")["input_ids"]
            cache = DynamicCache(config=model.config)
            model(input_ids=ids, past_key_values=cache, use_cache=True)
            for i, name in names.items():
                layer = cache.layers[i]
                for kind, s in (("k", layer.keys), ("v", layer.values)):
                    b, h, t, d = s.shape
                    x = s.transpose(1, 2).reshape(b * t, h * d).numpy().copy()
                    rows.setdefault(f"{name}.{kind}_cache", []).append(x)
    return {k: np.concatenate(v) for k, v in rows.items()}


@pytest.mark.parametrize("which", ["llama", "qwen"])
def test_kv_ranges_match_the_cache_contents(which, tiny_llama_dir, tiny_qwen_moe_dir, calib_file, tmp_path):
    d = tiny_llama_dir if which == "llama" else tiny_qwen_moe_dir
    man, arr = run_collector(d, calib_file, tmp_path / "st", "--samples", SAMPLES, "--seq-len", SEQ,
                             "--batch-size", 4, "--kv-cache")
    assert man["collection"]["kv_cache"] is True
    ref = capture_kv(d, calib_file)
    assert len(ref) == 2 * 2  # two layers, keys and values
    for site, x in ref.items():
        assert man["sites"][site]["in_features"] == x.shape[1]
        assert man["sites"][site]["fields"] == ["count", "sum_x2", "sum_abs", "min", "max"]
        assert_site(arr, site, numpy_stats(x))
    # Output sites have no consumers; the input sites are those of a run without --kv-cache.
    assert not {c["site"] for c in man["consumers"].values()} & set(ref)
    man2, _ = run_collector(d, calib_file, tmp_path / "plain", "--samples", SAMPLES, "--seq-len", SEQ,
                            "--batch-size", 4)
    assert set(man2["sites"]) == set(man["sites"]) - set(ref)
    assert "kv_cache" not in man2["collection"]


def test_kv_cache_refused_without_attention(minilm_dir, calib_file, tmp_path):
    with pytest.raises(SystemExit, match="no attention layer with a KV cache"):
        run_collector(minilm_dir, calib_file, tmp_path / "st", "--samples", 2, "--seq-len", 16, "--kv-cache")
