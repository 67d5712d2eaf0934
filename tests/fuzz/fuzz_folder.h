// Folders described by a fuzz input, shared by the targets that read a folder
// (fuzz_model_folder, fuzz_stats): entries, each a line "@@ NAME" followed by the file's bytes
// up to the next "\n@@ " or the end; "@@ NAME -> TARGET" makes a symbolic link instead. Names
// are relative paths of at most three components of [A-Za-z0-9._-] (no "." or ".."); other
// entries are dropped, at most 16 are made.
#ifndef QUENCH_TESTS_FUZZ_FUZZ_FOLDER_H_
#define QUENCH_TESTS_FUZZ_FUZZ_FOLDER_H_

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <system_error>

namespace quench::fuzz {

inline bool SafeName(std::string_view name) {
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

// The process's scratch folder, removed when libFuzzer exits (at the end of
// -max_total_time); a crash leaves it behind.
inline const std::filesystem::path& Scratch() {
  static const std::filesystem::path dir = [] {
    std::string tmpl = (std::filesystem::temp_directory_path() / "quench-fuzz-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) std::abort();
    return std::filesystem::path(tmpl);
  }();
  static const bool cleanup = std::atexit([] {
    std::error_code ec;
    std::filesystem::remove_all(Scratch(), ec);
  }) == 0;
  (void)cleanup;
  return dir;
}

inline void MakeEntry(const std::filesystem::path& root, std::string_view head,
                      std::string_view body) {
  std::error_code ec;
  const size_t arrow = head.find(" -> ");
  const std::string_view name = head.substr(0, arrow);
  if (!SafeName(name)) return;
  const std::filesystem::path p = root / std::string(name);
  std::filesystem::create_directories(p.parent_path(), ec);
  if (arrow != std::string_view::npos) {
    // The link's target: a name inside the folder (a loop, a missing file, another link),
    // "." or "..": never outside the scratch folder's parent, so the fuzzer cannot make
    // quench open /proc or /dev files.
    const std::string_view target = head.substr(arrow + 4);
    if (!SafeName(target) && target != "." && target != "..") return;
    std::filesystem::create_symlink(std::string(target), p, ec);
    return;
  }
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(body.data(), static_cast<std::streamsize>(body.size()));
}

// Makes the folder `root` (emptied first) from `in`; false when `in` is not a folder
// description (it does not start with "@@ ").
inline bool WriteFolder(const std::filesystem::path& root, std::string_view in) {
  std::error_code ec;
  std::filesystem::remove_all(root, ec);
  std::filesystem::create_directories(root, ec);
  if (!in.starts_with("@@ ")) return false;
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
  return true;
}

}  // namespace quench::fuzz

#endif  // QUENCH_TESTS_FUZZ_FUZZ_FOLDER_H_
