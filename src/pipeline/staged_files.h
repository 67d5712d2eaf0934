// The files a conversion writes from the plan's contents (the index, config.json) written
// under their temporary names before the shards stream, their writeback started: publishing
// them after the last shard is then an fsync (of pages already on their way to the disk) and
// a rename each. A 70k-tensor index is 13 MB; written and flushed after the shards, the disk
// time was on the critical path. (No thread of its own: under an address-space limit a
// thread's stack and malloc arena are what the pipeline's buffers need.) Their fsyncs can run
// early (Sync), beside the last shard's commit, leaving the publication their renames.
#ifndef QUENCH_PIPELINE_STAGED_FILES_H_
#define QUENCH_PIPELINE_STAGED_FILES_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "format/file_io.h"
#include "quench/plan.h"
#include "quench/status.h"

namespace quench {

class StagedFiles {
 public:
  // Writes every plan.files entry that has contents (not a copy) under plan.dst, to its
  // temporary name, but plan.files[later] (none by default), which Stage writes once its
  // contents are made. One that cannot be written is left to Publish, which then reports the
  // error. `plan` must outlive this object and its files must not change once staged.
  explicit StagedFiles(const Plan& plan, size_t later = SIZE_MAX);
  StagedFiles(const StagedFiles&) = delete;
  StagedFiles& operator=(const StagedFiles&) = delete;

  // Writes plan.files[i] (the constructor's `later`) to its temporary name now. Not beside
  // any other call.
  void Stage(size_t i);
  // Makes the staged files durable (fsync) without publishing them, so that Publish has
  // only their renames left: for a caller that has the time now (the shards' last commit
  // waiting on the disk). An error is reported by Publish.
  void Sync();
  // Publishes plan.files[i] under plan.dst: the staged file fsynced (unless Sync did it) and
  // renamed, or (a copy, or not staged) written or copied atomically now.
  Status Publish(size_t i);
  // Removes the temporary files not published yet (also on destruction).
  void Abandon() { files_.clear(); }

 private:
  // Stages plan.files[i] unless it is a copy; false where it cannot be written.
  bool Write(size_t i);

  const Plan& plan_;
  std::vector<std::unique_ptr<OutputFile>> files_;  // per plan.files entry; null: not staged
  bool stopped_ = false;  // a file could not be staged: nor are those after it
};

}  // namespace quench

#endif  // QUENCH_PIPELINE_STAGED_FILES_H_
