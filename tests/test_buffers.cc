// The pipeline's output buffers made ahead while a run is planned (BufferPrefault): the pool
// hands them out before mapping its own, only when they are of its capacity, and a conversion
// that uses them writes the same bytes as one that does not.
#include <doctest/doctest.h>

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "pipeline/buffers.h"
#include "pipeline/pipeline.h"
#include "quench/convert.h"
#include "test_util.h"

namespace qt = quench::testing;
namespace fs = std::filesystem;
using quench::Buffer;
using quench::BufferPool;
using quench::BufferPrefault;
using quench::kHugePage;

namespace {

constexpr uint64_t kMiB = 1ull << 20;

// Every byte of b's first `n` is zero (fresh anonymous pages).
bool ZeroPrefix(const Buffer& b, uint64_t n) {
  for (uint64_t i = 0; i < n; ++i) {
    if (b.data.get()[i] != 0) return false;
  }
  return true;
}

// A BF16 checkpoint of `tensors` down_proj weights of 2048 x 4096 (16 MiB each), values from
// a fixed LCG.
void WriteCheckpoint(const fs::path& dir, int tensors) {
  fs::create_directories(dir);
  std::vector<qt::RawTensor> ts;
  uint32_t state = 99;
  for (int i = 0; i < tensors; ++i) {
    std::string bytes(2048ull * 4096 * 2, '\0');
    for (size_t k = 0; k < bytes.size(); k += 2) {
      state = state * 1664525u + 1013904223u;
      // Magnitudes ~2^-7..2^-5, either sign.
      const uint16_t v = static_cast<uint16_t>(0x3C00 | ((state >> 9) & 0x7F) |
                                               (((state >> 24) & 0x80) << 8));
      bytes[k] = static_cast<char>(v & 0xFF);
      bytes[k + 1] = static_cast<char>(v >> 8);
    }
    ts.push_back({"model.layers." + std::to_string(i) + ".mlp.down_proj.weight",
                  quench::DType::kBF16, {2048, 4096}, std::move(bytes)});
  }
  qt::WriteShard(dir / "model.safetensors", ts);
  qt::WriteBytes(dir / "config.json", "{\"architectures\": [\"Test\"]}");
}

}  // namespace

TEST_SUITE("buffers") {
  TEST_CASE("the pool hands out the buffers made ahead before mapping its own") {
    const uint64_t min_capacity = 3 * kMiB + 5000;
    const uint64_t capacity = BufferPool::CapacityFor(min_capacity);
    const uint64_t touch = kHugePage + 4096;  // a huge page and a page of the next
    BufferPrefault prefault(3, capacity, touch);
    prefault.Wait();
    BufferPool pool(min_capacity);
    pool.SetPrefault(&prefault);
    std::vector<Buffer> got;
    std::set<const uint8_t*> seen;
    for (int i = 0; i < 3; ++i) {
      got.push_back(pool.Get(4096));
      const Buffer& b = got.back();
      CHECK(b.capacity == capacity);
      // Made ahead: touched as far as the prefault went; a buffer mapped by the pool for
      // this chunk would have touched only the chunk's 4096 bytes.
      CHECK(b.touched == touch);
      CHECK(ZeroPrefix(b, touch));
      CHECK(reinterpret_cast<uintptr_t>(b.data.get()) % kHugePage == 0);
      CHECK(seen.insert(b.data.get()).second);
    }
    // The three are out: the next is the pool's own.
    got.push_back(pool.Get(4096));
    CHECK(got.back().touched == 4096);
    CHECK(prefault.Take().empty());  // taken once
    for (Buffer& b : got) pool.Put(std::move(b));
  }

  TEST_CASE("buffers of another capacity are not taken") {
    const uint64_t min_capacity = 3 * kMiB;
    BufferPrefault prefault(2, BufferPool::CapacityFor(min_capacity + 64 * 1024), kHugePage);
    prefault.Wait();
    BufferPool pool(min_capacity);
    pool.SetPrefault(&prefault);
    Buffer b = pool.Get(8192);
    CHECK(b.capacity == BufferPool::CapacityFor(min_capacity));
    CHECK(b.touched == 8192);
    pool.Put(std::move(b));
  }

  TEST_CASE("a prefault stopped early hands over only what it finished") {
    // Far more than it can make before Take: Take returns at once, with whole buffers only.
    BufferPrefault prefault(1000, BufferPool::CapacityFor(4 * kMiB), 4 * kMiB);
    const std::vector<Buffer> taken = prefault.Take();
    CHECK(taken.size() < 1000);
    for (const Buffer& b : taken) CHECK(b.touched == 4 * kMiB);
    prefault.Wait();  // the thread stops at its next page
    CHECK(prefault.Take().empty());
  }

  TEST_CASE("StartPrefault: only for a preset, budget-sized chunks and a source of chunks") {
    const qt::TempDir tmp;
    WriteCheckpoint(tmp.path() / "src", 3);
    quench::ConvertOptions o;
    o.src = tmp.path() / "src";
    o.scheme = "W4A16";
    o.threads = 2;
    o.memory_limit = quench::kDefaultMemoryLimit;
    CHECK(quench::StartPrefault(o) != nullptr);
    quench::ConvertOptions small = o;
    small.memory_limit = 64 * kMiB;  // a sixteenth is 4 MiB: not one 16 MiB chunk's pages
    CHECK(quench::StartPrefault(small) == nullptr);
    quench::ConvertOptions chunked = o;
    chunked.chunk_bytes = 16 * kMiB;
    CHECK(quench::StartPrefault(chunked) == nullptr);
    quench::ConvertOptions recipe = o;
    recipe.scheme.clear();
    recipe.recipe = tmp.path() / "recipe.yaml";
    CHECK(quench::StartPrefault(recipe) == nullptr);
    quench::ConvertOptions tiny = o;
    tiny.src = qt::DataDir() / "tiny-llama";  // under two chunks of input
    CHECK(quench::StartPrefault(tiny) == nullptr);
  }

  TEST_CASE("a conversion with buffers made ahead writes what one without them writes") {
    const qt::TempDir tmp;
    WriteCheckpoint(tmp.path() / "src", 3);  // 48 MiB: three 16 MiB chunks, three buffers
    for (const char* scheme : {"W4A16", "FP8_DYNAMIC", "NVFP4A16"}) {
      for (bool direct : {true, false}) {
        CAPTURE(scheme);
        CAPTURE(direct);
        quench::ConvertOptions o;
        o.src = tmp.path() / "src";
        o.scheme = scheme;
        o.threads = 2;
        o.direct_io = direct;
        o.overwrite = true;
        o.dst = tmp.path() / "ahead";
        quench::ConvertOptions budgeted = o;  // as Convert chooses the default budget
        budgeted.memory_limit = quench::kDefaultMemoryLimit;
        REQUIRE(quench::StartPrefault(budgeted) != nullptr);
        REQUIRE(quench::Convert(o).ok());
        // The same chunks (16 MiB, as the default budget sizes them) with nothing made ahead.
        o.dst = tmp.path() / "own";
        o.chunk_bytes = 16 * kMiB;
        REQUIRE(quench::Convert(o).ok());
        CHECK(qt::CheckSameFiles(tmp.path() / "own", tmp.path() / "ahead") >= 2);
        fs::remove_all(tmp.path() / "ahead");
        fs::remove_all(tmp.path() / "own");
      }
    }
  }
}
