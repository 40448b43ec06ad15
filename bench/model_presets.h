// MLP shapes of the models the benchmarks measure (--model=NAME).
#ifndef SPARSE_MLP_BENCH_MODEL_PRESETS_H_
#define SPARSE_MLP_BENCH_MODEL_PRESETS_H_

#include <cstddef>
#include <string>

namespace sparse_mlp::bench {

struct ModelPreset {
  const char* name;
  size_t hidden, intermediate;
};

inline constexpr ModelPreset kModelPresets[] = {{"llama-3.2-1b", 2048, 8192},
                                                {"llama-3.2-3b", 3072, 8192},
                                                {"qwen2-1.5b", 1536, 8960},
                                                {"llama-2-7b", 4096, 11008},
                                                {"mistral-7b", 4096, 14336},
                                                {"llama-3-8b", 4096, 14336}};

// The preset called `name`, or null.
inline const ModelPreset* FindModelPreset(const std::string& name) {
  for (const ModelPreset& p : kModelPresets) {
    if (name == p.name) return &p;
  }
  return nullptr;
}

}  // namespace sparse_mlp::bench

#endif  // SPARSE_MLP_BENCH_MODEL_PRESETS_H_
