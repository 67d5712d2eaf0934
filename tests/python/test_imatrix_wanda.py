"""The imatrix_mse observer and Wanda on the real all-MiniLM-L6-v2, as transformers loads the
outputs (compressed-tensors for W4A16, plain weights for pruned-only folders), with the
statistics collect-stats wrote for it (data/golden/imatrix-minilm/stats): on the six fixed
sentences, the mean embedding gap (1 - cosine to the unquantized model) of imatrix-weighted
W4A16 is below round to nearest's, and Wanda 2:4's below magnitude 2:4's, each by a margin
taken from the measurement (docs/convert-reference.md "imatrix_mse and Wanda")."""
import subprocess

import pytest
import torch
from transformers import AutoModel

import consumers as C

STATS = C.ROOT / "data" / "golden" / "imatrix-minilm" / "stats"

RUNS = {
    "rtn": ["--scheme", "W4A16"],
    "imatrix": ["--scheme", "W4A16", "--observer", "imatrix_mse", "--stats", str(STATS)],
    "magnitude24": ["--scheme", "none", "--prune", "2:4"],
    "wanda24": ["--scheme", "none", "--prune", "2:4", "--prune-metric", "wanda",
                "--stats", str(STATS)],
}


@pytest.fixture(scope="module")
def gaps(tmp_path_factory):
    src = C.minilm_dir()
    tmp = tmp_path_factory.mktemp("imatrix_wanda")
    ref = C.minilm_embeddings(AutoModel.from_pretrained(str(src)).eval(), src)
    out = {}
    for name, args in RUNS.items():
        dst = tmp / name
        subprocess.run([str(C.QUENCH), "convert", str(src), str(dst), "-q", *args], check=True)
        emb = C.minilm_embeddings(AutoModel.from_pretrained(str(dst)).eval(), dst)
        cos = torch.nn.functional.cosine_similarity(emb, ref, dim=-1)
        out[name] = 1 - cos.mean().item()
    return out


def test_imatrix_closes_part_of_rtns_gap(gaps):
    # Measured on these sentences: see docs/convert-reference.md, "Parity and tests in detail";
    # asserted with a margin.
    assert gaps["imatrix"] < 0.9 * gaps["rtn"], gaps


def test_wanda_24_beats_magnitude_24(gaps):
    assert gaps["wanda24"] < 0.8 * gaps["magnitude24"], gaps
