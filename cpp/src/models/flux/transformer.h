#pragma once
// FLUX.1's transformer (diffusers' FluxTransformer2DModel): packed latent tokens
// and T5 context tokens, conditioned on the timestep, the pooled CLIP vector and
// (guidance-distilled models) the guidance scale; rotary positions over three id
// axes shared by both streams; double-stream blocks (separate weights per stream,
// one attention over text then image) followed by single-stream blocks (one
// sequence, attention and MLP side by side), then the final adaLN and projection.
#include <ATen/ATen.h>

#include <utility>
#include <vector>

#include "models/flux/config.h"
#include "mpool/nn/dit.h"
#include "mpool/nn/positions.h"
#include "mpool/nn/weights.h"

namespace mpool::models::flux {

/// cos and sin (tokens, head_dim), float32, for the joint text-then-image sequence.
struct RotaryTables {
  at::Tensor cos, sin;
  /// q and k (b, heads, tokens, head_dim) rotated (interleaved pairs).
  std::pair<at::Tensor, at::Tensor> operator()(const at::Tensor& q, const at::Tensor& k) const;
};

/// One FluxTransformerBlock: adaLN-Zero on both streams, joint attention (text
/// first), a tanh-GELU feed-forward per stream.
class DoubleStreamBlock {
 public:
  static DoubleStreamBlock load(const nn::Weights& w, const FluxConfig& c);
  /// image (b, n, dim), text (b, m, dim), conditioning (b, dim) -> new (image, text).
  std::pair<at::Tensor, at::Tensor> operator()(const at::Tensor& image, const at::Tensor& text,
                                               const at::Tensor& conditioning, const RotaryTables& rope) const;

 private:
  nn::AdaModulation norm1_, norm1_context_;
  nn::JointAttention attn_;
  nn::Mlp ff_, ff_context_;
};

/// One FluxSingleTransformerBlock over the joint sequence: 3-way adaLN, attention
/// without an output projection beside a tanh-GELU projection, one proj_out over both.
class SingleStreamBlock {
 public:
  static SingleStreamBlock load(const nn::Weights& w, const FluxConfig& c);
  /// x (b, m + n, dim) -> the same shape.
  at::Tensor operator()(const at::Tensor& x, const at::Tensor& conditioning, const RotaryTables& rope) const;

 private:
  nn::AdaModulation norm_;
  nn::Attention attn_;
  nn::Linear proj_mlp_, proj_out_;
};

class FluxTransformer {
 public:
  /// Loads under `w` with diffusers' names (x_embedder, time_text_embed.{timestep,
  /// guidance,text}_embedder, context_embedder, transformer_blocks.N,
  /// single_transformer_blocks.N, norm_out, proj_out).
  static FluxTransformer load(const nn::Weights& w, const FluxConfig& config);

  /// The prediction (b, n, patch^2 x out_channels) for packed latents (b, n,
  /// in_channels) at `timestep` (b) (sigma in [0, 1]; scaled by 1000 here),
  /// `guidance` (b) (required iff guidance_embeds, else undefined; also scaled by
  /// 1000), pooled text (b, pooled_projection_dim), context (b, m,
  /// joint_attention_dim), and position ids image_ids (n, axes) and text_ids (m,
  /// axes). Floating inputs are taken in the model's dtype. InvalidInput names
  /// the input whose shape is wrong.
  at::Tensor operator()(const at::Tensor& latents, const at::Tensor& timestep, const at::Tensor& guidance,
                        const at::Tensor& pooled, const at::Tensor& context, const at::Tensor& image_ids,
                        const at::Tensor& text_ids) const;

  const FluxConfig& config() const noexcept { return config_; }

 private:
  void check_inputs(const at::Tensor& latents, const at::Tensor& timestep, const at::Tensor& guidance,
                    const at::Tensor& pooled, const at::Tensor& context, const at::Tensor& image_ids,
                    const at::Tensor& text_ids) const;

  FluxConfig config_;
  nn::Linear x_embedder_, context_embedder_;
  nn::TimestepEmbedding timestep_embedder_, text_embedder_;
  std::optional<nn::TimestepEmbedding> guidance_embedder_;
  std::vector<DoubleStreamBlock> double_blocks_;
  std::vector<SingleStreamBlock> single_blocks_;
  nn::AdaModulation norm_out_;
  nn::Linear proj_out_;
};

}  // namespace mpool::models::flux
