#!/usr/bin/env python3
"""Writes data/malformed_folders/: checkpoint folders that are broken as a whole (each file
may be valid on its own), and expected.json with the error each must produce. Plain python3.
The fp8_* folders are FP8 (DeepSeek layout) sources whose scales contradict their weights or
hold values no multiplier can have (NaN, infinite, negative: found when the scale is read).
"""
import json
import os
import shutil
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "malformed_folders")


def shard(path, tensors):
    """tensors: list of (name, shape) (BF16 zeros) or (name, shape, dtype, data bytes)."""
    header, off, data = {}, 0, b""
    for t in tensors:
        name, shape = t[0], t[1]
        n = 2
        for d in shape:
            n *= d
        dtype, raw = (t[2], t[3]) if len(t) == 4 else ("BF16", b"\0" * n)
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)


def main():
    shutil.rmtree(ROOT, ignore_errors=True)
    expected = {}

    def case(name, message, files):
        d = os.path.join(ROOT, name)
        os.makedirs(d)
        for fname, content in files.items():
            p = os.path.join(d, fname)
            if isinstance(content, list):
                shard(p, content)
            else:
                with open(p, "w") as f:
                    f.write(content)
        expected[name] = {"code": "invalid-input", "message_contains": message}

    one = [("a.weight", [4, 8])]
    case("index_names_missing_file", "'model-2.safetensors', which does not exist",
         {"model-1.safetensors": one,
          "model.safetensors.index.json":
              json.dumps({"metadata": {}, "weight_map": {"a.weight": "model-2.safetensors"}})})
    case("index_names_missing_tensor", "tensor 'b.weight' is mapped to 'model-1.safetensors', which does not hold it",
         {"model-1.safetensors": one,
          "model.safetensors.index.json":
              json.dumps({"metadata": {}, "weight_map": {"a.weight": "model-1.safetensors",
                                                         "b.weight": "model-1.safetensors"}})})
    case("index_without_weight_map", "no \"weight_map\" object",
         {"model-1.safetensors": one,
          "model.safetensors.index.json": json.dumps({"metadata": {}})})
    case("index_not_json", "model.safetensors.index.json",
         {"model-1.safetensors": one, "model.safetensors.index.json": "{\"weight_map\": "})
    case("tensor_in_two_shards", "appears in both",
         {"model-1.safetensors": one, "model-2.safetensors": one})
    case("config_not_json", "config.json",
         {"model.safetensors": one, "config.json": "{not json"})
    case("no_safetensors", "no .safetensors files", {"config.json": "{}"})

    # FP8 sources: a 200 x 130 E4M3 weight (code 0x38 = 1.0) in 128 x 128 blocks, so its
    # weight_scale_inv is [2, 2] F32.
    fp8_config = json.dumps({"quantization_config": {
        "quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
        "weight_block_size": [128, 128]}})
    w = ("x.weight", [200, 130], "F8_E4M3", b"\x38" * (200 * 130))

    def f32(*v):
        return struct.pack("<%df" % len(v), *v)

    def fp8_case(name, message, tensors, code="invalid-input", config=fp8_config):
        case(name, message, {"config.json": config, "model.safetensors": tensors})
        expected[name]["code"] = code

    fp8_case("fp8_weight_without_scale",
             "FP8 tensor 'x.weight' has no 'x.weight_scale_inv' in any shard", [w])
    fp8_case("fp8_scale_wrong_shape", "'x.weight_scale_inv' has shape [1, 2]; expected [2, 2]",
             [w, ("x.weight_scale_inv", [1, 2], "F32", f32(1, 1))])
    fp8_case("fp8_scale_wrong_dtype", "an FP8 weight's scale must be F32, BF16 or F8_E8M0",
             [w, ("x.weight_scale_inv", [2, 2], "I32", b"\0" * 16)])
    fp8_case("fp8_scale_nan", "'x.weight_scale_inv' holds a NaN scale at [1, 0]",
             [w, ("x.weight_scale_inv", [2, 2], "F32", f32(1, 1, float("nan"), 1))])
    fp8_case("fp8_scale_negative", "'x.weight_scale_inv' holds a negative scale at [0, 1]",
             [w, ("x.weight_scale_inv", [2, 2], "F32", f32(1, -0.5, 1, 1))])
    fp8_case("fp8_scale_infinite", "'x.weight_scale_inv' holds an infinite scale at [1, 1]",
             [w, ("x.weight_scale_inv", [2, 2], "F32", f32(1, 1, 1, float("inf")))])
    fp8_case("fp8_e8m0_scale_nan", "'x.weight_scale_inv' holds a NaN scale at [0, 0]",
             [w, ("x.weight_scale_inv", [2, 2], "F8_E8M0", bytes([0xFF, 127, 127, 127]))])
    fp8_case("fp8_unknown_quant_method", "quant_method 'awq'", [one[0]], code="unsupported",
             config=json.dumps({"quantization_config": {"quant_method": "awq", "bits": 4}}))
    with open(os.path.join(ROOT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
