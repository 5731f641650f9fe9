#pragma once
// The jina-embeddings-v3 encoder (transformers' JinaEmbeddingsV3Model): XLM-R's
// word + token-type embeddings and LayerNorm (no position table), then post-norm
// layers whose self-attention rotates q and k by nn's RoPE (rotate-half, base
// rope_theta, positions 0..t-1 of the right-padded batch) and whose MLP is
// fc1 -> hidden_act -> fc2.
#include <ATen/ATen.h>

#include <memory>
#include <vector>

#include "models/jinav3/config.h"
#include "mpool/nn/attention.h"
#include "mpool/nn/lora.h"
#include "mpool/nn/mlp.h"
#include "mpool/nn/norm.h"
#include "mpool/nn/rope.h"
#include "mpool/nn/weights.h"

namespace mpool::models::jinav3 {

/// The encoder's weights and forward pass.
class JinaV3Encoder {
 public:
  /// Takes every weight the config implies from `checkpoint` (bare, or under
  /// "roberta." as JinaEmbeddingsV3ForMaskedLM saves it; jina's names as
  /// save_pretrained writes them, or the module's own), as the view's dtype on
  /// its device; a missing tensor is an error naming it. jina's remote-code
  /// checkpoint (config.remote_code) is read through its parametrizations, with
  /// its stacked task adapters attached (adapter i = lora_adaptations[i]).
  JinaV3Encoder(JinaV3Config config, const nn::Weights& checkpoint);

  /// Last hidden state (b, t, hidden) for right-padded (b, t) int64 inputs.
  at::Tensor forward(const at::Tensor& input_ids, const at::Tensor& token_type_ids,
                     const at::Tensor& attention_mask) const;

  const JinaV3Config& config() const noexcept { return config_; }

  /// Attaches LoRA task adapters trained on transformers' JinaEmbeddingsV3Model
  /// (or a model wrapping it under "roberta."): module paths
  /// embeddings.{word,token_type}_embeddings, layers.N.self_attn.{q,k,v,o}_proj
  /// and layers.N.mlp.fc{1,2}, whatever names the checkpoint stores; then
  /// refuses an adapter tensor for any other module.
  void attach_lora(nn::LoraAdapters& adapters);

 private:
  struct Layer {
    nn::Attention attention;
    nn::LayerNorm attention_norm;
    nn::Mlp mlp;
    nn::LayerNorm mlp_norm;
  };

  JinaV3Config config_;
  at::Tensor word_, token_type_;
  std::shared_ptr<const nn::LoraDeltas> word_lora_, token_type_lora_;
  nn::LayerNorm embedding_norm_;
  nn::Rope rope_;
  std::vector<Layer> layers_;
};

}  // namespace mpool::models::jinav3
