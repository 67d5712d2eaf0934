// The JSON parser and both writers. Properties: parsing never crashes; whatever parses is
// written by DumpPythonJson and DumpCompactJson into text that parses again and is written
// again to the same bytes (the writers are each other's fixed points through the parser).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "format/json.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using quench::fuzz::Require;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto v = quench::ParseJson("fuzz.json", text);
  if (!v.ok()) {
    Require(!v.status().message().empty(), "an error without a message");
    return 0;
  }
  const std::string python = quench::DumpPythonJson(*v);
  auto again = quench::ParseJson("python.json", python);
  Require(again.ok(), "DumpPythonJson wrote text that does not parse");
  Require(quench::DumpPythonJson(*again) == python, "DumpPythonJson is not stable");
  const std::string compact = quench::DumpCompactJson(*v);
  auto again_compact = quench::ParseJson("compact.json", compact);
  Require(again_compact.ok(), "DumpCompactJson wrote text that does not parse");
  Require(quench::DumpCompactJson(*again_compact) == compact, "DumpCompactJson is not stable");
  Require(quench::DumpPythonJson(*again_compact) == python, "the writers disagree on the value");
  return 0;
}
