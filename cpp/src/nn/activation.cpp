#include "mpool/nn/activation.h"

#include <utility>

#include "mpool/base/error.h"

namespace mpool::nn {

Activation parse_activation(std::string_view name, std::string_view where) {
  static const std::pair<std::string_view, Activation> kNames[] = {
      {"gelu", Activation::kGelu},           {"gelu_new", Activation::kGeluTanh},
      {"gelu_pytorch_tanh", Activation::kGeluTanh}, {"gelu_fast", Activation::kGeluTanh},
      {"gelu_tanh", Activation::kGeluTanh},  {"quick_gelu", Activation::kQuickGelu},
      {"relu", Activation::kRelu},           {"silu", Activation::kSilu},
      {"swish", Activation::kSilu},
  };
  for (const auto& [n, a] : kNames)
    if (n == name) return a;
  throw Error(ErrorCode::kInvalidInput,
              std::string(where) + ": activation '" + std::string(name) +
                  "' is not supported (gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, gelu_tanh, quick_gelu, relu, "
                  "silu, swish)");
}

const char* activation_name(Activation act) noexcept {
  switch (act) {
    case Activation::kGelu: return "gelu";
    case Activation::kGeluTanh: return "gelu_tanh";
    case Activation::kQuickGelu: return "quick_gelu";
    case Activation::kRelu: return "relu";
    case Activation::kSilu: return "silu";
  }
  return "?";
}

}  // namespace mpool::nn
