// Instruction-set levels of the SIMD kernels in diff/ and gather/, and the
// runtime check that picks one.
//
// Every kernel has a portable scalar version (the reference) and, where it
// pays, AVX2 and AVX-512 versions compiled per function with
// __attribute__((target(...))). Callers pass a SimdLevel; kBest resolves to
// the highest level this CPU runs. Tests pass every supported level and
// compare against kScalar.
//
// Thread-safe; no allocation; O(1) (the CPU is queried once).
#ifndef SPARSE_MLP_PLATFORM_SIMD_LEVEL_H_
#define SPARSE_MLP_PLATFORM_SIMD_LEVEL_H_

#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "platform/enum_names.h"

namespace sparse_mlp {

enum class SimdLevel {
  kScalar,  // portable C++, the reference
  kAvx2,    // AVX2 + BMI2 + POPCNT
  kAvx512,  // AVX-512 F/BW/VL/DQ + VPOPCNTDQ (Ice Lake, Zen 4 and later)
  kBest,    // resolves to the highest supported level
};

// True when this CPU can run kernels of `level` (kScalar and kBest: always).
bool IsSupported(SimdLevel level);

// kBest -> the highest supported level; an unsupported level -> the highest
// supported level below it; any other level unchanged.
SimdLevel Resolve(SimdLevel level);

// The supported concrete levels, kScalar first (for tests and benchmarks).
std::vector<SimdLevel> SupportedSimdLevels();

inline constexpr EnumName<SimdLevel> kSimdLevelNames[] = {
    {SimdLevel::kScalar, "scalar"},
    {SimdLevel::kAvx2, "avx2"},
    {SimdLevel::kAvx512, "avx512"},
    {SimdLevel::kBest, "best"},
};

// "scalar", "avx2", "avx512", "best", and back (InvalidArgument naming the
// choices for any other name).
constexpr const char* SimdLevelName(SimdLevel level) {
  return NameOf(kSimdLevelNames, level);
}
inline absl::StatusOr<SimdLevel> ParseSimdLevel(absl::string_view name) {
  return ParseName(kSimdLevelNames, name, "SIMD level");
}

}  // namespace sparse_mlp

#endif  // SPARSE_MLP_PLATFORM_SIMD_LEVEL_H_
