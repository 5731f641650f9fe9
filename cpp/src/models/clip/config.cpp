#include "models/clip/config.h"

#include <memory>
#include <string>

#include "mpool/base/error.h"

namespace mpool::models::clip {

namespace {

// CLIPTextConfig's defaults (ViT-B/32's text tower).
nn::EncoderDefaults text_defaults() {
  nn::EncoderDefaults text;
  text.hidden_size = 512;
  text.intermediate_size = 2048;
  text.num_heads = 8;
  text.hidden_act = "quick_gelu";
  text.vocab_size = 49408;
  text.max_positions = 77;
  return text;
}

// A tower's settings as transformers' CLIPConfig reads them: "<tower>_config",
// with the values of "<tower>_config_dict" over it where an older file has one
// (such files may hold the towers in the _dict keys alone).
std::optional<loading::JsonView> tower_config(const loading::JsonView& raw, const std::string& tower) {
  const auto base = raw.child(tower + "_config");
  const auto dict = raw.child(tower + "_config_dict");
  if (!dict) return base;
  auto merged = std::make_shared<nlohmann::json>(base ? base->json() : nlohmann::json::object());
  merged->update(dict->json());
  const nlohmann::json* node = merged.get();
  return loading::JsonView(std::move(merged), node, raw.file(), tower + "_config_dict");
}

}  // namespace

ClipTextConfig ClipTextConfig::from(const loading::JsonView& c) {
  const auto type = c.get_optional<std::string>("model_type");
  check(!type || *type == "clip_text_model", ErrorCode::kInvalidInput,
        c.where("model_type") + ": '" + type.value_or("") + "' is not clip_text_model");
  ClipTextConfig out;
  out.text = nn::read_text_tower_config(c, text_defaults());
  out.projection_dim = nn::read_size(c, "projection_dim", 512);
  const std::vector<int64_t> eos = c.get_token_ids("eos_token_id");
  if (!eos.empty()) out.eos_token_id = eos.front();
  return out;
}

ClipConfig ClipConfig::from(const loading::ModelConfig& c) {
  check(c.model_type == "clip", ErrorCode::kInvalidInput,
        "config.json: model_type '" + c.model_type + "' is not clip");
  // CLIPTextConfig's and CLIPVisionConfig's defaults (ViT-B/32).
  const nn::EncoderDefaults text = text_defaults();
  nn::EncoderDefaults vision;
  vision.hidden_act = "quick_gelu";
  vision.image_size = 224;
  vision.patch_size = 32;
  const loading::JsonView empty;
  const auto t = tower_config(c.raw, "text"), v = tower_config(c.raw, "vision");
  ClipConfig out;
  out.text = nn::read_text_tower_config(t ? *t : empty, text);
  out.vision = nn::read_vision_tower_config(v ? *v : empty, vision);
  out.projection_dim = nn::read_size(c.raw, "projection_dim", 512);
  const std::vector<int64_t> eos = t ? t->get_token_ids("eos_token_id") : std::vector<int64_t>{};
  if (!eos.empty()) out.eos_token_id = eos.front();
  return out;
}

}  // namespace mpool::models::clip
