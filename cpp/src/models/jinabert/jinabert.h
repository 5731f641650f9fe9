#pragma once
// The JinaBert encoder (jina-embeddings-v2): a post-norm BERT without a position
// table. Every attention score gets ALiBi's symmetric bias -m_h * |i - j| (nn's
// alibi_symmetric_bias, slopes by alibi_slopes), so any length up to the config's
// cap runs; the feed-forward is BERT's, or a GEGLU / ReGLU gated_layers -> wo with
// its own post-norm.
#include <ATen/ATen.h>

#include <memory>
#include <vector>

#include "models/jinabert/config.h"
#include "mpool/nn/attention.h"
#include "mpool/nn/mlp.h"
#include "mpool/nn/norm.h"
#include "mpool/nn/weights.h"

namespace mpool::models::jinabert {

/// Attention scores (batch x heads x queries x keys) one block of queries may hold:
/// longer inputs run their queries in blocks, so a bias of 8192 x 8192 per head
/// never exists at once.
inline constexpr int64_t kDefaultScoreElements = int64_t{1} << 24;

/// The encoder's weights and forward pass.
class JinaBertEncoder {
 public:
  /// Takes every weight the config implies from `checkpoint` (with or without the
  /// base-model prefix), as the view's dtype on its device. `score_elements` bounds
  /// one query block's scores (see kDefaultScoreElements).
  JinaBertEncoder(JinaBertConfig config, const nn::Weights& checkpoint,
                  int64_t score_elements = kDefaultScoreElements);

  /// Last hidden state (b, t, hidden) for right-padded (b, t) int64 inputs.
  at::Tensor forward(const at::Tensor& input_ids, const at::Tensor& token_type_ids,
                     const at::Tensor& attention_mask) const;

  const JinaBertConfig& config() const noexcept { return config_; }

 private:
  struct Layer {
    nn::Attention attention;
    nn::LayerNorm attention_norm;
    nn::Mlp mlp;
    nn::LayerNorm output_norm;
  };

  // Self-attention of x (b, t, hidden) with the ALiBi bias and key padding `keep`.
  at::Tensor attend(const nn::Attention& attention, const at::Tensor& x, const at::Tensor& keep) const;

  JinaBertConfig config_;
  int64_t score_elements_;
  at::Tensor word_, token_type_;
  at::Tensor slopes_;  // (heads) float32, on the weights' device
  nn::LayerNorm embedding_norm_;
  std::vector<Layer> layers_;
};

}  // namespace mpool::models::jinabert
