#pragma once
// What the FLUX.1 transformer (diffusers' FluxTransformer2DModel) reads from
// transformer/config.json, as a plain struct. Torch-free (part of
// mpool_model_configs), so it runs under the sanitizers and is fuzzed.
#include <cstdint>
#include <vector>

#include "mpool/loading/json.h"

namespace mpool::models::flux {

struct FluxConfig {
  int64_t patch_size = 1;  ///< only widens proj_out: the pipeline packs 2x2 latent patches itself
  int64_t in_channels = 64;
  int64_t out_channels = 64;       ///< null in the file: in_channels
  int64_t num_layers = 19;         ///< double-stream blocks (may be 0)
  int64_t num_single_layers = 38;  ///< single-stream blocks (may be 0)
  int64_t attention_head_dim = 128;
  int64_t num_attention_heads = 24;
  int64_t joint_attention_dim = 4096;               ///< width of the text context (T5's)
  int64_t pooled_projection_dim = 768;              ///< CLIP-L's pooled vector
  bool guidance_embeds = false;                     ///< guidance-distilled (dev): a guidance scale is an input
  std::vector<int64_t> axes_dims_rope{16, 56, 56};  ///< rotary dimensions per position axis

  int64_t inner_dim() const noexcept { return num_attention_heads * attention_head_dim; }
  bool operator==(const FluxConfig&) const = default;

  /// FluxTransformer2DModel's defaults for what the file leaves out; errors name
  /// the file and the key. The rotary axes must be even, positive and add up to
  /// attention_head_dim.
  static FluxConfig from(const loading::JsonView& config);
};

}  // namespace mpool::models::flux
