#!/usr/bin/env python3
"""vLLM and transformers on one MoE checkpoint folder: greedy tokens for fixed prompts.

    VLLM_CPU_KVCACHE_SPACE=1 ~/.cache/quench/venv-vllm/bin/python scripts/check_vllm_moe.py DIR

Run in scripts/check-vllm's venv (vLLM CPU, its transformers). For quench's expert-pruned tiny
Qwen3-MoE (data/golden/xprune-2d/src converted with --prune-experts 0.5); the model has random
weights and no tokenizer, so prompts are token ids and near-ties in its flat logits can turn the
two engines' greedy paths apart: where they differ, the first differing step's top log-probs
from transformers are printed.
"""
import sys

import torch
from transformers import AutoModelForCausalLM
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt

PROMPTS = [[1, 2, 3, 4, 5], [7, 9, 11, 13], [60, 5, 33, 2, 8, 21]]


def main():
    folder = sys.argv[1]
    llm = LLM(model=folder, enforce_eager=True, max_model_len=64, skip_tokenizer_init=True,
              dtype="bfloat16")
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in PROMPTS],
                        SamplingParams(max_tokens=8, temperature=0, detokenize=False))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    for p, o in zip(PROMPTS, outs):
        v = list(o.outputs[0].token_ids)
        t = model.generate(torch.tensor([p]), max_new_tokens=8, do_sample=False)[0, len(p):].tolist()
        line = f"prompt {p}: vllm {v} transformers {t}"
        if v != t:
            k = next(i for i in range(len(v)) if v[i] != t[i])
            lp = model(torch.tensor([p + t[:k]])).logits[0, -1].float().log_softmax(-1)
            vals, ids = lp.topk(3)
            top = [(i, round(x, 4)) for i, x in zip(ids.tolist(), vals.tolist())]
            line += f"; first difference at step {k}, transformers' top log-probs {top}"
        print(line)


if __name__ == "__main__":
    main()
