// `verify DST SRC` where SRC is an AutoAWQ or ModelOpt NVFP4 checkpoint: the verifier compares
// against BF16 weights, so SRC is first decoded by the conversion pipeline (--scheme BF16) into
// a temporary folder, removed when the returned object goes.
#ifndef QUENCH_CLI_VERIFY_PACKED_SOURCE_H_
#define QUENCH_CLI_VERIFY_PACKED_SOURCE_H_

#include <filesystem>

#include "quench/status.h"

namespace quench {

struct TempDecoded {
  std::filesystem::path dir;  // empty: SRC is not a packed source, verify it as it is
  TempDecoded() = default;
  TempDecoded(TempDecoded&& o) noexcept : dir(std::move(o.dir)) { o.dir.clear(); }
  TempDecoded& operator=(TempDecoded&& o) noexcept;
  TempDecoded(const TempDecoded&) = delete;
  ~TempDecoded();
};

Result<TempDecoded> DecodePackedSource(const std::filesystem::path& src);

}  // namespace quench

#endif  // QUENCH_CLI_VERIFY_PACKED_SOURCE_H_
