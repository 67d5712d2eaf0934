// The imatrix_mse observer's run (see imatrix_run.h): the search per weight, kept choices,
// and the quantization from them. Planning is imatrix_plan.cc's.
#include "calib/imatrix_run.h"

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "calib/imatrix_mse.h"
#include "calib/imatrix_run_internal.h"
#include "calib/stats.h"
#include "calib/wanda.h"
#include "format/file_io.h"
#include "format/safetensors.h"
#include "plan/planner.h"
#include "schemes/fp4.h"
#include "schemes/prune.h"

namespace quench::calib {

Result<SiteValues> ReadSite(const Statistics& s, const std::string& site,
                            std::optional<uint64_t> expert, uint64_t n) {
  QUENCH_ASSIGN_OR_RETURN(std::vector<double> sum, s.ReadField(site, "sum_x2"));
  QUENCH_ASSIGN_OR_RETURN(std::vector<double> count, s.ReadField(site, "count"));
  const size_t e = expert.value_or(0);
  if (e >= count.size() || sum.size() < (e + 1) * n) {
    return Error(ErrorCode::kInvalidInput,
                 "statistics: site " + site + " is shorter than its shape");
  }
  SiteValues v;
  v.sum_x2.assign(sum.begin() + static_cast<ptrdiff_t>(e * n),
                  sum.begin() + static_cast<ptrdiff_t>((e + 1) * n));
  v.count = count[e];
  for (double x : v.sum_x2) {
    if (!std::isfinite(x) || x < 0) {
      return Error(ErrorCode::kNonFinite, "statistics: sum_x2 of site " + site +
                                              " holds NaN, Inf or negative values");
    }
  }
  return v;
}

std::string SiteKey(const std::string& site, std::optional<uint64_t> expert) {
  return site + (expert ? "#" + std::to_string(*expert) : "");
}

std::optional<ImatrixFormat> FormatOf(const SchemeInfo& s) {
  if (s.weights.type == "int") return ImatrixFormat::kInt;
  if (s.kernel == fp4::QuantizeNvfp4) return ImatrixFormat::kNvfp4;
  if (s.kernel == fp4::QuantizeMxfp4) return ImatrixFormat::kMxfp4;
  return std::nullopt;
}

WeightChunk RowsOf(const PlannedTensor& t, const uint8_t* src, size_t n) {
  WeightChunk c;
  c.data = src;
  c.dtype = t.dtype;
  c.rows = n;
  c.cols = t.shape[1];
  c.params.bits = t.params.bits;
  c.params.group_size = std::max(0, t.params.group_size.value_or(0));
  c.params.symmetric = t.params.symmetric;
  return c;
}

namespace {

// An allocator whose value-less construct leaves the element uninitialized, so that
// resize() does not zero-fill what is then written in full: the search's per-group scratch
// and kept choices (SearchTensor), written by its parallel row blocks, which also take the
// fresh pages' faults on both threads. A fill would be a pass over all of them on the input
// stage's thread alone, with the other thread waiting for the search to start.
template <typename T>
struct NoFillAllocator : std::allocator<T> {
  template <typename U>
  struct rebind {
    using other = NoFillAllocator<U>;
  };
  NoFillAllocator() = default;
  template <typename U>
  NoFillAllocator(const NoFillAllocator<U>&) noexcept {}
  template <typename U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};
template <typename T>
using NoFillVector = std::vector<T, NoFillAllocator<T>>;

// A tensor's kept choices (SearchTensor): per group its chosen step, range or scale.
using KeptChoices = NoFillVector<uint8_t>;

class ImatrixRunImpl : public ImatrixRun {
 public:
  // keep_rows_bytes: how many source bytes the searches kept ahead (SearchedAbsMax) may
  // hold mapped for Quantize. keep_tensor_bytes: the largest tensor whose pages a search
  // keeps for Quantize at all; a larger one's are released block by block as searched.
  ImatrixRunImpl(const Plan& plan, Statistics stats, std::vector<ImatrixOptions> opts,
                 uint64_t keep_rows_bytes, uint64_t keep_tensor_bytes)
      : plan_(plan), stats_(std::move(stats)), spec_(ToPruneSpec(plan.prune)),
        group_opts_(std::move(opts)), keep_rows_bytes_(keep_rows_bytes),
        keep_tensor_bytes_(keep_tensor_bytes) {}

  bool Takes(size_t t) const override {
    return !plan_.tensors[t].calib.value_or_default().imatrix_site.empty();
  }

  Result<std::optional<float>> SearchedAbsMax(size_t t) override {
    const PlannedTensor& pt = plan_.tensors[t];
    if (!Takes(t) || FormatOf(*pt.scheme) != ImatrixFormat::kNvfp4) return std::optional<float>();
    QUENCH_ASSIGN_OR_RETURN(Searched s, SearchTensor(t));
    if (!s.finite) return std::optional<float>();
    // Kept for Prepare while the kept searches stay small (--resume computes every set's
    // global scale first; then the later ones are searched again).
    const uint64_t bytes = s.steps->size();
    if (kept_bytes_ + bytes <= kKeepBytes) {
      kept_bytes_ += bytes;
      // Its rows' pages too (Quantize reads them: Searched::rows) while the kept ones stay
      // within keep_rows_bytes_; otherwise they go now and Quantize reads the pipeline's.
      if (s.rows != nullptr && kept_rows_bytes_ + pt.src_bytes > keep_rows_bytes_) {
        s.rows->Release(pt.src_offset, pt.src_bytes);
        s.rows = nullptr;
      }
      if (s.rows != nullptr) kept_rows_bytes_ += pt.src_bytes;
      kept_[t] = s;
    } else if (s.rows != nullptr) {
      s.rows->Release(pt.src_offset, pt.src_bytes);  // searched again by Prepare
    }
    return std::optional<float>(s.amax);
  }

  Status Prepare(size_t t) override {
    Searched s;
    if (auto it = kept_.find(t); it != kept_.end()) {
      s = it->second;
      kept_bytes_ -= s.steps->size();
      if (s.rows != nullptr) kept_rows_bytes_ -= plan_.tensors[t].src_bytes;
      kept_.erase(it);
    } else {
      QUENCH_ASSIGN_OR_RETURN(s, SearchTensor(t));
    }
    std::lock_guard<std::mutex> lock(mu_);
    live_[t] = {s.steps, s.rows};
    return Status::Ok();
  }

  bool Quantize(size_t t, const WeightChunk& in, const ChunkOutputs& out) override {
    std::shared_ptr<const KeptChoices> steps;
    std::shared_ptr<const MappedFile> rows;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const Live& l = live_.at(t);
      steps = l.steps;
      rows = l.rows;
    }
    const PlannedTensor& pt = plan_.tensors[t];
    const ImatrixFormat f = *FormatOf(*pt.scheme);
    const size_t ng = in.cols / std::max<size_t>(1, GroupColumns(in, f));
    // A tensor with NaN/Inf was not searched (empty steps): the chunk is refused as any
    // kernel refuses it.
    if (GroupColumns(in, f) == 0 || steps->size() < (in.row0 + in.rows) * ng) return false;
    // The chunk's rows from the search's mapping, which still holds them (Searched::rows):
    // the same bytes as the pipeline's, whose pages then need not be faulted in again.
    WeightChunk kin = in;
    if (rows != nullptr && in.dtype == pt.dtype && in.cols == pt.shape[1] &&
        in.row0 + in.rows <= pt.shape[0]) {
      kin.data = rows->data() + pt.src_offset + in.row0 * in.cols * (DTypeBits(in.dtype) / 8);
    }
    if (PosKept(f, Opt(t))) {
      // The chosen ranges kept by the search, in D's encoding (finite values), which the
      // kernels take as they are: their pass 2 reads D's patterns, so no f32 copy is made.
      const size_t esz = DTypeBits(in.dtype) / 8;
      if (steps->size() < (in.row0 + in.rows) * ng * esz) return false;
      const uint8_t* ranges = steps->data() + in.row0 * ng * esz;
      // These rows were searched as they come here (steps for every one of them; the same
      // bytes, pruned the same way), and the search refuses a tensor with NaN or Inf: the
      // kernels need not look for them again.
      const bool finite = in.dtype == pt.dtype;
      return f == ImatrixFormat::kNvfp4 ? fp4::QuantizeNvfp4RangeBits(kin, ranges, out, finite)
                                        : fp4::QuantizeMxfp4RangeBits(kin, ranges, out, finite);
    }
    const bool packed = IsPacked(pt);
    if (f == ImatrixFormat::kInt && IntRangesKept(in, Opt(t), packed)) {
      // The chosen scales and zero points kept by the search (IntKeptParams): all the
      // tensor's scales (2 bytes a group), then its zero points (1 byte a group).
      const size_t total = steps->size() / 3;
      if (steps->size() != total * 3 || total < (in.row0 + in.rows) * ng) return false;
      return QuantizeIntKept(
          kin, steps->data() + in.row0 * ng * 2,
          reinterpret_cast<const int8_t*>(steps->data() + total * 2 + in.row0 * ng), out);
    }
    if (f == ImatrixFormat::kInt && IntScalesKept(in, Opt(t), packed)) {
      // The chosen scales kept by the search (IntKeptScales), 2 bytes a group.
      if (steps->size() < (in.row0 + in.rows) * ng * 2) return false;
      return QuantizeIntKept(kin, steps->data() + in.row0 * ng * 2, nullptr, out, packed);
    }
    return QuantizeChosen(in, f, Opt(t), steps->data() + in.row0 * ng, packed, out);
  }

  void Done(size_t t) override {
    std::shared_ptr<const MappedFile> rows;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = live_.find(t);
      if (it == live_.end()) return;
      rows = std::move(it->second.rows);
      live_.erase(it);
    }
    if (rows != nullptr) rows->Release(plan_.tensors[t].src_offset, plan_.tensors[t].src_bytes);
  }

 private:
  // The settings of tensor t's group.
  const ImatrixOptions& Opt(size_t t) const {
    return group_opts_[static_cast<size_t>(plan_.tensors[t].group)];
  }

  // Whether a tensor's int codes are packed (pack-quantized: IntScalesKept needs it).
  static bool IsPacked(const PlannedTensor& pt) { return pt.scheme->format == "pack-quantized"; }

  // Whether a tensor's search keeps per group its chosen range pos (FP4 where ChosenPos
  // applies: D's encoding, DTypeBits / 8 bytes a group) rather than its chosen step (a byte).
  static bool PosKept(ImatrixFormat f, const ImatrixOptions& o) {
    return f != ImatrixFormat::kInt && ChosenPosApplies(o);
  }

  // A tensor's search: per group the chosen step or range (PosKept); for FP4 the largest
  // chosen range.
  struct Searched {
    std::shared_ptr<const KeptChoices> steps;
    float amax = 0.f;
    bool finite = true;
    // Where Quantize reads the rows from this mapping (the kept paths of an unpruned
    // tensor): the search leaves its pages in, and Done releases them.
    std::shared_ptr<const MappedFile> rows;
  };
  // A prepared tensor's search, until Done.
  struct Live {
    std::shared_ptr<const KeptChoices> steps;
    std::shared_ptr<const MappedFile> rows;
  };

  // The importance of the tensor's site (the last one read is kept: q/k/v share theirs).
  Status LoadImportance(const PlannedTensor& pt) {
    const PlannedCalibration& calib = pt.calib.value_or_default();
    const std::string key = SiteKey(calib.imatrix_site, calib.imatrix_expert);
    if (key == imp_key_) return Status::Ok();
    QUENCH_ASSIGN_OR_RETURN(
        SiteValues v, ReadSite(stats_, calib.imatrix_site, calib.imatrix_expert, pt.shape[1]));
    imp_ = NormalizedImportance(v.sum_x2, v.count);
    imp_key_ = key;
    return Status::Ok();
  }

  // Every step over all rows (pruned as the pipeline prunes them), in parallel row blocks:
  // per group its improvement mask; then the patience rule's stop over the whole tensor and
  // each group's chosen step. NaN/Inf gives finite = false and no steps, left for the
  // pipeline (or the pre-pass) to report as it reports it for any chunk.
  Result<Searched> SearchTensor(size_t ti) {
    Result<Searched> r = SearchScratch(ti);
    // The scratch is reused from tensor to tensor (fresh pages cost a fault and a clear
    // each), but a tensor over the budget's share (whose pages the search also releases)
    // gives it back: its chunks are then quantized holding the kept choices alone.
    if (plan_.tensors[ti].src_bytes > keep_tensor_bytes_) {
      NoFillVector<uint32_t>().swap(masks_);
      NoFillVector<float>().swap(absmax_);
      NoFillVector<float>().swap(minmax_);
    }
    return r;
  }

  // SearchTensor in SearchTensor's scratch (masks_, absmax_, minmax_).
  Result<Searched> SearchScratch(size_t ti) {
    const PlannedTensor& pt = plan_.tensors[ti];
    const ImatrixOptions& opt = Opt(ti);  // the settings of this tensor's group
    QUENCH_RETURN_IF_ERROR(LoadImportance(pt));
    const PlannedShard& ps = plan_.shards[pt.shard];
    if (!map_ || map_path_ != ps.src_path) {
      QUENCH_ASSIGN_OR_RETURN(MappedFile m, MappedFile::Open(ps.src_path));
      map_ = std::make_shared<MappedFile>(std::move(m));
      map_path_ = ps.src_path;
    }
    const ImatrixFormat f = *FormatOf(*pt.scheme);
    const size_t rows = pt.shape[0], cols = pt.shape[1];
    const size_t esz = DTypeBits(pt.dtype) / 8;
    const uint8_t* base = map_->data() + pt.src_offset;
    auto chunk_of = [&](const uint8_t* src, size_t n) { return RowsOf(pt, src, n); };
    const size_t gs = GroupColumns(chunk_of(base, 1), f);
    Searched out;
    if (gs == 0) {
      return Error(ErrorCode::kInternal, "imatrix_mse: '" + pt.name + "' has no group layout");
    }
    const size_t ng = cols / gs;
    // The per-group masks are the run's, reused from tensor to tensor: fresh ones each time
    // were fresh pages to fault in and clear. Each row block clears its own masks and sets
    // its own best errors (a per-thread buffer: nothing reads them after its search) while
    // they are in cache, on the search's threads, instead of a tensor-wide pass on this one.
    // Nothing in the scratch is kept from one tensor to the next: each is emptied before it
    // is resized, so that growing it for a larger tensor copies none of the last one's.
    NoFillVector<uint32_t>& masks = masks_;
    masks.clear();
    masks.resize(rows * ng);
    // FP4 with every step's p > 0: each group's largest magnitude from the search's own f32
    // copy, so that the chosen ranges need no second read of the weights (ChosenPos).
    const bool by_absmax = PosKept(f, opt);
    // Symmetric int codes on the AVX2 kernels (packed int4, and int8 / 5-8-bit codes;
    // IntScalesKept): the same, for each group's chosen scale.
    const bool int_kept = f == ImatrixFormat::kInt &&
                          IntScalesKept(chunk_of(base, 1), opt, IsPacked(pt));
    NoFillVector<float>& absmax = absmax_;
    absmax.clear();
    absmax.resize(by_absmax || int_kept ? rows * ng : 0);
    // Packed asymmetric int4 on the AVX2 kernels: each group's min and max, for its chosen
    // scale and zero point.
    const bool asym_kept = f == ImatrixFormat::kInt &&
                           IntRangesKept(chunk_of(base, 1), opt, IsPacked(pt));
    NoFillVector<float>& minmax = minmax_;
    minmax.clear();
    minmax.resize(asym_kept ? 2 * rows * ng : 0);
    std::atomic<bool> finite{true};
    std::atomic<uint32_t> improved{0};
    // About 64K weights, and at least 16 rows (SearchSteps' own block: whole-row groups fill
    // its 16 lanes).
    const size_t block = std::max<size_t>(16, (size_t(1) << 16) / std::max<size_t>(cols, 1));
    const std::vector<float>& imp = imp_;
    // Row-block-major: every step of a block while its rows are in cache (the kernel keeps
    // their f32 tiles across the steps); the union of the steps at which some group improved
    // then gives the reference's patience stop over the whole tensor, and each group keeps
    // its last improvement at or before it (ChosenStep): what the reference's step-major
    // search over steps 0..stop keeps.
    const int last = LastStep(opt);
    // The kept paths (int scales or ranges, FP4 chosen ranges) of an unpruned tensor
    // quantize its rows from this mapping (Quantize), so its pages stay in until Done, where
    // the tensor fits the memory budget's share (keep_tensor_bytes_); otherwise each block's
    // rows go as soon as they are searched, so that the search holds a few blocks' pages,
    // not the tensor's.
    const bool keep = (int_kept || asym_kept || by_absmax) && !pt.prune &&
                      pt.src_bytes <= keep_tensor_bytes_;
    tbb::parallel_for(tbb::blocked_range<size_t>(0, rows, block),
                      [&](const tbb::blocked_range<size_t>& r) {
      const size_t n = r.end() - r.begin();
      const uint8_t* src = base + r.begin() * cols * esz;
      std::vector<uint8_t> pruned;
      if (pt.prune) {
        pruned.resize(n * cols * esz);
        if (!PruneRows(pt, src, r.begin(), n, pruned.data())) {
          finite = false;
          return;
        }
        src = pruned.data();
      }
      uint32_t bits = 0;
      // best_error starts at finfo(f32).max and the masks at 0: filled by the search
      // (`fresh`), per block while in cache.
      thread_local std::vector<double> best;
      best.resize(std::max(best.size(), n * ng));
      if (!SearchSteps(chunk_of(src, n), f, imp, opt, 0, last, best.data(),
                       masks.data() + r.begin() * ng, &bits, /*exact_best=*/false,
                       by_absmax || int_kept ? absmax.data() + r.begin() * ng : nullptr,
                       asym_kept ? minmax.data() + 2 * r.begin() * ng : nullptr,
                       /*fresh=*/true)) {
        finite = false;
      }
      improved.fetch_or(bits);
      if (!keep) map_->Release(pt.src_offset + r.begin() * cols * esz, n * cols * esz);
    });
    const int stop = StopStep(improved.load(), opt);
    // Kept (above): until Done (a mapping replaced by the next shard's stays open while a
    // tensor holds it; SearchedAbsMax bounds how many searched ahead hold theirs). Otherwise
    // what is left goes now.
    if (keep && finite) {
      out.rows = map_;
    } else {
      map_->Release(pt.src_offset, pt.src_bytes);
    }
    auto steps = std::make_shared<KeptChoices>();
    if (!finite) {
      out.finite = false;
      out.steps = steps;
      return out;
    }
    if (by_absmax) {
      // Per group its chosen pos, a value of D kept in D's encoding (Quantize widens a
      // chunk's), and the largest for the global scale; row blocks in parallel (the maximum
      // is the same in any order).
      steps->resize(masks.size() * esz);
      std::mutex amax_mu;
      tbb::parallel_for(tbb::blocked_range<size_t>(0, rows, block),
                        [&](const tbb::blocked_range<size_t>& rr) {
        const size_t k0 = rr.begin() * ng;
        const float m = ChosenPos(absmax.data() + k0, masks.data() + k0, rr.size() * ng, stop,
                                  opt, pt.dtype, steps->data() + k0 * esz);
        std::lock_guard<std::mutex> lock(amax_mu);
        out.amax = std::max(out.amax, m);
      });
      out.steps = steps;
      return out;
    }
    if (asym_kept) {
      // Per group its chosen scale in bf16's encoding, then per group its zero point
      // (Quantize: QuantizeIntKept), row blocks in parallel.
      steps->resize(masks.size() * 3);
      tbb::parallel_for(tbb::blocked_range<size_t>(0, rows, block),
                        [&](const tbb::blocked_range<size_t>& rr) {
        const size_t k0 = rr.begin() * ng;
        IntKeptParams(chunk_of(base, 1), opt, minmax.data() + 2 * k0, masks.data() + k0,
                      rr.size() * ng, stop, steps->data() + k0 * 2,
                      reinterpret_cast<int8_t*>(steps->data() + masks.size() * 2 + k0));
      });
      out.steps = steps;
      return out;
    }
    if (int_kept) {
      // Per group its chosen scale in bf16's encoding (Quantize: QuantizeIntKept), row
      // blocks in parallel.
      steps->resize(masks.size() * 2);
      tbb::parallel_for(tbb::blocked_range<size_t>(0, rows, block),
                        [&](const tbb::blocked_range<size_t>& rr) {
        const size_t k0 = rr.begin() * ng;
        IntKeptScales(chunk_of(base, 1), opt, absmax.data() + k0, masks.data() + k0,
                      rr.size() * ng, stop, steps->data() + k0 * 2);
      });
      out.steps = steps;
      return out;
    }
    steps->resize(masks.size());
    for (size_t i = 0; i < masks.size(); ++i) (*steps)[i] = ChosenStep(masks[i], stop);
    if (f == ImatrixFormat::kNvfp4) {
      // The largest chosen range, for the global scale. Pruning keeps each row's largest
      // magnitudes, but a group's range may change with it: read the rows as searched. Row
      // blocks in parallel (on the input stage's thread alone it held up the pipeline); the
      // maximum is the same in any order.
      std::atomic<bool> ranges_ok{true};
      std::mutex amax_mu;
      tbb::parallel_for(tbb::blocked_range<size_t>(0, rows, block),
                        [&](const tbb::blocked_range<size_t>& rr) {
        std::vector<float> pos(rr.size() * ng);
        const uint8_t* src = base + rr.begin() * cols * esz;
        std::vector<uint8_t> pruned;
        if (pt.prune) {
          pruned.resize(rr.size() * cols * esz);
          if (!PruneRows(pt, src, rr.begin(), rr.size(), pruned.data())) {
            ranges_ok = false;
            return;
          }
          src = pruned.data();
        }
        if (!ChosenRanges(chunk_of(src, rr.size()), f, opt, steps->data() + rr.begin() * ng,
                          pos.data())) {
          ranges_ok = false;
          return;
        }
        const float m = pos.empty() ? 0.f : *std::max_element(pos.begin(), pos.end());
        std::lock_guard<std::mutex> lock(amax_mu);
        out.amax = std::max(out.amax, m);
      });
      if (!ranges_ok) out.finite = false;
      map_->Release(pt.src_offset, pt.src_bytes);
    }
    out.steps = steps;
    return out;
  }

  // Rows [r0, r0 + n) of a pruned tensor as the pipeline prunes them.
  bool PruneRows(const PlannedTensor& pt, const uint8_t* src, size_t r0, size_t n,
                 uint8_t* dst) {
    const size_t cols = pt.shape[1];
    if (pt.prune_scale >= 0) {
      return WandaPruneRows(src, dst, pt.dtype, n, cols, spec_,
                            plan_.prune_scales[pt.prune_scale].data(), nullptr);
    }
    if (plan_.prune.per_tensor) {
      const PlannedPruneThreshold& pth = *pt.prune_threshold;  // from the pre-pass
      prune::TensorThreshold th;
      th.magnitude = pth.magnitude;
      th.prune_equal = pth.equal;
      th.pruned = pth.total;
      return prune::PruneRowsTensor(src, dst, pt.dtype, n, cols, th, pth.equal_before[r0],
                                    nullptr);
    }
    return prune::PruneRows(src, dst, pt.dtype, n, cols, spec_, nullptr);
  }

  const Plan& plan_;
  Statistics stats_;
  const prune::PruneSpec spec_;
  const std::vector<ImatrixOptions> group_opts_;  // per plan group
  std::string imp_key_;
  std::vector<float> imp_;  // input stage only
  // SearchTensor's per-group scratch (input stage only): masks, largest |x|.
  NoFillVector<uint32_t> masks_;
  NoFillVector<float> absmax_;
  NoFillVector<float> minmax_;
  std::shared_ptr<MappedFile> map_;
  std::filesystem::path map_path_;
  std::map<size_t, Searched> kept_;  // searched by the pre-pass, not yet prepared
  uint64_t kept_bytes_ = 0;
  const uint64_t keep_rows_bytes_;
  const uint64_t keep_tensor_bytes_;
  uint64_t kept_rows_bytes_ = 0;  // source bytes whose pages kept_'s searches hold
  std::mutex mu_;
  std::map<size_t, Live> live_;
};

}  // namespace

Result<std::unique_ptr<ImatrixRun>> MakeImatrixRun(const Plan& plan,
                                                   const ConvertOptions& options) {
  const bool any = std::any_of(
      plan.tensors.begin(), plan.tensors.end(),
      [](const PlannedTensor& t) { return !t.calib.value_or_default().imatrix_site.empty(); });
  if (!any || options.algorithm != "rtn") return std::unique_ptr<ImatrixRun>();
  QUENCH_ASSIGN_OR_RETURN(Statistics stats, Statistics::Open(options.stats));
  std::vector<ImatrixOptions> opts;
  for (const PlannedGroup& g : plan.groups) {
    if (g.observer != "imatrix_mse") {
      opts.emplace_back();
      continue;
    }
    QUENCH_ASSIGN_OR_RETURN(ImatrixOptions o, ImatrixOptionsFromKwargs(g.observer_kwargs));
    opts.push_back(o);
  }
  // With --resume or as a worker, every global scale is computed before the pipeline starts
  // (some shards then skipped): the searches kept ahead hold no pages (as the pre-pass and
  // smoothing keep none then); otherwise an eighth of the memory budget, at most 256 MiB
  // (the default 2 GiB budget's eighth): a small --memory-limit keeps few or none.
  const uint64_t share = std::min<uint64_t>(options.memory_limit / 8, uint64_t{256} << 20);
  const uint64_t keep_rows = options.resume || options.workers > 0 ? 0 : share;
  return std::unique_ptr<ImatrixRun>(
      new ImatrixRunImpl(plan, std::move(stats), std::move(opts), keep_rows, share));
}

}  // namespace quench::calib
