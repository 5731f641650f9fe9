#pragma once
// Activation functions, parsed once from config.json strings ("hidden_act",
// "hidden_activation", "act_fn", diffusers' "act_fn"). Torch-free: the families'
// config readers use it, and it is fuzzed with them.
#include <string>
#include <string_view>

namespace mpool::nn {

/// The activations the blocks apply.
enum class Activation {
  kGelu,       ///< exact (erf) GELU: "gelu"
  kGeluTanh,   ///< tanh approximation: "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_tanh"
  kQuickGelu,  ///< x * sigmoid(1.702 x): "quick_gelu" (CLIP)
  kRelu,       ///< "relu"
  kSilu,       ///< "silu", "swish"
};

/// Parses a config string; InvalidInput names `where` (e.g. `config.json: "hidden_act"`)
/// and the accepted names.
Activation parse_activation(std::string_view name, std::string_view where);

/// The canonical name ("gelu", "gelu_tanh", "quick_gelu", "relu", "silu").
const char* activation_name(Activation act) noexcept;

}  // namespace mpool::nn
