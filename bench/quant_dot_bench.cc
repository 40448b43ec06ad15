// The decision the quantization issue asks for, by measurement: on int8
// rows with groups of 32 (the gate and up rows of an MLP, T = 1), is the
// shipped kernel (dequantize in registers, float32 x: mlp/quant_kernels.h)
// or an integer kernel (x quantized per group of 32 to int8 as llama.cpp's
// q8_0 does, products summed by AVX-512 VNNI vpdpbusd) nearer the read
// floor of the same bytes?
//
//   bazel run //bench:quant_dot            # llama-3.2-3b gate + up rows
//   bazel run //bench:quant_dot -- --help
//
// Per repetition, interleaved, each from cold caches (a 96 MiB scrub):
//   floor   a vectorized read of the rows' bytes (bench/read_floor.h)
//   float   the shipped AVX-512 dot over every row (x float32)
//   vnni    x quantized (timed with the call), then the integer dot
// The integer kernel here is the experiment, not a product path: its
// results differ from the float kernel by x's rounding to int8 (the table
// shows the largest difference relative to the row's |w| . |x|), which the
// product's exactness contract (float64 on the dequantized weights) does
// not allow without a new, opt-in mode. Needs AVX-512 VNNI; says so and
// exits otherwise.
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized in their own
// reductions (the kernels of mlp/ silence it the same way).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "bench/model_presets.h"
#include "bench/optimized_build_check.h"
#include "bench/read_floor.h"
#include "bench/synthetic_weights.h"
#include "bench/timing.h"
#include "mlp/quant_kernels.h"
#include "platform/float16.h"
#include "platform/simd_level.h"
#include "quant/format.h"
#include "quant/quantize.h"

ABSL_FLAG(std::string, model, "llama-3.2-3b", "shape preset (see //bench:cache --help)");
ABSL_FLAG(int, threads, 2, "threads of every call");
ABSL_FLAG(int, reps, 15, "timed repetitions (medians are reported)");

namespace sparse_mlp::bench {
namespace {

#define VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")))

constexpr size_t kGroup = 32;

// x quantized per group of 32: xu[c] = round(x[c] / xs[g]) + 128 as uint8
// (vpdpbusd multiplies unsigned by signed bytes), xs[g] = max|x| / 127.
void QuantizeX(const float* x, size_t h, uint8_t* xu, float* xs) {
  for (size_t g = 0; g < h / kGroup; ++g) {
    float m = 0;
    for (size_t c = 0; c < kGroup; ++c) m = std::max(m, std::fabs(x[g * kGroup + c]));
    const float s = m / 127.0f, inv = s > 0 ? 1.0f / s : 0.0f;
    xs[g] = s;
    for (size_t c = 0; c < kGroup; ++c) {
      xu[g * kGroup + c] = static_cast<uint8_t>(std::lrint(x[g * kGroup + c] * inv) + 128);
    }
  }
}

// <w_row, x> with x quantized: per pair of groups (64 bytes), d = sum
// xu * w - 128 sum w (two vpdpbusd), converted once and scaled per group
// (row scale x x scale, each group's 8 lanes). h a multiple of 512.
VNNI_TARGET float VnniRowDot(const uint8_t* row, const quant::RowLayout& l, const uint8_t* xu,
                             const float* xs) {
  const __m512i c128 = _mm512_set1_epi8(static_cast<char>(0x80));
  // Lane -> group of the pair: lanes 0-7 the even group, 8-15 the odd one.
  __m512 acc = _mm512_setzero_ps();
  const size_t groups = l.groups();
  for (size_t g0 = 0; g0 < groups; g0 += 16) {
    const __m512 ws = _mm512_cvtph_ps(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + l.scale_offset() + 2 * g0)));
    const __m512 s = _mm512_mul_ps(ws, _mm512_loadu_ps(xs + g0));
    for (int p = 0; p < 8; ++p) {
      const size_t at = (g0 + 2 * static_cast<size_t>(p)) * kGroup;
      const __m512i w = _mm512_loadu_si512(row + at);
      const __m512i xv = _mm512_loadu_si512(xu + at);
      const __m512i d = _mm512_sub_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), xv, w),
                                         _mm512_dpbusd_epi32(_mm512_setzero_si512(), c128, w));
      const __m512i idx = _mm512_set_epi32(2 * p + 1, 2 * p + 1, 2 * p + 1, 2 * p + 1,
                                           2 * p + 1, 2 * p + 1, 2 * p + 1, 2 * p + 1, 2 * p,
                                           2 * p, 2 * p, 2 * p, 2 * p, 2 * p, 2 * p, 2 * p);
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_permutexvar_ps(idx, s), acc);
    }
  }
  return _mm512_reduce_add_ps(acc);
}

// The CPU's model name, from /proc/cpuinfo ("unknown" elsewhere).
std::string CpuName() {
  std::FILE* f = std::fopen("/proc/cpuinfo", "r");
  if (f == nullptr) return "unknown";
  char line[512];
  std::string name = "unknown";
  while (std::fgets(line, sizeof line, f) != nullptr) {
    const std::string l(line);
    if (l.rfind("model name", 0) == 0 && l.find(':') != std::string::npos) {
      name = l.substr(l.find(':') + 2);
      if (!name.empty() && name.back() == '\n') name.pop_back();
      break;
    }
  }
  std::fclose(f);
  return name;
}

int Run() {
  if (!HasCpuFeature(CpuFeature::kAvx512Vnni)) {
    std::printf("quant_dot: this CPU has no AVX-512 VNNI; nothing to compare\n");
    return 0;
  }
  const ModelPreset* found = FindModelPreset(absl::GetFlag(FLAGS_model));
  if (found == nullptr) {
    std::printf("quant_dot: unknown --model %s\n", absl::GetFlag(FLAGS_model).c_str());
    return 1;
  }
  const ModelPreset preset = *found;
  const size_t h = preset.hidden, rows = 2 * preset.intermediate;  // gate and up
  const int threads = absl::GetFlag(FLAGS_threads);
  if (h % 512 != 0) {
    std::printf("quant_dot: H = %zu is not a multiple of 512\n", h);
    return 1;
  }
  const quant::RowLayout l = *quant::RowLayout::Create({quant::QuantType::kInt8, kGroup}, h);
  const memory::AlignedBuffer w = RandomQuantRows(rows, l, 7, threads);
  std::vector<float> x(h), out_float(rows), out_vnni(rows), xs(h / kGroup);
  std::vector<uint8_t> xu(h);
  std::mt19937 rng(3);
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (float& v : x) v = d(rng);
  const mlp::internal::QuantKernels k =
      mlp::internal::SelectQuantKernels(quant::QuantType::kInt8, SimdLevel::kAvx512);
  const size_t rb = l.row_bytes();
  const uint8_t* base = w.data();
  auto run_float = [&] {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < static_cast<long>(rows); r += 2) {
      const void* rr[2] = {base + r * rb, base + (r + 1) * rb};
      k.dot(rr, 2, x.data(), h, 1, l, out_float.data() + r);
    }
  };
  auto run_vnni = [&] {
    QuantizeX(x.data(), h, xu.data(), xs.data());
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < static_cast<long>(rows); ++r) {
      out_vnni[r] = VnniRowDot(base + r * rb, l, xu.data(), xs.data());
    }
  };
  Scrubber scrub;
  std::vector<double> t_floor, t_float, t_vnni;
  const int reps = absl::GetFlag(FLAGS_reps);
  for (int rep = 0; rep < reps; ++rep) {
    scrub.Scrub(threads);
    t_floor.push_back(SecondsOf([&] { ReadRanges({{base, rows * rb}}, threads); }));
    scrub.Scrub(threads);
    t_float.push_back(SecondsOf(run_float));
    scrub.Scrub(threads);
    t_vnni.push_back(SecondsOf(run_vnni));
  }
  // The integer kernel's difference, relative to sum |w| |x| of the row.
  double worst = 0;
  for (size_t r = 0; r < rows; ++r) {
    double mag = 0;
    for (size_t c = 0; c < h; ++c) mag += std::fabs(quant::WeightAt(l, base + r * rb, c) * x[c]);
    worst = std::max(worst, std::fabs(double{out_vnni[r]} - out_float[r]) / mag);
  }
  const double bytes = static_cast<double>(rows * rb);
  const double f = Median(t_floor), a = Median(t_float), b = Median(t_vnni);
  std::printf("quant_dot: %s, int8 groups of 32, %zu rows x %zu (gate + up), %.1f MB, T = 1, "
              "%d threads, %s, medians of %d interleaved cold-cache runs\n",
              preset.name, rows, h, bytes / 1e6, threads, CpuName().c_str(), reps);
  std::printf("%-8s %9s %9s %10s %12s\n", "kernel", "ms", "x_floor", "GB/s", "G weights/s");
  const double weights = static_cast<double>(rows * h);
  for (auto [name, t] : {std::pair<const char*, double>{"floor", f}, {"float", a}, {"vnni", b}}) {
    std::printf("%-8s %9.3f %9.2f %10.1f %12.1f\n", name, t * 1e3, t / f, bytes / t / 1e9,
                weights / t / 1e9);
  }
  std::printf("vnni / float: %.2fx the time; largest |vnni - float| / (|w| . |x|) = %.2e "
              "(x rounded to int8 per group)\n",
              b / a, worst);
  return 0;
}

}  // namespace
}  // namespace sparse_mlp::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("int8 dot kernels against the read floor (see the header)");
  absl::ParseCommandLine(argc, argv);
  sparse_mlp::bench::RequireOptimizedBuild();
  return sparse_mlp::bench::Run();
}
