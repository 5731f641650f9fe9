#pragma once
// SigLIP's vision tower on mpool_nn: the ViT with its attention-pooling head.
// Its text tower is nn::TextTransformer (no mask), read at the last position.
#include <ATen/ATen.h>

#include "models/siglip/config.h"
#include "mpool/models/image_text_embedder.h"
#include "mpool/models/sentence_embedder.h"
#include "mpool/nn/linear.h"
#include "mpool/nn/mlp.h"
#include "mpool/nn/norm.h"
#include "mpool/nn/vit.h"
#include "mpool/nn/weights.h"

namespace mpool::models::siglip {

/// SiglipMultiheadAttentionPoolingHead: a learned probe attends over the
/// patches (torch.nn.MultiheadAttention's fused in_proj), then a residual MLP.
class AttentionPoolingHead {
 public:
  AttentionPoolingHead(const nn::EncoderConfig& config, const nn::Weights& w);
  /// (b, n, h) -> (b, h).
  at::Tensor operator()(const at::Tensor& x) const;

 private:
  at::Tensor probe_, in_weight_, in_bias_, out_weight_, out_bias_;
  nn::LayerNorm norm_;
  nn::Mlp mlp_;
  int64_t heads_;
};

/// SiglipVisionTransformer with its head: (b, 3, S, S) -> (b, h).
class SiglipVision final : public ImageTower {
 public:
  SiglipVision(const nn::VisionTowerConfig& config, const nn::Weights& w, at::Device device);
  at::Tensor forward(const at::Tensor& pixels) const override;

 private:
  nn::PatchEmbedding embeddings_;
  nn::PreNormEncoder encoder_;
  nn::LayerNorm post_norm_;
  AttentionPoolingHead head_;
  at::Device device_;
};

}  // namespace mpool::models::siglip
