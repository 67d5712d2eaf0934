// AWQ from statistics (llm-compressor's AWQModifier, modifiers/transform/awq/base.py): the
// grid search for one mapping's per-channel scales, with the reference's scale formula, grid
// and memoryless min-max weight quantizer, and a linear proxy for its loss, since the parent
// module cannot be run without the model: sum over the balance layers of tr(dW H dW^T) /
// (tokens x output features), dW = W - Q(W s)/s, with H the full Hessian sum x x^T of their
// shared input where the statistics hold it (then it is those layers' exact output MSE, the
// reference's own loss where the parent is the balance layer: v -> o, up -> down) and its
// diagonal sum_x2 otherwise.
#ifndef QUENCH_CALIB_AWQ_H_
#define QUENCH_CALIB_AWQ_H_

#include <cstdint>
#include <string>
#include <vector>

#include "quench/dtype.h"
#include "quench/status.h"
#include "schemes/chunk.h"

namespace quench::calib {

enum class DuoScaling { kFalse, kTrue, kBoth };
Result<DuoScaling> ParseDuoScaling(const std::string& text);  // "true", "false", "both"

// How the grid's losses are found. kExact: every candidate's exact proxy loss that can decide
// the choice (certified pruning when `prune`). kScreened (diagonal proxy only; the full
// Hessian's search stays exact): candidates dropped on estimates from nested row samples,
// the survivors' exact losses decide (awq_screen.cc): deterministic, the exhaustive choice
// whenever its argmin survives the screen.
enum class AwqSearchKind { kExact, kScreened };
Result<AwqSearchKind> ParseAwqSearch(const std::string& text);  // "exact", "screened"

// The grid (_get_grid_search_params): (ratio, duo) pairs in the reference's order.
std::vector<std::pair<double, bool>> AwqGrid(int n_grid, DuoScaling duo);

// One balance layer: its rows as stored, and how the scheme quantizes them (integer schemes:
// bits, group size (0: channel), symmetry).
struct AwqLayer {
  const uint8_t* data = nullptr;
  DType dtype = DType::kBF16;
  uint64_t rows = 0, cols = 0;
  KernelParams q;
  bool quantized = true;  // false: scaled but not quantized (not in the loss), e.g. a router
};

struct AwqResult {
  double ratio = -1;
  bool duo = false;
  std::vector<double> scales;  // values of f32 (no duo) or f64 (duo) as the reference holds them
  double loss = 0;             // the chosen candidate's proxy loss
  double loss_rtn = 0;         // the first candidate's (ratio 0: scales 1, i.e. RTN)
  std::vector<double> losses;  // every candidate's, in grid order
  // The search that ran (kScreened only where screening applied: the diagonal proxy), and
  // whether loss_rtn is exact (false: RTN was dropped by the screen; loss_rtn is its
  // estimate on the row sample).
  AwqSearchKind search = AwqSearchKind::kExact;
  bool rtn_exact = true;
  size_t finalists = 0;  // screened: candidates whose loss was computed on every row
};

// x_mean: per channel mean |x| (sum_abs / count, as f32). hessian: n*n row-major (full) or n
// (diagonal); tokens: the count the loss is normalised by. False result (kNonFinite) when no
// candidate has a finite loss, as the reference raises. `prune` (diagonal proxy only): stop
// computing candidates proven worse than another (their `losses` entry is +Inf); the
// choice, its scales and loss, and loss_rtn are those of the full search (awq.cc).
// `search` kScreened (diagonal proxy): see AwqSearchKind; `losses` holds the survivors'
// exact losses and the dropped candidates' last estimates.
Result<AwqResult> AwqSearch(const std::vector<AwqLayer>& layers, const std::vector<float>& x_mean,
                            const std::vector<double>& hessian, bool full, double tokens,
                            int n_grid, DuoScaling duo, bool prune = false,
                            AwqSearchKind search = AwqSearchKind::kExact);

// _compute_layer_means: per input channel, the mean over all balance layers' rows of |W|
// normalised by its group's (channel's) max |W| + 1e-6, in f64.
std::vector<double> AwqWeightMeans(const std::vector<AwqLayer>& layers);

}  // namespace quench::calib

#endif  // QUENCH_CALIB_AWQ_H_
