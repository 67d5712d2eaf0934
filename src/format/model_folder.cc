// The inventory of a model folder (model_folder.h): the folder listed recursively with every
// entry carried over faithfully (unreadable, looping, dangling or special entries refused),
// every shard's header read (on a few threads), the index parsed beside them and checked
// against the shards, config.json read, and the config's quantization method. The split of
// fused 3-D expert stacks is in fused_experts.cc.
#include "format/model_folder.h"

#include <fcntl.h>
#include <simdjson.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <set>
#include <system_error>
#include <utility>

#include "format/file_io.h"
#include "format/name_table.h"
#include "format/parallel.h"
#include "format/sorted_runs.h"

namespace quench {
namespace fs = std::filesystem;

namespace {

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// The last shard name an index entry resolved, since consecutive entries mostly share one.
struct LastShard {
  std::string_view file;
  uint32_t shard = 0;
};

// Which shards index entries resolved to (by position in m.shards): marked each time an entry
// names another file than the entry before, so a few times per shard.
using IndexedShards = std::vector<char>;

// One weight_map entry: `file` must name an existing shard that holds `tensor`. `holder`
// maps every tensor name to its shard's index in m.shards.
Status CheckIndexEntry(const ModelFolder& m, const NameTable& holder, const std::string& label,
                       const std::string& dir, std::string_view tensor,
                       simdjson::dom::element file_value, LastShard& last,
                       IndexedShards& indexed) {
  std::string_view file;
  if (file_value.get_string().get(file)) {
    return Error(ErrorCode::kInvalidInput,
                 label + ": tensor '" + std::string(tensor) + "': shard name is not a string");
  }
  if (last.file.data() != nullptr && file == last.file) {
    const std::optional<uint32_t> h = holder.Find(tensor);
    if (h && *h == last.shard) return Status::Ok();
  }
  // Index file names are relative to the index's folder.
  const std::string rel = dir.empty() ? std::string(file) : dir + "/" + std::string(file);
  auto it = std::lower_bound(m.shards.begin(), m.shards.end(), rel,
                             [](const Shard& s, const std::string& r) { return s.rel_name < r; });
  if (it == m.shards.end() || it->rel_name != rel) {
    return Error(ErrorCode::kInvalidInput, label + ": tensor '" + std::string(tensor) +
                                               "' is mapped to '" + std::string(file) +
                                               "', which does not exist");
  }
  const std::optional<uint32_t> h = holder.Find(tensor);
  if (!h || *h != static_cast<uint32_t>(it - m.shards.begin())) {
    return Error(ErrorCode::kInvalidInput, label + ": tensor '" + std::string(tensor) +
                                               "' is mapped to '" + std::string(file) +
                                               "', which does not hold it");
  }
  last = {file, *h};
  indexed[*h] = 1;
  return Status::Ok();
}

// The index file read and parsed into simdjson's DOM (a JsonValue tree would copy every name
// of an index that names 10^5 tensors). Done beside the shards' headers, since it needs
// nothing from them; what it found is reported only after them, as before.
struct IndexDom {
  simdjson::padded_string text;
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  bool parsed = false;
  int read_errno = 0;  // why LoadText failed, where it did
};

// The whole file into `text`, as simdjson::padded_string::load reads it (false where it
// cannot be opened, sized or read), but with pread into a buffer that asks for huge pages
// (AdviseHugePages), as the shard headers are read: a large index read through load's
// buffer faulted in every 4 KiB page of it (bench/README.md, kimi-s37).
bool LoadText(const std::string& path, simdjson::padded_string& text, int* err) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *err = errno;
    return false;
  }
  struct stat st;
  bool ok = ::fstat(fd, &st) == 0 && st.st_size >= 0;
  if (!ok) *err = errno;
  if (ok) {
    const size_t n = static_cast<size_t>(st.st_size);
    simdjson::padded_string buf(n);
    AdviseHugePages(buf.data(), n);
    size_t done = 0;
    while (ok && done < n) {
      const ssize_t r = ::pread(fd, buf.data() + done, n - done, static_cast<off_t>(done));
      if (r < 0 && errno == EINTR) continue;
      ok = r > 0;
      if (ok) done += static_cast<size_t>(r);
      if (!ok) *err = r < 0 ? errno : 0;  // 0: the file shrank while it was read
    }
    if (ok) text = std::move(buf);
  }
  ::close(fd);
  return ok;
}

void ParseIndex(const ModelFolder& m, IndexDom& d) {
  const std::string path = (m.root / *m.index_rel).string();
  d.parsed = LoadText(path, d.text, &d.read_errno) && !d.parser.parse(d.text).get(d.root);
}

// Checks the parsed index. Read as Python reads JSON: a repeated key keeps its first position
// and its last value.
Status CheckIndex(const ModelFolder& m, const NameTable& holder, const IndexDom& d,
                  IndexedShards& indexed) {
  const std::string& label = *m.index_rel;
  const std::string path = (m.root / label).string();
  const simdjson::dom::element root = d.root;
  if (!d.parsed) {
    // The messages every JSON file quench reads gets (ReadJsonFile reads it again).
    Result<JsonValue> again = ReadJsonFile(path);
    if (!again.ok()) return again.status();
    return Error(ErrorCode::kIo,
                 path + ": cannot read: " +
                     (d.read_errno != 0 ? ErrnoMessage(d.read_errno) : "it changed while read"));
  }
  simdjson::dom::object index;
  std::optional<simdjson::dom::element> wm;
  if (!root.get_object().get(index)) {
    for (simdjson::dom::key_value_pair field : index) {
      if (field.key == "weight_map") wm = field.value;
    }
  }
  simdjson::dom::object entries;
  if (!wm || wm->get_object().get(entries)) {
    return Error(ErrorCode::kInvalidInput, label + ": no \"weight_map\" object");
  }
  const std::string dir = fs::path(label).parent_path().generic_string();
  // Every entry as it stands; only when one fails does a repeated key matter, and then the
  // entries are checked again as Python's dict holds them.
  bool all_ok = true;
  LastShard last;
  for (simdjson::dom::key_value_pair field : entries) {
    if (!CheckIndexEntry(m, holder, label, dir, field.key, field.value, last, indexed).ok()) {
      all_ok = false;
      break;
    }
  }
  if (all_ok) return Status::Ok();
  std::vector<std::pair<std::string_view, simdjson::dom::element>> dict;
  NameTable position(entries.size());
  for (simdjson::dom::key_value_pair field : entries) {
    auto [pos, inserted] = position.Insert(field.key, static_cast<uint32_t>(dict.size()));
    if (inserted) {
      dict.emplace_back(field.key, field.value);
    } else {
      dict[pos].second = field.value;
    }
  }
  last = {};
  for (const auto& [tensor, file] : dict) {
    QUENCH_RETURN_IF_ERROR(CheckIndexEntry(m, holder, label, dir, tensor, file, last, indexed));
  }
  return Status::Ok();
}

// Every shard's tensor names, sorted by name, each with its shard's index: a name held by two
// shards then sits next to itself, and an index listing its entries in name order (as
// transformers writes it) is checked in one walk beside them. Each shard lists its names
// sorted or in a few sorted runs (by dtype, then name), so the sort is mostly merges.
// Returns false, leaving the checks to the name table (which names the first problem as the
// messages always have), when a name is held twice or the index is not in strict name order
// or has any entry the table's check would refuse.
bool SortedChecksPass(const ModelFolder& m, size_t tensors, const IndexDom* d,
                      IndexedShards& indexed) {
  std::vector<std::pair<std::string_view, uint32_t>> held;
  held.reserve(tensors);
  for (size_t si = 0; si < m.shards.size(); ++si) {
    for (const TensorInfo& t : m.shards[si].header.tensors) {
      held.emplace_back(t.name, static_cast<uint32_t>(si));
    }
  }
  SortByRuns(held.begin(), held.end(),
             [](const auto& a, const auto& b) { return a.first < b.first; });
  for (size_t i = 1; i < held.size(); ++i) {
    if (held[i].first == held[i - 1].first) return false;
  }
  if (d == nullptr) return true;
  if (!d->parsed) return false;
  simdjson::dom::object index;
  std::optional<simdjson::dom::element> wm;
  if (d->root.get_object().get(index)) return false;
  for (simdjson::dom::key_value_pair field : index) {
    if (field.key == "weight_map") wm = field.value;  // the last one, as CheckIndex reads it
  }
  simdjson::dom::object entries;
  if (!wm || wm->get_object().get(entries)) return false;
  const std::string dir = fs::path(*m.index_rel).parent_path().generic_string();
  size_t j = 0;  // the first held name not before the entry's
  size_t matched = held.size();  // the held name the entry before matched (none yet)
  LastShard last;
  for (simdjson::dom::key_value_pair field : entries) {
    const std::string_view tensor = field.key;
    std::string_view file;
    if (field.value.get_string().get(file)) return false;
    int order = 1;  // held[j] against the entry's name
    while (j < held.size() && (order = held[j].first.compare(tensor)) < 0) ++j;
    if (j == held.size() || order != 0) return false;
    // Entries in strict name order: as every entry is a held name and no name is held twice,
    // that is each matching a later held name than the entry before (one comparison each,
    // not three).
    if (matched != held.size() && j <= matched) return false;
    matched = j;
    const uint32_t holder = held[j].second;
    if (last.file.data() != nullptr && file == last.file) {
      if (holder != last.shard) return false;
      continue;
    }
    // As CheckIndexEntry resolves the name: relative to the index's folder.
    const std::string rel = dir.empty() ? std::string(file) : dir + "/" + std::string(file);
    auto it = std::lower_bound(m.shards.begin(), m.shards.end(), rel,
                               [](const Shard& s, const std::string& r) { return s.rel_name < r; });
    if (it == m.shards.end() || it->rel_name != rel ||
        holder != static_cast<uint32_t>(it - m.shards.begin())) {
      return false;
    }
    last = {file, holder};
    indexed[holder] = 1;
  }
  return true;
}

}  // namespace

Result<Shard> LoadShard(const fs::path& file, std::string rel_name, bool header_bytes) {
  Shard s;
  s.rel_name = std::move(rel_name);
  s.path = file;
  std::error_code ec;
  s.file_size = fs::file_size(file, ec);
  if (ec) return Error(ErrorCode::kIo, file.string() + ": cannot stat: " + ec.message());
  QUENCH_ASSIGN_OR_RETURN(s.header,
                          ReadSafetensorsHeader(file, header_bytes ? &s.header_bytes : nullptr));
  return s;
}

namespace {

// Whether `err` means the path names nothing (as opposed to naming something unreadable).
bool IsNotFound(const std::error_code& err) {
  return err == std::errc::no_such_file_or_directory || err == std::errc::not_a_directory;
}

// The error for a path whose status cannot be read: a symbolic link loop or a dangling link is
// invalid input (the file cannot be carried over); anything else is an I/O failure.
Status StatError(const std::string& label, const std::error_code& err, bool is_link) {
  if (err == std::errc::too_many_symbolic_link_levels) {
    return Error(ErrorCode::kInvalidInput,
                 label + ": symbolic link loop (" + err.message() + "); quench cannot read it");
  }
  if (is_link && IsNotFound(err)) {
    return Error(ErrorCode::kInvalidInput,
                 label + ": symbolic link to a file that does not exist; quench copies every "
                         "file of the folder and cannot copy this one");
  }
  return Error(ErrorCode::kIo, label + ": cannot stat: " + err.message());
}

// Lists `root` recursively into `shards` (*.safetensors) and `m.other_files`, relative and
// '/'-separated. Every entry must be carried over faithfully, so nothing is skipped silently:
// an unreadable file or folder is an I/O error, a symbolic link loop, a dangling link or a
// special file (fifo, socket, device) is invalid input. Links to files are followed; links to
// folders are not (as the reference's os.walk), and are listed in `m.linked_folders`. A folder
// reached twice (a bind mount of an ancestor) is refused rather than walked forever.
Status ListFolder(const fs::path& root, const std::string& root_label, ModelFolder& m,
                  std::vector<std::string>& shards) {
  struct Pending {
    fs::path dir;
    std::string rel;  // "" for the root, else "sub/dir/"
  };
  std::vector<Pending> stack{{root, ""}};
  std::set<std::pair<dev_t, ino_t>> seen;
  while (!stack.empty()) {
    Pending dir = std::move(stack.back());
    stack.pop_back();
    const std::string dir_label =
        dir.rel.empty() ? root_label : root_label + "/" + dir.rel.substr(0, dir.rel.size() - 1);
    struct stat dst {};
    if (::stat(dir.dir.c_str(), &dst) != 0) {
      return StatError(dir_label, std::error_code(errno, std::generic_category()), false);
    }
    if (!seen.emplace(dst.st_dev, dst.st_ino).second) {
      return Error(ErrorCode::kInvalidInput,
                   dir_label + ": folder loop (this folder is also reached through another "
                               "path, e.g. a bind mount of an ancestor)");
    }
    std::error_code ec;
    fs::directory_iterator it(dir.dir, ec);
    if (ec) return Error(ErrorCode::kIo, dir_label + ": cannot list folder: " + ec.message());
    for (; it != fs::directory_iterator(); it.increment(ec)) {
      if (ec) return Error(ErrorCode::kIo, dir_label + ": cannot list folder: " + ec.message());
      const std::string rel = dir.rel + it->path().filename().string();
      // The reference skips these (llmcompressor entrypoints/model_free: get_checkpoint_files).
      if (rel.starts_with(".cache") || rel.starts_with(".gitattributes")) continue;
      const std::string label = root_label + "/" + rel;
      const fs::file_status own = it->symlink_status(ec);
      if (ec) return StatError(label, ec, false);
      const bool is_link = fs::is_symlink(own);
      const fs::file_status st = is_link ? it->status(ec) : own;
      if (ec) return StatError(label, ec, is_link);
      if (fs::is_directory(st)) {
        if (is_link) {
          m.linked_folders.push_back(rel);
        } else {
          stack.push_back({it->path(), rel + "/"});
        }
        continue;
      }
      if (!fs::is_regular_file(st)) {
        return Error(ErrorCode::kInvalidInput,
                     label + ": not a regular file or folder (a fifo, socket or device); "
                             "quench copies only regular files");
      }
      // Every file is read later (headers, index, config) or copied unchanged: one that
      // cannot be opened fails the run now, before anything is written.
      const int fd = ::open(it->path().c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
      if (fd < 0) {
        const int err = errno;
        return Error(ErrorCode::kIo, label + ": cannot open for reading: " +
                                         std::strerror(err) +
                                         "; quench carries every file of the folder over");
      }
      ::close(fd);
      if (EndsWith(rel, ".safetensors")) {
        shards.push_back(rel);
      } else {
        m.other_files.push_back(rel);
      }
    }
  }
  return Status::Ok();
}

// config.json (or params.json), the last step of loading a folder.
Result<ModelFolder> ReadConfig(ModelFolder m) {
  for (const char* name : {"config.json", "params.json"}) {
    if (std::find(m.other_files.begin(), m.other_files.end(), name) != m.other_files.end()) {
      m.config_rel = name;
      QUENCH_ASSIGN_OR_RETURN(JsonValue cfg, ReadJsonFile((m.root / name).string()));
      if (!cfg.is_object()) {
        return Error(ErrorCode::kInvalidInput, std::string(name) + ": not a JSON object");
      }
      m.config = std::move(cfg);
      break;
    }
  }
  return m;
}

}  // namespace

Result<ModelFolder> LoadModelFolder(const fs::path& root_in,
                                    const std::function<void(size_t tensors)>& headers_read,
                                    bool header_bytes) {
  ModelFolder m;
  m.root = ResolvePath(root_in);
  std::error_code ec;
  const bool is_dir = fs::is_directory(m.root, ec);
  if (ec && !IsNotFound(ec)) return StatError(root_in.string(), ec, true);
  if (!is_dir) return Error(ErrorCode::kInvalidInput, root_in.string() + ": not a folder");
  std::vector<std::string> shard_names;
  std::string root_label = root_in.string();
  while (root_label.size() > 1 && root_label.ends_with('/')) root_label.pop_back();
  QUENCH_RETURN_IF_ERROR(ListFolder(m.root, root_label, m, shard_names));
  std::sort(m.linked_folders.begin(), m.linked_folders.end());
  std::sort(shard_names.begin(), shard_names.end());
  std::sort(m.other_files.begin(), m.other_files.end());
  // First index in sorted order, as the reference picks "the first file ending in
  // safetensors.index.json".
  for (const std::string& f : m.other_files) {
    if (EndsWith(f, "safetensors.index.json")) {
      m.index_rel = f;
      break;
    }
  }
  if (shard_names.empty()) {
    return Error(ErrorCode::kInvalidInput,
                 root_in.string() + ": no .safetensors files in this folder");
  }
  // Each shard's header is read and parsed on its own, on one thread per core (tens of
  // thousands of tensors take a while to parse; a thread costs a fraction of a millisecond);
  // a failure is reported for the first failing shard in name order, as one by one.
  // The index is parsed as one more job (its own file, checked after the shards).
  std::vector<Status> failed(shard_names.size());
  m.shards.resize(shard_names.size());
  IndexDom index;
  const size_t jobs = shard_names.size() + (m.index_rel ? 1 : 0);
  // Shards still to be read (the one that takes this to 0 calls `headers_read`), and whether
  // any failed.
  std::atomic<size_t> shards_left{shard_names.size()};
  std::atomic<bool> any_failed{false};
  ForEachIndex(jobs, WorkThreads(0, jobs, jobs, 1), [&](size_t i) {
    if (i == shard_names.size()) return ParseIndex(m, index);
    Result<Shard> s = LoadShard(m.root / shard_names[i], shard_names[i], header_bytes);
    if (s.ok()) {
      m.shards[i] = std::move(*s);
    } else {
      failed[i] = s.status();
      any_failed.store(true);
    }
    // acq_rel: the last shard's thread sees every other shard's header.
    if (shards_left.fetch_sub(1, std::memory_order_acq_rel) == 1 && headers_read &&
        !any_failed.load()) {
      size_t tensors = 0;
      for (const Shard& sh : m.shards) tensors += sh.header.tensors.size();
      headers_read(tensors);
    }
  });
  for (const Status& st : failed) {
    if (!st.ok()) return st;
  }
  // A tensor name must be unique across the checkpoint, or the index cannot map it.
  size_t tensors = 0;
  for (const Shard& s : m.shards) tensors += s.header.tensors.size();
  IndexedShards indexed(m.shards.size(), 0);
  // The shards an index names no tensor of (after the checks, which passed).
  auto unindexed = [&] {
    if (!m.index_rel) return;
    for (size_t si = 0; si < m.shards.size(); ++si) {
      if (!indexed[si]) m.unindexed.push_back(m.shards[si].rel_name);
    }
  };
  if (SortedChecksPass(m, tensors, m.index_rel ? &index : nullptr, indexed)) {
    unindexed();
    return ReadConfig(std::move(m));
  }
  NameTable holder(tensors);  // tensor name -> index of its shard
  for (size_t si = 0; si < m.shards.size(); ++si) {
    const Shard& s = m.shards[si];
    for (const TensorInfo& t : s.header.tensors) {
      auto [first, inserted] = holder.Insert(t.name, static_cast<uint32_t>(si));
      if (!inserted) {
        return Error(ErrorCode::kInvalidInput, "tensor '" + t.name + "' appears in both " +
                                                   m.shards[first].rel_name + " and " +
                                                   s.rel_name);
      }
    }
  }
  if (m.index_rel) QUENCH_RETURN_IF_ERROR(CheckIndex(m, holder, index, indexed));
  unindexed();
  return ReadConfig(std::move(m));
}

bool QuantizationConfigInTextConfig(const ModelFolder& folder) {
  if (!folder.config) return false;
  const JsonValue* top = folder.config->Find("quantization_config");
  if (top != nullptr && !top->is_null()) return false;
  const JsonValue* text = folder.config->Find("text_config");
  const JsonValue* q = text != nullptr && text->is_object() ? text->Find("quantization_config")
                                                             : nullptr;
  return q != nullptr && q->is_object();
}

const JsonValue* SourceQuantizationConfig(const ModelFolder& folder) {
  if (!folder.config) return nullptr;
  const JsonValue* q = QuantizationConfigInTextConfig(folder)
                           ? folder.config->Find("text_config")->Find("quantization_config")
                           : folder.config->Find("quantization_config");
  return q != nullptr && q->is_object() ? q : nullptr;
}

std::string ConfigQuantMethod(const ModelFolder& folder) {
  const JsonValue* q = SourceQuantizationConfig(folder);  // an object, or none
  const JsonValue* m = q != nullptr ? q->Find("quant_method") : nullptr;
  return m != nullptr && m->is_string() ? m->as_string() : std::string();
}

bool IsCompressedTensors(const ModelFolder& folder) {
  return ConfigQuantMethod(folder) == "compressed-tensors";
}

}  // namespace quench
