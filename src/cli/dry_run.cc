// `quench convert --dry-run`: the groups, pruning and expert pruning planned, one row per
// tensor (action, scheme, bytes in and out, and a note saying why), the output shards and
// files, a worker's share of the shards, and the totals; the plan's notes and errors on
// stderr. Reads headers only, so every user error a real run would stop at is listed.
#include "cli/dry_run.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "cli/cli.h"
#include "pipeline/dry_run.h"
#include "pipeline/workers.h"

namespace quench::cli {
namespace {

std::string Bytes(uint64_t b) {
  char buf[32];
  if (b >= (1ull << 30))
    std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(b) / (1ull << 30));
  else if (b >= (1ull << 20))
    std::snprintf(buf, sizeof buf, "%.2f MiB", static_cast<double>(b) / (1ull << 20));
  else if (b >= 1024) std::snprintf(buf, sizeof buf, "%.1f KiB", static_cast<double>(b) / 1024);
  else std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(b));
  return buf;
}

// --prune-experts in the dry run: the experts each MoE layer keeps, and what is not read.
void PrintExpertPrune(const PlannedExpertPrune& e) {
  std::printf("  expert pruning %g by %s: %llu tensors and %s of the source not read; "
              "config.json %s = %zu\n",
              e.fraction, e.metric.c_str(), static_cast<unsigned long long>(e.tensors_removed),
              Bytes(e.bytes_removed).c_str(), e.config_key.c_str(),
              e.layers.empty() ? size_t{0} : e.layers.front().kept.size());
  for (const PlannedExpertLayer& l : e.layers) {
    std::string kept;
    for (uint32_t k : l.kept) {
      // (Appended in two steps: `(cond ? "" : ",") + std::to_string(k)` draws GCC 12's
      // -Wrestrict false positive.)
      if (!kept.empty()) kept += ',';
      kept += std::to_string(k);
    }
    std::printf("    %s: keeps %zu of %llu experts: %s\n", l.router.c_str(), l.kept.size(),
                static_cast<unsigned long long>(l.experts), kept.c_str());
    // Every expert's score (and, for REAP, the tokens it was measured on), in expert order.
    std::string scores;
    for (size_t i = 0; i < l.scores.size(); ++i) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%s%zu:%.6g", i ? " " : "", i, l.scores[i]);
      scores += buf;
      if (i < l.tokens.size()) {
        scores += '/';
        scores += std::to_string(l.tokens[i]);
      }
    }
    std::printf("      %s: %s\n", l.tokens.empty() ? "scores" : "saliency/tokens", scores.c_str());
  }
}

// Appends `s` up to its first NUL (as printf's %s prints a string's c_str()) padded with
// spaces to `width` bytes, on the right (left-aligned, "%-*s") or on the left ("%*s").
void AppendField(std::string& out, std::string_view s, size_t width, bool left) {
  const std::string_view v = s.substr(0, s.find('\0'));
  const size_t pad = v.size() < width ? width - v.size() : 0;
  if (!left) out.append(pad, ' ');
  out += v;
  if (left) out.append(pad, ' ');
}

// A number's decimal digits (std::to_string's), in `buf`.
std::string_view Decimal(uint64_t v, std::array<char, 24>& buf) {
  return {buf.data(), static_cast<size_t>(
                          std::to_chars(buf.data(), buf.data() + buf.size(), v).ptr - buf.data())};
}

// The dry run's note on one tensor: why it is left alone, or how it is quantized, pruned or
// calibrated (the fused set's shared scale, GPTQ's or SparseGPT's Hessian, imatrix_mse).
std::string DryRunNote(const Plan& p, const PlannedTensor& t) {
  const bool q = t.action == TensorAction::kQuantize;
  std::string note = q || t.action == TensorAction::kPrune ? "" : t.why;
  if (t.prune) {
    note = "pruned " + p.prune.text + (t.prune_scale >= 0 ? " (wanda)" : "") +
           (note.empty() ? "" : "; " + note);
  }
  if (t.source_scale) {
    note = "from " + std::string(DTypeName(t.dtype)) + (note.empty() ? "" : "; " + note);
  }
  if (q && t.fused_set >= 0 && p.fused_sets[static_cast<size_t>(t.fused_set)].size() > 1) {
    note = "global scale shared by " +
           std::to_string(p.fused_sets[static_cast<size_t>(t.fused_set)].size()) + " tensors";
  }
  // calib.site is GPTQ's or SparseGPT's Hessian (both, composed), calib.imatrix_site the
  // imatrix_mse observer's E[x^2].
  const PlannedCalibration& calib = t.calib.value_or_default();
  const bool imx = !calib.imatrix_site.empty();
  // Which stages ran, from the fingerprint each stage left (src/calib/composite.h); a
  // recipe's modifiers set them as the flags do.
  const bool sgpt = p.calib_fingerprint.find("sparsegpt{") != std::string::npos;
  const bool gptq = p.calib_fingerprint.find("gptq{") != std::string::npos;
  if (q && imx) {
    note = (t.prune ? "pruned " + p.prune.text + (t.prune_scale >= 0 ? " (wanda); " : "; ")
                    : std::string()) +
           "imatrix_mse, E[x^2] of " + calib.imatrix_site;
  } else if (q && gptq && !calib.site.empty()) {
    note = (t.prune ? (sgpt ? "SparseGPT " : "pruned ") + p.prune.text +
                          (t.prune_scale >= 0 ? " (wanda); " : "; ")
                    : std::string()) +
           "GPTQ, Hessian of " + calib.site;
  }
  if (q && !calib.note.empty()) note = (imx ? "imatrix_mse: " : "RTN: ") + calib.note;
  if (sgpt && !gptq && t.prune && !calib.site.empty()) {
    note = "SparseGPT " + p.prune.text + ", Hessian of " + calib.site;
  }
  if (!imx && t.prune && !calib.note.empty()) {
    note = "magnitude " + p.prune.text + ": " + calib.note;
  }
  if (t.smoothed) note = "smoothed" + std::string(note.empty() ? "" : "; " + note);
  return note;
}

// --worker I/N: the output shards this worker writes and how even the shares are.
void PrintWorkerShare(const Plan& p, const ConvertOptions& o) {
  // The share is a pure function of the plan (AssignShards): every worker computes the same.
  const std::vector<uint64_t> costs = ShardCosts(p);
  const std::vector<int> owner = AssignShards(costs, o.workers);
  std::vector<uint64_t> load(static_cast<size_t>(o.workers), 0);
  for (size_t k = 0; k < owner.size(); ++k) load[static_cast<size_t>(owner[k])] += costs[k];
  std::printf("\nworker %d/%d (%s) writes:\n", o.worker_index, o.workers, o.worker_source.c_str());
  size_t mine = 0;
  for (size_t k = 0; k < owner.size(); ++k) {
    if (owner[k] != o.worker_index) continue;
    ++mine;
    std::printf("  %-40s %14llu bytes (%s)\n", p.shards[k].rel_name.c_str(),
                static_cast<unsigned long long>(p.shards[k].file_size),
                Bytes(p.shards[k].file_size).c_str());
  }
  if (mine == 0) std::printf("  (nothing: more workers than output shards)\n");
  const uint64_t most = *std::max_element(load.begin(), load.end());
  uint64_t all = 0;
  for (uint64_t l : load) all += l;
  std::printf("share: %zu of %zu shards, %s of %s source bytes; the busiest worker has %s "
              "(%.2fx the mean)\n",
              mine, p.shards.size(), Bytes(load[static_cast<size_t>(o.worker_index)]).c_str(),
              Bytes(all).c_str(), Bytes(most).c_str(),
              all ? static_cast<double>(most) * o.workers / static_cast<double>(all) : 0.0);
}

// The plan's heading: source and destination, its config groups, pruning and expert pruning.
void PrintPlanHead(const Plan& p, const ConvertOptions& o) {
  std::printf("plan: %s -> %s\n", p.src.c_str(), o.dst.c_str());
  for (const PlannedGroup& g : p.groups) {
    std::string targets;
    for (const std::string& t : g.targets) targets += (targets.empty() ? "" : ", ") + t;
    std::printf("  group %-16s %-12s %-22s targets %s: %zu tensors\n", g.key.c_str(),
                g.scheme ? std::string(g.scheme->name).c_str() : "none",
                g.scheme ? std::string(g.scheme->format).c_str() : "(pruning only)",
                targets.c_str(), g.tensors);
  }
  if (!p.prune.text.empty()) {
    std::printf("  pruning %s (%s, per %s)\n", p.prune.text.c_str(), p.prune.structure.c_str(),
                p.prune.per_tensor ? "tensor" : "row");
  }
  if (p.expert_prune) PrintExpertPrune(*p.expert_prune);
}

// The table of every tensor (name, action, scheme, bytes in and out, note). Returns how
// many are quantized.
uint64_t PrintTensorTable(const Plan& p) {
  size_t width = 6;
  for (const PlannedTensor& t : p.tensors) width = std::max(width, t.name.size());
  std::printf("%-*s  %-8s %-12s %12s %12s  %s\n", static_cast<int>(width), "tensor", "action",
              "scheme", "bytes in", "bytes out", "note");
  uint64_t quantized = 0;
  std::string rows;  // the table's rows, written a MiB at a time (one printf per row was a
                     // tenth of a dry run of 70k tensors)
  for (const PlannedTensor& t : p.tensors) {
    uint64_t out = 0;
    for (size_t oi : t.outputs) out += p.shards[t.shard].outputs[oi].nbytes;
    const bool q = t.action == TensorAction::kQuantize;
    quantized += q;
    const std::string note = DryRunNote(p, t);
    // printf("%-*s  %-8s %-12s %12llu %12llu  %s\n", ...), written into one buffer.
    AppendField(rows, t.name, width, true);
    rows += "  ";
    AppendField(rows,
                q                                   ? "quantize"
                : t.action == TensorAction::kPrune  ? "prune"
                : t.action == TensorAction::kDecode ? "decode"
                                                    : "copy",
                8, true);
    rows += ' ';
    AppendField(rows, q ? t.scheme->name : "-", 12, true);
    rows += ' ';
    std::array<char, 24> digits;
    AppendField(rows, Decimal(t.src_bytes, digits), 12, false);
    rows += ' ';
    AppendField(rows, Decimal(out, digits), 12, false);
    rows += "  ";
    rows += std::string_view(note).substr(0, note.find('\0'));
    rows += '\n';
    if (rows.size() >= (1u << 20)) {
      std::fwrite(rows.data(), 1, rows.size(), stdout);
      rows.clear();
    }
  }
  std::fwrite(rows.data(), 1, rows.size(), stdout);
  return quantized;
}

}  // namespace

// --dry-run: the plan as a table on stdout; notes (as a run prints them: not with -q) and
// errors on stderr.
int PrintDryRun(const ConvertOptions& o, bool quiet) {
  auto plan = DryRunListing(o);
  if (!plan.ok()) return ReportStatus(plan.status());
  // Left for the process's exit to release (the dry run is the last thing the process does):
  // freeing an MoE checkpoint's plan, 10^5 small allocations one by one, would lengthen a
  // many-tensor dry run for nothing.
  const Plan& p = *new Plan(std::move(*plan));
  PrintPlanHead(p, o);
  const uint64_t quantized = PrintTensorTable(p);
  std::printf("\noutput shards:\n");
  for (const PlannedShard& ps : p.shards) {
    std::printf("  %-40s %14llu bytes (%s)\n", ps.rel_name.c_str(),
                static_cast<unsigned long long>(ps.file_size), Bytes(ps.file_size).c_str());
  }
  for (const PlannedFile& f : p.files) {
    std::printf("  %-40s %s\n", f.rel_name.c_str(), f.copy_from.empty() ? "(written)" : "(copied)");
  }
  if (o.workers > 0) PrintWorkerShare(p, o);
  std::printf(
      "\ntotal: %zu tensors, %llu quantized; %s read, %s written (%.3fx)\n", p.tensors.size(),
      static_cast<unsigned long long>(quantized), Bytes(p.bytes_in).c_str(),
      Bytes(p.bytes_out).c_str(),
      p.bytes_in ? static_cast<double>(p.bytes_out) / static_cast<double>(p.bytes_in) : 0.0);
  std::printf("not checked without reading weights: NaN/Inf values\n");
  if (!quiet) {
    for (const std::string& n : p.notes) std::fprintf(stderr, "quench: %s\n", n.c_str());
  }
  for (const Status& e : p.errors)
    std::fprintf(stderr, "quench: error: %s\n", e.ToString().c_str());
  if (!p.errors.empty()) {
    std::fprintf(stderr, "quench: %zu error(s): a real run would stop before reading weights\n",
                 p.errors.size());
    return ExitCodeFor(p.errors.front().code());
  }
  return 0;
}

}  // namespace quench::cli
