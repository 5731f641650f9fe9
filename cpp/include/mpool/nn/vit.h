#pragma once
// The blocks of ViT-style towers that CLIP, SigLIP and the vision-language
// families built on them (LLaVA) share: the pre-LN transformer encoder with
// CLIP's tensor names, and the patch embedding with optional class token and
// learned positions.
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "mpool/nn/attention.h"
#include "mpool/nn/conv.h"
#include "mpool/nn/encoder_config.h"
#include "mpool/nn/mlp.h"
#include "mpool/nn/norm.h"
#include "mpool/nn/weights.h"

namespace mpool::nn {

/// A stack of pre-LN encoder layers:
///   x = x + self_attn(layer_norm1(x));  x = x + mlp(layer_norm2(x))
/// with q/k/v/out projections and fc1/fc2 MLP, all with biases, under
/// `layers.<i>.` (CLIP, SigLIP and their descendants name them alike).
class PreNormEncoder {
 public:
  /// Loads `config.num_layers` layers from `w` (the view holding "layers.0.").
  static PreNormEncoder load(const Weights& w, const EncoderConfig& config);
  /// (b, n, hidden) through the first `layers` layers (-1: all of them). `mask` is
  /// boolean or additive as nn::attend takes it; `causal` adds the causal mask.
  at::Tensor operator()(at::Tensor x, const at::Tensor& mask = {}, bool causal = false, int64_t layers = -1) const;
  /// (b, n, hidden) through layers [from, to) only (to -1: through the last), for
  /// a caller that reads the hidden states between them (LLaVA's feature layers).
  at::Tensor run_layers(at::Tensor x, int64_t from, int64_t to, const at::Tensor& mask = {}, bool causal = false) const;
  int64_t num_layers() const noexcept { return static_cast<int64_t>(layers_.size()); }

 private:
  struct Layer {
    LayerNorm norm1;
    Attention attention;
    LayerNorm norm2;
    Mlp mlp;
  };
  std::vector<Layer> layers_;
};

/// Non-overlapping patches (a convolution with kernel = stride = patch size),
/// an optional learned class token in front, plus learned position embeddings.
/// Names: `patch_embedding.weight` (and `.bias`), `class_embedding`,
/// `position_embedding.weight`, as CLIP and SigLIP store them under "embeddings.".
class PatchEmbedding {
 public:
  /// `class_token`: CLIP's; `conv_bias`: SigLIP's patch convolution has one.
  static PatchEmbedding load(const Weights& w, const VisionTowerConfig& config, bool class_token, bool conv_bias);
  /// (b, channels, image_size, image_size) -> (b, [1 +] patches, hidden).
  /// InvalidInput names the expected shape otherwise.
  at::Tensor operator()(const at::Tensor& pixels) const;

 private:
  Conv2d patch_;
  at::Tensor class_;      // (hidden) or undefined
  at::Tensor positions_;  // (positions, hidden)
  int64_t image_size_ = 0;
};

/// A text tower: token and learned position embeddings, a PreNormEncoder and a
/// final LayerNorm, with CLIP's and SigLIP's names ("embeddings.token_embedding",
/// "embeddings.position_embedding", "encoder.", "final_layer_norm").
class TextTransformer {
 public:
  static TextTransformer load(const Weights& w, const TextTowerConfig& config);
  /// (b, t) int64 ids -> (b, t, hidden) after the final norm; `causal`: CLIP's
  /// causal mask (SigLIP attends both ways, without a mask). InvalidInput when t
  /// exceeds the positions.
  at::Tensor operator()(const at::Tensor& ids, bool causal) const;
  /// The final output as above, and the hidden state transformers reports as
  /// hidden_states[hidden_index] (0: the embeddings, i: after i layers, negative
  /// from the end: -2 is the penultimate layer's output), which has no final norm.
  /// InvalidInput when the index is out of range.
  std::pair<at::Tensor, at::Tensor> with_hidden_state(const at::Tensor& ids, bool causal, int64_t hidden_index) const;

 private:
  at::Tensor token_, position_;
  PreNormEncoder encoder_;
  LayerNorm final_norm_;
};

}  // namespace mpool::nn
