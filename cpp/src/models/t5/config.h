#pragma once
// What a T5 encoder reads from config.json (T5Config: T5 v1.0, v1.1, flan-t5 and
// the T5-XXL text encoder of Stable Diffusion 3 and FLUX), as a plain struct.
// Torch-free (part of mpool_model_configs), so it runs under the sanitizers and
// is fuzzed (fuzz/config_json_fuzz.cpp).
#include <cstdint>
#include <string>
#include <vector>

#include "mpool/loading/config.h"
#include "mpool/nn/activation.h"

namespace mpool::models::t5 {

/// The model_types read as T5.
inline const std::vector<std::string> kModelTypes = {"t5"};

struct T5Config {
  int64_t vocab_size = 32128;
  int64_t d_model = 512;
  int64_t d_kv = 64;  ///< per-head width; heads * d_kv need not be d_model
  int64_t d_ff = 2048;
  int64_t num_layers = 6;
  int64_t num_heads = 8;
  int64_t relative_attention_num_buckets = 32;
  int64_t relative_attention_max_distance = 128;
  double layer_norm_epsilon = 1e-6;
  /// As written: "relu" (v1.0's DenseReluDense: wi, wo), "gated-gelu" (v1.1's
  /// DenseGatedActDense: wi_0, wi_1, wo), or any "<act>" / "gated-<act>".
  std::string feed_forward_proj = "relu";
  /// The feed-forward activation: feed_forward_proj's act ("gated-gelu" means
  /// gelu_new), or config.json's "dense_act_fn" when present, as T5Config loads it.
  nn::Activation dense_act_fn = nn::Activation::kRelu;
  /// Gated feed-forward: "gated-" in feed_forward_proj, or config.json's "is_gated_act".
  bool is_gated_act = false;

  /// The attention's inner width, num_heads * d_kv.
  int64_t inner_dim() const noexcept { return num_heads * d_kv; }

  /// Reads and checks the fields, with T5Config's defaults for what the file
  /// leaves out; errors (InvalidInput) name config.json and the key.
  static T5Config from(const loading::ModelConfig& config);
};

}  // namespace mpool::models::t5
