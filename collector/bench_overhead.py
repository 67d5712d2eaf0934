#!/usr/bin/env python3
"""Collector overhead: the same batches through a plain forward pass and through the collector.

Usage: bench_overhead.py MODEL_DIR TEXT [--samples N] [--seq-len L] [--batch-size B]
       [--hessian none|full|blockB] [--moe all|routed] [--repeats R] [--device cpu|cuda]
       [--threads N]
Runs plain and collector passes alternately R times and prints the best time of each and the
ratio (collector / plain). The tokenization and model loading are outside the timings.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import collect_stats as cs  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("text")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--hessian", default="none")
    p.add_argument("--moe", default="all")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    seqs = cs.tokenize(tok, cs.read_samples(a.text)[: a.samples], a.seq_len)
    batches = cs.make_batches(seqs, a.batch_size, tok.pad_token_id or 0)
    model, _ = cs.load_model(a.model_dir, a.device, "auto")
    body, _ = cs.runner(model)

    def sync():
        if a.device == "cuda":
            torch.cuda.synchronize()

    def plain():
        with torch.inference_mode():
            for ids, mask in batches:
                cs.forward(body, ids.to(a.device), mask.to(a.device))
        sync()

    def collector():
        cs.collect(model, batches, a.device, a.moe, a.hessian)
        sync()

    plain()  # warm-up
    collector()
    best = {"plain": float("inf"), "collector": float("inf")}
    for _ in range(a.repeats):
        for name, fn in (("plain", plain), ("collector", collector)):
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    tokens = sum(len(s) for s in seqs)
    print(f"{len(seqs)} sequences, {tokens} tokens, batch {a.batch_size}, hessian {a.hessian}, "
          f"torch threads {torch.get_num_threads()}, device {a.device}")
    print(f"plain forward {best['plain']:.3f} s, collector {best['collector']:.3f} s, "
          f"ratio {best['collector'] / best['plain']:.2f}x (best of {a.repeats})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
