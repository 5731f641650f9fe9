#pragma once
// What the LLaVA family reads from config.json (LlavaForConditionalGeneration:
// vision_config, text_config and the projector's settings), as plain structs.
// Torch-free (part of mpool_model_configs), so it runs under the sanitizers.
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "models/decoder/config.h"
#include "mpool/loading/config.h"
#include "mpool/nn/activation.h"
#include "mpool/nn/encoder_config.h"

namespace mpool::models::llava {

/// The model_types this family serves: LLaVA-1.5 and LLaVA-NeXT (1.6).
inline const std::vector<std::string> kModelTypes = {"llava", "llava_next"};

/// (height, width) resolutions a LLaVA-NeXT picture may be tiled to.
using Pinpoints = std::vector<std::array<int64_t, 2>>;

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
  /// LLaVA-NeXT (model_type llava_next): pictures tiled at any resolution.
  bool anyres = false;
  /// image_grid_pinpoints (LLaVA-NeXT), each a multiple of the tower's image size.
  Pinpoints grid_pinpoints;

  /// Encoder layers run before each feature layer is read ([0, vision layers]).
  std::vector<int64_t> feature_layer_counts() const;
  /// Features per tower input (a LLaVA-1.5 image, a LLaVA-NeXT tile): the patches,
  /// plus the class token under "full".
  int64_t image_tokens() const noexcept { return vision.num_patches() + (keep_class_token ? 1 : 0); }
  /// The projector's input width: the tower's width times the feature layers.
  int64_t feature_width() const noexcept {
    return vision.hidden_size * static_cast<int64_t>(feature_layers.size());
  }

  /// Reads and checks the fields, with LlavaConfig's defaults for what the file
  /// leaves out (a llama or mistral text_config written as a diff of its config
  /// class's defaults, as llava-hf's checkpoints are, gets those defaults back);
  /// errors name config.json and the key.
  static LlavaConfig from(const loading::ModelConfig& config);
};

}  // namespace mpool::models::llava
