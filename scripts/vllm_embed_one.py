#!/usr/bin/env python3
"""vLLM (CPU build) embeds tests/python/sentences.txt with one model folder as a pooling model and
saves the embeddings (docs/convert-reference.md "Static activation scales": W8A8 static and FP8
static MiniLM).
Usage (vLLM venv, e.g. scripts/check-vllm's): python scripts/vllm_embed_one.py FOLDER OUT.npy
"""
import os, sys
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

def main():
    from vllm import LLM
    import numpy as np
    sents = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "python", "sentences.txt")).read().splitlines()
    llm = LLM(model=sys.argv[1], runner="pooling", enforce_eager=True, max_model_len=128)
    np.save(sys.argv[2], np.array([o.outputs.embedding for o in llm.embed(sents)]))
    print("SAVED", sys.argv[2], flush=True)

if __name__ == "__main__":
    main()
