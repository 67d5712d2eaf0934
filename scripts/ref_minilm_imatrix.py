#!/usr/bin/env python3
"""llm-compressor's own imatrix_mse observer on all-MiniLM-L6-v2 (docs/convert-reference.md
"imatrix_mse and Wanda"): oneshot with a QuantizationModifier whose weights (int4 symmetric,
group 128: W4A16) use observer "imatrix_mse", calibrated on the same samples collect-stats reads
(the text's paragraphs, first N, truncated to L tokens), saved compressed (pack-quantized) so
that scripts/eval_minilm_calib.py decodes it as it decodes quench's outputs.

--scheme NVFP4A16 (or MXFP4A16, NVFP4) takes compressed-tensors' preset of that name instead,
with the same observer on its weights (NVFP4's input_global_scale then comes from the
preset's own activation observer).

Usage (reference venv): python scripts/ref_minilm_imatrix.py MODEL_DIR CALIB_TXT OUT_DIR
       [--samples 256] [--seq-len 128] [--observer imatrix_mse] [--scheme W4A16]
"""
import time

from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
from compressed_tensors.quantization.quant_scheme import preset_name_to_scheme
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import QuantizationModifier

from ref_minilm_calib import (  # the collector's own sampling
    add_sampling_args, calib_argparser, load_calibration, save_compressed)


def main():
    p = calib_argparser()
    add_sampling_args(p)
    p.add_argument("--observer", default="imatrix_mse")
    p.add_argument("--scheme", default="W4A16")
    a = p.parse_args()
    tok, seqs, ds, model = load_calibration(a.model, a.calib, a.samples, a.seq_len)
    if a.scheme == "W4A16":
        scheme = QuantizationScheme(
            targets=["Linear"],
            weights=QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group",
                                     group_size=128, observer=a.observer))
    else:
        scheme = preset_name_to_scheme(a.scheme, ["Linear"])
        scheme.weights = scheme.weights.model_copy(update={"observer": a.observer})
    mod = QuantizationModifier(config_groups={"group_0": scheme})
    t0 = time.time()
    oneshot(model=model, dataset=ds, recipe=[mod], num_calibration_samples=len(seqs),
            processor=tok, max_seq_length=a.seq_len, pipeline="basic", batch_size=1)
    took = time.time() - t0
    save_compressed(model, tok, a.out)
    print(f"oneshot ({a.scheme}, {a.observer}, {len(seqs)} samples) took {took:.1f} s -> {a.out}")


if __name__ == "__main__":
    main()
