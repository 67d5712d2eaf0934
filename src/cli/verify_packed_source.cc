#include "cli/verify_packed_source.h"

#include <unistd.h>

#include <string>

#include "format/model_folder.h"
#include "format/source_quant.h"
#include "quench/convert.h"

namespace quench {

TempDecoded& TempDecoded::operator=(TempDecoded&& o) noexcept {
  if (this != &o) {
    std::error_code ec;
    if (!dir.empty()) std::filesystem::remove_all(dir.parent_path(), ec);
    dir = std::move(o.dir);
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
  auto folder = LoadModelFolder(src);
  if (!folder.ok()) return out;  // Verify reports it
  auto q = DetectSourceQuantization(*folder);
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
  return out;
}

}  // namespace quench
