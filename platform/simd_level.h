// Instruction-set levels of the SIMD kernels in diff/ and gather/, the CPU
// features behind them, and the runtime check that picks one.
//
// Every kernel has a portable scalar version (the reference, the only one
// compiled on other architectures: SPARSE_MLP_X86 is 0 there) and, where it
// pays, AVX2 and AVX-512 versions compiled per function with
// __attribute__((target(...))). Callers pass a SimdLevel; kBest resolves to
// the highest level this CPU runs. A level asks for what every kernel of it
// uses; a kernel that needs more (VPOPCNTDQ for the AVX-512 popcounts)
// checks HasCpuFeature once and otherwise takes the level below for that
// kernel alone, so Skylake-SP and Cascade Lake (AVX-512 without VPOPCNTDQ)
// run the AVX-512 copies and transposes. Tests pass every supported level
// and compare against kScalar.
//
// Thread-safe; no allocation; O(1) (the CPU is queried once).
#ifndef SPARSE_MLP_PLATFORM_SIMD_LEVEL_H_
#define SPARSE_MLP_PLATFORM_SIMD_LEVEL_H_

#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "platform/enum_names.h"

namespace sparse_mlp {

#if defined(__x86_64__) || defined(__i386__)
#define SPARSE_MLP_X86 1
#else
#define SPARSE_MLP_X86 0
#endif

enum class SimdLevel {
  kScalar,  // portable C++, the reference
  kAvx2,    // AVX2 + BMI1 + BMI2 + POPCNT (Haswell, Zen and later)
  kAvx512,  // kAvx2 + AVX-512 F/BW/VL/DQ (Skylake-SP, Zen 4 and later)
  kBest,    // resolves to the highest supported level
};

// Single features, for kernels that need more than their level.
enum class CpuFeature {
  kAvx512Vpopcntdq,  // vector popcount (Ice Lake, Zen 4)
  kAvx512Bf16,       // bf16 dot products (Cooper Lake, Zen 4)
  kAvx512Vnni,       // int8 dot products, vpdpbusd (Cascade Lake, Zen 4)
  kFma,
  kF16c,
};

// False on every feature off x86.
bool HasCpuFeature(CpuFeature feature);

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

// SimdLevelName: "scalar", "avx2", "avx512", "best"; ParseSimdLevel: the
// inverse (InvalidArgument naming the choices for any other name).
SPARSE_MLP_ENUM_NAME_FUNCTIONS(SimdLevel, kSimdLevelNames, SimdLevelName, ParseSimdLevel,
                               "SIMD level")

}  // namespace sparse_mlp

#endif  // SPARSE_MLP_PLATFORM_SIMD_LEVEL_H_
