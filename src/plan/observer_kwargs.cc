// The imatrix_mse observer's settings (see observer_kwargs.h).
#include "plan/observer_kwargs.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>

namespace quench {
namespace {

Status Usage(const std::string& what) { return Error(ErrorCode::kUsage, what); }

const char* const kKeys = "maxshrink, patience, grid, norm, expand, strict";

// A whole number within [lo, hi] (an int, or a float with no fraction: the reference's
// arithmetic gives the same steps for 40 and 40.0).
Result<int> Whole(const JsonValue& v, const std::string& what, int lo, int hi) {
  if (v.is_bool() || !(v.is_int() || v.is_double())) {
    return Usage(what + " must be a number");
  }
  const double d = v.as_double();
  if (!std::isfinite(d) || d != std::floor(d)) {
    return Usage(what + " must be a whole number (quench searches whole grids), not " +
                 DumpPythonJson(v));
  }
  if (d < lo || d > hi) {
    return Usage(what + " must be from " + std::to_string(lo) + " to " + std::to_string(hi) +
                 ", not " + DumpPythonJson(v));
  }
  return static_cast<int>(d);
}

Result<double> Number(const JsonValue& v, const std::string& what) {
  if (v.is_bool() || !(v.is_int() || v.is_double())) {
    return Usage(what + " must be a number");
  }
  return v.as_double();
}

}  // namespace

Result<JsonValue> ObserverKwargsFromArgs(const std::vector<std::string>& args) {
  JsonValue kw = JsonValue::MakeObject();
  for (const std::string& a : args) {
    const size_t eq = a.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == a.size()) {
      return Usage("--observer-arg takes KEY=VALUE (" + std::string(kKeys) + "), not '" + a +
                   "'");
    }
    const std::string key = a.substr(0, eq), value = a.substr(eq + 1);
    if (kw.Find(key) != nullptr) return Usage("--observer-arg " + key + " given twice");
    if (value == "true" || value == "True") {
      kw.Set(key, JsonValue(true));
      continue;
    }
    if (value == "false" || value == "False") {
      kw.Set(key, JsonValue(false));
      continue;
    }
    // An integer literal stays an int (as a YAML recipe's 40 would); anything else that
    // parses whole as a number is a float (40.0, 2.4, 1e-1).
    const char* s = value.c_str();
    char* end = nullptr;
    errno = 0;
    const long long i = std::strtoll(s, &end, 10);
    if (*end == '\0' && errno == 0) {
      kw.Set(key, JsonValue(static_cast<int64_t>(i)));
      continue;
    }
    errno = 0;
    const double d = std::strtod(s, &end);
    if (*end != '\0' || errno != 0 || !std::isfinite(d)) {
      return Usage("--observer-arg " + key + ": '" + value + "' is not a number or true/false");
    }
    kw.Set(key, JsonValue(d));
  }
  return kw;
}

Result<ObserverSettings> ParseObserverKwargs(const std::string& observer, const JsonValue& kwargs,
                                             const std::string& where) {
  ObserverSettings s;
  if (kwargs.is_null()) return s;
  if (!kwargs.is_object()) return Usage(where + "observer_kwargs must be a mapping");
  if (kwargs.as_object().empty()) return s;
  if (observer != "imatrix_mse") {
    return Usage(where + "observer_kwargs are the imatrix_mse observer's settings (" + kKeys +
                 "); the min-max observer takes none");
  }
  for (const auto& [key, v] : kwargs.as_object()) {
    const std::string what = where + "observer_kwargs " + key;
    if (key == "grid") {
      // IMatrixMSEObserver: grid must be > 0.
      QUENCH_ASSIGN_OR_RETURN(s.grid, Whole(v, what, 1, 1 << 30));
    } else if (key == "patience") {
      // patience must be >= 0 (0: never stop early).
      QUENCH_ASSIGN_OR_RETURN(s.patience, Whole(v, what, 0, 1 << 30));
    } else if (key == "maxshrink") {
      QUENCH_ASSIGN_OR_RETURN(s.maxshrink, Number(v, what));
      if (!(s.maxshrink >= 0 && s.maxshrink <= 1)) {
        return Usage(what + " must be in [0, 1], as llm-compressor checks");
      }
    } else if (key == "norm") {
      QUENCH_ASSIGN_OR_RETURN(s.norm, Number(v, what));
      if (!std::isfinite(s.norm) || s.norm <= 0) {
        return Usage(what + " must be a finite positive number, as llm-compressor checks");
      }
    } else if (key == "expand") {
      // Not checked by the reference; a range times a non-positive factor is no range.
      QUENCH_ASSIGN_OR_RETURN(s.expand, Number(v, what));
      if (!std::isfinite(s.expand) || s.expand <= 0) {
        return Usage(what + " must be a finite positive number");
      }
    } else if (key == "strict") {
      if (!v.is_bool()) return Usage(what + " must be true or false");
      s.strict = v.as_bool();
    } else {
      // The reference reads its keys with kw.get and ignores others: a misspelt key would
      // change nothing there, silently. quench says so instead.
      return Usage(where + "observer_kwargs: imatrix_mse reads " + kKeys + ", not '" + key +
                   "'");
    }
  }
  // shrink_steps = max(1, int(maxshrink * grid)); steps 0..shrink_steps.
  const double last = std::max(1.0, std::trunc(s.maxshrink * static_cast<double>(s.grid)));
  if (last + 1 > kMaxObserverSteps) {
    return Usage(where + "observer_kwargs: int(maxshrink * grid) + 1 = " +
                 std::to_string(static_cast<long long>(last) + 1) + " search steps; quench " +
                 "searches at most " + std::to_string(kMaxObserverSteps) +
                 " (lower grid or maxshrink)");
  }
  return s;
}

std::string ObserverKwargsText(const JsonValue& kwargs) {
  if (!kwargs.is_object() || kwargs.as_object().empty()) return "";
  return DumpPythonJson(kwargs);
}

Result<JsonValue> ObserverKwargsFromText(const std::string& text) {
  if (text.empty()) return JsonValue::MakeObject();
  return ParseJson("observer_kwargs", text);
}

}  // namespace quench
