#include "cli/hub_cache.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string_view>
#include <system_error>
#include <vector>

namespace quench::cli {
namespace {

namespace fs = std::filesystem;

// ORG/NAME as huggingface_hub's validate_repo_id accepts a namespaced ID: letters, digits,
// '-', '_', '.' on each side of one '/', neither part starting or ending with '-' or '.',
// no "--" or "..", at most 96 characters.
bool LooksLikeModelId(std::string_view s) {
  const size_t slash = s.find('/');
  if (s.empty() || s.size() > 96 || slash == std::string_view::npos ||
      s.find('/', slash + 1) != std::string_view::npos || s.find("--") != std::string_view::npos ||
      s.find("..") != std::string_view::npos) {
    return false;
  }
  for (std::string_view part : {s.substr(0, slash), s.substr(slash + 1)}) {
    if (part.empty() || part.front() == '-' || part.front() == '.' || part.back() == '-' ||
        part.back() == '.') {
      return false;
    }
    for (char c : part) {
      const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '-' || c == '_' || c == '.';
      if (!ok) return false;
    }
  }
  return true;
}

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : "";
}

fs::path HubCacheDir() {
  if (std::string v = Env("HF_HUB_CACHE"); !v.empty()) return v;
  if (std::string v = Env("HUGGINGFACE_HUB_CACHE"); !v.empty()) return v;  // the older name
  if (std::string v = Env("HF_HOME"); !v.empty()) return fs::path(v) / "hub";
  if (std::string v = Env("XDG_CACHE_HOME"); !v.empty()) return fs::path(v) / "huggingface/hub";
  return fs::path(Env("HOME")) / ".cache/huggingface/hub";
}

}  // namespace

HubSource ResolveHubSource(const std::string& arg) {
  HubSource r{arg, "", ""};
  std::error_code ec;
  if (fs::exists(arg, ec) || ec || !LooksLikeModelId(arg)) return r;
  const fs::path cache = HubCacheDir();
  const size_t slash = arg.find('/');
  // huggingface_hub's repo_folder_name: "models--ORG--NAME".
  const fs::path repo =
      cache / ("models--" + arg.substr(0, slash) + "--" + arg.substr(slash + 1));
  const std::string download = "quench reads local files only: download it first (`hf download " +
                               arg + "`), then pass the ID again or the folder";
  if (!fs::is_directory(repo / "snapshots", ec)) {
    r.hint = "as a Hugging Face model ID it is not in the cache " + cache.string() + "; " +
             download;
    return r;
  }
  std::string revision;
  if (std::ifstream ref(repo / "refs/main"); ref) std::getline(ref, revision);
  while (!revision.empty() && (revision.back() == ' ' || revision.back() == '\r')) {
    revision.pop_back();
  }
  fs::path snapshot;
  std::string how;
  if (!revision.empty() && fs::is_directory(repo / "snapshots" / revision, ec)) {
    snapshot = repo / "snapshots" / revision;
    how = "refs/main";
  } else {
    std::vector<fs::path> snapshots;
    for (const auto& e : fs::directory_iterator(repo / "snapshots", ec)) {
      if (e.is_directory(ec)) snapshots.push_back(e.path());
    }
    if (snapshots.size() != 1) {
      r.hint = "as a Hugging Face model ID its cache folder " + repo.string() + " has " +
               std::to_string(snapshots.size()) + " snapshots and no refs/main naming one; " +
               "pass the snapshot's folder";
      return r;
    }
    snapshot = snapshots.front();
    how = "its only snapshot";
  }
  r.path = snapshot.string();
  r.note = arg + ": the Hugging Face cache's snapshot " + r.path + " (" + how + ")";
  return r;
}

}  // namespace quench::cli
