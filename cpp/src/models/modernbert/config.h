#pragma once
// What the ModernBERT family reads from config.json, as a plain struct. Torch-free
// (part of mpool_model_configs), so it runs under the sanitizers and is fuzzed
// (fuzz/config_json_fuzz.cpp). Both spellings of the layer pattern are read:
// the hub's (global_attn_every_n_layers, global_rope_theta, local_rope_theta)
// and transformers 5's (layer_types, rope_parameters keyed by layer type), with
// transformers' precedence (configuration_modernbert.py).
#include <cstdint>
#include <string>
#include <vector>

#include "mpool/loading/config.h"
#include "mpool/nn/activation.h"
#include "mpool/nn/rope_config.h"

namespace mpool::models::modernbert {

/// The model_types this family serves.
inline const std::vector<std::string> kModelTypes = {"modernbert"};

/// Everything the encoder needs from config.json, beyond the common sizes.
struct ModernBertConfig : loading::TransformerSizes {
  int64_t head_dim = 0;  ///< hidden_size / num_attention_heads
  double norm_eps = 1e-5;
  bool norm_bias = false;       ///< every LayerNorm has a bias
  bool attention_bias = false;  ///< Wqkv and attn.Wo have biases
  bool mlp_bias = false;        ///< Wi and mlp.Wo have biases
  nn::Activation hidden_activation = nn::Activation::kGelu;
  /// The local window's total width: a sliding layer's token sees the keys at
  /// most local_attention / 2 positions away on either side (transformers'
  /// sliding_window = local_attention // 2, |q - k| <= sliding_window).
  int64_t local_attention = 128;
  /// Per layer: true = sliding_attention (local), false = full_attention (global).
  std::vector<bool> sliding;
  /// RoPE of the global and the local layers (default type; their own theta).
  nn::RopeConfig global_rope, local_rope;
  int64_t pad_token_id = 0;
  /// The sequence-classification head (ModernBertForSequenceClassification):
  /// pooling "cls" (the first token) or "mean" (over the real tokens), the
  /// activation between head.dense and head.norm, and whether head.dense has a bias.
  bool classifier_mean_pooling = false;
  nn::Activation classifier_activation = nn::Activation::kGelu;
  bool classifier_bias = false;

  /// How far a sliding layer sees on each side.
  int64_t window_radius() const noexcept { return local_attention / 2; }

  /// Reads and checks the fields; errors name config.json and the key.
  static ModernBertConfig from(const loading::ModelConfig& config);
};

}  // namespace mpool::models::modernbert
