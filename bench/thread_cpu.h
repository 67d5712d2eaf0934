// The calling thread's CPU time, for the kernel microbenchmarks in bench/: on a shared 2-core
// machine a thread's CPU time is steadier than the wall clock (other jobs take the core, not
// the thread's seconds).
#ifndef QUENCH_BENCH_THREAD_CPU_H_
#define QUENCH_BENCH_THREAD_CPU_H_

#include <time.h>

inline double ThreadCpu() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

#endif  // QUENCH_BENCH_THREAD_CPU_H_
