// The plan's per-tensor entry stays small (an MoE checkpoint has ~10^5 of them), its rarely
// used parts boxed (quench/boxed.h) with optional's value semantics, and what a conversion
// releases in the background (ReleaseInBackground) is destroyed, on another thread.
#include <doctest/doctest.h>

#include <chrono>
#include <future>
#include <string>
#include <thread>

#include "format/parallel.h"
#include "quench/boxed.h"
#include "quench/plan.h"

using quench::Boxed;

TEST_CASE("a plan entry fits in 256 bytes") {
  // 70,702 entries of a Kimi-K2-shaped checkpoint: 17 MB of fresh pages, where the 632-byte
  // entry (its quantized-source, pruning and calibration fields inline) was 44 MB.
  CHECK(sizeof(quench::PlannedTensor) <= 256);
}

TEST_CASE("Boxed reads and copies like an optional") {
  Boxed<std::string> a;
  CHECK_FALSE(a);
  CHECK_FALSE(a.has_value());
  CHECK(a.value_or_default().empty());  // nothing made by reading
  CHECK_FALSE(a);

  a = std::string("scale");
  REQUIRE(a);
  CHECK(*a == "scale");
  CHECK(a->size() == 5);

  Boxed<std::string> b = a;  // a copy owns its own value
  b->append("_inv");
  CHECK(*a == "scale");
  CHECK(*b == "scale_inv");
  b = a;
  CHECK(*b == "scale");

  Boxed<std::string> c = std::move(b);
  CHECK(*c == "scale");

  Boxed<std::string> d = std::optional<std::string>();
  CHECK_FALSE(d);
  d = std::optional<std::string>("x");
  CHECK(*d == "x");
  d.reset();
  CHECK_FALSE(d);
  d = std::nullopt;
  CHECK_FALSE(d);

  std::string& made = d.get_or_make();  // made once, then the same value
  made = "site";
  CHECK(&d.get_or_make() == &made);
  CHECK(d.value_or_default() == "site");
  CHECK(d.emplace(3, 'z') == "zzz");
}

TEST_CASE("a plan entry's boxed parts copy with it") {
  quench::PlannedTensor t;
  t.name = "model.layers.0.mlp.experts.0.gate_proj.weight";
  t.source_scale.emplace().name = "model.layers.0.mlp.experts.0.gate_proj.weight_scale_inv";
  t.calib.get_or_make().site = "model.layers.0.mlp";
  quench::PlannedTensor u = t;
  u.source_scale->name = "other";
  u.calib->site.clear();
  CHECK(t.source_scale->name == "model.layers.0.mlp.experts.0.gate_proj.weight_scale_inv");
  CHECK(t.calib->site == "model.layers.0.mlp");
  CHECK_FALSE(t.prune_threshold);
  CHECK_FALSE(u.prune_threshold);
}

namespace {

// Says on which thread it was destroyed.
struct Witness {
  std::promise<std::thread::id>* destroyed = nullptr;
  Witness() = default;
  explicit Witness(std::promise<std::thread::id>* p) : destroyed(p) {}
  Witness(Witness&& o) noexcept : destroyed(o.destroyed) { o.destroyed = nullptr; }
  ~Witness() {
    if (destroyed != nullptr) destroyed->set_value(std::this_thread::get_id());
  }
};

}  // namespace

TEST_CASE("ReleaseInBackground destroys the value on another thread") {
  std::promise<std::thread::id> destroyed;
  std::future<std::thread::id> when = destroyed.get_future();
  quench::ReleaseInBackground(Witness(&destroyed));
  REQUIRE(when.wait_for(std::chrono::seconds(30)) == std::future_status::ready);
  CHECK(when.get() != std::this_thread::get_id());
}
