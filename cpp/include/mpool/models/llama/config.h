#pragma once
// What the Llama-style decoder family reads from config.json, as plain structs.
// Torch-free (part of mpool_model_configs), so it runs under the sanitizers and
// is fuzzed (fuzz/config_json_fuzz.cpp).
#include <cstdint>
#include <string>
#include <vector>

#include "mpool/loading/config.h"

namespace mpool::models::llama {

/// The model_types this family serves.
inline const std::vector<std::string> kModelTypes = {"llama", "mistral", "qwen2", "qwen3", "phi3"};

/// Rotary position embedding settings (config.json rope_scaling / rope_parameters).
struct RopeConfig {
  std::string type = "default";  ///< default, linear, dynamic, llama3, longrope
  double theta = 10000.0;
  int64_t rotary_dim = 0;  ///< rotated part of each head (partial_rotary_factor)
  double factor = 1.0;
  int64_t max_position_embeddings = 0;
  int64_t original_max_position_embeddings = 0;
  double low_freq_factor = 1.0;   ///< llama3
  double high_freq_factor = 4.0;  ///< llama3
  std::vector<double> short_factor, long_factor;  ///< longrope, rotary_dim / 2 each
  double attention_factor = 1.0;                  ///< longrope scales cos and sin by it
};

/// Everything the decoder needs from config.json.
struct LlamaConfig {
  std::string model_type;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t intermediate_size = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;   ///< q, k, v projections have biases (Qwen2, attention_bias)
  bool o_bias = false;     ///< o_proj has a bias (attention_bias)
  bool mlp_bias = false;   ///< gate, up, down have biases
  bool qk_norm = false;    ///< per-head RMSNorm on q and k before RoPE (Qwen3)
  bool fused_weights = false;  ///< qkv_proj and gate_up_proj checkpoints (Phi-3)
  std::vector<int64_t> sliding_window;  ///< per layer; 0 = full attention
  RopeConfig rope;
  std::vector<int64_t> eos_token_id;

  /// Reads and checks the fields; errors name config.json and the key.
  static LlamaConfig from(const loading::ModelConfig& config);
};

}  // namespace mpool::models::llama
