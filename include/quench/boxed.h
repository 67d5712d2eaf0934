// Boxed<T>: an optional T kept on the heap. Reads like std::optional (bool test, *, ->,
// emplace, reset) and copies its value like one, but takes one pointer in the object that
// holds it: for fields most objects leave empty (the plan's per-tensor entries, of which an
// MoE checkpoint has ~10^5, carry several such descriptions that few tensors use).
#ifndef QUENCH_BOXED_H_
#define QUENCH_BOXED_H_

#include <memory>
#include <optional>
#include <utility>

namespace quench {

template <typename T>
class Boxed {
 public:
  Boxed() = default;
  Boxed(std::nullopt_t) {}  // NOLINT: reads as optional's empty state
  Boxed(T value) : p_(std::make_unique<T>(std::move(value))) {}  // NOLINT: as optional's
  Boxed(std::optional<T> value) {  // NOLINT: as optional's
    if (value) p_ = std::make_unique<T>(std::move(*value));
  }
  Boxed(const Boxed& o) : p_(o.p_ ? std::make_unique<T>(*o.p_) : nullptr) {}
  Boxed(Boxed&&) noexcept = default;
  Boxed& operator=(const Boxed& o) {
    if (this != &o) p_ = o.p_ ? std::make_unique<T>(*o.p_) : nullptr;
    return *this;
  }
  Boxed& operator=(Boxed&&) noexcept = default;

  bool has_value() const { return p_ != nullptr; }
  explicit operator bool() const { return p_ != nullptr; }
  T& operator*() { return *p_; }
  const T& operator*() const { return *p_; }
  T* operator->() { return p_.get(); }
  const T* operator->() const { return p_.get(); }
  // The value, made (default) where there is none yet.
  T& get_or_make() {
    if (!p_) p_ = std::make_unique<T>();
    return *p_;
  }
  // The value, or a default-made T where there is none: for reading fields without a test.
  const T& value_or_default() const {
    static const T kEmpty{};
    return p_ ? *p_ : kEmpty;
  }
  template <typename... Args>
  T& emplace(Args&&... args) {
    p_ = std::make_unique<T>(std::forward<Args>(args)...);
    return *p_;
  }
  void reset() { p_.reset(); }

 private:
  std::unique_ptr<T> p_;
};

}  // namespace quench

#endif  // QUENCH_BOXED_H_
