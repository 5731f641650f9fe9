#pragma once
// What the decoder family reads from config.json, as a plain struct. Torch-free
// (part of mpool_model_configs), so it runs under the sanitizers and is fuzzed
// (fuzz/config_json_fuzz.cpp).
#include <cstdint>
#include <string>
#include <vector>

#include "mpool/loading/config.h"
#include "mpool/nn/rope_config.h"

namespace mpool::models::decoder {

/// The model_types this family serves.
inline const std::vector<std::string> kModelTypes = {"llama",     "mistral",   "qwen2",       "qwen3",  "phi3",
                                                     "qwen2_moe", "qwen3_moe", "deepseek_v3", "kimi_k2"};

/// The architecture a kimi_k2 config must name to be served (Kimi-K2 is DeepSeek-V3's network).
inline constexpr const char* kDeepseekV3Architecture = "DeepseekV3ForCausalLM";

/// Most routed experts per layer mpool accepts (experts are named one by one).
inline constexpr int64_t kMaxExperts = int64_t{1} << 16;

/// The mixture-of-experts settings of Qwen2-MoE, Qwen3-MoE and DeepSeek-V3.
struct MoeConfig {
  int64_t num_experts = 0;  ///< routed experts per MoE layer; 0: a dense model
  int64_t num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0;
  bool norm_topk_prob = false;
  int64_t shared_expert_intermediate_size = 0;  ///< Qwen2-MoE's gated shared expert; 0: none
  std::vector<bool> sparse_layers;  ///< per layer: an MoE block (else the dense MLP)
  // DeepSeek-V3: sigmoid scores, bias-corrected choice among the best groups.
  bool grouped_sigmoid = false;  ///< DeepSeek's router (else the softmax one)
  int64_t n_group = 1;           ///< expert groups
  int64_t topk_group = 1;        ///< groups a token may choose from
  double routed_scaling_factor = 1.0;
  int64_t shared_experts_intermediate_size = 0;  ///< DeepSeek's ungated shared experts as one MLP; 0: none
};

/// DeepSeek's multi-head latent attention (MLA); kv_lora_rank 0: ordinary attention.
struct MlaConfig {
  int64_t q_lora_rank = 0;  ///< 0: q_proj straight from the hidden state
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  bool rope_interleave = true;  ///< rotary pairs are adjacent dimensions
  bool bias = false;            ///< q_a_proj, kv_a_proj_with_mqa and o_proj have biases (attention_bias)
  double softmax_scale = 0;     ///< qk_head_dim^-0.5, times yarn's mscale_all_dim correction squared
};

/// Everything the decoder needs from config.json, beyond the common sizes.
struct DecoderConfig : loading::TransformerSizes {
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;   ///< q, k, v projections have biases (Qwen2, attention_bias)
  bool o_bias = false;     ///< o_proj has a bias (attention_bias)
  bool mlp_bias = false;   ///< gate, up, down have biases
  bool qk_norm = false;    ///< per-head RMSNorm on q and k before RoPE (Qwen3)
  std::vector<int64_t> sliding_window;  ///< per layer; 0 = full attention
  nn::RopeConfig rope;
  /// longrope: the step that outgrows the original length recomputes every
  /// cached key with the long factors (transformers' Phi-3 generate drops its
  /// cache there). Other families keep the keys as they were rotated: a token
  /// rotates with the long factors once its own position, or its prompt, passes
  /// the original length.
  bool longrope_recomputes = false;
  std::vector<int64_t> eos_token_id;
  MoeConfig moe;
  MlaConfig mla;

  bool is_mla() const noexcept { return mla.kv_lora_rank > 0; }
  bool is_moe_layer(int64_t layer) const {
    return !moe.sparse_layers.empty() && moe.sparse_layers[static_cast<size_t>(layer)];
  }
  /// The widest feed-forward activation per token (dense MLP or routed experts plus shared).
  int64_t feed_forward_width() const;

  /// Reads and checks the fields; errors name config.json and the key.
  static DecoderConfig from(const loading::ModelConfig& config);
};

}  // namespace mpool::models::decoder
