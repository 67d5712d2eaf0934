#include "pipeline/staged_files.h"

#include <system_error>

namespace quench {
namespace fs = std::filesystem;

StagedFiles::StagedFiles(const Plan& plan, size_t later) : plan_(plan) {
  files_.resize(plan.files.size());
  for (size_t i = 0; i < plan.files.size(); ++i) {
    if (i != later && !Write(i)) {
      stopped_ = true;  // this file and the rest are left to Publish, as before `later` was
      return;
    }
  }
}

void StagedFiles::Stage(size_t i) {
  if (!stopped_ && i < files_.size() && files_[i] == nullptr) (void)Write(i);
}

bool StagedFiles::Write(size_t i) {
  const PlannedFile& f = plan_.files[i];
  if (!f.copy_from.empty()) return true;
  const fs::path to = plan_.dst / f.rel_name;
  std::error_code ec;
  fs::create_directories(to.parent_path(), ec);
  Result<std::unique_ptr<OutputFile>> out = OutputFile::Create(to, f.contents.size());
  if (!out.ok() || !(*out)->WriteAt(0, f.contents.data(), f.contents.size()).ok()) return false;
  files_[i] = std::move(*out);
  return true;
}

void StagedFiles::Sync() {
  for (std::unique_ptr<OutputFile>& f : files_) {
    if (f != nullptr) (void)f->Sync();  // kept by the file; Publish returns it
  }
}

Status StagedFiles::Publish(size_t i) {
  const PlannedFile& f = plan_.files[i];
  if (i < files_.size() && files_[i] != nullptr) {
    Status s = files_[i]->Commit();
    files_[i].reset();
    return s;
  }
  const fs::path to = plan_.dst / f.rel_name;
  QUENCH_RETURN_IF_ERROR(MakeFolders(to.parent_path()));
  return f.copy_from.empty() ? WriteFileAtomic(to, f.contents) : CopyFileAtomic(f.copy_from, to);
}

}  // namespace quench
