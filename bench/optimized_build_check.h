// Benchmark binaries include this so that an unoptimized build cannot print
// figures that look real: it refuses to run unless compiled with
// optimization (the repository's .bazelrc builds with -c opt by default).
#ifndef SPARSE_MLP_BENCH_OPTIMIZED_BUILD_CHECK_H_
#define SPARSE_MLP_BENCH_OPTIMIZED_BUILD_CHECK_H_

#include <cstdio>
#include <cstdlib>

namespace sparse_mlp::bench {

inline void RequireOptimizedBuild() {
#if !defined(__OPTIMIZE__)
  std::fprintf(stderr,
               "error: this benchmark was compiled without optimization; its "
               "figures would be meaningless. Build with -c opt (the default "
               "in this repository's .bazelrc).\n");
  std::exit(2);
#endif
}

}  // namespace sparse_mlp::bench

#endif  // SPARSE_MLP_BENCH_OPTIMIZED_BUILD_CHECK_H_
