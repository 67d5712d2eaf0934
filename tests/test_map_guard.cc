// A mapped source file that shrinks while it is read: the SIGBUS the kernel raises on the
// pages past its new end becomes an I/O error naming the file, on any thread, and the
// process goes on.
#include <doctest/doctest.h>

#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>

#include "format/file_io.h"
#include "format/map_guard.h"
#include "pipeline/pipeline.h"
#include "quench/convert.h"
#include "test_util.h"

namespace quench::testing {

TEST_SUITE("map_guard") {
  TEST_CASE("reading past a truncated file's end is an I/O error, not a crash") {
    TempDir dir;
    const fs::path file = dir / "shard.safetensors";
    WriteBytes(file, std::string(1 << 20, 'x'));
    auto map = MappedFile::Open(file);
    REQUIRE(map.ok());
    uint64_t sum = 0;
    // Before the truncation every page reads.
    Status before = GuardMappedReads(file.string(), [&]() {
      for (uint64_t i = 0; i < map->size(); i += 4096) sum += map->data()[i];
      return Status::Ok();
    });
    CHECK(before.ok());
    CHECK(sum == 256u * 'x');
    REQUIRE(truncate(file.c_str(), 4096) == 0);
    map->Release(0, map->size());  // drop the resident pages, as the pipeline does
    for (int thread = 0; thread < 2; ++thread) {
      Status st;
      auto read_tail = [&]() {
        st = GuardMappedReads(file.string(), [&]() {
          volatile uint8_t b = map->data()[(1 << 20) - 1];
          (void)b;
          return Status::Ok();
        });
      };
      if (thread == 0) {
        read_tail();
      } else {
        std::thread(read_tail).join();  // a worker thread, as in the pipeline
      }
      CAPTURE(thread);
      CHECK(st.code() == ErrorCode::kIo);
      CHECK(st.message().find(file.string() + ": reading the mapped file failed (SIGBUS)") == 0);
    }
    // The page that still exists reads, and fn's own status comes back unchanged.
    Status own = GuardMappedReads(file.string(), [&]() {
      return map->data()[0] == 'x' ? Error(ErrorCode::kNonFinite, "own") : Status::Ok();
    });
    CHECK(own.code() == ErrorCode::kNonFinite);
    CHECK(own.message() == "own");
  }

  TEST_CASE("a source shard truncated under the pipeline's map ends the run with an I/O error") {
    TempDir dir;
    fs::create_directories(dir / "src");
    const fs::path shard = dir / "src" / "model.safetensors";
    std::vector<float> w(512 * 1024, 0.01f);
    WriteShard(shard, {{"layer.weight", DType::kBF16, {512, 1024}, Bf16Bytes(w)}});
    WriteBytes(dir / "src" / "config.json", "{}");
    ConvertOptions o;
    o.src = dir / "src";
    o.dst = dir / "out";
    o.scheme = "FP8_DYNAMIC";
    auto plan = MakePlan(o);
    REQUIRE(plan.ok());
    fs::create_directories(o.dst);
    SourceMaps maps(*plan);
    REQUIRE(maps.Get(0).ok());  // mapped at its full size, as a run maps it
    REQUIRE(truncate(shard.c_str(), 4096) == 0);  // then the file shrinks under the map
    for (int threads : {1, 2}) {
      CAPTURE(threads);
      const PipelineSizing sizing = SizePipeline(16 << 20, threads);
      int hook_calls = 0;  // the while_committing hook: not run after a failure
      Status st = RunShardPipeline(*plan, sizing, maps, {}, nullptr, nullptr, nullptr, nullptr,
                                   nullptr, [&] { ++hook_calls; });
      CHECK(st.code() == ErrorCode::kIo);
      CHECK(hook_calls == 0);
      CHECK(st.message().find(shard.string() + ": reading the mapped file failed (SIGBUS)") == 0);
      // Nothing looks finished: only temporary files, removed with the run.
      for (const auto& e : fs::directory_iterator(o.dst)) {
        CHECK(e.path().filename().string().find(".quench-tmp") != std::string::npos);
      }
      CHECK_FALSE(fs::exists(o.dst / "model.safetensors"));
    }
    // The file restored, --resume in the same DST (temporary files left) finishes the run with
    // the bytes of an uninterrupted one.
    WriteShard(shard, {{"layer.weight", DType::kBF16, {512, 1024}, Bf16Bytes(w)}});
    {
      // A run that succeeds runs the while_committing hook once, after the last chunk.
      ConvertOptions h = o;
      h.dst = dir / "hooked";
      auto hp = MakePlan(h);
      REQUIRE(hp.ok());
      fs::create_directories(h.dst);
      hp->dst = h.dst;
      SourceMaps hmaps(*hp);
      // beside_first_chunk runs once, on another thread (a writer's), and is done before
      // the while_committing hook.
      int hook_calls = 0, beside_calls = 0, beside_before_hook = 0;
      std::thread::id beside_thread;
      Status st = RunShardPipeline(
          *hp, SizePipeline(16 << 20, 2), hmaps, {}, nullptr, nullptr, nullptr, nullptr, nullptr,
          [&] {
            ++hook_calls;
            beside_before_hook = beside_calls;
          },
          [&] {
            ++beside_calls;
            beside_thread = std::this_thread::get_id();
          });
      REQUIRE_MESSAGE(st.ok(), st.ToString());
      CHECK(hook_calls == 1);
      CHECK(beside_calls == 1);
      CHECK(beside_before_hook == 1);
      CHECK(beside_thread != std::this_thread::get_id());
      CHECK(fs::exists(h.dst / "model.safetensors"));
    }
    auto resumed = RunQuench({"convert", o.src.string(), o.dst.string(), "--scheme",
                              "FP8_DYNAMIC", "--resume", "-q"});
    REQUIRE_MESSAGE(resumed.exit_code == 0, resumed.err);
    auto fresh = RunQuench({"convert", o.src.string(), (dir / "fresh").string(), "--scheme",
                            "FP8_DYNAMIC", "-q"});
    REQUIRE(fresh.exit_code == 0);
    REQUIRE(ListFiles(o.dst) == ListFiles(dir / "fresh"));
    for (const std::string& f : ListFiles(o.dst)) {
      CAPTURE(f);
      CHECK(ReadBytes(o.dst / f) == ReadBytes(dir / "fresh" / f));
    }
  }

  TEST_CASE("guards nest: the inner one reports, the outer one goes on") {
    TempDir dir;
    const fs::path file = dir / "f";
    WriteBytes(file, std::string(8192, 'y'));
    auto map = MappedFile::Open(file);
    REQUIRE(map.ok());
    REQUIRE(truncate(file.c_str(), 0) == 0);
    map->Release(0, map->size());
    Status inner;
    Status outer = GuardMappedReads("outer", [&]() {
      inner = GuardMappedReads("inner", [&]() {
        volatile uint8_t b = map->data()[100];
        (void)b;
        return Status::Ok();
      });
      return Status::Ok();
    });
    CHECK(outer.ok());
    CHECK(inner.code() == ErrorCode::kIo);
    CHECK(inner.message().starts_with("inner: "));
  }
}

}  // namespace quench::testing
