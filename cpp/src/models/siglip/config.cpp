#include "models/siglip/config.h"

#include "mpool/base/error.h"

namespace mpool::models::siglip {

SiglipConfig SiglipConfig::from(const loading::ModelConfig& c) {
  check(c.model_type == "siglip", ErrorCode::kInvalidInput,
        "config.json: model_type '" + c.model_type + "' is not siglip" +
            (c.model_type == "siglip2" ? " (SigLIP 2's variable-resolution NaFlex models are not served; its "
                                         "fixed-resolution checkpoints, stored as siglip, are)"
                                       : ""));
  // SiglipTextConfig's and SiglipVisionConfig's defaults (base, patch 16, 224).
  nn::EncoderDefaults text;
  text.hidden_act = "gelu_pytorch_tanh";
  text.layer_norm_eps = 1e-6;
  text.vocab_size = 32000;
  text.max_positions = 64;
  nn::EncoderDefaults vision = text;
  vision.image_size = 224;
  vision.patch_size = 16;
  const loading::JsonView empty;
  const auto t = c.raw.child("text_config"), v = c.raw.child("vision_config");
  const loading::JsonView& tv = t ? *t : empty;
  const loading::JsonView& vv = v ? *v : empty;
  SiglipConfig out;
  out.text = nn::read_text_tower_config(tv, text);
  out.vision = nn::read_vision_tower_config(vv, vision);
  out.projection_size = nn::read_size(tv, "projection_size", out.text.hidden_size);
  const std::vector<int64_t> pad = tv.get_token_ids("pad_token_id");
  if (!pad.empty()) out.pad_token_id = pad.front();
  check(vv.get_or<bool>("vision_use_head", true), ErrorCode::kInvalidInput,
        vv.where("vision_use_head") + " is false: the model has no pooled image embedding to serve");
  check(out.projection_size == out.vision.hidden_size, ErrorCode::kInvalidInput,
        tv.where("projection_size") + " (" + std::to_string(out.projection_size) +
            ") differs from the image embedding's width, " + vv.where("hidden_size") + " (" +
            std::to_string(out.vision.hidden_size) + "): the towers do not share one space");
  return out;
}

}  // namespace mpool::models::siglip
