#include "format/pending_runs.h"

#include <cstring>
#include <iterator>

namespace quench {

bool PendingRuns::Add(uint64_t offset, const uint8_t* p, uint64_t len) {
  if (len == 0) return true;
  const uint64_t end = offset + len;
  auto next = runs_.lower_bound(offset);  // first run starting at or after `offset`
  if (next != runs_.end() && next->first < end) return false;
  auto prev = next == runs_.begin() ? runs_.end() : std::prev(next);
  if (prev != runs_.end() && prev->first + prev->second.size() > offset) return false;
  const bool joins_prev = prev != runs_.end() && prev->first + prev->second.size() == offset;
  const bool joins_next = next != runs_.end() && next->first == end;
  std::string* run;
  if (joins_prev) {
    run = &prev->second;
    run->append(reinterpret_cast<const char*>(p), len);
  } else {
    run = &runs_.emplace_hint(next, offset, std::string(reinterpret_cast<const char*>(p), len))
               ->second;
  }
  if (joins_next) {
    run->append(next->second);
    runs_.erase(next);
  }
  bytes_ += len;
  return true;
}

std::pair<uint64_t, uint64_t> PendingRuns::RunAt(uint64_t offset) const {
  auto it = runs_.upper_bound(offset);  // first run starting after `offset`
  if (it == runs_.begin()) return {offset, offset};
  --it;
  const uint64_t end = it->first + it->second.size();
  if (end < offset) return {offset, offset};
  return {it->first, end};
}

AlignedBytes PendingRuns::Take(uint64_t from, uint64_t to) {
  AlignedBytes out;
  if (from >= to) return out;
  auto it = runs_.upper_bound(from);
  if (it == runs_.begin()) return out;
  --it;
  const uint64_t begin = it->first, end = begin + it->second.size();
  if (from < begin || to > end) return out;
  void* mem = nullptr;
  if (posix_memalign(&mem, block_, to - from) != 0) return out;
  out.data.reset(static_cast<uint8_t*>(mem));
  out.offset = from;
  out.len = to - from;
  std::string run = std::move(it->second);
  runs_.erase(it);
  std::memcpy(out.data.get(), run.data() + (from - begin), to - from);
  if (to < end) runs_.emplace(to, run.substr(to - begin));
  if (from > begin) {
    run.resize(from - begin);
    runs_.emplace(begin, std::move(run));
  }
  bytes_ -= to - from;
  return out;
}

std::vector<std::pair<uint64_t, std::string>> PendingRuns::TakeAll() {
  std::vector<std::pair<uint64_t, std::string>> all;
  all.reserve(runs_.size());
  for (auto& [at, run] : runs_) all.emplace_back(at, std::move(run));
  runs_.clear();
  bytes_ = 0;
  return all;
}

std::vector<std::pair<uint64_t, uint64_t>> PendingRuns::Runs() const {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  out.reserve(runs_.size());
  for (const auto& [at, run] : runs_) out.emplace_back(at, at + run.size());
  return out;
}

}  // namespace quench
