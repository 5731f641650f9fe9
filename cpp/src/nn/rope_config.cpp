#include "mpool/nn/rope_config.h"

#include <cmath>

#include "mpool/base/error.h"

namespace mpool::nn {
namespace {

// YaRN's magnitude correction: 0.1 * mscale * ln(scale) + 1 for scale > 1.
double yarn_mscale(double scale, double mscale) { return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0; }

}  // namespace

double RopeConfig::softmax_scale_correction() const {
  if (type == "default" || mscale_all_dim == 0) return 1.0;
  const double m = yarn_mscale(factor, mscale_all_dim);
  return m * m;
}

RopeConfig read_rope_config(const loading::ModelConfig& c, int64_t head_dim, int64_t max_position_embeddings,
                            const RopeRules& rules) {
  RopeConfig r;
  r.theta = c.rope_theta.value_or(10000.0);
  r.max_position_embeddings = max_position_embeddings;
  double partial = c.partial_rotary_factor.value_or(1.0);
  auto node = loading::rope_parameters_node(c.raw);
  if (node) {
    r.type = node->has("rope_type") ? node->get<std::string>("rope_type") : node->get_or<std::string>("type", "default");
    if (node->has("partial_rotary_factor")) partial = node->get<double>("partial_rotary_factor");
  }
  if (r.type == "su" || (rules.yarn_is_longrope && r.type == "yarn")) r.type = "longrope";  // early Phi-3 names
  check(partial > 0 && partial <= 1, ErrorCode::kInvalidInput,
        "config.json: \"partial_rotary_factor\" must be in (0, 1], got " + std::to_string(partial));
  if (!rules.partial_rotary && partial != 1) {
    check(r.type == "default", ErrorCode::kInvalidInput,
          "config.json: \"partial_rotary_factor\" is " + std::to_string(partial) + " with rope type '" + r.type +
              "'; this architecture rotates whole heads (its transformers class cannot run the two together)");
    partial = 1;  // transformers' default rope for this architecture ignores it
  }
  r.rotary_dim = static_cast<int64_t>(static_cast<double>(head_dim) * partial);
  check(r.rotary_dim >= 2 && r.rotary_dim % 2 == 0, ErrorCode::kInvalidInput,
        "config.json: the rotary part of each head (" + std::to_string(r.rotary_dim) + ") must be even and >= 2");
  const std::optional<int64_t> top_level = c.raw.get_optional<int64_t>("original_max_position_embeddings");
  r.original_max_position_embeddings = top_level.value_or(max_position_embeddings);
  if (!node || r.type == "default") return r;
  const std::string where = "config.json: rope type '" + r.type + "'";
  if (top_level)
    r.original_max_position_embeddings = *top_level;  // over the node's, as transformers gives it priority
  else if (rules.original_max_default)
    r.original_max_position_embeddings = *rules.original_max_default;
  else if (node->has("original_max_position_embeddings"))
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
    // A decoder serves dynamic up to max_position_embeddings x factor positions.
    check(r.type != "dynamic" || static_cast<double>(max_position_embeddings) * r.factor <=
                                     static_cast<double>(loading::kMaxConfigDimension),
          ErrorCode::kInvalidInput,
          where + ": max_position_embeddings x factor must be at most " + std::to_string(loading::kMaxConfigDimension));
  }
  if (r.type == "llama3") {
    r.low_freq_factor = node->get<double>("low_freq_factor");
    r.high_freq_factor = node->get<double>("high_freq_factor");
    check(top_level || node->has("original_max_position_embeddings"), ErrorCode::kInvalidInput,
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
    const double factor = node->has("factor") ? node->get<double>("factor")
                                              : static_cast<double>(max_position_embeddings) /
                                                    static_cast<double>(r.original_max_position_embeddings);
    check(factor > 0, ErrorCode::kInvalidInput, where + ": \"factor\" must be > 0");
    r.factor = factor;
    if (node->has("attention_factor"))
      r.attention_factor = node->get<double>("attention_factor");
    else
      r.attention_factor =
          factor <= 1.0 ? 1.0
                        : std::sqrt(1.0 + std::log(factor) /
                                              std::log(static_cast<double>(r.original_max_position_embeddings)));
  } else if (r.type == "yarn") {
    // As transformers' _compute_yarn_parameters: factor defaults to the length
    // ratio (DeepSeek-V3), the attention factor to the paper's mscale ratio.
    r.factor = node->has("factor") && !node->json().at("factor").is_null()
                   ? node->get<double>("factor")
                   : static_cast<double>(max_position_embeddings) /
                         static_cast<double>(r.original_max_position_embeddings);
    check(r.factor > 0 && std::isfinite(r.factor), ErrorCode::kInvalidInput, where + ": \"factor\" must be > 0");
    auto positive_or = [&](const char* key, double fallback) {
      // transformers reads these with `or`: null and 0 fall back.
      if (!node->has(key) || node->json().at(key).is_null()) return fallback;
      const double v = node->get<double>(key);
      return v == 0 ? fallback : v;
    };
    r.beta_fast = positive_or("beta_fast", 32.0);
    r.beta_slow = positive_or("beta_slow", 1.0);
    check(std::isfinite(r.beta_fast) && std::isfinite(r.beta_slow) && r.beta_fast > 0 && r.beta_slow > 0,
          ErrorCode::kInvalidInput, where + ": \"beta_fast\" and \"beta_slow\" must be > 0");
    r.truncate = node->get_or<bool>("truncate", true);
    const double mscale = positive_or("mscale", 0.0);
    r.mscale_all_dim = positive_or("mscale_all_dim", 0.0);
    if (node->has("attention_factor") && !node->json().at("attention_factor").is_null())
      r.attention_factor = node->get<double>("attention_factor");
    else if (mscale != 0 && r.mscale_all_dim != 0)
      r.attention_factor = yarn_mscale(r.factor, mscale) / yarn_mscale(r.factor, r.mscale_all_dim);
    else
      r.attention_factor = yarn_mscale(r.factor, 1.0);
    check(std::isfinite(r.attention_factor) && r.attention_factor > 0, ErrorCode::kInvalidInput,
          where + ": \"attention_factor\" must be > 0");
  } else if (r.type != "linear" && r.type != "dynamic") {
    throw Error(ErrorCode::kInvalidInput,
                where + " is not supported (default, linear, dynamic, yarn, llama3, longrope)");
  }
  // transformers' yarn_apply_mscale folds mscale_all_dim into an MLA softmax scale
  // for any scaled rope, not yarn alone (read there above, with yarn's rules).
  if (r.type != "yarn" && node->has("mscale_all_dim") && !node->json().at("mscale_all_dim").is_null()) {
    r.mscale_all_dim = node->get<double>("mscale_all_dim");
    check(std::isfinite(r.mscale_all_dim), ErrorCode::kInvalidInput, where + ": \"mscale_all_dim\" must be finite");
  }
  return r;
}

}  // namespace mpool::nn
