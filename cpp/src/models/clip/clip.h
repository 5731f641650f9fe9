#pragma once
// CLIP's vision tower on mpool_nn (its text tower is nn::TextTransformer,
// causal). The vision tower is also what LLaVA builds on (hidden_states() at a
// chosen layer).
#include <ATen/ATen.h>

#include <vector>

#include "models/clip/config.h"
#include "mpool/models/image_text_embedder.h"
#include "mpool/models/sentence_embedder.h"
#include "mpool/nn/linear.h"
#include "mpool/nn/norm.h"
#include "mpool/nn/vit.h"
#include "mpool/nn/weights.h"

namespace mpool::models::clip {

/// CLIPVisionTransformer (+ visual_projection when loaded with a projection).
class ClipVision final : public ImageTower {
 public:
  /// `w`: the view holding "embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.";
  /// `projection`: the view holding visual_projection's "weight" of (projection_dim,
  /// hidden); projection_dim 0: no projection (a bare CLIPVisionModel, LLaVA's tower).
  ClipVision(const nn::VisionTowerConfig& config, const nn::Weights& w, const nn::Weights& projection,
             int64_t projection_dim, at::Device device);
  /// (b, 3, S, S) float32 -> the projected class token (b, projection_dim).
  at::Tensor forward(const at::Tensor& pixels) const override;
  /// The hidden states after `layers` encoder layers (-1: all), before post_layernorm.
  at::Tensor hidden_states(const at::Tensor& pixels, int64_t layers = -1) const;
  /// The hidden states after each count of encoder layers in `layers` (each in
  /// [0, num_layers()]; 0: the embeddings after pre_layrnorm), in that order, from
  /// one pass through the deepest: transformers' hidden_states[i] for each i.
  std::vector<at::Tensor> hidden_states(const at::Tensor& pixels, const std::vector<int64_t>& layers) const;
  int64_t num_layers() const noexcept { return encoder_.num_layers(); }

 private:
  nn::PatchEmbedding embeddings_;
  nn::LayerNorm pre_norm_, post_norm_;
  nn::PreNormEncoder encoder_;
  at::Tensor projection_;  // (projection_dim, hidden) or undefined
  at::Device device_;
};

}  // namespace mpool::models::clip
