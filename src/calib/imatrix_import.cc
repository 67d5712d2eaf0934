// `quench stats import-imatrix`: an importance matrix onto a checkpoint, written as a
// statistics folder the way `stats merge` writes one (one stats-00001.safetensors, then the
// manifest), but inside a temporary folder renamed into place at the end.

#include <algorithm>
#include <cstring>
#include <map>

#include "calib/imatrix.h"
#include "calib/stats.h"
#include "format/file_io.h"
#include "format/model_folder.h"
#include "format/safetensors.h"

namespace quench::calib {
namespace fs = std::filesystem;
namespace {

constexpr std::string_view kOutFile = "stats-00001.safetensors";

std::string Expert(const std::string& tmpl, uint64_t e) {
  std::string s = tmpl;
  s.replace(s.find("{E}"), 3, std::to_string(e));
  return s;
}

struct Member {
  const ImatrixEntry* entry;
  ImatrixTarget target;
};

struct Site {
  std::string name;
  uint64_t in_features = 0;
  std::optional<uint64_t> experts;
  const ImatrixEntry* source = nullptr;
  int rank = 0;
  std::vector<int64_t> counts;  // [1] or [E]
  std::vector<std::pair<std::string, std::optional<uint64_t>>> consumers;
};

// Checks an entry against its weight(s) in the checkpoint; returns the site's geometry and
// counts. Messages name the imatrix tensor and the checkpoint weight.
Status Place(const fs::path& file, const Member& m,
             const std::map<std::string, std::vector<uint64_t>>& inv, Site& site) {
  const ImatrixEntry& e = *m.entry;
  const std::string& w = m.target.weight;
  auto refuse = [&](const std::string& what) {
    return Error(ErrorCode::kInvalidInput,
                 file.string() + ": imatrix tensor '" + e.name + "' " + what);
  };
  std::string first = m.target.per_expert ? Expert(w, 0) : w;
  auto it = inv.find(first);
  if (it == inv.end() || it->second.size() != 2) {
    return refuse("maps to '" + first + "', which the model has not (as a 2-D weight)");
  }
  const uint64_t in = it->second[1];
  uint64_t experts = 1;
  if (m.target.per_expert) {
    while (inv.contains(Expert(w, experts))) ++experts;
    for (uint64_t x = 0; x < experts; ++x) {
      if (inv.at(Expert(w, x)) != it->second) {
        return refuse("maps to experts of different shapes ('" + Expert(w, x) + "')");
      }
    }
  }
  const uint64_t mats = e.mats ? e.mats : e.sum_x2.size() / in;  // legacy: from the model
  if (e.mats ? e.cols != in : e.sum_x2.size() % in != 0) {
    return refuse("has " + (e.mats ? std::to_string(e.cols) + " columns"
                                   : std::to_string(e.sum_x2.size()) + " values") +
                  "; '" + first + "' reads " + std::to_string(in) + " input features");
  }
  if (mats != experts) {
    return refuse("holds " + std::to_string(mats) + " matrices; the model has " +
                  std::to_string(experts) + (m.target.per_expert ? " experts for '" + w + "'"
                                                                 : " weight '" + w + "'"));
  }
  std::vector<int64_t> counts = e.counts;
  if (counts.size() == 1 && experts > 1) counts.assign(experts, counts[0]);  // legacy
  if (site.source != nullptr) {
    if (site.in_features != in || site.counts != counts) {
      return refuse("and '" + site.source->name + "' read one input (a site of the "
                    "statistics) but their widths or token counts differ");
    }
  } else {
    site.in_features = in;
    site.counts = std::move(counts);
    if (m.target.per_expert) site.experts = experts;
  }
  if (site.source == nullptr || m.target.rank < site.rank) {
    site.source = &e;
    site.rank = m.target.rank;
    site.name = m.target.site;
  }
  for (uint64_t x = 0; x < experts; ++x) {
    if (m.target.per_expert) {
      site.consumers.emplace_back(Expert(w, x), x);
    } else {
      site.consumers.emplace_back(w, std::nullopt);
    }
  }
  return Status::Ok();
}

Status WriteFolder(const fs::path& dir, const std::vector<Site>& sites, JsonValue manifest) {
  std::vector<TensorSpec> specs;
  // Each array's bytes, pointed at where they already are (no copy of the sums).
  std::map<std::string, std::pair<const void*, uint64_t>> data;
  for (const Site& s : sites) {
    const uint64_t e = s.experts.value_or(1);
    std::vector<uint64_t> cshape, xshape{s.in_features};
    if (s.experts) {
      cshape = {e};
      xshape.insert(xshape.begin(), e);
    }
    specs.push_back({s.name + ".count", DType::kI64, cshape, e * 8});
    specs.push_back({s.name + ".sum_x2", DType::kF64, xshape, e * s.in_features * 8});
    data[s.name + ".count"] = {s.counts.data(), e * 8};
    data[s.name + ".sum_x2"] = {s.source->sum_x2.data(), e * s.in_features * 8};
  }
  SafetensorsLayout layout = LayOutSafetensors(specs);
  QUENCH_ASSIGN_OR_RETURN(auto file,
                          OutputFile::Create(dir / std::string(kOutFile), layout.file_size));
  QUENCH_RETURN_IF_ERROR(file->WriteAt(0, layout.header.data(), layout.header.size()));
  for (const TensorInfo& t : layout.tensors) {
    const auto [p, n] = data.at(t.name);
    QUENCH_RETURN_IF_ERROR(file->WriteAt(layout.data_start + t.begin, p, n));
  }
  QUENCH_RETURN_IF_ERROR(file->Commit());
  return WriteFileAtomic(dir / "manifest.json", DumpPythonJson(manifest) + "\n");
}

// The architecture whose names the imatrix is mapped with, and where the checkpoint keeps
// that language model.
struct LanguageModel {
  std::string model_type;
  LanguageModelNames names;
};

// config.json's model_type when quench maps it; else, for a multimodal checkpoint (Kimi K2.5,
// Llava, Mistral 3: llama.cpp converts its language model, the imatrix covers that), the
// text_config's, with the prefix under which the checkpoint holds that model's layers and the
// head beside them.
Result<LanguageModel> FindLanguageModel(const ModelFolder& folder, const fs::path& model_dir,
                                        const std::map<std::string, std::vector<uint64_t>>& inv) {
  const JsonValue* type = folder.config ? folder.config->Find("model_type") : nullptr;
  if (type == nullptr || !type->is_string()) {
    return Error(ErrorCode::kInvalidInput,
                 model_dir.string() + ": config.json has no model_type (needed to map names)");
  }
  LanguageModel lm{type->as_string(), {}};
  if (ImatrixArchitectureKnown(lm.model_type)) return lm;
  const JsonValue* text = folder.config->Find("text_config");
  const JsonValue* text_type =
      text != nullptr && text->is_object() ? text->Find("model_type") : nullptr;
  const std::string known =
      "import-imatrix maps llama, mistral, qwen2, qwen3, qwen3_moe, mixtral and deepseek_v2/v3 "
      "names (config.json's model_type, or its text_config's for a multimodal model); ";
  if (text_type == nullptr || !text_type->is_string() ||
      !ImatrixArchitectureKnown(text_type->as_string())) {
    return Error(ErrorCode::kUnsupported, known + model_dir.string() + " is '" +
                                              lm.model_type + "'" +
                                              (text_type != nullptr && text_type->is_string()
                                                   ? " with a '" + text_type->as_string() +
                                                         "' language model"
                                                   : std::string()));
  }
  lm.model_type = text_type->as_string();
  const auto has_prefix = [&](const std::string& p) {
    auto it = inv.lower_bound(p);
    return it != inv.end() && it->first.starts_with(p);
  };
  constexpr std::string_view kLayers[] = {"language_model.model.layers.",
                                          "model.language_model.layers.",
                                          "language_model.layers.", "model.layers."};
  for (std::string_view p : kLayers) {
    if (has_prefix(std::string(p) + "0.")) {
      lm.names.layers = p;
      // The head beside the layers: language_model.lm_head, else lm_head.
      if (p.starts_with("language_model.") && inv.contains("language_model.lm_head.weight")) {
        lm.names.head = "language_model.lm_head";
      }
      return lm;
    }
  }
  return Error(ErrorCode::kInvalidInput,
               model_dir.string() + ": a '" + lm.model_type +
                   "' language model, but no tensor under language_model.model.layers.0., "
                   "model.language_model.layers.0., language_model.layers.0. or "
                   "model.layers.0.");
}

using Shapes = std::map<std::string, std::vector<uint64_t>>;

// Every entry onto its site (by the site's group), all checked before anything is written;
// entries the mapping skips go to `*skipped` with the reason.
Result<std::map<std::string, Site>> PlaceEntries(const fs::path& file, const Imatrix& im,
                                                 const LanguageModel& lm, const Shapes& inv,
                                                 JsonValue* skipped) {
  std::map<std::string, Site> by_group;
  for (const ImatrixEntry& e : im.entries) {
    auto target = MapImatrixName(lm.model_type, e.name, lm.names);
    if (!target.ok()) {
      return Error(ErrorCode::kInvalidInput, file.string() + ": " + target.status().message());
    }
    if (!target->skip_reason.empty()) {
      skipped->Set(e.name, target->skip_reason);
      continue;
    }
    const std::string group = target->group;
    QUENCH_RETURN_IF_ERROR(Place(file, Member{&e, *std::move(target)}, inv, by_group[group]));
  }
  if (by_group.empty()) {
    return Error(ErrorCode::kInvalidInput,
                 file.string() + ": no entry of the importance matrix maps onto a weight");
  }
  return by_group;
}

// The manifest's "collection": what llama-imatrix ran (datasets, tokens, chunks) and what
// the file held.
JsonValue CollectionJson(const fs::path& file, const Imatrix& im, const ModelFolder& folder,
                         uint64_t tokens, JsonValue skipped) {
  JsonValue collection = JsonValue::MakeObject();
  collection.Set("collector", "quench import-imatrix 1");
  std::string dataset;
  for (const std::string& d : im.datasets) dataset += (dataset.empty() ? "" : ", ") + d;
  collection.Set("dataset", dataset.empty() ? file.filename().string() : dataset);
  collection.Set("tokens", tokens);
  // llama-imatrix runs the text in chunks of chunk_size tokens (its context), one sequence each.
  const auto chunk = im.chunk_size ? im.chunk_size : im.assumed_chunk_size;
  const auto chunks = im.chunk_count ? im.chunk_count : im.last_chunk;
  if (chunk) collection.Set("seq_len", *chunk);
  if (chunks) collection.Set("sequences", *chunks);
  // llama.cpp counts each expert's routed tokens only.
  collection.Set("moe", "routed");
  collection.Set("hessian", "none");
  if (const JsonValue* k = folder.config->Find("num_experts_per_tok"); k && k->is_int()) {
    collection.Set("top_k", *k);
  }
  JsonValue imatrix = JsonValue::MakeObject();
  imatrix.Set("file", file.string());
  imatrix.Set("layout", im.layout);
  if (im.gguf_version) imatrix.Set("gguf_version", static_cast<uint64_t>(im.gguf_version));
  JsonValue datasets = JsonValue::MakeArray();
  for (const std::string& d : im.datasets) datasets.Push(d);
  imatrix.Set("datasets", std::move(datasets));
  if (im.chunk_count) imatrix.Set("chunk_count", *im.chunk_count);
  if (im.chunk_size) imatrix.Set("chunk_size", *im.chunk_size);
  if (im.last_chunk) imatrix.Set("chunk_count", *im.last_chunk);
  if (im.assumed_chunk_size) imatrix.Set("assumed_chunk_size", *im.assumed_chunk_size);
  imatrix.Set("entries", static_cast<uint64_t>(im.entries.size()));
  imatrix.Set("skipped", std::move(skipped));
  collection.Set("imatrix", std::move(imatrix));
  return collection;
}

// The manifest's "sites": each site's geometry and the two fields an imatrix measures.
JsonValue SitesJson(const std::vector<Site>& sites) {
  JsonValue site_json = JsonValue::MakeObject();
  for (const Site& s : sites) {
    JsonValue v = JsonValue::MakeObject();
    v.Set("file", std::string(kOutFile));
    v.Set("in_features", s.in_features);
    v.Set("experts", s.experts ? JsonValue(*s.experts) : JsonValue());
    // Only what an imatrix measures: uses that need sum_abs, min/max or a Hessian find the
    // field missing and refuse or fall back as they do for any site without it.
    v.Set("fields", JsonValue(JsonValue::Array{JsonValue("count"), JsonValue("sum_x2")}));
    site_json.Set(s.name, std::move(v));
  }
  return site_json;
}

}  // namespace

Status ImportImatrix(const fs::path& file, const fs::path& model_dir, const fs::path& out,
                     const ImportOptions& options) {
  std::error_code ec;
  if (fs::exists(out, ec) && !(fs::is_directory(out, ec) && fs::is_empty(out, ec))) {
    return Error(ErrorCode::kUsage, out.string() + " exists and is not an empty folder");
  }
  QUENCH_ASSIGN_OR_RETURN(ModelFolder folder, LoadModelFolder(model_dir));
  QUENCH_ASSIGN_OR_RETURN(ExpertSplit split, SplitFusedExperts(folder));
  (void)split;
  Shapes inv;
  for (const Shard& s : folder.shards) {
    for (const TensorInfo& t : s.header.tensors) inv[t.name] = t.shape;
  }
  QUENCH_ASSIGN_OR_RETURN(const LanguageModel lm, FindLanguageModel(folder, model_dir, inv));
  QUENCH_ASSIGN_OR_RETURN(Imatrix im, ReadImatrix(file, options.legacy_chunk_size));
  JsonValue skipped = JsonValue::MakeObject();
  QUENCH_ASSIGN_OR_RETURN(auto by_group, PlaceEntries(file, im, lm, inv, &skipped));
  std::vector<Site> sites;
  // Sorted by weight name, as the collector writes them (and built as a map: JsonValue::Set
  // looks its key up linearly, quadratic over DeepSeek-V3's 45 000 expert weights).
  std::map<std::string, JsonValue> weight_map, consumer_map;
  uint64_t tokens = 0;
  for (auto& [group, s] : by_group) {
    for (const auto& [w, x] : s.consumers) {
      JsonValue shape = JsonValue::MakeArray();
      for (uint64_t d : inv.at(w)) shape.Push(d);
      weight_map[w] = std::move(shape);
      JsonValue c = JsonValue::MakeObject();
      c.Set("site", s.name);
      if (x) c.Set("expert", *x);
      consumer_map[w] = std::move(c);
    }
    if (!s.experts) tokens = std::max(tokens, static_cast<uint64_t>(s.counts[0]));
    sites.push_back(std::move(s));
  }
  JsonValue::Object weights(weight_map.begin(), weight_map.end());
  JsonValue::Object consumers(consumer_map.begin(), consumer_map.end());
  JsonValue not_reached = JsonValue::MakeArray();
  for (const auto& [w, shape] : inv) {
    if (shape.size() == 2 && !consumer_map.contains(w) &&
        !ImatrixNameOf(lm.model_type, w, lm.names).empty()) {
      not_reached.Push(w);
    }
  }

  JsonValue manifest = JsonValue::MakeObject();
  manifest.Set("format", "quench-stats");
  manifest.Set("version", kStatsVersion);
  JsonValue model = JsonValue::MakeObject();
  if (const JsonValue* a = folder.config->Find("architectures")) model.Set("architectures", *a);
  model.Set("model_type", lm.model_type);
  model.Set("weights", JsonValue(std::move(weights)));
  manifest.Set("model", std::move(model));
  manifest.Set("collection", CollectionJson(file, im, folder, tokens, std::move(skipped)));
  manifest.Set("files", JsonValue(JsonValue::Array{JsonValue(std::string(kOutFile))}));
  manifest.Set("sites", SitesJson(sites));
  manifest.Set("consumers", JsonValue(std::move(consumers)));
  if (!not_reached.as_array().empty()) manifest.Set("not_reached", std::move(not_reached));

  // Built beside `out` and renamed over it (or to it) once complete.
  return WriteFolderAtomic(
      out, [&](const fs::path& tmp) { return WriteFolder(tmp, sites, std::move(manifest)); });
}

}  // namespace quench::calib
