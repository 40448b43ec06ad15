#include "platform/simd_level.h"

#if SPARSE_MLP_X86
#include <cpuid.h>
#endif

namespace sparse_mlp {
namespace {

struct CpuLevels {
  bool avx2 = false;
  bool avx512 = false;
  bool vpopcntdq = false, bf16 = false, fma = false, f16c = false, vnni = false;
};

CpuLevels Detect() {
  CpuLevels l;
#if SPARSE_MLP_X86
  __builtin_cpu_init();
  // Every instruction the kAvx2 kernels use (BMI1: andn, tzcnt; BMI2: bzhi).
  l.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi") &&
           __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt");
  l.avx512 = l.avx2 && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512dq");
  l.vpopcntdq = l.avx512 && __builtin_cpu_supports("avx512vpopcntdq");
  // AVX512_BF16 is CPUID leaf 7, sub-leaf 1, EAX bit 5 (clang 14's
  // __builtin_cpu_supports does not know the feature's name).
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  l.bf16 = l.avx512 && __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) != 0 &&
           ((eax >> 5) & 1) != 0;
  l.vnni = l.avx512 && __builtin_cpu_supports("avx512vnni");
  l.fma = __builtin_cpu_supports("fma");
  // F16C: CPUID leaf 1, ECX bit 29 (also unknown to clang 14's builtin).
  l.f16c = __builtin_cpu_supports("avx") && __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 &&
           ((ecx >> 29) & 1) != 0;
#endif
  return l;
}

const CpuLevels& Levels() {
  static const CpuLevels levels = Detect();
  return levels;
}

}  // namespace

bool HasCpuFeature(CpuFeature feature) {
  switch (feature) {
    case CpuFeature::kAvx512Vpopcntdq:
      return Levels().vpopcntdq;
    case CpuFeature::kAvx512Bf16:
      return Levels().bf16;
    case CpuFeature::kAvx512Vnni:
      return Levels().vnni;
    case CpuFeature::kFma:
      return Levels().fma;
    case CpuFeature::kF16c:
      return Levels().f16c;
  }
  return false;
}

bool IsSupported(SimdLevel level) {
  switch (level) {
    case SimdLevel::kScalar:
    case SimdLevel::kBest:
      return true;
    case SimdLevel::kAvx2:
      return Levels().avx2;
    case SimdLevel::kAvx512:
      return Levels().avx512;
  }
  return false;
}

SimdLevel Resolve(SimdLevel level) {
  if (level == SimdLevel::kBest) level = SimdLevel::kAvx512;
  if (level == SimdLevel::kAvx512 && !Levels().avx512) level = SimdLevel::kAvx2;
  if (level == SimdLevel::kAvx2 && !Levels().avx2) level = SimdLevel::kScalar;
  return level;
}

std::vector<SimdLevel> SupportedSimdLevels() {
  std::vector<SimdLevel> levels = {SimdLevel::kScalar};
  if (Levels().avx2) levels.push_back(SimdLevel::kAvx2);
  if (Levels().avx512) levels.push_back(SimdLevel::kAvx512);
  return levels;
}

}  // namespace sparse_mlp
