// quench command line: `convert`, `inspect`, `schemes`. Everything here is argument handling
// and presentation; the work is in the library's Convert().
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "cli/cli.h"
#include "cli/finalize_cmd.h"
#include "cli/stats_cmd.h"
#include "cli/verify_cmd.h"
#include "cli/worker_env.h"
#include "plan/recipe_calib.h"
#include "quench/convert.h"
#include "quench/scheme.h"
#include "format/quant_config.h"
#include "pipeline/workers.h"
#include "plan/planner.h"

namespace quench::cli {
namespace {

std::atomic<bool> g_cancel{false};

void OnSignal(int) { g_cancel.store(true); }

const char kMainHelp[] =
    "quench " QUENCH_VERSION ": convert Hugging Face safetensors checkpoints into\n"
    "compressed-tensors checkpoints that vLLM loads, streaming tensor by tensor.\n"
    "\n"
    "usage: quench <command> [options]\n"
    "\n"
    "commands:\n"
    "  convert SRC DST --scheme NAME   quantize a checkpoint folder into DST\n"
    "  inspect PATH [--json]           list the tensors of a folder or .safetensors file\n"
    "  verify DST [SRC] [--json]       check a compressed-tensors checkpoint (against SRC)\n"
    "  finalize DST                    publish a folder converted by several workers\n"
    "  schemes                         list the quantization schemes\n"
    "  stats inspect|merge|import-imatrix ...  activation statistics for calibration\n"
    "\n"
    "  -h, --help      this help; `quench <command> --help` for a command's options\n"
    "  -V, --version   print the version\n"
    "\n"
    "exit codes: 0 success, 1 internal error, 2 usage error, 3 invalid or unsupported input\n"
    "(including NaN/Inf weights), 4 I/O failure, 130 interrupted.\n";

std::string ConvertHelp() {
  std::string s =
      "usage: quench convert SRC DST --scheme NAME [options]\n"
      "\n"
      "Reads the checkpoint folder SRC (one or more .safetensors shards, with or without an\n"
      "index; BF16, F16 or F32 weights) and writes a compressed-tensors checkpoint to DST:\n"
      "quantized shards under the same names, the index, config.json with its\n"
      "quantization_config, and every other file copied unchanged. SRC is never written.\n"
      "\n"
      "A tensor is quantized when it is a 2-D `<module>.weight`, the module name does not end\n"
      "in \"norm\", it matches --targets and matches no --ignore entry (compressed-tensors'\n"
      "rule), and, unless --no-default-ignore, it is not one of the modules vLLM loads\n"
      "unquantized (output head, embeddings, MoE router gates).\n"
      "\n"
      "options:\n"
      "  --scheme NAME         quantization scheme (required; `quench schemes` describes them):\n"
      "                       ";
  int col = 23;
  for (const SchemeInfo& sc : SchemeTable()) {
    if (!sc.needs_calibration.empty()) continue;
    if (col + sc.name.size() + 1 > 92) {
      s += "\n                       ";
      col = 23;
    }
    s += " " + std::string(sc.name);
    col += static_cast<int>(sc.name.size()) + 1;
  }
  s += "\n"
       "  --recipe FILE         several schemes in one run, instead of --scheme/--targets:\n"
       "                        a compressed-tensors QuantizationConfig (.json, also a\n"
       "                        config.json) or an llm-compressor YAML recipe with a\n"
       "                        QuantizationModifier (scheme, targets, ignore, config_groups)\n"
       "  --targets ENTRY       module to quantize (repeatable); exact name or re:REGEX\n"
       "                        (Python re.match: anchored at the start). Default: Linear (all)\n"
       "  --ignore ENTRY        module to leave unquantized (repeatable), same syntax; written\n"
       "                        verbatim to quantization_config.ignore\n"
       "  --no-default-ignore   quantize exactly what llm-compressor's model_free_ptq would;\n"
       "                        without it these are also left alone:";
  for (const DefaultIgnore& d : DefaultIgnores()) s += " " + std::string(d.pattern);
  s += "\n"
       "  --group-size N        integer schemes: inputs per scale (a multiple of 8), or -1 for\n"
       "                        one scale per output channel; default: the preset's (128)\n"
       "  --symmetric, --asymmetric\n"
       "                        integer schemes: without or with zero points; default: preset's\n"
       "  --prune SPEC          magnitude pruning before quantizing: unstructured:F zeroes the\n"
       "                        fraction F (0 <= F < 1) of each targeted weight with the\n"
       "                        smallest magnitudes; N:M keeps the N largest of every M\n"
       "                        consecutive inputs (M <= 16). With --scheme none, prune only\n"
       "  --prune-granularity G row (default: per output row) or tensor (unstructured only)\n"
       "  --prune-metric M      magnitude (default) or wanda: |W| x sqrt(E[x^2]) of the input\n"
       "                        channel from --stats, compared within each row, as\n"
       "                        llm-compressor's Wanda\n"
       "  --prune-experts F     remove the fraction F (0 <= F <= 1) of routed experts from\n"
       "                        every MoE layer (max(1, E - round(F*E)) kept), scored by\n"
       "                        --expert-metric; survivors renumbered, routers sliced,\n"
       "                        config.json's expert count updated. Composes with any\n"
       "                        --scheme (--scheme none: prune experts only)\n"
       "  --expert-metric M     magnitude (default): L1 norm of the expert's router row, as\n"
       "                        compressed-tensors' MagnitudeExpertPruner; reap: REAP saliency\n"
       "                        from --stats (collect-stats --reap), as llm-compressor's\n"
       "                        REAPPruningModifier (int(F*E) dropped, 0 < F < 1)\n"
       "  --stats STATS         activation statistics (a folder scripts/collect-stats wrote)\n"
       "  --static-activations  static per-tensor activation scales from --stats instead of\n"
       "                        dynamic per-token ones (W8A8, INT8, W4A8, FP8_DYNAMIC); FP8\n"
       "                        and NVFP4 always have them (input_scale, input_global_scale)\n"
       "  --asymmetric-activations\n"
       "                        static int8 activations with a zero point (input_zero_point)\n"
       "  --kv-cache fp8        FP8 KV cache: k_scale / v_scale per attention layer from the\n"
       "                        key/value ranges in --stats (collect-stats --kv-cache)\n"
       "  --algorithm A         rtn (default: round to nearest) or gptq: GPTQ from the full\n"
       "                        Hessians in --stats, as llm-compressor's GPTQModifier (integer\n"
       "                        schemes); weights without a Hessian are rounded to nearest\n"
       "                        and --dry-run and --report say why; or sparsegpt (with\n"
       "                        --prune N:M or unstructured:F): SparseGPT's mask and updates\n"
       "                        from the same Hessians instead of magnitude pruning; or\n"
       "                        smoothquant: llm-compressor's SmoothQuant from the min/max in\n"
       "                        --stats (norm weights rewritten, balance columns scaled), then\n"
       "                        RTN; or awq: llm-compressor's AWQ grid search from sum_abs and\n"
       "                        the Hessian (else sum_x2) in --stats, then RTN (integer schemes).\n"
       "                        A comma list composes them, run in the pipeline's order\n"
       "                        (smoothing, pruning, quantization) whatever the order given:\n"
       "                        e.g. smoothquant,gptq  awq,gptq  sparsegpt,gptq  awq,sparsegpt;\n"
       "                        GPTQ then sees the smoothed weights and Hessian, and keeps\n"
       "                        pruned weights (SparseGPT, magnitude or Wanda) at zero\n"
       "  --smoothing-strength A  SmoothQuant: alpha in [0, 1] (default 0.5)\n"
       "  --awq-duo-scaling D   AWQ: true (default), false or both, as AWQModifier.duo_scaling\n"
       "  --awq-n-grid N        AWQ: grid points (default 20)\n"
       "  --awq-search S        AWQ: screened (default: grid points dropped on estimates from\n"
       "                        nested row samples, the survivors' exact losses decide) or\n"
       "                        exact (every loss that can decide, certified)\n"
       "  --observer O          minmax (default) or imatrix_mse: each group's clipping range\n"
       "                        searched to minimise the error weighted by E[x^2] from --stats,\n"
       "                        as llm-compressor's imatrix_mse observer (integer, FP4 schemes)\n"
       "  --observer-arg K=V    imatrix_mse's observer_kwargs, repeatable: grid (20),\n"
       "                        maxshrink (0.95), norm (3.0), patience (5), expand (1.0),\n"
       "                        strict (false); written to config.json as llm-compressor does\n"
       "  --gptq-block-size N   GPTQ, SparseGPT: columns per lazy-update block (default 128)\n"
       "  --dampening F         GPTQ, SparseGPT: F x mean(diag H) added to H's diagonal\n"
       "                        (default 0.01)\n"
       "  --actorder A          GPTQ: static (= weight; the default) quantizes columns in\n"
       "                        decreasing diag(H) order, none in their order\n"
       "  --memory-limit SIZE   peak memory budget (K, M, G, T; powers of 1024); default 2G,\n"
       "                        or 3/4 of the cgroup's memory limit when that is smaller\n"
       "  --threads N           worker threads; default: every core\n"
       "  --no-direct-io        write the output through the page cache; by default weight\n"
       "                        shards are written with O_DIRECT where the file system allows\n"
       "                        it (faster, and the output does not evict the input's cache)\n"
       "  --dry-run             plan only: print every tensor's action, scheme and bytes, every\n"
       "                        output shard, totals, warnings and errors; read no weight and\n"
       "                        write nothing (except --report); exit 3 if a run would fail\n"
       "  --report FILE.json    write a JSON account: recipe as resolved, per tensor action,\n"
       "                        scheme, shapes and bytes, shards, totals, time, peak memory\n"
       "  --resume              finish an interrupted run in DST: output shards that were\n"
       "                        completed and synced, and match the source and recipe, are\n"
       "                        kept; everything else is redone\n"
       "  --overwrite           allow a DST that exists and is not empty (files of the same\n"
       "                        name are replaced; other files are left as they are)\n"
       "  --worker I/N          convert worker I's share (0 <= I < N) of the output shards\n"
       "                        into a DST shared by N workers; the last to finish publishes\n"
       "                        it (or `quench finalize DST`). Without it, taken from the\n"
       "                        launcher: Slurm job arrays (SLURM_ARRAY_TASK_*), srun\n"
       "                        (SLURM_PROCID), Open MPI (OMPI_COMM_WORLD_*), MPICH/Cray\n"
       "                        (PMI_RANK/SIZE), torchrun (RANK/WORLD_SIZE), Kubernetes\n"
       "                        indexed jobs (JOB_COMPLETION_INDEX with --workers N).\n"
       "                        A rerun resumes the worker's part. {worker} in --report's\n"
       "                        path becomes I\n"
       "  --workers N           the number of workers (Kubernetes: spec.completions)\n"
       "  --no-finalize         a worker never publishes DST: `quench finalize DST` does\n"
       "  -q, --quiet           no progress and no notes; errors only\n";
  return s;
}

bool TakeValue(const std::vector<std::string>& args, size_t& i, std::string& out,
               std::string& err) {
  const std::string& a = args[i];
  const size_t eq = a.find('=');
  if (eq != std::string::npos) {
    out = a.substr(eq + 1);
    return true;
  }
  if (i + 1 >= args.size()) {
    err = a + " needs a value";
    return false;
  }
  out = args[++i];
  return true;
}

std::string FlagName(const std::string& a) {
  const size_t eq = a.find('=');
  return eq == std::string::npos ? a : a.substr(0, eq);
}

class ProgressPrinter {
 public:
  explicit ProgressPrinter(bool quiet) : quiet_(quiet), tty_(isatty(STDERR_FILENO) == 1) {
    start_ = std::chrono::steady_clock::now();
  }
  void Update(const Progress& p) {
    if (quiet_ || p.bytes_total == 0) return;
    const auto now = std::chrono::steady_clock::now();
    const double secs = std::chrono::duration<double>(now - start_).count();
    if (!tty_ && now - last_ < std::chrono::seconds(10) && p.bytes_done != p.bytes_total) return;
    last_ = now;
    const double frac = static_cast<double>(p.bytes_done) / static_cast<double>(p.bytes_total);
    const double rate = secs > 0 ? static_cast<double>(p.bytes_done) / secs / 1e9 : 0;
    const double eta = rate > 0 ? static_cast<double>(p.bytes_total - p.bytes_done) / 1e9 / rate : 0;
    std::string cur(p.current.substr(0, 48));
    char eta_text[32] = "--";
    if (p.bytes_done > 0) std::snprintf(eta_text, sizeof eta_text, "%.0fs", eta);
    std::fprintf(stderr, "%s%5.1f%%  %.2f/%.2f GB  %.2f GB/s  ETA %5s  %-48s%s",
                 tty_ ? "\r" : "", 100 * frac, static_cast<double>(p.bytes_done) / 1e9,
                 static_cast<double>(p.bytes_total) / 1e9, rate, eta_text, cur.c_str(),
                 tty_ ? "" : "\n");
    drawn_ = tty_;
  }
  void Finish() {
    if (drawn_) std::fputc('\n', stderr);
    drawn_ = false;
  }

 private:
  bool quiet_, tty_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_, last_{};
};

std::string Bytes(uint64_t b) {
  char buf[32];
  if (b >= (1ull << 30)) std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(b) / (1ull << 30));
  else if (b >= (1ull << 20)) std::snprintf(buf, sizeof buf, "%.2f MiB", static_cast<double>(b) / (1ull << 20));
  else if (b >= 1024) std::snprintf(buf, sizeof buf, "%.1f KiB", static_cast<double>(b) / 1024);
  else std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(b));
  return buf;
}

// --dry-run: the plan as a table on stdout; notes and errors on stderr.
// --prune-experts in the dry run: the experts each MoE layer keeps, and what is not read.
void PrintExpertPrune(const PlannedExpertPrune& e) {
  std::printf("  expert pruning %g by %s: %llu tensors and %s of the source not read; "
              "config.json %s = %zu\n",
              e.fraction, e.metric.c_str(), static_cast<unsigned long long>(e.tensors_removed),
              Bytes(e.bytes_removed).c_str(), e.config_key.c_str(),
              e.layers.empty() ? size_t{0} : e.layers.front().kept.size());
  for (const PlannedExpertLayer& l : e.layers) {
    std::string kept;
    for (uint32_t k : l.kept) kept += (kept.empty() ? "" : ",") + std::to_string(k);
    std::printf("    %s: keeps %zu of %llu experts: %s\n", l.router.c_str(), l.kept.size(),
                static_cast<unsigned long long>(l.experts), kept.c_str());
    // Every expert's score (and, for REAP, the tokens it was measured on), in expert order.
    std::string scores;
    for (size_t i = 0; i < l.scores.size(); ++i) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%s%zu:%.6g", i ? " " : "", i, l.scores[i]);
      scores += buf;
      if (i < l.tokens.size()) scores += "/" + std::to_string(l.tokens[i]);
    }
    std::printf("      %s: %s\n", l.tokens.empty() ? "scores" : "saliency/tokens", scores.c_str());
  }
}

// Appends `s` (up to its NUL, as printf's %s) padded with spaces to `width` bytes, on the
// right (left-aligned, "%-*s") or on the left ("%*s").
void AppendField(std::string& out, const char* s, size_t width, bool left) {
  const std::string_view v(s);
  const size_t pad = v.size() < width ? width - v.size() : 0;
  if (!left) out.append(pad, ' ');
  out += v;
  if (left) out.append(pad, ' ');
}

int PrintDryRun(const ConvertOptions& o) {
  auto plan = DryRun(o);
  if (!plan.ok()) return ReportError(plan.status().ToString(), ExitCodeFor(plan.status().code()));
  // Left for the process's exit to release (the dry run is the last thing the process does):
  // freeing an MoE checkpoint's plan, 10^5 small allocations, one by one was 6% of a
  // 70k-tensor dry run.
  const Plan& p = *new Plan(std::move(*plan));
  size_t width = 6;
  for (const PlannedTensor& t : p.tensors) width = std::max(width, t.name.size());
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
    // printf("%-*s  %-8s %-12s %12llu %12llu  %s\n", ...), written into one buffer.
    AppendField(rows, t.name.c_str(), width, true);
    rows += "  ";
    AppendField(rows,
                q                                   ? "quantize"
                : t.action == TensorAction::kPrune  ? "prune"
                : t.action == TensorAction::kDecode ? "decode"
                                                    : "copy",
                8, true);
    rows += ' ';
    AppendField(rows, q ? std::string(t.scheme->name).c_str() : "-", 12, true);
    rows += ' ';
    AppendField(rows, std::to_string(t.src_bytes).c_str(), 12, false);
    rows += ' ';
    AppendField(rows, std::to_string(out).c_str(), 12, false);
    rows += "  ";
    rows += note.c_str();
    rows += '\n';
    if (rows.size() >= (1u << 20)) {
      std::fwrite(rows.data(), 1, rows.size(), stdout);
      rows.clear();
    }
  }
  std::fwrite(rows.data(), 1, rows.size(), stdout);
  std::printf("\noutput shards:\n");
  for (const PlannedShard& ps : p.shards) {
    std::printf("  %-40s %14llu bytes (%s)\n", ps.rel_name.c_str(),
                static_cast<unsigned long long>(ps.file_size), Bytes(ps.file_size).c_str());
  }
  for (const PlannedFile& f : p.files) {
    std::printf("  %-40s %s\n", f.rel_name.c_str(), f.copy_from.empty() ? "(written)" : "(copied)");
  }
  if (o.workers > 0) {
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
                  static_cast<unsigned long long>(p.shards[k].file_size), Bytes(p.shards[k].file_size).c_str());
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
  std::printf("\ntotal: %zu tensors, %llu quantized; %s read, %s written (%.3fx)\n",
              p.tensors.size(), static_cast<unsigned long long>(quantized), Bytes(p.bytes_in).c_str(),
              Bytes(p.bytes_out).c_str(),
              p.bytes_in ? static_cast<double>(p.bytes_out) / static_cast<double>(p.bytes_in) : 0.0);
  std::printf("not checked without reading weights: NaN/Inf values\n");
  for (const std::string& n : p.notes) std::fprintf(stderr, "quench: %s\n", n.c_str());
  for (const Status& e : p.errors) std::fprintf(stderr, "quench: error: %s\n", e.ToString().c_str());
  if (!p.errors.empty()) {
    std::fprintf(stderr, "quench: %zu error(s): a real run would stop before reading weights\n",
                 p.errors.size());
    return ExitCodeFor(p.errors.front().code());
  }
  return 0;
}

int RunConvert(const std::vector<std::string>& args) {
  ConvertOptions o;
  bool quiet = false;
  bool dry_run = false;
  std::string worker_flag;
  int workers_flag = 0;
  std::vector<std::string> positional;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    const std::string flag = FlagName(a);
    std::string v, err;
    if (a == "-h" || a == "--help") {
      std::fputs(ConvertHelp().c_str(), stdout);
      return 0;
    } else if (flag == "--scheme") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      o.scheme = v;
    } else if (flag == "--recipe") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      o.recipe = v;
    } else if (flag == "--targets" || flag == "--target") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      o.targets.push_back(v);
    } else if (flag == "--ignore") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      o.ignore.push_back(v);
    } else if (flag == "--group-size") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      char* end = nullptr;
      long n = std::strtol(v.c_str(), &end, 10);
      if (end == v.c_str() || *end != '\0' || n < -1 || n > (1 << 20)) {
        return ReportError("--group-size needs a whole number (or -1), not '" + v + "'", 2);
      }
      o.group_size = static_cast<int>(n);
    } else if (a == "--symmetric") {
      o.symmetric = true;
    } else if (a == "--asymmetric") {
      o.symmetric = false;
    } else if (a == "--static-activations") {
      o.static_activations = true;
    } else if (a == "--asymmetric-activations") {
      o.asymmetric_activations = true;
    } else if (flag == "--kv-cache") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      o.kv_cache = v;
    } else if (a == "--no-default-ignore") {
      o.default_ignore = false;
    } else if (flag == "--memory-limit") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      auto bytes = ParseByteSize(v);
      if (!bytes.ok()) return ReportError(bytes.status().message(), 2);
      if (*bytes == 0) return ReportError("--memory-limit must be more than 0", 2);
      o.memory_limit = *bytes;
    } else if (flag == "--threads") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      char* end = nullptr;
      long n = std::strtol(v.c_str(), &end, 10);
      if (end == v.c_str() || *end != '\0' || n < 1 || n > 4096) {
        return ReportError("--threads needs a whole number from 1 to 4096, not '" + v + "'", 2);
      }
      o.threads = static_cast<int>(n);
    } else if (a == "--no-direct-io") {
      o.direct_io = false;
    } else if (a == "--dry-run") {
      dry_run = true;
    } else if (flag == "--report") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      o.report = v;
    } else if (a == "--overwrite") {
      o.overwrite = true;
    } else if (a == "--resume") {
      o.resume = true;
    } else if (flag == "--prune") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      o.prune = v;
    } else if (flag == "--prune-granularity") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      o.prune_granularity = v;
    } else if (flag == "--worker") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      worker_flag = v;
    } else if (a == "--no-finalize") {
      o.worker_finalize = false;
    } else if (flag == "--workers") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      char* end = nullptr;
      const long n = std::strtol(v.c_str(), &end, 10);
      if (end == v.c_str() || *end != '\0' || n < 1 || n > kMaxWorkers) {
        return ReportError("--workers needs a whole number from 1 to " +
                           std::to_string(kMaxWorkers) + ", not '" + v + "'", 2);
      }
      workers_flag = static_cast<int>(n);
    } else if (flag == "--prune-experts") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      char* end = nullptr;
      const double f = std::strtod(v.c_str(), &end);
      if (end == v.c_str() || *end != '\0' || !(f >= 0 && f <= 1)) {
        return ReportError("--prune-experts needs a fraction from 0 to 1, not '" + v + "'", 2);
      }
      o.prune_experts = f;
    } else if (flag == "--expert-metric") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      o.expert_metric = v;
    } else if (flag == "--stats") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      o.stats = v;
    } else if (flag == "--observer") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      o.observer = v;
    } else if (flag == "--observer-arg") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      o.observer_args.push_back(v);
    } else if (flag == "--prune-metric") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      o.prune_metric = v;
    } else if (flag == "--algorithm") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      o.algorithm = v;
    } else if (flag == "--gptq-block-size") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      char* end = nullptr;
      long n = std::strtol(v.c_str(), &end, 10);
      if (end == v.c_str() || *end != '\0' || n < 1 || n > (1 << 20)) {
        return ReportError("--gptq-block-size needs a positive whole number, not '" + v + "'", 2);
      }
      o.gptq_block_size = static_cast<int>(n);
    } else if (flag == "--dampening") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      char* end = nullptr;
      const double d = std::strtod(v.c_str(), &end);
      if (end == v.c_str() || *end != '\0' || !(d >= 0) || !std::isfinite(d)) {
        return ReportError("--dampening needs a fraction >= 0, not '" + v + "'", 2);
      }
      o.dampening = d;
    } else if (flag == "--smoothing-strength") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      char* end = nullptr;
      const double d = std::strtod(v.c_str(), &end);
      if (end == v.c_str() || *end != '\0' || !(d >= 0 && d <= 1)) {
        return ReportError("--smoothing-strength needs a number in [0, 1], not '" + v + "'", 2);
      }
      o.smoothing_strength = d;
    } else if (flag == "--awq-duo-scaling") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      o.awq_duo_scaling = v;
    } else if (flag == "--awq-search") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      o.awq_search = v;
    } else if (flag == "--awq-n-grid") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      char* end = nullptr;
      const long n = std::strtol(v.c_str(), &end, 10);
      if (end == v.c_str() || *end != '\0' || n < 2 || n > 1000) {
        return ReportError("--awq-n-grid needs a whole number from 2 to 1000, not '" + v + "'", 2);
      }
      o.awq_n_grid = static_cast<int>(n);
    } else if (flag == "--actorder") {
      if (!TakeValue(args, i, v, err)) return ReportError(err, 2);
      o.actorder = v;
    } else if (a == "-q" || a == "--quiet") {
      quiet = true;
    } else if (a.starts_with("-") && a != "-") {
      return ReportError("convert: unknown option '" + a + "' (see quench convert --help)", 2);
    } else {
      positional.push_back(a);
    }
  }
  if (positional.size() != 2) {
    return ReportError("convert: needs SRC and DST (see quench convert --help)", 2);
  }
  if (o.scheme.empty() && o.recipe.empty()) {
    return ReportError("convert: --scheme or --recipe is required (see quench schemes)", 2);
  }
  o.src = positional[0];
  o.dst = positional[1];
  auto slot = ResolveWorker(worker_flag, workers_flag, [](const char* name) { return std::getenv(name); });
  if (!slot.ok()) return ReportError(slot.status().message(), 2);
  if (slot->count > 0) {
    o.worker_index = slot->index;
    o.workers = slot->count;
    o.worker_source = slot->source;
    // Workers share the report's folder too: each writes its own file (finalize --report
    // merges them), so that no two workers write the same file.
    std::string report = o.report.string();
    if (const size_t at = report.find("{worker}"); at != std::string::npos) {
      o.report = report.replace(at, 8, std::to_string(slot->index));
    } else if (!report.empty() && slot->count > 1) {
      return ReportError("--report " + report + " would be written by every worker: put {worker} "
                         "in its name (e.g. report-{worker}.json)", 2);
    }
    if (!quiet) {
      std::fprintf(stderr, "quench: worker %d/%d, from %s\n", slot->index, slot->count,
                   slot->source.c_str());
    }
  }

  // A recipe's GPTQModifier or SparseGPTModifier sets the calibration options (Convert applies
  // it too); applied here as well so that the summary lines name them.
  if (Status rc = ApplyRecipeCalibration(o); !rc.ok()) {
    return ReportError(rc.ToString(), ExitCodeFor(rc.code()));
  }
  if (dry_run) return PrintDryRun(o);
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  ProgressPrinter progress(quiet);
  ConvertCallbacks cb;
  cb.cancel = &g_cancel;
  cb.note = [quiet](std::string_view line) {
    if (!quiet) std::fprintf(stderr, "quench: %.*s\n", static_cast<int>(line.size()), line.data());
  };
  cb.progress = [&progress](const Progress& p) { progress.Update(p); };
  auto result = Convert(o, cb);
  progress.Finish();
  if (!result.ok()) {
    return ReportError(result.status().ToString(), ExitCodeFor(result.status().code()));
  }
  const ConvertSummary& s = *result;
  if (o.workers > 0) {
    if (!quiet) {
      char did[160];
      if (s.worker_shards == 0) {
        std::snprintf(did, sizeof did, "no shards (more workers than output shards)");
      } else if (s.part_was_complete || s.shards_resumed == s.worker_shards) {
        std::snprintf(did, sizeof did, "its %llu shard(s) were already done",
                      static_cast<unsigned long long>(s.worker_shards));
      } else {
        std::snprintf(did, sizeof did, "wrote %llu of its %llu shard(s), %.3f GB read in %.2f s",
                      static_cast<unsigned long long>(s.worker_shards - s.shards_resumed),
                      static_cast<unsigned long long>(s.worker_shards),
                      static_cast<double>(s.bytes_in) / 1e9, s.seconds);
      }
      std::fprintf(stderr, "quench: worker %d/%d: %s; %s\n", o.worker_index, o.workers, did,
                   s.published ? ("published " + o.dst.string()).c_str()
                   : o.worker_finalize ? "the folder is published once every worker's part is in"
                                       : "publish the folder with `quench finalize` once every part is in");
    }
    return 0;
  }
  if (!quiet && s.pruned_tensors > 0) {
    std::fprintf(stderr, "quench: pruned %llu tensors (%s): %.2f%% of their %llu weights are zero\n",
                 static_cast<unsigned long long>(s.pruned_tensors), o.prune.c_str(),
                 100.0 * static_cast<double>(s.zeroed) / static_cast<double>(std::max<uint64_t>(s.pruned_elements, 1)),
                 static_cast<unsigned long long>(s.pruned_elements));
  }
  if (!quiet) {
    std::fprintf(stderr,
                 "quench: wrote %s: %llu tensors quantized, %llu pruned only, %llu copied%s; "
                 "%.3f GB read, %.3f GB written in %.2f s (%.2f GB/s)\n",
                 o.dst.c_str(), static_cast<unsigned long long>(s.tensors_quantized),
                 static_cast<unsigned long long>(s.tensors_pruned_only),
                 static_cast<unsigned long long>(s.tensors_copied),
                 s.tensors_decoded > 0
                     ? (", " + std::to_string(s.tensors_decoded) + " decoded to BF16").c_str()
                     : "",
                 static_cast<double>(s.bytes_in) / 1e9, static_cast<double>(s.bytes_out) / 1e9,
                 s.seconds, s.seconds > 0 ? static_cast<double>(s.bytes_in) / 1e9 / s.seconds : 0.0);
  }
  return 0;
}

}  // namespace

int ReportError(const std::string& message, int exit_code) {
  std::fprintf(stderr, "quench: error: %s\n", message.c_str());
  return exit_code;
}

}  // namespace quench::cli

namespace {

int Dispatch(const std::vector<std::string>& args) {
  using namespace quench::cli;
  if (args.empty()) {
    std::fputs(kMainHelp, stderr);
    return 2;
  }
  const std::string cmd = args[0];
  std::vector<std::string> rest(args.begin() + 1, args.end());
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    if (cmd == "help" && !rest.empty()) {
      rest = {"--help"};
      if (args[1] == "convert") return RunConvert(rest);
      if (args[1] == "inspect") return RunInspect(rest);
      if (args[1] == "verify") return RunVerify(rest);
      if (args[1] == "finalize") return RunFinalize(rest);
      if (args[1] == "schemes") return RunSchemes(rest);
      if (args[1] == "stats") return RunStats(rest);
    }
    std::fputs(kMainHelp, stdout);
    return 0;
  }
  if (cmd == "-V" || cmd == "--version") {
    std::printf("quench %s (compressed-tensors format %s)\n", QUENCH_VERSION, quench::kCompressedTensorsVersion);
    return 0;
  }
  if (cmd == "convert") return RunConvert(rest);
  if (cmd == "inspect") return RunInspect(rest);
  if (cmd == "verify") return RunVerify(rest);
  if (cmd == "finalize") return RunFinalize(rest);
  if (cmd == "schemes") return RunSchemes(rest);
  if (cmd == "stats") return RunStats(rest);
  return ReportError("unknown command '" + cmd + "'\n\n" + kMainHelp, 2);
}

}  // namespace

// The last line of defence of "never crash": the library reports errors as Status, but an
// exception escaping it ends the run with a message instead of std::terminate's abort (134):
// exit 4 for std::bad_alloc (out of memory, as the pipeline reports it), 1 for anything else
// (a bug).
int main(int argc, char** argv) {
  try {
    return Dispatch(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const std::bad_alloc&) {
    // Out of memory outside the pipeline's stages (which report it themselves): the I/O
    // class of failures, like a full disk.
    return quench::cli::ReportError(
        "out of memory: an allocation failed; free memory or lower --memory-limit", 4);
  } catch (const std::exception& e) {
    return quench::cli::ReportError(std::string("internal error: ") + e.what(), 1);
  } catch (...) {
    return quench::cli::ReportError("internal error: unknown exception", 1);
  }
}
