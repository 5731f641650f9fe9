#include "mpool/nn/encoder_config.h"

#include <cmath>

#include "mpool/base/error.h"
#include "mpool/loading/config.h"

namespace mpool::nn {

int64_t read_size(const loading::JsonView& node, const char* key, int64_t fallback, int64_t max) {
  const int64_t v = node.get_or<int64_t>(key, fallback);
  check(v >= 1 && v <= max, ErrorCode::kInvalidInput,
        node.where(key) + " is " + std::to_string(v) + "; it must be in [1, " + std::to_string(max) + "]");
  return v;
}

EncoderConfig read_encoder_config(const loading::JsonView& node, const EncoderDefaults& d) {
  EncoderConfig c;
  c.hidden_size = read_size(node, "hidden_size", d.hidden_size);
  c.intermediate_size = read_size(node, "intermediate_size", d.intermediate_size);
  c.num_layers = read_size(node, "num_hidden_layers", d.num_layers, loading::kMaxConfigLayers);
  c.num_heads = read_size(node, "num_attention_heads", d.num_heads);
  check(c.hidden_size % c.num_heads == 0, ErrorCode::kInvalidInput,
        node.where("hidden_size") + " (" + std::to_string(c.hidden_size) + ") is not divisible by " +
            node.where("num_attention_heads") + " (" + std::to_string(c.num_heads) + ")");
  c.act = parse_activation(node.get_or<std::string>("hidden_act", d.hidden_act), node.where("hidden_act"));
  c.layer_norm_eps = node.get_or<double>("layer_norm_eps", d.layer_norm_eps);
  check(std::isfinite(c.layer_norm_eps) && c.layer_norm_eps > 0, ErrorCode::kInvalidInput,
        node.where("layer_norm_eps") + " must be a positive finite number");
  return c;
}

VisionTowerConfig read_vision_tower_config(const loading::JsonView& node, const EncoderDefaults& d) {
  VisionTowerConfig c;
  static_cast<EncoderConfig&>(c) = read_encoder_config(node, d);
  c.image_size = read_size(node, "image_size", d.image_size);
  c.patch_size = read_size(node, "patch_size", d.patch_size);
  c.num_channels = read_size(node, "num_channels", d.num_channels);
  check(c.patch_size <= c.image_size && c.image_size % c.patch_size == 0, ErrorCode::kInvalidInput,
        node.where("patch_size") + " (" + std::to_string(c.patch_size) + ") must divide " +
            node.where("image_size") + " (" + std::to_string(c.image_size) + ")");
  check(c.grid() <= 4096, ErrorCode::kInvalidInput,
        node.where("image_size") + " / patch_size gives " + std::to_string(c.grid()) +
            " patches per side; at most 4096 are supported");
  return c;
}

TextTowerConfig read_text_tower_config(const loading::JsonView& node, const EncoderDefaults& d) {
  TextTowerConfig c;
  static_cast<EncoderConfig&>(c) = read_encoder_config(node, d);
  c.vocab_size = read_size(node, "vocab_size", d.vocab_size);
  c.max_positions = read_size(node, "max_position_embeddings", d.max_positions);
  return c;
}

}  // namespace mpool::nn
