// Performance goals judged on the runs of a Google Benchmark binary.
//
// A benchmark file registers the goals its issue sets (RegisterGoal, at
// static initialization); the binary's main() (benchmark_main.cc) displays
// the usual console table through GoalReporter, which also collects the
// runs and, at the end, prints each goal with the worst value among the runs
// it covers and whether that value meets it. So every run shows by itself
// which goals it met, measured in that run.
//
// Not thread-safe: registration happens before main(), reporting on the
// benchmark thread.
#ifndef SPARSE_MLP_BENCH_GOALS_H_
#define SPARSE_MLP_BENCH_GOALS_H_

#include <string>
#include <vector>

#include "benchmark/benchmark.h"

namespace sparse_mlp::bench {

struct Goal {
  std::string description;              // printed as is
  std::vector<std::string> name_parts;  // a run counts if its name holds all
  std::string counter;  // a user counter, or empty: real time per iteration
  bool at_least;        // value >= threshold, else value <= threshold
  double threshold;     // in the counter's unit, or nanoseconds for time
};

// Adds a goal for main() to judge. Returns true, so that a file can
// register at namespace scope: `const bool kRegistered = RegisterGoal(...)`.
bool RegisterGoal(Goal goal);

// The console reporter, followed by the goals' verdicts in Finalize().
class GoalReporter : public benchmark::ConsoleReporter {
 public:
  // Colours only on a terminal, like the library's own default display.
  GoalReporter();

  void ReportRuns(const std::vector<Run>& runs) override;
  void Finalize() override;

 private:
  struct Worst {
    bool seen = false;
    double value = 0;
    std::string run_name;
  };
  std::vector<Worst> worst_;  // per registered goal
};

}  // namespace sparse_mlp::bench

#endif  // SPARSE_MLP_BENCH_GOALS_H_
