#include "platform/simd_level.h"

namespace sparse_mlp {
namespace {

struct CpuLevels {
  bool avx2 = false;
  bool avx512 = false;
  bool vpopcntdq = false, bf16 = false, fma = false, f16c = false;
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
  l.bf16 = l.avx512 && __builtin_cpu_supports("avx512bf16");
  l.fma = __builtin_cpu_supports("fma");
  l.f16c = __builtin_cpu_supports("f16c");
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
