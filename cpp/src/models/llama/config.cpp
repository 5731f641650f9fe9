#include "mpool/models/llama/config.h"

#include <algorithm>
#include <cmath>

#include "mpool/core/error.h"

namespace mpool::models::llama {
namespace {

// rope_parameters (transformers 5) or rope_scaling (older files), or nothing.
std::optional<loading::JsonView> rope_node(const loading::ModelConfig& c) {
  if (auto r = c.raw.child("rope_parameters")) return r;
  return c.raw.child("rope_scaling");
}

RopeConfig read_rope(const loading::ModelConfig& c, const LlamaConfig& l) {
  RopeConfig r;
  r.theta = c.rope_theta.value_or(10000.0);
  r.max_position_embeddings = l.max_position_embeddings;
  double partial = c.partial_rotary_factor.value_or(1.0);
  auto node = rope_node(c);
  if (node) {
    r.type = node->has("rope_type") ? node->get<std::string>("rope_type") : node->get_or<std::string>("type", "default");
    if (node->has("partial_rotary_factor")) partial = node->get<double>("partial_rotary_factor");
  }
  if (r.type == "su") r.type = "longrope";  // the name early Phi-3 files use
  check(partial > 0 && partial <= 1, ErrorCode::kInvalidInput,
        "config.json: \"partial_rotary_factor\" must be in (0, 1], got " + std::to_string(partial));
  r.rotary_dim = static_cast<int64_t>(static_cast<double>(l.head_dim) * partial);
  check(r.rotary_dim >= 2 && r.rotary_dim % 2 == 0, ErrorCode::kInvalidInput,
        "config.json: the rotary part of each head (" + std::to_string(r.rotary_dim) + ") must be even and >= 2");
  r.original_max_position_embeddings =
      c.raw.get_or<int64_t>("original_max_position_embeddings", l.max_position_embeddings);
  if (!node || r.type == "default") return r;
  const std::string where = "config.json: rope type '" + r.type + "'";
  if (node->has("original_max_position_embeddings"))
    r.original_max_position_embeddings = node->get<int64_t>("original_max_position_embeddings");
  check(r.original_max_position_embeddings > 0 && r.original_max_position_embeddings <= loading::kMaxConfigDimension,
        ErrorCode::kInvalidInput,
        where + ": \"original_max_position_embeddings\" must be in [1, " +
            std::to_string(loading::kMaxConfigDimension) + "], got " +
            std::to_string(r.original_max_position_embeddings));
  if (r.type == "linear" || r.type == "dynamic" || r.type == "llama3") {
    check(node->has("factor"), ErrorCode::kInvalidInput, where + " needs \"factor\"");
    r.factor = node->get<double>("factor");
    check(r.factor > 0, ErrorCode::kInvalidInput, where + ": \"factor\" must be > 0");
    // family.cpp serves dynamic up to max_position_embeddings x factor positions.
    check(r.type != "dynamic" ||
              static_cast<double>(l.max_position_embeddings) * r.factor <= static_cast<double>(loading::kMaxConfigDimension),
          ErrorCode::kInvalidInput,
          where + ": max_position_embeddings x factor must be at most " + std::to_string(loading::kMaxConfigDimension));
  }
  if (r.type == "llama3") {
    r.low_freq_factor = node->get<double>("low_freq_factor");
    r.high_freq_factor = node->get<double>("high_freq_factor");
    check(node->has("original_max_position_embeddings"), ErrorCode::kInvalidInput,
          where + " needs \"original_max_position_embeddings\"");
    check(r.high_freq_factor != r.low_freq_factor, ErrorCode::kInvalidInput,
          where + ": high_freq_factor must differ from low_freq_factor");
  } else if (r.type == "longrope") {
    r.short_factor = node->get<std::vector<double>>("short_factor");
    r.long_factor = node->get<std::vector<double>>("long_factor");
    const size_t half = static_cast<size_t>(r.rotary_dim / 2);
    check(r.short_factor.size() == half && r.long_factor.size() == half, ErrorCode::kInvalidInput,
          where + ": short_factor and long_factor need " + std::to_string(half) + " entries (rotary dim / 2), got " +
              std::to_string(r.short_factor.size()) + " and " + std::to_string(r.long_factor.size()));
    double factor = node->has("factor") ? node->get<double>("factor")
                                        : static_cast<double>(l.max_position_embeddings) /
                                              static_cast<double>(r.original_max_position_embeddings);
    check(factor > 0, ErrorCode::kInvalidInput, where + ": \"factor\" must be > 0");
    r.factor = factor;
    if (node->has("attention_factor"))
      r.attention_factor = node->get<double>("attention_factor");
    else
      r.attention_factor = factor <= 1.0 ? 1.0
                                         : std::sqrt(1.0 + std::log(factor) /
                                                               std::log(static_cast<double>(
                                                                   r.original_max_position_embeddings)));
  } else if (r.type != "linear" && r.type != "dynamic") {
    throw Error(ErrorCode::kInvalidInput,
                where + " is not supported (default, linear, dynamic, llama3, longrope)");
  }
  return r;
}

}  // namespace

LlamaConfig LlamaConfig::from(const loading::ModelConfig& c) {
  LlamaConfig l;
  l.model_type = c.model_type;
  check(std::find(kModelTypes.begin(), kModelTypes.end(), c.model_type) != kModelTypes.end(),
        ErrorCode::kInvalidInput,
        "config.json: model_type '" + c.model_type + "' is not a Llama-style decoder (llama, mistral, qwen2, qwen3, phi3)");
  l.vocab_size = loading::require_positive(c.vocab_size, "vocab_size");
  l.hidden_size = loading::require_positive(c.hidden_size, "hidden_size");
  l.num_layers = loading::require_positive(c.num_hidden_layers, "num_hidden_layers", loading::kMaxConfigLayers);
  l.num_heads = loading::require_positive(c.num_attention_heads, "num_attention_heads");
  l.num_kv_heads = c.num_key_value_heads.value_or(l.num_heads);
  check(l.num_kv_heads > 0 && l.num_heads % l.num_kv_heads == 0, ErrorCode::kInvalidInput,
        "config.json: num_attention_heads " + std::to_string(l.num_heads) +
            " is not a multiple of num_key_value_heads " + std::to_string(l.num_kv_heads));
  l.head_dim = c.head_dim.value_or(0) > 0 ? loading::require_positive(c.head_dim, "head_dim")
                                          : l.hidden_size / l.num_heads;
  check(c.head_dim.value_or(0) > 0 || l.hidden_size % l.num_heads == 0, ErrorCode::kInvalidInput,
        "config.json: hidden_size " + std::to_string(l.hidden_size) + " is not divisible by num_attention_heads " +
            std::to_string(l.num_heads) + " and no head_dim is given");
  l.intermediate_size = loading::require_positive(c.intermediate_size, "intermediate_size");
  l.max_position_embeddings = loading::require_positive(c.max_position_embeddings, "max_position_embeddings");
  l.rms_norm_eps = c.rms_norm_eps.value_or(1e-6);
  l.tie_word_embeddings = c.tie_word_embeddings.value_or(false);
  const std::string act = c.hidden_act.value_or("silu");
  check(act == "silu" || act == "swish", ErrorCode::kInvalidInput,
        "config.json: hidden_act '" + act + "' is not supported by the Llama-style decoder (silu)");
  const bool attention_bias = c.raw.get_or<bool>("attention_bias", false);
  l.qkv_bias = c.model_type == "qwen2" || attention_bias;
  l.o_bias = attention_bias;
  l.mlp_bias = c.raw.get_or<bool>("mlp_bias", false);
  l.qk_norm = c.model_type == "qwen3";
  l.fused_weights = c.model_type == "phi3";

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
  l.rope = read_rope(c, l);
  l.eos_token_id = c.eos_token_id;
  return l;
}

}  // namespace mpool::models::llama
