// The quench executable's own definition of hwy::platform::TimerResolution(), which takes the
// place of libhwy's at process start.
//
// libhwy.so (1.0.x) runs a constructor when it is loaded that calls TimerResolution() and
// keeps the result for its nanobenchmark (hwy/nanobenchmark.h: Measure). TimerResolution()
// samples the cycle counter many times to find its granularity: it spins for milliseconds
// before main(), in every quench process, on the critical path of a conversion that takes a
// fraction of a second (bench/README.md, "Start, input hints and the AVX2 int4 kernel"). The
// constructor calls it through the PLT, so the executable's definition below is the one it
// gets. quench never measures with nanobenchmark (its SIMD dispatch, hwy::SupportedTargets
// and HWY_DYNAMIC_DISPATCH, does not read the value), so any value would do; it returns the
// smallest granularity a counter can have. Declared through Highway's own header so that a
// Highway whose declaration differs fails to compile here instead of linking a mismatched
// definition. Only the quench executable has this file: tests and benchmark programs keep
// libhwy's own.
#include <hwy/nanobenchmark.h>

#include <cstdint>

namespace hwy {
namespace platform {

uint64_t TimerResolution() { return 1; }

}  // namespace platform
}  // namespace hwy
