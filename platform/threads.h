// Thread counts: the one limit every parallel entry point checks.
//
// Kernels and the cache take a thread count as a parameter (there is no
// global setting) and run one OpenMP region of that many threads. A count is
// valid in [1, kMaxThreads]: beyond that, libgomp itself fails (a million
// threads segfault inside the runtime, 2^31 - 1 aborts the process asking for
// hundreds of GB), so a bad count is refused up front with a message naming
// it and the limit. The limit is fixed, not the core count: asking for more
// threads than cores is legal (OpenMP may start fewer, e.g. under
// OMP_THREAD_LIMIT or OMP_DYNAMIC, and every region splits its work over the
// team it actually got, omp_get_num_threads(), never over the count asked
// for).
//
// Thread-safe; no allocation; O(1).
#ifndef SPARSE_MLP_PLATFORM_THREADS_H_
#define SPARSE_MLP_PLATFORM_THREADS_H_

#include "absl/status/status.h"

namespace sparse_mlp {

inline constexpr int kMaxThreads = 1024;

// OK for 1 <= num_threads <= kMaxThreads; otherwise InvalidArgument:
// "<name> must be in [1, 1024], got <num_threads>".
absl::Status ValidateNumThreads(long long num_threads, const char* name = "num_threads");

}  // namespace sparse_mlp

#endif  // SPARSE_MLP_PLATFORM_THREADS_H_
