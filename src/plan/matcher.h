// Target and ignore matching the way compressed-tensors and vLLM match module names: an entry
// is an exact module name, or "re:" followed by a regular expression applied with Python's
// re.match semantics (anchored at the start, not at the end). Regexes are compiled once.
#ifndef QUENCH_PLAN_MATCHER_H_
#define QUENCH_PLAN_MATCHER_H_

#include <array>
#include <cstdint>
#include <regex>
#include <string>
#include <string_view>
#include <vector>

#include "quench/status.h"

namespace quench {

class NameMatcher {
 public:
  // Fails (kUsage) naming the entry when a regex does not compile. `what` ("--ignore")
  // names the source of the entries in messages.
  static Result<NameMatcher> Compile(const std::vector<std::string>& entries,
                                     std::string_view what);

  // Index of the first entry matching `module`, or -1.
  int FirstMatch(std::string_view module) const;
  bool Matches(std::string_view module) const { return FirstMatch(module) >= 0; }
  // Whether entry `i` alone matches `module`.
  bool EntryMatches(size_t i, std::string_view module) const;
  const std::vector<std::string>& entries() const { return entries_; }
  bool empty() const { return entries_.empty(); }

 private:
  struct Entry {
    bool is_regex = false;
    std::string exact;
    std::regex re;
    // A regex ending in `$` can only match names ending in one of these (RequiredSuffixes);
    // names that do not are rejected without running it, which matters on checkpoints with
    // tens of thousands of tensors. Empty: no such test, the regex decides alone.
    std::vector<std::string> suffixes;
    // A regex of the form `([^.]+\.)?(A|B|...)\..*` (plain names A, B: letters, digits, `_`)
    // matches exactly the names whose first or second dot-separated component is one of
    // them, followed by a dot (LeadingComponents); it is answered so, without the regex.
    // Such patterns (quench's default ignores for vision towers) end in no fixed suffix,
    // so they are tried on every module.
    std::vector<std::string> leading;
    uint64_t leading_lengths = 0;  // bit n: a name in `leading` is n characters long
  };
  std::vector<std::string> entries_;
  std::vector<Entry> compiled_;
  // Per last byte of a module name (index 256: the empty name), the entries that could match
  // it, one bit each: an exact entry ending in that byte, a regex with a required suffix
  // ending in it, every regex without one. FirstMatch tries only those; a checkpoint's
  // expert projections ("...gate_proj") then skip quench's default ignores, all of which
  // end in other bytes, without a comparison each (70k modules x 12 endings on Kimi).
  // Only for up to 64 entries (`use_candidates_`); with more, every entry is tried.
  std::array<uint64_t, 257> candidates_{};
  bool use_candidates_ = false;
};

// Splits "a.b.weight" into module "a.b" and parameter "weight" at the last '.'; a name with no
// '.' is all parameter.
std::pair<std::string_view, std::string_view> SplitModuleParam(std::string_view name);

}  // namespace quench

#endif  // QUENCH_PLAN_MATCHER_H_
