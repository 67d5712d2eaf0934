// The pre-pass: results that need a whole tensor, or a whole fused set, before any of its
// rows can be quantized. Today: NVFP4's weight_global_scale, shared by every member of a fused
// set (vLLM runs q/k/v, gate/up, w1/w3 and MLA q_a/kv_a as one matrix with one global scale).
// Reads only the tensors that need it, in row chunks with pages released after use.
#ifndef QUENCH_PIPELINE_PREPASS_H_
#define QUENCH_PIPELINE_PREPASS_H_

#include <atomic>

#include "pipeline/pipeline.h"
#include "quench/plan.h"

namespace quench {

// Fills PlannedTensor::global_scale and the weight_global_scale outputs' bytes.
Status RunPrePass(Plan& plan, const PipelineSizing& sizing, const std::atomic<bool>* cancel);

}  // namespace quench

#endif  // QUENCH_PIPELINE_PREPASS_H_
