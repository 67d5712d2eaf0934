// A flat open-addressing map from names to 32-bit values, for the per-tensor lookups of a
// checkpoint with 10^5 tensors (which shard holds a name, whether a name repeats). One
// allocation for the whole table instead of one node per entry as std::unordered_map makes;
// the names are views into storage that must outlive the table (the parsed headers).
#ifndef QUENCH_FORMAT_NAME_TABLE_H_
#define QUENCH_FORMAT_NAME_TABLE_H_

#include <bit>
#include <cstdint>
#include <functional>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

namespace quench {

class NameTable {
 public:
  // Sized for `expected` names at most half full, so probes stay short; it grows past that.
  explicit NameTable(size_t expected = 0) { Resize(std::bit_ceil(2 * expected + 16)); }

  // Inserts `name` -> `value` unless `name` is present. Returns the value stored for `name`
  // (the existing one when present) and whether it was inserted.
  std::pair<uint32_t, bool> Insert(std::string_view name, uint32_t value) {
    if (2 * (size_ + 1) > slots_.size()) Resize(2 * slots_.size());
    const uint64_t h = Hash(name);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.data == nullptr) {
        s = {name.data() != nullptr ? name.data() : "", name.size(), h, value};
        ++size_;
        return {value, true};
      }
      if (s.hash == h && Name(s) == name) return {s.value, false};
    }
  }

  std::optional<uint32_t> Find(std::string_view name) const {
    const uint64_t h = Hash(name);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.data == nullptr) return std::nullopt;
      if (s.hash == h && Name(s) == name) return s.value;
    }
  }

  size_t size() const { return size_; }

 private:
  struct Slot {
    const char* data = nullptr;  // nullptr: empty (an empty name points at a static "")
    size_t size = 0;
    uint64_t hash = 0;
    uint32_t value = 0;
  };

  static uint64_t Hash(std::string_view s) { return std::hash<std::string_view>()(s); }
  static std::string_view Name(const Slot& s) { return {s.data, s.size}; }

  void Resize(size_t n) {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(n, Slot{});
    mask_ = n - 1;
    size_ = 0;
    for (const Slot& s : old) {
      if (s.data == nullptr) continue;
      size_t i = s.hash & mask_;
      while (slots_[i].data != nullptr) i = (i + 1) & mask_;
      slots_[i] = s;
      ++size_;
    }
  }

  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

}  // namespace quench

#endif  // QUENCH_FORMAT_NAME_TABLE_H_
