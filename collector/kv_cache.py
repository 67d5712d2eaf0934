"""Key and value ranges for FP8 KV-cache scales (collect-stats --kv-cache).

llm-compressor 0.14.0.1 calibrates `k_scale` / `v_scale` where compressed-tensors 0.19.0's
QuantizedKVCache sits: in place of the attention's `past_key_values.update(key_states,
value_states, layer_idx)` call (compressed_tensors/modeling/kvcache.py), so it observes the
keys after the model's k_norm (Qwen3) and rotary embedding, and the values as v_proj made them,
both [batch, kv_heads, seq, head_dim]; its TENSOR observer flattens them to
[batch * seq, kv_heads * head_dim] (observers/helpers.py::_flatten_attention). This module
records the same tensors at the same call: a DynamicCache whose `update` first adds them to two
output sites per attention layer, `<attention>.k_cache` and `<attention>.v_cache` (per channel
= kv_heads * head_dim features; count, sums, min and max like an input site; no consumers),
with the batch's padding rows removed as for input sites.
"""


def attention_layers(model) -> dict[int, str]:
    """layer_idx -> the attention module's name, for modules transformers gives a KV cache."""
    out = {}
    for name, mod in model.named_modules():
        idx = getattr(mod, "layer_idx", None)
        if isinstance(idx, int) and any(hasattr(mod, p) for p in ("k_proj", "qkv_proj", "kv_b_proj")):
            out[idx] = name
    return out


def recording_cache(model, col):
    """A DynamicCache that records every key/value update into the collector's sites."""
    from transformers import DynamicCache

    layers = attention_layers(model)
    if not layers:
        raise SystemExit("collect-stats: --kv-cache: the model has no attention layer with a KV "
                         "cache (k_proj/qkv_proj/kv_b_proj and a layer_idx)")

    class RecordingCache(DynamicCache):
        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            name = layers[layer_idx]
            for kind, s in (("k", key_states), ("v", value_states)):
                b, h, t, d = s.shape
                x = s.transpose(1, 2).reshape(b * t, h * d)
                if x.shape[0] == col.mask_flat.shape[0] and not col.all_rows:
                    x = x[col.mask_flat]
                col._site(f"{name}.{kind}_cache", h * d).add(x)
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    try:
        return RecordingCache(config=model.config)
    except TypeError:
        return RecordingCache()
