// Tensor lookup and page release over a checkpoint's mapped shards.
#include "verify/checkpoint.h"

#include <utility>

#include "schemes/stack_transpose.h"

namespace quench::verify {

const TensorInfo* Checkpoint::Find(const std::string& name) const {
  auto it = by_name.find(name);
  return it == by_name.end() ? nullptr : it->second.info;
}

const std::string& Checkpoint::FileOf(const std::string& name) const {
  static const std::string kNone;
  auto it = by_name.find(name);
  return it == by_name.end() ? kNone : folder.shards[it->second.shard].rel_name;
}

const uint8_t* Checkpoint::Data(const std::string& name, uint64_t* file_off,
                                const MappedFile** map) const {
  if (auto o = owned.find(name); o != owned.end()) {
    static const MappedFile kNoMap;
    if (file_off) *file_off = 0;
    if (map) *map = &kNoMap;
    return o->second.data();
  }
  const Loc& l = by_name.at(name);
  if (auto lp = folder.linear_pieces.find(name); lp != folder.linear_pieces.end()) {
    static const MappedFile kNoMap;
    if (file_off) *file_off = 0;
    if (map) *map = &kNoMap;
    const ModelFolder::LinearPiece& p = lp->second;
    std::lock_guard<std::mutex> lock(linear->mu);
    std::vector<uint8_t>& b = linear->bytes[name];
    if (b.empty()) {
      // Row o of the piece is column col0 + o of the expert's [in, cols] block (the
      // definition, one element at a time: verify checks the pipeline's tiled copy).
      const uint64_t rows = l.info->shape[0];
      b.resize(rows * p.in * 2);
      const auto* block = reinterpret_cast<const uint16_t*>(
          maps[p.shard].data() + folder.shards[p.shard].header.data_start + p.block);
      TransposeBf16ColumnsScalar(block, p.in, p.cols, p.col0, 0, rows,
                                 reinterpret_cast<uint16_t*>(b.data()));
    }
    return b.data();
  }
  const uint64_t off = folder.shards[l.shard].header.data_start + l.info->begin;
  if (file_off) *file_off = off;
  if (map) *map = &maps[l.shard];
  return maps[l.shard].data() + off;
}

void Checkpoint::Release(const std::string& name) const {
  uint64_t off;
  const MappedFile* m;
  const TensorInfo* t = Find(name);
  if (t == nullptr) return;
  if (folder.linear_pieces.contains(name)) {
    std::lock_guard<std::mutex> lock(linear->mu);
    linear->bytes.erase(name);
    return;
  }
  Data(name, &off, &m);
  m->Release(off, t->nbytes());
}

Status OpenMaps(Checkpoint& c) {
  for (const Shard& s : c.folder.shards) {
    QUENCH_ASSIGN_OR_RETURN(MappedFile m, MappedFile::Open(s.path));
    c.maps.push_back(std::move(m));
  }
  IndexTensors(c);
  return Status::Ok();
}

void IndexTensors(Checkpoint& c) {
  c.by_name.clear();
  for (size_t i = 0; i < c.folder.shards.size(); ++i) {
    for (const TensorInfo& t : c.folder.shards[i].header.tensors) c.by_name[t.name] = {i, &t};
  }
}

}  // namespace quench::verify
