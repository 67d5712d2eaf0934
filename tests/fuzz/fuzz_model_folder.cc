// The model-folder inventory: the input describes a folder, which is written to a scratch
// folder and loaded with LoadModelFolder, then SplitFusedExperts. Property: never crashes (no
// exception escapes, no sanitizer finding); a refusal always says why.
//
// Input format: fuzz_folder.h (scripts/fuzz makes the seeds from data/malformed_folders).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "format/model_folder.h"
#include "fuzz_folder.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using quench::fuzz::Require;
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const std::filesystem::path root = quench::fuzz::Scratch() / "m";
  if (!quench::fuzz::WriteFolder(root, in)) return 0;
  auto folder = quench::LoadModelFolder(root);
  if (!folder.ok()) {
    Require(!folder.status().message().empty(), "an error without a message");
    return 0;
  }
  auto split = quench::SplitFusedExperts(*folder);
  if (!split.ok()) Require(!split.status().message().empty(), "an error without a message");
  return 0;
}
