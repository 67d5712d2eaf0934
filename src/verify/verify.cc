// quench verify: see verify.h for what is checked.
//
// Rules (VerifyProblem::rule):
//   safetensors        a shard, the index or the folder cannot be read (truncated, malformed)
//   config             quantization_config missing or not understood
//   index              the index does not list a tensor, or total_size is wrong
//   missing            a tensor the format (or the source) requires is absent
//   dtype, shape       a quantized module's tensor has the wrong dtype or shape
//   weight-shape       pack-quantized weight_shape contents disagree with the weight
//   extra              a tensor neither copied from the source nor written by quantization
//   not-quantized      the config selects the module but DST stores it unquantized
//   not-selected       DST quantizes a module the config does not select (ignored/untargeted)
//   changed            a copied tensor differs from the source (dtype, shape or bytes)
//   code               an invalid code: E4M3 NaN, int value or zero point out of range
//   scale              a non-finite, zero or negative scale, or an E8M0 NaN exponent (255)
//   fused-global-scale NVFP4 fused siblings with different weight_global_scale
//   error-bound        elements whose dequantized value is farther from the source than the
//                      format's grid allows (one grid step plus quotient rounding)
//   sqnr               the tensor's SQNR against the source is below its format's threshold
//   pruned             (--prune) an element zero in the pruned source does not dequantize to
//                      exactly 0, or the source holds NaN/Inf so it cannot be pruned
//   sparsity           (--prune, no SRC) the dequantized zeros lack the spec's structure
#include "verify/verify.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <unordered_map>

#include "format/file_io.h"
#include "format/model_folder.h"
#include "plan/fused_sets.h"
#include "plan/matcher.h"
#include "schemes/float_formats.h"

namespace quench {
namespace fs = std::filesystem;

namespace {

// ---------------------------------------------------------------------------------------------
// SQNR thresholds (dB). Measured with this verifier on the reference's outputs in data/golden
// (minimum over tensors; tiny-llama = Gaussian weights, std 0.02, the typical case; qedge/edge =
// hand-made edge rows, the hard case):
//   fp8   tiny FP8_DYNAMIC 31.6, FP8_BLOCK 31.6, MXFP8A16 30.4; edge MXFP8 27.3, FP8 31.4
//   int8  tiny W8A8 35.7;  edge W8A8 41.9, W8A16 42.5
//   int4  tiny W4A16 (g128) 16.8, W4A16_ASYM 18.2; edge g128 18.2, channel 18.0, asym 19.1
//   int2/3/5/6/7 (edge only) 4.8 / 11.9 / 24.7 / 30.9 / 36.8
//   nvfp4 tiny 20.4; edge 20.0        mxfp4 tiny 18.0; edge 14.9
// Thresholds sit about 6 dB under the tiny-llama minimum (3-5 dB under the edge minimum), and
// 2 dB lower again for per-channel int scales, so real weights with heavier tails pass, while
// a wrong scale or codebook (0 dB or below: a scale off by 2x gives about 0 dB) fails.
struct Threshold {
  std::string_view kind;
  double group_db;    // scales per group / block / MX group
  double channel_db;  // one scale per output channel (or per tensor)
};
constexpr Threshold kThresholds[] = {
    {"fp8", 24.0, 24.0},  {"int8", 30.0, 28.0},  {"int7", 29.0, 27.0}, {"int6", 23.0, 21.0},
    {"int5", 17.0, 15.0}, {"int4", 11.0, 9.0},   {"int3", 6.0, 4.0},   {"int2", 1.0, 0.5},
    {"nvfp4", 14.0, 14.0}, {"mxfp4", 11.0, 11.0},
};

constexpr uint64_t kChunkBytes = 32ull << 20;  // bytes of source walked between page releases

std::string Fmt(const char* fmt, double a) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, a);
  return buf;
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

uint64_t CeilDiv(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------------------
// Config groups.

enum class Format { kFloat, kInt, kPack, kNvfp4, kMxfp4, kMxfp8, kDense, kUnsupported };

struct Group {
  std::string key;
  std::string format_name;
  Format format = Format::kUnsupported;
  std::string type;  // "int" | "float"
  int bits = 8;
  bool symmetric = true;
  std::string strategy;  // tensor | channel | group | tensor_group | block
  uint64_t group_size = 0;
  uint64_t bh = 0, bw = 0;
  std::optional<DType> scale_dtype;  // from weights.scale_dtype when set
  bool g_idx = false;                // actorder "group": weight_g_idx allowed
  bool static_inputs = false;        // input_scale / input_global_scale allowed
  bool all = false;                  // targets contain "Linear"
  NameMatcher targets;

  bool per_channel() const { return strategy == "channel" || strategy == "tensor"; }
  std::string kind() const {
    switch (format) {
      case Format::kFloat:
      case Format::kMxfp8: return "fp8";
      case Format::kInt:
      case Format::kPack: return "int" + std::to_string(bits);
      case Format::kNvfp4: return "nvfp4";
      case Format::kMxfp4: return "mxfp4";
      default: return "";
    }
  }
};

std::optional<DType> TorchDType(std::string_view s) {
  if (s == "torch.bfloat16") return DType::kBF16;
  if (s == "torch.float16" || s == "torch.half") return DType::kF16;
  if (s == "torch.float32" || s == "torch.float") return DType::kF32;
  if (s == "torch.float8_e4m3fn") return DType::kF8E4M3;
  if (s == "torch.uint8") return DType::kU8;
  if (s == "torch.int8") return DType::kI8;
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// Expected tensors of one quantized module.

struct Expected {
  std::string suffix;
  std::vector<DType> dtypes;  // any of these
  std::vector<uint64_t> shape;
};

const std::vector<DType> kFloatDTypes = {DType::kBF16, DType::kF16, DType::kF32};

// Scale dtype for a source weight dtype (compressed-tensors: weight dtype; others -> F16).
DType ScaleDTypeFor(DType w) { return IsQuantizableFloat(w) ? w : DType::kF16; }

uint64_t ScaleCols(const Group& g, uint64_t in) {
  if (g.strategy == "group" || g.strategy == "tensor_group") {
    return g.group_size ? in / g.group_size : 1;
  }
  if (g.strategy == "block") return CeilDiv(in, g.bw);
  return 1;
}

std::vector<uint64_t> ScaleShape(const Group& g, uint64_t out, uint64_t in) {
  if (g.strategy == "tensor") return {1};
  if (g.strategy == "block") return {CeilDiv(out, g.bh), CeilDiv(in, g.bw)};
  return {out, ScaleCols(g, in)};
}

std::vector<Expected> ExpectedTensors(const Group& g, uint64_t out, uint64_t in,
                                      std::optional<DType> wdtype) {
  std::vector<DType> sd;
  if (g.scale_dtype) {
    sd.push_back(*g.scale_dtype);
  } else if (wdtype) {
    sd.push_back(ScaleDTypeFor(*wdtype));
  } else {
    sd.insert(sd.end(), kFloatDTypes.begin(), kFloatDTypes.end());
  }
  const std::vector<uint64_t> sshape = ScaleShape(g, out, in);
  std::vector<Expected> e;
  switch (g.format) {
    case Format::kFloat:
      e.push_back({"weight", {DType::kF8E4M3}, {out, in}});
      e.push_back({"weight_scale", sd, sshape});
      if (!g.symmetric) e.push_back({"weight_zero_point", {DType::kF8E4M3}, sshape});
      break;
    case Format::kInt:
      e.push_back({"weight", {DType::kI8}, {out, in}});
      e.push_back({"weight_scale", sd, sshape});
      if (!g.symmetric) e.push_back({"weight_zero_point", {DType::kI8}, sshape});
      break;
    case Format::kPack: {
      const uint64_t b = static_cast<uint64_t>(g.bits);
      e.push_back({"weight_packed", {DType::kI32}, {out, CeilDiv(in * b, 32)}});
      e.push_back({"weight_scale", sd, sshape});
      e.push_back({"weight_shape", {DType::kI64}, {2}});
      if (!g.symmetric) {
        if (g.strategy == "group" || g.strategy == "channel") {
          e.push_back({"weight_zero_point", {DType::kI32}, {CeilDiv(out * b, 32), sshape.back()}});
        } else {
          e.push_back({"weight_zero_point", {DType::kI8}, sshape});
        }
      }
      break;
    }
    case Format::kNvfp4:
      e.push_back({"weight_packed", {DType::kU8}, {out, in / 2}});
      e.push_back({"weight_scale", {DType::kF8E4M3}, {out, in / 16}});
      e.push_back({"weight_global_scale", {DType::kF32}, {1}});
      break;
    case Format::kMxfp4:
      e.push_back({"weight_packed", {DType::kU8}, {out, in / 2}});
      e.push_back({"weight_scale", {DType::kU8}, {out, in / 32}});
      break;
    case Format::kMxfp8:
      e.push_back({"weight", {DType::kF8E4M3}, {out, in}});
      e.push_back({"weight_scale", {DType::kU8}, {out, in / 32}});
      break;
    default:
      break;
  }
  return e;
}

// Parameter names compressed-tensors writes for a quantized module: a DST tensor `M.<one of
// these>` belongs to M's quantization (weight itself only together with the others).
constexpr std::string_view kQuantSuffixes[] = {
    "weight_packed", "weight_scale",   "weight_zero_point", "weight_global_scale",
    "weight_shape",  "weight_g_idx",   "input_scale",       "input_zero_point",
    "input_global_scale",
};
bool IsQuantSuffix(std::string_view p) {
  return std::find(std::begin(kQuantSuffixes), std::end(kQuantSuffixes), p) !=
         std::end(kQuantSuffixes);
}

// ---------------------------------------------------------------------------------------------
// Folder access: every shard mapped (address space only; pages are released after use).

struct Loc {
  size_t shard;
  const TensorInfo* info;
};

struct Checkpoint {
  ModelFolder folder;
  std::vector<MappedFile> maps;
  std::unordered_map<std::string, Loc> by_name;

  const TensorInfo* Find(const std::string& name) const {
    auto it = by_name.find(name);
    return it == by_name.end() ? nullptr : it->second.info;
  }
  const std::string& FileOf(const std::string& name) const {
    static const std::string kNone;
    auto it = by_name.find(name);
    return it == by_name.end() ? kNone : folder.shards[it->second.shard].rel_name;
  }
  // Absolute file offset and mapping of a tensor's bytes.
  const uint8_t* Data(const std::string& name, uint64_t* file_off = nullptr,
                      const MappedFile** map = nullptr) const {
    const Loc& l = by_name.at(name);
    const uint64_t off = folder.shards[l.shard].header.data_start + l.info->begin;
    if (file_off) *file_off = off;
    if (map) *map = &maps[l.shard];
    return maps[l.shard].data() + off;
  }
  void Release(const std::string& name) const {
    uint64_t off;
    const MappedFile* m;
    const TensorInfo* t = Find(name);
    if (t == nullptr) return;
    Data(name, &off, &m);
    m->Release(off, t->nbytes());
  }
};

Status OpenMaps(Checkpoint& c) {
  for (const Shard& s : c.folder.shards) {
    QUENCH_ASSIGN_OR_RETURN(MappedFile m, MappedFile::Open(s.path));
    c.maps.push_back(std::move(m));
  }
  for (size_t i = 0; i < c.folder.shards.size(); ++i) {
    for (const TensorInfo& t : c.folder.shards[i].header.tensors) c.by_name[t.name] = {i, &t};
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// Element decoding.

double LoadFloat(const uint8_t* p, DType d, uint64_t i) {
  switch (d) {
    case DType::kBF16: {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      return BF16ToF32(h);
    }
    case DType::kF16: {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      return F16ToF32(h);
    }
    case DType::kF32: {
      float f;
      std::memcpy(&f, p + 4 * i, 4);
      return f;
    }
    case DType::kF8E4M3: return E4M3ToF32(p[i]);
    default: return std::numeric_limits<double>::quiet_NaN();
  }
}

int64_t LoadInt(const uint8_t* p, DType d, uint64_t i) {
  switch (d) {
    case DType::kI8: return static_cast<int8_t>(p[i]);
    case DType::kU8: return p[i];
    case DType::kI32: {
      int32_t v;
      std::memcpy(&v, p + 4 * i, 4);
      return v;
    }
    case DType::kI64: {
      int64_t v;
      std::memcpy(&v, p + 8 * i, 8);
      return v;
    }
    default: return 0;
  }
}

// Half-ulp relative rounding of a quotient computed in fp32 and rounded to the weight dtype.
double QuotientRounding(DType d) {
  switch (d) {
    case DType::kBF16: return std::ldexp(1.0, -8) + std::ldexp(1.0, -24);
    case DType::kF16: return std::ldexp(1.0, -11) + std::ldexp(1.0, -24);
    default: return std::ldexp(1.0, -24);
  }
}

constexpr double kE2M1[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};

// Largest gap between a grid value and its neighbours: values that round to it lie within
// half of it.
double GapE2M1(int idx) {
  const double up = idx < 7 ? kE2M1[idx + 1] - kE2M1[idx] : 0;
  const double down = idx > 0 ? kE2M1[idx] - kE2M1[idx - 1] : 0;
  return std::max(up, down);
}
double GapE4M3(uint8_t code) {
  const uint8_t m = code & 0x7F;
  const double v = E4M3ToF32(m);
  const double up = m < 0x7E ? E4M3ToF32(static_cast<uint8_t>(m + 1)) - v : 0;
  const double down = m > 0 ? v - E4M3ToF32(static_cast<uint8_t>(m - 1)) : 0;
  return std::max(up, down);
}

// One quantized module, fully described, ready to be walked row by row.
struct ModuleView {
  std::string module;
  const Group* g = nullptr;
  uint64_t out = 0, in = 0;
  const uint8_t* w = nullptr;       // weight / weight_packed
  const uint8_t* scale = nullptr;
  DType sdt = DType::kBF16;
  std::vector<uint64_t> sshape;
  const uint8_t* zp = nullptr;
  DType zdt = DType::kI8;
  float gs = 1;                     // NVFP4 global scale
  const uint8_t* x = nullptr;       // source weight, when SRC
  DType xdt = DType::kBF16;
  double qmin = 0, qmax = 0;        // grid ends in the quotient domain
};

struct RowBuffers {
  std::vector<double> q, gap, s, zp;
  std::vector<uint8_t> bad_code;  // 1: invalid code at this column
};

double ScaleValue(const ModuleView& v, uint64_t idx) {
  const Group& g = *v.g;
  if (g.format == Format::kMxfp4 || g.format == Format::kMxfp8) {
    const int e = v.scale[idx];
    return std::ldexp(1.0, e - 127);
  }
  if (g.format == Format::kNvfp4) {
    const float s = E4M3ToF32(v.scale[idx]);
    return static_cast<float>(s / v.gs);  // fp32, as compressed-tensors divides
  }
  return LoadFloat(v.scale, v.sdt, idx);
}

uint64_t ScaleIndex(const ModuleView& v, uint64_t r, uint64_t c) {
  const Group& g = *v.g;
  if (g.strategy == "tensor") return 0;
  if (g.strategy == "block") return (r / g.bh) * v.sshape[1] + c / g.bw;
  if (g.format == Format::kNvfp4) return r * (v.in / 16) + c / 16;
  if (g.format == Format::kMxfp4 || g.format == Format::kMxfp8) return r * (v.in / 32) + c / 32;
  const uint64_t cols = v.sshape.size() == 2 ? v.sshape[1] : 1;
  if (cols == 1) return r;
  return r * cols + c / g.group_size;
}

// Unsigned `b`-bit field at bit `pos` of a little-endian int32 word stream.
uint32_t PackedField(const uint8_t* words, uint64_t nwords, uint64_t pos, int b) {
  const uint64_t wi = pos / 32, off = pos % 32;
  uint64_t lo = 0, hi = 0;
  uint32_t t;
  std::memcpy(&t, words + 4 * wi, 4);
  lo = t;
  if (wi + 1 < nwords) {
    std::memcpy(&t, words + 4 * (wi + 1), 4);
    hi = t;
  }
  const uint64_t both = lo | (hi << 32);
  return static_cast<uint32_t>((both >> off) & ((1ull << b) - 1));
}

// Zero point of row r, scale column sc (quotient units).
double ZeroPoint(const ModuleView& v, uint64_t r, uint64_t sc) {
  if (v.zp == nullptr) return 0;
  const Group& g = *v.g;
  const uint64_t cols = v.sshape.back();
  if (g.format == Format::kPack && v.zdt == DType::kI32) {
    const int b = g.bits;
    const uint64_t pos = r * static_cast<uint64_t>(b);
    const uint64_t wr = pos / 32, off = pos % 32;
    const uint64_t zrows = CeilDiv(v.out * static_cast<uint64_t>(b), 32);
    uint64_t lo = static_cast<uint32_t>(LoadInt(v.zp, DType::kI32, wr * cols + sc));
    uint64_t hi = wr + 1 < zrows ? static_cast<uint32_t>(LoadInt(v.zp, DType::kI32, (wr + 1) * cols + sc)) : 0;
    const uint64_t u = ((lo | (hi << 32)) >> off) & ((1ull << b) - 1);
    return static_cast<double>(u) - std::ldexp(1.0, b - 1);
  }
  if (v.zdt == DType::kF8E4M3) return E4M3ToF32(v.zp[sc + (v.sshape.size() == 2 ? r * cols : 0)]);
  const uint64_t idx = g.strategy == "tensor" ? 0 : r * cols + sc;
  return static_cast<double>(LoadInt(v.zp, v.zdt, idx));
}

// Decodes row r into the quotient domain: q (grid value), gap, effective scale and zero point.
void DecodeRow(const ModuleView& v, uint64_t r, RowBuffers& b) {
  const Group& g = *v.g;
  const uint64_t in = v.in;
  b.q.resize(in);
  b.gap.resize(in);
  b.s.resize(in);
  b.zp.resize(in);
  b.bad_code.assign(in, 0);
  switch (g.format) {
    case Format::kFloat:
    case Format::kMxfp8: {
      const uint8_t* row = v.w + r * in;
      for (uint64_t c = 0; c < in; ++c) {
        const uint8_t code = row[c];
        if ((code & 0x7F) == 0x7F) {
          b.bad_code[c] = 1;
          b.q[c] = 0;
          b.gap[c] = 0;
        } else {
          b.q[c] = E4M3ToF32(code);
          b.gap[c] = GapE4M3(code);
        }
      }
      break;
    }
    case Format::kInt: {
      const uint8_t* row = v.w + r * in;
      for (uint64_t c = 0; c < in; ++c) {
        const double q = static_cast<int8_t>(row[c]);
        if (q < v.qmin || q > v.qmax) b.bad_code[c] = 1;
        b.q[c] = q;
        b.gap[c] = 1;
      }
      break;
    }
    case Format::kPack: {
      const int bits = g.bits;
      const uint64_t words = CeilDiv(in * static_cast<uint64_t>(bits), 32);
      const uint8_t* row = v.w + r * words * 4;
      const double off = std::ldexp(1.0, bits - 1);
      for (uint64_t c = 0; c < in; ++c) {
        b.q[c] = static_cast<double>(PackedField(row, words, c * static_cast<uint64_t>(bits), bits)) - off;
        b.gap[c] = 1;
      }
      break;
    }
    case Format::kNvfp4:
    case Format::kMxfp4: {
      const uint8_t* row = v.w + r * (in / 2);
      for (uint64_t c = 0; c < in; ++c) {
        const uint8_t nib = (c & 1) ? (row[c / 2] >> 4) : (row[c / 2] & 0xF);
        const int idx = nib & 7;
        b.q[c] = (nib & 8) ? -kE2M1[idx] : kE2M1[idx];
        b.gap[c] = GapE2M1(idx);
      }
      break;
    }
    default:
      break;
  }
  uint64_t last_idx = ~0ull;
  double s = 0, z = 0;
  for (uint64_t c = 0; c < in; ++c) {
    const uint64_t idx = ScaleIndex(v, r, c);
    if (idx != last_idx) {
      s = ScaleValue(v, idx);
      const uint64_t sc = v.sshape.size() == 2 ? idx % v.sshape[1] : 0;
      z = ZeroPoint(v, r, sc);
      last_idx = idx;
    }
    b.s[c] = s;
    b.zp[c] = z;
  }
}

// The source weight pruned by a spec, row by row in order (a per-tensor threshold needs the
// count of threshold-equal elements in earlier rows). The converter's selection code
// (schemes/prune.h, tested against a full-sort oracle), here run on the source.
class PrunedRows {
 public:
  PrunedRows(const prune::PruneSpec& spec, const uint8_t* x, DType dt, uint64_t rows,
             uint64_t cols)
      : spec_(spec), x_(x), dt_(dt), rows_(rows), cols_(cols),
        row_bytes_(cols * DTypeBits(dt) / 8), buf_(row_bytes_) {}

  // The per-tensor threshold (a histogram pass over the whole tensor, calling `walked` with
  // the bytes read so far so the caller can release them). False on NaN/Inf.
  bool Init(const std::function<void(uint64_t)>& walked) {
    if (!spec_.per_tensor) return true;
    const uint64_t chunk_rows = std::max<uint64_t>(1, kChunkBytes / std::max<uint64_t>(1, row_bytes_));
    return prune::FindTensorThreshold(x_, dt_, rows_, cols_,
                                      prune::PruneCount(spec_.fraction, rows_ * cols_),
                                      chunk_rows,
                                      [&](uint64_t r, uint64_t n) {
                                        walked((r + n) * row_bytes_);
                                        return true;
                                      },
                                      &threshold_) == prune::ThresholdWalk::kComplete;
  }

  // Row r (rows in increasing order), pruned; nullptr on NaN/Inf.
  const uint8_t* Row(uint64_t r) {
    const uint8_t* in = x_ + r * row_bytes_;
    bool ok;
    if (spec_.per_tensor) {
      const uint64_t eq = prune::CountEqual(in, dt_, 1, cols_, threshold_.magnitude);
      ok = prune::PruneRowsTensor(in, buf_.data(), dt_, 1, cols_, threshold_, equal_before_,
                                  nullptr);
      equal_before_ += eq;
    } else {
      ok = prune::PruneRows(in, buf_.data(), dt_, 1, cols_, spec_, nullptr);
    }
    return ok ? buf_.data() : nullptr;
  }

 private:
  const prune::PruneSpec spec_;
  const uint8_t* x_;
  const DType dt_;
  const uint64_t rows_, cols_, row_bytes_;
  std::vector<uint8_t> buf_;
  prune::TensorThreshold threshold_;
  uint64_t equal_before_ = 0;
};

// "2:4", "unstructured:0.5", "unstructured:0.5 per tensor".
std::string PruneText(const prune::PruneSpec& spec) {
  if (spec.kind == prune::PruneSpec::kNM) return prune::SparsityStructure(spec);
  return "unstructured:" + Fmt("%g", spec.fraction) + (spec.per_tensor ? " per tensor" : "");
}

// ---------------------------------------------------------------------------------------------

class Verifier {
 public:
  Verifier(const VerifyOptions& o, VerifyReport& r) : opt_(o), rep_(r) {}

  Status Run();

 private:
  void Problem(std::string file, std::string tensor, std::string rule, std::string message) {
    rep_.problems.push_back({std::move(file), std::move(tensor), std::move(rule), std::move(message)});
  }
  bool LoadConfig();
  void CheckIndex();
  const Group* GroupFor(std::string_view module) const;
  void CheckModule(const std::string& module, const Group& g);
  void WalkModule(ModuleView& v, const std::string& file, const std::vector<std::string>& names);
  void CheckSource();
  bool EqualsPrunedSource(const TensorInfo& t, const uint8_t* sp, const uint8_t* dp,
                          std::string* why);
  void CheckFusedSets();
  bool pruning() const { return opt_.prune.kind != prune::PruneSpec::kNone; }

  const VerifyOptions& opt_;
  VerifyReport& rep_;
  Checkpoint dst_;
  std::optional<Checkpoint> src_;
  std::string config_file_;
  std::vector<Group> groups_;
  NameMatcher ignore_;
  // Modules the config selects -> group; DST tensors accounted for by quantization.
  std::map<std::string, const Group*> selected_;
  std::set<std::string> quant_outputs_;
  std::map<std::string, float> global_scales_;  // NVFP4 module -> weight_global_scale
  bool prune_only_ = false;  // --prune and no quantization_config: pruning alone
};

bool Verifier::LoadConfig() {
  const ModelFolder& f = dst_.folder;
  if (!f.config_rel || !f.config) {
    Problem("", "", "config", "no config.json or params.json with a quantization_config");
    return false;
  }
  config_file_ = *f.config_rel;
  const JsonValue* q = f.config->Find("quantization_config");
  if (q == nullptr || !q->is_object()) {
    Problem(config_file_, "", "config", "no \"quantization_config\" object");
    return false;
  }
  if (const JsonValue* m = q->Find("quant_method");
      m == nullptr || !m->is_string() || m->as_string() != "compressed-tensors") {
    Problem(config_file_, "", "config", "quant_method is not \"compressed-tensors\"");
    return false;
  }
  std::string global_format;
  if (const JsonValue* gf = q->Find("format"); gf && gf->is_string()) global_format = gf->as_string();
  std::vector<std::string> ignore;
  if (const JsonValue* ig = q->Find("ignore"); ig && ig->is_array()) {
    for (const JsonValue& e : ig->as_array()) {
      if (e.is_string()) ignore.push_back(e.as_string());
    }
  }
  auto im = NameMatcher::Compile(ignore, "quantization_config.ignore");
  if (!im.ok()) {
    Problem(config_file_, "", "config", im.status().message());
    return false;
  }
  ignore_ = std::move(im).value();
  const JsonValue* cg = q->Find("config_groups");
  if (cg == nullptr || !cg->is_object() || cg->as_object().empty()) {
    Problem(config_file_, "", "config", "quantization_config has no config_groups");
    return false;
  }
  bool ok = true;
  for (const auto& [key, gj] : cg->as_object()) {
    Group g;
    g.key = key;
    auto bad = [&](const std::string& why) {
      Problem(config_file_, "", "config", "config group '" + key + "': " + why);
      ok = false;
    };
    if (!gj.is_object()) {
      bad("not an object");
      continue;
    }
    const JsonValue* w = gj.Find("weights");
    if (w == nullptr || !w->is_object()) {
      bad("no weights arguments");
      continue;
    }
    if (const JsonValue* v = w->Find("num_bits"); v && v->is_int()) g.bits = static_cast<int>(v->as_int());
    if (const JsonValue* v = w->Find("type"); v && v->is_string()) g.type = v->as_string();
    if (const JsonValue* v = w->Find("symmetric"); v && v->is_bool()) g.symmetric = v->as_bool();
    if (const JsonValue* v = w->Find("strategy"); v && v->is_string()) g.strategy = v->as_string();
    if (const JsonValue* v = w->Find("group_size"); v && v->is_int() && v->as_int() > 0) {
      g.group_size = static_cast<uint64_t>(v->as_int());
    }
    if (const JsonValue* v = w->Find("block_structure"); v && v->is_array() && v->as_array().size() == 2) {
      g.bh = v->as_array()[0].is_int() ? static_cast<uint64_t>(v->as_array()[0].as_int()) : 0;
      g.bw = v->as_array()[1].is_int() ? static_cast<uint64_t>(v->as_array()[1].as_int()) : 0;
    }
    if (const JsonValue* v = w->Find("scale_dtype"); v && v->is_string()) {
      g.scale_dtype = TorchDType(v->as_string());
      if (!g.scale_dtype) bad("unknown scale_dtype " + v->as_string());
    }
    if (const JsonValue* v = w->Find("actorder"); v && v->is_string()) g.g_idx = v->as_string() == "group";
    if (const JsonValue* a = gj.Find("input_activations"); a && a->is_object()) {
      const JsonValue* d = a->Find("dynamic");
      g.static_inputs = !(d && d->is_bool() && d->as_bool());
    }
    if (g.strategy.empty()) g.strategy = g.group_size ? "group" : "tensor";
    if (g.strategy == "block" && (g.bh == 0 || g.bw == 0)) bad("strategy block without block_structure");
    if ((g.strategy == "group" || g.strategy == "tensor_group") && g.group_size == 0) {
      bad("strategy " + g.strategy + " without a positive group_size");
    }
    g.format_name = global_format;
    if (const JsonValue* v = gj.Find("format"); v && v->is_string()) g.format_name = v->as_string();
    const std::string& fn = g.format_name;
    const bool is_float = g.type == "float", is_int = g.type == "int";
    if (fn == "float-quantized" || (fn == "naive-quantized" && is_float)) {
      g.format = Format::kFloat;
      if (!is_float || g.bits != 8) bad(fn + " needs float 8-bit weights");
    } else if (fn == "int-quantized" || (fn == "naive-quantized" && is_int)) {
      g.format = Format::kInt;
      if (!is_int || g.bits < 1 || g.bits > 8) bad(fn + " needs int weights of 1-8 bits");
    } else if (fn == "pack-quantized") {
      g.format = Format::kPack;
      if (!is_int || g.bits < 1 || g.bits > 8) bad(fn + " needs int weights of 1-8 bits");
    } else if (fn == "nvfp4-pack-quantized") {
      g.format = Format::kNvfp4;
      if (!is_float || g.bits != 4 || g.group_size != 16) bad(fn + " needs float 4-bit weights, group 16");
    } else if (fn == "mxfp4-pack-quantized") {
      g.format = Format::kMxfp4;
      if (!is_float || g.bits != 4 || g.group_size != 32) bad(fn + " needs float 4-bit weights, group 32");
    } else if (fn == "mxfp8-quantized") {
      g.format = Format::kMxfp8;
      if (!is_float || g.bits != 8 || g.group_size != 32) bad(fn + " needs float 8-bit weights, group 32");
    } else if (fn == "dense") {
      g.format = Format::kDense;
    } else {
      bad("format '" + fn + "' is not one quench verifies");
    }
    std::vector<std::string> targets;
    if (const JsonValue* t = gj.Find("targets"); t && t->is_array()) {
      for (const JsonValue& e : t->as_array()) {
        if (!e.is_string()) continue;
        if (e.as_string() == "Linear") g.all = true;
        targets.push_back(e.as_string());
      }
    }
    if (targets.empty()) g.all = true;
    auto tm = NameMatcher::Compile(targets, "config group '" + key + "' targets");
    if (!tm.ok()) {
      bad(tm.status().message());
      continue;
    }
    g.targets = std::move(tm).value();
    groups_.push_back(std::move(g));
  }
  return ok;
}

const Group* Verifier::GroupFor(std::string_view module) const {
  if (EndsWith(module, "norm")) return nullptr;
  if (ignore_.Matches(module)) return nullptr;
  for (const Group& g : groups_) {
    if (g.all || g.targets.Matches(module)) return &g;
  }
  return nullptr;
}

void Verifier::CheckIndex() {
  const ModelFolder& f = dst_.folder;
  if (!f.index_rel) {
    if (f.shards.size() > 1) {
      Problem("", "", "index", "several shards but no *.safetensors.index.json");
    }
    return;
  }
  auto idx = ReadJsonFile((f.root / *f.index_rel).string());
  if (!idx.ok()) {
    Problem(*f.index_rel, "", "index", idx.status().message());
    return;
  }
  const JsonValue* wm = idx->Find("weight_map");
  uint64_t total = 0;
  for (const Shard& s : f.shards) {
    for (const TensorInfo& t : s.header.tensors) {
      total += t.nbytes();
      if (wm == nullptr || wm->Find(t.name) == nullptr) {
        Problem(*f.index_rel, t.name, "index", "tensor of " + s.rel_name + " is not in weight_map");
      }
    }
  }
  const JsonValue* md = idx->Find("metadata");
  const JsonValue* ts = md ? md->Find("total_size") : nullptr;
  if (ts != nullptr && ts->is_int() && ts->as_uint() != total) {
    Problem(*f.index_rel, "", "index",
            "metadata.total_size is " + std::to_string(ts->as_uint()) + ", the tensors hold " +
                std::to_string(total) + " bytes");
  }
}

void Verifier::CheckModule(const std::string& module, const Group& g) {
  const std::string wname = module + ".weight";
  const bool packed = g.format == Format::kPack || g.format == Format::kNvfp4 ||
                      g.format == Format::kMxfp4;
  const std::string qname = module + (packed ? ".weight_packed" : ".weight");
  const TensorInfo* qt = dst_.Find(qname);
  const TensorInfo* st = src_ ? src_->Find(wname) : nullptr;
  const std::string& file = dst_.FileOf(qname).empty() ? dst_.FileOf(wname) : dst_.FileOf(qname);

  // Stored unquantized although selected: the weight kept its float dtype and nothing else.
  {
    const TensorInfo* w = dst_.Find(wname);
    bool any_quant = packed ? qt != nullptr : false;
    for (std::string_view sfx : kQuantSuffixes) {
      if (dst_.Find(module + "." + std::string(sfx))) any_quant = true;
    }
    if (!any_quant && w != nullptr && IsQuantizableFloat(w->dtype)) {
      Problem(dst_.FileOf(wname), wname, "not-quantized",
              "quantization_config group '" + g.key + "' (" + g.format_name +
                  ") selects this module, but it is stored unquantized (" +
                  std::string(DTypeName(w->dtype)) + ")");
      return;
    }
  }
  ++rep_.modules_quantized;

  // [out, in] from the source, else from the stored tensors.
  uint64_t out = 0, in = 0;
  bool have_shape = false;
  if (st != nullptr && st->shape.size() == 2) {
    out = st->shape[0];
    in = st->shape[1];
    have_shape = true;
  }
  const TensorInfo* wshape = dst_.Find(module + ".weight_shape");
  std::vector<int64_t> ws;
  if (g.format == Format::kPack && wshape && wshape->dtype == DType::kI64 &&
      wshape->shape == std::vector<uint64_t>{2}) {
    const uint8_t* p = dst_.Data(module + ".weight_shape");
    ws = {LoadInt(p, DType::kI64, 0), LoadInt(p, DType::kI64, 1)};
    if (have_shape) {
      if (ws[0] != static_cast<int64_t>(out) || ws[1] != static_cast<int64_t>(in)) {
        Problem(dst_.FileOf(module + ".weight_shape"), module + ".weight_shape", "weight-shape",
                "holds [" + std::to_string(ws[0]) + ", " + std::to_string(ws[1]) +
                    "], the source weight is " + ShapeString({out, in}));
      }
    } else if (ws[0] > 0 && ws[1] > 0) {
      out = static_cast<uint64_t>(ws[0]);
      in = static_cast<uint64_t>(ws[1]);
      have_shape = true;
      if (qt && qt->shape.size() == 2 &&
          (qt->shape[0] != out || qt->shape[1] != CeilDiv(in * static_cast<uint64_t>(g.bits), 32))) {
        Problem(dst_.FileOf(module + ".weight_shape"), module + ".weight_shape", "weight-shape",
                "holds [" + std::to_string(ws[0]) + ", " + std::to_string(ws[1]) +
                    "], which does not fit weight_packed " + ShapeString(qt->shape));
      }
    } else {
      Problem(dst_.FileOf(module + ".weight_shape"), module + ".weight_shape", "weight-shape",
              "holds non-positive dimensions");
    }
  }
  if (!have_shape && qt != nullptr && qt->shape.size() == 2) {
    out = qt->shape[0];
    in = (g.format == Format::kNvfp4 || g.format == Format::kMxfp4) ? qt->shape[1] * 2
                                                                     : qt->shape[1];
    have_shape = g.format != Format::kPack;
  }
  std::vector<Expected> exp;
  if (have_shape) exp = ExpectedTensors(g, out, in, st ? std::optional<DType>(st->dtype) : std::nullopt);
  if (have_shape && g.group_size && in % g.group_size != 0) {
    Problem(file, module, "shape", "input dimension " + std::to_string(in) +
                                       " is not a multiple of the group size " +
                                       std::to_string(g.group_size));
    have_shape = false;
  }

  bool structure_ok = have_shape;
  if (!have_shape && qt == nullptr) {
    Problem(file.empty() ? dst_.FileOf(module + ".weight_scale") : file, qname, "missing",
            "quantization_config group '" + g.key + "' (" + g.format_name +
                ") selects this module; its quantized weight is absent");
    structure_ok = false;
  }
  std::set<std::string> expected_names;
  for (const Expected& e : exp) {
    const std::string name = module + "." + e.suffix;
    expected_names.insert(name);
    quant_outputs_.insert(name);
    const TensorInfo* t = dst_.Find(name);
    if (t == nullptr) {
      Problem(file, name, "missing",
              "required by " + g.format_name + " (group '" + g.key + "'), absent");
      structure_ok = false;
      continue;
    }
    if (std::find(e.dtypes.begin(), e.dtypes.end(), t->dtype) == e.dtypes.end()) {
      std::string want;
      for (DType d : e.dtypes) want += (want.empty() ? "" : " or ") + std::string(DTypeName(d));
      Problem(dst_.FileOf(name), name, "dtype",
              "expected " + want + ", found " + std::string(DTypeName(t->dtype)));
      structure_ok = false;
    }
    if (t->shape != e.shape) {
      Problem(dst_.FileOf(name), name, "shape",
              "expected " + ShapeString(e.shape) + " for a " + ShapeString({out, in}) + " weight, found " +
                  ShapeString(t->shape));
      structure_ok = false;
    }
  }
  // Quantization tensors of M the format does not write.
  for (std::string_view sfx : kQuantSuffixes) {
    const std::string name = module + "." + std::string(sfx);
    if (expected_names.count(name) || dst_.Find(name) == nullptr) continue;
    if (src_ && src_->Find(name)) continue;  // present in the source: a copy, checked there
    const bool optional = (sfx == "weight_g_idx" && g.g_idx) ||
                          (g.static_inputs && (sfx == "input_scale" || sfx == "input_zero_point" ||
                                               sfx == "input_global_scale"));
    quant_outputs_.insert(name);
    if (!optional) {
      Problem(dst_.FileOf(name), name, "extra",
              "not written by " + g.format_name + " for group '" + g.key + "'");
    }
  }
  if (!structure_ok) return;

  ModuleView v;
  v.module = module;
  v.g = &g;
  v.out = out;
  v.in = in;
  std::vector<std::string> names;
  for (const Expected& e : exp) names.push_back(module + "." + e.suffix);
  v.w = dst_.Data(qname);
  const std::string sname = module + ".weight_scale";
  v.scale = dst_.Data(sname);
  v.sdt = dst_.Find(sname)->dtype;
  v.sshape = dst_.Find(sname)->shape;
  if (const TensorInfo* z = dst_.Find(module + ".weight_zero_point"); z && !g.symmetric) {
    v.zp = dst_.Data(module + ".weight_zero_point");
    v.zdt = z->dtype;
  }
  if (g.format == Format::kNvfp4) {
    float gs;
    std::memcpy(&gs, dst_.Data(module + ".weight_global_scale"), 4);
    v.gs = gs;
    global_scales_[module] = gs;
    if (!std::isfinite(gs) || gs <= 0) {
      Problem(dst_.FileOf(module + ".weight_global_scale"), module + ".weight_global_scale",
              "scale", "weight_global_scale is " + Fmt("%g", gs) + " (must be finite and > 0)");
      return;
    }
  }
  switch (g.format) {
    case Format::kFloat:
    case Format::kMxfp8: v.qmin = -448; v.qmax = 448; break;
    case Format::kNvfp4:
    case Format::kMxfp4: v.qmin = -6; v.qmax = 6; break;
    default:
      v.qmin = -std::ldexp(1.0, g.bits - 1);
      v.qmax = std::ldexp(1.0, g.bits - 1) - 1;
  }
  if (st != nullptr) {
    if (!IsQuantizableFloat(st->dtype)) {
      Problem("SRC:" + src_->FileOf(wname), wname, "changed",
              "source weight dtype " + std::string(DTypeName(st->dtype)) + " cannot be compared");
      return;
    }
    v.x = src_->Data(wname);
    v.xdt = st->dtype;
  }
  WalkModule(v, file, names);
  for (const std::string& n : names) dst_.Release(n);
  if (st) src_->Release(wname);
}

void Verifier::WalkModule(ModuleView& v, const std::string& file,
                          const std::vector<std::string>& names) {
  const Group& g = *v.g;
  const std::string sname = v.module + ".weight_scale";
  // Scales: finite and > 0 (E8M0: not the NaN exponent 255).
  {
    const uint64_t n = [&] {
      uint64_t k = 1;
      for (uint64_t d : v.sshape) k *= d;
      return k;
    }();
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
      if (!(std::isfinite(s) && s > 0)) {
        if (bad++ == 0) {
          first = i;
          first_val = s;
        }
      }
    }
    if (bad) {
      Problem(dst_.FileOf(sname), sname, "scale",
              std::to_string(bad) + " scale(s) not finite and positive, first at flat index " +
                  std::to_string(first) + " = " + Fmt("%g", first_val));
      return;
    }
  }
  const double u = g.format == Format::kNvfp4 ? QuotientRounding(DType::kF32)
                                              : QuotientRounding(v.xdt);
  RowBuffers b;
  double sx2 = 0, se2 = 0, worst = 0;
  uint64_t violations = 0, bad_codes = 0, bad_zp = 0;
  std::string worst_text, bad_code_text;
  const uint64_t row_src_bytes = v.x ? v.in * DTypeBits(v.xdt) / 8 : 0;
  const uint64_t rows_per_chunk = std::max<uint64_t>(1, kChunkBytes / std::max<uint64_t>(1, v.in * 4));
  // --prune: against SRC, the source as pruned (a pruned element must dequantize to exactly 0);
  // without SRC, the structure of the dequantized zeros.
  const prune::PruneSpec& ps = opt_.prune;
  std::optional<PrunedRows> pruned;
  const auto release_src = [&](uint64_t bytes) {
    uint64_t off;
    const MappedFile* m;
    src_->Data(v.module + ".weight", &off, &m);
    m->Release(off, bytes);
  };
  if (pruning() && v.x) {
    pruned.emplace(ps, v.x, v.xdt, v.out, v.in);
    if (!pruned->Init(release_src)) {
      Problem("SRC:" + src_->FileOf(v.module + ".weight"), v.module + ".weight", "pruned",
              "the source holds NaN or Inf, so it cannot be pruned to compare");
      return;
    }
  }
  uint64_t pruned_nonzero = 0, sparse_short = 0, zeros_total = 0;
  std::string pruned_text, sparse_text;
  const uint64_t row_prune = ps.kind == prune::PruneSpec::kUnstructured && !ps.per_tensor
                                 ? prune::PruneCount(ps.fraction, v.in) : 0;
  for (uint64_t r = 0; r < v.out; ++r) {
    DecodeRow(v, r, b);
    const uint8_t* xrow = nullptr;
    if (v.x) {
      xrow = pruned ? pruned->Row(r) : v.x + r * row_src_bytes;
      if (xrow == nullptr) {
        Problem("SRC:" + src_->FileOf(v.module + ".weight"), v.module + ".weight", "pruned",
                "the source holds NaN or Inf in row " + std::to_string(r) +
                    ", so it cannot be pruned to compare");
        return;
      }
    }
    if (pruning() && !v.x) {
      // Zeros per N:M group, per row or per tensor: at least what the spec prunes.
      uint64_t row_zeros = 0;
      for (uint64_t c = 0; c < v.in; ++c) row_zeros += !b.bad_code[c] && b.q[c] == b.zp[c];
      zeros_total += row_zeros;
      if (ps.kind == prune::PruneSpec::kNM && v.in % static_cast<uint64_t>(ps.m) == 0) {
        for (uint64_t g0 = 0; g0 < v.in; g0 += static_cast<uint64_t>(ps.m)) {
          int z = 0;
          for (int j = 0; j < ps.m; ++j) z += !b.bad_code[g0 + j] && b.q[g0 + j] == b.zp[g0 + j];
          if (z < ps.m - ps.n && sparse_short++ == 0) {
            sparse_text = "row " + std::to_string(r) + ", columns " + std::to_string(g0) + ".." +
                          std::to_string(g0 + ps.m - 1) + " hold " + std::to_string(z) + " zeros";
          }
        }
      } else if (row_zeros < row_prune && sparse_short++ == 0) {
        sparse_text = "row " + std::to_string(r) + " holds " + std::to_string(row_zeros) +
                      " zeros of " + std::to_string(v.in);
      }
    }
    for (uint64_t c = 0; c < v.in; ++c) {
      if (b.bad_code[c]) {
        if (bad_codes++ == 0) bad_code_text = "[" + std::to_string(r) + ", " + std::to_string(c) + "]";
        continue;
      }
      if (v.zp && (b.zp[c] < v.qmin || b.zp[c] > v.qmax)) ++bad_zp;
      if (v.x == nullptr) continue;
      const double x = LoadFloat(xrow, v.xdt, c);
      const double s = b.s[c], z = b.zp[c];
      const double deq = (b.q[c] - z) * s;
      const double e = x - deq;
      if (pruned && x == 0 && deq != 0 && pruned_nonzero++ == 0) {
        pruned_text = "[" + std::to_string(r) + ", " + std::to_string(c) + "] dequantizes to " +
                      Fmt("%.6g", deq);
      }
      sx2 += x * x;
      se2 += e * e;
      // Hard bound, in the quotient domain of the stored scale.
      const double xs = x / s;
      const double t = xs + z;
      const double tc = std::clamp(t, v.qmin, v.qmax);
      // One grid step (round-to-nearest output stays within half of it, measured <= 0.5 of
      // this bound on every golden; GPTQ-style error feedback stays within it too).
      const double allowed = b.gap[c] + u * (std::fabs(xs) + std::fabs(t)) +
                             1e-9 * (1 + std::fabs(t));
      const double dev = std::fabs(tc - b.q[c]);
      const double ratio = std::isfinite(dev) ? dev / allowed : (std::isnan(t) ? 0 : 1e30);
      if (ratio > 1) ++violations;
      if (ratio > worst) {
        worst = ratio;
        if (ratio > 1) {
          worst_text = "[" + std::to_string(r) + ", " + std::to_string(c) + "]: source " +
                       Fmt("%.6g", x) + ", dequantized " + Fmt("%.6g", deq) + " (" +
                       Fmt("%.3g", dev) + " grid units off, " + Fmt("%.3g", allowed) + " allowed)";
        }
      }
    }
    if ((r + 1) % rows_per_chunk == 0) {
      // Release what has been walked (the whole tensors are released at the end as well).
      if (v.x) release_src((r + 1) * row_src_bytes);
      for (const std::string& n : names) dst_.Release(n);
    }
  }
  const std::string qname = names.front();
  if (bad_codes) {
    Problem(dst_.FileOf(qname), qname, "code",
            std::to_string(bad_codes) + " invalid code(s) (E4M3 NaN or int outside [" +
                Fmt("%g", v.qmin) + ", " + Fmt("%g", v.qmax) + "]), first at " + bad_code_text);
  }
  if (bad_zp) {
    Problem(dst_.FileOf(v.module + ".weight_zero_point"), v.module + ".weight_zero_point", "code",
            std::to_string(bad_zp) + " element(s) with a zero point outside [" + Fmt("%g", v.qmin) +
                ", " + Fmt("%g", v.qmax) + "]");
  }
  if (pruning() && !v.x) {
    if (ps.kind == prune::PruneSpec::kUnstructured && ps.per_tensor) {
      const uint64_t k = prune::PruneCount(ps.fraction, v.out * v.in);
      if (zeros_total < k) {
        sparse_short = 1;
        sparse_text = "the tensor holds " + std::to_string(zeros_total) + " zeros, " +
                      std::to_string(k) + " expected";
      }
    }
    if (sparse_short) {
      Problem(file, qname, "sparsity",
              "dequantized zeros do not have the structure of --prune " + PruneText(ps) + ": " +
                  sparse_text + (sparse_short > 1 ? " (and " + std::to_string(sparse_short - 1) +
                                                        " more)" : ""));
    }
  }
  if (v.x == nullptr) return;
  rep_.bytes_compared += v.out * row_src_bytes;
  if (pruned_nonzero) {
    Problem(file, qname, "pruned",
            std::to_string(pruned_nonzero) + " element(s) zero in the source pruned by " +
                PruneText(ps) + " do not dequantize to exactly 0; first " + pruned_text);
  }
  TensorQuality tq;
  tq.module = v.module;
  tq.file = file;
  tq.group = g.key;
  tq.kind = g.kind();
  tq.elements = v.out * v.in;
  tq.sqnr_db = se2 == 0 ? std::numeric_limits<double>::infinity()
               : sx2 == 0 ? -std::numeric_limits<double>::infinity()
                          : 10 * std::log10(sx2 / se2);
  tq.threshold_db = SqnrThresholdDb(tq.kind, g.per_channel()) + opt_.sqnr_margin_db;
  tq.worst_bound_ratio = worst;
  tq.bound_violations = violations;
  rep_.quality.push_back(tq);
  if (violations) {
    Problem(file, qname, "error-bound",
            std::to_string(violations) + " element(s) farther from the source than " +
                g.format_name + " allows; worst " + worst_text);
  }
  if (tq.sqnr_db < tq.threshold_db) {
    Problem(file, qname, "sqnr",
            "SQNR " + Fmt("%.2f", tq.sqnr_db) + " dB against the source, below the " + tq.kind +
                " threshold of " + Fmt("%.1f", tq.threshold_db) + " dB");
  }
}

void Verifier::CheckSource() {
  // Every source tensor: replaced by its quantized tensors, or copied unchanged.
  for (const Shard& s : src_->folder.shards) {
    for (const TensorInfo& t : s.header.tensors) {
      auto [module, param] = SplitModuleParam(t.name);
      if (param == "weight" && selected_.count(std::string(module))) continue;
      const TensorInfo* d = dst_.Find(t.name);
      if (d == nullptr) {
        Problem("SRC:" + s.rel_name, t.name, "missing", "source tensor absent from DST");
        continue;
      }
      const std::string& f = dst_.FileOf(t.name);
      if (d->dtype != t.dtype || d->shape != t.shape) {
        Problem(f, t.name, "changed",
                "copied tensor is " + std::string(DTypeName(d->dtype)) + " " + ShapeString(d->shape) +
                    ", the source is " + std::string(DTypeName(t.dtype)) + " " + ShapeString(t.shape));
        continue;
      }
      uint64_t so, doff;
      const MappedFile *sm, *dm;
      const uint8_t* sp = src_->Data(t.name, &so, &sm);
      const uint8_t* dp = dst_.Data(t.name, &doff, &dm);
      const uint64_t n = t.nbytes();
      uint64_t diff_at = n;
      for (uint64_t at = 0; at < n; at += kChunkBytes) {
        const uint64_t len = std::min(kChunkBytes, n - at);
        if (std::memcmp(sp + at, dp + at, len) != 0) {
          for (uint64_t i = at; i < at + len; ++i) {
            if (sp[i] != dp[i]) {
              diff_at = i;
              break;
            }
          }
        }
        sm->Release(so + at, len);
        dm->Release(doff + at, len);
        if (diff_at != n) break;
      }
      rep_.bytes_compared += n;
      if (diff_at != n && prune_only_) {
        std::string why;
        if (EqualsPrunedSource(t, sp, dp, &why)) {
          ++rep_.tensors_pruned;
        } else {
          Problem(f, t.name, "changed", why);
        }
        continue;
      }
      if (diff_at != n) {
        Problem(f, t.name, "changed",
                "copied tensor differs from the source, first at byte " + std::to_string(diff_at) +
                    " of " + std::to_string(n));
      } else {
        ++rep_.tensors_copied;
      }
    }
  }
  // Every DST tensor: a source tensor or a quantization output.
  for (const Shard& s : dst_.folder.shards) {
    for (const TensorInfo& t : s.header.tensors) {
      if (quant_outputs_.count(t.name) || src_->Find(t.name)) continue;
      Problem(s.rel_name, t.name, "extra", "not in the source and not written by quantization");
    }
  }
}

// Pruning alone: whether DST's tensor `t` (same dtype and shape as the source) is exactly the
// source pruned by the spec; if not, `why` says where it first differs.
bool Verifier::EqualsPrunedSource(const TensorInfo& t, const uint8_t* sp, const uint8_t* dp,
                                  std::string* why) {
  const std::string spec = PruneText(opt_.prune);
  if (t.shape.size() != 2 || !IsQuantizableFloat(t.dtype)) {
    *why = "copied tensor differs from the source (and is not a 2-D float weight --prune " +
           spec + " could have pruned)";
    return false;
  }
  const uint64_t rows = t.shape[0], cols = t.shape[1];
  const uint64_t row_bytes = cols * DTypeBits(t.dtype) / 8;
  PrunedRows pr(opt_.prune, sp, t.dtype, rows, cols);
  uint64_t so, doff;
  const MappedFile *sm, *dm;
  src_->Data(t.name, &so, &sm);
  dst_.Data(t.name, &doff, &dm);
  if (!pr.Init([&](uint64_t bytes) { sm->Release(so, bytes); })) {
    *why = "differs from the source, which holds NaN or Inf and so cannot be pruned to compare";
    return false;
  }
  const uint64_t rows_per_chunk = std::max<uint64_t>(1, kChunkBytes / std::max<uint64_t>(1, row_bytes));
  for (uint64_t r = 0; r < rows; ++r) {
    const uint8_t* want = pr.Row(r);
    if (want == nullptr || std::memcmp(want, dp + r * row_bytes, row_bytes) != 0) {
      *why = "differs from both the source and the source pruned by --prune " + spec +
             ", first in row " + std::to_string(r);
      return false;
    }
    if ((r + 1) % rows_per_chunk == 0) {
      sm->Release(so, (r + 1) * row_bytes);
      dm->Release(doff, (r + 1) * row_bytes);
    }
  }
  sm->Release(so, rows * row_bytes);
  dm->Release(doff, rows * row_bytes);
  return true;
}

void Verifier::CheckFusedSets() {
  std::map<std::string, std::vector<std::pair<std::string, float>>> sets;
  for (const auto& [module, gs] : global_scales_) {
    if (std::string key = FusedSetKey(module); !key.empty()) sets[key].push_back({module, gs});
  }
  for (const auto& [key, members] : sets) {
    if (members.size() < 2) continue;
    bool same = true;
    for (const auto& m : members) {
      if (F32ToBits(m.second) != F32ToBits(members[0].second)) same = false;
    }
    if (same) continue;
    std::string list;
    for (const auto& m : members) {
      list += (list.empty() ? "" : ", ") + std::string(SplitModuleParam(m.first).second) + " " +
              Fmt("%.9g", m.second);
    }
    const std::string name = members[0].first + ".weight_global_scale";
    Problem(dst_.FileOf(name), name, "fused-global-scale",
            "fused siblings under '" + std::string(SplitModuleParam(members[0].first).first) +
                "' have different weight_global_scale (" + list +
                "); vLLM runs them as one matrix with one global scale");
  }
}

Status Verifier::Run() {
  std::error_code ec;
  if (!fs::is_directory(opt_.dst, ec)) {
    return Error(ErrorCode::kInvalidInput, opt_.dst.string() + ": not a folder");
  }
  rep_.dst = opt_.dst;
  rep_.src = opt_.src;
  if (opt_.src) {
    if (!fs::is_directory(*opt_.src, ec)) {
      return Error(ErrorCode::kInvalidInput, opt_.src->string() + ": not a folder");
    }
    auto sf = LoadModelFolder(*opt_.src);
    if (!sf.ok()) {
      return Error(sf.status().code(), "SRC " + sf.status().message());
    }
    src_.emplace();
    src_->folder = std::move(sf).value();
    // The output names fused 3-D experts per expert, as the converter split them.
    auto split = SplitFusedExperts(src_->folder);
    if (!split.ok()) return Error(split.status().code(), "SRC " + split.status().message());
    QUENCH_RETURN_IF_ERROR(OpenMaps(*src_));
  }
  auto df = LoadModelFolder(opt_.dst);
  if (!df.ok()) {
    if (df.status().code() == ErrorCode::kIo) return df.status();
    Problem("", "", "safetensors", df.status().message());
    return Status::Ok();
  }
  dst_.folder = std::move(df).value();
  QUENCH_RETURN_IF_ERROR(OpenMaps(dst_));
  rep_.shards = dst_.folder.shards.size();
  for (const Shard& s : dst_.folder.shards) rep_.tensors += s.header.tensors.size();
  CheckIndex();
  if (pruning() && dst_.folder.config &&
      dst_.folder.config->Find("quantization_config") == nullptr) {
    // Pruning alone (`--scheme none --prune`): no quantization_config is written, and each
    // tensor is the source's, pruned or not.
    prune_only_ = true;
    if (src_) {
      CheckSource();
    } else {
      Problem(*dst_.folder.config_rel, "", "config",
              "no \"quantization_config\" (pruning alone, --scheme none): give SRC to check "
              "each tensor against the source pruned by --prune");
    }
    return Status::Ok();
  }
  if (!LoadConfig() && groups_.empty()) return Status::Ok();

  // Candidate modules: every 2-D M.weight (source, or DST's M.weight / M.weight_packed).
  std::map<std::string, bool> candidates;  // module -> 2-D
  auto consider = [&](const TensorInfo& t, bool from_src) {
    auto [module, param] = SplitModuleParam(t.name);
    if (param == "weight") {
      auto [it, inserted] = candidates.emplace(std::string(module), t.shape.size() == 2);
      if (from_src) it->second = t.shape.size() == 2;  // the source decides
    } else if (param == "weight_packed" && !from_src) {
      candidates.emplace(std::string(module), true);
    }
  };
  if (src_) {
    for (const Shard& s : src_->folder.shards) {
      for (const TensorInfo& t : s.header.tensors) consider(t, true);
    }
  }
  for (const Shard& s : dst_.folder.shards) {
    for (const TensorInfo& t : s.header.tensors) {
      if (!src_ || !src_->Find(std::string(SplitModuleParam(t.name).first) + ".weight")) consider(t, false);
    }
  }
  for (const auto& [module, two_d] : candidates) {
    if (!two_d) continue;
    const Group* g = GroupFor(module);
    if (g == nullptr || g->format == Format::kDense || g->format == Format::kUnsupported) continue;
    selected_[module] = g;
  }
  for (const auto& [module, g] : selected_) CheckModule(module, *g);

  // Quantization tensors on modules the config does not select.
  std::map<std::string, std::vector<std::string>> unselected;
  for (const Shard& s : dst_.folder.shards) {
    for (const TensorInfo& t : s.header.tensors) {
      auto [module, param] = SplitModuleParam(t.name);
      if (!IsQuantSuffix(param) || quant_outputs_.count(t.name)) continue;
      if (src_ && src_->Find(t.name)) continue;
      if (selected_.count(std::string(module))) continue;
      unselected[std::string(module)].push_back(t.name);
      quant_outputs_.insert(t.name);
      if (const TensorInfo* w = dst_.Find(std::string(module) + ".weight")) {
        if (!IsQuantizableFloat(w->dtype)) quant_outputs_.insert(w->name);
      }
    }
  }
  for (const auto& [module, names] : unselected) {
    std::string why = EndsWith(module, "norm")  ? "its name ends in \"norm\""
                      : ignore_.Matches(module) ? "it matches quantization_config.ignore entry '" +
                                                      ignore_.entries()[ignore_.FirstMatch(module)] + "'"
                                                : "no config group targets it";
    std::string list;
    for (const std::string& n : names) list += (list.empty() ? "" : ", ") + std::string(SplitModuleParam(n).second);
    Problem(dst_.FileOf(names.front()), module, "not-selected",
            "module is quantized (" + list + ") but quantization_config does not select it: " + why);
  }
  CheckFusedSets();
  if (src_) CheckSource();
  return Status::Ok();
}

}  // namespace

std::string VerifyProblem::ToString() const {
  std::string s;
  if (!file.empty()) s += file + ": ";
  if (!tensor.empty()) s += "tensor '" + tensor + "': ";
  s += rule + ": " + message;
  return s;
}

double SqnrThresholdDb(std::string_view kind, bool per_channel) {
  for (const Threshold& t : kThresholds) {
    if (t.kind == kind) return per_channel ? t.channel_db : t.group_db;
  }
  return 0;
}

Result<VerifyReport> Verify(const VerifyOptions& options) {
  VerifyReport report;
  Verifier v(options, report);
  QUENCH_RETURN_IF_ERROR(v.Run());
  return report;
}

JsonValue VerifyReportJson(const VerifyReport& r) {
  auto num = [](double d) -> JsonValue {
    if (std::isinf(d)) return JsonValue(d > 0 ? "inf" : "-inf");
    if (std::isnan(d)) return JsonValue();
    return JsonValue(std::round(d * 1000) / 1000);
  };
  JsonValue root = JsonValue::MakeObject();
  root.Set("ok", JsonValue(r.ok()));
  root.Set("dst", JsonValue(r.dst.string()));
  root.Set("src", r.src ? JsonValue(r.src->string()) : JsonValue());
  JsonValue sum = JsonValue::MakeObject();
  sum.Set("shards", JsonValue(r.shards));
  sum.Set("tensors", JsonValue(r.tensors));
  sum.Set("modules_quantized", JsonValue(r.modules_quantized));
  sum.Set("tensors_copied", JsonValue(r.tensors_copied));
  sum.Set("tensors_pruned", JsonValue(r.tensors_pruned));
  sum.Set("bytes_compared", JsonValue(r.bytes_compared));
  sum.Set("problems", JsonValue(static_cast<uint64_t>(r.problems.size())));
  root.Set("summary", std::move(sum));
  JsonValue probs = JsonValue::MakeArray();
  for (const VerifyProblem& p : r.problems) {
    JsonValue o = JsonValue::MakeObject();
    o.Set("file", JsonValue(p.file));
    o.Set("tensor", JsonValue(p.tensor));
    o.Set("rule", JsonValue(p.rule));
    o.Set("message", JsonValue(p.message));
    probs.Push(std::move(o));
  }
  root.Set("problems", std::move(probs));
  JsonValue ts = JsonValue::MakeArray();
  for (const TensorQuality& q : r.quality) {
    JsonValue o = JsonValue::MakeObject();
    o.Set("module", JsonValue(q.module));
    o.Set("file", JsonValue(q.file));
    o.Set("group", JsonValue(q.group));
    o.Set("kind", JsonValue(q.kind));
    o.Set("elements", JsonValue(q.elements));
    o.Set("sqnr_db", num(q.sqnr_db));
    o.Set("threshold_db", num(q.threshold_db));
    o.Set("worst_bound_ratio", num(q.worst_bound_ratio));
    o.Set("bound_violations", JsonValue(q.bound_violations));
    ts.Push(std::move(o));
  }
  root.Set("tensors", std::move(ts));
  return root;
}

}  // namespace quench
