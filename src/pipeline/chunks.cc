#include "pipeline/chunks.h"

namespace quench {

uint64_t ChunkOutputBytes(const Plan& plan, const PlannedTensor& t, uint64_t rows) {
  const PlannedShard& ps = plan.shards[t.shard];
  uint64_t total = 0;
  for (size_t j = 0; j < t.kernel_outputs; ++j) {
    const PlannedOutput& o = ps.outputs[t.outputs[j]];
    total += (rows + o.rows_per_slab - 1) / o.rows_per_slab * o.bytes_per_slab +
             DirectIoAlignment();
  }
  return total;
}

uint64_t Placement::Place(const std::vector<std::pair<uint64_t, uint64_t>>& ranges) {
  at_.assign(ranges.size(), 0);
  runs_.clear();
  run_at_.clear();
  order_.resize(ranges.size());
  for (size_t i = 0; i < order_.size(); ++i) order_[i] = i;
  std::sort(order_.begin(), order_.end(),
            [&](size_t a, size_t b) { return ranges[a].first < ranges[b].first; });
  uint64_t total = 0;
  for (size_t i : order_) {
    const auto [off, len] = ranges[i];
    if (!runs_.empty() && runs_.back().off + runs_.back().len == off) {
      runs_.back().len += len;
    } else {
      runs_.push_back({off, nullptr, len});
      run_at_.push_back(total = AlignLike(total, off));
    }
    at_[i] = run_at_.back() + (off - runs_.back().off);
    total = at_[i] + len;
  }
  return total;
}

void Placement::Bind(const uint8_t* base, std::vector<WriteRange>* writes) const {
  for (size_t r = 0; r < runs_.size(); ++r) {
    if (runs_[r].len > 0) writes->push_back({runs_[r].off, base + run_at_[r], runs_[r].len});
  }
}

}  // namespace quench
