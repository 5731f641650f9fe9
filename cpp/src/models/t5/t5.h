#pragma once
// The T5 encoder stack (transformers' T5EncoderModel: T5 v1.0, v1.1, flan-t5, and
// the T5-XXL text encoder of Stable Diffusion 3 and FLUX) on mpool_nn blocks:
// pre-norm layers of unscaled self-attention and a plain or gated feed-forward
// block, with RMSNorm (no mean, no bias) and one relative position bias, held by
// the first layer and shared by all. Under float16, as transformers loads T5
// (_keep_in_fp32_modules), the feed-forward output projections wo stay float32,
// so the residual stream is float32 from the first feed-forward block on.
#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "models/t5/config.h"
#include "mpool/nn/attention.h"
#include "mpool/nn/mlp.h"
#include "mpool/nn/norm.h"
#include "mpool/nn/positions.h"
#include "mpool/nn/weights.h"

namespace mpool::models::t5 {

/// Where checkpoints keep a T5 encoder: at the root (a T5EncoderModel or
/// T5ForConditionalGeneration directory) or under Stable Diffusion 3's single-file
/// prefix.
inline const std::vector<std::string> kCheckpointPrefixes = {"", "text_encoders.t5xxl.transformer."};

class T5Encoder {
 public:
  /// The view of `checkpoint` holding the encoder ("shared." and "encoder."), the
  /// first of kCheckpointPrefixes with encoder.final_layer_norm.weight;
  /// InvalidInput lists the prefixes tried.
  static nn::Weights root(const nn::Weights& checkpoint);

  /// Takes every tensor the config implies from `w` (a root() view), as the view's
  /// dtype on its device: the token embedding "encoder.embed_tokens.weight" (else
  /// the tied "shared.weight"), then each encoder.block.{i}. InvalidInput names
  /// a missing or misshapen tensor. A float16 view takes each wo as float32.
  static T5Encoder load(const nn::Weights& w, const T5Config& config);

  /// last_hidden_state (b, n, d_model), after the final layer norm, of input_ids
  /// (b, n) integers in [0, vocab_size); attention_mask (b, n), non-zero = keep,
  /// undefined = every token (each sequence must keep at least one). InvalidInput
  /// for other shapes or ids. The result has the weights' dtype.
  at::Tensor forward(const at::Tensor& input_ids, const at::Tensor& attention_mask = {}) const;

  const T5Config& config() const noexcept { return config_; }

 private:
  struct Layer {
    nn::RMSNorm attention_norm;
    nn::Attention attention;
    nn::RMSNorm mlp_norm;
    nn::Mlp mlp;
  };

  T5Config config_;
  at::Tensor embed_;  // (vocab_size, d_model)
  nn::T5RelativeBias relative_bias_;
  std::vector<Layer> layers_;
  nn::RMSNorm final_norm_;
};

}  // namespace mpool::models::t5
