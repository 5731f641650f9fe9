#pragma once
// The sizes of a transformer tower (a ViT image encoder, a CLIP-style text
// encoder) read from a config object, often one nested in config.json
// ("vision_config", "text_config"). Torch-free: the families' config readers use
// it, under the sanitizers and the config fuzzer. What a config leaves out
// takes the family's defaults (the transformers config class's), as
// transformers does when it loads the same file.
#include <cstdint>
#include <string>

#include "mpool/loading/json.h"
#include "mpool/nn/activation.h"

namespace mpool::nn {

/// A family's defaults for the fields a tower config may leave out.
struct EncoderDefaults {
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int64_t num_layers = 12;
  int64_t num_heads = 12;
  const char* hidden_act = "gelu";
  double layer_norm_eps = 1e-5;
  // Vision towers only.
  int64_t image_size = 224;
  int64_t patch_size = 16;
  int64_t num_channels = 3;
  // Text towers only.
  int64_t vocab_size = 49408;
  int64_t max_positions = 77;
};

/// A pre-LN transformer encoder's sizes.
struct EncoderConfig {
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  Activation act = Activation::kGelu;
  double layer_norm_eps = 1e-5;
  int64_t head_dim() const noexcept { return hidden_size / num_heads; }
};

/// A ViT tower: the encoder plus its patch grid.
struct VisionTowerConfig : EncoderConfig {
  int64_t image_size = 0;
  int64_t patch_size = 0;
  int64_t num_channels = 0;
  /// Patches per side (image_size / patch_size).
  int64_t grid() const noexcept { return image_size / patch_size; }
  int64_t num_patches() const noexcept { return grid() * grid(); }
};

/// A text tower: the encoder plus its vocabulary and positions.
struct TextTowerConfig : EncoderConfig {
  int64_t vocab_size = 0;
  int64_t max_positions = 0;
};

/// Reads hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
/// hidden_act and layer_norm_eps of `node`. InvalidInput names the key
/// (`config.json: "vision_config.hidden_size"`) when a size is not in [1, 2^31)
/// (the layers in [1, 65536]),
/// the heads do not divide the width, the epsilon is not positive and finite, or
/// the activation is unknown.
EncoderConfig read_encoder_config(const loading::JsonView& node, const EncoderDefaults& defaults);
/// read_encoder_config plus image_size, patch_size and num_channels; the patch
/// size must divide the image size.
VisionTowerConfig read_vision_tower_config(const loading::JsonView& node, const EncoderDefaults& defaults);
/// read_encoder_config plus vocab_size and max_position_embeddings.
TextTowerConfig read_text_tower_config(const loading::JsonView& node, const EncoderDefaults& defaults);

/// A positive size `key` of `node` (`fallback` when absent), at most `max`.
int64_t read_size(const loading::JsonView& node, const char* key, int64_t fallback,
                  int64_t max = (int64_t{1} << 31) - 1);

}  // namespace mpool::nn
