// The verifier's state and its checks, shared by the files that implement them:
//   verify.cc         Run: open the folders, read the config, select modules, run the checks
//   module_checks.cc  one selected module's tensors: presence, dtypes, shapes, weight_shape
//   module_walk.cc    one selected module's values: scales, codes, error bounds, SQNR, pruning
//   folder_checks.cc  the index, unselected quantized modules, fused global scales, and the
//                     source's tensors (copied, pruned, missing or extra)
//   source_rows.cc    an FP8 SRC's weights decoded, and weights DST stores decoded
//
// Rules (VerifyProblem::rule):
//   safetensors        a shard, the index or the folder cannot be read (truncated, malformed)
//   config             quantization_config missing or not understood
//   index              the index does not list a tensor, or total_size is wrong
//   missing            a tensor the format (or the source) requires is absent
//   dtype, shape       a quantized module's tensor has the wrong dtype or shape
//   weight-shape       pack-quantized weight_shape contents disagree with the weight
//   extra              a tensor neither copied from the source nor written by quantization
//   not-quantized      the config selects the module but DST stores it unquantized
//   not-selected       DST quantizes a module the config does not select (ignored/untargeted)
//   changed            a copied tensor differs from the source (dtype, shape or bytes)
//   code               an invalid code: E4M3 NaN, int value or zero point out of range
//   scale              a non-finite, zero or negative scale, or an E8M0 NaN exponent (255)
//   fused-global-scale NVFP4 fused siblings with different weight_global_scale
//   error-bound        elements whose dequantized value is farther from the source than the
//                      format's grid allows (one grid step plus quotient rounding)
//   sqnr               the tensor's SQNR against the source is below its format's threshold
//   lossless           (SRC AutoAWQ or ModelOpt NVFP4, DST in its own format) an element does
//                      not dequantize to the decoded source exactly, as a repack must
//   pruned             (--prune) an element zero in the pruned source does not dequantize to
//                      exactly 0, or the source holds NaN/Inf so it cannot be pruned
//   sparsity           (--prune, no SRC; or --algorithm sparsegpt) the dequantized zeros lack
//                      the spec's structure
#ifndef QUENCH_VERIFY_VERIFIER_H_
#define QUENCH_VERIFY_VERIFIER_H_

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "plan/matcher.h"
#include "quench/plan.h"
#include "quench/status.h"
#include "verify/checkpoint.h"
#include "verify/config_groups.h"
#include "verify/decode.h"
#include "verify/layouts.h"
#include "verify/verify.h"

namespace quench::verify {

struct WalkTally;  // module_walk.cc

// What one selected module's checks add to the report and to the verifier's sets, while the
// modules are checked on several threads (Run): kept per module and merged in module order,
// so that the report is the one a single thread makes.
struct ModuleOutcome {
  std::vector<VerifyProblem> problems;
  uint64_t modules_quantized = 0, bytes_compared = 0;
  std::vector<TensorQuality> quality;
  std::vector<std::string> quant_outputs;
  std::vector<std::pair<std::string, float>> global_scales;
};

// One thread's page releases of whole tensors, held until they add up to kChunkBytes and then
// made as few madvise calls as the ranges allow (each MappedFile::ReleaseRange, merged where
// they touch). With several threads every madvise
// interrupts the others to flush their TLBs: released tensor by tensor, the 70,516 modules of
// a Kimi-shaped checkpoint made 212k calls and spent more time in those interrupts than the
// second thread saved.
class ReleaseBatch {
 public:
  void Add(const MappedFile* m, uint64_t offset, uint64_t len);
  void Flush();

 private:
  struct Range {
    const MappedFile* m;
    uint64_t begin, end;
  };
  std::vector<Range> ranges_;
  uint64_t bytes_ = 0;
};

class Verifier {
 public:
  Verifier(const VerifyOptions& o, VerifyReport& r) : opt_(o), rep_(r) {}

  Status Run();

 private:
  // The outcome the running thread's module checks go to (Run sets it around CheckModule);
  // null outside them: straight to the report and the sets.
  static thread_local ModuleOutcome* outcome_;
  // The running thread's batch of whole-tensor releases (Run sets it with outcome_); null:
  // released at once.
  static thread_local ReleaseBatch* releases_;
  // Releases the pages of tensor `name` of `c` (batched where releases_ is set).
  void ReleaseTensor(const Checkpoint& c, const std::string& name) const;

  void Problem(std::string file, std::string tensor, std::string rule, std::string message) {
    VerifyProblem p{std::move(file), std::move(tensor), std::move(rule), std::move(message)};
    (outcome_ ? outcome_->problems : rep_.problems).push_back(std::move(p));
  }
  void CountQuantizedModule() {
    ++(outcome_ ? outcome_->modules_quantized : rep_.modules_quantized);
  }
  void AddBytesCompared(uint64_t n) {
    (outcome_ ? outcome_->bytes_compared : rep_.bytes_compared) += n;
  }
  void AddQuality(TensorQuality q) {
    (outcome_ ? outcome_->quality : rep_.quality).push_back(std::move(q));
  }
  void AddQuantOutput(const std::string& name) {
    if (outcome_) {
      outcome_->quant_outputs.push_back(name);
    } else {
      quant_outputs_.insert(name);
    }
  }
  void SetGlobalScale(const std::string& module, float gs) {
    if (outcome_) {
      outcome_->global_scales.push_back({module, gs});
    } else {
      global_scales_[module] = gs;
    }
  }
  // The selected modules' checks (CheckModule), on the available cores, merged in order.
  void CheckSelectedModules();
  bool pruning() const { return opt_.prune.kind != prune::PruneSpec::kNone; }

  // verify.cc: opening the folders and choosing what to check.
  Status OpenSource();
  Result<bool> OpenDestination();
  // expert_match.cc: SRC as expert pruning would leave it, when DST's routers have fewer rows.
  Status MatchPrunedExperts();
  void RenameCtScales(const PlannedExpertPrune& prune);
  void CheckPruneOnly();
  bool LoadConfig();
  const Group* GroupFor(std::string_view module) const;
  void SelectModules();

  // module_checks.cc: one selected module's structure.
  void CheckModule(const std::string& module, const Group& g);
  bool StoredUnquantized(const std::string& module, const Group& g, bool packed,
                         const TensorInfo* qt);
  bool ResolveWeightShape(const std::string& module, const Group& g, const TensorInfo* st,
                          const TensorInfo* qt, uint64_t* out, uint64_t* in);
  void CheckPackedWeightShape(const std::string& module, const Group& g, const TensorInfo* qt,
                              bool* have_shape, uint64_t* out, uint64_t* in);
  bool CheckExpectedTensors(const std::string& module, const Group& g,
                            const std::vector<Expected>& exp, const std::string& file,
                            uint64_t out, uint64_t in, std::set<std::string>* expected_names);
  void CheckUnwrittenQuantTensors(const std::string& module, const Group& g,
                                  const std::set<std::string>& expected_names);
  bool DescribeModule(const std::string& module, const Group& g, const std::string& qname,
                      const TensorInfo* st, ModuleView* v);

  // module_walk.cc: one selected module's values, row by row.
  void WalkModule(ModuleView& v, const std::string& file, const std::vector<std::string>& names);
  bool CheckScales(const ModuleView& v);
  void ReleaseSourceWeight(const ModuleView& v, uint64_t bytes) const;
  void ReportCodes(const ModuleView& v, const std::string& qname, const WalkTally& t);
  void ReportZeroStructure(const ModuleView& v, const std::string& file, const std::string& qname,
                           WalkTally& t);
  void ReportAgainstSource(const ModuleView& v, const std::string& file, const std::string& qname,
                           uint64_t row_src_bytes, const WalkTally& t);

  // folder_checks.cc: the folder as a whole.
  Status CheckIndex();
  void CheckUnselectedModules();
  void CheckFusedSets();
  void CheckSource();
  void CheckSourceTensor(const Shard& s, const TensorInfo& t);
  bool HasSparseGptZeros(const TensorInfo& t, const uint8_t* dp, std::string* why);
  bool EqualsPrunedSource(const TensorInfo& t, const uint8_t* sp, const uint8_t* dp,
                          std::string* why);

  // source_rows.cc: an FP8-quantized SRC.
  const SourceScale* SourceScaleOf(const std::string& weight) const;
  // Rows [r0, r1) of FP8 weight `weight` (its codes from `codes`, row r0's) decoded to BF16
  // into `out`. False, with the problem reported, on a bad scale or a NaN code.
  bool DecodeSourceRows(const std::string& weight, const SourceScale& sc, const uint8_t* codes,
                        uint64_t cols, uint64_t r0, uint64_t r1, uint8_t* out);
  void CheckDecodedTensor(const Shard& s, const TensorInfo& t, const SourceScale& sc,
                          const TensorInfo& d);
  // lossless.cc: the lossless repack of an AutoAWQ or ModelOpt NVFP4 SRC.
  bool LinearTargetSelects(std::string_view module) const;
  bool IsLosslessRepack(const std::string& module, const Group& g) const;

  // source_ct_rows.cc: a compressed-tensors SRC. Its headers are rewritten as the weights
  // they decode to (X.weight_packed -> X.weight of the decoded shape; the tensors decoding
  // consumes dropped), so the checks above see the source the conversion read.
  void LogicalCtSource();
  bool DecodeCtSourceRows(const std::string& weight, const SourceScale& sc,
                          const uint8_t* codes, uint64_t r0, uint64_t r1, uint8_t* out);

  const VerifyOptions& opt_;
  VerifyReport& rep_;
  Checkpoint dst_;
  std::optional<Checkpoint> src_;
  SourceQuantization src_quant_;                        // SRC's stored quantization (FP8)
  std::map<std::string, std::string> scale_of_weight_;  // SRC scale tensor -> its weight
  std::string config_file_;
  std::vector<Group> groups_;
  NameMatcher ignore_;
  // Modules the config selects -> group; DST tensors accounted for by quantization.
  std::map<std::string, const Group*> selected_;
  std::set<std::string> quant_outputs_;
  std::map<std::string, float> global_scales_;  // NVFP4 module -> weight_global_scale
  bool prune_only_ = false;  // --prune and no quantization_config: pruning alone
  // kv_cache_scheme in the config: attention modules carry k_scale / v_scale.
  bool kv_cache_ = false;
};

}  // namespace quench::verify

#endif  // QUENCH_VERIFY_VERIFIER_H_
