#pragma once
// NV-Embed (NVEmbedModel): the decoder family's Mistral run bidirectionally
// ("embedding_model."), then the latent-attention pooler
// ("latent_attention_model."): the token states cross-attend to a learned latent
// array, pass a GEGLU feed-forward (each a pre-norm residual block), and are
// mean-pooled over the tokens outside the instruction. Every block comes from
// mpool_nn and the decoder; this file only wires them.
#include <ATen/ATen.h>

#include <memory>

#include "models/decoder/decoder.h"
#include "models/nvembed/config.h"
#include "mpool/models/pooling.h"
#include "mpool/models/sentence_embedder.h"
#include "mpool/nn/attention.h"
#include "mpool/nn/mlp.h"
#include "mpool/nn/norm.h"
#include "mpool/nn/weights.h"

namespace mpool::models::nvembed {

/// The latent-attention pooler, from the view holding "latents" and
/// "cross_attend_blocks." (the checkpoint's "latent_attention_model.").
class LatentAttentionPooler final : public Pooler {
 public:
  LatentAttentionPooler(const LatentAttentionConfig& config, const nn::Weights& w);
  /// (b, t, hidden) token states -> (b, t, hidden) after both blocks.
  at::Tensor states(const at::Tensor& hidden) const;
  /// The mean of states() over the mask's tokens, float32 (normalizing is the
  /// embedder's: output_normalize is its default).
  at::Tensor operator()(const at::Tensor& hidden, const at::Tensor& mask, const at::Tensor& ids) const override;
  int64_t dimension(int64_t) const override { return hidden_; }

 private:
  int64_t hidden_;
  at::Tensor latents_;                  // (num_latents, latent_dim)
  nn::LayerNorm norm_, norm_context_;   // token states, latents
  nn::Attention cross_;                 // queries: token states; keys and values: latents
  nn::LayerNorm ff_norm_;
  nn::Mlp ff_;                          // GEGLU
};

/// The whole network on one set of weights (a checkpoint with "embedding_model."
/// and "latent_attention_model.").
struct NvEmbedNetwork {
  std::shared_ptr<const decoder::Decoder> decoder;
  std::shared_ptr<const LatentAttentionPooler> pooler;
  NvEmbedNetwork(const NvEmbedConfig& config, const nn::Weights& w);
};

/// The decoder as the embedder's backbone: bidirectional, padding masked.
class BidirectionalBackbone final : public Backbone {
 public:
  explicit BidirectionalBackbone(std::shared_ptr<const decoder::Decoder> decoder) : decoder_(std::move(decoder)) {}
  at::Tensor forward(const at::Tensor& ids, const at::Tensor&, const at::Tensor& mask) const override {
    return decoder_->hidden_states(ids, mask, /*causal=*/false);
  }
  at::Device device() const override { return decoder_->device(); }

 private:
  std::shared_ptr<const decoder::Decoder> decoder_;
};

}  // namespace mpool::models::nvembed
