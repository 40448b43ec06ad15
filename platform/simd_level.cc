#include "platform/simd_level.h"

namespace sparse_mlp {
namespace {

struct CpuLevels {
  bool avx2;
  bool avx512;
};

CpuLevels Detect() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") &&
                    __builtin_cpu_supports("bmi2") &&
                    __builtin_cpu_supports("popcnt");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512vpopcntdq");
  return {avx2, avx512};
#else
  return {false, false};
#endif
}

const CpuLevels& Levels() {
  static const CpuLevels levels = Detect();
  return levels;
}

}  // namespace

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
