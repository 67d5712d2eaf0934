// One structurally sound module's values, walked row by row through the mappings: its scales,
// its codes and zero points, and against the source (the source as pruned with --prune) every
// element's hard error bound and the tensor's SQNR; without the source, with --prune, the
// structure of the dequantized zeros.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>

#include "format/source_ct.h"
#include "schemes/float_formats.h"
#include "verify/messages.h"
#include "verify/pruned_rows.h"
#include "verify/verifier.h"
#include "verify/zero_structure.h"

namespace quench::verify {

// What the walk over one module's rows counts, and the first instance of each finding.
struct WalkTally {
  // Codes and zero points.
  uint64_t bad_codes = 0, bad_zp = 0;
  std::string bad_code_text;
  // Against the source: signal and error energy, bound violations and the worst ratio.
  double sx2 = 0, se2 = 0, worst = 0;
  uint64_t violations = 0;
  std::string worst_text;
  // --prune with SRC: elements zero in the pruned source that do not dequantize to 0.
  uint64_t pruned_nonzero = 0;
  std::string pruned_text;
  // --prune without SRC: groups or rows short of zeros, and zeros in the whole tensor.
  uint64_t sparse_short = 0, zeros_total = 0;
  std::string sparse_text;
  // A lossless repack: elements whose dequantized value differs from the decoded source.
  uint64_t lossless_diff = 0;
  std::string lossless_text;
};

namespace {

// --prune without SRC: the zeros of row r (elements whose code is its zero point), per N:M
// group or per row; a per-tensor spec is judged on the total after the walk.
void TallyZeroStructure(const ModuleView& v, const RowBuffers& b, uint64_t r,
                        const prune::PruneSpec& ps, uint64_t row_prune, WalkTally& t) {
  uint64_t row_zeros = 0;
  for (uint64_t c = 0; c < v.in; ++c) row_zeros += !b.bad_code[c] && b.q[c] == b.zp[c];
  t.zeros_total += row_zeros;
  if (ps.kind == prune::PruneSpec::kNM && v.in % static_cast<uint64_t>(ps.m) == 0) {
    for (uint64_t g0 = 0; g0 < v.in; g0 += static_cast<uint64_t>(ps.m)) {
      int z = 0;
      for (int j = 0; j < ps.m; ++j) z += !b.bad_code[g0 + j] && b.q[g0 + j] == b.zp[g0 + j];
      if (z < ps.m - ps.n && t.sparse_short++ == 0) {
        t.sparse_text = "row " + std::to_string(r) + ", columns " + std::to_string(g0) + ".." +
                        std::to_string(g0 + ps.m - 1) + " hold " + std::to_string(z) + " zeros";
      }
    }
  } else if (row_zeros < row_prune && t.sparse_short++ == 0) {
    t.sparse_text = "row " + std::to_string(r) + " holds " + std::to_string(row_zeros) +
                    " zeros of " + std::to_string(v.in);
  }
}

// Element [r, c] against its source value x: the SQNR sums, the pruned-zero rule, and the hard
// bound, in the quotient domain of the stored scale. `u` is the quotient's relative rounding.
void TallyAgainstSource(const RowBuffers& b, uint64_t r, uint64_t c, double x, bool pruned,
                        const ModuleView& v, double u, WalkTally& t) {
  const double s = b.s[c], z = b.zp[c];
  const double deq = (b.q[c] - z) * s;
  const double e = x - deq;
  if (pruned && x == 0 && deq != 0 && t.pruned_nonzero++ == 0) {
    t.pruned_text = "[" + std::to_string(r) + ", " + std::to_string(c) + "] dequantizes to " +
                    Fmt("%.6g", deq);
  }
  t.sx2 += x * x;
  t.se2 += e * e;
  const double xs = x / s;
  const double q = xs + z;
  const double qc = std::clamp(q, v.qmin, v.qmax);
  // One grid step: round-to-nearest output stays within half of it, and error-feedback
  // rounding (GPTQ-style) stays within it too.
  const double allowed = b.gap[c] + u * (std::fabs(xs) + std::fabs(q)) + 1e-9 * (1 + std::fabs(q));
  const double dev = std::fabs(qc - b.q[c]);
  const double ratio = std::isfinite(dev) ? dev / allowed : (std::isnan(q) ? 0 : 1e30);
  if (ratio > 1) ++t.violations;
  if (ratio > t.worst) {
    t.worst = ratio;
    if (ratio > 1) {
      t.worst_text = "[" + std::to_string(r) + ", " + std::to_string(c) + "]: source " +
                     Fmt("%.6g", x) + ", dequantized " + Fmt("%.6g", deq) + " (" +
                     Fmt("%.3g", dev) + " grid units off, " + Fmt("%.3g", allowed) + " allowed)";
    }
  }
}

// Row r's codes and zero points, and each element against its source value when xrow is given.
void TallyRow(const ModuleView& v, const RowBuffers& b, uint64_t r, const uint8_t* xrow,
              bool pruned, double u, WalkTally& t) {
  for (uint64_t c = 0; c < v.in; ++c) {
    if (b.bad_code[c]) {
      if (t.bad_codes++ == 0)
        t.bad_code_text = "[" + std::to_string(r) + ", " + std::to_string(c) + "]";
      continue;
    }
    if (v.zp && (b.zp[c] < v.qmin || b.zp[c] > v.qmax)) ++t.bad_zp;
    if (xrow == nullptr) continue;
    TallyAgainstSource(b, r, c, LoadFloat(xrow, v.xdt, c), pruned, v, u, t);
    if (v.lossless) {
      uint16_t x;
      std::memcpy(&x, xrow + 2 * c, 2);
      const uint16_t d = CtDequantizedBF16(v, b, c);
      if (d != x && t.lossless_diff++ == 0) {
        t.lossless_text = "[" + std::to_string(r) + ", " + std::to_string(c) +
                          "] dequantizes to " + Fmt("%.6g", BF16ToF32(d)) + ", the source to " +
                          Fmt("%.6g", BF16ToF32(x));
      }
    }
  }
}

}  // namespace

void Verifier::WalkModule(ModuleView& v, const std::string& file,
                          const std::vector<std::string>& names) {
  if (!CheckScales(v)) return;
  const Group& g = *v.g;
  const double u = g.format == Format::kNvfp4 ? QuotientRounding(DType::kF32)
                                              : QuotientRounding(v.xdt);
  // Bytes of a source row as stored (an FP8 source's E4M3 codes: decoded chunk by chunk into
  // `decoded`, rows [dec_begin, dec_end), which the walk then compares against).
  const uint64_t row_src_bytes =
      !v.x ? 0
      : v.xscale && v.xscale->ct ? v.xscale->ct->code_row_bytes
                                 : v.in * DTypeBits(v.xscale ? DType::kF8E4M3 : v.xdt) / 8;
  std::vector<uint8_t> decoded;
  uint64_t dec_begin = 0, dec_end = 0;
  const uint64_t rows_per_chunk =
      std::max<uint64_t>(1, kChunkBytes / std::max<uint64_t>(1, v.in * 4));
  // --prune: against SRC, the source as pruned (a pruned element must dequantize to exactly 0);
  // without SRC, the structure of the dequantized zeros.
  const prune::PruneSpec& ps = opt_.prune;
  const std::string wname = v.module + ".weight";
  std::optional<PrunedRows> pruned;
  // SparseGPT: its own mask and updated values; only the zeros' structure is checked.
  const bool own_mask = pruning() && opt_.prune_updates;
  std::optional<ZeroStructure> zs;
  std::vector<uint8_t> zero;
  if (own_mask) {
    zs.emplace(ps, v.out, v.in, opt_.prune_block);
    zero.resize(v.in);
  }
  if (pruning() && v.x && !own_mask) {
    pruned.emplace(ps, v.x, v.xdt, v.out, v.in);
    if (!pruned->Init([&](uint64_t bytes) { ReleaseSourceWeight(v, bytes); })) {
      Problem("SRC:" + src_->FileOf(wname), wname, "pruned",
              "the source holds NaN or Inf, so it cannot be pruned to compare");
      return;
    }
  }
  const uint64_t row_prune = ps.kind == prune::PruneSpec::kUnstructured && !ps.per_tensor
                                 ? prune::PruneCount(ps.fraction, v.in) : 0;
  WalkTally t;
  RowBuffers b;
  for (uint64_t r = 0; r < v.out; ++r) {
    DecodeRow(v, r, b);
    const uint8_t* xrow = nullptr;
    if (v.x) {
      if (v.xscale != nullptr && r == dec_end) {
        dec_begin = r;
        dec_end = std::min(v.out, r + rows_per_chunk);
        decoded.resize((dec_end - dec_begin) * v.in * 2);
        if (!DecodeSourceRows(wname, *v.xscale, v.x + r * row_src_bytes, v.in, dec_begin,
                              dec_end, decoded.data())) {
          return;
        }
      }
      xrow = v.xscale != nullptr ? decoded.data() + (r - dec_begin) * v.in * 2
             : pruned            ? pruned->Row(r)
                                 : v.x + r * row_src_bytes;
      if (xrow == nullptr) {
        Problem("SRC:" + src_->FileOf(wname), wname, "pruned",
                "the source holds NaN or Inf in row " + std::to_string(r) +
                    ", so it cannot be pruned to compare");
        return;
      }
    }
    if (own_mask) {
      for (uint64_t c = 0; c < v.in; ++c) zero[c] = !b.bad_code[c] && b.q[c] == b.zp[c];
      zs->AddRow(r, zero);
      xrow = nullptr;
    } else if (pruning() && !v.x) {
      TallyZeroStructure(v, b, r, ps, row_prune, t);
    }
    TallyRow(v, b, r, xrow, pruned.has_value(), u, t);
    if ((r + 1) % rows_per_chunk == 0) {
      // Release what has been walked (the whole tensors are released at the end as well).
      if (v.x) ReleaseSourceWeight(v, (r + 1) * row_src_bytes);
      for (const std::string& n : names) dst_.Release(n);
    }
  }
  const std::string& qname = names.front();
  ReportCodes(v, qname, t);
  if (own_mask) {
    if (v.x) ReleaseSourceWeight(v, v.out * row_src_bytes);
    const std::string why = zs->Finish();
    if (!why.empty()) {
      Problem(file, qname, "sparsity",
              "dequantized zeros do not have the structure SparseGPT " + PruneText(ps) +
                  " leaves: " + why);
    }
    return;
  }
  if (pruning() && !v.x) ReportZeroStructure(v, file, qname, t);
  if (v.x == nullptr) return;
  ReportAgainstSource(v, file, qname, row_src_bytes, t);
}

// Scales: finite and > 0, or 0 in a lossless repack (E8M0: not the NaN exponent 255; E4M3: not
// a NaN code). False (with
// the problem reported) when any is not, as nothing dequantizes meaningfully then.
bool Verifier::CheckScales(const ModuleView& v) {
  const Group& g = *v.g;
  uint64_t n = 1;
  for (uint64_t d : v.sshape) n *= d;
  uint64_t bad = 0, first = 0;
  double first_val = 0;
  for (uint64_t i = 0; i < n; ++i) {
    double s;
    if (g.format == Format::kMxfp4 || g.format == Format::kMxfp8) {
      s = v.scale[i] == 255 ? std::numeric_limits<double>::quiet_NaN() : 1.0;
    } else if (g.format == Format::kNvfp4) {
      s = (v.scale[i] & 0x7F) == 0x7F ? std::numeric_limits<double>::quiet_NaN()
                                      : E4M3ToF32(v.scale[i]);
    } else {
      s = LoadFloat(v.scale, v.sdt, i);
    }
    // A lossless repack keeps the source's scales, zero included (its group decodes to zeros).
    if (!(std::isfinite(s) && (s > 0 || (v.lossless && s == 0)))) {
      if (bad++ == 0) {
        first = i;
        first_val = s;
      }
    }
  }
  if (bad == 0) return true;
  const std::string sname = v.module + ".weight_scale";
  Problem(dst_.FileOf(sname), sname, "scale",
          std::to_string(bad) + " scale(s) not finite and positive, first at flat index " +
              std::to_string(first) + " = " + Fmt("%g", first_val));
  return false;
}

// Releases the pages of the first `bytes` of the module's source weight.
void Verifier::ReleaseSourceWeight(const ModuleView& v, uint64_t bytes) const {
  // A linearized stack's piece is assembled in memory, freed once its module is checked.
  if (src_->folder.linear_pieces.contains(v.module + ".weight")) return;
  uint64_t off;
  const MappedFile* m;
  src_->Data(v.module + ".weight", &off, &m);
  m->Release(off, bytes);
}

void Verifier::ReportCodes(const ModuleView& v, const std::string& qname, const WalkTally& t) {
  if (t.bad_codes) {
    Problem(dst_.FileOf(qname), qname, "code",
            std::to_string(t.bad_codes) + " invalid code(s) (E4M3 NaN or int outside [" +
                Fmt("%g", v.qmin) + ", " + Fmt("%g", v.qmax) + "]), first at " + t.bad_code_text);
  }
  if (t.bad_zp) {
    const std::string zname = v.module + ".weight_zero_point";
    Problem(dst_.FileOf(zname), zname, "code",
            std::to_string(t.bad_zp) + " element(s) with a zero point outside [" +
                Fmt("%g", v.qmin) + ", " + Fmt("%g", v.qmax) + "]");
  }
}

// --prune without SRC: the zeros must have the spec's structure (per N:M group, per row, or in
// count over the whole tensor for a per-tensor spec).
void Verifier::ReportZeroStructure(const ModuleView& v, const std::string& file,
                                   const std::string& qname, WalkTally& t) {
  const prune::PruneSpec& ps = opt_.prune;
  if (ps.kind == prune::PruneSpec::kUnstructured && ps.per_tensor) {
    const uint64_t k = prune::PruneCount(ps.fraction, v.out * v.in);
    if (t.zeros_total < k) {
      t.sparse_short = 1;
      t.sparse_text = "the tensor holds " + std::to_string(t.zeros_total) + " zeros, " +
                      std::to_string(k) + " expected";
    }
  }
  if (t.sparse_short) {
    Problem(
        file, qname, "sparsity",
        "dequantized zeros do not have the structure of --prune " + PruneText(ps) + ": " +
            t.sparse_text +
            (t.sparse_short > 1 ? " (and " + std::to_string(t.sparse_short - 1) + " more)" : ""));
  }
}

// With SRC: the module's quality entry, and the pruned, error-bound and sqnr rules.
void Verifier::ReportAgainstSource(const ModuleView& v, const std::string& file,
                                   const std::string& qname, uint64_t row_src_bytes,
                                   const WalkTally& t) {
  const Group& g = *v.g;
  AddBytesCompared(v.out * row_src_bytes);
  if (t.pruned_nonzero) {
    Problem(file, qname, "pruned",
            std::to_string(t.pruned_nonzero) + " element(s) zero in the source pruned by " +
                PruneText(opt_.prune) + " do not dequantize to exactly 0; first " + t.pruned_text);
  }
  TensorQuality tq;
  tq.module = v.module;
  tq.file = file;
  tq.group = g.key;
  tq.kind = g.kind();
  tq.elements = v.out * v.in;
  tq.sqnr_db = t.se2 == 0 ? std::numeric_limits<double>::infinity()
               : t.sx2 == 0 ? -std::numeric_limits<double>::infinity()
                            : 10 * std::log10(t.sx2 / t.se2);
  tq.threshold_db = SqnrThresholdDb(tq.kind, g.per_channel()) + opt_.sqnr_margin_db;
  tq.worst_bound_ratio = t.worst;
  tq.bound_violations = t.violations;
  AddQuality(std::move(tq));
  if (t.lossless_diff) {
    Problem(file, qname, "lossless",
            std::to_string(t.lossless_diff) + " element(s) do not dequantize to the decoded "
                "source's value, as a lossless repack of it must; first " + t.lossless_text);
  }
  if (t.violations) {
    Problem(file, qname, "error-bound",
            std::to_string(t.violations) + " element(s) farther from the source than " +
                g.format_name + " allows; worst " + t.worst_text);
  }
  if (tq.sqnr_db < tq.threshold_db) {
    Problem(file, qname, "sqnr",
            "SQNR " + Fmt("%.2f", tq.sqnr_db) + " dB against the source, below the " + tq.kind +
                " threshold of " + Fmt("%.1f", tq.threshold_db) + " dB");
  }
}

}  // namespace quench::verify
