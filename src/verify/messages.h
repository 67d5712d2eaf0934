// Number formatting for verify's problem messages.
#ifndef QUENCH_VERIFY_MESSAGES_H_
#define QUENCH_VERIFY_MESSAGES_H_

#include <cstdio>
#include <string>

namespace quench::verify {

// `a` formatted with a printf conversion for one double ("%g", "%.6g", ...).
inline std::string Fmt(const char* fmt, double a) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, a);
  return buf;
}

}  // namespace quench::verify

#endif  // QUENCH_VERIFY_MESSAGES_H_
