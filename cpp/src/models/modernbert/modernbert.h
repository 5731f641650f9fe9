#pragma once
// The ModernBERT encoder (ModernBertModel: gte-modernbert, modernbert-embed, and
// the base model of ModernBertForMaskedLM / ModernBertForSequenceClassification).
// A pre-norm encoder built from mpool_nn pieces: token embeddings + LayerNorm, then
// layers alternating global attention and local (sliding-window) attention, each
// with its own RoPE theta, a GeGLU MLP, and a final LayerNorm. The header is
// shared inside cpp/src/models so that other families (a reranker over
// ModernBertForSequenceClassification) can build the encoder from its view.
//
// Padding: the token-wise work (embeddings, norms, projections, the MLP) runs on
// the real tokens only, gathered out of the padded batch when it has padding;
// attention runs on the padded (b, t) layout with masks. Local layers use a
// dense (b, 1, t, t) mask for short inputs and, past a few windows, a
// block-local form (each block of queries against its window of keys), whose
// cost grows with t x window instead of t^2.
#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "models/modernbert/config.h"
#include "mpool/nn/activation.h"
#include "mpool/nn/linear.h"
#include "mpool/nn/norm.h"
#include "mpool/nn/rope.h"
#include "mpool/nn/weights.h"

namespace mpool::models::modernbert {

/// How a local (sliding-window) layer attends.
enum class LocalAttention {
  kAuto,     ///< dense mask up to two blocks of keys, block-local beyond
  kDense,    ///< always one (b, 1, t, t) mask
  kBlocked,  ///< always block-local
};

/// The encoder's weights and forward pass.
class ModernBertEncoder {
 public:
  /// The tensor find_prefix probes for: the base model's token embeddings.
  static constexpr const char* kProbeTensor = "embeddings.tok_embeddings.weight";

  /// Takes every weight the config implies from `checkpoint`, as the view's dtype
  /// on its device. The base model sits at the root (ModernBertModel,
  /// sentence-transformers) or under "model." (ModernBertForMaskedLM,
  /// ModernBertForSequenceClassification: their head.*, decoder.* and
  /// classifier.* are left to whoever builds the head, and warned about as unused).
  ModernBertEncoder(ModernBertConfig config, const nn::Weights& checkpoint);

  /// The base model's view inside a checkpoint: "" or "model." (InvalidInput
  /// names what was tried). A head built beside the encoder reads its tensors
  /// from the checkpoint's root.
  static nn::Weights base_model(const nn::Weights& checkpoint);

  /// Last hidden state (b, t, hidden) for right-padded (b, t) int64 ids and a 0/1
  /// mask (undefined: no padding). Rows are independent of each other: a padded
  /// row gives what it gives alone. Padded positions come back as zeros.
  at::Tensor forward(const at::Tensor& input_ids, const at::Tensor& attention_mask) const;

  const ModernBertConfig& config() const noexcept { return config_; }
  void set_local_attention(LocalAttention mode) noexcept { local_mode_ = mode; }

 private:
  struct Layer {
    std::optional<nn::LayerNorm> attn_norm;  // absent in layer 0 (transformers' Identity)
    nn::Linear wqkv, attn_out;
    nn::LayerNorm mlp_norm;
    nn::Linear wi, mlp_out;
    bool sliding = false;
  };

  ModernBertConfig config_;
  at::Tensor tok_embeddings_;
  nn::LayerNorm embedding_norm_, final_norm_;
  std::vector<Layer> layers_;
  nn::Rope global_rope_, local_rope_;
  LocalAttention local_mode_ = LocalAttention::kAuto;
};

/// ModernBertForSequenceClassification's head, read from the checkpoint's root:
/// the first token ("cls") or the mean over the real tokens ("mean"), then
/// head.dense, the classifier activation, head.norm, and classifier.
class ModernBertClassifier {
 public:
  ModernBertClassifier(const ModernBertConfig& config, const nn::Weights& checkpoint, int64_t num_labels);
  /// (b, t, hidden) last hidden state and (b, t) 0/1 mask -> (b, num_labels) logits.
  at::Tensor operator()(const at::Tensor& hidden, const at::Tensor& mask) const;

 private:
  bool mean_ = false;
  nn::Activation act_ = nn::Activation::kGelu;
  nn::Linear dense_, out_;
  nn::LayerNorm norm_;
};

}  // namespace mpool::models::modernbert
