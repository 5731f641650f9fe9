#pragma once
// The BERT encoder family: bert (MiniLM, BGE, GTE, E5 checkpoints), roberta and
// xlm-roberta. A post-norm encoder built from mpool_nn blocks, read entirely from
// config.json; roberta-style models differ only in where positions start.
#include <ATen/ATen.h>

#include <vector>

#include "models/bert/config.h"
#include "mpool/nn/attention.h"
#include "mpool/nn/linear.h"
#include "mpool/nn/mlp.h"
#include "mpool/nn/norm.h"
#include "mpool/nn/weights.h"

namespace mpool::models::bert {

/// The encoder's weights and forward pass.
class BertEncoder {
 public:
  /// Takes every weight the config implies from `checkpoint` (with or without the
  /// base-model prefix), as the view's dtype on its device.
  BertEncoder(BertConfig config, const nn::Weights& checkpoint);

  /// Last hidden state (b, t, hidden) for right-padded (b, t) int64 inputs.
  at::Tensor forward(const at::Tensor& input_ids, const at::Tensor& token_type_ids,
                     const at::Tensor& attention_mask) const;

  const BertConfig& config() const noexcept { return config_; }

 private:
  struct Layer {
    nn::Attention attention;
    nn::LayerNorm attention_norm;
    nn::Mlp mlp;
    nn::LayerNorm output_norm;
  };

  BertConfig config_;
  at::Tensor word_, position_, token_type_;
  nn::LayerNorm embedding_norm_;
  std::vector<Layer> layers_;
};

/// The sequence-classification head over the encoder's first token:
/// BertForSequenceClassification's (pooler.dense + tanh, then classifier) or
/// (XLM-)RobertaForSequenceClassification's (classifier.dense + tanh, then
/// classifier.out_proj), whichever the checkpoint holds.
class BertClassifier {
 public:
  BertClassifier(const BertConfig& config, const nn::Weights& checkpoint, int64_t num_labels);
  /// (b, t, hidden) last hidden state -> (b, num_labels) logits.
  at::Tensor operator()(const at::Tensor& hidden) const;

 private:
  nn::Linear dense_, out_;
};

}  // namespace mpool::models::bert
