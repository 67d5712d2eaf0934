// Tensor descriptors read from or written to safetensors headers. No data lives here.
#ifndef QUENCH_TENSOR_H_
#define QUENCH_TENSOR_H_

#include <cstdint>
#include <string>
#include <vector>

#include "quench/dtype.h"

namespace quench {

struct TensorInfo {
  std::string name;
  DType dtype = DType::kBF16;
  std::vector<uint64_t> shape;
  // Byte offsets relative to the start of the data section, as in the header.
  uint64_t begin = 0;
  uint64_t end = 0;

  uint64_t nbytes() const { return end - begin; }
  uint64_t numel() const {
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    return n;
  }
};

// "[d0, d1, ...]", as Python prints a shape tuple's elements, for messages and tables.
std::string ShapeString(const std::vector<uint64_t>& shape);


}  // namespace quench

#endif  // QUENCH_TENSOR_H_
