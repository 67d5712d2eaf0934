// The pre-pass: results that need a whole tensor, or a whole fused set, before any of its
// rows can be quantized: NVFP4's weight_global_scale, shared by every member of a fused set
// (vLLM runs q/k/v, gate/up, w1/w3 and MLA q_a/kv_a as one matrix with one global scale), and
// per-tensor pruning thresholds. Reads only the tensors that need it, in row chunks; pages are
// released after use unless the pipeline reads them next and the memory budget has room.
#ifndef QUENCH_PIPELINE_PREPASS_H_
#define QUENCH_PIPELINE_PREPASS_H_

#include <atomic>
#include <functional>
#include <optional>
#include <vector>

#include "pipeline/pipeline.h"
#include "quench/plan.h"

namespace quench {

// Per-tensor pruning thresholds (--prune-granularity tensor), for the whole plan.
Status RunPrunePrePass(Plan& plan, const PipelineSizing& sizing, SourceMaps& maps,
                       const std::atomic<bool>* cancel);

// NVFP4 global scales, computed per fused set when first needed: ForTensor(t) is called just
// before tensor t enters the pipeline and computes its set if that is not done yet (members in
// other shards are read where they live). The set's members in t's shard stay mapped while
// the kept sets fit PipelineSizing::prepass_keep_bytes, so that the pipeline's read of them
// neither faults nor goes further than the page cache. Fills PlannedTensor::global_scale and
// the weight_global_scale outputs' bytes.
class GlobalScales {
 public:
  GlobalScales(Plan& plan, const PipelineSizing& sizing, SourceMaps& maps,
               const std::atomic<bool>* cancel);
  Status ForTensor(size_t tensor);
  // A member's value for the set's largest |x| when it is not the member's own max |x|: the
  // imatrix_mse observer's searched ranges, which the reference's global scale takes
  // (src/calib/imatrix_run.h). nullopt: read the member's max |x| as usual.
  using MemberAbsMax = std::function<Result<std::optional<float>>(size_t tensor)>;
  void SetMemberAbsMax(MemberAbsMax f) { member_amax_ = std::move(f); }
  // Every set with a member in a shard this run writes (not already_done), pages released
  // (--resume needs them to check fingerprints).
  Status All();

 private:
  // keep_shard: the shard whose members' pages are left mapped, or -1.
  Status ComputeSet(size_t k, int64_t keep_shard);
  // One member's largest |x|, its pages released after use where `release`: an FP8-block
  // source's from the blocks that can hold it, any other's from its rows (decoded where the
  // source stores it quantized) in chunks on every core.
  Result<float> Fp8BlockAbsMax(const PlannedTensor& t, const MappedFile& m, bool release);
  Result<float> RowsAbsMax(const PlannedTensor& t, const MappedFile& m, bool release);
  // The set's scale from its largest |x|, into every member and its global-scale outputs.
  void SetScale(const std::vector<size_t>& set, float amax);
  Status NonFinite(const PlannedTensor& t) const;
  struct Kept {
    size_t last_tensor;  // the set's last member in the kept shard, in plan order
    uint64_t bytes;
  };
  Plan& plan_;
  const PipelineSizing& sizing_;
  SourceMaps& maps_;
  const std::atomic<bool>* cancel_;
  std::vector<bool> done_;
  std::vector<Kept> kept_;
  MemberAbsMax member_amax_;
};

}  // namespace quench

#endif  // QUENCH_PIPELINE_PREPASS_H_
