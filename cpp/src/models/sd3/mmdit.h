#pragma once
// Stable Diffusion 3's MMDiT (diffusers' SD3Transformer2DModel): patchified
// latents with cropped 2-D sin-cos positions, a timestep + pooled-text
// conditioning vector, joint attention blocks over the image and text streams
// with adaLN-Zero (the last one context-pre-only), qk RMSNorm (3.5), MMDiT-X's
// second image attention (3.5-medium), and the final adaLN and unpatchify.
#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "models/sd3/config.h"
#include "mpool/nn/conv.h"
#include "mpool/nn/dit.h"
#include "mpool/nn/mlp.h"
#include "mpool/nn/positions.h"
#include "mpool/nn/weights.h"

namespace mpool::models::sd3 {

/// One JointTransformerBlock.
class JointBlock {
 public:
  static JointBlock load(const nn::Weights& w, const MMDiTConfig& c, bool context_pre_only, bool dual_attention);
  /// image (b, n, dim), text (b, m, dim), conditioning (b, dim) -> the new image
  /// stream and the new text stream (undefined after a context-pre-only block).
  std::pair<at::Tensor, at::Tensor> operator()(const at::Tensor& image, const at::Tensor& text,
                                               const at::Tensor& conditioning) const;

 private:
  nn::AdaModulation norm1_, norm1_context_;
  nn::JointAttention attn_;
  std::optional<nn::Attention> attn2_;
  nn::Mlp ff_;
  std::optional<nn::Mlp> ff_context_;
  bool context_pre_only_ = false;
};

class MMDiT {
 public:
  /// Loads under `w` with diffusers' names (pos_embed.proj, time_text_embed,
  /// context_embedder, transformer_blocks.N, norm_out, proj_out). The position
  /// table is the stored pos_embed.pos_embed when present, else computed.
  static MMDiT load(const nn::Weights& w, const MMDiTConfig& config);

  /// The velocity for latents (b, in, h, w) at `timestep` (b) (float, sigma x
  /// 1000), text context (b, m, joint_attention_dim) and pooled text (b,
  /// pooled_projection_dim); the blocks in `skip_layers` are left out (skip-layer
  /// guidance). h and w must be multiples of the patch size, at most
  /// pos_embed_max_size patches (InvalidInput otherwise).
  at::Tensor operator()(const at::Tensor& latents, const at::Tensor& timestep, const at::Tensor& context,
                        const at::Tensor& pooled, const std::vector<int64_t>& skip_layers = {}) const;

  const MMDiTConfig& config() const noexcept { return config_; }

 private:
  MMDiTConfig config_;
  nn::Conv2d patch_;
  at::Tensor positions_;  // (max, max, dim)
  nn::TimestepEmbedding timestep_embedder_, text_embedder_;
  nn::Linear context_embedder_;
  std::vector<JointBlock> blocks_;
  nn::AdaModulation norm_out_;
  nn::Linear proj_out_;
};

}  // namespace mpool::models::sd3
