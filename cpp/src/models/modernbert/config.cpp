#include "models/modernbert/config.h"

#include <cmath>
#include <optional>

#include "mpool/base/error.h"

namespace mpool::models::modernbert {
namespace {

// The rope_type of a rope settings node must be the default (the only one
// ModernBERT checkpoints use); `key` names the node in the message.
void require_default_rope(const loading::JsonView& node, const std::string& key) {
  const std::string type = node.has("rope_type") ? node.get<std::string>("rope_type")
                                                 : node.get_or<std::string>("type", "default");
  check(type == "default", ErrorCode::kInvalidInput,
        "config.json: \"" + key + "\" has rope_type '" + type + "'; the modernbert family takes only 'default'");
}

// One layer type's RoPE, as ModernBertConfig.convert_rope_params_to_dict builds
// it: rope_parameters[layer_type] (updated by a legacy rope_scaling), its
// rope_theta, else the hub's `hub_key`, else transformers' default.
nn::RopeConfig read_rope(const loading::ModelConfig& c, const char* layer_type, const char* hub_key,
                         double default_theta, int64_t head_dim, int64_t max_positions) {
  nn::RopeConfig r;
  r.type = "default";
  r.rotary_dim = head_dim;
  r.max_position_embeddings = max_positions;
  r.original_max_position_embeddings = r.max_position_embeddings;
  std::optional<double> theta;
  if (auto params = c.raw.child("rope_parameters")) {
    check(!params->has("rope_type") && !params->has("rope_theta"), ErrorCode::kInvalidInput,
          "config.json: \"rope_parameters\" of a modernbert model is keyed by layer type "
          "(full_attention, sliding_attention), not one set of rope settings");
    if (auto node = params->child(layer_type)) {
      require_default_rope(*node, std::string("rope_parameters.") + layer_type);
      theta = node->get_optional<double>("rope_theta");
    }
  }
  if (auto scaling = c.raw.child("rope_scaling")) {
    require_default_rope(*scaling, "rope_scaling");
    if (auto t = scaling->get_optional<double>("rope_theta")) theta = t;  // update() overrides
  }
  if (!theta) theta = c.raw.get_optional<double>(hub_key);
  r.theta = theta.value_or(default_theta);
  check(std::isfinite(r.theta) && r.theta > 0, ErrorCode::kInvalidInput,
        std::string("config.json: the rope_theta of the ") + layer_type + " layers must be a finite number > 0, got " +
            std::to_string(r.theta));
  return r;
}

}  // namespace

ModernBertConfig ModernBertConfig::from(const loading::ModelConfig& c) {
  ModernBertConfig m;
  // ModernBERT has no position embeddings; max_position_embeddings (8192 in
  // transformers' defaults) bounds the inputs as the BERT family's does.
  static_cast<loading::TransformerSizes&>(m) =
      loading::TransformerSizes::require(c, kModelTypes, "a ModernBERT type", 8192);
  check(m.hidden_size % m.num_heads == 0, ErrorCode::kInvalidInput,
        "config.json: hidden_size " + std::to_string(m.hidden_size) + " is not divisible by num_attention_heads " +
            std::to_string(m.num_heads));
  m.head_dim = m.hidden_size / m.num_heads;
  check(m.head_dim % 2 == 0, ErrorCode::kInvalidInput,
        "config.json: hidden_size / num_attention_heads (" + std::to_string(m.head_dim) +
            ") must be even: each head is rotated by RoPE");
  // ModernBERT names its own keys: norm_eps (not layer_norm_eps, which hub files
  // also carry, unused), hidden_activation (not hidden_act).
  m.norm_eps = c.raw.get_or<double>("norm_eps", 1e-5);
  check(std::isfinite(m.norm_eps) && m.norm_eps > 0, ErrorCode::kInvalidInput,
        "config.json: \"norm_eps\" must be a positive number");
  m.norm_bias = c.raw.get_or<bool>("norm_bias", false);
  m.attention_bias = c.raw.get_or<bool>("attention_bias", false);
  m.mlp_bias = c.raw.get_or<bool>("mlp_bias", false);
  m.hidden_activation =
      nn::parse_activation(c.raw.get_or<std::string>("hidden_activation", "gelu"), "config.json: \"hidden_activation\"");
  const std::string pooling = c.raw.get_or<std::string>("classifier_pooling", "cls");
  check(pooling == "cls" || pooling == "mean", ErrorCode::kInvalidInput,
        c.raw.where("classifier_pooling") + " must be \"cls\" or \"mean\", got \"" + pooling + "\"");
  m.classifier_mean_pooling = pooling == "mean";
  m.classifier_activation = nn::parse_activation(c.raw.get_or<std::string>("classifier_activation", "gelu"),
                                                 "config.json: \"classifier_activation\"");
  m.classifier_bias = c.raw.get_or<bool>("classifier_bias", false);
  m.pad_token_id = c.pad_token_id.empty() ? 0 : c.pad_token_id.front();

  // The layer pattern: layer_types (transformers 5) when set, else every
  // global_attn_every_n_layers-th layer (from layer 0) global, the rest local.
  m.sliding.assign(static_cast<size_t>(m.num_layers), false);
  if (c.raw.has("layer_types")) {
    const auto types = c.raw.get<std::vector<std::string>>("layer_types");
    check(types.size() == static_cast<size_t>(m.num_layers), ErrorCode::kInvalidInput,
          "config.json: \"layer_types\" has " + std::to_string(types.size()) + " entries for " +
              std::to_string(m.num_layers) + " layers");
    for (size_t i = 0; i < types.size(); ++i) {
      check(types[i] == "full_attention" || types[i] == "sliding_attention", ErrorCode::kInvalidInput,
            "config.json: layer_types[" + std::to_string(i) + "] is '" + types[i] +
                "' (full_attention or sliding_attention)");
      m.sliding[i] = types[i] == "sliding_attention";
    }
  } else {
    const int64_t every = c.raw.get_or<int64_t>("global_attn_every_n_layers", 3);
    check(every > 0, ErrorCode::kInvalidInput,
          "config.json: \"global_attn_every_n_layers\" must be a positive integer, got " + std::to_string(every));
    for (int64_t i = 0; i < m.num_layers; ++i) m.sliding[static_cast<size_t>(i)] = i % every != 0;
  }
  m.local_attention = c.raw.get_or<int64_t>("local_attention", 128);
  check(m.local_attention >= 0 && m.local_attention <= loading::kMaxConfigDimension, ErrorCode::kInvalidInput,
        "config.json: \"local_attention\" must be in [0, " + std::to_string(loading::kMaxConfigDimension) + "], got " +
            std::to_string(m.local_attention));
  m.global_rope = read_rope(c, "full_attention", "global_rope_theta", 160000.0, m.head_dim, m.max_position_embeddings);
  m.local_rope = read_rope(c, "sliding_attention", "local_rope_theta", 10000.0, m.head_dim, m.max_position_embeddings);
  return m;
}

}  // namespace mpool::models::modernbert
