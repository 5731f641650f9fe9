#pragma once
// What the CLIP family reads from config.json (CLIPModel: text_config,
// vision_config, projection_dim), as plain structs. Torch-free (part of
// mpool_model_configs), so it runs under the sanitizers and is fuzzed.
#include <cstdint>
#include <string>
#include <vector>

#include "mpool/loading/config.h"
#include "mpool/nn/encoder_config.h"

namespace mpool::models::clip {

/// The model_types this family serves.
inline const std::vector<std::string> kModelTypes = {"clip"};

struct ClipConfig {
  nn::TextTowerConfig text;
  nn::VisionTowerConfig vision;
  int64_t projection_dim = 512;
  /// The text tower's eos_token_id. Configs written before transformers fixed it
  /// say 2, and then the pooled token is the largest id (the end-of-text token,
  /// last in CLIP's vocabulary) rather than the first eos_token_id.
  int64_t eos_token_id = 49407;
  bool pool_at_largest_id() const noexcept { return eos_token_id == 2; }

  /// Reads and checks the fields, with CLIPConfig's defaults for what the file
  /// leaves out; errors name config.json and the key.
  static ClipConfig from(const loading::ModelConfig& config);
};

/// A text tower saved alone (CLIPTextModel, CLIPTextModelWithProjection:
/// model_type "clip_text_model"), as diffusion pipelines keep their text encoders.
struct ClipTextConfig {
  nn::TextTowerConfig text;
  int64_t projection_dim = 512;  ///< text_projection's width, when the checkpoint has one
  int64_t eos_token_id = 49407;
  bool pool_at_largest_id() const noexcept { return eos_token_id == 2; }

  /// CLIPTextConfig's defaults for what the file leaves out; errors name the key.
  static ClipTextConfig from(const loading::JsonView& config);
};

}  // namespace mpool::models::clip
