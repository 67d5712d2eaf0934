// What the source-conversion suites (tests/test_quant_sources.cc, tests/test_sources_run.cc,
// tests/test_sources_ct.cc, tests/test_expert_prune_sources.cc, tests/test_source_mxfp4.cc)
// share: their golden manifests' cases, a conversion with the reference's ignore list as given,
// verify DST SRC, and a folder rewritten with a planted fault.
#ifndef QUENCH_TESTS_SOURCE_CASES_H_
#define QUENCH_TESTS_SOURCE_CASES_H_

#include <doctest/doctest.h>

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "format/json.h"
#include "format/quant_config.h"
#include "quench/convert.h"
#include "test_util.h"
#include "verify/verify.h"

namespace quench::testing {

struct GoldenCase {
  std::string name, scheme;
  fs::path source, expected;
  std::vector<std::string> ignore;
};

// The cases of data/golden/`manifest`; `completed_only`: only those with an "expected" output
// (the ones the reference completed).
inline std::vector<GoldenCase> GoldenCases(const std::string& manifest,
                                           bool completed_only = false) {
  auto m = ReadJsonFile((DataDir() / "golden" / manifest).string());
  REQUIRE(m.ok());
  std::vector<GoldenCase> out;
  for (const JsonValue& c : m->Find("cases")->as_array()) {
    if (completed_only && c.Find("expected") == nullptr) continue;
    GoldenCase g;
    g.name = c.Find("name")->as_string();
    g.scheme = c.Find("scheme")->as_string();
    g.source = DataDir() / c.Find("source")->as_string();
    g.expected = DataDir() / c.Find("expected")->as_string();
    for (const JsonValue& i : c.Find("ignore")->as_array()) g.ignore.push_back(i.as_string());
    out.push_back(std::move(g));
  }
  return out;
}

inline Result<ConvertSummary> ConvertSource(const fs::path& src, const fs::path& dst,
                                            const std::string& scheme,
                                            const std::vector<std::string>& ignore,
                                            uint64_t chunk_bytes = 0,
                                            std::optional<int> group_size = std::nullopt) {
  ConvertOptions o;
  o.src = src;
  o.dst = dst;
  o.scheme = scheme;
  o.ignore = ignore;
  o.default_ignore = false;  // the reference's ignore list, as given
  o.chunk_bytes = chunk_bytes;
  o.group_size = group_size;
  return Convert(o);
}

// quench verify `dst` `src`: it runs and finds no problem (the problems listed when it does);
// the report, for the counts.
inline VerifyReport VerifyClean(const fs::path& dst, const fs::path& src) {
  VerifyOptions v;
  v.dst = dst;
  v.src = src;
  auto r = Verify(v);
  REQUIRE_MESSAGE(r.ok(), r.status().ToString());
  std::string problems;
  for (const auto& p : r->problems) problems += p.ToString() + "\n";
  CHECK_MESSAGE(r->ok(), problems);
  return *r;
}

// The bytes of tensor `t` of `l`.
inline std::string Bytes(const Loaded& l, const TensorInfo& t) {
  return std::string(reinterpret_cast<const char*>(l.Data(t)), t.nbytes());
}

// Rewrites the folder `dir` with `edit` applied to its tensors (rel shard name -> tensors),
// and a consistent index, so that only the planted fault is wrong.
inline void EditFolder(
    const fs::path& dir,
    const std::function<void(std::map<std::string, std::vector<RawTensor>>&)>& edit) {
  std::map<std::string, std::vector<RawTensor>> shards;
  for (const auto& [rel, l] : LoadAll(dir)) {
    for (const TensorInfo& t : l.shard.header.tensors) {
      shards[rel].push_back({t.name, t.dtype, t.shape, Bytes(l, t)});
    }
  }
  edit(shards);
  std::vector<std::pair<std::string, std::string>> wm;
  uint64_t total = 0;
  for (const auto& [rel, v] : shards) {
    WriteShard(dir / rel, v);
    for (const RawTensor& t : v) {
      wm.push_back({t.name, rel});
      total += t.bytes.size();
    }
  }
  WriteBytes(dir / "model.safetensors.index.json", BuildIndexJson({wm.begin(), wm.end()}, total));
}

}  // namespace quench::testing

#endif  // QUENCH_TESTS_SOURCE_CASES_H_
