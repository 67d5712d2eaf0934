#include "cli/verify_packed_source.h"

#include <unistd.h>

#include <string>

#include "format/model_folder.h"
#include "format/source_quant.h"
#include "plan/matcher.h"
#include "quench/convert.h"

namespace quench {

TempDecoded& TempDecoded::operator=(TempDecoded&& o) noexcept {
  if (this != &o) {
    std::error_code ec;
    if (!dir.empty()) std::filesystem::remove_all(dir.parent_path(), ec);
    dir = std::move(o.dir);
    packed = std::move(o.packed);
    o.dir.clear();
  }
  return *this;
}

TempDecoded::~TempDecoded() {
  std::error_code ec;
  if (!dir.empty()) std::filesystem::remove_all(dir.parent_path(), ec);
}

Result<TempDecoded> DecodePackedSource(const std::filesystem::path& src) {
  TempDecoded out;
  // A malformed SRC is Verify's to report; one that cannot be read fails here, since Verify's
  // own read of it, succeeding, would compare the packed source undecoded.
  auto folder = LoadModelFolder(src);
  if (!folder.ok() && folder.status().code() == ErrorCode::kIo) return folder.status();
  if (!folder.ok()) return out;
  auto q = DetectSourceQuantization(*folder);
  if (!q.ok() && q.status().code() == ErrorCode::kIo) return q.status();
  if (!q.ok() || q->packed.empty()) return out;
  std::error_code ec;
  const std::filesystem::path base =
      std::filesystem::temp_directory_path(ec) /
      ("quench-verify-src-" + std::to_string(::getpid()));
  std::filesystem::create_directories(base, ec);
  if (ec) return Error(ErrorCode::kIo, base.string() + ": " + ec.message());
  ConvertOptions o;
  o.src = src;
  o.dst = base / "decoded";
  o.scheme = "BF16";
  auto r = Convert(o);
  if (!r.ok()) {
    std::filesystem::remove_all(base, ec);
    return Error(r.status().code(),
                 "SRC " + src.string() + " (" + q->description + "): decoding it to compare "
                 "against failed: " + r.status().message());
  }
  // The converters copy hf_quant_config.json; the decoded folder is no ModelOpt checkpoint.
  std::filesystem::remove(o.dst / "hf_quant_config.json", ec);
  out.dir = o.dst;
  // gpt-oss MXFP4 has no lossless repack: a DST is compared with the decoded stacks alone.
  if (q->format == SourceFormat::kMxfp4) return out;
  VerifyOptions::PackedSource ps;
  if (q->format == SourceFormat::kAwq) {
    // AutoAWQ models are F16 and so are their scales, which the repack keeps.
    ps.format = "pack-quantized";
    ps.symmetric = q->own_scheme == "W4A16";
    ps.weight_dtype = DType::kF16;
  } else {
    ps.format = "nvfp4-pack-quantized";
  }
  ps.bits = 4;
  ps.group_size = q->group_size;
  // The Linear layers: the packed ones and the ones the source's config left unquantized
  // (modules_to_not_convert, exclude_modules, lm_head: the converters' ignore list).
  for (const auto& [weight, p] : q->packed) {
    const std::string module = weight.substr(0, weight.size() - 7);  // less ".weight"
    ps.modules.insert(module);
    ps.decoded.insert(weight);
    // As the repack writes it (compressed-tensors' ModelOptNvfp4Converter: 1 / x in f32).
    if (q->format != SourceFormat::kAwq) ps.global_scales[module] = 1.0f / p.weight_scale_2;
  }
  auto skipped = NameMatcher::Compile(q->repack_ignore, "the source's unquantized modules");
  if (!skipped.ok()) return skipped.status();
  for (const Shard& s : folder->shards) {
    for (const TensorInfo& t : s.header.tensors) {
      if (t.shape.size() != 2 || !t.name.ends_with(".weight")) continue;
      const std::string module = t.name.substr(0, t.name.size() - 7);
      if (skipped->Matches(module)) ps.modules.insert(module);
    }
  }
  out.packed = std::move(ps);
  return out;
}

}  // namespace quench
