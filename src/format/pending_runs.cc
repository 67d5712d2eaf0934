#include "format/pending_runs.h"

#include <algorithm>
#include <cstring>
#include <iterator>

namespace quench {

bool PendingRuns::Add(uint64_t offset, const uint8_t* p, uint64_t len) {
  if (len == 0) return true;
  const uint64_t end = offset + len;
  auto next = runs_.lower_bound(offset);  // first run starting at or after `offset`
  if (next != runs_.end() && next->first < end) return false;
  auto prev = next == runs_.begin() ? runs_.end() : std::prev(next);
  if (prev != runs_.end() && prev->second.end > offset) return false;
  HeldPiece piece{offset, std::string(reinterpret_cast<const char*>(p), len)};
  Run* run;
  if (prev != runs_.end() && prev->second.end == offset) {
    run = &prev->second;
    run->pieces.push_back(std::move(piece));
  } else {
    run = &runs_.emplace_hint(next, offset, Run{})->second;
    run->pieces.push_back(std::move(piece));
  }
  run->end = end;
  if (next != runs_.end() && next->first == end) {
    for (HeldPiece& q : next->second.pieces) run->pieces.push_back(std::move(q));
    run->end = next->second.end;
    runs_.erase(next);
  }
  bytes_ += len;
  return true;
}

std::pair<uint64_t, uint64_t> PendingRuns::RunAt(uint64_t offset) const {
  auto it = runs_.upper_bound(offset);  // first run starting after `offset`
  if (it == runs_.begin()) return {offset, offset};
  --it;
  if (it->second.end < offset) return {offset, offset};
  return {it->first, it->second.end};
}

std::vector<HeldPiece> PendingRuns::Take(uint64_t from, uint64_t to) {
  std::vector<HeldPiece> taken;
  if (from >= to) return taken;
  auto it = runs_.upper_bound(from);
  if (it == runs_.begin()) return taken;
  --it;
  if (from < it->first || to > it->second.end) return taken;
  const uint64_t begin = it->first, end = it->second.end;
  std::vector<HeldPiece> pieces = std::move(it->second.pieces);
  runs_.erase(it);
  Run before, after;
  for (HeldPiece& q : pieces) {
    const uint64_t q_end = q.at + q.bytes.size();
    if (q_end <= from) {
      before.pieces.push_back(std::move(q));
    } else if (q.at >= to) {
      after.pieces.push_back(std::move(q));
    } else if (q.at >= from && q_end <= to) {
      taken.push_back(std::move(q));
    } else {  // straddles `from` or `to` (or both): its parts go their three ways
      const uint64_t a = std::max(q.at, from), b = std::min(q_end, to);
      if (q.at < a) before.pieces.push_back({q.at, q.bytes.substr(0, a - q.at)});
      taken.push_back({a, q.bytes.substr(a - q.at, b - a)});
      if (b < q_end) after.pieces.push_back({b, q.bytes.substr(b - q.at)});
    }
  }
  if (!before.pieces.empty()) {
    before.end = from;
    runs_.emplace(begin, std::move(before));
  }
  if (!after.pieces.empty()) {
    after.end = end;
    runs_.emplace(to, std::move(after));
  }
  bytes_ -= to - from;
  return taken;
}

std::vector<HeldPiece> PendingRuns::TakeAll() {
  std::vector<HeldPiece> all;
  for (auto& [at, run] : runs_) {
    for (HeldPiece& q : run.pieces) all.push_back(std::move(q));
  }
  runs_.clear();
  bytes_ = 0;
  return all;
}

std::vector<std::pair<uint64_t, uint64_t>> PendingRuns::Runs() const {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  out.reserve(runs_.size());
  for (const auto& [at, run] : runs_) out.emplace_back(at, run.end);
  return out;
}

void CopyPieces(const std::vector<HeldPiece>& pieces, uint8_t* dst) {
  for (const HeldPiece& q : pieces) {
    std::memcpy(dst, q.bytes.data(), q.bytes.size());
    dst += q.bytes.size();
  }
}

}  // namespace quench
