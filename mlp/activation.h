// Activation functions of gated and plain MLPs, with their names.
//
// Thread-safe; no allocation; O(1) per value.
#ifndef SPARSE_MLP_MLP_ACTIVATION_H_
#define SPARSE_MLP_MLP_ACTIVATION_H_

#include <cmath>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "platform/enum_names.h"

namespace sparse_mlp::mlp {

enum class Activation {
  kSiLU,      // x * sigmoid(x) (LLaMA, Mistral, Qwen)
  kGeluTanh,  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (Gemma, GPT-2)
  kReLU,      // max(x, 0) (OPT and ReLU-fied models)
};

inline constexpr EnumName<Activation> kActivationNames[] = {
    {Activation::kSiLU, "silu"},
    {Activation::kGeluTanh, "gelu_tanh"},
    {Activation::kReLU, "relu"},
};

// ActivationName: "silu", "gelu_tanh", "relu"; ParseActivation: the inverse
// (InvalidArgument naming the choices for any other name).
SPARSE_MLP_ENUM_NAME_FUNCTIONS(Activation, kActivationNames, ActivationName,
                               ParseActivation, "activation")

// The activation in float (what every kernel applies to a neuron's
// pre-activation). NaN in, NaN out.
inline float Activate(Activation activation, float x) {
  switch (activation) {
    case Activation::kSiLU:
      return x / (1.0f + std::exp(-x));
    case Activation::kGeluTanh:
      return 0.5f * x * (1.0f + std::tanh(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    case Activation::kReLU:
      return x > 0.0f ? x : (x == x ? 0.0f : x);
  }
  return x;
}

}  // namespace sparse_mlp::mlp

#endif  // SPARSE_MLP_MLP_ACTIVATION_H_
