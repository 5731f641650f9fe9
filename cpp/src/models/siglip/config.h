#pragma once
// What the SigLIP family reads from config.json (SiglipModel: text_config,
// vision_config), as plain structs. Torch-free (part of mpool_model_configs),
// so it runs under the sanitizers and is fuzzed.
#include <cstdint>
#include <string>
#include <vector>

#include "mpool/loading/config.h"
#include "mpool/nn/encoder_config.h"

namespace mpool::models::siglip {

/// The model_types this family serves. SigLIP 2's fixed-resolution checkpoints
/// are stored as "siglip" too; the NaFlex variable-resolution "siglip2" is not served.
inline const std::vector<std::string> kModelTypes = {"siglip"};

struct SiglipConfig {
  nn::TextTowerConfig text;
  nn::VisionTowerConfig vision;
  /// Width of the text head's output (text_config.projection_size, else the text width).
  int64_t projection_size = 0;
  /// The text padding id of the model's config (text_config.pad_token_id).
  int64_t pad_token_id = 1;

  /// Reads and checks the fields, with SiglipConfig's defaults for what the file
  /// leaves out; errors name config.json and the key. The image embedding is the
  /// vision tower's attention-pooling head, so vision_use_head false is refused,
  /// as is a text head whose width differs from the image embedding's.
  static SiglipConfig from(const loading::ModelConfig& config);
};

}  // namespace mpool::models::siglip
