"""Golden quantization_config of llm-compressor 0.14.0.1's oneshot with an AWQModifier and with
a SmoothQuantModifier recipe, each followed by a QuantizationModifier, and with the composed
recipes (smoothing, then SparseGPT, then GPTQ or a QuantizationModifier), on a tiny random Llama
(transformers' LlamaConfig, bf16, two layers) calibrated on real sentences
(tests/python/sentences.txt through a WordLevel tokenizer built from their words: no hub).

Writes into data/golden/oneshot-smooth/: for each case NAME, NAME.yaml (the recipe, which the
quench test runs as it is) and NAME.json (the quantization_config oneshot saved). Also
refusals.json: the reference's error for an AWQModifier given quantization keys in a YAML
recipe (the YAML loader builds the transform class, whose fields forbid extras; only the
deprecated Python shim llmcompressor.modifiers.awq.AWQModifier splits them off).

Usage: .venv-ref/bin/python scripts/make_golden_oneshot_smooth.py [OUT_DIR [CASE...]]
(CASE...: only those cases, and no refusals.)
"""
import json
import os
import re
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "data", "golden",
                                                         "oneshot-smooth")

QUANT_STAGE = "quant_stage:\n  quant_modifiers:\n"
SPARSITY_STAGE = "sparsity_stage:\n  sparsity_modifiers:\n"
SMOOTHQUANT = "    SmoothQuantModifier:\n      smoothing_strength: 0.8\n"
SPARSEGPT24 = "    SparseGPTModifier:\n      sparsity: 0.5\n      mask_structure: \"2:4\"\n"


def quantize(modifier, scheme):
    """`modifier` (QuantizationModifier or GPTQModifier) entry quantizing every Linear but
    lm_head: scheme "W8A8" (the preset) or "W4A16_ASYM_G64" (asymmetric int4 in groups of 64:
    the quench test's tiny-llama has 704 inputs to down_proj, which 128 does not divide)."""
    if scheme == "W8A8":
        return (f"    {modifier}:\n"
                "      scheme: W8A8\n"
                "      targets: Linear\n"
                "      ignore: [\"lm_head\"]\n")
    assert scheme == "W4A16_ASYM_G64", scheme
    return (f"    {modifier}:\n"
            "      ignore: [\"lm_head\"]\n"
            "      config_groups:\n"
            "        group_0:\n"
            "          targets: [\"Linear\"]\n"
            "          weights:\n"
            "            num_bits: 4\n"
            "            type: int\n"
            "            symmetric: false\n"
            "            strategy: group\n"
            "            group_size: 64\n")


CASES = {
    # AWQ's usual recipe: asymmetric int4 in groups of 64.
    "awq_w4a16_asym_g64": (
        QUANT_STAGE +
        "    AWQModifier:\n"
        "      duo_scaling: true\n"
        "      n_grid: 20\n" +
        quantize("QuantizationModifier", "W4A16_ASYM_G64")),
    # SmoothQuant's usual recipe: W8A8 (int8 channel weights, dynamic per-token activations).
    "smoothquant_w8a8": QUANT_STAGE + SMOOTHQUANT + quantize("QuantizationModifier", "W8A8"),
    # Composed recipes (docs/convert-reference.md "Composed calibration"): smoothing, then
    # pruning, then quantization, as llm-compressor's examples chain them.
    "awq_gptq_w4a16_asym_g64": (
        QUANT_STAGE +
        "    AWQModifier:\n"
        "      duo_scaling: true\n" +
        quantize("GPTQModifier", "W4A16_ASYM_G64")),
    "smoothquant_gptq_w8a8": QUANT_STAGE + SMOOTHQUANT + quantize("GPTQModifier", "W8A8"),
    "smoothquant_sparsegpt24_w8a8": (
        SPARSITY_STAGE + SMOOTHQUANT + SPARSEGPT24 +
        QUANT_STAGE + quantize("QuantizationModifier", "W8A8")),
    # SparseGPT alone before a QuantizationModifier (what the weights' observer is written as).
    "sparsegpt24_w8a8": (
        SPARSITY_STAGE + SPARSEGPT24 + QUANT_STAGE + quantize("QuantizationModifier", "W8A8")),
    "smoothquant_sparsegpt24_gptq_w8a8": (
        SPARSITY_STAGE + SMOOTHQUANT + SPARSEGPT24 +
        QUANT_STAGE + quantize("GPTQModifier", "W8A8")),
}

REFUSED = {
    "awq_with_scheme": ("quant_stage:\n  quant_modifiers:\n    AWQModifier:\n"
                        "      scheme: W4A16\n      ignore: [\"lm_head\"]\n"),
}


def tiny_model_and_data(tmp):
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    with open(os.path.join(ROOT, "tests", "python", "sentences.txt")) as f:
        sentences = [s.strip() for s in f if s.strip()]
    words = sorted({w for s in sentences for w in re.findall(r"\w+|[^\w\s]", s)})
    vocab = {"<unk>": 0, "<pad>": 1}
    for w in words:
        vocab[w] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>")
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, vocab_size=len(vocab),
                      max_position_embeddings=64)
    base = os.path.join(tmp, "base")
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(base)
    tok.save_pretrained(base)
    enc = [tok(s)["input_ids"] for s in sentences]
    ds = Dataset.from_dict({"input_ids": enc, "attention_mask": [[1] * len(e) for e in enc]})
    return base, tok, ds, len(sentences)


def main():
    from llmcompressor import oneshot
    from llmcompressor.pipelines.cache import IntermediatesCache
    # AWQ pins its cached activations for faster host-to-device copies; with no accelerator
    # torch refuses to pin ("Cannot access accelerator device"), so on this CPU-only run the
    # pinning, a transfer optimisation that changes no value, is skipped.
    if not torch.cuda.is_available():
        IntermediatesCache.pin_memory = lambda self, *a, **k: None
    from transformers import LlamaForCausalLM
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        base, tok, ds, n = tiny_model_and_data(tmp)
        only = sys.argv[2:]
        for name, recipe in CASES.items():
            if only and name not in only:
                continue
            path = os.path.join(OUT, name + ".yaml")
            with open(path, "w") as f:
                f.write(recipe)
            model = LlamaForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
            oneshot(model=model, dataset=ds, recipe=path, num_calibration_samples=n,
                    processor=tok, max_seq_length=32)
            out = os.path.join(tmp, name)
            model.save_pretrained(out, save_compressed=True)
            with open(os.path.join(out, "config.json")) as f:
                q = json.load(f)["quantization_config"]
            with open(os.path.join(OUT, name + ".json"), "w") as f:
                json.dump(q, f, indent=2, sort_keys=True)
                f.write("\n")
        refused = {}
        for name, recipe in ({} if only else REFUSED).items():
            path = os.path.join(tmp, name + ".yaml")
            with open(path, "w") as f:
                f.write(recipe)
            model = LlamaForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
            try:
                oneshot(model=model, dataset=ds, recipe=path, num_calibration_samples=n,
                        processor=tok, max_seq_length=32)
                refused[name] = {"recipe": recipe, "error": None}
            except Exception as e:  # the reference's refusal, recorded as it words it
                msg = str(e)
                refused[name] = {"recipe": recipe, "error_type": type(e).__name__,
                                 "extra_forbidden": "extra_forbidden" in msg or
                                 "Extra inputs are not permitted" in msg}
        if not only:
            with open(os.path.join(OUT, "refusals.json"), "w") as f:
                json.dump(refused, f, indent=2, sort_keys=True)
                f.write("\n")


if __name__ == "__main__":
    main()
