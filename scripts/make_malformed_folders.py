#!/usr/bin/env python3
"""Writes data/malformed_folders/: checkpoint folders that are broken as a whole (each file
may be valid on its own), and expected.json with the error each must produce. Plain python3.
The fp8_* folders are FP8 (DeepSeek layout) sources whose scales contradict their weights or
hold values no multiplier can have (NaN, infinite, negative: found when the scale is read).
The awq_* and modelopt_* folders are AutoAWQ GEMM and ModelOpt NVFP4 sources with missing,
misshapen or mistyped tensors, bad scale values, or configs their tensors contradict.
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
    fp8_case("fp8_e5m2_fmt", "quantization_config.fmt 'e5m2': only E4M3 FP8 sources can be "
             "decoded", [w, ("x.weight_scale_inv", [2, 2], "F32", f32(1, 1, 1, 1))],
             code="unsupported", config=json.dumps({"quantization_config": {
                 "quant_method": "fp8", "fmt": "e5m2", "activation_scheme": "dynamic",
                 "weight_block_size": [128, 128]}}))
    fp8_case("fp8_unknown_quant_method", "quant_method 'gptq'", [one[0]], code="unsupported",
             config=json.dumps({"quantization_config": {"quant_method": "gptq", "bits": 4}}))

    # compressed-tensors sources: x is a 4 x 64 weight. W4A16-like group: int4 symmetric,
    # groups of 32, packed as 4 x 8 I32 words with weight_shape [4, 64] and a [4, 2] scale.
    def ct_config(weights=None, fmt="pack-quantized", targets=("Linear",), ignore=(),
                  inputs=None):
        wargs = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
                 "group_size": 32, "dynamic": False, "actorder": None}
        wargs.update(weights or {})
        return json.dumps({"quantization_config": {
            "quant_method": "compressed-tensors", "format": fmt, "ignore": list(ignore),
            "config_groups": {"group_0": {"targets": list(targets), "weights": wargs,
                                          "input_activations": inputs, "format": fmt}}}})

    packed = ("x.weight_packed", [4, 8], "I32", b"\x11" * 128)
    wshape = ("x.weight_shape", [2], "I64", struct.pack("<2q", 4, 64))

    def bf16s(*v):
        return b"".join(struct.pack("<f", x)[2:] for x in v)

    scale = ("x.weight_scale", [4, 2], "BF16", bf16s(*([0.5] * 8)))

    def ct_case(name, message, tensors, config=None, code="invalid-input"):
        fp8_case(name, message, tensors, code=code, config=config or ct_config())

    ct_case("ct_scale_missing", "'x.weight_packed' has no scale 'x.weight_scale'",
            [packed, wshape])
    ct_case("ct_scale_wrong_shape", "'x.weight_scale' has shape [4, 1]; its weight [4, 64]",
            [packed, wshape, ("x.weight_scale", [4, 1], "BF16", bf16s(1, 1, 1, 1))])
    ct_case("ct_scale_wrong_dtype", "'x.weight_scale' is I32 [4, 2]; pack-quantized scales are",
            [packed, wshape, ("x.weight_scale", [4, 2], "I32", b"\0" * 32)])
    ct_case("ct_packed_wrong_shape", "'x.weight_packed' is I32 [4, 8]; its group",
            [packed, ("x.weight_shape", [2], "I64", struct.pack("<2q", 4, 96)), scale])
    ct_case("ct_weight_shape_missing", "'x.weight_packed' has no 'x.weight_shape'",
            [packed, scale])
    ct_case("ct_zero_point_missing", "has no zero point 'x.weight_zero_point'",
            [packed, wshape, scale], config=ct_config({"symmetric": False}))
    ct_case("ct_zero_point_unexpected", "'x.weight_zero_point' is present but its group's "
            "weights are symmetric",
            [packed, wshape, scale, ("x.weight_zero_point", [1, 2], "I32", b"\0" * 8)])
    ct_case("ct_module_not_targeted", "module 'x' holds quantized tensors but no config group "
            "targets it", [packed, wshape, scale], config=ct_config(targets=["re:.*proj$"]))
    ct_case("ct_module_ignored", "module 'x' holds quantized tensors but the config's ignore "
            "list names it", [packed, wshape, scale], config=ct_config(ignore=["x"]))
    ct_case("ct_format_contradicts_weights", "format 'float-quantized' contradicts its weights",
            [packed, wshape, scale], config=ct_config(fmt="float-quantized"))
    ct_case("ct_fp8_weight_not_fp8", "'x.weight' is BF16 [4, 64]; its group (float-quantized",
            [("x.weight", [4, 64]), ("x.weight_scale", [4, 1], "BF16", bf16s(1, 1, 1, 1))],
            config=ct_config({"num_bits": 8, "type": "float", "strategy": "channel",
                              "group_size": None}, fmt="float-quantized",
                             inputs={"num_bits": 8, "type": "float", "strategy": "token",
                                     "dynamic": True, "symmetric": True}))
    # An empty weight (found by scripts/fuzz-convert: its scales' span was 0, and planning
    # divided by it).
    ct_case("ct_weight_empty", "'x.weight' is F8_E4M3 [4, 0]; its weight [4, 0] holds no "
            "element to decode",
            [("x.weight", [4, 0], "F8_E4M3", b""),
             ("x.weight_scale", [4, 1], "BF16", bf16s(1, 1, 1, 1))],
            config=ct_config({"num_bits": 8, "type": "float", "strategy": "channel",
                              "group_size": None}, fmt="float-quantized",
                             inputs={"num_bits": 8, "type": "float", "strategy": "token",
                                     "dynamic": True, "symmetric": True}))
    ct_case("ct_nvfp4_without_global_scale", "has no 'x.weight_global_scale'",
            [("x.weight_packed", [4, 32], "U8", b"\x22" * 128),
             ("x.weight_scale", [4, 4], "F8_E4M3", b"\x38" * 16)],
            config=ct_config({"num_bits": 4, "type": "float", "strategy": "tensor_group",
                              "group_size": 16}, fmt="nvfp4-pack-quantized"))
    ct_case("ct_scale_nan", "'x.weight_scale' holds a NaN scale at [1, 0]",
            [packed, wshape, ("x.weight_scale", [4, 2], "BF16",
                              bf16s(1, 1, float("nan"), 1, 1, 1, 1, 1))])
    ct_case("ct_scale_infinite", "'x.weight_scale' holds an infinite scale at [3, 0]",
            [packed, wshape, ("x.weight_scale", [4, 2], "BF16",
                              bf16s(1, 1, 1, 1, 1, 1, float("inf"), 1))])
    ct_case("ct_scale_negative", "'x.weight_scale' holds a negative scale at [2, 1]",
            [packed, wshape, ("x.weight_scale", [4, 2], "BF16",
                              bf16s(1, 1, 1, 1, 1, -1, 1, 1))])
    ct_case("ct_g_idx_out_of_range", "'x.weight_g_idx' holds 2 at [63], outside the 2 scale",
            [packed, wshape, scale,
             ("x.weight_g_idx", [64], "I32", struct.pack("<64i", *([0] * 63 + [2])))])
    # 3-D stacks (fused experts; compressed-tensors stores each expert's 2-D weight as a
    # slice of every tensor): x is 2 experts of [4, 64].
    packed3 = ("x.weight_packed", [2, 4, 8], "I32", b"\x11" * 256)
    wshape3 = ("x.weight_shape", [3], "I64", struct.pack("<3q", 2, 4, 64))
    ct_case("ct3d_scale_wrong_shape", "'x.weight_scale' has shape [4, 1]; its weight [4, 64] "
            "(pack-quantized) needs [4, 2] (in each expert's slice of the 2-expert stack "
            "x.weight_packed [2, 4, 8])",
            [packed3, wshape3, ("x.weight_scale", [2, 4, 1], "BF16", bf16s(*([1] * 8)))])
    ct_case("ct3d_scale_wrong_experts", "'x.weight_scale' is BF16 [3, 4, 2]; its weight "
            "'x.weight_packed' [2, 4, 8] is a stack of 2 experts, so it needs a leading "
            "dimension of 2",
            [packed3, wshape3, ("x.weight_scale", [3, 4, 2], "BF16", bf16s(*([1] * 24)))])
    ct_case("ct3d_scale_wrong_dtype", "'x.weight_scale' is I32 [4, 2]; pack-quantized scales "
            "are BF16, F16 or F32 (in each expert's slice",
            [packed3, wshape3, ("x.weight_scale", [2, 4, 2], "I32", b"\0" * 64)])
    ct_case("ct3d_weight_shape_experts", "'x.weight_shape' says 3 experts but "
            "'x.weight_packed' [2, 4, 8] stacks 2",
            [packed3, ("x.weight_shape", [3], "I64", struct.pack("<3q", 3, 4, 64)),
             ("x.weight_scale", [2, 4, 2], "BF16", bf16s(*([1] * 16)))])
    ct_case("ct_4d_weight", "'x.weight_packed' [1, 2, 4, 8]: a 4-D compressed-tensors weight; "
            "quench decodes 2-D weights and 3-D stacks of them",
            [("x.weight_packed", [1, 2, 4, 8], "I32", b"\x11" * 256), wshape, scale],
            code="unsupported")
    ct_case("ct_no_config_groups", "quantization_config (compressed-tensors) has no "
            "config_groups", [packed, wshape, scale],
            config=json.dumps({"quantization_config": {"quant_method": "compressed-tensors",
                                                       "format": "pack-quantized"}}))
    ct_case("ct_ignore_bad_regex", "quantization_config.ignore: 're:(x' is not a valid regex",
            [packed, wshape, scale], config=ct_config(ignore=["re:(x"]))
    ct_case("ct_group_without_size", "config_groups.group_0.weights: strategy group needs a "
            "positive group_size", [packed, wshape, scale],
            config=ct_config({"group_size": None}))
    ct_case("ct_strategy_unknown", "config_groups.group_0.weights.strategy 'row': quench "
            "decodes tensor, channel, group, tensor_group and block weights",
            [packed, wshape, scale], config=ct_config({"strategy": "row"}), code="unsupported")
    ct_case("ct_int16_weights", "config_groups.group_0.weights: 16-bit int weights cannot be "
            "decoded", [packed, wshape, scale], config=ct_config({"num_bits": 16}),
            code="unsupported")

    # AutoAWQ GEMM: x is a [16 out, 32 in] weight in one group of 32: qweight [32, 2] I32,
    # qzeros [1, 2] I32, scales [1, 16] F16 (1.0 = 0x3C00).
    def awq_config(**over):
        q = {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True,
             "version": "gemm"}
        q.update(over)
        return json.dumps({"quantization_config": q})

    qw = ("x.qweight", [32, 2], "I32", b"\x11" * 256)
    qz = ("x.qzeros", [1, 2], "I32", b"\x88" * 8)

    def f16s(n, at=None, bits=None):
        v = [0x3C00] * n
        if at is not None:
            v[at] = bits
        return struct.pack("<%dH" % n, *v)

    sc = ("x.scales", [1, 16], "F16", f16s(16))

    def awq_case(name, message, tensors, code="invalid-input", **over):
        fp8_case(name, message, tensors, code=code, config=awq_config(**over))

    awq_case("awq_missing_qzeros", "has no 'x.qzeros' in any shard", [qw, sc])
    awq_case("awq_missing_scales", "has no 'x.scales' in any shard", [qw, qz])
    awq_case("awq_qweight_wrong_dtype", "an AutoAWQ GEMM qweight is I32",
             [("x.qweight", [32, 2], "F32", b"\0" * 256), qz, sc])
    awq_case("awq_scales_wrong_dtype", "'x.scales' has dtype F32; AutoAWQ's scales is F16",
             [qw, qz, ("x.scales", [1, 16], "F32", b"\0" * 64)])
    awq_case("awq_qzeros_wrong_shape", "'x.qzeros' has shape [2, 2]; expected [1, 2]",
             [qw, ("x.qzeros", [2, 2], "I32", b"\x88" * 16), sc])
    awq_case("awq_group_size_contradicts_tensors", "'x.scales' has shape [1, 16]; expected [2, 16]",
             [qw, qz, sc], group_size=16)
    awq_case("awq_orphan_scales", "'y.scales' has no qweight beside it",
             [qw, qz, sc, ("y.scales", [1, 16], "F16", f16s(16))])
    awq_case("awq_scale_nan", "'x.scales' holds a NaN scale at [0, 3]",
             [qw, qz, ("x.scales", [1, 16], "F16", f16s(16, 3, 0x7E00))])
    awq_case("awq_scale_negative", "'x.scales' holds a negative scale at [0, 5]",
             [qw, qz, ("x.scales", [1, 16], "F16", f16s(16, 5, 0xBC00))])
    awq_case("awq_scale_infinite", "'x.scales' holds an infinite scale at [0, 7]",
             [qw, qz, ("x.scales", [1, 16], "F16", f16s(16, 7, 0x7C00))])
    awq_case("awq_gemv_version", "only the GEMM layout is read", [qw, qz, sc],
             code="unsupported", version="gemv")
    awq_case("awq_bits_8", "AutoAWQ quantization_config.bits 8: only 4-bit AWQ is read",
             [qw, qz, sc], code="unsupported", bits=8)
    awq_case("awq_group_size_per_channel", "AutoAWQ group_size -1: only positive multiples of "
             "8 are read (per-channel -1 is not)", [qw, qz, sc], code="unsupported",
             group_size=-1)
    awq_case("awq_inputs_not_whole_groups", "'x.qweight' [32, 2] has 32 inputs, not a multiple "
             "of the config's group_size 24", [qw, qz, sc], group_size=24)
    awq_case("awq_qzeros_without_zero_point", "'x.qzeros' is present but the config says "
             "zero_point false (the tensors contradict the config)", [qw, qz, sc],
             zero_point=False)
    awq_case("awq_no_qweight", "quant_method 'awq' but no tensor is an AutoAWQ qweight",
             [("y.weight", [4, 8])])

    # ModelOpt NVFP4: x is [16 out, 32 in]: weight U8 [16, 16], weight_scale F8_E4M3 [16, 2]
    # (0x38 = 1.0), weight_scale_2 and input_scale F32 scalars; hf_quant_config.json.
    def mo_files(tensors, algo="NVFP4", exclude=(), config_algo=None, kv=None, group_size=16):
        files = {"model.safetensors": tensors,
                 "hf_quant_config.json": json.dumps({"producer": {"name": "modelopt"},
                                                     "quantization": {
                                                         "quant_algo": algo,
                                                         "group_size": group_size,
                                                         "kv_cache_quant_algo": kv,
                                                         "exclude_modules": list(exclude)}})}
        if config_algo is not None:
            files["config.json"] = json.dumps({"quantization_config": {
                "quant_method": "modelopt", "quant_algo": config_algo}})
        return files

    mw = ("x.weight", [16, 16], "U8", b"\x22" * 256)
    ms = ("x.weight_scale", [16, 2], "F8_E4M3", b"\x38" * 32)
    ms2 = ("x.weight_scale_2", [], "F32", f32(0.01))
    mis = ("x.input_scale", [], "F32", f32(0.1))

    def mo_case(name, message, code="invalid-input", **kw):
        case(name, message, mo_files(**kw))
        expected[name]["code"] = code

    mo_case("modelopt_missing_weight_scale_2", "has no 'x.weight_scale_2' in any shard",
            tensors=[mw, ms, mis])
    mo_case("modelopt_weight_scale_wrong_shape", "'x.weight_scale' has shape [16, 1]; expected [16, 2]",
            tensors=[mw, ("x.weight_scale", [16, 1], "F8_E4M3", b"\x38" * 16), ms2, mis])
    mo_case("modelopt_weight_scale_wrong_dtype", "NVFP4's weight_scale is F8_E4M3",
            tensors=[mw, ("x.weight_scale", [16, 2], "F32", b"\0" * 128), ms2, mis])
    mo_case("modelopt_weight_scale_2_nan", "'x.weight_scale_2' is nan; a ModelOpt per-tensor "
            "scale must be finite and positive", tensors=[mw, ms, ("x.weight_scale_2", [], "F32", f32(float("nan"))), mis])
    mo_case("modelopt_input_scale_negative", "'x.input_scale' is -0.100000; a ModelOpt",
            tensors=[mw, ms, ms2, ("x.input_scale", [], "F32", f32(-0.1))])
    mo_case("modelopt_weight_scale_nan", "'x.weight_scale' holds a NaN scale at [3, 1]",
            tensors=[mw, ("x.weight_scale", [16, 2], "F8_E4M3", b"\x38" * 7 + b"\x7f" + b"\x38" * 24), ms2, mis])
    mo_case("modelopt_weight_scale_negative", "'x.weight_scale' holds a negative scale at [0, 0]",
            tensors=[mw, ("x.weight_scale", [16, 2], "F8_E4M3", b"\xb8" + b"\x38" * 31), ms2, mis])
    mo_case("modelopt_excluded_module_quantized", "its module is in exclude_modules ('x')",
            tensors=[mw, ms, ms2, mis], exclude=["x"])
    mo_case("modelopt_orphan_scale", "'y.weight_scale_2' has no NVFP4 weight",
            tensors=[mw, ms, ms2, mis, ("y.weight_scale_2", [], "F32", f32(0.01))])
    mo_case("modelopt_fp8_algo", "ModelOpt quant_algo 'FP8': only NVFP4", code="unsupported",
            tensors=[mw, ms, ms2, mis], algo="FP8")
    mo_case("modelopt_configs_disagree", "config.json's quant_algo 'FP8' contradicts "
            "hf_quant_config.json's 'NVFP4'", tensors=[mw, ms, ms2, mis], config_algo="FP8")
    # FP8 KV-cache scales (ModelOpt: F32 0-dim k_scale under k_proj, v_scale under v_proj).
    mo_case("modelopt_kv_scale_without_algo", "'x.k_scale' is a KV-cache scale but the "
            "config's kv_cache_quant_algo is not FP8",
            tensors=[mw, ms, ms2, mis, ("x.k_scale", [], "F32", f32(0.05))])
    mo_case("modelopt_kv_scale_nan", "'x.k_scale' is nan; a ModelOpt per-tensor scale must be "
            "finite and positive",
            tensors=[mw, ms, ms2, mis, ("x.k_scale", [], "F32", f32(float("nan")))], kv="FP8")
    mo_case("modelopt_kv_scale_orphan", "'y.v_scale' has no NVFP4 weight 'y.weight' to go "
            "with it", tensors=[mw, ms, ms2, mis, ("y.v_scale", [], "F32", f32(0.05))], kv="FP8")
    mo_case("modelopt_group_size_32", "group_size 32; NVFP4 has one scale per 16 inputs",
            tensors=[mw, ms, ms2, mis], group_size=32)
    mo_case("modelopt_weight_missing", "'x.weight_scale' has no 'x.weight' beside it",
            tensors=[ms, ms2, mis])
    mo_case("modelopt_weight_not_u8", "'x.weight' is BF16 [16, 32]; a ModelOpt NVFP4 weight is "
            "U8 [out, in / 2] (two FP4 codes a byte)", tensors=[("x.weight", [16, 32]), ms, ms2, mis])
    mo_case("modelopt_weight_scale_2_not_scalar", "'x.weight_scale_2' is F32 [2]; ModelOpt "
            "writes one F32 value", tensors=[mw, ms, ("x.weight_scale_2", [2], "F32",
                                                      f32(0.01, 0.01)), mis])
    mo_case("modelopt_no_nvfp4_weight", "quant_algo NVFP4 but no tensor is an NVFP4 weight "
            "with a weight_scale", tensors=[("y.weight", [4, 8])], config_algo="NVFP4")
    mo_case("modelopt_kv_algo_int8", "kv_cache_quant_algo 'INT8': only FP8 KV-cache scales",
            code="unsupported", tensors=[mw, ms, ms2, mis], kv="INT8")
    with open(os.path.join(ROOT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
