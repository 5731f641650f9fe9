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

#include "mpool/loading/safetensors.h"
#include "mpool/models/llama/config.h"

namespace mpool::models::llama {

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
