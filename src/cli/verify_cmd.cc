// `quench verify DST [SRC] [--json]`.
#include "cli/verify_cmd.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "cli/cli.h"
#include "cli/hub_cache.h"
#include "cli/verify_packed_source.h"
#include "format/json.h"
#include "verify/verify.h"

namespace quench::cli {
namespace {

const char kVerifyHelp[] =
    "usage: quench verify DST [SRC] [options]\n"
    "\n"
    "Checks the compressed-tensors checkpoint DST (quench's or any other tool's):\n"
    "  - every module its quantization_config selects (2-D M.weight, M not ending in \"norm\",\n"
    "    matching a group's targets and no ignore entry) has exactly the tensors of its\n"
    "    group's format with the right dtypes and shapes (weight_shape contents included),\n"
    "    valid codes and finite positive scales;\n"
    "  - no module the config leaves alone carries quantization tensors;\n"
    "  - NVFP4 fused siblings (q/k/v, gate/up, w1/w3, MLA q_a/kv_a) share weight_global_scale;\n"
    "  - the index lists every tensor.\n"
    "With SRC, the checkpoint DST was made from, also:\n"
    "  - nothing is missing or extra: every source tensor is copied byte for byte or replaced\n"
    "    by its quantized tensors;\n"
    "  - every quantized tensor dequantizes close to the source: per-tensor SQNR at or above\n"
    "    the format's threshold (fp8 24 dB, int8 30, int4 11 (9 per channel), nvfp4 14,\n"
    "    mxfp4 11), and every element within one grid step of its code (plus the rounding\n"
    "    of the quotient in the weight dtype).\n"
    "  - an AutoAWQ or ModelOpt NVFP4 SRC is decoded to BF16 first (a temporary folder);\n"
    "    modules DST stores in the source's own format are its lossless repack: scales in\n"
    "    the source's dtype (AWQ: F16) and every element dequantized equal to the decoded\n"
    "    source bit for bit (rule lossless); a DST written decoded (no quantization_config)\n"
    "    must hold every packed weight as the decoded source, bit for bit.\n"
    "With --prune SPEC (what DST was converted with; the checkpoint does not record it):\n"
    "  - with SRC, quantized tensors are compared with the source pruned by SPEC, and every\n"
    "    element zero there must dequantize to exactly 0; a checkpoint without\n"
    "    quantization_config (--scheme none) must hold each source tensor either unchanged\n"
    "    or exactly pruned by SPEC;\n"
    "  - without SRC, the dequantized zeros must have SPEC's structure (M - N per N:M group,\n"
    "    floor(F * n) per row or per tensor).\n"
    "With --stats STATS and SRC: every static scale (input_scale, input_zero_point,\n"
    "    input_global_scale, k_scale, v_scale) equals what the statistics give (the\n"
    "    conversion planned again from SRC and the config's one preset group).\n"
    "With --prune SPEC --algorithm sparsegpt (SparseGPT chose the mask by OBS saliency and\n"
    "updated the weights it kept): with or without SRC, only the zeros are checked: M - N\n"
    "per N:M group of a row; unstructured F: at least int(rows * width * F) per block of\n"
    "--gptq-block-size columns (default 128) over all rows, as SparseGPT prunes.\n"
    "Streams tensor by tensor (memory maps, pages released after use), modules on every\n"
    "core.\n"
    "\n"
    "options:\n"
    "  --json        machine-readable report on stdout: {\"ok\", \"summary\", \"problems\",\n"
    "                \"tensors\"}\n"
    "  --worst N     list the N lowest-SQNR tensors (default 10)\n"
    "  -q, --quiet   only the problems and the summary line\n"
    "  --prune SPEC  the pruning DST was made with: unstructured:F or N:M, as for convert\n"
    "  --stats STATS the statistics DST's static scales came from (needs SRC)\n"
    "  --prune-granularity G\n"
    "                row (default) or tensor, as for convert\n"
    "  --algorithm A magnitude (default: the mask is the source's smallest |x|) or\n"
    "                sparsegpt (with --prune: see above)\n"
    "  --gptq-block-size N\n"
    "                SparseGPT's block of columns (default 128), as for convert\n"
    "\n"
    "exit: 0 valid, 3 problems found (one line each: file: tensor: rule: message), 2 usage,\n"
    "4 I/O failure.\n";

// The command line as given, before the checks that combine flags.
struct VerifyArgs {
  VerifyOptions o;
  bool json = false, quiet = false;
  std::string prune_text, granularity = "row", algorithm = "magnitude", block_text;
  bool granularity_given = false;
  size_t worst = 10;
  std::vector<std::string> positional;
};

// Reads the flags into `v`. Returns the exit code where the command ends here (0 after
// --help, 2 on a usage error, its message printed), nullopt to go on.
std::optional<int> ParseArgs(const std::vector<std::string>& args, VerifyArgs& v) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      std::fputs(kVerifyHelp, stdout);
      return 0;
    } else if (a == "--json") {
      v.json = true;
    } else if (a == "-q" || a == "--quiet") {
      v.quiet = true;
    } else if (a == "--worst" || a.starts_with("--worst=")) {
      std::string value;
      if (a.size() > 7 && a[7] == '=') {
        value = a.substr(8);
      } else if (i + 1 < args.size()) {
        value = args[++i];
      } else {
        return ReportError("verify: --worst needs a value", 2);
      }
      char* end = nullptr;
      const unsigned long n = std::strtoul(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0') return ReportError("verify: --worst takes a count", 2);
      v.worst = n;
    } else if (a == "--prune" || a.starts_with("--prune=") || a == "--prune-granularity" ||
               a.starts_with("--prune-granularity=")) {
      const bool gran = a.starts_with("--prune-granularity");
      const std::string flag = gran ? "--prune-granularity" : "--prune";
      std::string value;
      if (a.size() > flag.size() && a[flag.size()] == '=') {
        value = a.substr(flag.size() + 1);
      } else if (i + 1 < args.size()) {
        value = args[++i];
      } else {
        return ReportError("verify: " + flag + " needs a value", 2);
      }
      if (gran) {
        v.granularity = value;
        v.granularity_given = true;
      } else {
        v.prune_text = value;
      }
    } else if (a == "--stats" || a.starts_with("--stats=")) {
      if (a.size() > 7 && a[7] == '=') {
        v.o.stats = a.substr(8);
      } else if (i + 1 < args.size()) {
        v.o.stats = args[++i];
      } else {
        return ReportError("verify: --stats needs a value", 2);
      }
    } else if (a == "--algorithm" || a == "--gptq-block-size") {
      if (i + 1 >= args.size()) return ReportError("verify: " + a + " needs a value", 2);
      (a == "--algorithm" ? v.algorithm : v.block_text) = args[++i];
    } else if (a.starts_with("-") && a != "-") {
      return ReportError("verify: unknown option '" + a + "'\n\n" + kVerifyHelp, 2);
    } else {
      v.positional.push_back(a);
    }
  }
  return std::nullopt;
}

// DST and SRC (a Hugging Face model ID resolved to its cached snapshot), the pruning spec,
// the algorithm and SparseGPT's block into v.o, with the checks that combine flags. Returns
// the exit code (2, its message printed) where they fail, nullopt to go on.
std::optional<int> ResolveOptions(VerifyArgs& v) {
  VerifyOptions& o = v.o;
  if (v.positional.empty() || v.positional.size() > 2) {
    return ReportError(std::string("verify: expected DST [SRC]\n\n") + kVerifyHelp, 2);
  }
  o.dst = v.positional[0];
  if (v.positional.size() == 2) {
    const HubSource hub = ResolveHubSource(v.positional[1]);
    if (!hub.hint.empty()) {
      return ReportError("verify: " + v.positional[1] + ": no such folder; " + hub.hint, 2);
    }
    if (!hub.note.empty() && !v.quiet && !v.json) {
      std::fprintf(stderr, "quench: %s\n", hub.note.c_str());
    }
    o.src = hub.path;
  }
  if (!v.prune_text.empty()) {
    auto spec = prune::ParsePruneSpec(v.prune_text);
    if (!spec.ok()) return ReportError("verify: " + spec.status().message(), 2);
    o.prune = *spec;
    if (Status st = prune::ApplyGranularity(v.granularity, &o.prune); !st.ok()) {
      return ReportError("verify: " + st.message(), 2);
    }
  } else if (v.granularity_given) {
    return ReportError("verify: --prune-granularity needs --prune", 2);
  }

  if (v.algorithm != "magnitude" && v.algorithm != "sparsegpt") {
    return ReportError("verify: --algorithm is magnitude or sparsegpt, not '" + v.algorithm + "'",
                       2);
  }
  o.prune_updates = v.algorithm == "sparsegpt";
  if (o.prune_updates && o.prune.kind == prune::PruneSpec::kNone) {
    return ReportError("verify: --algorithm sparsegpt needs --prune SPEC (what DST was pruned to)",
                       2);
  }
  if (o.prune_updates && o.prune.per_tensor) {
    return ReportError("verify: SparseGPT prunes per block of columns, not per tensor", 2);
  }
  if (!v.block_text.empty()) {
    char* end = nullptr;
    const unsigned long b = std::strtoul(v.block_text.c_str(), &end, 10);
    if (*end != '\0' || b == 0) {
      return ReportError("verify: --gptq-block-size takes a count > 0", 2);
    }
    o.prune_block = b;
  }
  return std::nullopt;
}

// The `worst` tensors closest to their SQNR threshold, and the SQNR's minimum and mean.
void PrintWorst(const VerifyReport& rep, size_t worst) {
  std::vector<const TensorQuality*> q;
  for (const TensorQuality& t : rep.quality) q.push_back(&t);
  std::stable_sort(q.begin(), q.end(), [](const TensorQuality* a, const TensorQuality* b) {
    return a->sqnr_db - a->threshold_db < b->sqnr_db - b->threshold_db;
  });
  double min_db = INFINITY, sum_db = 0;
  size_t finite = 0;
  for (const TensorQuality* t : q) {
    min_db = std::min(min_db, t->sqnr_db);
    if (std::isfinite(t->sqnr_db)) {
      sum_db += t->sqnr_db;
      ++finite;
    }
  }
  std::printf("worst tensors (SQNR against the source, closest to their threshold first):\n");
  for (size_t i = 0; i < q.size() && i < worst; ++i) {
    const TensorQuality& t = *q[i];
    std::printf("  %8.2f dB  (min %5.1f, %-5s)  bound %5.2f  %s\n", t.sqnr_db, t.threshold_db,
                t.kind.c_str(), t.worst_bound_ratio, t.module.c_str());
  }
  std::printf("SQNR over %zu tensors: min %.2f dB, mean %.2f dB\n", q.size(), min_db,
              finite ? sum_db / static_cast<double>(finite) : INFINITY);
}

// The closing line: OK or INVALID, and what was checked.
void PrintSummary(const VerifyReport& rep, const VerifyOptions& o) {
  std::printf("%s: %llu shard(s), %llu tensors, %llu quantized modules",
              rep.ok() ? "OK" : "INVALID", static_cast<unsigned long long>(rep.shards),
              static_cast<unsigned long long>(rep.tensors),
              static_cast<unsigned long long>(rep.modules_quantized));
  if (rep.src) {
    std::printf(", %llu copied tensors unchanged",
                static_cast<unsigned long long>(rep.tensors_copied));
    if (rep.tensors_decoded > 0) {
      std::printf(", %llu decoded from the quantized source",
                  static_cast<unsigned long long>(rep.tensors_decoded));
    }
    if (o.prune.kind != prune::PruneSpec::kNone && rep.modules_quantized == 0) {
      std::printf(", %llu pruned", static_cast<unsigned long long>(rep.tensors_pruned));
    }
    std::printf(", %llu source bytes compared",
                static_cast<unsigned long long>(rep.bytes_compared));
    if (o.stats) {
      std::printf(", %llu static scales equal to the statistics'",
                  static_cast<unsigned long long>(rep.static_scales_checked));
    }
  }
  std::printf(", %zu problem(s)\n", rep.problems.size());
}

}  // namespace

int RunVerify(const std::vector<std::string>& args) {
  VerifyArgs v;
  if (std::optional<int> code = ParseArgs(args, v)) return *code;
  if (std::optional<int> code = ResolveOptions(v)) return *code;
  VerifyOptions& o = v.o;

  // An AutoAWQ or ModelOpt NVFP4 SRC: compared as the conversion read it, decoded to BF16
  // (quench's decode, byte-equal to compressed-tensors' dequantizer), written to a temporary
  // folder first (removed after).
  std::optional<TempDecoded> decoded;
  if (o.src) {
    auto d = DecodePackedSource(*o.src);
    if (!d.ok()) return ReportStatus(d.status(), "verify: ");
    decoded = std::move(d).value();
    if (!decoded->dir.empty()) {
      o.src = decoded->dir;
      o.packed_source = decoded->packed;
    }
  }
  auto r = Verify(o);
  if (!r.ok()) return ReportStatus(r.status(), "verify: ");
  const VerifyReport& rep = *r;
  if (v.json) {
    std::string out = DumpPythonJson(VerifyReportJson(rep));
    out += '\n';
    std::fputs(out.c_str(), stdout);
    return rep.ok() ? 0 : 3;
  }
  for (const VerifyProblem& p : rep.problems) std::printf("%s\n", p.ToString().c_str());
  if (!v.quiet && !rep.quality.empty() && v.worst > 0) PrintWorst(rep, v.worst);
  PrintSummary(rep, o);
  return rep.ok() ? 0 : 3;
}

}  // namespace quench::cli
