// Activation statistics (docs/statistics-format.md): a folder with manifest.json and
// safetensors files of per-site arrays. Opening reads the manifest and the files' headers and
// checks every array's dtype and shape; values are read from memory maps only for the sites a
// caller asks for. The calibration seam: the data-free path never includes this.
#ifndef QUENCH_CALIB_STATS_H_
#define QUENCH_CALIB_STATS_H_

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "format/file_io.h"
#include "format/json.h"
#include "quench/status.h"
#include "quench/tensor.h"

namespace quench::calib {

inline constexpr int kStatsVersion = 1;

// The arrays a site may hold, with the dtype the format fixes for each.
struct StatsField {
  std::string name;  // "count", "sum_x2", "sum_abs", "min", "max", "hessian", "hessian_blk128"
  DType dtype = DType::kF64;
  std::vector<uint64_t> shape;  // as the format requires for the site
};

struct StatsSite {
  std::string name;
  std::string file;                 // relative to the folder
  uint64_t in_features = 0;
  std::optional<uint64_t> experts;  // per-expert site: leading dimension E
  std::vector<StatsField> fields;   // in manifest order
};

// REAP saliency of one MoE block (docs/statistics-format.md, "REAP saliency"): arrays
// `<block>.reap_sum` (F64 [E]) and `<block>.reap_count` (I64 [E]).
struct StatsReap {
  std::string block;   // module name, e.g. "model.layers.1.mlp": the arrays' prefix
  std::string router;  // the router weight as the checkpoint names it
  std::string file;
  uint64_t experts = 0;
};

struct StatsConsumer {
  std::string site;
  std::optional<uint64_t> expert;
};

// Expected dtype and shape of `field` for a site (kInvalidInput for an unknown field name).
Result<StatsField> FieldLayout(const std::string& field, uint64_t in_features,
                               std::optional<uint64_t> experts);

class Statistics {
 public:
  static Result<Statistics> Open(const std::filesystem::path& dir);

  const std::filesystem::path& dir() const { return dir_; }
  const JsonValue& manifest() const { return manifest_; }
  const std::map<std::string, StatsSite>& sites() const { return sites_; }
  const std::map<std::string, StatsConsumer>& consumers() const { return consumers_; }
  const std::vector<std::string>& files() const { return files_; }
  // REAP saliency by router weight name (empty without the optional `reap` key).
  const std::map<std::string, StatsReap>& reap() const { return reap_; }

  // The raw bytes of one array, mapped (the file is mapped on first use).
  Result<std::pair<const uint8_t*, uint64_t>> FieldBytes(const std::string& site,
                                                         const std::string& field) const;
  // One array's elements as f64 (I64, F32 and F64 arrays convert exactly or as the format
  // stores them).
  Result<std::vector<double>> ReadField(const std::string& site, const std::string& field) const;
  // A REAP block's sums and counts ("reap_sum" / "reap_count"), as stored.
  Result<std::vector<double>> ReadReapSum(const StatsReap& r) const;
  Result<std::vector<int64_t>> ReadReapCount(const StatsReap& r) const;

 private:
  struct Located {
    std::string file;
    uint64_t offset = 0;  // absolute, in the file
    uint64_t nbytes = 0;
  };
  // Open's steps after the manifest's format and version, each checking one part of it:
  // the files and every array in them, the sites (their fields against those arrays), the
  // consumers and the optional REAP blocks.
  struct FileArrays;
  Status ReadFiles(FileArrays& arrays);
  Status ReadSites(const FileArrays& arrays);
  Status ReadConsumers();
  Status ReadReap(const FileArrays& arrays);

  std::filesystem::path dir_;
  JsonValue manifest_;
  std::vector<std::string> files_;
  std::map<std::string, StatsSite> sites_;
  std::map<std::string, StatsConsumer> consumers_;
  std::map<std::string, StatsReap> reap_;  // by router
  std::map<std::string, Located> arrays_;  // "site.field" -> where
  mutable std::map<std::string, std::shared_ptr<MappedFile>> maps_;
};

// Combines statistics of the same model collected in parts: counts, sums and Hessians add,
// min and max reduce, REAP sums and counts add. Refuses parts whose model, sites, fields or
// collection settings differ. Writes `out` (a new folder) atomically file by file; reads inputs
// through maps, an array at a time.
Status MergeStatistics(const std::vector<std::filesystem::path>& inputs,
                       const std::filesystem::path& out);

// Statistics from `collect-stats --sequential` (manifest `collection.pipeline` "sequential")
// hold each layer's Hessians measured with the earlier layers quantized by `quench convert
// <collection.quench_args>`, so they fit that conversion only. Returns a warning when a
// conversion's --scheme, --recipe or --algorithm differ from the recorded ones; "" otherwise,
// and for plain statistics or a manifest it cannot read (Statistics::Open reports those).
std::string SequentialStatsNote(const std::filesystem::path& dir, const std::string& scheme,
                                const std::string& algorithm, const std::string& recipe);

}  // namespace quench::calib

#endif  // QUENCH_CALIB_STATS_H_
