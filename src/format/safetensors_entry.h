// One tensor's entry of a safetensors header, parsed and checked as the Rust crate does
// (dtype, shape and data_offsets fields; the byte count from shape and dtype), and the message
// helpers the header reader (safetensors.cc) shares with it. Private to
// src/format/safetensors*.cc; the API is format/safetensors.h.
#ifndef QUENCH_FORMAT_SAFETENSORS_ENTRY_H_
#define QUENCH_FORMAT_SAFETENSORS_ENTRY_H_

#include <simdjson.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "format/safetensors.h"
#include "quench/status.h"

namespace quench::safetensors_internal {

// A name for a one-line message: control bytes as \xNN.
std::string Printable(std::string_view s);
// "data_offsets [begin, end]".
std::string OffsetsString(uint64_t begin, uint64_t end);
// "label: rule" (kInvalidInput).
Status HeaderError(std::string_view label, std::string_view rule);
// "label: tensor 'name': rule".
Status TensorError(std::string_view label, std::string_view name, std::string_view rule,
                   ErrorCode code = ErrorCode::kInvalidInput);
// A JSON value's type for messages ("an array", "null", ...).
const char* TypeName(simdjson::dom::element_type t);

// The entry `value` of tensor `name` into info's dtype, shape, begin and end, with the crate's
// rules (see safetensors.cc); an error names `label` and the tensor.
Status ParseTensorEntry(std::string_view label, std::string_view name,
                        simdjson::dom::element value, TensorInfo& info);

// The header's tensors and metadata read with simdjson's DOM into `header` (whose header_len
// and data_start are set), every rule checked but the tiling; an error names `label`.
Status ParseHeaderDom(std::string_view label, const simdjson::padded_string& json,
                      uint64_t data_len, SafetensorsHeader& header);

// The same with simdjson's On-Demand front end (safetensors_ondemand.cc), for headers the DOM
// reader accepts: true with the same tensors and metadata, or false (header left partly
// filled) where it finds anything it does not read exactly as the DOM reader does, or that the
// DOM reader refuses; the caller then reads the header with ParseHeaderDom.
bool ParseHeaderOnDemand(const simdjson::padded_string& json, uint64_t data_len,
                         SafetensorsHeader& header);

}  // namespace quench::safetensors_internal

#endif  // QUENCH_FORMAT_SAFETENSORS_ENTRY_H_
