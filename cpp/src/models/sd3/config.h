#pragma once
// What the Stable Diffusion 3 family reads from transformer/config.json
// (diffusers' SD3Transformer2DModel, the MMDiT), as a plain struct. Torch-free
// (part of mpool_model_configs), so it runs under the sanitizers and is fuzzed.
#include <cstdint>
#include <string>
#include <vector>

#include "mpool/loading/json.h"

namespace mpool::models::sd3 {

struct MMDiTConfig {
  int64_t sample_size = 128;  ///< latent side the positions were trained at
  int64_t patch_size = 2;
  int64_t in_channels = 16;
  int64_t out_channels = 16;
  int64_t num_layers = 18;
  int64_t attention_head_dim = 64;
  int64_t num_attention_heads = 18;
  int64_t joint_attention_dim = 4096;     ///< width of the text context (T5's, CLIP's padded to it)
  int64_t caption_projection_dim = 1152;  ///< the context after context_embedder: the inner width
  int64_t pooled_projection_dim = 2048;   ///< CLIP-L's and CLIP-G's pooled vectors together
  /// The position table's side, in patches; 0 when the config sets it null: then
  /// no table, and each latent size gets its own grid (diffusers' PatchEmbed
  /// without pos_embed_max_size), for any size.
  int64_t pos_embed_max_size = 96;
  /// Without a table, the most patches a side may have (a bound, not a table size).
  static constexpr int64_t kMaxPatchesWithoutTable = 4096;
  std::vector<int64_t> dual_attention_layers;  ///< MMDiT-X (SD3.5-medium): layers with a second image attention
  bool qk_norm = false;                        ///< "rms_norm" (SD3.5): per-head RMSNorm of q and k

  int64_t inner_dim() const noexcept { return num_attention_heads * attention_head_dim; }
  bool dual_attention(int64_t layer) const;

  /// SD3Transformer2DModel's defaults for what the file leaves out; errors name
  /// the file and the key. qk_norm other than null or "rms_norm", a caption
  /// projection other than the inner width, or a dual-attention layer out of
  /// range are refused.
  static MMDiTConfig from(const loading::JsonView& config);
};

}  // namespace mpool::models::sd3
