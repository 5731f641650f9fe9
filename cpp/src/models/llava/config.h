#pragma once
// What the LLaVA family reads from config.json (LlavaForConditionalGeneration:
// vision_config, text_config and the projector's settings), as plain structs.
// Torch-free (part of mpool_model_configs), so it runs under the sanitizers.
#include <cstdint>
#include <string>
#include <vector>

#include "models/decoder/config.h"
#include "mpool/loading/config.h"
#include "mpool/nn/activation.h"
#include "mpool/nn/encoder_config.h"

namespace mpool::models::llava {

/// The model_types this family serves.
inline const std::vector<std::string> kModelTypes = {"llava"};

struct LlavaConfig {
  /// The CLIP vision tower (vision_config, model_type clip_vision_model).
  nn::VisionTowerConfig vision;
  /// The language model (text_config): any type the decoder family serves.
  decoder::DecoderConfig text;
  /// The prompt token each image's features replace ("image_token_index", or
  /// "image_token_id" as transformers 5 writes it).
  int64_t image_token_id = 32000;
  /// vision_feature_layer as written: one or several hidden-state indices
  /// (transformers' hidden_states[i]; negative counts from the end).
  std::vector<int64_t> feature_layers{-2};
  /// vision_feature_select_strategy "full": the class token's features are kept;
  /// "default": dropped.
  bool keep_class_token = false;
  nn::Activation projector_act = nn::Activation::kGelu;
  bool projector_bias = true;

  /// Encoder layers run before each feature layer is read ([0, vision layers]).
  std::vector<int64_t> feature_layer_counts() const;
  /// Features per image: the patches, plus the class token under "full".
  int64_t image_tokens() const noexcept { return vision.num_patches() + (keep_class_token ? 1 : 0); }
  /// The projector's input width: the tower's width times the feature layers.
  int64_t feature_width() const noexcept {
    return vision.hidden_size * static_cast<int64_t>(feature_layers.size());
  }

  /// Reads and checks the fields, with LlavaConfig's defaults for what the file
  /// leaves out (a text_config written as a diff of LlamaConfig's defaults, as
  /// llava-hf's checkpoints are, gets those defaults back); errors name
  /// config.json and the key.
  static LlavaConfig from(const loading::ModelConfig& config);
};

}  // namespace mpool::models::llava
