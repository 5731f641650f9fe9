#pragma once
// What the NV-Embed family reads from config.json (NVEmbedModel: a Mistral
// decoder run bidirectionally, then a latent-attention pooler), as plain
// structs. Torch-free (part of mpool_model_configs), so it runs under the
// sanitizers and is fuzzed (fuzz/config_json_fuzz.cpp).
#include <cstdint>
#include <string>
#include <vector>

#include "models/decoder/config.h"
#include "mpool/loading/config.h"

namespace mpool::models::nvembed {

/// The model_types this family serves.
inline const std::vector<std::string> kModelTypes = {"nvembed"};

/// The latent-attention pooler (config.json's "latent_attention_config"). A key
/// the file leaves out takes NV-Embed's LatentAttentionConfig default.
struct LatentAttentionConfig {
  int64_t num_latents = 512;  ///< num_latents_value: rows of the learned latent array
  int64_t latent_dim = 4096;  ///< width of the latents (the keys' and values' input)
  int64_t heads = 8;          ///< num_cross_heads
  int64_t head_dim = 4096;    ///< cross_dim_head
  int64_t hidden_dim = 4096;  ///< width of the token states: the decoder's hidden size
  bool output_normalize = true;
  int64_t ff_mult = 4;  ///< the GEGLU feed-forward's inner width is ff_mult * hidden_dim
};

/// The whole model: the decoder of "text_config" and the pooler.
struct NvEmbedConfig {
  decoder::DecoderConfig text;
  LatentAttentionConfig latent;

  /// Reads and checks the fields; errors name config.json and the key.
  static NvEmbedConfig from(const loading::ModelConfig& config);
};

}  // namespace mpool::models::nvembed
