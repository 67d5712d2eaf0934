// `quench inspect PATH [--json] [--sparsity]` and `quench schemes`.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cli/cli.h"
#include "cli/hub_cache.h"
#include "format/file_io.h"
#include "format/json.h"
#include "format/model_folder.h"
#include "format/source_quant.h"
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
    "when there is one; for a quantized source quench can convert (FP8 blocks, AutoAWQ,\n"
    "ModelOpt NVFP4), its layout (block or group size, scale dtype, the lossless repack's\n"
    "scheme). Reads headers only, unless --sparsity.\n"
    "\n"
    "  --json       machine-readable output: {\"files\": [...], \"totals\": {...},\n"
    "               \"quantization_config\": {...} or null, \"source_format\": \"...\" or null}\n"
    "  --sparsity   also read the weights and show, per weight tensor and overall, the\n"
    "               fraction of weights that are zero (float and int weights; packed FP4\n"
    "               nibbles +-0; packed symmetric ints equal to their offset)\n";

// Zeros among the n elements of an unpacked weight (float codes +-0, int8 0); nullopt for
// dtypes that hold no weights.
std::optional<std::pair<uint64_t, uint64_t>> CountUnpackedZeros(const uint8_t* d, DType dtype,
                                                                uint64_t n) {
  uint64_t zeros = 0;
  switch (dtype) {
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

// Zeros of a pack-quantized int32 weight_packed: b-bit fields equal to their offset 2^(b-1).
// The width comes from the module's weight_shape in the same shard; nullopt when it cannot
// be told or the module has a zero point (then zero is not one code).
std::optional<std::pair<uint64_t, uint64_t>> CountPackedIntZeros(const TensorInfo& t,
                                                                 const uint8_t* file,
                                                                 const Shard& shard) {
  const uint8_t* d = file + shard.header.data_start + t.begin;
  const std::string mod(SplitModuleParam(t.name).first);
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
  uint64_t zeros = 0;
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

// Zero weights in a weight-like tensor, or nullopt when zeros cannot be told from the data
// alone (asymmetric packed ints) or the tensor holds no weights (scales, shapes).
std::optional<std::pair<uint64_t, uint64_t>> CountZeros(const TensorInfo& t, const uint8_t* file,
                                                        const Shard& shard) {
  const uint8_t* d = file + shard.header.data_start + t.begin;
  const std::string_view param = SplitModuleParam(t.name).second;
  const uint64_t n = t.numel();
  if (param == "weight") return CountUnpackedZeros(d, t.dtype, n);
  if (param != "weight_packed") return std::nullopt;
  if (t.dtype == DType::kU8) {  // FP4 E2M1 pairs: 0x0 and 0x8 are +-0
    uint64_t zeros = 0;
    for (uint64_t i = 0; i < n; ++i) zeros += ((d[i] & 0x7) == 0) + ((d[i] & 0x70) == 0);
    return std::make_pair(zeros, 2 * n);
  }
  if (t.dtype == DType::kI32 && t.shape.size() == 2) return CountPackedIntZeros(t, file, shard);
  return std::nullopt;
}

struct InspectArgs {
  bool json = false, sparsity = false;
  std::string path;
};

// Flags and the one PATH. On a usage error or --help, *exit_code is what RunInspect returns.
std::optional<InspectArgs> ParseInspectArgs(const std::vector<std::string>& args,
                                            int* exit_code) {
  InspectArgs a;
  for (const std::string& arg : args) {
    if (arg == "--json") {
      a.json = true;
    } else if (arg == "--sparsity") {
      a.sparsity = true;
    } else if (arg == "-h" || arg == "--help") {
      std::fputs(kInspectHelp, stdout);
      *exit_code = 0;
      return std::nullopt;
    } else if (arg.starts_with("-")) {
      *exit_code = ReportError("inspect: unknown option '" + arg + "'\n\n" + kInspectHelp, 2);
      return std::nullopt;
    } else if (a.path.empty()) {
      a.path = arg;
    } else {
      *exit_code = ReportError("inspect: takes one PATH", 2);
      return std::nullopt;
    }
  }
  if (a.path.empty()) {
    *exit_code = ReportError(std::string("inspect: no PATH given\n\n") + kInspectHelp, 2);
    return std::nullopt;
  }
  return a;
}

// What is inspected: a folder's shards and quantization_config, or one .safetensors file.
struct Inspected {
  std::vector<Shard> shards;
  std::optional<JsonValue> qconfig;
  // A quantized source quench can decode, as planning describes it; "" otherwise. What
  // convert does with it.
  std::string source;
  std::string decode = "convert decodes them to BF16 (RNE(code x scale)) before quantizing";
};

// Reads the headers (and config.json) of PATH. On failure, *exit_code is RunInspect's.
std::optional<Inspected> LoadInspected(const std::string& path, int* exit_code) {
  Inspected in;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    auto folder = LoadModelFolder(path);
    if (!folder.ok()) {
      *exit_code = ReportStatus(folder.status());
      return std::nullopt;
    }
    // A source quench reads decoded (an FP8 checkpoint): said so, with its layout. Anything
    // else (plain, or a quantization quench does not read) says nothing more here.
    if (auto q = DetectSourceQuantization(*folder); q.ok() && q->format != SourceFormat::kPlain) {
      in.source = q->description;
      if (q->format == SourceFormat::kMxfp4) {
        in.decode = "convert decodes them to BF16 [experts, in, out] (code x 2^(scale - 127), "
                    "each expert transposed, as transformers' Mxfp4 dequantizer)";
      }
    }
    in.shards = std::move(folder->shards);
    if (folder->config) {
      if (const JsonValue* q = SourceQuantizationConfig(*folder)) in.qconfig = *q;
    }
  } else if (fs::exists(path, ec)) {
    auto shard = LoadShard(path, fs::path(path).filename().string());
    if (!shard.ok()) {
      *exit_code = ReportStatus(shard.status());
      return std::nullopt;
    }
    in.shards.push_back(std::move(shard).value());
  } else if (ec) {  // neither found nor missing: a symbolic link loop, no permission
    const bool loop = ec == std::errc::too_many_symbolic_link_levels;
    const Status st = loop ? Error(ErrorCode::kInvalidInput,
                                   path + ": symbolic link loop (" + ec.message() + ")")
                           : Error(ErrorCode::kIo, path + ": cannot stat: " + ec.message());
    *exit_code = ReportStatus(st);
    return std::nullopt;
  } else {
    *exit_code = ReportError(path + ": no such file or folder", 3);
    return std::nullopt;
  }
  return in;
}

// (zeros, weights) of every weight tensor whose zeros can be counted, and over all of them.
struct Sparsity {
  std::map<std::string, std::pair<uint64_t, uint64_t>> by_tensor;
  uint64_t zeros = 0, weights = 0;
};

double ZeroRatio(std::pair<uint64_t, uint64_t> z) {
  return z.second ? static_cast<double>(z.first) / static_cast<double>(z.second) : 0.0;
}

// --sparsity: reads every tensor through a mapping, releasing its pages after counting.
Status CountSparsity(const std::vector<Shard>& shards, Sparsity* out) {
  for (const Shard& sh : shards) {
    QUENCH_ASSIGN_OR_RETURN(MappedFile m, MappedFile::Open(sh.path));
    for (const TensorInfo& t : sh.header.tensors) {
      if (auto z = CountZeros(t, m.data(), sh)) {
        out->by_tensor[t.name] = *z;
        out->zeros += z->first;
        out->weights += z->second;
      }
      m.Release(sh.header.data_start + t.begin, t.nbytes());
    }
  }
  return Status::Ok();
}

// Tensor count and bytes, over all and per dtype name.
struct Totals {
  std::map<std::string, std::pair<uint64_t, uint64_t>> by_dtype;  // count, bytes
  uint64_t count = 0, bytes = 0;
};

Totals CountTotals(const std::vector<Shard>& shards) {
  Totals t;
  for (const Shard& s : shards) {
    for (const TensorInfo& info : s.header.tensors) {
      auto& e = t.by_dtype[std::string(DTypeName(info.dtype))];
      ++e.first;
      e.second += info.nbytes();
      ++t.count;
      t.bytes += info.nbytes();
    }
  }
  return t;
}

// --json: {"files": [...], "totals": {...}, "quantization_config": {...} or null}.
void PrintJson(const Inspected& in, const Totals& totals, const Sparsity* sparsity) {
  JsonValue files = JsonValue::MakeArray();
  for (const Shard& s : in.shards) {
    JsonValue tensors = JsonValue::MakeArray();
    for (const TensorInfo& t : s.header.tensors) {
      JsonValue shape = JsonValue::MakeArray();
      for (uint64_t d : t.shape) shape.Push(JsonValue(d));
      JsonValue o = JsonValue::MakeObject();
      o.Set("name", JsonValue(t.name));
      o.Set("dtype", JsonValue(DTypeName(t.dtype)));
      o.Set("shape", std::move(shape));
      o.Set("bytes", JsonValue(t.nbytes()));
      if (sparsity) {
        if (auto it = sparsity->by_tensor.find(t.name); it != sparsity->by_tensor.end()) {
          o.Set("sparsity", JsonValue(ZeroRatio(it->second)));
        }
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
  for (const auto& [name, cb] : totals.by_dtype) {
    JsonValue e = JsonValue::MakeObject();
    e.Set("tensors", JsonValue(cb.first));
    e.Set("bytes", JsonValue(cb.second));
    dt.Set(name, std::move(e));
  }
  JsonValue tot = JsonValue::MakeObject();
  tot.Set("tensors", JsonValue(totals.count));
  tot.Set("bytes", JsonValue(totals.bytes));
  tot.Set("by_dtype", std::move(dt));
  if (sparsity) tot.Set("sparsity", JsonValue(ZeroRatio({sparsity->zeros, sparsity->weights})));
  JsonValue root = JsonValue::MakeObject();
  root.Set("files", std::move(files));
  root.Set("totals", std::move(tot));
  root.Set("quantization_config", in.qconfig ? *in.qconfig : JsonValue());
  root.Set("source_format", in.source.empty() ? JsonValue() : JsonValue(in.source));
  std::string out = DumpPythonJson(root);
  out += '\n';
  std::fputs(out.c_str(), stdout);
}

// Per shard, one line per tensor: name, dtype, shape, bytes (and its zero fraction).
void PrintTensorTable(const std::vector<Shard>& shards, const Sparsity* sparsity) {
  for (const Shard& s : shards) {
    std::printf("%s  (%zu tensors, %s)\n", s.rel_name.c_str(), s.header.tensors.size(),
                HumanBytes(s.file_size).c_str());
    size_t width = 4;
    for (const TensorInfo& t : s.header.tensors) width = std::max(width, t.name.size());
    for (const TensorInfo& t : s.header.tensors) {
      std::string zero;
      if (sparsity) {
        if (auto it = sparsity->by_tensor.find(t.name); it != sparsity->by_tensor.end()) {
          char buf[32];
          std::snprintf(buf, sizeof buf, "  %6.2f%% zero", 100 * ZeroRatio(it->second));
          zero = buf;
        }
      }
      std::printf("  %-*s  %-8s %-16s %12llu%s\n", static_cast<int>(width), t.name.c_str(),
                  std::string(DTypeName(t.dtype)).c_str(), ShapeString(t.shape).c_str(),
                  static_cast<unsigned long long>(t.nbytes()), zero.c_str());
    }
  }
}

// Totals, per dtype, overall sparsity, and the quantization_config as config.json holds it.
void PrintSummary(const Inspected& in, const Totals& totals, const Sparsity* sparsity) {
  std::printf("total: %llu tensors, %llu bytes (%s)\n",
              static_cast<unsigned long long>(totals.count),
              static_cast<unsigned long long>(totals.bytes), HumanBytes(totals.bytes).c_str());
  for (const auto& [name, cb] : totals.by_dtype) {
    std::printf("  %-8s %8llu tensors %14llu bytes\n", name.c_str(),
                static_cast<unsigned long long>(cb.first),
                static_cast<unsigned long long>(cb.second));
  }
  if (sparsity) {
    std::printf("sparsity: %.2f%% of %llu weights are zero\n",
                100 * ZeroRatio({sparsity->zeros, sparsity->weights}),
                static_cast<unsigned long long>(sparsity->weights));
  }
  if (!in.source.empty()) {
    std::printf("source: %s; %s\n", in.source.c_str(), in.decode.c_str());
  }
  if (in.qconfig) {
    std::printf("quantization_config:\n%s\n", DumpPythonJson(*in.qconfig).c_str());
  } else {
    std::printf("quantization_config: none\n");
  }
}

}  // namespace

int RunInspect(const std::vector<std::string>& args) {
  int exit_code = 0;
  const std::optional<InspectArgs> a = ParseInspectArgs(args, &exit_code);
  if (!a) return exit_code;
  const HubSource hub = ResolveHubSource(a->path);
  if (!hub.hint.empty()) return ReportError(a->path + ": no such file or folder; " + hub.hint, 3);
  if (!hub.note.empty()) std::fprintf(stderr, "quench: %s\n", hub.note.c_str());
  const std::optional<Inspected> in = LoadInspected(hub.path, &exit_code);
  if (!in) return exit_code;
  Sparsity sparsity;
  if (a->sparsity) {
    if (Status st = CountSparsity(in->shards, &sparsity); !st.ok()) {
      return ReportStatus(st);
    }
  }
  const Sparsity* zeros = a->sparsity ? &sparsity : nullptr;
  const Totals totals = CountTotals(in->shards);
  if (a->json) {
    PrintJson(*in, totals, zeros);
  } else {
    PrintTensorTable(in->shards, zeros);
    PrintSummary(*in, totals, zeros);
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
                s.needs_calibration.empty()
                    ? ""
                    : "; NEEDS CALIBRATION DATA (--stats; refused without it)");
  }
  return 0;
}

}  // namespace quench::cli
