"""Driver of scripts/check-vllm's multimodal check: a vision-language model converted by quench
with its default ignores, in vLLM (CPU build) against transformers.

  check_vllm_multimodal.py model OUT MINILM
                              writes OUT: a tiny Idefics3 (SigLIP-style vision tower,
                              connector, Llama) with random weights (fixed seed, bf16) from
                              transformers' configuration classes, with MiniLM's tokenizer
                              (four image tokens added) and a PIL image processor
  check_vllm_multimodal.py run WORK
                              WORK/idefics3-<case> as scripts/check-vllm converted them; prints
                              the table, exits non-zero on a failure

Idefics3 because it is the vision-language model vLLM 0.32.0's CPU build can start here: its
Llava, PaliGemma, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Gemma 3, Mistral 3, Llama 4 and InternVL
paths import torchvision (vllm/model_executor/models/vision.py imports transformers' Pixtral
image processor), whose PyPI wheels need CUDA torch. Its names put the encoder and connector
second (`model.vision_model.`, `model.connector.`), the form transformers 5 and vLLM use.

Every case runs N_PROMPTS prompts, each an image (random pixels, fixed seed) and a few words,
through vLLM's LLM.generate (greedy, top-K log-probabilities of every prompt position and every
generated token) and scores the same token ids and pixels with transformers in F32 on the same
folder; the measures and limits are check_vllm_generate.py's (top-1 agreement and the largest
log-probability difference, against 1.5 x the bf16 noise measured on the same prompts), and so
is its handling of vLLM's int8 activations for W4A16 on CPUs with AMX tiles.
"encoder-quantized": the same model converted with the language model's default ignores only
(`--no-default-ignore --ignore lm_head --ignore 're:.*embed_tokens$'`) and its convolution
ignored, as quench's planning error asks (no scheme quantizes a 4-D weight): quench's selection
for this model before the encoder default. vLLM must refuse it with the message of the
vision tower's position embedding (an nn.Embedding named `position_embedding`, which vLLM's
tower builds unquantized).
"""
import json
import os
import random
import sys

from check_vllm import in_engine_process
from check_vllm_generate import (TOP_K, amx_tiles, compare_hf, compare_vllm, fmt, limits,
                                 sequences, w4a8_view)

SEED = 20261207
N_PROMPTS = 48
MAX_TOKENS = 6
CASES = ["bf16", "W4A16", "W8A8"]
REFUSED = {"encoder-quantized": "There is no module or parameter named "
                                "'embeddings.position_embedding.weight_packed'"}


def make_model(out, minilm):
    import torch
    from transformers import (AutoTokenizer, Idefics3Config, Idefics3ForConditionalGeneration,
                              Idefics3Processor, Idefics3VisionConfig, LlamaConfig)
    from transformers.models.idefics3.image_processing_pil_idefics3 import (
        Idefics3ImageProcessorPil)
    tok = AutoTokenizer.from_pretrained(minilm)
    tok.add_special_tokens({"additional_special_tokens": [
        "<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]})
    # 32x32 pixels, one tile (no splitting), 8x8 patches merged 2x2: 4 image tokens.
    images = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": 32},
                                       max_image_size={"longest_edge": 32})
    Idefics3Processor(image_processor=images, tokenizer=tok, image_seq_len=4,
                      chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}"
                      ).save_pretrained(out)
    torch.manual_seed(SEED)
    vision = Idefics3VisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                  num_attention_heads=4, image_size=32, patch_size=8)
    text = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tok),
                       max_position_embeddings=512, bos_token_id=tok.cls_token_id,
                       eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
    cfg = Idefics3Config(vision_config=vision, text_config=text,
                         image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=2,
                         pad_token_id=tok.pad_token_id)
    Idefics3ForConditionalGeneration(cfg).to(torch.bfloat16).save_pretrained(out)


def prompts():
    """(text, image) pairs: the image token, then 3-8 words `w<number>` (number 2000-29999;
    MiniLM's tokenizer splits them into pieces), and 32x32 random pixels."""
    import numpy as np
    from PIL import Image
    rng = random.Random(SEED)
    pixels = np.random.default_rng(SEED)
    out = []
    for _ in range(N_PROMPTS):
        words = [f"w{rng.randrange(2000, 30000)}" for _ in range(rng.randrange(3, 9))]
        image = Image.fromarray((pixels.random((32, 32, 3)) * 255).astype("uint8"))
        out.append(("<image>" + " ".join(words), image))
    return out


def generate_run(folder):
    from vllm import LLM, SamplingParams
    llm = LLM(model=folder, enforce_eager=True, max_model_len=128, seed=SEED,
              limit_mm_per_prompt={"image": 1})
    sp = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, logprobs=TOP_K,
                        prompt_logprobs=TOP_K, ignore_eos=True)
    outs = llm.generate([{"prompt": t, "multi_modal_data": {"image": im}}
                         for t, im in prompts()], sp)
    llm.llm_engine.engine_core.shutdown()
    return sequences(outs)


def hf_logprobs(folder, seqs, dtype):
    """transformers' log-probabilities [positions, vocab] of each of vLLM's sequences (the
    prompt's ids as vLLM's processor made them, which must be the processor's here too, then
    the generated ids), with the prompt's image; the model in `dtype`, the result in F32."""
    import torch
    from transformers import AutoProcessor, Idefics3ForConditionalGeneration
    processor = AutoProcessor.from_pretrained(folder)
    model = Idefics3ForConditionalGeneration.from_pretrained(folder, dtype=dtype).eval()
    out = []
    with torch.no_grad():
        for (text, image), (ids, _) in zip(prompts(), seqs):
            inputs = processor(text=text, images=[image], return_tensors="pt")
            n = inputs["input_ids"].shape[1]
            if inputs["input_ids"][0].tolist() != ids[:n]:
                raise RuntimeError(f"{folder}: vLLM's prompt ids differ from the processor's")
            logits = model(input_ids=torch.tensor([ids[:-1]]),
                           pixel_values=inputs["pixel_values"].to(dtype),
                           pixel_attention_mask=inputs.get("pixel_attention_mask")).logits
            out.append(torch.log_softmax(logits[0].float(), dim=-1))
    return out


def measure(work):
    import torch
    # On CPUs with AMX tiles vLLM computes W4A16 layers with int8 activations (see
    # check_vllm_generate.py, INT4_SCHEMES): transformers then reads the folder as W4A8.
    w4a8 = amx_tiles() and os.environ.get("VLLM_CPU_INT4_W4A8", "1") != "0"
    results = {"host": {"int4_w4a8": w4a8}}
    for case in CASES + list(REFUSED):
        folder = os.path.join(work, f"idefics3-{case}")
        status, seqs = in_engine_process(generate_run, folder)
        if status == "error":
            results[f"idefics3-{case}"] = {"error": seqs}
            continue
        ref = w4a8_view(folder) if w4a8 and case == "W4A16" else folder
        hf32 = hf_logprobs(ref, seqs, torch.float32)
        r = {"vllm": compare_vllm(seqs, hf32), "reference_w4a8": ref != folder}
        r["hf_bf16"] = compare_hf(hf_logprobs(ref, seqs, torch.bfloat16), hf32)
        if case != "bf16":
            r["vllm_unq"] = compare_vllm(seqs, hf_logprobs(os.path.join(work, "idefics3-bf16"),
                                                           seqs, torch.float32))
        results[f"idefics3-{case}"] = r
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    return results


def judge(results):
    failures = []
    print("\n| case | vLLM vs transformers F32 (top-1 agreement, largest logprob difference) "
          "| limit | transformers BF16 vs F32 | vLLM vs unquantized | vLLM CPU message |")
    print("|---|---|---|---|---|---|")
    for case in CASES:
        r = results.get(f"idefics3-{case}", {"error": "not run"})
        if "error" in r:
            failures.append(f"idefics3-{case}: failed: {r['error']}")
            print(f"| {case} | - | - | - | - | {r['error']} |")
            continue
        limit = limits(results, "idefics3", case)
        agree, n, worst = r["vllm"]
        if agree < limit[0] or worst > limit[1]:
            failures.append(f"idefics3-{case}: {fmt(r['vllm'])} outside {limit[0]}/{n}, "
                            f"{limit[1]:.4f}")
        unq = fmt(r["vllm_unq"]) if "vllm_unq" in r else "-"
        note = ("vLLM's int8 activations (VLLM_CPU_INT4_W4A8); transformers: the same weights "
                "with W4A8's activations" if r.get("reference_w4a8") else "")
        print(f"| {case} | {fmt(r['vllm'])} | >= {limit[0]}/{n}, <= {limit[1]:.4f} | "
              f"{fmt(r['hf_bf16'])} | {unq} | {note} |")
    for case, expected in REFUSED.items():
        r = results.get(f"idefics3-{case}", {"error": "not run"})
        if expected not in r.get("error", ""):
            failures.append(f"idefics3-{case}: expected vLLM to refuse with '{expected}', "
                            f"got {r.get('error', 'a generation')}")
        print(f"| {case} | - | refused | - | - | {r.get('error', 'generated')} |")
    for f in failures:
        print("FAIL:", f)
    return failures


def main():
    if sys.argv[1] == "model":
        make_model(sys.argv[2], sys.argv[3])
        return
    sys.exit(1 if judge(measure(sys.argv[2])) else 0)


if __name__ == "__main__":
    main()
