#pragma once
// The Llama-style decoder family: one pre-norm decoder (grouped-query attention,
// RMSNorm, SwiGLU, RoPE) parameterized by config.json, serving LlamaForCausalLM,
// MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM and Phi3ForCausalLM. The
// architectures differ only in flags read from the config (biases, q/k norm,
// sliding windows) and in a weight-name map (Phi-3 stores fused projections).
#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <vector>

#include "mpool/loading/config.h"
#include "mpool/loading/safetensors.h"

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

/// Keys and values of every layer for one sequence, preallocated to a capacity.
struct KvCache {
  std::vector<at::Tensor> keys, values;  ///< per layer (1, kv_heads, capacity, head_dim)
  int64_t length = 0;                    ///< positions filled
  int64_t capacity = 0;
  std::vector<int64_t> tokens;           ///< the ids cached (longrope recomputes them once)
};

/// Where the decoder's tensors sit in a checkpoint.
struct WeightLayout {
  std::string prefix = "model.";  ///< "model." (ForCausalLM) or "" (a bare base model)
  bool has_lm_head = true;        ///< false: a base model without an output head (embedding only)
  /// Detects the layout of `checkpoint`; InvalidInput when it holds no decoder embeddings.
  static WeightLayout detect(const loading::Checkpoint& checkpoint, const struct LlamaConfig& config);
};

/// The decoder's weights and forward passes.
class LlamaDecoder {
 public:
  /// Loads every weight the config implies from `checkpoint`, as `dtype` on `device`.
  LlamaDecoder(LlamaConfig config, const loading::Checkpoint& checkpoint, at::ScalarType dtype, at::Device device);

  /// An empty cache for sequences of up to `capacity` tokens.
  KvCache new_cache(int64_t capacity) const;
  /// Runs `ids` (n tokens) after the cache's contents, appends their keys and
  /// values, and returns float32 logits (vocab) of the last position.
  at::Tensor extend(const std::vector<int64_t>& ids, KvCache& cache) const;
  /// Logits (n, vocab) float32 of every position of `ids` from an empty cache (tests).
  at::Tensor all_logits(const std::vector<int64_t>& ids) const;
  /// Last hidden state (b, t, hidden) after the final norm, for right-padded (b, t)
  /// ids and 0/1 mask, without a cache (the embedding backbone).
  at::Tensor hidden_states(const at::Tensor& ids, const at::Tensor& mask) const;

  const LlamaConfig& config() const noexcept { return config_; }
  at::Device device() const noexcept { return device_; }
  at::ScalarType dtype() const noexcept { return dtype_; }
  const std::vector<std::string>& warnings() const noexcept { return warnings_; }
  /// Whether it can produce logits (it has an output head or tied embeddings).
  bool has_lm_head() const noexcept { return lm_head_.defined(); }
  /// The checkpoint names the config implies.
  static std::vector<std::string> weight_names(const LlamaConfig& config, const WeightLayout& layout);

 private:
  struct Layer {
    at::Tensor ln1, ln2, qkv_w, qkv_b, o_w, o_b, q_norm, k_norm, gate_up_w, gate_up_b, down_w, down_b;
  };
  // (cos, sin) of shape (n, rotary_dim) for positions [start, start + n), as dtype.
  std::pair<at::Tensor, at::Tensor> rotary(int64_t start, int64_t n) const;
  at::Tensor rotate(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const;
  at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight) const;
  // Runs the layers on x (b, n, hidden) at positions [start, start + n); keys and
  // values go to `cache` when given; `key_mask` (b, t) marks padding otherwise.
  at::Tensor run(at::Tensor x, int64_t start, KvCache* cache, const at::Tensor& key_mask) const;
  at::Tensor logits(const at::Tensor& hidden) const;

  LlamaConfig config_;
  at::ScalarType dtype_;
  at::Device device_;
  at::Tensor embed_, norm_, lm_head_;
  at::Tensor inv_freq_;  // static rope types: (rotary_dim / 2) float32
  std::vector<Layer> layers_;
  std::vector<std::string> warnings_;
};

}  // namespace mpool::models::llama
