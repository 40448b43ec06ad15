// main() of the Google Benchmark binaries: refuses unoptimized builds (their
// figures would be meaningless), then runs the registered benchmarks and
// judges the goals the binary registered (bench/goals.h). The display is
// the console table (--benchmark_format is not honoured; for JSON use
// --benchmark_out=FILE --benchmark_out_format=json).
#include "benchmark/benchmark.h"
#include "bench/goals.h"
#include "bench/optimized_build_check.h"

int main(int argc, char** argv) {
  sparse_mlp::bench::RequireOptimizedBuild();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  sparse_mlp::bench::GoalReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
