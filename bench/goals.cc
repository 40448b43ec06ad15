#include "bench/goals.h"

#include <unistd.h>

#include <cstdio>
#include <utility>

namespace sparse_mlp::bench {
namespace {

std::vector<Goal>& Goals() {
  static std::vector<Goal>* goals = new std::vector<Goal>();
  return *goals;
}

bool Covers(const Goal& goal, const std::string& name) {
  for (const std::string& part : goal.name_parts) {
    if (name.find(part) == std::string::npos) return false;
  }
  return true;
}

}  // namespace

bool RegisterGoal(Goal goal) {
  Goals().push_back(std::move(goal));
  return true;
}

GoalReporter::GoalReporter()
    : ConsoleReporter(isatty(STDOUT_FILENO) ? OO_ColorTabular : OO_Tabular) {}

void GoalReporter::ReportRuns(const std::vector<Run>& runs) {
  ConsoleReporter::ReportRuns(runs);
  worst_.resize(Goals().size());
  for (const Run& run : runs) {
    // Aggregates (mean, median, ... of repetitions) would double-count the
    // repetitions they summarize; failed runs have no figures.
    if (run.run_type != Run::RT_Iteration || run.error_occurred) continue;
    const std::string name = run.benchmark_name();
    for (size_t g = 0; g < Goals().size(); ++g) {
      const Goal& goal = Goals()[g];
      if (!Covers(goal, name)) continue;
      double value;
      if (goal.counter.empty()) {
        value = run.GetAdjustedRealTime() / benchmark::GetTimeUnitMultiplier(run.time_unit) *
                1e9;
      } else {
        const auto it = run.counters.find(goal.counter);
        if (it == run.counters.end()) continue;
        value = it->second.value;
      }
      Worst& worst = worst_[g];
      if (!worst.seen || (goal.at_least ? value < worst.value : value > worst.value)) {
        worst = {true, value, name};
      }
    }
  }
}

void GoalReporter::Finalize() {
  ConsoleReporter::Finalize();
  if (Goals().empty()) return;
  worst_.resize(Goals().size());
  std::printf("\ngoals, judged on this run (worst case):\n");
  for (size_t g = 0; g < Goals().size(); ++g) {
    const Goal& goal = Goals()[g];
    const Worst& worst = worst_[g];
    if (!worst.seen) {
      std::printf("  %s: not run\n", goal.description.c_str());
      continue;
    }
    const bool met =
        goal.at_least ? worst.value >= goal.threshold : worst.value <= goal.threshold;
    std::printf("  %s: %.3g%s (%s) %s\n", goal.description.c_str(), worst.value,
                goal.counter.empty() ? " ns" : "", worst.run_name.c_str(),
                met ? "met" : "MISSED");
  }
  std::fflush(stdout);
}

}  // namespace sparse_mlp::bench
