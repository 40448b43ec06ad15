// Where the time of the int8 forward goes, kernel by kernel, against the
// read floor of the same bytes (the measurement behind
// ForwardOptions::quantize_x):
//
//   bazel run //bench:quant_dot            # llama-3.2-3b, int8 groups of 32
//   bazel run //bench:quant_dot -- --help
//
// Per repetition, interleaved, each from cold caches (a 96 MiB scrub):
//   floor gate+up   a vectorized read of the gate and up rows
//   dot float       the dequantize-in-registers dot over them (x float32)
//   dot int8        the integer dot (x rounded per block of 32; AVX-512
//                   VNNI), the rounding of x timed with it
//   floor down      a read of the down rows
//   axpy            the down projection's kernel over them (float32)
//   floor all       a read of all three
//   forward         mlp::ForwardQuant over every neuron, x float32
//   forward x8      the same with quantize_x
// T = 1. Without AVX-512 VNNI the int8 rows are skipped (the forward's
// quantize_x then runs the float kernels on the rounded x).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "bench/model_presets.h"
#include "bench/optimized_build_check.h"
#include "bench/process_stats.h"
#include "bench/read_floor.h"
#include "bench/synthetic_weights.h"
#include "bench/timing.h"
#include "mlp/kernels.h"
#include "mlp/quant_forward.h"
#include "mlp/quant_kernels.h"
#include "platform/simd_level.h"
#include "quant/format.h"
#include "quant/quantize.h"

ABSL_FLAG(std::string, model, "llama-3.2-3b", "shape preset (see //bench:cache --help)");
ABSL_FLAG(int, group, 32, "int8 weights per scale (0: the whole row)");
ABSL_FLAG(int, threads, 2, "threads of every call");
ABSL_FLAG(int, reps, 15, "timed repetitions (medians are reported)");

namespace sparse_mlp::bench {
namespace {

struct Op {
  std::string name;
  double bytes;
  std::string floor;  // the op whose time is this one's floor
  std::function<void()> run;
};

int Run() {
  const ModelPreset* preset = FindModelPreset(absl::GetFlag(FLAGS_model));
  if (preset == nullptr) {
    std::printf("quant_dot: unknown --model %s\n", absl::GetFlag(FLAGS_model).c_str());
    return 1;
  }
  const size_t h = preset->hidden, inter = preset->intermediate;
  const int threads = absl::GetFlag(FLAGS_threads);
  const absl::StatusOr<quant::RowLayout> made = quant::RowLayout::Create(
      {quant::QuantType::kInt8, static_cast<size_t>(absl::GetFlag(FLAGS_group))}, h);
  if (!made.ok() || h % 32 != 0) {
    std::printf("quant_dot: %s\n", made.ok() ? "H is not a multiple of 32"
                                             : std::string(made.status().message()).c_str());
    return 1;
  }
  const quant::RowLayout l = *made;
  const size_t rb = l.row_bytes();
  // gate rows [0, I), up rows [I, 2I) in one array; down rows apart.
  const memory::AlignedBuffer gate_up = RandomQuantRows(2 * inter, l, 7, threads);
  const memory::AlignedBuffer down = RandomQuantRows(inter, l, 9, threads);
  const uint8_t* gu = gate_up.data();
  std::vector<float> x(h), y(h), dots(2 * inter);
  std::mt19937 rng(3);
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (float& v : x) v = d(rng);
  const mlp::internal::QuantKernels k =
      mlp::internal::SelectQuantKernels(quant::QuantType::kInt8, SimdLevel::kBest);
  memory::AlignedBuffer int8_x = Buffer(mlp::internal::Int8XBytes(h));
  const mlp::QuantNeuronRows rows{{l.type(), l.group()}, h,  inter,       gu, rb,
                                  gu + inter * rb,       rb, down.data(), rb};
  mlp::Workspace ws;
  mlp::ForwardOptions fo;
  fo.num_threads = threads;
  mlp::ForwardOptions fx = fo;
  fx.quantize_x = true;
  std::vector<std::vector<float>> partial(threads, std::vector<float>(h));
  const std::vector<float> coef(mlp::internal::kMaxAxpyRows, 0.01f);
  // The forward's pairing at one token: gate j and up j in one call.
  auto dot_pass = [&](bool integer) {
    const mlp::internal::Int8X xi =
        integer ? mlp::internal::QuantizeX(x.data(), h, int8_x.data()) : mlp::internal::Int8X{};
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long j = 0; j < static_cast<long>(inter); ++j) {
      const void* r[2] = {gu + j * rb, gu + (inter + j) * rb};
      if (integer) {
        k.dot_int8(r, 2, &xi, 1, l, dots.data() + 2 * j);
      } else {
        k.dot(r, 2, x.data(), h, 1, l, dots.data() + 2 * j);
      }
    }
  };
  // The down projection's kernel, blocks of kMaxAxpyRows rows per call.
  auto axpy_pass = [&] {
#pragma omp parallel num_threads(threads)
    {
      const size_t t = static_cast<size_t>(omp_get_thread_num());
      const size_t n = static_cast<size_t>(omp_get_num_threads());
      const size_t b = inter * t / n, e = inter * (t + 1) / n;
      for (size_t j = b; j < e; j += mlp::internal::kMaxAxpyRows) {
        const void* r[mlp::internal::kMaxAxpyRows];
        const size_t m = std::min(mlp::internal::kMaxAxpyRows, e - j);
        for (size_t q = 0; q < m; ++q) r[q] = down.data() + (j + q) * rb;
        k.axpy(r, m, coef.data(), 1, l, partial[t].data(), h);
      }
    }
  };
  const double gu_bytes = 2.0 * inter * rb, down_bytes = 1.0 * inter * rb;
  std::vector<Op> ops = {
      {"floor gate+up", gu_bytes, "",
       [&] {
         ReadRanges({{gu, 2 * inter * rb}}, threads);
       }},
      {"dot float", gu_bytes, "floor gate+up", [&] { dot_pass(false); }},
      {"floor down", down_bytes, "",
       [&] {
         ReadRanges({{down.data(), inter * rb}}, threads);
       }},
      {"axpy", down_bytes, "floor down", axpy_pass},
      {"floor all", gu_bytes + down_bytes, "",
       [&] {
         ReadRanges({{gu, 2 * inter * rb}, {down.data(), inter * rb}}, threads);
       }},
      {"forward", gu_bytes + down_bytes, "floor all",
       [&] {
         (void)mlp::ForwardQuant(rows, {x.data(), 1, h}, {y.data(), 1, h}, fo, &ws);
       }},
      {"forward x8", gu_bytes + down_bytes, "floor all",
       [&] {
         (void)mlp::ForwardQuant(rows, {x.data(), 1, h}, {y.data(), 1, h}, fx, &ws);
       }},
  };
  if (k.dot_int8 != nullptr) {
    ops.insert(ops.begin() + 2, {"dot int8", gu_bytes, "floor gate+up", [&] { dot_pass(true); }});
  }
  Scrubber scrub;
  for (const Op& op : ops) op.run();  // warm-up: first touch, the OpenMP team
  std::vector<std::vector<double>> samples(ops.size());
  const int reps = absl::GetFlag(FLAGS_reps);
  for (int rep = 0; rep < reps; ++rep) {
    for (size_t i = 0; i < ops.size(); ++i) {
      const size_t which = (i + static_cast<size_t>(rep)) % ops.size();
      scrub.Scrub(threads);
      samples[which].push_back(SecondsOf(ops[which].run));
    }
  }
  std::printf(
      "quant_dot: %s, int8 group %zu, I = %zu, H = %zu, T = 1, %d threads, %s; medians "
      "of %d interleaved cold-cache runs\n",
      preset->name, l.group(), inter, h, threads, CpuName().c_str(), reps);
  std::printf("%-14s %9s %8s %9s\n", "op", "ms", "GB/s", "x_floor");
  std::vector<double> med(ops.size());
  for (size_t i = 0; i < ops.size(); ++i) med[i] = Median(samples[i]);
  for (size_t i = 0; i < ops.size(); ++i) {
    double floor = med[i];
    for (size_t j = 0; j < ops.size(); ++j) {
      if (ops[j].name == ops[i].floor) floor = med[j];
    }
    std::printf("%-14s %9.3f %8.1f %9.2f\n", ops[i].name.c_str(), med[i] * 1e3,
                ops[i].bytes / med[i] / 1e9, med[i] / floor);
  }
  if (k.dot_int8 == nullptr) std::printf("(no AVX-512 VNNI here: no integer dot)\n");
  return 0;
}

}  // namespace
}  // namespace sparse_mlp::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("int8 forward kernels against the read floor (see the header)");
  absl::ParseCommandLine(argc, argv);
  sparse_mlp::bench::RequireOptimizedBuild();
  return sparse_mlp::bench::Run();
}
