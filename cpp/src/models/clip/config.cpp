#include "models/clip/config.h"

#include "mpool/base/error.h"

namespace mpool::models::clip {

ClipConfig ClipConfig::from(const loading::ModelConfig& c) {
  check(c.model_type == "clip", ErrorCode::kInvalidInput,
        "config.json: model_type '" + c.model_type + "' is not clip");
  // CLIPTextConfig's and CLIPVisionConfig's defaults (ViT-B/32).
  nn::EncoderDefaults text;
  text.hidden_size = 512;
  text.intermediate_size = 2048;
  text.num_heads = 8;
  text.hidden_act = "quick_gelu";
  text.vocab_size = 49408;
  text.max_positions = 77;
  nn::EncoderDefaults vision;
  vision.hidden_act = "quick_gelu";
  vision.image_size = 224;
  vision.patch_size = 32;
  const loading::JsonView empty;
  const auto t = c.raw.child("text_config"), v = c.raw.child("vision_config");
  ClipConfig out;
  out.text = nn::read_text_tower_config(t ? *t : empty, text);
  out.vision = nn::read_vision_tower_config(v ? *v : empty, vision);
  out.projection_dim = nn::read_size(c.raw, "projection_dim", 512);
  const std::vector<int64_t> eos = t ? t->get_token_ids("eos_token_id") : std::vector<int64_t>{};
  if (!eos.empty()) out.eos_token_id = eos.front();
  return out;
}

}  // namespace mpool::models::clip
