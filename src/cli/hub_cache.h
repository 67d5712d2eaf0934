// A source named by its Hugging Face model ID: `quench convert Qwen/Qwen3-8B DST` reads the
// model's snapshot in the local Hugging Face cache, as vLLM and transformers take an ID
// offline. quench downloads nothing: an ID the cache does not hold is an error that says how
// to get it.
#ifndef QUENCH_CLI_HUB_CACHE_H_
#define QUENCH_CLI_HUB_CACHE_H_

#include <string>

namespace quench::cli {

struct HubSource {
  std::string path;  // what to read: the argument itself, or the snapshot's folder
  std::string note;  // set when the argument was taken as an ID: which snapshot it is
  std::string hint;  // set when it looks like an ID the cache does not hold: what to do
};

// `arg` as given when it names anything on this machine (or cannot be examined: the reader
// reports why) or is not of the form ORG/NAME; else the folder of that model's snapshot in
// the cache ($HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else
// ~/.cache/huggingface/hub: huggingface_hub's order), the revision its refs/main names, or
// its only snapshot when there is no refs/main.
HubSource ResolveHubSource(const std::string& arg);

}  // namespace quench::cli

#endif  // QUENCH_CLI_HUB_CACHE_H_
