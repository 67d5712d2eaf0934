// `verify DST SRC` where SRC is an AutoAWQ or ModelOpt NVFP4 checkpoint: the verifier compares
// against BF16 weights, so SRC is first decoded by the conversion pipeline (--scheme BF16) into
// a temporary folder, removed when the returned object goes. What the source's lossless repack
// looks like (format, group, scale dtype, the modules it quantized) comes back with it, so that
// a repacked DST is compared exactly (VerifyOptions::packed_source).
#ifndef QUENCH_CLI_VERIFY_PACKED_SOURCE_H_
#define QUENCH_CLI_VERIFY_PACKED_SOURCE_H_

#include <filesystem>

#include "quench/status.h"
#include "verify/verify.h"

namespace quench {

struct TempDecoded {
  std::filesystem::path dir;  // empty: SRC is not a packed source, verify it as it is
  std::optional<VerifyOptions::PackedSource> packed;  // set with dir
  TempDecoded() = default;
  TempDecoded(TempDecoded&& o) noexcept : dir(std::move(o.dir)), packed(std::move(o.packed)) {
    o.dir.clear();
  }
  TempDecoded& operator=(TempDecoded&& o) noexcept;
  TempDecoded(const TempDecoded&) = delete;
  ~TempDecoded();
};

Result<TempDecoded> DecodePackedSource(const std::filesystem::path& src);

}  // namespace quench

#endif  // QUENCH_CLI_VERIFY_PACKED_SOURCE_H_
