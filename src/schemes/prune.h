// Magnitude pruning, the optional step before quantization (`--prune`). It works on whole rows
// of one 2-D weight (BF16, F16 or F32, raw little-endian bytes), in place or from read-only rows
// into another buffer: pruned elements become +0 (bit pattern 0), everything else is left bit
// for bit as it was, so the quantization kernels that run next see exact zeros (which every
// scheme maps to an exact zero: symmetric scales give q = 0, asymmetric ones round 0/s to 0
// before adding the zero point) and the pruned checkpoint is stored dense.
//
// Order and ties (one rule for every mode): elements are ordered by the key
// (|x|, position), where |x| is the magnitude bit pattern (sign bit cleared, so -0 == +0 and
// integer order equals value order for finite IEEE values) and position is the column within
// the row (per-row and N:M) or the row-major index within the tensor (per-tensor). The k
// smallest keys are pruned. So among equal magnitudes the element with the LOWER position is
// pruned first and the higher one kept. This is what llm-compressor's Wanda does per row (a
// stable ascending sort, then the first int(cols * sparsity) indices are pruned); torch.topk,
// which MagnitudePruningModifier and SparseGPT's N:M use, has no specified tie order, and
// MagnitudePruningModifier prunes every element tied at the threshold (docs/reference-notes.md
// section 15).
//
// Rounding: k = floor(fraction * n) computed in double precision, the same as Python's
// int(sparsity * n) in llm-compressor (n = cols per row, rows * cols per tensor). Fraction 0
// prunes nothing. N:M keeps the N largest of every M consecutive columns (prunes M - N).
//
// Selection never sorts a row. Unstructured rows use a two-level select: a counting pass over
// the high bits of the magnitude (|x| >> 4 for BF16/F16, >> 20 for F32: 2048 bins; 256 bins
// for rows under 2048 columns) finds the one bin holding the k-th smallest, then
// std::nth_element runs on a compacted copy of just that bin's elements (a small part of the
// row), and a branch-free pass zeroes |x| < T plus the first `need` elements equal to T. N:M
// ranks each element in its group by counting smaller keys (for 16-bit N:4, SWAR arithmetic on
// 64-bit words, run on every u64 lane of a Highway vector). Per-tensor granularity finds the
// exact threshold with a histogram pre-pass (see MagnitudeHistogram).
#ifndef QUENCH_SCHEMES_PRUNE_H_
#define QUENCH_SCHEMES_PRUNE_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "quench/dtype.h"
#include "quench/status.h"

namespace quench::prune {

inline constexpr int kMaxGroup = 16;  // largest M accepted for N:M

struct PruneSpec {
  enum Kind { kNone, kUnstructured, kNM };
  Kind kind = kNone;
  double fraction = 0.0;    // kUnstructured: fraction of elements pruned, in [0, 1)
  int n = 0, m = 0;         // kNM: keep n of every m consecutive columns, 1 <= n <= m <= 16
  bool per_tensor = false;  // kUnstructured only: one threshold for the whole tensor
};

// "unstructured:0.5", "2:4", any "N:M" (decimal integers), or "none". Errors are kUsage with a
// one-line message naming the text. per_tensor is left false (see ApplyGranularity).
Result<PruneSpec> ParsePruneSpec(std::string_view text);

// `--prune-granularity`: "row" (default) or "tensor"; "tensor" is only valid for unstructured.
Status ApplyGranularity(std::string_view text, PruneSpec* spec);

// For the planner: kUnsupported unless cols is a multiple of M (N:M) and the tensor is 2-D.
Status CheckShape(const PruneSpec& spec, uint64_t rows, uint64_t cols);

// "unstructured", "2:4", ... (the legacy compressed-tensors `sparsity_structure` string);
// "" for kNone.
std::string SparsityStructure(const PruneSpec& spec);

// floor(fraction * n) in double, clamped to n: Python's int(sparsity * n).
uint64_t PruneCount(double fraction, uint64_t n);

// Number of elements the spec prunes in a rows x cols tensor (known before any data is read:
// every mode prunes an exact count).
uint64_t PrunedElements(const PruneSpec& spec, uint64_t rows, uint64_t cols);

// Per-row unstructured or N:M pruning of n_rows rows of `cols` elements from `src` into `dst`
// (n_rows * cols elements; not overlapping `src` unless equal to it, which prunes in place),
// `src` left as it is. One pass instead of a copy and a pass: the pipeline prunes from the
// read-only input mapping into the buffer it quantizes from. Any alignment of either side. For
// per_tensor specs use FindTensorThreshold and PruneRowsTensor instead (this returns false
// with nothing done if called with one). *zeroed (optional) is increased by the number of
// pruned positions (elements that were already zero and got selected count too). Returns false
// when the rows hold a NaN or Inf; `dst` then holds garbage. N:M requires cols % m == 0
// (CheckShape).
bool PruneRows(const uint8_t* src, uint8_t* dst, DType dtype, size_t n_rows, size_t cols,
               const PruneSpec& spec, uint64_t* zeroed);

// The scalar reference of the 16-bit N:4 path that PruneRows dispatches to a Highway kernel:
// N:4 over n_elems (a multiple of 4) BF16 / F16 elements from src into dst (either may be
// unaligned, or equal). False for F32, bad arguments, or NaN/Inf in src.
bool PruneN4Scalar(const uint8_t* src, uint8_t* dst, DType dtype, size_t n_elems, int n);

// ---- Per-tensor granularity ----
//
// Exact threshold from histograms of magnitude bit patterns, accumulated chunk by chunk:
//   BF16/F16: one pass, 2^15 bins (one per magnitude pattern), 256 KiB.
//   F32:      pass 1 bins the high 16 bits of the 31-bit magnitude (2^16 bins, 512 KiB);
//             FindThreshold then switches the histogram to pass 2, which bins the low 15 bits
//             of just the elements in the one coarse bin holding the k-th smallest (2^15 bins).
// Usage:
//   MagnitudeHistogram h(dtype);
//   for (;;) {
//     for (each chunk) if (!AccumulateHistogram(&h, chunk, rows, cols)) -> NaN/Inf error;
//     TensorThreshold t = FindThreshold(&h, k);   // k = PruneCount(fraction, rows * cols)
//     if (t.complete) break;                      // F32: one more pass over the tensor
//   }
// Applying it: an element is pruned iff |x| < t.magnitude, or |x| == t.magnitude and it is
// among the first t.prune_equal elements equal to the threshold in row-major order. So a chunk
// needs `equal_before`, the number of elements equal to the threshold in all earlier rows of
// the tensor: the pipeline gets it from a cheap serial prefix sum of CountEqual over the chunks
// (in the read stage, in order), after which the chunks can be pruned in any order and in
// parallel, and the result does not depend on the chunking.
struct MagnitudeHistogram {
  explicit MagnitudeHistogram(DType dtype);
  DType dtype;
  int pass = 0;               // F32: 0 = coarse, 1 = refinement; always 0 for BF16/F16
  uint32_t coarse_bin = 0;    // F32 pass 1: the coarse bin being refined
  uint64_t below_coarse = 0;  // F32 pass 1: elements whose magnitude is below that bin
  uint64_t total = 0;         // elements accumulated in the current pass
  std::vector<uint64_t> bins;
};

// Adds a chunk of rows; false (histogram unusable) on NaN or Inf.
bool AccumulateHistogram(MagnitudeHistogram* h, const uint8_t* rows, size_t n_rows,
                         size_t cols);

struct TensorThreshold {
  bool complete = true;      // false: F32 needs another AccumulateHistogram pass
  uint32_t magnitude = 0;    // T, a magnitude bit pattern (sign cleared)
  uint64_t prune_equal = 0;  // how many elements equal to T are pruned (the first ones)
  uint64_t pruned = 0;       // k: total pruned in the tensor
};

// k must not exceed the number of elements (it is clamped). k == 0 gives T = 0 with
// prune_equal = 0, which prunes nothing.
TensorThreshold FindThreshold(MagnitudeHistogram* h, uint64_t k);

// The protocol above run over a whole tensor held at x (rows x cols, row-major): histogram
// passes over chunks of `chunk_rows` rows until the threshold for pruning k elements is
// complete (one pass for BF16 / F16, two for F32). `after_chunk(r, n)` (optional) runs after
// rows [r, r + n) of every pass, to release their pages or poll for cancellation; returning
// false stops the walk. *out is set only when the result is kComplete.
enum class ThresholdWalk { kComplete, kNonFinite, kStopped };
ThresholdWalk FindTensorThreshold(const uint8_t* x, DType dtype, uint64_t rows, uint64_t cols,
                                  uint64_t k, uint64_t chunk_rows,
                                  const std::function<bool(uint64_t, uint64_t)>& after_chunk,
                                  TensorThreshold* out);

// Elements of the rows whose magnitude equals `magnitude`.
uint64_t CountEqual(const uint8_t* rows, DType dtype, size_t n_rows, size_t cols,
                    uint32_t magnitude);

// Prunes a chunk with a complete per-tensor threshold from `src` into `dst` (as PruneRows:
// equal pointers prune in place); equal_before as described above. *zeroed (optional) is
// increased by the pruned positions. False on NaN/Inf.
bool PruneRowsTensor(const uint8_t* src, uint8_t* dst, DType dtype, size_t n_rows, size_t cols,
                     const TensorThreshold& t, uint64_t equal_before, uint64_t* zeroed);

}  // namespace quench::prune

#endif  // QUENCH_SCHEMES_PRUNE_H_
