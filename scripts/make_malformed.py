#!/usr/bin/env python3
"""Writes data/malformed/: one small file per way a safetensors file can be broken, plus
expected.json mapping each file name to the error quench must report:
{"code": "<ErrorCodeName>", "message_contains": "<substring>"}.

Plain python3, no third-party packages. The rules are those of the Rust crate's reader
(safetensors/src/tensor.rs read_metadata / Metadata::validate and its serde derives); each case
below was also checked to be rejected by safetensors 0.8.0's safe_open, except where noted.
"""
import json
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "malformed")

cases = {}


def raw(name, data, contains, code="invalid-input"):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
    cases[name] = {"code": code, "message_contains": contains}


def st(name, header, data_len, contains, code="invalid-input", pad=True):
    """A file whose header is `header` (str or bytes), space-padded to 8 like the writer, followed
    by `data_len` data bytes."""
    h = header.encode("utf-8") if isinstance(header, str) else header
    if pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    data = bytes(i % 251 for i in range(data_len))
    raw(name, struct.pack("<Q", len(h)) + h + data, contains, code)


def entry(dtype="U8", shape=(2,), offsets=(0, 2)):
    return '{"dtype":"%s","shape":%s,"data_offsets":%s}' % (
        dtype, json.dumps(list(shape)).replace(" ", ""), json.dumps(list(offsets)).replace(" ", ""))


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))

    # --- the 8-byte length prefix -------------------------------------------------------------
    raw("file_too_short.safetensors", b"\x05\x00\x00", "too short for the 8-byte header length")
    raw("header_len_past_eof.safetensors",
        struct.pack("<Q", 1000) + b'{"a":' + b" " * 87, "runs past the end of the file")
    raw("header_len_zero.safetensors", struct.pack("<Q", 0), "too small to hold a JSON object")
    raw("header_len_one.safetensors", struct.pack("<Q", 1) + b"{",
        "too small to hold a JSON object")
    raw("header_len_too_large.safetensors", struct.pack("<Q", 200_000_000) + b"{}      ",
        "exceeds the limit of 100000000 bytes")
    raw("header_len_u64_max.safetensors", b"\xff" * 8 + b"{}      ", "exceeds the limit")

    # --- the header as JSON -------------------------------------------------------------------
    st("header_not_json.safetensors", "this is not json", 0, "not valid JSON")
    st("header_truncated_json.safetensors", '{"a":{"dtype":"U8","shape":[2],', 0, "not valid JSON")
    # The writer pads with spaces; NUL padding is "trailing characters" to serde_json.
    st("header_nul_padding.safetensors", '{"a":' + entry() + "}\0\0\0", 2, "not valid JSON",
       pad=False)
    st("header_trailing_garbage.safetensors", '{"a":' + entry() + "}x", 2, "not valid JSON")
    st("header_array.safetensors", "[]", 0, "header is an array, expected a JSON object")
    st("header_string.safetensors", '"hello"', 0, "header is a string, expected a JSON object")
    st("non_utf8_name.safetensors", b'{"a\xff":' + entry().encode() + b"}", 2, "not valid UTF-8")
    st("overlong_utf8_name.safetensors", b'{"\xc0\xaf":' + entry().encode() + b"}", 2,
       "not valid UTF-8")
    st("lone_surrogate_name.safetensors", '{"a\\ud800":' + entry() + "}", 2, "not valid JSON")
    # Longer names made std::regex (target and ignore matching) overflow the stack.
    st("tensor_name_too_long.safetensors", '{"' + "a" * 4097 + '":' + entry() + "}", 2,
       "tensor name of 4097 bytes (starting 'aaaa")
    st("big_int_shape.safetensors",
       '{"a":{"dtype":"U8","shape":[18446744073709551616],"data_offsets":[0,2]}}', 2,
       "integers must fit in 64 bits")

    # --- __metadata__ -------------------------------------------------------------------------
    st("metadata_not_string_map.safetensors", '{"__metadata__":{"format":"pt","n":1}}', 0,
       "__metadata__ entry 'n' is an integer, expected a string")
    st("metadata_array.safetensors", '{"__metadata__":["pt"]}', 0,
       "__metadata__ is an array, expected an object")
    st("metadata_duplicate.safetensors", '{"__metadata__":{},"__metadata__":{}}', 0,
       "duplicate key '__metadata__'")

    # --- one tensor entry ---------------------------------------------------------------------
    st("tensor_entry_null.safetensors", '{"a":null}', 0, "tensor 'a': entry is null")
    st("unknown_dtype.safetensors", '{"a":' + entry(dtype="Q8") + "}", 2,
       "tensor 'a': unknown dtype 'Q8'")
    st("lowercase_dtype.safetensors", '{"a":' + entry(dtype="bf16") + "}", 2,
       "unknown dtype 'bf16'")
    st("dtype_not_string.safetensors", '{"a":{"dtype":5,"shape":[2],"data_offsets":[0,2]}}', 2,
       "dtype is an integer, expected a string")
    # Valid for the crate but not modelled by quench.
    st("dtype_fnuz_unsupported.safetensors", '{"a":' + entry(dtype="F8_E4M3FNUZ") + "}", 2,
       "dtype 'F8_E4M3FNUZ' is not supported", code="unsupported")
    st("missing_dtype.safetensors", '{"a":{"shape":[2],"data_offsets":[0,2]}}', 2,
       "missing field 'dtype'")
    st("missing_shape.safetensors", '{"a":{"dtype":"U8","data_offsets":[0,2]}}', 2,
       "missing field 'shape'")
    st("missing_data_offsets.safetensors", '{"a":{"dtype":"U8","shape":[2]}}', 2,
       "missing field 'data_offsets'")
    st("duplicate_field.safetensors",
       '{"a":{"dtype":"U8","dtype":"U8","shape":[2],"data_offsets":[0,2]}}', 2,
       "duplicate field 'dtype'")
    st("shape_not_array.safetensors", '{"a":{"dtype":"U8","shape":"2","data_offsets":[0,2]}}', 2,
       "shape is a string, expected an array")
    st("negative_shape.safetensors", '{"a":' + entry(shape=(-2,)) + "}", 2,
       "shape entry -2 is not a non-negative integer")
    st("float_shape.safetensors", '{"a":{"dtype":"U8","shape":[2.0],"data_offsets":[0,2]}}', 2,
       "shape entry 2.0 is not a non-negative integer")
    st("bool_shape.safetensors", '{"a":{"dtype":"U8","shape":[true],"data_offsets":[0,2]}}', 2,
       "shape entry true is not a non-negative integer")
    st("shape_overflow.safetensors",
       '{"a":' + entry(shape=(4294967296, 4294967296, 2), offsets=(0, 2)) + "}", 2,
       "element count overflows 64 bits")
    st("byte_count_overflow.safetensors",
       '{"a":' + entry(dtype="F32", shape=(1 << 62,), offsets=(0, 4)) + "}", 4,
       "byte count overflows 64 bits")
    st("byte_count_mismatch.safetensors",
       '{"a.weight":' + entry(dtype="BF16", shape=(2, 3), offsets=(0, 10)) + "}", 10,
       "tensor 'a.weight': shape [2, 3] of BF16 needs 12 bytes but data_offsets [0, 10] span 10")
    st("subbyte_not_byte_aligned.safetensors",
       '{"a":' + entry(dtype="F4", shape=(3,), offsets=(0, 2)) + "}", 2,
       "3 elements of F4 do not fill whole bytes")
    st("offsets_three.safetensors", '{"a":' + entry(offsets=(0, 2, 2)) + "}", 2,
       "is not a pair [begin, end]")
    st("offsets_negative.safetensors", '{"a":' + entry(offsets=(-1, 1)) + "}", 2,
       "is not a pair [begin, end]")
    st("offsets_begin_after_end.safetensors", '{"a":' + entry(shape=(0,), offsets=(4, 2)) + "}", 4,
       "data_offsets [4, 2] begin is past end")

    # --- offsets against the data section and each other --------------------------------------
    st("offsets_out_of_range.safetensors",
       '{"a.weight":' + entry(shape=(100,), offsets=(0, 100)) + "}", 96,
       "tensor 'a.weight': data_offsets [0, 100] end past the data section (96 bytes")
    st("truncated_data.safetensors",
       '{"a":' + entry(dtype="F32", shape=(4, 4), offsets=(0, 64)) + "}", 10, "file truncated")
    st("gap_between_tensors.safetensors",
       '{"a":' + entry() + ',"b":' + entry(offsets=(3, 5)) + "}", 5,
       "tensor 'b': data_offsets [3, 5] leaves a gap")
    st("gap_at_start.safetensors", '{"a":' + entry(offsets=(2, 4)) + "}", 4,
       "data bytes [0, 2) belong to no tensor")
    st("overlap_between_tensors.safetensors",
       '{"a":' + entry() + ',"b":' + entry(offsets=(1, 3)) + "}", 3,
       "tensor 'b': data_offsets [1, 3] overlaps tensor 'a'")
    st("empty_tensor_inside_another.safetensors",
       '{"a":' + entry() + ',"z":' + entry(shape=(0,), offsets=(1, 1)) + "}", 2, "overlaps tensor")
    st("trailing_data_bytes.safetensors", '{"a":' + entry() + "}", 3,
       "tensors cover 2 bytes but the data section has 3 (trailing bytes")
    st("no_tensors_trailing_bytes.safetensors", "{}", 5, "trailing bytes")
    st("duplicate_tensor_names.safetensors",
       '{"a":' + entry() + ',"a":' + entry(offsets=(2, 4)) + "}", 4,
       "tensor 'a': duplicate tensor name")

    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(cases, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
