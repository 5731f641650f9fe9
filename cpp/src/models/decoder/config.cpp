#include "models/decoder/config.h"

#include <algorithm>
#include <cmath>

#include "mpool/base/error.h"

namespace mpool::models::decoder {
namespace {

// Qwen2-MoE's and Qwen3-MoE's experts; which layers hold them is transformers'
// rule: every decoder_sparse_step-th layer (1-based) not listed in mlp_only_layers.
// A key the file leaves out takes transformers' default for that model type.
MoeConfig read_moe(const loading::ModelConfig& c, int64_t num_layers) {
  const bool qwen2 = c.model_type == "qwen2_moe";
  const auto& raw = c.raw;
  MoeConfig m;
  // transformers 5 writes Qwen3-MoE's expert count as num_local_experts.
  const auto experts = raw.get_optional<int64_t>("num_experts");
  const auto local = raw.get_optional<int64_t>("num_local_experts");
  check(!experts || !local || *experts == *local, ErrorCode::kInvalidInput,
        "config.json: \"num_experts\" (" + std::to_string(experts.value_or(0)) + ") and \"num_local_experts\" (" +
            std::to_string(local.value_or(0)) + ") disagree");
  m.num_experts = loading::require_positive(experts ? experts : local ? local : std::optional<int64_t>(qwen2 ? 60 : 128),
                                            local && !experts ? "num_local_experts" : "num_experts", kMaxExperts);
  m.num_experts_per_tok = loading::require_positive(
      raw.get_optional<int64_t>("num_experts_per_tok").value_or(qwen2 ? 4 : 8), "num_experts_per_tok", kMaxExperts);
  check(m.num_experts_per_tok <= m.num_experts, ErrorCode::kInvalidInput,
        "config.json: \"num_experts_per_tok\" (" + std::to_string(m.num_experts_per_tok) +
            ") is more than the number of experts (" + std::to_string(m.num_experts) + ")");
  m.moe_intermediate_size = loading::require_positive(
      raw.get_optional<int64_t>("moe_intermediate_size").value_or(qwen2 ? 1408 : 768), "moe_intermediate_size");
  m.norm_topk_prob = raw.get_or<bool>("norm_topk_prob", false);
  if (qwen2)
    m.shared_expert_intermediate_size =
        loading::require_positive(raw.get_optional<int64_t>("shared_expert_intermediate_size").value_or(5632),
                                  "shared_expert_intermediate_size");
  const int64_t step = loading::require_positive(raw.get_optional<int64_t>("decoder_sparse_step").value_or(1),
                                                 "decoder_sparse_step", loading::kMaxConfigLayers);
  m.sparse_layers.assign(static_cast<size_t>(num_layers), false);
  for (int64_t i = 0; i < num_layers; ++i) m.sparse_layers[static_cast<size_t>(i)] = (i + 1) % step == 0;
  for (int64_t layer : raw.get_or<std::vector<int64_t>>("mlp_only_layers", {})) {
    check(layer >= 0 && layer < num_layers, ErrorCode::kInvalidInput,
          "config.json: \"mlp_only_layers\" holds " + std::to_string(layer) + ", not a layer in [0, " +
              std::to_string(num_layers) + ")");
    m.sparse_layers[static_cast<size_t>(layer)] = false;
  }
  return m;
}

bool is_deepseek(const std::string& model_type) { return model_type == "deepseek_v3" || model_type == "kimi_k2"; }

// An integer key with transformers' DeepSeek-V3 default, positive and at most `max`.
int64_t positive_or(const loading::ModelConfig& c, const char* key, int64_t fallback,
                    int64_t max = loading::kMaxConfigDimension) {
  return loading::require_positive(c.raw.get_optional<int64_t>(key).value_or(fallback), key, max);
}

// A string key that must hold the one value mpool implements, when present.
void require_value(const loading::ModelConfig& c, const char* key, const std::string& only) {
  const auto v = c.raw.get_optional<std::string>(key);
  check(!v || *v == only, ErrorCode::kInvalidInput,
        std::string("config.json: \"") + key + "\" is '" + v.value_or("") + "'; only '" + only + "' is supported");
}

// DeepSeek-V3's experts: a grouped sigmoid router, shared experts, and dense
// layers below first_k_dense_replace. Absent keys take transformers' defaults.
MoeConfig read_deepseek_moe(const loading::ModelConfig& c, int64_t num_layers) {
  const auto& raw = c.raw;
  MoeConfig m;
  m.grouped_sigmoid = true;
  require_value(c, "scoring_func", "sigmoid");
  require_value(c, "topk_method", "noaux_tc");
  // transformers maps num_local_experts onto n_routed_experts.
  const auto routed = raw.get_optional<int64_t>("n_routed_experts");
  const auto local = raw.get_optional<int64_t>("num_local_experts");
  check(!routed || !local || *routed == *local, ErrorCode::kInvalidInput,
        "config.json: \"n_routed_experts\" (" + std::to_string(routed.value_or(0)) + ") and \"num_local_experts\" (" +
            std::to_string(local.value_or(0)) + ") disagree");
  m.num_experts = loading::require_positive(routed ? routed : local ? local : std::optional<int64_t>(256),
                                            local && !routed ? "num_local_experts" : "n_routed_experts", kMaxExperts);
  m.num_experts_per_tok = positive_or(c, "num_experts_per_tok", 8, kMaxExperts);
  check(m.num_experts_per_tok <= m.num_experts, ErrorCode::kInvalidInput,
        "config.json: \"num_experts_per_tok\" (" + std::to_string(m.num_experts_per_tok) +
            ") is more than the number of experts (" + std::to_string(m.num_experts) + ")");
  m.moe_intermediate_size = positive_or(c, "moe_intermediate_size", 2048);
  m.norm_topk_prob = raw.get_or<bool>("norm_topk_prob", true);
  m.n_group = positive_or(c, "n_group", 8, kMaxExperts);
  check(m.num_experts % m.n_group == 0, ErrorCode::kInvalidInput,
        "config.json: \"n_routed_experts\" (" + std::to_string(m.num_experts) + ") is not divisible by \"n_group\" (" +
            std::to_string(m.n_group) + ")");
  // A group's score is the sum of its two best experts.
  check(m.num_experts / m.n_group >= 2, ErrorCode::kInvalidInput,
        "config.json: \"n_group\" (" + std::to_string(m.n_group) + ") leaves fewer than 2 experts per group");
  m.topk_group = positive_or(c, "topk_group", 4, kMaxExperts);
  check(m.topk_group <= m.n_group, ErrorCode::kInvalidInput,
        "config.json: \"topk_group\" (" + std::to_string(m.topk_group) + ") is more than \"n_group\" (" +
            std::to_string(m.n_group) + ")");
  check(m.num_experts_per_tok <= m.topk_group * (m.num_experts / m.n_group), ErrorCode::kInvalidInput,
        "config.json: \"num_experts_per_tok\" (" + std::to_string(m.num_experts_per_tok) +
            ") is more than the experts of \"topk_group\" groups (" +
            std::to_string(m.topk_group * (m.num_experts / m.n_group)) + ")");
  m.routed_scaling_factor = raw.get_or<double>("routed_scaling_factor", 2.5);
  check(std::isfinite(m.routed_scaling_factor) && m.routed_scaling_factor > 0, ErrorCode::kInvalidInput,
        "config.json: \"routed_scaling_factor\" must be a finite number > 0");
  const int64_t shared = raw.get_or<int64_t>("n_shared_experts", 1);
  check(shared >= 0 && shared <= kMaxExperts, ErrorCode::kInvalidInput,
        "config.json: \"n_shared_experts\" must be in [0, " + std::to_string(kMaxExperts) + "], got " +
            std::to_string(shared));
  check(shared * m.moe_intermediate_size <= loading::kMaxConfigDimension, ErrorCode::kInvalidInput,
        "config.json: \"n_shared_experts\" x \"moe_intermediate_size\" is too large");
  m.shared_experts_intermediate_size = shared * m.moe_intermediate_size;
  const int64_t dense = raw.get_or<int64_t>("first_k_dense_replace", 3);
  check(dense >= 0, ErrorCode::kInvalidInput,
        "config.json: \"first_k_dense_replace\" must be >= 0, got " + std::to_string(dense));
  m.sparse_layers.assign(static_cast<size_t>(num_layers), false);
  for (int64_t i = std::min(dense, num_layers); i < num_layers; ++i) m.sparse_layers[static_cast<size_t>(i)] = true;
  return m;
}

// DeepSeek's MLA sizes (the softmax scale is set once the rope is read).
MlaConfig read_mla(const loading::ModelConfig& c) {
  MlaConfig a;
  // q_lora_rank null: q_proj straight from the hidden state; absent: the default.
  const bool no_q_lora = c.raw.json().contains("q_lora_rank") && c.raw.json().at("q_lora_rank").is_null();
  a.q_lora_rank = no_q_lora ? 0 : positive_or(c, "q_lora_rank", 1536);
  a.kv_lora_rank = positive_or(c, "kv_lora_rank", 512);
  a.qk_nope_head_dim = positive_or(c, "qk_nope_head_dim", 128);
  a.qk_rope_head_dim = positive_or(c, "qk_rope_head_dim", 64);
  a.v_head_dim = positive_or(c, "v_head_dim", 128);
  a.rope_interleave = c.raw.get_or<bool>("rope_interleave", true);
  a.bias = c.raw.get_or<bool>("attention_bias", false);
  return a;
}

}  // namespace

int64_t DecoderConfig::feed_forward_width() const {
  if (moe.num_experts == 0) return intermediate_size;
  return std::max(intermediate_size, moe.num_experts_per_tok * moe.moe_intermediate_size +
                                         moe.shared_expert_intermediate_size + moe.shared_experts_intermediate_size);
}

DecoderConfig DecoderConfig::from(const loading::ModelConfig& c) {
  DecoderConfig l;
  static_cast<loading::TransformerSizes&>(l) =
      loading::TransformerSizes::require(c, kModelTypes, "a decoder of the llama family");
  const bool deepseek = is_deepseek(c.model_type);
  if (c.model_type == "kimi_k2")
    check(std::find(c.architectures.begin(), c.architectures.end(), kDeepseekV3Architecture) !=
              c.architectures.end(),
          ErrorCode::kInvalidInput,
          std::string("config.json: model_type 'kimi_k2' is served only when \"architectures\" names ") +
              kDeepseekV3Architecture);
  l.num_kv_heads = c.num_key_value_heads.value_or(l.num_heads);
  check(l.num_kv_heads > 0 && l.num_heads % l.num_kv_heads == 0, ErrorCode::kInvalidInput,
        "config.json: num_attention_heads " + std::to_string(l.num_heads) +
            " is not a multiple of num_key_value_heads " + std::to_string(l.num_kv_heads));
  if (deepseek) {
    // MLA: the query/key head is qk_nope_head_dim + qk_rope_head_dim; the
    // config's head_dim (transformers writes the rope part there) is not read.
    l.mla = read_mla(c);
    l.head_dim = l.mla.qk_nope_head_dim + l.mla.qk_rope_head_dim;
  } else {
    l.head_dim = c.head_dim.value_or(0) > 0 ? loading::require_positive(c.head_dim, "head_dim")
                                            : l.hidden_size / l.num_heads;
  }
  check(deepseek || c.head_dim.value_or(0) > 0 || l.hidden_size % l.num_heads == 0, ErrorCode::kInvalidInput,
        "config.json: hidden_size " + std::to_string(l.hidden_size) + " is not divisible by num_attention_heads " +
            std::to_string(l.num_heads) + " and no head_dim is given");
  l.rms_norm_eps = c.rms_norm_eps.value_or(c.model_type == "phi3" ? 1e-5 : 1e-6);  // each config class's default
  l.tie_word_embeddings = c.tie_word_embeddings.value_or(false);
  const std::string act = c.hidden_act.value_or("silu");
  check(act == "silu" || act == "swish", ErrorCode::kInvalidInput,
        "config.json: hidden_act '" + act + "' is not supported by the decoder family (silu)");
  const bool attention_bias = c.raw.get_or<bool>("attention_bias", false);
  const bool moe = c.model_type == "qwen2_moe" || c.model_type == "qwen3_moe";
  // Qwen2-MoE names its q/k/v bias qkv_bias (on unless the file says otherwise).
  l.qkv_bias = c.model_type == "qwen2" || attention_bias ||
               (c.model_type == "qwen2_moe" && c.raw.get_or<bool>("qkv_bias", true));
  l.o_bias = attention_bias;
  l.mlp_bias = c.raw.get_or<bool>("mlp_bias", false);
  l.qk_norm = c.model_type == "qwen3" || c.model_type == "qwen3_moe";

  // Sliding windows: layer_types when the file lists them; otherwise Mistral and
  // Phi-3 slide in every layer when sliding_window is set, Qwen2/3 only with
  // use_sliding_window and from max_window_layers on, Qwen3-MoE with
  // use_sliding_window in every layer, Qwen2-MoE with use_sliding_window in the
  // even layers below max_window_layers.
  // A key left out takes its config class's default (4096 for Mistral and the
  // Qwen families, where Qwen's still needs use_sliding_window); null is none.
  const bool window_by_default = c.model_type == "mistral" || c.model_type == "qwen2" || c.model_type == "qwen3" || moe;
  const bool window_absent = !c.raw.json().contains("sliding_window");
  const int64_t window = window_absent ? (window_by_default ? 4096 : 0) : c.raw.get_or<int64_t>("sliding_window", 0);
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
    const bool use = !(qwen || moe) || c.raw.get_or<bool>("use_sliding_window", false);
    const int64_t max_window_layers = c.raw.get_or<int64_t>("max_window_layers", c.model_type == "qwen2_moe" ? 28 : 0);
    for (int64_t i = 0; i < l.num_layers; ++i) {
      const bool slides = c.model_type == "qwen2_moe" ? i % 2 == 0 && i < max_window_layers
                                                       : !qwen || i >= max_window_layers;
      if (use && slides) l.sliding_window[static_cast<size_t>(i)] = window;
    }
  }
  // Of these families only Phi-3's modeling rotates part of each head, renames
  // "yarn" to longrope, and defaults original_max_position_embeddings (4096).
  nn::RopeRules rope_rules;
  const bool phi3 = c.model_type == "phi3";
  rope_rules.partial_rotary = phi3;
  rope_rules.yarn_is_longrope = phi3;
  if (phi3) rope_rules.original_max_default = 4096;
  l.rope = nn::read_rope_config(c, deepseek ? l.mla.qk_rope_head_dim : l.head_dim, l.max_position_embeddings,
                                rope_rules);
  l.longrope_recomputes = phi3 && l.rope.type == "longrope";
  l.eos_token_id = c.eos_token_id;
  if (moe) l.moe = read_moe(c, l.num_layers);
  if (deepseek) {
    l.mla.softmax_scale = l.rope.softmax_scale_correction() / std::sqrt(static_cast<double>(l.head_dim));
    l.o_bias = l.qkv_bias = false;  // MLA's biases are its own (mla.bias)
    l.moe = read_deepseek_moe(c, l.num_layers);
  }
  return l;
}

}  // namespace mpool::models::decoder
