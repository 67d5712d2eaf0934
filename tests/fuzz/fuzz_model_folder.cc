// The model-folder inventory: the input describes a folder, which is written to a scratch
// folder and loaded with LoadModelFolder, then SplitFusedExperts. Property: never crashes (no
// exception escapes, no sanitizer finding); a refusal always says why.
//
// Input format (scripts/fuzz makes the seeds from data/malformed_folders): entries, each a line
// "@@ NAME" followed by the file's bytes up to the next "\n@@ " or the end; "@@ NAME -> TARGET"
// makes a symbolic link instead. Names are relative paths of at most three components of
// [A-Za-z0-9._-] (no "." or ".."); other entries are dropped, at most 16 are made.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <system_error>

#include "format/model_folder.h"
#include "fuzz_util.h"

namespace fs = std::filesystem;

namespace {

bool SafeName(std::string_view name) {
  if (name.empty() || name.size() > 64 || name.front() == '/' || name.back() == '/') return false;
  int parts = 1;
  size_t start = 0;
  for (size_t i = 0; i <= name.size(); ++i) {
    if (i < name.size() && name[i] != '/') {
      const char c = name[i];
      if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '.' || c == '_' || c == '-')) {
        return false;
      }
      continue;
    }
    const std::string_view part = name.substr(start, i - start);
    if (part.empty() || part == "." || part == "..") return false;
    if (i < name.size() && ++parts > 3) return false;
    start = i + 1;
  }
  return true;
}

const fs::path& Scratch() {
  static const fs::path dir = [] {
    std::string tmpl = (fs::temp_directory_path() / "quench-fuzz-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) std::abort();
    return fs::path(tmpl);
  }();
  // Removed when libFuzzer exits (at the end of -max_total_time); a crash leaves it behind.
  static const bool cleanup = std::atexit([] {
    std::error_code ec;
    fs::remove_all(Scratch(), ec);
  }) == 0;
  (void)cleanup;
  return dir;
}

void MakeEntry(const fs::path& root, std::string_view head, std::string_view body) {
  std::error_code ec;
  const size_t arrow = head.find(" -> ");
  const std::string_view name = head.substr(0, arrow);
  if (!SafeName(name)) return;
  const fs::path p = root / std::string(name);
  fs::create_directories(p.parent_path(), ec);
  if (arrow != std::string_view::npos) {
    // The link's target: a name inside the folder (a loop, a missing file, another link),
    // "." or "..": never outside the scratch folder's parent, so the fuzzer cannot make
    // quench open /proc or /dev files.
    const std::string_view target = head.substr(arrow + 4);
    if (!SafeName(target) && target != "." && target != "..") return;
    fs::create_symlink(std::string(target), p, ec);
    return;
  }
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(body.data(), static_cast<std::streamsize>(body.size()));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using quench::fuzz::Require;
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const fs::path root = Scratch() / "m";
  std::error_code ec;
  fs::remove_all(root, ec);
  fs::create_directories(root, ec);
  if (!in.starts_with("@@ ")) return 0;
  size_t at = 0;
  int made = 0;
  while (at < in.size() && made < 16) {
    const size_t line_end = in.find('\n', at);
    const std::string_view head =
        in.substr(at + 3, (line_end == std::string_view::npos ? in.size() : line_end) - at - 3);
    const size_t body_start = line_end == std::string_view::npos ? in.size() : line_end + 1;
    size_t next = in.find("\n@@ ", body_start == 0 ? 0 : body_start - 1);
    if (next == std::string_view::npos || next < body_start - 1) next = in.size();
    const size_t body_end = std::max(next, body_start);
    MakeEntry(root, head, in.substr(body_start, body_end - body_start));
    ++made;
    at = next == in.size() ? in.size() : next + 1;
  }
  auto folder = quench::LoadModelFolder(root);
  if (!folder.ok()) {
    Require(!folder.status().message().empty(), "an error without a message");
    return 0;
  }
  auto split = quench::SplitFusedExperts(*folder);
  if (!split.ok()) Require(!split.status().message().empty(), "an error without a message");
  return 0;
}
