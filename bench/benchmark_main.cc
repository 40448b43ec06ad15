// main() of the Google Benchmark binaries: refuses unoptimized builds (their
// figures would be meaningless), then runs the registered benchmarks.
#include "benchmark/benchmark.h"
#include "bench/optimized_build_check.h"

int main(int argc, char** argv) {
  sparse_mlp::bench::RequireOptimizedBuild();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
