#include "models/t5/config.h"

#include <cmath>

#include "mpool/base/error.h"
#include "mpool/nn/encoder_config.h"

namespace mpool::models::t5 {

T5Config T5Config::from(const loading::ModelConfig& c) {
  check(c.model_type == "t5", ErrorCode::kInvalidInput, "config.json: model_type '" + c.model_type + "' is not t5");
  const loading::JsonView& j = c.raw;
  T5Config t;
  t.vocab_size = nn::read_size(j, "vocab_size", t.vocab_size);
  t.d_model = nn::read_size(j, "d_model", t.d_model);
  t.d_kv = nn::read_size(j, "d_kv", t.d_kv);
  t.d_ff = nn::read_size(j, "d_ff", t.d_ff);
  t.num_layers = nn::read_size(j, "num_layers", t.num_layers, loading::kMaxConfigLayers);
  t.num_heads = nn::read_size(j, "num_heads", t.num_heads);
  check(t.num_heads <= loading::kMaxConfigDimension / t.d_kv, ErrorCode::kInvalidInput,
        j.where("num_heads") + " x \"d_kv\" (" + std::to_string(t.num_heads) + " x " + std::to_string(t.d_kv) +
            ") exceeds " + std::to_string(loading::kMaxConfigDimension));

  // The encoder's buckets are bidirectional: half per direction, and of each half
  // the first half exact distances, the rest logarithmic up to max_distance.
  t.relative_attention_num_buckets =
      nn::read_size(j, "relative_attention_num_buckets", t.relative_attention_num_buckets);
  check(t.relative_attention_num_buckets >= 4, ErrorCode::kInvalidInput,
        j.where("relative_attention_num_buckets") + " is " + std::to_string(t.relative_attention_num_buckets) +
            "; the encoder needs at least 4 (one exact bucket per direction)");
  const int64_t exact = t.relative_attention_num_buckets / 4;
  t.relative_attention_max_distance =
      nn::read_size(j, "relative_attention_max_distance", t.relative_attention_max_distance);
  check(t.relative_attention_max_distance > exact, ErrorCode::kInvalidInput,
        j.where("relative_attention_max_distance") + " is " + std::to_string(t.relative_attention_max_distance) +
            "; it must exceed the " + std::to_string(exact) + " exact buckets per direction of " +
            std::to_string(t.relative_attention_num_buckets) + " relative_attention_num_buckets");

  t.layer_norm_epsilon = j.get_or<double>("layer_norm_epsilon", t.layer_norm_epsilon);
  check(std::isfinite(t.layer_norm_epsilon) && t.layer_norm_epsilon > 0, ErrorCode::kInvalidInput,
        j.where("layer_norm_epsilon") + " must be a positive finite number");

  // T5Config: "<act>" or "gated-<act>"; "gated-gelu" is gelu_new for backward
  // compatibility. A stored dense_act_fn / is_gated_act overrides what it implies.
  t.feed_forward_proj = j.get_or<std::string>("feed_forward_proj", t.feed_forward_proj);
  const std::string& proj = t.feed_forward_proj;
  const size_t dash = proj.find('-');
  const bool gated = dash != std::string::npos && proj.compare(0, dash, "gated") == 0;
  check(dash == std::string::npos || (gated && proj.find('-', dash + 1) == std::string::npos),
        ErrorCode::kInvalidInput,
        j.where("feed_forward_proj") + " is '" + proj +
            "'; it must be '<act>' or 'gated-<act>' (e.g. 'relu', 'gated-gelu')");
  std::string act = gated ? proj.substr(dash + 1) : proj;
  if (proj == "gated-gelu") act = "gelu_new";
  std::string act_key = "feed_forward_proj";
  if (j.has("dense_act_fn")) {
    act = j.get<std::string>("dense_act_fn");
    act_key = "dense_act_fn";
  }
  t.dense_act_fn = nn::parse_activation(act, j.where(act_key));
  t.is_gated_act = j.get_or<bool>("is_gated_act", gated);
  return t;
}

}  // namespace mpool::models::t5
