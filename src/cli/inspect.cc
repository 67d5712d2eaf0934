// `quench inspect PATH [--json]` and `quench schemes`.
#include <cstdio>
#include <cstring>
#include <optional>
#include <filesystem>
#include <map>

#include "cli/cli.h"
#include "format/json.h"
#include "format/file_io.h"
#include "format/model_folder.h"
#include "plan/matcher.h"
#include "quench/scheme.h"

namespace quench::cli {
namespace fs = std::filesystem;

namespace {

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
    "usage: quench inspect PATH [--json] [--sparsity]\n"
    "\n"
    "Lists every tensor of a checkpoint folder or of one .safetensors file: name, dtype,\n"
    "shape and bytes, with totals per dtype, and the quantization_config of config.json\n"
    "when there is one. Reads headers only, unless --sparsity.\n"
    "\n"
    "  --json       machine-readable output: {\"files\": [...], \"totals\": {...},\n"
    "               \"quantization_config\": {...} or null}\n"
    "  --sparsity   also read the weights and show, per weight tensor and overall, the\n"
    "               fraction of weights that are zero (float and int weights; packed FP4\n"
    "               nibbles +-0; packed symmetric ints equal to their offset)\n";

// Zero weights in a weight-like tensor, or nullopt when zeros cannot be told from the data
// alone (asymmetric packed ints) or the tensor holds no weights (scales, shapes).
std::optional<std::pair<uint64_t, uint64_t>> CountZeros(const TensorInfo& t, const uint8_t* file,
                                                        const Shard& shard) {
  const uint8_t* d = file + shard.header.data_start + t.begin;
  auto [module, param] = SplitModuleParam(t.name);
  const uint64_t n = t.numel();
  uint64_t zeros = 0;
  if (param == "weight") {
    switch (t.dtype) {
      case DType::kBF16:
      case DType::kF16:
        for (uint64_t i = 0; i < n; ++i) zeros += ((d[2 * i] | (d[2 * i + 1] << 8)) & 0x7FFF) == 0;
        return std::make_pair(zeros, n);
      case DType::kF32:
        for (uint64_t i = 0; i < n; ++i) {
          uint32_t v;
          std::memcpy(&v, d + 4 * i, 4);
          zeros += (v & 0x7FFFFFFFu) == 0;
        }
        return std::make_pair(zeros, n);
      case DType::kF8E4M3:
        for (uint64_t i = 0; i < n; ++i) zeros += (d[i] & 0x7F) == 0;
        return std::make_pair(zeros, n);
      case DType::kI8:
        for (uint64_t i = 0; i < n; ++i) zeros += d[i] == 0;
        return std::make_pair(zeros, n);
      default:
        return std::nullopt;
    }
  }
  if (param != "weight_packed") return std::nullopt;
  if (t.dtype == DType::kU8) {  // FP4 E2M1 pairs: 0x0 and 0x8 are +-0
    for (uint64_t i = 0; i < n; ++i) zeros += ((d[i] & 0x7) == 0) + ((d[i] & 0x70) == 0);
    return std::make_pair(zeros, 2 * n);
  }
  if (t.dtype == DType::kI32 && t.shape.size() == 2) {
    const std::string mod(module);
    const TensorInfo* shape = nullptr;
    for (const TensorInfo& o : shard.header.tensors) {
      if (o.name == mod + ".weight_zero_point") return std::nullopt;
      if (o.name == mod + ".weight_shape") shape = &o;
    }
    if (shape == nullptr) return std::nullopt;
    int64_t dims[2];
    std::memcpy(dims, file + shard.header.data_start + shape->begin, 16);
    const uint64_t cols = static_cast<uint64_t>(dims[1]), words = t.shape[1];
    if (cols == 0) return std::nullopt;
    const int bits = static_cast<int>((words * 32) / cols);
    if (bits < 1 || bits > 8 || (cols * bits + 31) / 32 != words) return std::nullopt;
    const uint32_t offset = 1u << (bits - 1);
    for (uint64_t r = 0; r < t.shape[0]; ++r) {
      const uint8_t* row = d + 4 * words * r;
      for (uint64_t c = 0; c < cols; ++c) {
        const uint64_t bit = c * bits, w = bit / 32, off = bit % 32;
        uint64_t acc;
        uint32_t lo;
        std::memcpy(&lo, row + 4 * w, 4);
        acc = lo;
        if (off + bits > 32) {
          uint32_t hi;
          std::memcpy(&hi, row + 4 * (w + 1), 4);
          acc |= static_cast<uint64_t>(hi) << 32;
        }
        zeros += ((acc >> off) & ((1u << bits) - 1)) == offset;
      }
    }
    return std::make_pair(zeros, t.shape[0] * cols);
  }
  return std::nullopt;
}

}  // namespace

int RunInspect(const std::vector<std::string>& args) {
  bool json = false, sparsity = false;
  std::string path;
  for (const std::string& a : args) {
    if (a == "--json") {
      json = true;
    } else if (a == "--sparsity") {
      sparsity = true;
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
  } else if (ec) {  // neither found nor missing: a symbolic link loop, no permission
    const bool loop = ec == std::errc::too_many_symbolic_link_levels;
    const Status st = loop ? Error(ErrorCode::kInvalidInput,
                                   path + ": symbolic link loop (" + ec.message() + ")")
                           : Error(ErrorCode::kIo, path + ": cannot stat: " + ec.message());
    return ReportError(st.ToString(), ExitCodeFor(st.code()));
  } else {
    return ReportError(path + ": no such file or folder", 3);
  }

  // name -> (zeros, weights) for weight tensors, when --sparsity.
  std::map<std::string, std::pair<uint64_t, uint64_t>> zero_counts;
  uint64_t all_zeros = 0, all_weights = 0;
  if (sparsity) {
    for (const Shard& sh : shards) {
      auto m = MappedFile::Open(sh.path);
      if (!m.ok()) return ReportError(m.status().ToString(), ExitCodeFor(m.status().code()));
      for (const TensorInfo& t : sh.header.tensors) {
        if (auto z = CountZeros(t, m->data(), sh)) {
          zero_counts[t.name] = *z;
          all_zeros += z->first;
          all_weights += z->second;
        }
        m->Release(sh.header.data_start + t.begin, t.nbytes());
      }
    }
  }
  auto ratio = [](std::pair<uint64_t, uint64_t> z) {
    return z.second ? static_cast<double>(z.first) / static_cast<double>(z.second) : 0.0;
  };
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
        if (auto it = zero_counts.find(t.name); it != zero_counts.end()) {
          o.Set("sparsity", JsonValue(ratio(it->second)));
        }
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
    if (sparsity) totals.Set("sparsity", JsonValue(ratio({all_zeros, all_weights})));
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
      std::string zero;
      if (auto it = zero_counts.find(t.name); it != zero_counts.end()) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "  %6.2f%% zero", 100 * ratio(it->second));
        zero = buf;
      }
      std::printf("  %-*s  %-8s %-16s %12llu%s\n", static_cast<int>(width), t.name.c_str(),
                  std::string(DTypeName(t.dtype)).c_str(), ShapeString(t.shape).c_str(),
                  static_cast<unsigned long long>(t.nbytes()), zero.c_str());
    }
  }
  std::printf("total: %llu tensors, %llu bytes (%s)\n", static_cast<unsigned long long>(count),
              static_cast<unsigned long long>(bytes), HumanBytes(bytes).c_str());
  for (const auto& [name, cb] : by_dtype) {
    std::printf("  %-8s %8llu tensors %14llu bytes\n", name.c_str(),
                static_cast<unsigned long long>(cb.first),
                static_cast<unsigned long long>(cb.second));
  }
  if (sparsity) {
    std::printf("sparsity: %.2f%% of %llu weights are zero\n", 100 * ratio({all_zeros, all_weights}),
                static_cast<unsigned long long>(all_weights));
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
