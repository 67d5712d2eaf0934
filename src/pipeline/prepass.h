// The pre-pass: results that need a whole tensor, or a whole fused set, before any of its
// rows can be quantized: NVFP4's weight_global_scale, shared by every member of a fused set
// (vLLM runs q/k/v, gate/up, w1/w3 and MLA q_a/kv_a as one matrix with one global scale), and
// per-tensor pruning thresholds. Reads only the tensors that need it, in row chunks with pages
// released after use.
#ifndef QUENCH_PIPELINE_PREPASS_H_
#define QUENCH_PIPELINE_PREPASS_H_

#include <atomic>
#include <vector>

#include "pipeline/pipeline.h"
#include "quench/plan.h"

namespace quench {

// Per-tensor pruning thresholds (--prune-granularity tensor), for the whole plan.
Status RunPrunePrePass(Plan& plan, const PipelineSizing& sizing, const std::atomic<bool>* cancel);

// NVFP4 global scales, computed per fused set when first needed: ForShard(s) is called just
// before shard s enters the pipeline, so that the second read of its NVFP4 tensors comes from
// the page cache (members in other shards are read where they live). Fills
// PlannedTensor::global_scale and the weight_global_scale outputs' bytes.
class GlobalScales {
 public:
  GlobalScales(Plan& plan, const PipelineSizing& sizing, const std::atomic<bool>* cancel);
  Status ForShard(size_t shard);
  Status All();  // every set (--resume needs them to check fingerprints)

 private:
  Status ComputeSet(size_t k);
  Plan& plan_;
  const PipelineSizing& sizing_;
  const std::atomic<bool>* cancel_;
  std::vector<bool> done_;
};

}  // namespace quench

#endif  // QUENCH_PIPELINE_PREPASS_H_
