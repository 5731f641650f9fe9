#include "models/decoder/config.h"

#include <algorithm>
#include <cmath>

#include "mpool/base/error.h"

namespace mpool::models::decoder {

DecoderConfig DecoderConfig::from(const loading::ModelConfig& c) {
  DecoderConfig l;
  static_cast<loading::TransformerSizes&>(l) =
      loading::TransformerSizes::require(c, kModelTypes, "a decoder of the llama family");
  l.num_kv_heads = c.num_key_value_heads.value_or(l.num_heads);
  check(l.num_kv_heads > 0 && l.num_heads % l.num_kv_heads == 0, ErrorCode::kInvalidInput,
        "config.json: num_attention_heads " + std::to_string(l.num_heads) +
            " is not a multiple of num_key_value_heads " + std::to_string(l.num_kv_heads));
  l.head_dim = c.head_dim.value_or(0) > 0 ? loading::require_positive(c.head_dim, "head_dim")
                                          : l.hidden_size / l.num_heads;
  check(c.head_dim.value_or(0) > 0 || l.hidden_size % l.num_heads == 0, ErrorCode::kInvalidInput,
        "config.json: hidden_size " + std::to_string(l.hidden_size) + " is not divisible by num_attention_heads " +
            std::to_string(l.num_heads) + " and no head_dim is given");
  l.rms_norm_eps = c.rms_norm_eps.value_or(1e-6);
  l.tie_word_embeddings = c.tie_word_embeddings.value_or(false);
  const std::string act = c.hidden_act.value_or("silu");
  check(act == "silu" || act == "swish", ErrorCode::kInvalidInput,
        "config.json: hidden_act '" + act + "' is not supported by the decoder family (silu)");
  const bool attention_bias = c.raw.get_or<bool>("attention_bias", false);
  l.qkv_bias = c.model_type == "qwen2" || attention_bias;
  l.o_bias = attention_bias;
  l.mlp_bias = c.raw.get_or<bool>("mlp_bias", false);
  l.qk_norm = c.model_type == "qwen3";

  // Sliding windows: layer_types when the file lists them; otherwise Mistral and
  // Phi-3 slide in every layer when sliding_window is set, Qwen2/3 only with
  // use_sliding_window and from max_window_layers on.
  const int64_t window = c.raw.get_or<int64_t>("sliding_window", 0);
  l.sliding_window.assign(static_cast<size_t>(l.num_layers), 0);
  if (c.raw.has("layer_types")) {
    auto types = c.raw.get<std::vector<std::string>>("layer_types");
    check(types.size() == static_cast<size_t>(l.num_layers), ErrorCode::kInvalidInput,
          "config.json: \"layer_types\" has " + std::to_string(types.size()) + " entries for " +
              std::to_string(l.num_layers) + " layers");
    for (size_t i = 0; i < types.size(); ++i) {
      check(types[i] == "full_attention" || types[i] == "sliding_attention", ErrorCode::kInvalidInput,
            "config.json: layer_types[" + std::to_string(i) + "] is '" + types[i] +
                "' (full_attention or sliding_attention)");
      if (types[i] == "sliding_attention") {
        check(window > 0, ErrorCode::kInvalidInput,
              "config.json: layer " + std::to_string(i) + " is sliding_attention but \"sliding_window\" is not set");
        l.sliding_window[i] = window;
      }
    }
  } else if (window > 0) {
    const bool qwen = c.model_type == "qwen2" || c.model_type == "qwen3";
    const bool use = !qwen || c.raw.get_or<bool>("use_sliding_window", false);
    const int64_t from = qwen ? c.raw.get_or<int64_t>("max_window_layers", 0) : 0;
    for (int64_t i = 0; i < l.num_layers; ++i)
      if (use && i >= from) l.sliding_window[static_cast<size_t>(i)] = window;
  }
  l.rope = nn::read_rope_config(c, l.head_dim, l.max_position_embeddings);
  l.eos_token_id = c.eos_token_id;
  return l;
}

}  // namespace mpool::models::decoder
