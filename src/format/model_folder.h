// The inventory of a Hugging Face checkpoint folder: every shard's header, the index, the
// config, and the other files to carry over. Reads headers only, never weights.
#ifndef QUENCH_FORMAT_MODEL_FOLDER_H_
#define QUENCH_FORMAT_MODEL_FOLDER_H_

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "format/json.h"
#include "format/safetensors.h"
#include "quench/status.h"

namespace quench {

struct Shard {
  std::string rel_name;            // path relative to the folder, '/'-separated
  std::filesystem::path path;      // absolute
  uint64_t file_size = 0;
  SafetensorsHeader header;
};

struct ModelFolder {
  std::filesystem::path root;
  std::vector<Shard> shards;                 // sorted by rel_name
  std::optional<std::string> index_rel;      // e.g. "model.safetensors.index.json"
  std::optional<std::string> config_rel;     // "config.json", else "params.json", else none
  std::optional<JsonValue> config;           // parsed config file
  std::vector<std::string> other_files;      // every other file, relative, sorted
};

// Lists `root` recursively (skipping entries whose relative path starts with ".cache" or
// ".gitattributes", as the reference does), reads every `*.safetensors` header, parses the
// index and config, and checks that the index names only existing shards and tensors that
// are in the shard it names.
Result<ModelFolder> LoadModelFolder(const std::filesystem::path& root);

// One `.safetensors` file on its own (for `quench inspect FILE`).
Result<Shard> LoadShard(const std::filesystem::path& file, std::string rel_name);

}  // namespace quench

#endif  // QUENCH_FORMAT_MODEL_FOLDER_H_
