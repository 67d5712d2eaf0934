#!/usr/bin/env python3
"""Writes data/malformed_folders/: checkpoint folders that are broken as a whole (each file
may be valid on its own), and expected.json with the error each must produce. Plain python3.
"""
import json
import os
import shutil
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "malformed_folders")


def shard(path, tensors):
    """tensors: list of (name, shape); BF16 zeros."""
    header, off = {}, 0
    for name, shape in tensors:
        n = 2
        for d in shape:
            n *= d
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"\0" * off)


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
    with open(os.path.join(ROOT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
