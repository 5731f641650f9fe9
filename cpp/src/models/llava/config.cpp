#include "models/llava/config.h"

#include <memory>

#include <nlohmann/json.hpp>

#include "mpool/base/error.h"

namespace mpool::models::llava {

namespace {

// The transformers config classes' defaults for the text models LLaVA
// checkpoints use: llava-hf's checkpoints write text_config as a diff of them.
const nlohmann::json* text_defaults(const nlohmann::json& model_type) {
  static const nlohmann::json llama = {
      {"vocab_size", 32000},     {"hidden_size", 4096},       {"intermediate_size", 11008},
      {"num_hidden_layers", 32}, {"num_attention_heads", 32}, {"max_position_embeddings", 2048},
      {"rms_norm_eps", 1e-6},    {"hidden_act", "silu"},      {"rope_theta", 10000.0},
  };
  static const nlohmann::json mistral = {
      {"vocab_size", 32000},        {"hidden_size", 4096},       {"intermediate_size", 14336},
      {"num_hidden_layers", 32},    {"num_attention_heads", 32}, {"num_key_value_heads", 8},
      {"max_position_embeddings", 131072}, {"rms_norm_eps", 1e-6}, {"hidden_act", "silu"},
      {"rope_theta", 10000.0},      {"sliding_window", 4096},
  };
  if (model_type == "llama") return &llama;
  if (model_type == "mistral") return &mistral;
  return nullptr;
}

// The text_config as the decoder family reads it: LlavaConfig's default model
// type (llama) and, for llama and mistral, their config classes' defaults for
// the keys left out (a key written as null stays null: Mistral's
// "sliding_window": null means none).
loading::ModelConfig text_config(const loading::ModelConfig& c) {
  const auto node = c.raw.child("text_config");
  nlohmann::json text = node ? node->json() : nlohmann::json::object();
  if (!text.contains("model_type") || text["model_type"].is_null()) text["model_type"] = "llama";
  if (const nlohmann::json* defaults = text_defaults(text["model_type"]))
    for (const auto& [key, value] : defaults->items())
      if (!text.contains(key)) text[key] = value;
  auto root = std::make_shared<const nlohmann::json>(std::move(text));
  return loading::parse_model_config(loading::JsonView(root, root.get(), c.raw.file(), "text_config"));
}

}  // namespace

std::vector<int64_t> LlavaConfig::feature_layer_counts() const {
  std::vector<int64_t> counts;
  for (int64_t layer : feature_layers) counts.push_back(layer < 0 ? vision.num_layers + 1 + layer : layer);
  return counts;
}

LlavaConfig LlavaConfig::from(const loading::ModelConfig& c) {
  check(c.model_type == "llava" || c.model_type == "llava_next", ErrorCode::kInvalidInput,
        "config.json: model_type '" + c.model_type + "' is not llava or llava_next");
  LlavaConfig out;
  out.anyres = c.model_type == "llava_next";
  // CLIPVisionConfig's defaults with LlavaConfig's overrides (CLIP ViT-L/14 at 336).
  nn::EncoderDefaults vision;
  vision.hidden_size = 1024;
  vision.intermediate_size = 4096;
  vision.num_layers = 24;
  vision.num_heads = 16;
  vision.hidden_act = "quick_gelu";
  vision.image_size = 336;
  vision.patch_size = 14;
  const loading::JsonView empty;
  const auto v = c.raw.child("vision_config");
  if (v) {
    const std::string type = v->get_or<std::string>("model_type", "clip_vision_model");
    check(type == "clip_vision_model", ErrorCode::kInvalidInput,
          v->where("model_type") + " is '" + type + "'; the llava family serves the CLIP vision tower (clip_vision_model)");
  }
  out.vision = nn::read_vision_tower_config(v ? *v : empty, vision);

  out.text = decoder::DecoderConfig::from(text_config(c));
  // As LlavaConfig: tied when either the model or its text_config says so.
  out.text.tie_word_embeddings = out.text.tie_word_embeddings || c.raw.get_or<bool>("tie_word_embeddings", false);

  out.image_token_id = c.raw.has("image_token_index") ? c.raw.get<int64_t>("image_token_index")
                                                      : c.raw.get_or<int64_t>("image_token_id", 32000);
  check(out.image_token_id >= 0 && out.image_token_id < out.text.vocab_size, ErrorCode::kInvalidInput,
        c.raw.where(c.raw.has("image_token_index") ? "image_token_index" : "image_token_id") + " is " +
            std::to_string(out.image_token_id) + ", outside the text model's vocabulary of " +
            std::to_string(out.text.vocab_size));

  if (c.raw.has("vision_feature_layer")) {
    const nlohmann::json& layer = c.raw.json()["vision_feature_layer"];
    out.feature_layers = layer.is_array() ? c.raw.get<std::vector<int64_t>>("vision_feature_layer")
                                          : std::vector<int64_t>{c.raw.get<int64_t>("vision_feature_layer")};
  }
  const int64_t layers = out.vision.num_layers;
  check(!out.feature_layers.empty(), ErrorCode::kInvalidInput, c.raw.where("vision_feature_layer") + " is empty");
  for (int64_t layer : out.feature_layers)
    check(layer >= -(layers + 1) && layer <= layers, ErrorCode::kInvalidInput,
          c.raw.where("vision_feature_layer") + " names hidden state " + std::to_string(layer) +
              ", but the vision tower has " + std::to_string(layers) + " layers (indices -" +
              std::to_string(layers + 1) + " to " + std::to_string(layers) + ")");

  const std::string strategy = c.raw.get_or<std::string>("vision_feature_select_strategy", "default");
  check(strategy == "default" || strategy == "full", ErrorCode::kInvalidInput,
        c.raw.where("vision_feature_select_strategy") + " is '" + strategy + "' (default or full)");
  out.keep_class_token = strategy == "full";
  out.projector_act = nn::parse_activation(c.raw.get_or<std::string>("projector_hidden_act", "gelu"),
                                           c.raw.where("projector_hidden_act"));
  out.projector_bias = c.raw.get_or<bool>("multimodal_projector_bias", true);
  if (out.anyres) {
    // LlavaNextConfig's default grid.
    out.grid_pinpoints = {{336, 672}, {672, 336}, {672, 672}, {1008, 336}, {336, 1008}};
    if (c.raw.has("image_grid_pinpoints")) {
      out.grid_pinpoints.clear();
      const nlohmann::json& list = c.raw.json()["image_grid_pinpoints"];
      const std::string where = c.raw.where("image_grid_pinpoints");
      check(list.is_array() && !list.empty(), ErrorCode::kInvalidInput, where + " must be a non-empty list of [height, width]");
      for (const auto& p : list) {
        check(p.is_array() && p.size() == 2 && p[0].is_number_integer() && p[1].is_number_integer(),
              ErrorCode::kInvalidInput, where + " must be a non-empty list of [height, width]");
        out.grid_pinpoints.push_back({p[0].get<int64_t>(), p[1].get<int64_t>()});
      }
    }
    const int64_t side = out.vision.image_size;
    for (const auto& [h, w] : out.grid_pinpoints)
      check(h > 0 && w > 0 && h % side == 0 && w % side == 0 && h <= 64 * side && w <= 64 * side,
            ErrorCode::kInvalidInput,
            c.raw.where("image_grid_pinpoints") + " holds " + std::to_string(h) + "x" + std::to_string(w) +
                ", which is not a grid of the vision tower's " + std::to_string(side) + "-pixel tiles (at most 64 a side)");
    check(!out.keep_class_token, ErrorCode::kInvalidInput,
          c.raw.where("vision_feature_select_strategy") + " is 'full', but LLaVA-NeXT lays tile features out as a "
                                                          "grid of patches (default)");
  }
  return out;
}

}  // namespace mpool::models::llava
