// What the int kernel suites (tests/test_int_kernels.cc, tests/test_int_colscale.cc) share:
// a layout, one chunk run through the kernel or the scalar definition into outputs sized as
// int.h lays them out, each followed by guard bytes that catch overruns.
#ifndef QUENCH_TESTS_INT_KERNEL_RUN_H_
#define QUENCH_TESTS_INT_KERNEL_RUN_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernel_test_util.h"
#include "schemes/int.h"

namespace quench::intq {
namespace testing_int {

using quench::testing::ElemBytes;
using quench::testing::kGuard;
using quench::testing::kGuardBytes;

struct Config {
  int bits;
  int group_size;  // 0: channel
  bool symmetric;
  bool packed;
};

inline size_t CeilDiv(size_t a, size_t b) { return (a + b - 1) / b; }

struct Sizes {
  size_t values, scales, zps;
};

// Byte sizes of a chunk's outputs (int.h): unpacked int8 values or packed int32 words;
// scales [rows, n_groups] in D; zero points int8 [rows, n_groups] or packed down dim 0.
inline Sizes OutputSizes(const Config& cfg, DType d, size_t rows, size_t cols) {
  const size_t n_groups = cfg.group_size > 0 ? cols / cfg.group_size : 1;
  Sizes s;
  s.values = cfg.packed ? rows * CeilDiv(cols * cfg.bits, 32) * 4 : rows * cols;
  s.scales = rows * n_groups * ElemBytes(d);
  s.zps = cfg.symmetric ? 0
          : cfg.packed  ? CeilDiv(rows * cfg.bits, 32) * n_groups * 4
                        : rows * n_groups;
  return s;
}

struct Outputs {
  std::vector<uint8_t> values, scales, zps;
  bool ok = false;
  // Equal when both refuse, or both quantize to the same bytes (guards included).
  bool operator==(const Outputs& o) const {
    return ok == o.ok && (!ok || (values == o.values && scales == o.scales && zps == o.zps));
  }
};

inline WeightChunk MakeChunk(const uint8_t* data, DType d, size_t rows, size_t cols,
                             const Config& cfg) {
  WeightChunk in;
  in.data = data;
  in.dtype = d;
  in.rows = rows;
  in.cols = cols;
  in.params.bits = cfg.bits;
  in.params.group_size = cfg.group_size;
  in.params.symmetric = cfg.symmetric;
  return in;
}

// The kernel (QuantizePacked / QuantizeUnpacked) or the scalar definition on `in`.
inline Outputs Run(const Config& cfg, bool kernel, const WeightChunk& in) {
  const Sizes s = OutputSizes(cfg, in.dtype, in.rows, in.cols);
  Outputs o;
  o.values.assign(s.values + kGuardBytes, kGuard);
  o.scales.assign(s.scales + kGuardBytes, kGuard);
  o.zps.assign(s.zps + kGuardBytes, kGuard);
  ChunkOutputs out;
  out.out[0] = o.values.data();
  out.out[1] = o.scales.data();
  out.out[2] = o.zps.data();
  if (cfg.packed) {
    o.ok = kernel ? QuantizePacked(in, out) : QuantizePackedScalar(in, out);
  } else {
    o.ok = kernel ? QuantizeUnpacked(in, out) : QuantizeUnpackedScalar(in, out);
  }
  return o;
}

}  // namespace testing_int
}  // namespace quench::intq

#endif  // QUENCH_TESTS_INT_KERNEL_RUN_H_
