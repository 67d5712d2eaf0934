"""The calibration input of the scripts/ref_minilm_*.py reference runs on all-MiniLM-L6-v2: the
samples collect-stats reads (the text's paragraphs, first N, truncated to L tokens, through the
collector's own sampling) as the Dataset oneshot takes, and the float32 model. A module, not a
script: those scripts import it from their own folder.
"""
import argparse
import os
import shutil
import sys

import torch
from datasets import Dataset
from transformers import AutoModel, AutoTokenizer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "collector"))
from collect_stats import read_samples, tokenize  # noqa: E402  (the collector's own sampling)


def load_calibration(model_dir, calib, samples, seq_len):
    """(tokenizer, token sequences, their Dataset, float32 model in eval mode)."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    seqs = tokenize(tok, read_samples(calib)[:samples], seq_len)
    ds = Dataset.from_dict({"input_ids": seqs, "attention_mask": [[1] * len(s) for s in seqs]})
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    return tok, seqs, ds, model


def calib_argparser():
    """The arguments every reference run takes: MODEL (folder), CALIB (text), OUT (folder)."""
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("calib")
    p.add_argument("out")
    return p


def add_sampling_args(p):
    """--samples (first N paragraphs) and --seq-len (tokens each), collect-stats' defaults."""
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=128)


def save_compressed(model, tok, out):
    """The oneshot result into `out` (replaced) as compressed-tensors writes it, with the
    tokenizer, so that scripts/eval_minilm_*.py score it as they score quench's outputs."""
    if os.path.exists(out):
        shutil.rmtree(out)
    model.save_pretrained(out, save_compressed=True)
    tok.save_pretrained(out)
