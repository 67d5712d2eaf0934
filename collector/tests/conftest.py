"""Fixtures: the real all-MiniLM-L6-v2, tiny random Llama / Qwen3-MoE / Mixtral models built from
transformers' configuration classes (with MiniLM's tokenizer), and the calibration text."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
COLLECTOR = os.path.dirname(HERE)
REPO = os.path.dirname(COLLECTOR)
sys.path.insert(0, COLLECTOR)

import calib_text  # noqa: E402
import collect_stats  # noqa: E402

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"]


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    path = os.environ.get("QUENCH_MINILM_DIR")
    if not path:
        r = subprocess.run([os.path.join(REPO, "scripts", "fetch_minilm.sh")], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.fail(f"scripts/fetch_minilm.sh failed: {r.stderr[-2000:]}")
        path = r.stdout.strip()
    assert os.path.isfile(os.path.join(path, "model.safetensors")), path
    return path


@pytest.fixture(scope="session")
def text_dir(tmp_path_factory) -> str:
    d = str(tmp_path_factory.mktemp("text"))
    calib_text.write(d)
    return d


@pytest.fixture(scope="session")
def calib_file(text_dir) -> str:
    return os.path.join(text_dir, "calib.txt")


def _with_tokenizer(model, minilm: str, out: str) -> str:
    model.save_pretrained(out)
    for f in TOKENIZER_FILES:
        if os.path.exists(os.path.join(minilm, f)):
            shutil.copy(os.path.join(minilm, f), out)
    return out


VOCAB = 30522  # MiniLM's tokenizer


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, minilm_dir) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      max_position_embeddings=512, tie_word_embeddings=False)
    return _with_tokenizer(LlamaForCausalLM(cfg).eval(), minilm_dir, str(tmp_path_factory.mktemp("llama")))


@pytest.fixture(scope="session")
def tiny_qwen_moe_dir(tmp_path_factory, minilm_dir) -> str:
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    torch.manual_seed(2)
    cfg = Qwen3MoeConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         num_experts=6, num_experts_per_tok=2, decoder_sparse_step=1, mlp_only_layers=[0],
                         max_position_embeddings=512, tie_word_embeddings=False)
    model = Qwen3MoeForCausalLM(cfg).eval()
    # A random router gives near-uniform, small logits; scale it so routing is decisive and
    # float noise between a padded and an unpadded run cannot flip an expert choice.
    with torch.no_grad():
        for layer in model.model.layers:
            if hasattr(layer.mlp, "gate") and not isinstance(layer.mlp.gate, torch.nn.Linear):
                layer.mlp.gate.weight.normal_(0, 1.0)
    return _with_tokenizer(model, minilm_dir, str(tmp_path_factory.mktemp("qwen3moe")))


@pytest.fixture(scope="session")
def tiny_mixtral_dir(tmp_path_factory, minilm_dir) -> str:
    from transformers import MixtralConfig, MixtralForCausalLM
    torch.manual_seed(3)
    cfg = MixtralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                        num_experts_per_tok=2, max_position_embeddings=512, tie_word_embeddings=False)
    return _with_tokenizer(MixtralForCausalLM(cfg).eval(), minilm_dir, str(tmp_path_factory.mktemp("mixtral")))


def run_collector(model_dir, text, out, *extra) -> tuple[dict, dict]:
    """Runs the collector in-process; returns (manifest, arrays)."""
    from safetensors.numpy import load_file
    rc = collect_stats.main([model_dir, "--text", text, "-o", str(out), "--device", "cpu", *map(str, extra)])
    assert rc == 0
    with open(os.path.join(out, "manifest.json")) as f:
        manifest = json.load(f)
    arrays = {}
    for name in manifest["files"]:
        arrays.update(load_file(os.path.join(out, name)))
    return manifest, arrays


def numpy_stats(x: np.ndarray) -> dict:
    """The format's fields from raw rows x [tokens, n], in float64 numpy."""
    x = x.astype(np.float64)
    return {"count": np.int64(x.shape[0]), "sum_x2": (x * x).sum(0), "sum_abs": np.abs(x).sum(0),
            "min": x.min(0).astype(np.float32), "max": x.max(0).astype(np.float32), "H": x.T @ x}


def unpack_upper(packed: np.ndarray, n: int) -> np.ndarray:
    h = np.zeros((n, n))
    h[np.triu_indices(n)] = packed
    return h + np.triu(h, 1).T
