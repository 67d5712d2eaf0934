// `quench stats inspect STATS [--json]` and `quench stats merge A B ... -o C`.
#include "cli/stats_cmd.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "calib/imatrix.h"
#include "calib/stats.h"
#include "cli/cli.h"
#include "cli/hub_cache.h"

namespace quench::cli {
namespace {

const char kStatsHelp[] =
    "usage: quench stats inspect STATS [--json]\n"
    "       quench stats merge A B [...] -o OUT\n"
    "       quench stats import-imatrix FILE --model SRC -o OUT [--chunk-size N]\n"
    "\n"
    "Activation statistics (docs/statistics-format.md), as scripts/collect-stats writes them.\n"
    "  inspect  the model and collection settings, then per input site: features, experts,\n"
    "           tokens seen (per expert: fewest, most, how many saw none), the weights that\n"
    "           read it, and what its fields support: static activation scales (min, max),\n"
    "           importance-weighted rounding and Wanda (sum_x2), AWQ (sum_abs), GPTQ and\n"
    "           SparseGPT (hessian, or hessian_blk<B> for the blocked variant); and per MoE\n"
    "           layer REAP saliency (collect-stats --reap; convert --expert-metric reap).\n"
    "  merge    statistics of one model collected in parts (GPUs, ranks, machines) into one:\n"
    "           counts, sums, Hessians and REAP saliency sums and counts add, min and max\n"
    "           reduce. Parts from different\n"
    "           models or settings are refused. OUT must not exist or be empty.\n"
    "  import-imatrix  a llama.cpp importance matrix (GGUF imatrix or legacy .dat) as\n"
    "           statistics of the checkpoint SRC: GGUF names mapped to SRC's (llama,\n"
    "           mistral, qwen2, qwen3, qwen3_moe, mixtral, deepseek_v2/v3, kimi_k2; a\n"
    "           multimodal SRC's language model by its text_config), every name and\n"
    "           width checked.\n"
    "           Gives count and sum_x2 (imatrix_mse, Wanda), not min/max or Hessians.\n"
    "           --chunk-size: tokens per chunk a legacy .dat counted (default 512).\n"
    "\n"
    "exit: 0 success, 2 usage, 3 invalid statistics, 4 I/O failure.\n";

std::string Supports(const calib::StatsSite& s) {
  auto has = [&](std::string_view f) {
    return std::any_of(s.fields.begin(), s.fields.end(),
                       [&](const calib::StatsField& x) { return x.name == f; });
  };
  std::string out;
  auto add = [&](const char* what) { out += (out.empty() ? "" : ", ") + std::string(what); };
  if (has("min") && has("max")) add("activation scales");
  if (has("sum_x2")) add("imatrix, wanda");
  if (has("sum_abs")) add("awq");
  if (has("hessian")) add("gptq");
  for (const calib::StatsField& f : s.fields) {
    if (f.name.starts_with("hessian_blk")) add("gptq (blocked)");
  }
  return out;
}

// A token count read as f64 (counts are int64, not negative here; a sum of them may pass
// 2^64, which no uint64 holds: the largest f64 below it stands in).
uint64_t Tokens(double count) {
  return static_cast<uint64_t>(std::min(count, 18446744073709549568.0));  // 2^64 - 2^11
}

// One row per site: features, experts, tokens (per expert: their range and how many saw
// none), how many weights read it, its fields and what they support.
Result<JsonValue> SiteRows(const std::string& dir, const calib::Statistics& stats) {
  std::map<std::string, size_t> readers;
  for (const auto& [w, c] : stats.consumers()) ++readers[c.site];
  JsonValue sites = JsonValue::MakeArray();
  for (const auto& [name, s] : stats.sites()) {
    QUENCH_ASSIGN_OR_RETURN(std::vector<double> count, stats.ReadField(name, "count"));
    double total = 0;
    for (double c : count) total += c;
    const auto [lo, hi] = std::minmax_element(count.begin(), count.end());
    const size_t none = static_cast<size_t>(std::count(count.begin(), count.end(), 0.0));
    if (*lo < 0) {
      return Error(ErrorCode::kInvalidInput,
                   dir + ": site '" + name + "' holds a negative token count; "
                   "these statistics are damaged");
    }
    JsonValue site = JsonValue::MakeObject();
    site.Set("site", name);
    site.Set("in_features", s.in_features);
    site.Set("experts", s.experts ? JsonValue(*s.experts) : JsonValue());
    site.Set("tokens", Tokens(total));
    if (s.experts) {
      site.Set("tokens_min", Tokens(*lo));
      site.Set("tokens_max", Tokens(*hi));
      site.Set("experts_without_tokens", static_cast<uint64_t>(none));
    }
    site.Set("consumers", static_cast<uint64_t>(readers[name]));
    JsonValue fields = JsonValue::MakeArray();
    for (const calib::StatsField& f : s.fields) fields.Push(f.name);
    site.Set("fields", std::move(fields));
    site.Set("supports", Supports(s));
    sites.Push(std::move(site));
  }
  return sites;
}

// REAP saliency per MoE layer: routed tokens per expert and the saliency's range.
Result<JsonValue> ReapRows(const calib::Statistics& stats) {
  JsonValue reap = JsonValue::MakeArray();
  for (const auto& [router, r] : stats.reap()) {
    QUENCH_ASSIGN_OR_RETURN(std::vector<double> sum, stats.ReadReapSum(r));
    QUENCH_ASSIGN_OR_RETURN(std::vector<int64_t> count, stats.ReadReapCount(r));
    double lo = 0, hi = 0;
    uint64_t none = 0, tokens_lo = 0, tokens_hi = 0;
    for (size_t e = 0; e < sum.size(); ++e) {
      const int64_t c = count[e];
      const double sal = sum[e] / static_cast<double>(std::max<int64_t>(c, 1));
      lo = e == 0 ? sal : std::min(lo, sal);
      hi = e == 0 ? sal : std::max(hi, sal);
      const uint64_t cu = static_cast<uint64_t>(std::max<int64_t>(c, 0));
      tokens_lo = e == 0 ? cu : std::min(tokens_lo, cu);
      tokens_hi = e == 0 ? cu : std::max(tokens_hi, cu);
      none += c == 0;
    }
    JsonValue o = JsonValue::MakeObject();
    o.Set("block", r.block);
    o.Set("router", router);
    o.Set("experts", r.experts);
    o.Set("tokens_min", tokens_lo);
    o.Set("tokens_max", tokens_hi);
    o.Set("experts_without_tokens", none);
    o.Set("saliency_min", lo);
    o.Set("saliency_max", hi);
    reap.Push(std::move(o));
  }
  return reap;
}

// --json: the model, the collection's settings, the sites and the REAP layers.
void PrintInspectJson(const calib::Statistics& stats, JsonValue sites, JsonValue reap) {
  JsonValue out = JsonValue::MakeObject();
  if (const JsonValue* m = stats.manifest().Find("model")) {
    JsonValue model = *m;
    model.Set("weights", static_cast<uint64_t>(m->Find("weights") && m->Find("weights")->is_object()
                                                   ? m->Find("weights")->as_object().size()
                                                   : 0));
    out.Set("model", std::move(model));
  }
  if (const JsonValue* c = stats.manifest().Find("collection")) out.Set("collection", *c);
  out.Set("sites", std::move(sites));
  if (!stats.reap().empty()) out.Set("reap", std::move(reap));
  std::printf("%s\n", DumpPythonJson(out).c_str());
}

// The same as tables.
void PrintInspectTables(const std::string& dir, const calib::Statistics& stats,
                        const JsonValue& sites, const JsonValue& reap) {
  std::printf("statistics: %s\n", dir.c_str());
  if (const JsonValue* c = stats.manifest().Find("collection"); c && c->is_object()) {
    std::printf("collection:");
    for (const auto& [k, v] : c->as_object()) {
      if (k != "merged_from") std::printf(" %s=%s", k.c_str(), DumpCompactJson(v).c_str());
    }
    std::printf("\n");
  }
  std::printf("%zu sites, %zu weights read them\n\n", stats.sites().size(),
              stats.consumers().size());
  std::printf("%-56s %8s %7s %12s %9s  %s\n", "site", "features", "experts", "tokens",
              "consumers", "supports");
  for (const JsonValue& s : sites.as_array()) {
    const JsonValue* e = s.Find("experts");
    std::string tokens = std::to_string(s.Find("tokens")->as_uint());
    if (!e->is_null()) {
      tokens = std::to_string(s.Find("tokens_min")->as_uint()) + ".." +
               std::to_string(s.Find("tokens_max")->as_uint());
      if (s.Find("experts_without_tokens")->as_uint() > 0) {
        tokens += " (" + std::to_string(s.Find("experts_without_tokens")->as_uint()) + " none)";
      }
    }
    std::printf("%-56s %8llu %7s %12s %9llu  %s\n", s.Find("site")->as_string().c_str(),
                static_cast<unsigned long long>(s.Find("in_features")->as_uint()),
                e->is_null() ? "-" : std::to_string(e->as_uint()).c_str(), tokens.c_str(),
                static_cast<unsigned long long>(s.Find("consumers")->as_uint()),
                s.Find("supports")->as_string().c_str());
  }
  if (stats.reap().empty()) return;
  std::printf("\nREAP saliency (expert pruning, --expert-metric reap) for %zu MoE layers\n",
              stats.reap().size());
  std::printf("%-56s %7s %16s %25s\n", "router", "experts", "routed tokens", "saliency");
  for (const JsonValue& o : reap.as_array()) {
    std::string tokens = std::to_string(o.Find("tokens_min")->as_uint()) + ".." +
                         std::to_string(o.Find("tokens_max")->as_uint());
    if (o.Find("experts_without_tokens")->as_uint() > 0) {
      tokens += " (" + std::to_string(o.Find("experts_without_tokens")->as_uint()) + " none)";
    }
    std::printf("%-56s %7llu %16s %12.6g..%-12.6g\n", o.Find("router")->as_string().c_str(),
                static_cast<unsigned long long>(o.Find("experts")->as_uint()), tokens.c_str(),
                o.Find("saliency_min")->as_double(), o.Find("saliency_max")->as_double());
  }
}

int Inspect(const std::string& dir, bool json) {
  auto stats = calib::Statistics::Open(dir);
  if (!stats.ok()) return ReportStatus(stats.status());
  auto sites = SiteRows(dir, *stats);
  if (!sites.ok()) return ReportStatus(sites.status());
  auto reap = ReapRows(*stats);
  if (!reap.ok()) return ReportStatus(reap.status());
  if (json) {
    PrintInspectJson(*stats, std::move(*sites), std::move(*reap));
  } else {
    PrintInspectTables(dir, *stats, *sites, *reap);
  }
  return 0;
}

int ImportImatrix(const std::vector<std::string>& args) {
  std::string file, model, out;
  calib::ImportOptions opt;
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](std::string& dst) {
      if (i + 1 >= args.size()) return false;
      dst = args[++i];
      return true;
    };
    if (a == "-h" || a == "--help") {
      std::fputs(kStatsHelp, stdout);
      return 0;
    } else if (a == "--model") {
      if (!value(model)) return ReportError("stats import-imatrix: --model needs a folder", 2);
    } else if (a == "-o" || a == "--output") {
      if (!value(out)) return ReportError("stats import-imatrix: -o needs a folder", 2);
    } else if (a == "--chunk-size") {
      std::string v;
      char* end = nullptr;
      if (!value(v)) return ReportError("stats import-imatrix: --chunk-size needs a number", 2);
      const unsigned long long n = std::strtoull(v.c_str(), &end, 10);
      if (v.empty() || *end != '\0' || n == 0 || n > (1ull << 31)) {
        return ReportError("stats import-imatrix: --chunk-size must be a positive integer", 2);
      }
      opt.legacy_chunk_size = n;
    } else if (file.empty() && !a.starts_with("-")) {
      file = a;
    } else {
      return ReportError("stats import-imatrix: unexpected argument '" + a + "'", 2);
    }
  }
  if (file.empty() || model.empty() || out.empty()) {
    return ReportError("stats import-imatrix needs FILE, --model SRC and -o OUT", 2);
  }
  const HubSource hub = ResolveHubSource(model);
  if (!hub.hint.empty()) {
    return ReportError("stats import-imatrix: --model " + model + ": no such folder; " + hub.hint,
                       2);
  }
  if (!hub.note.empty()) std::fprintf(stderr, "quench: %s\n", hub.note.c_str());
  Status st = calib::ImportImatrix(file, hub.path, out, opt);
  if (!st.ok()) return ReportStatus(st);
  std::fprintf(stderr, "quench: imported %s into %s\n", file.c_str(), out.c_str());
  return 0;
}

}  // namespace

int RunStats(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "-h" || args[0] == "--help") {
    std::fputs(kStatsHelp, args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  const std::string& sub = args[0];
  if (sub == "inspect") {
    std::string dir;
    bool json = false;
    for (size_t i = 1; i < args.size(); ++i) {
      if (args[i] == "--json") {
        json = true;
      } else if (args[i] == "-h" || args[i] == "--help") {
        std::fputs(kStatsHelp, stdout);
        return 0;
      } else if (dir.empty() && !args[i].starts_with("-")) {
        dir = args[i];
      } else {
        return ReportError("stats inspect: unexpected argument '" + args[i] + "'", 2);
      }
    }
    if (dir.empty()) return ReportError("stats inspect needs a statistics folder", 2);
    return Inspect(dir, json);
  }
  if (sub == "merge") {
    std::vector<std::filesystem::path> inputs;
    std::string out;
    for (size_t i = 1; i < args.size(); ++i) {
      if (args[i] == "-o" || args[i] == "--output") {
        if (i + 1 >= args.size()) return ReportError("stats merge: -o needs a folder", 2);
        out = args[++i];
      } else if (args[i] == "-h" || args[i] == "--help") {
        std::fputs(kStatsHelp, stdout);
        return 0;
      } else if (args[i].starts_with("-")) {
        return ReportError("stats merge: unknown option '" + args[i] + "'", 2);
      } else {
        inputs.emplace_back(args[i]);
      }
    }
    if (out.empty()) return ReportError("stats merge needs -o OUT", 2);
    Status st = calib::MergeStatistics(inputs, out);
    if (!st.ok()) return ReportStatus(st);
    std::fprintf(stderr, "quench: merged %zu statistics folders into %s\n", inputs.size(),
                 out.c_str());
    return 0;
  }
  if (sub == "import-imatrix") return ImportImatrix(args);
  return ReportError("unknown stats command '" + sub + "'\n\n" + kStatsHelp, 2);
}

}  // namespace quench::cli
