// `quench inspect PATH [--json]` and `quench schemes`.
#include <cstdio>
#include <filesystem>
#include <map>

#include "cli/cli.h"
#include "format/json.h"
#include "format/model_folder.h"
#include "quench/scheme.h"

namespace quench::cli {
namespace fs = std::filesystem;

namespace {

std::string ShapeText(const std::vector<uint64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string HumanBytes(uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", v, units[u]);
  return buf;
}

const char kInspectHelp[] =
    "usage: quench inspect PATH [--json]\n"
    "\n"
    "Lists every tensor of a checkpoint folder or of one .safetensors file: name, dtype,\n"
    "shape and bytes, with totals per dtype, and the quantization_config of config.json\n"
    "when there is one. Reads headers only.\n"
    "\n"
    "  --json   machine-readable output: {\"files\": [...], \"totals\": {...},\n"
    "           \"quantization_config\": {...} or null}\n";

}  // namespace

int RunInspect(const std::vector<std::string>& args) {
  bool json = false;
  std::string path;
  for (const std::string& a : args) {
    if (a == "--json") {
      json = true;
    } else if (a == "-h" || a == "--help") {
      std::fputs(kInspectHelp, stdout);
      return 0;
    } else if (a.starts_with("-")) {
      return ReportError("inspect: unknown option '" + a + "'\n\n" + kInspectHelp, 2);
    } else if (path.empty()) {
      path = a;
    } else {
      return ReportError("inspect: takes one PATH", 2);
    }
  }
  if (path.empty()) return ReportError(std::string("inspect: no PATH given\n\n") + kInspectHelp, 2);

  std::vector<Shard> shards;
  std::optional<JsonValue> qconfig;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    auto folder = LoadModelFolder(path);
    if (!folder.ok()) return ReportError(folder.status().ToString(), ExitCodeFor(folder.status().code()));
    shards = std::move(folder->shards);
    if (folder->config) {
      if (const JsonValue* q = folder->config->Find("quantization_config")) qconfig = *q;
    }
  } else if (fs::exists(path, ec)) {
    auto shard = LoadShard(path, fs::path(path).filename().string());
    if (!shard.ok()) return ReportError(shard.status().ToString(), ExitCodeFor(shard.status().code()));
    shards.push_back(std::move(shard).value());
  } else {
    return ReportError(path + ": no such file or folder", 3);
  }

  std::map<std::string, std::pair<uint64_t, uint64_t>> by_dtype;  // count, bytes
  uint64_t count = 0, bytes = 0;
  for (const Shard& s : shards) {
    for (const TensorInfo& t : s.header.tensors) {
      auto& e = by_dtype[std::string(DTypeName(t.dtype))];
      ++e.first;
      e.second += t.nbytes();
      ++count;
      bytes += t.nbytes();
    }
  }
  if (json) {
    JsonValue files = JsonValue::MakeArray();
    for (const Shard& s : shards) {
      JsonValue tensors = JsonValue::MakeArray();
      for (const TensorInfo& t : s.header.tensors) {
        JsonValue shape = JsonValue::MakeArray();
        for (uint64_t d : t.shape) shape.Push(JsonValue(d));
        JsonValue o = JsonValue::MakeObject();
        o.Set("name", JsonValue(t.name));
        o.Set("dtype", JsonValue(DTypeName(t.dtype)));
        o.Set("shape", std::move(shape));
        o.Set("bytes", JsonValue(t.nbytes()));
        tensors.Push(std::move(o));
      }
      JsonValue f = JsonValue::MakeObject();
      f.Set("name", JsonValue(s.rel_name));
      f.Set("file_bytes", JsonValue(s.file_size));
      f.Set("tensors", std::move(tensors));
      files.Push(std::move(f));
    }
    JsonValue dt = JsonValue::MakeObject();
    for (const auto& [name, cb] : by_dtype) {
      JsonValue e = JsonValue::MakeObject();
      e.Set("tensors", JsonValue(cb.first));
      e.Set("bytes", JsonValue(cb.second));
      dt.Set(name, std::move(e));
    }
    JsonValue totals = JsonValue::MakeObject();
    totals.Set("tensors", JsonValue(count));
    totals.Set("bytes", JsonValue(bytes));
    totals.Set("by_dtype", std::move(dt));
    JsonValue root = JsonValue::MakeObject();
    root.Set("files", std::move(files));
    root.Set("totals", std::move(totals));
    root.Set("quantization_config", qconfig ? *qconfig : JsonValue());
    std::string out = DumpPythonJson(root);
    out += '\n';
    std::fputs(out.c_str(), stdout);
    return 0;
  }
  for (const Shard& s : shards) {
    std::printf("%s  (%zu tensors, %s)\n", s.rel_name.c_str(), s.header.tensors.size(),
                HumanBytes(s.file_size).c_str());
    size_t width = 4;
    for (const TensorInfo& t : s.header.tensors) width = std::max(width, t.name.size());
    for (const TensorInfo& t : s.header.tensors) {
      std::printf("  %-*s  %-8s %-16s %12llu\n", static_cast<int>(width), t.name.c_str(),
                  std::string(DTypeName(t.dtype)).c_str(), ShapeText(t.shape).c_str(),
                  static_cast<unsigned long long>(t.nbytes()));
    }
  }
  std::printf("total: %llu tensors, %llu bytes (%s)\n", static_cast<unsigned long long>(count),
              static_cast<unsigned long long>(bytes), HumanBytes(bytes).c_str());
  for (const auto& [name, cb] : by_dtype) {
    std::printf("  %-8s %8llu tensors %14llu bytes\n", name.c_str(),
                static_cast<unsigned long long>(cb.first),
                static_cast<unsigned long long>(cb.second));
  }
  if (qconfig) {
    std::printf("quantization_config:\n%s\n", DumpPythonJson(*qconfig).c_str());
  } else {
    std::printf("quantization_config: none\n");
  }
  return 0;
}

int RunSchemes(const std::vector<std::string>& args) {
  for (const std::string& a : args) {
    if (a == "-h" || a == "--help") {
      std::fputs("usage: quench schemes\n\nLists every scheme: its compressed-tensors format, "
                 "effective bits per weight\n(including scales, for a 4096x4096 BF16 weight), "
                 "weights, activations,\nwhether it needs calibration data, and the GPUs vLLM "
                 "runs it on.\n", stdout);
      return 0;
    }
    return ReportError("schemes: takes no arguments", 2);
  }
  std::printf("%-11s %-21s %5s  %-60s %s\n", "scheme", "format", "bits", "weights",
              "activations");
  for (const SchemeInfo& s : SchemeTable()) {
    char bits[16] = "-";
    if (s.outputs != nullptr) std::snprintf(bits, sizeof bits, "%.2f", s.BitsPerWeight(4096, 4096));
    std::printf("%-11s %-21s %5s  %-60s %s\n", std::string(s.name).c_str(),
                std::string(s.format).c_str(), bits, std::string(s.weights_desc).c_str(),
                std::string(s.activations_desc).c_str());
  }
  std::printf("\nGPU generation vLLM needs, and calibration:\n");
  for (const SchemeInfo& s : SchemeTable()) {
    std::printf("  %-11s %s%s\n", std::string(s.name).c_str(), std::string(s.gpu).c_str(),
                s.needs_calibration.empty() ? "" : "; NEEDS CALIBRATION DATA (refused)");
  }
  return 0;
}

}  // namespace quench::cli
