// A checkpoint folder opened for verify: its inventory, every shard memory-mapped (address
// space only; pages are released after use) and every tensor found by name.
#ifndef QUENCH_VERIFY_CHECKPOINT_H_
#define QUENCH_VERIFY_CHECKPOINT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "format/file_io.h"
#include "format/model_folder.h"
#include "quench/status.h"

namespace quench::verify {

// Bytes of a tensor walked between page releases, which bounds verify's resident memory.
inline constexpr uint64_t kChunkBytes = 32ull << 20;

struct Checkpoint {
  struct Loc {
    size_t shard;
    const TensorInfo* info;
  };
  ModelFolder folder;
  std::vector<MappedFile> maps;
  std::unordered_map<std::string, Loc> by_name;
  // Tensors assembled in memory rather than mapped: a source tensor expert pruning gathers
  // from several ranges (a router sliced to the kept experts). Data() returns these, with an
  // empty mapping whose Release does nothing.
  std::unordered_map<std::string, std::vector<uint8_t>> owned;
  // Pieces of linearized Llama 4 stacks (format/model_folder.h `linear_pieces`): their bytes
  // are columns of an expert's block, so Data() assembles each on first use and Release()
  // frees it. Shared by the verify threads, each of which asks for its own module's pieces.
  struct LinearCache {
    std::mutex mu;
    std::unordered_map<std::string, std::vector<uint8_t>> bytes;
  };
  std::unique_ptr<LinearCache> linear = std::make_unique<LinearCache>();

  // nullptr when the checkpoint has no tensor of that name.
  const TensorInfo* Find(const std::string& name) const;
  // The shard (relative name) holding the tensor; "" when there is none.
  const std::string& FileOf(const std::string& name) const;
  // The tensor's bytes in the mapping; its absolute file offset and mapping when asked for.
  // The tensor must exist.
  const uint8_t* Data(const std::string& name, uint64_t* file_off = nullptr,
                      const MappedFile** map = nullptr) const;
  // Releases the pages of the whole tensor (nothing when there is no such tensor); frees an
  // assembled linearized piece.
  void Release(const std::string& name) const;
};

// Maps every shard of c.folder and indexes its tensors by name.
Status OpenMaps(Checkpoint& c);
// Indexes c.folder's tensors by name again (after its headers were rewritten).
void IndexTensors(Checkpoint& c);

}  // namespace quench::verify

#endif  // QUENCH_VERIFY_CHECKPOINT_H_
